"""Graceful stops: SIGTERM asks the loop to checkpoint the current step and exit."""

from __future__ import annotations

import signal
import threading
import time

from absl import logging

# The exit status of a run stopped by SIGTERM after saving (128 + SIGTERM, the shell's
# convention), so that job scripts can tell it from a finished run.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
    """The run saved its state at `step` and stopped on request; rerun to continue."""

    def __init__(self, step: int, seconds_since_signal: float):
        super().__init__(
            f'stopped by SIGTERM: saved the checkpoint of step {step} and exited '
            f'{seconds_since_signal:.1f} s after the signal; run the same command to continue')
        self.step = step


class StopRequest:
    """While active, SIGTERM sets `requested` instead of killing the process.

    The training loop polls it once per step (a Python attribute read), so the time from
    signal to a committed checkpoint is one step plus one save.
    """

    def __init__(self):
        self.received_at: float | None = None
        self._previous = None

    @property
    def requested(self) -> bool:
        return self.received_at is not None

    def seconds_since(self) -> float:
        return 0.0 if self.received_at is None else time.monotonic() - self.received_at

    def _handle(self, signum, frame) -> None:
        if self.received_at is None:
            self.received_at = time.monotonic()
            logging.warning('Received SIGTERM: saving a checkpoint after the current step.')

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread; elsewhere (a notebook
        # thread, a test runner) SIGTERM keeps its default meaning.
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
