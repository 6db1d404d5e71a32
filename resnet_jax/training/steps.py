"""The jitted train step: a pure function of the state and a batch, for both input paths.

The input's `preprocess` turns its batch into images and labels on the device (in-memory
data: gather, augment and normalise; streamed data: lighting and normalise). The
per-device part then runs under `jax.shard_map`: forward and backward on the local
shard, then `lax.pmean` of gradients, BatchNorm statistics and metrics over the data axis
(the semantics of `jax.pmap`).
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
from resnet_jax.inputs.base import Preprocessing
from resnet_jax.training import evaluation
from resnet_jax.training.train_state import TrainState

DATA = parallel.DATA_AXIS


@dataclasses.dataclass(frozen=True)
class StepOptions:
    """What a train step does beyond forward, backward and update, from the config."""

    label_smoothing: float = 0.0  # config.loss.label_smoothing
    grad_accum_steps: int = 1  # micro-batches per device and step
    skip_nonfinite: bool = False  # config.skip_nonfinite_steps

    @classmethod
    def from_config(cls, config) -> StepOptions:
        return cls(label_smoothing=config.loss.label_smoothing,
                   grad_accum_steps=config.grad_accum_steps,
                   skip_nonfinite=config.skip_nonfinite_steps)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
    """Per-example cross-entropy against the labels, smoothed towards uniform when > 0."""
    if not label_smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype),
                                  label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def _as_varying(tree, labels):
    """`tree` plus a zero computed from this device's labels: every leaf comes out varying
    over the data axis, as a scan's carry must keep one type (with sync_batch_norm some
    BN statistics come out already averaged, the same on every device)."""
    zero = labels[0] * 0  # an integer: never NaN
    return jax.tree.map(lambda x: x + zero.astype(x.dtype), tree)


def _make_sharded_update(model: nn.Module, tx: optax.GradientTransformation, mesh: Mesh,
                         options: StepOptions) -> Callable:
    """`(state, batch, labels) -> (state, metrics)`: the data-parallel update of one step."""
    platform = parallel.platform(mesh)
    accum = options.grad_accum_steps

    def loss_fn(params, batch_stats, images, labels):
        variables = {'params': params, 'batch_stats': batch_stats}
        with backend.training_context(platform):
            logits, updates = model.apply(variables, images, train=True, mutable=['batch_stats'])
        loss = cross_entropy(logits, labels, options.label_smoothing).mean()
        return loss, (logits, updates['batch_stats'])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def gradients(params, batch_stats, images, labels):
        """(gradients, updated BN statistics, metrics) of one (micro-)batch."""
        (loss, (logits, new_stats)), grads = grad_fn(params, batch_stats, images, labels)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
        return grads, new_stats, {'loss': loss, 'accuracy': accuracy}

    def accumulated_gradients(params, batch_stats, images, labels):
        """The mean over `accum` equal micro-batches, run one after the other: each starts
        from the same BN statistics, as the devices do, so accumulating k micro-batches on
        n devices is the step of n*k devices."""
        def micro(x):
            return x.reshape(accum, x.shape[0] // accum, *x.shape[1:])

        def add(total, micro_batch):
            # The barrier makes this micro-batch wait for the sum so far: unrolled, they
            # still run one after the other, holding one micro-batch's activations.
            micro_batch, total = jax.lax.optimization_barrier((micro_batch, total))
            out = _as_varying(gradients(params, batch_stats, *micro_batch), labels)
            return jax.tree.map(jnp.add, total, out), None

        size = images.shape[0] // accum
        shapes = jax.eval_shape(gradients, params, batch_stats, images[:size], labels[:size])
        zeros = _as_varying(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), labels)
        total, _ = jax.lax.scan(add, zeros, (micro(images), micro(labels)),
                                unroll=backend.accumulation_unroll(platform, accum))
        return jax.tree.map(lambda x: x / accum, total)

    def per_device_step(state: TrainState, images, labels):
        # Each device differentiates its own copy of the parameters (without the cast,
        # autodiff of a replicated input would already sum the gradients over devices);
        # the mean over devices is then explicit.
        local_params = jax.lax.pcast(state.params, DATA, to='varying')
        local = gradients if accum == 1 else accumulated_gradients
        grads, batch_stats, metrics = local(local_params, state.batch_stats, images, labels)
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
        metrics = jax.lax.pmean(metrics, DATA)
        if options.skip_nonfinite:
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
    options: StepOptions = StepOptions(),
) -> Callable:
    """Returns `train_step(state, *batch) -> (state, metrics)`, jitted, the state donated.

    `preprocess` (an input's `preprocessing.train`) makes the global batch of images and
    labels; the randomness of its augmentation is `fold_in(augment_key, step)`, so a run
    resumed from a checkpoint sees the same augmentation as one never stopped, and it does
    not depend on the number of devices. With `options.skip_nonfinite`, a step whose loss
    or gradients are not finite leaves the state unchanged (but for the step counter) and
    reports `skipped` = 1.
    """
    sharded_update = _make_sharded_update(model, tx, mesh, options)
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


@dataclasses.dataclass(frozen=True)
class Steps:
    """The steps of a run: `train(state, *batch) -> (state, metrics)`, jitted, and
    `evaluate(state, eval_data) -> metrics`."""

    train: Callable
    evaluate: evaluation.Evaluator


def make_steps(config, mesh: Mesh, model: nn.Module, tx: optax.GradientTransformation,
               schedule: optax.Schedule, preprocessing: Preprocessing,
               augment_key: jax.Array) -> Steps:
    """The train step and the evaluation that `config` describes, for an input's
    `preprocessing`: the one place they are built (the loop, the benchmark, benchmarks/)."""
    train_step = make_train_step(model, tx, schedule, mesh, preprocess=preprocessing.train,
                                 augment_key=augment_key, options=StepOptions.from_config(config))
    return Steps(train_step, evaluation.Evaluator(model, mesh, preprocessing.normalize,
                                                  config.eval_batch_size))
