"""The jitted train and eval steps: pure functions of the state and a batch.

In-memory data sets live on the device (uint8): a step receives the indices of its
global batch and gathers and augments them on the device. Streamed batches arrive
cropped on the hosts and are normalised on the device. Both then run the per-device part under
`jax.shard_map`: forward and backward on the local shard, then `lax.pmean` of gradients,
BatchNorm statistics and metrics over the data axis (the semantics of `jax.pmap`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from resnet_jax import backend, parallel
from resnet_jax.data import augment as augment_lib
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


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    *,
    pixel_mean: jax.Array,
    augment: str,
    pad_pixels: int,
    augment_key: jax.Array,
    skip_nonfinite: bool = False,
) -> Callable:
    """Returns `train_step(state, images, labels, indices) -> (state, metrics)`, jitted.

    `images`/`labels` are the whole training set on the device; `indices` [batch] picks
    the global batch. Augmentation randomness is `fold_in(augment_key, step)`, so a run
    resumed from a checkpoint sees the same crops and flips as one never stopped, and it
    does not depend on the number of devices. With `skip_nonfinite`, a step whose loss or
    gradients are not finite leaves the state unchanged (but for the step counter) and
    reports `skipped` = 1.
    """
    sharded_update = _make_sharded_update(model, tx, mesh, skip_nonfinite)
    batch_sharding = parallel.batch_sharded(mesh)

    def train_step(state: TrainState, images, labels, indices):
        key = jax.random.fold_in(augment_key, state.step)
        batch = augment_lib.augment(key, images[indices], augment, pad_pixels)
        batch = augment_lib.normalize(batch, pixel_mean, 255.0, model.dtype)
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        batch_labels = jax.lax.with_sharding_constraint(labels[indices], batch_sharding)
        new_state, metrics = sharded_update(state, batch, batch_labels)
        metrics['learning_rate'] = schedule(state.step)
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=0, **backend.jit_options(parallel.platform(mesh)))


@dataclasses.dataclass(frozen=True)
class Lighting:
    """The PCA colour augmentation's strength and the data's RGB eigen-decomposition."""

    std: float
    eigenvalues: tuple[float, ...]
    eigenvectors: tuple[tuple[float, ...], ...]

    @classmethod
    def from_config(cls, stream) -> Lighting:
        """From the `config.streaming` section."""
        return cls(stream.lighting_std, tuple(stream.lighting_eigenvalues),
                   tuple(map(tuple, stream.lighting_eigenvectors)))


def make_batch_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    *,
    mean: jax.Array,
    std: jax.Array,
    lighting: Lighting | None,
    augment_key: jax.Array,
    skip_nonfinite: bool = False,
) -> Callable:
    """Returns `train_step(state, images, labels) -> (state, metrics)` for streamed batches.

    `images` is the global uint8 batch, already cropped and flipped on the hosts and
    sharded over the devices. The step adds the lighting shift (random from
    `fold_in(augment_key, step)`) and normalises by the per-channel mean and std.
    """
    sharded_update = _make_sharded_update(model, tx, mesh, skip_nonfinite)
    batch_sharding = parallel.batch_sharded(mesh)

    def train_step(state: TrainState, images, labels):
        offset = None
        if lighting is not None and lighting.std > 0:
            key = jax.random.fold_in(augment_key, state.step)
            offset = augment_lib.lighting_offset(
                key, images.shape[0], lighting.std, jnp.asarray(lighting.eigenvalues),
                jnp.asarray(lighting.eigenvectors))
        batch = augment_lib.normalize(images, mean, std, model.dtype, offset)
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        new_state, metrics = sharded_update(state, batch, labels)
        metrics['learning_rate'] = schedule(state.step)
        return new_state, metrics

    return jax.jit(train_step, donate_argnums=0, **backend.jit_options(parallel.platform(mesh)))


def make_eval_step(model: nn.Module, mesh: Mesh, *, pixel_mean: jax.Array) -> Callable:
    """Returns `eval_step(state, images, labels, indices, mask) -> sums`, jitted.

    Padded examples carry mask 0, so sums over all batches count every example once.
    """
    batch_sharding = parallel.batch_sharded(mesh)

    def eval_step(state: TrainState, images, labels, indices, mask):
        batch = augment_lib.normalize(images[indices], pixel_mean, 255.0, model.dtype)
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        batch_labels = labels[indices]
        variables = {'params': state.params, 'batch_stats': state.batch_stats}
        logits = model.apply(variables, batch, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels)
        k = min(5, logits.shape[-1])
        top_k = jax.lax.top_k(logits, k)[1]
        top1 = top_k[:, 0] == batch_labels
        top5 = jnp.any(top_k == batch_labels[:, None], axis=-1)
        return {
            'loss': jnp.sum(loss * mask),
            'top1': jnp.sum(top1 * mask),
            'top5': jnp.sum(top5 * mask),
            'count': jnp.sum(mask),
        }

    return jax.jit(eval_step)
