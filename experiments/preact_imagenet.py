"""Pre-activation ResNets on ImageNet: He et al. (2016), "Identity Mappings in Deep Residual
Networks", Table 5.

    python -m resnet_jax.main --config experiments/preact_imagenet.py:resnet200 \
        --workdir gs://BUCKET/preact_r200 --config.data_dir=gs://BUCKET/tensorflow_datasets

Arguments: resnet50, resnet101, resnet152, resnet200. Recipe: experiments/imagenet.py (the
paper's appendix: "the same hyper-parameters and implementations as" the 2015 paper; "The
learning rate starts from 0.1 (no warming up), and is divided by 10 at 30 and 60 epochs.
The mini-batch size is 256"), with pre-activation bottlenecks and a BN + ReLU after the
last block. The blocks are those of the authors' CIFAR code (KaimingHe/resnet-1k-layers):
stride on the first 1x1, projection shortcuts of the normalised input without a BN of their
own; the stem is the 7x7 convolution and the max pool, normalised by the first block.
fb.resnet.torch's preresnet.lua, whose ResNet-200 the paper's Table 5 cites, differs: its
stride is on the 3x3 (`--config.model.variant=v1.5`) and its stem has a BN + ReLU.

Expected single-crop error (Table 5; top-1 / top-5, a 320x320 crop of the image resized to
320, trained on 224 crops with scale augmentation): ResNet-152 21.1 / 5.5 (the original
unit: 21.3 / 5.5), ResNet-200 20.7 / 5.3 (21.8 / 6.0). That 320 crop is not one of this
project's evaluation modes: centre_crop (224), ten_crop and multi_scale are reported.
"""

import pathlib

from resnet_jax import pyfiles

_IMAGENET = pyfiles.import_file(pathlib.Path(__file__).with_name('imagenet.py'))

MODELS = ('resnet50', 'resnet101', 'resnet152', 'resnet200')


def get_config(arg: str = 'resnet200'):
    if arg not in MODELS:
        raise ValueError(f'unknown pre-activation ImageNet net {arg!r}; choose one of '
                         f'{", ".join(MODELS)}')
    config = _IMAGENET.get_config(arg)
    config.model.block = 'preact_bottleneck'
    return config
