"""CIFAR-10 experiments of the paper (section 4.2, Table 6, Figure 6).

Run (the argument picks the network):

    python -m resnet_jax.main --config experiments/cifar10.py:resnet56 \
        --workdir workdirs/cifar10_resnet56 --config.data_dir=PATH/TO/cifar10-jpeg

Arguments: resnet20 resnet32 resnet44 resnet56 resnet110 resnet1202 (option A shortcuts)
and plain20 plain32 plain44 plain56 plain110 (the same stacks without shortcuts), each
optionally followed by `,short` (e.g. `resnet20,short`): the same recipe over 2,500 steps
instead of 64,000 (6.4 epochs), the learning rate divided by 10 at 1,250 and 1,875 (the
same fractions of the run as the paper's), evaluated every 500 steps.

Recipe, as the paper: SGD, momentum 0.9, weight decay 1e-4, batch 128, lr 0.1 divided
by 10 at 32k and 48k iterations, stop at 64k; 4-pixel pad, random 32x32 crop and
horizontal flip; per-pixel mean subtraction; He initialisation; BatchNorm, no dropout.
BatchNorm normalises over the whole batch of 128 on one device; the paper's ran on two
GPUs, 64 images each: `--config.model.bn_group_size=64` normalises in groups of 64 (ghost
BatchNorm; no measured effect at the short budget, docs/results.md).
ResNet-110 warms up at lr 0.01 for its first 400 iterations. Train on all 50k training
images, report the 10k test images (add --config.validation_examples=5000 for the
paper's 45k/5k split, on which it chose this schedule).

Expected test error (paper, Table 6; original lossless CIFAR-10): ResNet-20 8.75%,
32 7.51%, 44 7.17%, 56 6.97%, 110 6.43% (best of 5 runs; mean 6.61%), 1202 7.93%.
Plain nets train worse as they get deeper (Figure 6, left). Results on the quality-75
JPEG copy of CIFAR-10 are expected to sit somewhat below these; what was measured, on
which hardware: docs/results.md.
"""

from resnet_jax import configs

DEPTHS = (20, 32, 44, 56, 110, 1202)
PLAIN_DEPTHS = (20, 32, 44, 56, 110)


# The short variant: the same recipe over 2,500 steps (6.4 epochs), the learning rate
# divided by 10 at the same fractions of the run as the paper's (1/2 and 3/4).
SHORT_STEPS = 2_500


def get_config(arg: str = 'resnet20'):
    name, short = parse_arg(arg, MODELS)
    return recipe(f'cifar_{name}', short)


MODELS = tuple(f'resnet{d}' for d in DEPTHS) + tuple(f'plain{d}' for d in PLAIN_DEPTHS)


def parse_arg(arg: str, valid) -> tuple[str, bool]:
    """('resnet20', short?) of an argument 'resnet20' or 'resnet20,short' among `valid`."""
    name, _, variant = arg.partition(',')
    if name not in valid:
        raise ValueError(f'unknown CIFAR experiment {name!r}; choose one of {", ".join(valid)}')
    if variant not in ('', 'short'):
        raise ValueError(f'unknown variant {variant!r} of {name}: the only one is '
                         f"'{name},short'")
    return name, variant == 'short'


def recipe(model_name: str, short: bool = False):
    """The paper's CIFAR-10 recipe for any CIFAR net of models.MODEL_NAMES."""
    config = configs.get_base_config()
    config.dataset = 'cifar10'
    config.model.name = model_name
    config.model.variant = 'v1'  # basic blocks: v1 and v1.5 are the same network.
    config.augment = 'pad_crop_flip'
    config.pad_pixels = 4

    config.batch_size = 128
    config.eval_batch_size = 500
    config.total_steps = 64_000
    config.optim.momentum = 0.9
    config.optim.weight_decay = 1e-4
    config.schedule.name = 'step'
    config.schedule.base_lr = 0.1
    config.schedule.unit = 'steps'
    config.schedule.boundaries = (32_000, 48_000)
    config.schedule.decay_factor = 0.1
    if model_name == 'cifar_resnet110':
        # "0.1 is slightly too large to start converging": warm up at 0.01 for 400 steps.
        config.schedule.warmup = 400
        config.schedule.warmup_lr = 0.01

    config.log_every_steps = 200
    config.eval_every_steps = 4_000
    config.checkpoint_every_steps = 4_000
    if short:
        config.total_steps = SHORT_STEPS
        config.schedule.boundaries = (SHORT_STEPS // 2, SHORT_STEPS * 3 // 4)
        config.log_every_steps = 100
        config.eval_every_steps = 500
        config.checkpoint_every_steps = 500
    return config
