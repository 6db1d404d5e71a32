"""Optimiser, weight-decay mask, learning-rate schedules and run lengths, from the config."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from resnet_jax import models

SCHEDULES = ('step', 'cosine')  # `config.schedule.name`
DURATION_UNITS = ('steps', 'epochs')  # `config.schedule.unit`
WEIGHT_DECAY_PARAMS = ('all', 'kernels')  # `config.optim.weight_decay_params`


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


def learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """The schedule of `config.schedule`, with durations converted to steps.

    'step': base_lr, multiplied by decay_factor at each boundary (the paper).
    'cosine': cosine decay from base_lr to 0 at total_steps.
    Either may start with a warm-up: linear from 0, or constant at `warmup_lr`.
    """
    sched = config.schedule
    warmup = to_steps(sched.warmup, sched.unit, steps_per_epoch)
    if sched.name == 'step':
        boundaries = [to_steps(b, sched.unit, steps_per_epoch) for b in sched.boundaries]
        main = optax.piecewise_constant_schedule(
            sched.base_lr, {b: sched.decay_factor for b in boundaries})
    else:
        # The cosine spans the steps after the warm-up, so it ends at exactly 0.
        main = optax.cosine_decay_schedule(sched.base_lr, max(total_steps - warmup, 1))
    if warmup == 0:
        return main
    if sched.warmup_lr is None:
        ramp = optax.linear_schedule(0.0, sched.base_lr, warmup)
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
    """SGD with momentum and L2 weight decay added to the gradient (as the paper and torch)."""
    optim = config.optim
    tx = optax.chain(
        optax.add_decayed_weights(
            optim.weight_decay,
            mask=lambda params: weight_decay_mask(params, optim.weight_decay_params)),
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
