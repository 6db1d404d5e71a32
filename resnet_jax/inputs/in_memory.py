"""The in-memory input: data sets kept whole on the device (CIFAR-10, small image folders).

The uint8 images and labels are loaded once and placed on every device; each step
receives only the indices of its global batch, and gathers, augments and normalises them
inside the jitted step. The order is a function of (seed, step), so nothing about the
input needs to be saved.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import ml_collections
import numpy as np

from resnet_jax import parallel
from resnet_jax.inputs import arrays, base, order
from resnet_jax.inputs.device_preprocessing import InMemoryPreprocessing


@dataclasses.dataclass
class BatchOrder:
    """Which examples form the global batch of each step: a new permutation every epoch.

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
            self._permutation = order.epoch_permutation(self.seed, epoch, self.num_examples)
            self._epoch = epoch
        start = position * self.batch_size
        return self._permutation[start:start + self.batch_size]


def load_dataset(config: ml_collections.ConfigDict) -> arrays.ArrayDataset:
    """Loads the data set that the config names into host memory."""
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


def open_dataset(config: ml_collections.ConfigDict) -> arrays.ArrayDataset:
    """Loads the data set that the config names, and checks that the run fits it."""
    data = load_dataset(config)
    base.check_data_fits(config, data, data.image_size)
    return data


class InMemoryInput:
    """The training loop's input (`base.Input`) for a data set held on the device."""

    eval_modes = ('whole_image',)

    def __init__(self, config: ml_collections.ConfigDict, mesh, data: arrays.ArrayDataset,
                 dtype: Any):
        self.num_classes = data.num_classes
        self.image_size = data.image_size
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
        # The per-pixel mean is the training set's.
        self.preprocessing = InMemoryPreprocessing.from_config(config, data.train_images, dtype)

    def batches(self, start_step: int):
        """(train images, train labels, batch indices) of each step from `start_step` on."""
        images, labels = self.device_data['train_images'], self.device_data['train_labels']
        for step in itertools.count(start_step):
            yield images, labels, parallel.global_array(self.order.indices(step),
                                                        self.replicated)

    def eval_data(self, mode: str) -> base.DeviceEvalSplit:
        """The whole eval split, on the device (in-memory images are evaluated whole)."""
        del mode
        return base.DeviceEvalSplit(self.device_data['eval_images'],
                                    self.device_data['eval_labels'])
