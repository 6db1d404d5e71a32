"""The in-memory input path: data sets kept whole on the device (CIFAR-10, small folders).

The uint8 images and labels are loaded once, placed on every device, and each step
receives only the indices of its global batch; augmentation runs inside the step. The
order is a function of (seed, step), so nothing about the input needs to be saved.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import configs, models, parallel, steps
from resnet_jax.data import arrays


@dataclasses.dataclass
class BatchOrder:
    """Which examples form the global batch of each step: a new permutation every epoch.

    A function of (seed, step) alone, so a resumed run continues the same order.
    The examples left over at the end of an epoch are skipped (the next epoch's
    permutation covers them).
    """

    num_examples: int
    batch_size: int
    seed: int
    _epoch: int = -1
    _permutation: np.ndarray | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    def indices(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._permutation = rng.permutation(self.num_examples).astype(np.int32)
            self._epoch = epoch
        start = position * self.batch_size
        return self._permutation[start:start + self.batch_size]


def load_data(config: ml_collections.ConfigDict) -> arrays.ArrayDataset:
    """Loads the in-memory data set that the config names."""
    synthetic = config.synthetic
    return arrays.load_dataset(
        config.dataset,
        config.data_dir,
        validation_examples=config.validation_examples,
        image_size=config.image_size,
        num_classes=config.num_classes,
        num_train_examples=synthetic.num_train_examples,
        num_eval_examples=synthetic.num_eval_examples,
        seed=config.seed,
    )


def check_data_fits(config: ml_collections.ConfigDict, data: arrays.ArrayDataset) -> None:
    """The model and batch size must suit the data set that was loaded."""
    image_size = data.train_images.shape[1]
    if config.image_size is not None and config.image_size != image_size:
        raise configs.ConfigError(
            f'image_size={config.image_size} but the data set holds {image_size}px images; '
            'leave image_size unset to take it from the data')
    smallest = models.min_image_size(config.model.name)
    if image_size < smallest:
        raise configs.ConfigError(
            f'{config.model.name} needs images of at least {smallest}px; the data has '
            f'{image_size}px')
    if config.num_classes is not None and config.num_classes != data.num_classes:
        raise configs.ConfigError(
            f'num_classes={config.num_classes} but the data set has {data.num_classes}')
    if config.batch_size > len(data.train_labels):
        raise configs.ConfigError(
            f'batch_size={config.batch_size} exceeds the {len(data.train_labels)} training '
            'examples')


def evaluate(eval_step, state, images, labels, batch_size: int, mesh) -> dict[str, float]:
    """Exact evaluation: the last batch is padded and masked, every example counts once."""
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
    totals = {k: sum(float(s[k]) for s in batch_sums) for k in batch_sums[0]}
    count = totals['count']
    assert count == num, f'evaluated {count} examples of {num}'
    return {
        'loss': totals['loss'] / count,
        'top1_accuracy': totals['top1'] / count,
        'top5_accuracy': totals['top5'] / count,
    }


def build_steps(config: ml_collections.ConfigDict, model, tx, schedule, mesh,
                augment_key: jax.Array, train_images: np.ndarray):
    """The jitted train and eval steps of a run; the per-pixel mean is the train set's."""
    pixel_mean = jnp.asarray(train_images.mean(axis=0, dtype=np.float64), jnp.float32)
    train_step = steps.make_train_step(
        model, tx, schedule, mesh, pixel_mean=pixel_mean, augment=config.augment,
        pad_pixels=config.pad_pixels, augment_key=augment_key,
        skip_nonfinite=config.skip_nonfinite_steps)
    return train_step, steps.make_eval_step(model, mesh, pixel_mean=pixel_mean)


class InMemoryInput:
    """The training loop's input for in-memory data sets."""

    eval_modes = ('whole_image',)

    def __init__(self, config: ml_collections.ConfigDict, mesh):
        self.config = config
        self.mesh = mesh
        self.data = load_data(config)
        check_data_fits(config, self.data)
        data = self.data
        self.num_classes = data.num_classes
        self.image_size = data.train_images.shape[1]
        self.eval_split = data.eval_split
        self.description = (f'{data.source}, {len(data.train_labels)} train / '
                            f'{len(data.eval_labels)} {data.eval_split} examples of '
                            f'{self.image_size}px, {data.num_classes} classes, in memory')
        self.order = BatchOrder(len(data.train_labels), config.batch_size, config.seed)
        self.steps_per_epoch = self.order.steps_per_epoch
        # Every process holds the whole data set (loaded identically from the seed or the
        # files), and every device a replica. The batch indices are the same on every
        # process too (a function of seed and step).
        self.replicated = parallel.replicated(mesh)
        self.device_data = {name: parallel.global_array(value, self.replicated)
                            for name, value in (('train_images', data.train_images),
                                                ('train_labels', data.train_labels),
                                                ('eval_images', data.eval_images),
                                                ('eval_labels', data.eval_labels))}
        self.eval_step = None

    def make_train_step(self, model, tx, schedule, augment_key):
        """The jitted step; its arguments after the state are what `batches` yields."""
        train_step, self.eval_step = build_steps(
            self.config, model, tx, schedule, self.mesh, augment_key, self.data.train_images)
        return train_step

    def batches(self, start_step: int):
        images, labels = self.device_data['train_images'], self.device_data['train_labels']
        for step in itertools.count(start_step):
            yield images, labels, parallel.global_array(self.order.indices(step),
                                                        self.replicated)

    def evaluate(self, state, mode: str = 'whole_image') -> dict[str, float]:
        del mode  # in-memory images are evaluated whole.
        return evaluate(self.eval_step, state, self.device_data['eval_images'],
                        self.device_data['eval_labels'], self.config.eval_batch_size,
                        self.mesh)
