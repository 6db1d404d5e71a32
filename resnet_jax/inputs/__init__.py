"""The training loop's inputs: in memory (on the device) or streamed (tf.data on the hosts).

`open_dataset` reads what the model and schedule depend on (classes, sizes); `make_input`
then builds the input, its train step and its evaluation, for the model of the run.
"""

from __future__ import annotations

import jax
import ml_collections
import optax

from resnet_jax import configs, packages
from resnet_jax.inputs import in_memory
from resnet_jax.inputs.base import DataSet, Input, steps_per_epoch

__all__ = ['DataSet', 'Input', 'make_input', 'open_dataset', 'steps_per_epoch']


def _streamed_module(config: ml_collections.ConfigDict):
    return packages.import_for(  # imports TensorFlow
        'resnet_jax.inputs.streamed', f'dataset={config.dataset!r}, streamed,')


def open_dataset(config: ml_collections.ConfigDict) -> DataSet:
    """The data set of the run, checked against the config: loaded, or opened for streaming."""
    if configs.pipeline(config) == 'streaming':
        return _streamed_module(config).open_dataset(config)
    return in_memory.open_dataset(config)


def make_input(config: ml_collections.ConfigDict, mesh, data: DataSet, model,
               tx: optax.GradientTransformation, schedule: optax.Schedule,
               augment_key: jax.Array) -> Input:
    """The input of the run over `data`, with its steps built for `model`."""
    if configs.pipeline(config) == 'streaming':
        return _streamed_module(config).StreamedInput(
            config, mesh, data, model, tx, schedule, augment_key)
    return in_memory.InMemoryInput(config, mesh, data, model, tx, schedule, augment_key)
