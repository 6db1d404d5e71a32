"""Trained models on disk: write a model directory, and load one (or a run's workdir).

A model directory has the layout of a training run's workdir, so that everything that
reads a workdir reads it, and a workdir is a model directory:

    DIR/config.json              the experiment config (model, data set, preprocessing)
    DIR/checkpoints/<step>/      Orbax: `state` (a TrainState tree) and `run` (the record)

`resnet_jax.pretrained.convert` writes step 0 with an empty optimiser state; a training run writes
its steps. `load(DIR)` returns the model and the variables of its newest step:

    from resnet_jax import pretrained
    model, variables = pretrained.load('converted/resnet50')
    logits = model.apply(variables, images, train=False)  # float32 NHWC, normalised
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from resnet_jax import configs, models
from resnet_jax.models.layers import XLA_LAYERS, Layers
from resnet_jax.pretrained import class_names


class ModelDirError(ValueError):
    """A path that is not a readable model directory or workdir; the message says why."""


@dataclasses.dataclass(frozen=True)
class Loaded:
    """A model directory's contents: the model, its variables and what it was trained on."""

    model: models.ResNet
    variables: dict[str, Any]
    config: ml_collections.ConfigDict
    step: int
    record: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def class_names(self) -> list[str] | None:
        """The names of the classes where the config says which data set it was: ImageNet's
        1000, CIFAR-10's, an image folder's (if the folder is still there); else None."""
        return class_names.for_config(self.config, self.num_classes)


def _handlers() -> dict[str, ocp.CheckpointHandler]:
    return {'state': ocp.StandardCheckpointHandler(), 'run': ocp.JsonCheckpointHandler()}


def checkpoints_dir(directory: str) -> epath.Path:
    """The Orbax directory of a model directory or workdir (`DIR/checkpoints`)."""
    return epath.Path(os.path.abspath(os.path.expanduser(directory))) / 'checkpoints'


def read_config(directory: str) -> ml_collections.ConfigDict:
    """The `config.json` of a model directory or workdir, as a ConfigDict."""
    path = os.path.join(directory, 'config.json')
    if not os.path.isfile(path):
        what = 'no such directory' if not os.path.isdir(directory) else 'no config.json'
        raise ModelDirError(f'{directory} is not a model directory or workdir ({what}); '
                            'make one with python -m resnet_jax.pretrained.convert or a '
                            'training run')
    with open(path) as file:
        config = config_from_json(json.load(file))
    config.model.block = models.architecture.block_in_directory(config.model.block, directory)
    return config


def config_from_json(saved: dict[str, Any]) -> ml_collections.ConfigDict:
    """A saved config (config.json's contents) over the current defaults, so that one written
    before a field existed reads as that field's default."""
    config = configs.get_base_config()
    _overlay(config, saved)
    return config


def _overlay(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> None:
    for key, value in saved.items():
        if key not in config:
            continue  # a field this version no longer has
        if isinstance(config[key], ml_collections.ConfigDict) and isinstance(value, dict):
            _overlay(config[key], value)
        else:
            with config.ignore_type():
                config[key] = tuple(value) if isinstance(value, list) else value


def read_variables(directory: str, step: int | None = None) -> tuple[dict[str, Any], int,
                                                                      dict[str, Any]]:
    """({'params', 'batch_stats'} as numpy, the step, the run record) of the newest (or
    the given) checkpoint of `directory`."""
    path = checkpoints_dir(directory)
    if not path.exists():
        raise ModelDirError(f'{directory} holds no checkpoints/ directory')
    manager = ocp.CheckpointManager(path, item_handlers=_handlers())
    try:
        steps = manager.all_steps()
        if not steps:
            raise ModelDirError(f'{path} holds no checkpoint')
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise ModelDirError(f'{path} has no checkpoint of step {step}; it has {sorted(steps)}')
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(), run=ocp.args.JsonRestore()))
        except Exception as error:  # noqa: BLE001 - any failure to read
            raise ModelDirError(f'cannot read the checkpoint of step {step} in {path}: '
                                f'{type(error).__name__}: {str(error).splitlines()[0][:200]}'
                                ) from error
    finally:
        manager.close()
    state = restored['state']
    variables = {'params': jax.tree.map(np.asarray, state['params']),
                 'batch_stats': jax.tree.map(np.asarray, state.get('batch_stats') or {})}
    return variables, step, restored['run']


def build_model(config: ml_collections.ConfigDict, num_classes: int, *,
                layers: Layers = XLA_LAYERS, dtype: Any = None) -> models.ResNet:
    """The model a config describes, for inference: XLA's layers (portable, exportable)
    unless others are given, the config's compute dtype unless `dtype` is given."""
    return models.from_config(config, num_classes, layers=layers, dtype=dtype)


def load_dir(directory: str, step: int | None = None, *, layers: Layers = XLA_LAYERS,
             dtype: Any = None) -> Loaded:
    """Everything `load` returns, and the config, step and run record."""
    config = read_config(directory)
    variables, step, record = read_variables(directory, step)
    num_classes = int(record.get('num_classes') or
                      np.shape(variables['params']['head']['bias'])[0])
    model = build_model(config, num_classes, layers=layers, dtype=dtype)
    return Loaded(model, variables, config, step, record)


def load(directory: str, step: int | None = None) -> tuple[models.ResNet, dict[str, Any]]:
    """(model, variables) of a model directory (from `resnet_jax.pretrained.convert`) or a
    run's workdir.

    `model.apply(variables, images, train=False)` maps float32 NHWC images, normalised as
    the config's data set was (ImageNet models: (pixels - mean_rgb) / std_rgb, torchvision's
    normalisation), to float32 logits. The newest checkpoint is used unless `step` is given.
    """
    loaded = load_dir(directory, step)
    return loaded.model, loaded.variables


def save(directory: str, config: ml_collections.ConfigDict, model: models.ResNet,
         variables: dict[str, Any]) -> epath.Path:
    """Writes a model directory: `config.json` and step 0 of `checkpoints/` holding the
    variables and an empty optimiser state. Refuses a directory that already has
    checkpoints. Returns the checkpoints path."""
    path = checkpoints_dir(directory)
    if path.exists() and any(path.iterdir()):
        raise ModelDirError(f'{directory} already holds checkpoints; choose another --out or '
                            'remove it')
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')
    state = {'step': np.zeros((), np.int32), 'params': variables['params'],
             'batch_stats': variables.get('batch_stats', {}), 'opt_state': {}}
    # The record a training run writes (train.run_record), so that the directory reads alike.
    record = {'model': models.architecture.record(config.model, model),
              'num_classes': model.num_classes}
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    manager = ocp.CheckpointManager(path, options=options, item_handlers=_handlers())
    try:
        manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                run=ocp.args.JsonSave(record)), force=True)
        manager.wait_until_finished()
    finally:
        manager.close()
    return path


def imagenet_config(model_name: str, num_classes: int) -> ml_collections.ConfigDict:
    """The config of a torchvision ImageNet model: the architecture (shortcut B, v1.5) and
    its evaluation preprocessing (shorter side 256, centre 224 crop, torchvision's
    normalisation, which `configs.streaming_config` holds as 0-255 mean/std)."""
    config = configs.get_base_config()
    config.dataset = 'imagenet2012'
    config.image_size = 224
    config.model.name = model_name
    config.pipeline = 'streaming'  # evaluated as streamed images are, whatever the data set
    config.model.variant = 'v1.5'
    config.model.shortcut = 'B'
    config.num_classes = num_classes
    config.streaming.eval_modes = ('center_crop',)
    return config
