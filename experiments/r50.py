"""ResNet-50 on ImageNet (ILSVRC 2012), the paper's recipe: experiments/imagenet.py.

    python -m resnet_jax.main --config experiments/r50.py --workdir gs://BUCKET/r50 \
        --config.data_dir=gs://BUCKET/tensorflow_datasets

Expected (ImageNet validation), paper Table 3: top-1 error 22.85%, top-5 6.71% (10-crop
testing). Time: no ImageNet run yet; the train step alone runs 90 epochs in about 5.4 h on
one H100 in bfloat16 (docs/performance.md).
"""

import pathlib
import runpy

# The recipe all five depths share lives beside this file (loaded by path, so that the
# config works from any directory).
_IMAGENET = runpy.run_path(str(pathlib.Path(__file__).with_name('imagenet.py')))


def get_config():
    return _IMAGENET['get_config']('resnet50')
