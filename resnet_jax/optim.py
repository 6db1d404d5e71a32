"""Optimiser, weight-decay mask and learning-rate schedules, all built from the config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from resnet_jax import configs, init_from


def learning_rate_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """The schedule of `config.schedule`, with durations converted to steps.

    'step': base_lr, multiplied by decay_factor at each boundary (the paper).
    'cosine': cosine decay from base_lr to 0 at total_steps.
    Either may start with a warm-up: linear from 0, or constant at `warmup_lr`.
    """
    sched = config.schedule
    warmup = configs.to_steps(sched.warmup, sched.unit, steps_per_epoch)
    if sched.name == 'step':
        boundaries = [configs.to_steps(b, sched.unit, steps_per_epoch) for b in sched.boundaries]
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
    return init_from.freeze(tx, config.get('frozen_stages', ()))
