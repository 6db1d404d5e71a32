"""CIFAR-10 ResNet-20 at batch 128 and 2048, for the same epochs: does the large batch keep
the accuracy with linear scaling and warm-up (Goyal et al. 2017), or with LARS (You et al.
2017)?

    python -m resnet_jax.main --config experiments/large_batch_cifar10.py:sgd2048 \
        --workdir workdirs/large_batch/sgd2048 --config.data_dir=PATH/TO/cifar10-jpeg

Arguments: sgd128, sgd2048, lars2048, each optionally followed by `,EPOCHS` (default 30),
e.g. `lars2048,8`.

- sgd128: the paper's recipe (experiments/cifar10.py) over EPOCHS epochs instead of 64k
  iterations: lr 0.1, divided by 10 at 1/2 and 3/4 of the run.
- sgd2048: Goyal et al.'s recipe: the rate scaled linearly, 0.1 x 2048/128 = 1.6, reached
  by a linear warm-up from 0 over 5 epochs of 30 (their 5 of 90, kept at the same fraction
  of a shorter run), and every residual block's last BatchNorm scale initialised to 0
  (`model.zero_init_residual`, their section 5.1).
- lars2048: LARS (trust coefficient 0.001, momentum 0.9, weight decay 1e-4 on the
  kernels only), lr 10 (MLPerf's reference rate for ResNet-50 at 4096, not tuned here),
  the same warm-up, then polynomial decay of power 2 to 0, as the MLPerf recipe.

At 2048 BatchNorm normalises over groups of 128 (ghost BatchNorm), so the statistics come
from as many images as at batch 128 and only the optimisation differs (Goyal et al. keep
32 images per worker for the same reason). Evaluated on the 10k test images every epoch.
Results: docs/large_batch.md.
"""

from resnet_jax import configs

SETUPS = ('sgd128', 'sgd2048', 'lars2048')
CIFAR10_TRAIN_EXAMPLES = 50_000


def get_config(arg: str = 'sgd2048'):
    setup, _, epochs = arg.partition(',')
    if setup not in SETUPS:
        raise ValueError(f'unknown setup {setup!r}; choose one of {", ".join(SETUPS)}')
    if epochs and not epochs.isdigit():
        raise ValueError(f'{arg!r}: the epochs after the comma must be a whole number')
    epochs = int(epochs or 30)
    config = configs.get_base_config()
    config.dataset = 'cifar10'
    config.model.name = 'cifar_resnet20'
    config.batch_size = 128 if setup == 'sgd128' else 2048
    config.eval_batch_size = 500
    config.num_epochs = float(epochs)
    config.total_steps = None
    config.schedule.unit = 'epochs'
    config.schedule.base_batch_size = 128
    if setup == 'sgd128':
        config.schedule.warmup = 0
    else:
        config.model.bn_group_size = 128
        # 4 micro-batches of 512 per step: the same update (BatchNorm groups of 128 either
        # way) in a quarter of the activation memory; one pass of 2048 took over 19 GB.
        config.grad_accum_steps = 4
        config.schedule.warmup = 5 * epochs / 30
    if setup == 'sgd2048':
        config.model.zero_init_residual = True
    if setup == 'lars2048':
        config.optim.name = 'lars'
        config.optim.weight_decay_params = 'kernels'
        config.schedule.lr = 10.0
        config.schedule.name = 'polynomial'
        config.schedule.end_lr = 0.0
        config.schedule.power = 2.0
    else:
        config.schedule.name = 'step'
        config.schedule.boundaries = (epochs / 2, epochs * 3 / 4)
    steps_per_epoch = CIFAR10_TRAIN_EXAMPLES // config.batch_size
    config.log_every_steps = max(1, steps_per_epoch // 8)
    config.eval_every_steps = steps_per_epoch
    config.checkpoint_every_steps = steps_per_epoch
    return config
