"""Optimiser, weight-decay mask, learning-rate schedules and run lengths, from the config."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from resnet_jax import models

SCHEDULES = ('step', 'cosine', 'polynomial')  # `config.schedule.name`
DURATION_UNITS = ('steps', 'epochs')  # `config.schedule.unit`
OPTIMIZERS = ('sgd', 'lars')  # `config.optim.name`
WEIGHT_DECAY_PARAMS = ('all', 'kernels')  # `config.optim.weight_decay_params`
# Goyal et al. 2017 ("Accurate, Large Minibatch SGD", section 2.2): a rate scaled up with
# the batch is reached by a linear warm-up over the first 5 epochs.
SCALED_WARMUP_EPOCHS = 5


def to_steps(amount: float, unit: str, steps_per_epoch: int) -> int:
    """Converts a duration in `unit` ('steps' or 'epochs') to whole steps."""
    if unit == 'epochs':
        return int(math.ceil(amount * steps_per_epoch))
    return int(amount)


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """The run's length in steps, from total_steps or num_epochs."""
    if config.total_steps is not None:
        return config.total_steps
    return to_steps(config.num_epochs, 'epochs', steps_per_epoch)


def peak_learning_rate(config: ml_collections.ConfigDict) -> tuple[float, str]:
    """The rate the schedule starts from (after any warm-up), and why, for the log.

    `schedule.lr` when set, exactly; otherwise `base_lr`, the recipe's rate for
    `base_batch_size` images, scaled linearly with the global batch (Goyal et al. 2017).
    """
    sched = config.schedule
    if sched.lr is not None:
        return sched.lr, f'lr {sched.lr:g} (schedule.lr, as set)'
    lr = sched.base_lr * config.batch_size / sched.base_batch_size
    return lr, (f'lr {lr:g} = {sched.base_lr:g} x {config.batch_size}/{sched.base_batch_size} '
                f'(schedule.base_lr per {sched.base_batch_size} images, scaled linearly '
                'with the global batch)')


def _scaled_up(config: ml_collections.ConfigDict) -> bool:
    """Whether the peak rate is base_lr scaled up for a batch above base_batch_size."""
    sched = config.schedule
    return sched.lr is None and config.batch_size > sched.base_batch_size


def warmup_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    """`schedule.warmup` in steps; when it is None, Goyal et al.'s rule: 5 epochs when the
    rate is scaled above `base_lr`, none otherwise."""
    sched = config.schedule
    if sched.warmup is not None:
        return to_steps(sched.warmup, sched.unit, steps_per_epoch)
    return to_steps(SCALED_WARMUP_EPOCHS, 'epochs', steps_per_epoch) if _scaled_up(config) else 0


def describe_learning_rate(config: ml_collections.ConfigDict) -> str:
    """One line for the start of a run: the peak rate and why, and the warm-up."""
    _, why = peak_learning_rate(config)
    sched = config.schedule
    if sched.warmup is None and _scaled_up(config):
        ramp = (f'linear warm-up from 0 over {SCALED_WARMUP_EPOCHS} epochs (Goyal et al., '
                'for the scaled rate)')
    elif not sched.warmup:
        ramp = 'no warm-up'
    elif sched.warmup_lr is not None:
        ramp = f'constant {sched.warmup_lr:g} for the first {sched.warmup:g} {sched.unit}'
    else:
        ramp = f'linear warm-up from 0 over {sched.warmup:g} {sched.unit}'
    line = f'{why}; {ramp}; {sched.name} schedule.'
    if sched.lr is None and config.batch_size != sched.base_batch_size and (
            config.total_steps is not None or sched.unit == 'steps'):
        line += (f' Durations in steps count steps of {config.batch_size} images, not of '
                 f'{sched.base_batch_size}: set num_epochs and schedule.unit=epochs to keep '
                 "the recipe's epochs.")
    return line


def learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """The schedule of `config.schedule`, from the peak rate, durations converted to steps.

    'step': the peak rate, multiplied by decay_factor at each boundary (the paper).
    'cosine': cosine decay from the peak to 0 at total_steps.
    'polynomial': (peak - end_lr) * (1 - t)^power + end_lr, t going from 0 after the
    warm-up to 1 at total_steps (the LARS recipes of MLPerf).
    Any may start with a warm-up: linear from 0, or constant at `warmup_lr`.
    """
    sched = config.schedule
    peak, _ = peak_learning_rate(config)
    warmup = warmup_steps(config, steps_per_epoch)
    decay_steps = max(total_steps - warmup, 1)
    if sched.name == 'step':
        boundaries = [to_steps(b, sched.unit, steps_per_epoch) for b in sched.boundaries]
        main = optax.piecewise_constant_schedule(
            peak, {b: sched.decay_factor for b in boundaries})
    elif sched.name == 'cosine':
        # The decay spans the steps after the warm-up, so it ends at exactly 0.
        main = optax.cosine_decay_schedule(peak, decay_steps)
    else:
        main = optax.polynomial_schedule(peak, sched.end_lr, sched.power, decay_steps)
    if warmup == 0:
        return main
    if sched.warmup_lr is None:
        ramp = optax.linear_schedule(0.0, peak, warmup)
    else:
        ramp = optax.constant_schedule(sched.warmup_lr)
    if sched.name == 'step':
        # Step boundaries count from step 0 of the run, warm-up included (the paper's
        # ResNet-110 still divides at 32k and 48k).
        return lambda step: jnp.where(step < warmup, ramp(step), main(step))
    return optax.join_schedules([ramp, main], [warmup])


def weight_decay_mask(params, which: str):
    """True for parameters that are decayed: all of them, or only conv/dense kernels."""
    if which not in WEIGHT_DECAY_PARAMS:
        raise ValueError(f'weight_decay_params={which!r}: choose one of {WEIGHT_DECAY_PARAMS}')
    if which == 'all':
        return jax.tree.map(lambda _: True, params)
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: path[-1] == 'kernel' for path in flat})


def make_optimizer(
    config: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    """The optimiser of `config.optim`, with L2 weight decay added to the gradient.

    'sgd': SGD with momentum (the paper, torch). 'lars': layer-wise adaptive rate scaling
    (You et al. 2017, optax.lars): each kernel's update is scaled by
    trust_coefficient * |w| / |g + weight_decay * w| before the rate and the momentum;
    BatchNorm scales and offsets and biases get neither that ratio nor, with
    weight_decay_params='kernels' (the LARS recipes), weight decay.
    """
    optim = config.optim

    def decayed(params):
        return weight_decay_mask(params, optim.weight_decay_params)

    if optim.name == 'lars':
        tx = optax.lars(
            schedule, weight_decay=optim.weight_decay, weight_decay_mask=decayed,
            trust_coefficient=optim.trust_coefficient, eps=optim.trust_eps,
            trust_ratio_mask=lambda params: weight_decay_mask(params, 'kernels'),
            momentum=optim.momentum, nesterov=optim.nesterov)
    else:
        tx = optax.chain(
            optax.add_decayed_weights(optim.weight_decay, mask=decayed),
            optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov),
        )
    # Fine-tuning: parts named in config.frozen_stages get no updates at all.
    return freeze(tx, config.frozen_stages)


def freeze(tx: optax.GradientTransformation, frozen_parts) -> optax.GradientTransformation:
    """`tx` for the parameters outside `frozen_parts` ('stem', 'stage1', ..., 'head');
    zero updates (no decay, no momentum) for those inside. `tx` itself if none is frozen."""
    frozen = set(frozen_parts)
    if not frozen:
        return tx

    def labels(params):
        return {module: jax.tree.map(
            lambda _, m=module: 'frozen' if models.part_of(m) in frozen else 'trained', tree)
            for module, tree in params.items()}

    return optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)
