"""ResNet-18 on ImageNet (ILSVRC 2012): experiments/imagenet.py's recipe, option A shortcuts.

    python -m resnet_jax.main --config experiments/r18.py --workdir gs://BUCKET/r18 \
        --config.data_dir=gs://BUCKET/tensorflow_datasets

Expected (ImageNet validation), paper Table 2: top-1 error 27.88% (10-crop testing, option A;
plain-18 27.94%). Time on named hardware: not measured yet.
"""

import pathlib

from resnet_jax import pyfiles

# The recipe all five depths share lives beside this file (loaded by path, so that the
# config works from any directory).
_IMAGENET = pyfiles.import_file(pathlib.Path(__file__).with_name('imagenet.py'))


def get_config():
    config = _IMAGENET.get_config('resnet18')
    config.model.shortcut = 'A'  # the paper's only ResNet-18 result (Table 2) is option A.
    return config
