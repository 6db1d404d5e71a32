"""The jitted train step: a pure function of the state and a batch, for both input paths.

The input's `preprocess` turns its batch into images and labels on the device (in-memory
data: gather, augment and normalise; streamed data: lighting and normalise). The
per-device part then runs under `jax.shard_map`: forward and backward on the local
shard, then `lax.pmean` of gradients, BatchNorm statistics and metrics over the data axis
(the semantics of `jax.pmap`).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from resnet_jax import backend, parallel
from resnet_jax.train_state import TrainState

DATA = parallel.DATA_AXIS


def _make_sharded_update(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                         skip_nonfinite: bool) -> Callable:
    """`(state, batch, labels) -> (state, metrics)`: the data-parallel update of one step."""
    platform = parallel.platform(mesh)

    def per_device_step(state: TrainState, images, labels):
        def loss_fn(params):
            variables = {'params': params, 'batch_stats': state.batch_stats}
            with backend.training_context(platform):
                logits, updates = model.apply(variables, images, train=True,
                                              mutable=['batch_stats'])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (logits, updates['batch_stats'])

        # Each device differentiates its own copy of the parameters (without the cast,
        # autodiff of a replicated input would already sum the gradients over devices);
        # the mean over devices is then explicit.
        local_params = jax.lax.pcast(state.params, DATA, to='varying')
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (logits, batch_stats)), grads = grad_fn(local_params)
        grads = jax.lax.pmean(grads, DATA)
        # Each device normalised with its own batch statistics; their running averages are
        # linear in those statistics, so averaging them every step equals averaging the
        # per-device copies at the end, and the state stays replicated.
        batch_stats = jax.lax.pmean(batch_stats, DATA)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            batch_stats=batch_stats,
            opt_state=opt_state,
        )
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        metrics = jax.lax.pmean({'loss': loss, 'accuracy': accuracy}, DATA)
        if skip_nonfinite:
            finite = jnp.isfinite(metrics['loss']) & jnp.all(jnp.array(
                [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
            new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                     new_state, state).replace(step=state.step + 1)
            metrics['skipped'] = 1.0 - finite.astype(jnp.float32)
        return new_state, metrics

    return jax.shard_map(
        per_device_step, mesh=mesh, in_specs=(P(), P(DATA), P(DATA)), out_specs=(P(), P()))


# `preprocess(key, *batch) -> (images, labels)`: turns a batch as the input yields it (the
# train step's arguments after the state) into the model's input and the labels. `key` is
# the step's augmentation key. In-memory batches are indices into the device-resident data
# set, so the labels come out of the gather too.
Preprocess = Callable[..., tuple[jax.Array, jax.Array]]


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    *,
    preprocess: Preprocess,
    augment_key: jax.Array,
    skip_nonfinite: bool = False,
) -> Callable:
    """Returns `train_step(state, *batch) -> (state, metrics)`, jitted, the state donated.

    `preprocess` (resnet_jax.inputs.preprocess) makes the global batch of images and
    labels; the randomness of its augmentation is `fold_in(augment_key, step)`, so a run
    resumed from a checkpoint sees the same augmentation as one never stopped, and it does
    not depend on the number of devices. With `skip_nonfinite`, a step whose loss or
    gradients are not finite leaves the state unchanged (but for the step counter) and
    reports `skipped` = 1.
    """
    sharded_update = _make_sharded_update(model, tx, mesh, skip_nonfinite)
    batch_sharding = parallel.batch_sharded(mesh)

    def train_step(state: TrainState, *batch):
        key = jax.random.fold_in(augment_key, state.step)
        images, labels = preprocess(key, *batch)
        images = jax.lax.with_sharding_constraint(images, batch_sharding)
        labels = jax.lax.with_sharding_constraint(labels, batch_sharding)
        new_state, metrics = sharded_update(state, images, labels)
        metrics['learning_rate'] = schedule(state.step)
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=0, **backend.jit_options(parallel.platform(mesh)))
