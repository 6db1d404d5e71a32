"""Graceful stops: SIGTERM asks the loop to checkpoint the current step and exit.

One process: the handler below notes the signal and the loop stops after the current
step. Several processes: JAX's distributed runtime catches SIGTERM itself (its
preemption notifier, installed by `jax.distributed.initialize`) and tells every process;
the loop stops at the step they all agreed on (`Checkpointer.reached_preemption`), so
a signal to any one process, or to all, stops the whole job at the same step.
"""

from __future__ import annotations

import signal
import threading
import time

import jax
from absl import logging

# The exit status of a run stopped by SIGTERM after saving (128 + SIGTERM, the shell's
# convention), so that job scripts can tell it from a finished run.
PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM


class Preempted(Exception):
    """The run saved its state at `step` and stopped on request; rerun to continue."""

    def __init__(self, step: int, seconds_since_signal: float | None):
        # None: the signal went to JAX's preemption notifier (several processes), which
        # does not say when it came.
        after = ('' if seconds_since_signal is None
                 else f' {seconds_since_signal:.1f} s after the signal')
        super().__init__(
            f'stopped by SIGTERM: saved the checkpoint of step {step} and exited{after}; '
            'run the same command to continue')
        self.step = step


class StopRequest:
    """While active, SIGTERM sets `requested` instead of killing the process (one process).

    The training loop polls it once per step (a Python attribute read), with at most
    `config.steps_in_flight` steps dispatched, so the time from signal to a committed
    checkpoint is at most that many steps plus one save.
    """

    def __init__(self):
        self.received_at: float | None = None
        self._previous = None

    @property
    def requested(self) -> bool:
        return self.received_at is not None

    def seconds_since(self) -> float | None:
        """Seconds since this handler saw SIGTERM; None if it did not (several processes)."""
        return None if self.received_at is None else time.monotonic() - self.received_at

    def _handle(self, signum, frame) -> None:
        if self.received_at is None:
            self.received_at = time.monotonic()
            logging.warning('Received SIGTERM: saving a checkpoint after the current step.')

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread; elsewhere (a notebook
        # thread, a test runner) SIGTERM keeps its default meaning.
        # Several processes: leave SIGTERM to JAX's preemption notifier. A Python handler
        # would replace it, so that the sync point never came and only the signalled
        # process stopped, at its own step: its save then waited for the others, which
        # trained on, and the job hung with no checkpoint (seen with 2 CPU processes).
        if threading.current_thread() is threading.main_thread() and not (
                jax.process_count() > 1 and jax.config.jax_enable_preemption_service):
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
