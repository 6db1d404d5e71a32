"""What the training loop needs of an input, and the checks both input paths share.

A run opens its data set first (`DataSet`: classes, sizes), builds the model and
optimiser for it, and then the input (`Input`), which builds its jitted train step and
its evaluation on construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import ml_collections

from resnet_jax import configs
from resnet_jax.data import arrays


class DataSet(Protocol):
    """An opened data set: an in-memory ArrayDataset or a streamed source."""

    num_classes: int
    eval_split: str  # 'test' or 'validation'
    description: str

    def num_examples(self, split: str) -> int: ...


class Input(Protocol):
    """The training loop's input: its train step, its batches and its evaluation."""

    num_classes: int
    image_size: int
    steps_per_epoch: int
    eval_split: str
    eval_modes: tuple[str, ...]  # the first runs every eval_every_steps; all at the end
    description: str  # one line for the log
    # Jitted `(state, *batch) -> (state, metrics)`; a batch is what `batches` yields.
    train_step: Callable

    def batches(self, start_step: int) -> Iterator[tuple]:
        """The global batches of steps `start_step`, `start_step` + 1, ..."""
        ...

    def evaluate(self, state, mode: str | None = None) -> dict[str, float]:
        """Exact loss / top-1 / top-5 on the eval split (`mode`: one of eval_modes)."""
        ...


# (num_classes, image_size) of the data sets whose shape is known without opening them:
# CIFAR-10, and ImageNet at the paper's 224px crops.
_KNOWN_SHAPES = {'cifar10': (len(arrays.CIFAR10_CLASSES), arrays.CIFAR10_IMAGE_SHAPE[0]),
                 'imagenet2012': (1000, 224)}


def shape_from_config(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(num_classes, image_size) from the config, or from the data set it names, unopened."""
    known_classes, known_size = _KNOWN_SHAPES.get(config.dataset, (None, None))
    num_classes = config.num_classes or known_classes
    image_size = config.image_size or known_size
    if num_classes is None or image_size is None:
        raise configs.ConfigError(
            f'dataset={config.dataset!r} does not fix num_classes and image_size: set '
            '--config.num_classes and --config.image_size in the config')
    return num_classes, image_size


def steps_per_epoch(config: ml_collections.ConfigDict, data: DataSet) -> int:
    """Whole global batches per epoch (the examples left over are not used that epoch)."""
    return data.num_examples('train') // config.batch_size


def check_data_fits(config: ml_collections.ConfigDict, data: DataSet,
                    image_size: int) -> None:
    """The classes, image size and batch size of `config` must suit the data set opened."""
    if config.image_size is not None and config.image_size != image_size:
        raise configs.ConfigError(
            f'image_size={config.image_size} but the data set holds {image_size}px images; '
            'leave image_size unset to take it from the data')
    if config.num_classes is not None and config.num_classes != data.num_classes:
        raise configs.ConfigError(
            f'num_classes={config.num_classes} but {data.description} has '
            f'{data.num_classes}; leave num_classes unset to take it from the data')
    train_examples = data.num_examples('train')
    if config.batch_size > train_examples:
        raise configs.ConfigError(
            f'batch_size={config.batch_size} exceeds the {train_examples} training examples')
