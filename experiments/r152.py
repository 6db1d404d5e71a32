"""ResNet-152 on ImageNet (ILSVRC 2012), the paper's recipe: experiments/imagenet.py.

    python -m resnet_jax.main --config experiments/r152.py --workdir gs://BUCKET/r152 \
        --config.data_dir=gs://BUCKET/tensorflow_datasets

Expected (ImageNet validation), paper Table 3: top-1 error 21.43%, top-5 5.71% (10-crop
testing). Time on named hardware: not measured yet.
"""

import pathlib

from resnet_jax import pyfiles

# The recipe all five depths share lives beside this file (loaded by path, so that the
# config works from any directory).
_IMAGENET = pyfiles.import_file(pathlib.Path(__file__).with_name('imagenet.py'))


def get_config():
    return _IMAGENET.get_config('resnet152')
