"""Exact evaluation: every example counts once, on any number of devices and processes.

In-memory data sets are evaluated whole on the device: batches of indices, the last one
padded and masked. Streamed data sets are evaluated by centre crop, 10-crop or multi-scale
testing: each process evaluates its own share of the split on its own devices (a forward
pass needs no communication) and the sums are added over processes at the end, so every
example counts once on any number of processes. An example may have several views
(10 crops, or the whole image at several scales); its score is the mean of the views'
softmax probabilities, as in the paper. Views of one shape are batched together; the
last batch of each shape is padded, and the padding is never counted.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils

from resnet_jax import backend, parallel
from resnet_jax.inputs import base
from resnet_jax.training.train_state import TrainState

# uint8 images -> the model's input (the input path's `normalize`).
Normalize = Callable[[jax.Array], jax.Array]


def make_in_memory_eval_step(model: nn.Module, mesh, normalize: Normalize) -> Callable:
    """Returns `eval_step(state, images, labels, indices, mask) -> sums`, jitted.

    `images`/`labels` are the whole eval split on the device; `indices` picks the batch.
    Padded examples carry mask 0, so sums over all batches count every example once.
    """
    batch_sharding = parallel.batch_sharded(mesh)

    def eval_step(state: TrainState, images, labels, indices, mask):
        batch = jax.lax.with_sharding_constraint(normalize(images[indices]), batch_sharding)
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

    return jax.jit(eval_step, **backend.jit_options(parallel.platform(mesh)))


def evaluate_in_memory(eval_step: Callable, state, images, labels, batch_size: int,
                       mesh) -> dict[str, float]:
    """loss / top-1 / top-5 over the whole eval split, by batches of `batch_size`."""
    num = int(labels.shape[0])
    replicated = parallel.replicated(mesh)
    in_flight = parallel.InFlight()
    batch_sums = []
    for start in range(0, num, batch_size):
        real = min(batch_size, num - start)
        indices = np.zeros(batch_size, np.int32)
        indices[:real] = np.arange(start, start + real)
        mask = (np.arange(batch_size) < real).astype(np.float32)
        sums = eval_step(state, images, labels, parallel.global_array(indices, replicated),
                         parallel.global_array(mask, replicated))
        batch_sums += in_flight.add(sums)
    batch_sums += in_flight.drain()
    totals = [sum(float(s[k]) for s in batch_sums) for k in ('loss', 'top1', 'top5', 'count')]
    return as_metrics(np.array(totals), num)


class LocalPredictor:
    """Softmax probabilities of uint8 views, on this process's devices only."""

    def __init__(self, model: nn.Module, normalize: Normalize):
        mesh = parallel.make_mesh(jax.local_devices())
        self.batch_sharding = parallel.batch_sharded(mesh)
        self.replicated = parallel.replicated(mesh)
        self.num_devices = mesh.devices.size

        def predict(variables, images):
            batch = normalize(images)
            logits = model.apply(variables, batch, train=False)
            return jax.nn.softmax(logits.astype(jnp.float32))

        self._predict = jax.jit(predict, **backend.jit_options(parallel.platform(mesh)))

    def local_variables(self, state) -> dict:
        """This process's replica of the (replicated, global) parameters and statistics."""
        return jax.tree.map(
            lambda x: jax.device_put(x.addressable_data(0), self.replicated),
            {'params': state.params, 'batch_stats': state.batch_stats})

    def __call__(self, variables, images: np.ndarray) -> jax.Array:
        return self._predict(variables, jax.device_put(images, self.batch_sharding))


class Evaluator:
    """`evaluator(state, eval_data)`: exact loss / top-1 / top-5 on an input's eval data,
    in-memory (`base.DeviceEvalSplit`) or streamed (`base.EvalExamples`)."""

    def __init__(self, model: nn.Module, mesh, normalize: Normalize, batch_size: int):
        self.model = model
        self.mesh = mesh
        self.normalize = normalize
        self.batch_size = batch_size  # global: each process takes its share of streamed data
        self.in_memory_step = make_in_memory_eval_step(model, mesh, normalize)

    @functools.cached_property
    def predictor(self) -> LocalPredictor:
        return LocalPredictor(self.model, self.normalize)

    def __call__(self, state, data: base.EvalData) -> dict[str, float]:
        if isinstance(data, base.DeviceEvalSplit):
            return evaluate_in_memory(self.in_memory_step, state, data.images, data.labels,
                                      self.batch_size, self.mesh)
        predictor = self.predictor
        variables = predictor.local_variables(state)
        local_batch = self.batch_size // jax.process_count()
        totals = evaluate_views(
            lambda views: predictor(variables, views), data.examples, local_batch,
            pixels_per_batch=local_batch * data.image_size**2, multiple=predictor.num_devices)
        return as_metrics(sum_over_processes(totals), data.num_examples)


