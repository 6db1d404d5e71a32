"""The input of a run, in memory or streamed, as `config.pipeline` says.

`open_dataset` reads what the model and schedule depend on (classes, sizes); `make_input`
then builds the input over it.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from resnet_jax import configs, packages
from resnet_jax.inputs import in_memory
from resnet_jax.inputs.base import DataSet, Input


def _streamed_module(config: ml_collections.ConfigDict):
    return packages.import_for(  # imports TensorFlow
        'resnet_jax.inputs.streamed', f'dataset={config.dataset!r}, streamed,')


def open_dataset(config: ml_collections.ConfigDict) -> DataSet:
    """The data set of the run, checked against the config: loaded, or opened for streaming."""
    if configs.pipeline(config) == 'streaming':
        return _streamed_module(config).open_dataset(config)
    return in_memory.open_dataset(config)


def make_input(config: ml_collections.ConfigDict, mesh, data: DataSet, dtype: Any) -> Input:
    """The input of the run over `data`, preprocessing into the model's compute `dtype`."""
    if configs.pipeline(config) == 'streaming':
        return _streamed_module(config).StreamedInput(config, mesh, data, dtype)
    return in_memory.InMemoryInput(config, mesh, data, dtype)
