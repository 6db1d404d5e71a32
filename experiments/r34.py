"""ResNet-34 on ImageNet (ILSVRC 2012), the paper's recipe: experiments/imagenet.py.

    python -m resnet_jax.main --config experiments/r34.py --workdir gs://BUCKET/r34 \
        --config.data_dir=gs://BUCKET/tensorflow_datasets

Expected (ImageNet validation), paper Table 3: top-1 error 24.52%, top-5 7.46% (10-crop
testing, option B; Table 2 with option A: 25.03%, plain-34 28.54%). Time on named hardware:
not measured yet.
"""

import pathlib

from resnet_jax import pyfiles

# The recipe all five depths share lives beside this file (loaded by path, so that the
# config works from any directory).
_IMAGENET = pyfiles.import_file(pathlib.Path(__file__).with_name('imagenet.py'))


def get_config():
    return _IMAGENET.get_config('resnet34')
