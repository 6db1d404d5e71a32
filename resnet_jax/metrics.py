"""Metric sinks: JSON lines and TensorBoard events in the workdir, written by process 0."""

from __future__ import annotations

import json
import pathlib
import time

import jax


class MetricWriter:
    """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard event files.

    Only the first process writes, so a multi-process job records each value once.
    """

    def __init__(self, workdir: str | pathlib.Path):
        self._enabled = jax.process_index() == 0
        if not self._enabled:
            return
        from tensorboardX import SummaryWriter  # imported here: only process 0 needs it.

        workdir = pathlib.Path(workdir)
        self._jsonl = open(workdir / 'metrics.jsonl', 'a', encoding='utf-8')  # noqa: SIM115
        self._tensorboard = SummaryWriter(str(workdir / 'tensorboard'))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Records `scalars` (names like 'train/loss') at `step`."""
        if not self._enabled:
            return
        record = {'step': step, 'time': time.time(), **{k: float(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + '\n')
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tensorboard.add_scalar(name, float(value), step)
        self._tensorboard.flush()

    def close(self) -> None:
        """Flushes and closes both sinks."""
        if self._enabled:
            self._jsonl.close()
            self._tensorboard.close()
