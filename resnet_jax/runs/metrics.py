"""Metric sinks: JSON lines and TensorBoard events in the workdir, written by process 0."""

from __future__ import annotations

import json
import pathlib
import time

import jax
from etils import epath


class MetricWriter:
    """Writes scalars to `<workdir>/metrics.jsonl` and TensorBoard event files.

    Only the first process writes, so a multi-process job records each value once.
    """

    def __init__(self, workdir: str | pathlib.Path, start_step: int):
        """Continues the history of a run resumed at `start_step`.

        Records of later steps (written after the checkpoint that the run resumed from,
        then lost with the process) are dropped, so each step appears once.
        """
        self._enabled = jax.process_index() == 0
        if not self._enabled:
            return
        from tensorboardX import SummaryWriter  # imported here: only process 0 needs it.

        workdir = epath.Path(workdir)
        path = workdir / 'metrics.jsonl'
        kept = []
        if path.exists():
            kept = [line for line in path.read_text(encoding='utf-8').splitlines()
                    if line and json.loads(line)['step'] <= start_step]
            temporary = path.with_suffix('.tmp')
            temporary.write_text(''.join(line + '\n' for line in kept), encoding='utf-8')
            temporary.replace(path)
        if '://' in str(workdir):
            # Object stores (gs://) cannot append: the file is rewritten whole at each write.
            self._jsonl, self._path, self._lines = None, path, kept
        else:
            self._jsonl = open(path, 'a', encoding='utf-8')  # noqa: SIM115
        # TensorBoard hides events of steps >= purge_step written by earlier processes.
        self._tensorboard = SummaryWriter(str(workdir / 'tensorboard'),
                                          purge_step=start_step + 1)

    def write(self, step: int, scalars: dict[str, float]) -> None:
        """Records `scalars` (names like 'train/loss') at `step`."""
        if not self._enabled:
            return
        record = {'step': step, 'time': time.time(), **{k: float(v) for k, v in scalars.items()}}
        if self._jsonl is None:
            self._lines.append(json.dumps(record))
            self._path.write_text(''.join(line + '\n' for line in self._lines), encoding='utf-8')
        else:
            self._jsonl.write(json.dumps(record) + '\n')
            self._jsonl.flush()
        for name, value in scalars.items():
            self._tensorboard.add_scalar(name, float(value), step)
        self._tensorboard.flush()

    def close(self) -> None:
        """Flushes and closes both sinks."""
        if self._enabled:
            if self._jsonl is not None:
                self._jsonl.close()
            self._tensorboard.close()
