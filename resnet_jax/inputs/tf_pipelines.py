"""The streaming input pipeline (tf.data): per-process shares, host augmentation, resume.

Each process reads only its own part of every global batch and decodes and augments it
on its CPUs. The data order is a function of (seed, epoch) and each example's augmentation
a function of (seed, epoch, position), so the pipeline can start at any step: a resumed
run sees exactly the batches of a run never stopped.

- Image folders (random access): one permutation of the whole train split per epoch;
  process p takes columns [p*L, (p+1)*L) of every global batch of size B = P*L, so the
  global batches are the same on any number of processes. Resuming skips the indices
  of the done steps, at no cost.
- tfds data sets (TFRecord files): each process streams an even share of the split,
  files in a seeded order, through a seeded shuffle buffer. Resuming replays the epoch's
  records up to the step without decoding them.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from resnet_jax.inputs import host_augment, order, sources, streaming_choices

# The pipeline must not take the accelerators from JAX (a full `tensorflow` install
# would otherwise claim GPU memory).
tf.config.set_visible_devices([], 'GPU')

logger = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class HostAugmentation:
    """What the host does to each image; read from the config."""

    train_kind: str  # 'scale' (the paper), 'inception' or 'none'
    image_size: int
    scale_range: tuple[int, int]
    area_range: tuple[float, float]
    aspect_range: tuple[float, float]
    eval_resize: int
    multi_scale_sizes: tuple[int, ...]
    multi_scale_aspect_ratios: tuple[float, ...]

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> HostAugmentation:
        stream = config.streaming
        return cls(stream.augment, config.image_size, tuple(stream.scale_range),
                   tuple(stream.area_range), tuple(stream.aspect_range), stream.eval_resize,
                   tuple(stream.multi_scale_sizes), tuple(stream.multi_scale_aspect_ratios))

    def train_view(self, encoded, seed):
        return host_augment.train_image(
            encoded, seed, kind=self.train_kind, crop_size=self.image_size,
            scale_range=self.scale_range, area_range=self.area_range,
            aspect_range=self.aspect_range)

    def eval_views(self, encoded, mode: str) -> dict[str, tf.Tensor]:
        """The views of one evaluation image, each [V, H, W, 3] uint8, by name."""
        if mode == 'center_crop':
            return {'center': host_augment.center_crop(encoded, self.image_size,
                                                       self.eval_resize)}
        if mode == 'ten_crop':
            return {'ten_crop': host_augment.ten_crop(encoded, self.image_size,
                                                      self.eval_resize)}
        if mode == 'multi_scale':
            return host_augment.multi_scale_views(encoded, self.multi_scale_sizes,
                                                  self.multi_scale_aspect_ratios)
        raise ValueError(f'unknown evaluation mode {mode!r}; choose one of '
                         f'{streaming_choices.EVAL_MODES}')


def limit_threads(threads: int) -> None:
    """Caps TensorFlow's own op thread pool too (some image ops shard work over it).

    Only possible before TensorFlow runs its first op; later it is left as it is.
    """
    if not threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:
        logger.warning('TensorFlow already started: streaming.threads=%d limits tf.data '
                       'only.', threads)


def _options(threads: int) -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    if threads:
        options.threading.private_threadpool_size = threads
    return options


class TrainStream:
    """This process's local batches of the training split, from any step on."""

    def __init__(self, source, augmentation: HostAugmentation, *, seed: int,
                 global_batch: int, process_index: int, process_count: int,
                 shuffle_buffer: int, threads: int = 0):
        self.source = source
        self.augmentation = augmentation
        self.seed = seed
        self.global_batch = global_batch
        self.local_batch = global_batch // process_count
        self.process_index = process_index
        self.process_count = process_count
        self.shuffle_buffer = shuffle_buffer
        self.threads = threads
        self.steps_per_epoch = source.num_examples('train') // global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f'batch_size={global_batch} exceeds the '
                             f'{source.num_examples("train")} training examples')

    def batches(self, start_step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images uint8 [L, S, S, 3], labels int32 [L]) for steps start_step, start_step+1, ..."""
        epoch, position = divmod(start_step, self.steps_per_epoch)
        while True:
            started = time.perf_counter()
            dataset = self.epoch_dataset(epoch, first_step=position)
            candidates = (self.local_indices(epoch)[position:].reshape(-1)
                          if self.source.random_access else None)
            for i, (images, labels) in enumerate(
                    numpy_items(dataset, self.source, 'train', candidates, self.local_batch)):
                if i == 0 and position:
                    logger.info('Resumed the input of epoch %d at step %d of %d in %.1f s.',
                                epoch, position, self.steps_per_epoch,
                                time.perf_counter() - started)
                yield images, labels
            epoch, position = epoch + 1, 0

    def epoch_dataset(self, epoch: int, first_step: int = 0) -> tf.data.Dataset:
        """Batches of one epoch from step `first_step` of it on."""
        local, steps = self.local_batch, self.steps_per_epoch
        if self.source.random_access:
            indices = self.local_indices(epoch)[first_step:]
            positions = self._positions(np.arange(first_step * local, steps * local))
            records = self.source.read('train', tf.data.Dataset.from_tensor_slices(
                (indices.reshape(-1), positions)))
        else:
            records = self.source.stream(
                'train', self.process_index, self.process_count,
                shuffle_seed=int(np.random.default_rng([self.seed, epoch]).integers(2**31)))
            records = records.shuffle(self.shuffle_buffer, seed=self.seed * 7919 + epoch,
                                      reshuffle_each_iteration=False)
            # Positions are counted before skipping, so a resumed epoch keeps them.
            records = tf.data.Dataset.zip(
                records, tf.data.Dataset.from_tensor_slices(
                    self._positions(np.arange(steps * local)))).map(
                lambda record, position: (*record, position)).skip(first_step * local)
        epoch_offset = np.int64(epoch) * steps * self.global_batch

        def augment(encoded, label, position):
            seed = tf.stack([tf.constant(self.seed, tf.int64), epoch_offset + position])
            return self.augmentation.train_view(encoded, seed), label

        dataset = records.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        dataset = dataset.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
        return dataset.with_options(_options(self.threads))

    def local_indices(self, epoch: int) -> np.ndarray:
        """[steps, local batch]: this process's examples of each step of an epoch."""
        local, steps = self.local_batch, self.steps_per_epoch
        permutation = order.epoch_permutation(self.seed, epoch, self.source.num_examples('train'))
        columns = slice(self.process_index * local, (self.process_index + 1) * local)
        return permutation[:steps * self.global_batch].reshape(steps, -1)[:, columns]

    def _positions(self, local_positions: np.ndarray) -> np.ndarray:
        """Global position in the epoch of this process's local example positions."""
        step, column = np.divmod(local_positions, self.local_batch)
        return (step * self.global_batch + self.process_index * self.local_batch
                + column).astype(np.int64)