def batch_size_for(shape: tuple, batch_size: int, pixels_per_batch: int | None,
                   multiple: int) -> int:
    """Views of `shape` per batch: about `pixels_per_batch` pixels, a multiple of `multiple`.

    Large views (multi-scale testing at 640 pixels) then take no more device memory, nor
    host memory while they wait in their bucket, than a batch of training-size views.
    """
    if pixels_per_batch is None:
        return batch_size
    fits = pixels_per_batch // (shape[0] * shape[1]) // multiple * multiple
    return max(multiple, min(batch_size, fits))


def evaluate_views(predict: Callable[[np.ndarray], jax.Array], examples: Iterable[dict],
                   batch_size: int, *, pixels_per_batch: int | None = None,
                   multiple: int = 1) -> np.ndarray:
    """Sums of (loss, top-1, top-5, count) over `examples`, this process's share.

    Each example is {'views': {name: uint8 [V, H, W, 3]}, 'label': int, 'id': int}; its
    probabilities are averaged over all its views. Views batch by shape, `batch_size` at
    most (fewer for large views, see `batch_size_for`). One batch is evaluated on the
    device while the next is assembled, so the host waits only for results a batch behind.
    """
    buckets: dict[tuple, list] = collections.defaultdict(list)
    pending: dict[int, list] = {}  # id -> [probability sum, views left, label]
    in_flight: collections.deque = collections.deque()
    totals = np.zeros(4)

    def finish(example_id: int) -> None:
        probability_sum, _, label = pending.pop(example_id)
        probabilities = probability_sum / probability_sum.sum()
        top5 = np.argpartition(-probabilities, min(5, len(probabilities)) - 1)[:5]
        totals[:] += (-np.log(max(probabilities[label], 1e-30)),
                      float(np.argmax(probabilities) == label), float(label in top5), 1.0)

    def resolve() -> None:
        ids, device_probabilities = in_flight.popleft()
        probabilities = np.asarray(device_probabilities, np.float64)
        for row, example_id in enumerate(ids):
            entry = pending[example_id]
            entry[0] += probabilities[row]
            entry[1] -= 1
            if entry[1] == 0:
                finish(example_id)

    def run(shape: tuple) -> None:
        items = buckets.pop(shape)
        views = np.zeros((batch_size_for(shape, batch_size, pixels_per_batch, multiple),
                          *shape), np.uint8)
        for row, (_, view) in enumerate(items):
            views[row] = view
        in_flight.append(([example_id for example_id, _ in items], predict(views)))
        if len(in_flight) > 1:
            resolve()

    for example in examples:
        example_id, label = int(example['id']), int(example['label'])
        all_views = [view for group in example['views'].values() for view in group]
        pending[example_id] = [0.0, len(all_views), label]
        for view in all_views:
            bucket = buckets[view.shape]
            bucket.append((example_id, view))
            if len(bucket) == batch_size_for(view.shape, batch_size, pixels_per_batch,
                                             multiple):
                run(view.shape)
    for shape in list(buckets):
        run(shape)
    while in_flight:
        resolve()
    assert not pending, f'{len(pending)} examples were not fully evaluated'
    return totals


def sum_over_processes(totals: np.ndarray) -> np.ndarray:
    """Adds every process's sums (every process gets the result)."""
    if jax.process_count() == 1:
        return totals
    # The gather goes through JAX, which (64-bit types off) hands the float64 sums back as
    # float32: numpy float32 results that json cannot write (final_eval.json failed on 2
    # processes). Add them in float64; the counts stay exact (float32 holds integers
    # up to 2**24) and the loss sums lose only float32 rounding.
    return np.asarray(multihost_utils.process_allgather(totals), np.float64).sum(axis=0)


def as_metrics(totals: np.ndarray, expected_count: int) -> dict[str, float]:
    """loss / top-1 / top-5 from summed totals, after checking every example counted once."""
    loss, top1, top5, count = totals
    if int(round(count)) != expected_count:
        raise AssertionError(f'evaluated {count:.0f} examples of {expected_count}')
    return {'loss': float(loss / count), 'top1_accuracy': float(top1 / count),
            'top5_accuracy': float(top5 / count)}
