"""Pre-activation ResNets on CIFAR-10: He et al. (2016), "Identity Mappings in Deep Residual
Networks", Tables 3 and 4.

    python -m resnet_jax.main --config experiments/preact_cifar10.py:resnet164 \
        --workdir workdirs/preact_resnet164 --config.data_dir=PATH/TO/cifar10-jpeg

Arguments: resnet20 ... resnet110, resnet1202 (basic blocks, 6n+2 layers) and resnet164,
resnet1001 (bottlenecks, 9n+2 layers), each optionally followed by `,short` (2,500 steps,
as experiments/cifar10.py). The same nets with the 2015 paper's blocks:
`--config.model.block=` (empty).

Recipe, as the paper's appendix: "the same as" the 2015 paper's (experiments/cifar10.py:
batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k
iterations, 64k in all; translation and flipping), and "for all CIFAR experiments we warm
up the training by using a smaller learning rate of 0.01 at the beginning 400 iterations"
("not necessary for our proposed Residual Unit"). Blocks: BN-ReLU-conv, with nothing
after the addition; projection shortcuts where the dimensions increase, taking the
pre-activated input; a BN + ReLU after the last block.

Expected test error (Table 3, median of 5 runs): ResNet-110 6.37% (the original unit:
6.61%), ResNet-164 5.46% (5.93%), ResNet-1001 4.92% (7.61%); Table 4: ResNet-1001 4.62%
with mini-batches of 64. Parameters (Table 4): ResNet-164 1.7M, ResNet-1001 10.2M.
"""

import pathlib

from resnet_jax import pyfiles

# The recipe lives beside this file (loaded by path, so the config works from any directory).
_CIFAR10 = pyfiles.import_file(pathlib.Path(__file__).with_name('cifar10.py'))

MODELS = tuple(f'resnet{d}' for d in _CIFAR10.DEPTHS) + ('resnet164', 'resnet1001')


def get_config(arg: str = 'resnet164'):
    name, short = _CIFAR10.parse_arg(arg, MODELS)
    config = _CIFAR10.recipe(f'cifar_{name}', short)
    kind = 'bottleneck' if name in ('resnet164', 'resnet1001') else 'basic'
    config.model.block = f'preact_{kind}'  # and shortcut B, the default of these blocks
    config.schedule.warmup = 400
    config.schedule.warmup_lr = 0.01
    return config