def numpy_items(dataset: tf.data.Dataset, source, split: str, candidates: np.ndarray | None,
                per_item: int = 1) -> Iterator:
    """The dataset's items as numpy; a read or decode error becomes a one-line DataError.

    `candidates`: the source's example indices in the order the dataset reads them
    (None where it has none), `per_item` of them per item: the error then names the file.
    """
    done = 0
    iterator = dataset.as_numpy_iterator()
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as error:
            rest = None if candidates is None else candidates[done * per_item:]
            raise sources.read_error(source, split, rest, error) from None
        done += 1
        yield item


def eval_indices(source, process_index: int, process_count: int) -> np.ndarray:
    """This process's examples of a random-access source's eval split, in reading order."""
    return np.arange(process_index, source.num_examples(source.eval_split), process_count)


def eval_dataset(source, augmentation: HostAugmentation, mode: str, *, process_index: int,
                 process_count: int, threads: int = 0) -> tf.data.Dataset:
    """This process's share of the eval split: {'views': {name: [V,H,W,3]}, 'label', 'id'}.

    The shares of all processes are disjoint and cover the split: every example once.
    """
    split = source.eval_split
    if source.random_access:
        indices = eval_indices(source, process_index, process_count)
        records = source.read(split, tf.data.Dataset.from_tensor_slices(indices))
    else:
        records = source.stream(split, process_index, process_count, shuffle_seed=None)
    records = records.enumerate()

    def views(position, record):
        encoded, label = record
        return {'views': augmentation.eval_views(encoded, mode), 'label': label,
                'id': position}

    dataset = records.map(views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(_options(threads))


def prefetch_to_device(batches: Iterator, put, size: int = 2) -> Iterator:
    """Runs `put` (host -> device transfer) `size` batches ahead of the consumer."""
    queue = collections.deque()
    for batch in batches:
        queue.append(put(batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()


def to_global(batch: Sequence[np.ndarray], sharding) -> tuple[jax.Array, ...]:
    """Global arrays from this process's rows of a batch."""
    return tuple(jax.make_array_from_process_local_data(sharding, part) for part in batch)
