"""Fine-tuning: a run that starts from another checkpoint, with parts of the model frozen.

- `config.init_from = DIR`: a model directory (resnet_jax.pretrained.convert) or another run's
  workdir. Its newest checkpoint's parameters and BatchNorm statistics replace the fresh
  ones, all but a head of another number of classes, which keeps its fresh
  initialisation. A checkpoint of another architecture stops the run before anything is
  compiled, with the differences. What was loaded and what initialised is logged.
  The optimiser starts afresh (step 0, empty momentum); a run that resumes from its own
  workdir ignores init_from.
- `config.frozen_stages = ('stem', 'stage1')`: those parts get no updates (an optax mask:
  `freeze`), weight decay included; their BatchNorm statistics still follow the data
  unless `config.frozen_batch_norm` (models.ResNet.frozen_batch_norm) freezes them all.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from resnet_jax import configs, models, pretrained
from resnet_jax.runs import checkpoint

HEAD = 'head'


class InitFromError(ValueError):
    """config.init_from names a checkpoint this run cannot start from; the message says why."""


def initialise(config: ml_collections.ConfigDict, state, model: models.ResNet):
    """`state` with params and batch_stats from `config.init_from` (unchanged if it is '').

    The arrays keep the shardings of `state`'s. Raises InitFromError for a directory that
    cannot be read or holds another architecture.
    """
    if not config.init_from:
        return state
    try:
        source_config = pretrained.read_config(config.init_from)
        source, step, record = pretrained.read_variables(config.init_from)
    except pretrained.ModelDirError as error:
        raise InitFromError(f'init_from={config.init_from!r}: {error}') from error
    saved = dict(record.get('model', {}))
    wanted = models.architecture.record(config.model, model)
    if not hasattr(model.block, 'stride_on_3x3'):  # v1 and v1.5 differ only in bottlenecks
        saved.pop('variant', None)
        wanted.pop('variant')
    differences = checkpoint.describe_differences(saved, wanted, 'model.')
    if differences:
        raise InitFromError(f'init_from={config.init_from!r} holds another model: '
                            f'{"; ".join(differences)}')
    fresh = {'params': state.params, 'batch_stats': state.batch_stats}
    merged, report = merge(fresh, source, config.init_from)
    logging.info('Initialised from %s (step %d): loaded %d arrays (%s values); initialised '
                 'afresh: %s.', config.init_from, step, report['loaded'],
                 f'{report["loaded_values"]:,}', ', '.join(report['fresh']) or 'nothing')
    if config.frozen_stages or config.frozen_batch_norm:
        logging.info('Frozen: %s%s.', ', '.join(config.frozen_stages) or 'no parameters',
                     '; all BatchNorm statistics' if config.frozen_batch_norm else '')
    _warn_if_normalised_otherwise(source_config, config)
    return state.replace(params=merged['params'], batch_stats=merged['batch_stats'])


def merge(fresh: dict[str, Any], source: dict[str, Any], name: str = 'the checkpoint'
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """({'params', 'batch_stats'} with every array of `source`, but a head of another
    shape, which stays `fresh`'s; a report {'loaded', 'loaded_values', 'fresh'}).

    Any other difference of names or shapes is an InitFromError listing the first ones.
    """
    flat_fresh = traverse_util.flatten_dict(fresh, sep='/')
    flat_source = traverse_util.flatten_dict(source, sep='/')
    differences, kept_fresh, fresh_paths, merged = [], [], set(), {}
    for path, value in flat_fresh.items():
        module = path.split('/')[1]
        if path not in flat_source:
            differences.append(f'{path}: not in the checkpoint')
        elif np.shape(flat_source[path]) == value.shape:
            merged[path] = jax.device_put(np.asarray(flat_source[path], value.dtype),
                                          value.sharding)
            continue
        elif module == HEAD:
            fresh_paths.add(path)
            kept_fresh.append(f'{path} {value.shape} (the checkpoint has '
                              f'{np.shape(flat_source[path])})')
        else:
            differences.append(f'{path}: checkpoint {np.shape(flat_source[path])}, this run '
                               f'{value.shape}')
        merged[path] = value
    differences += [f'{path}: not in this model' for path in flat_source
                    if path not in flat_fresh]
    if differences:
        more = f'; ... {len(differences) - 6} more' if len(differences) > 6 else ''
        raise InitFromError(f'{name} does not fit this model: {"; ".join(differences[:6])}'
                            f'{more}')
    loaded = [p for p in flat_fresh if p not in fresh_paths]
    report = {'loaded': len(loaded),
              'loaded_values': int(sum(np.size(flat_source[p]) for p in loaded)),
              'fresh': kept_fresh}
    return traverse_util.unflatten_dict(merged, sep='/'), report


def _warn_if_normalised_otherwise(source: ml_collections.ConfigDict,
                                  config: ml_collections.ConfigDict) -> None:
    """A pretrained net sees inputs normalised as in its own training, or worse ones."""
    def normalisation(c):
        if configs.pipeline(c) == 'streaming':
            return ('per-channel', tuple(c.streaming.mean_rgb), tuple(c.streaming.std_rgb))
        return ('per-pixel mean of the training set', c.pixel_scale)

    if normalisation(source) != normalisation(config):
        logging.warning('init_from: the checkpoint was trained on inputs normalised as %s; '
                        'this run normalises them as %s.', normalisation(source)[0],
                        normalisation(config)[0])
