"""Orbax checkpoints of the train state: asynchronous saves, keep N, resume from the workdir."""

from __future__ import annotations

import pathlib

import jax
import orbax.checkpoint as ocp
from absl import logging

from resnet_jax.train_state import TrainState


class Checkpointer:
    """Saves and restores `TrainState`s under `<workdir>/checkpoints/<step>`."""

    def __init__(self, directory: str | pathlib.Path, keep: int):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=True)
        self._manager = ocp.CheckpointManager(directory, options=options)

    def latest_step(self) -> int | None:
        """The newest saved step, or None when there is none."""
        return self._manager.latest_step()

    def restore_latest(self, state: TrainState) -> TrainState:
        """Restores the newest checkpoint into the shapes and shardings of `state`.

        Returns `state` unchanged when the directory holds no checkpoint.
        """
        step = self.latest_step()
        if step is None:
            return state
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
        restored = self._manager.restore(step, args=ocp.args.StandardRestore(target))
        logging.info('Resumed from the checkpoint of step %d.', step)
        return restored

    def save(self, step: int, state: TrainState) -> None:
        """Starts an asynchronous save of `state` at `step`; returns before it is written."""
        self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def close(self) -> None:
        """Waits for pending saves to be committed, then releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
