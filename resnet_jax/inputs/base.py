"""What the training loop needs of an input, and the checks both input paths share.

A run opens its data set first (`DataSet`: classes, sizes), builds the model and
optimiser for it, and then the input (`Input`): its global batches, the preprocessing the
train step applies to them, and the eval split. Training builds the steps
(`resnet_jax.training.steps.make_steps`); an input never does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Protocol

import jax
import ml_collections

from resnet_jax import configs
from resnet_jax.inputs import arrays


class DataSet(Protocol):
    """An opened data set: an in-memory ArrayDataset or a streamed source."""

    num_classes: int
    eval_split: str  # 'test' or 'validation'
    description: str

    def num_examples(self, split: str) -> int: ...


class Preprocessing(Protocol):
    """What the train step does to a batch on the device before the model."""

    def train(self, key: jax.Array, *batch) -> tuple[jax.Array, jax.Array]:
        """(images, labels) of a batch as `Input.batches` yields it; `key` is the step's."""
        ...

    def normalize(self, images: jax.Array) -> jax.Array:
        """uint8 images to the model's input (evaluation applies this alone)."""
        ...


@dataclasses.dataclass(frozen=True)
class DeviceEvalSplit:
    """The whole eval split on every device (in-memory data): uint8 images and labels."""

    images: jax.Array
    labels: jax.Array


@dataclasses.dataclass(frozen=True)
class EvalExamples:
    """This process's share of a streamed eval split, in one eval mode.

    Each example is {'views': {name: uint8 [V, H, W, 3]}, 'label': int, 'id': int}; its
    score is the mean of its views' probabilities.
    """

    examples: Iterable[dict]
    num_examples: int  # of the whole split, over all processes
    image_size: int  # training's crop size: eval batches hold about as many pixels


EvalData = DeviceEvalSplit | EvalExamples


class Input(Protocol):
    """The training loop's input: batches, their preprocessing, and the eval split."""

    num_classes: int
    image_size: int
    steps_per_epoch: int
    eval_split: str
    eval_modes: tuple[str, ...]  # the first runs every eval_every_steps; all at the end
    description: str  # one line for the log
    preprocessing: Preprocessing

    def batches(self, start_step: int) -> Iterator[tuple]:
        """The global batches of steps `start_step`, `start_step` + 1, ..."""
        ...

    def eval_data(self, mode: str) -> EvalData:
        """The eval split as evaluated in `mode` (one of eval_modes)."""
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
