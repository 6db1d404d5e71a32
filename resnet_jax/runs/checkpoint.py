"""Orbax checkpoints of the train state: asynchronous saves, keep N, resume from the workdir.

Each step directory holds two items: `state` (the TrainState as a tree of arrays) and
`run` (a JSON record of what the state is: the model and the number of classes). On
resume, the newest checkpoint that can be read is used: one that fails to read is moved
aside to `<checkpoints>_unreadable/` (never deleted) and the next older one is tried. A
checkpoint of another kind of run (another model, other shapes) stops the run with the
differences, before anything is overwritten.
"""

from __future__ import annotations

import time
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from resnet_jax.training.train_state import TrainState


class IncompatibleCheckpointError(ValueError):
    """The workdir holds a checkpoint of a different run; the message lists the differences."""


class UnreadableCheckpointsError(RuntimeError):
    """The workdir holds checkpoints but none of them can be read."""


def _summary(error: Exception) -> str:
    first_line = str(error).splitlines()[0][:300] if str(error) else ''
    return f'{type(error).__name__}: {first_line}'


def _path_name(path) -> str:
    parts = []
    for key in path:
        parts.append(str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key)))))
    return '/'.join(parts)


def _shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """Flat {path: (shape, dtype)} of a tree of arrays or of Orbax array metadata."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_name(path): (tuple(leaf.shape), str(leaf.dtype)) for path, leaf in leaves}


def describe_differences(saved: dict[str, Any], wanted: dict[str, Any], prefix='') -> list[str]:
    """Lines `field: checkpoint X, this run Y` for every field that differs."""
    lines = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key, '<absent>'), wanted.get(key, '<absent>')
        if isinstance(a, dict) and isinstance(b, dict):
            lines += describe_differences(a, b, f'{prefix}{key}.')
        elif a != b:
            lines.append(f'{prefix}{key}: checkpoint {a!r}, this run {b!r}')
    return lines


class Checkpointer:
    """Saves and restores `TrainState`s under `<directory>/<step>`.

    `run_record` describes what the state is (JSON-serialisable); a checkpoint whose
    record or array shapes differ cannot be resumed by this run.
    """

    def __init__(self, directory: str | epath.Path, keep: int, run_record: dict[str, Any]):
        self._directory = epath.Path(directory)
        self._record = run_record
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True)
        # Named handlers let a fresh process read items it has not saved itself.
        handlers = {'state': ocp.StandardCheckpointHandler(), 'run': ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(
            self._directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        """The newest saved step, or None when there is none."""
        return self._manager.latest_step()

    def restore_latest(self, state: TrainState) -> TrainState:
        """Restores the newest readable checkpoint into the shapes and shardings of `state`.

        Newer checkpoints that cannot be read are moved aside once an older one has been
        read. If none can be read, nothing is moved and UnreadableCheckpointsError says why:
        the run never starts over silently. Returns `state` when there is no checkpoint.
        """
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                record = self._manager.restore(
                    step, args=ocp.args.Composite(run=ocp.args.JsonRestore()))['run']
                saved_shapes = _shapes(self._manager.item_metadata(step)['state'].tree)
            except Exception as error:  # noqa: BLE001 - any failure to read means unreadable
                failures.append((step, error))
                continue
            self._check_compatible(step, record, saved_shapes, state)
            target = jax.tree.map(
                ocp.utils.to_shape_dtype_struct, flax.serialization.to_state_dict(state))
            try:
                restored = self._manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
            except Exception as error:  # noqa: BLE001
                failures.append((step, error))
                continue
            for bad_step, error in failures:
                self._set_aside(bad_step, error)
            logging.info('Resumed from the checkpoint of step %d.', step)
            return flax.serialization.from_state_dict(state, restored['state'])
        if failures:
            details = '\n  '.join(f'step {step}: {_summary(error)}' for step, error in failures)
            raise UnreadableCheckpointsError(
                f'no checkpoint in {self._directory} can be read:\n  {details}\nNothing was '
                'moved or deleted. Move the checkpoints away to start the run afresh.')
        return state

    def _check_compatible(self, step, record, saved_shapes, state) -> None:
        differences = describe_differences(record, self._record)
        wanted = _shapes(flax.serialization.to_state_dict(state))
        for name in sorted(set(saved_shapes) | set(wanted)):
            a, b = saved_shapes.get(name, '<absent>'), wanted.get(name, '<absent>')
            if a != b:
                differences.append(f'{name}: checkpoint {a}, this run {b}')
        if differences:
            shown = '\n  '.join(differences[:20])
            more = f'\n  ... and {len(differences) - 20} more' if len(differences) > 20 else ''
            raise IncompatibleCheckpointError(
                f'{self._directory} holds a checkpoint (step {step}) of a different run:\n  '
                f'{shown}{more}\nUse another --workdir, or move the old checkpoints away. '
                'Nothing was changed.')

    def _set_aside(self, step: int, error: Exception) -> None:
        """Moves an unreadable checkpoint out of the way (kept for inspection)."""
        aside = self._directory.parent / f'{self._directory.name}_unreadable'
        target = aside / f'{step}-{int(time.time())}'
        if jax.process_index() == 0:
            aside.mkdir(parents=True, exist_ok=True)
            (self._directory / str(step)).rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f'set aside checkpoint {step}')
        logging.warning('The checkpoint of step %d cannot be read (%s); resumed from an older '
                        'one and moved it to %s.', step, _summary(error), target)
        self._manager.reload()

    def save(self, step: int, state: TrainState) -> None:
        """Starts an asynchronous save of `state` at `step`; returns before it is written."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
            run=ocp.args.JsonSave(self._record)), force=True)

    def reached_preemption(self, step: int) -> bool:
        """True at the step where all processes of a multi-host job agreed to stop."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until every started save is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves to be committed, then releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
