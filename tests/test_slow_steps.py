"""The loop with a train step made slow on purpose: steps in flight, SIGTERM, progress lines.

The slow step is the real one followed by a host callback that sleeps: the device (here
the CPU's executor) is busy for `DELAY` seconds per step while Python dispatches ahead,
as with a large model.
"""

import logging
import os
import re
import signal
import threading
import time
import types

import jax
import pytest

from resnet_jax.runs import preemption
from resnet_jax.training import steps, train

DELAY = 0.5  # seconds per step


class SlowSteps:
    """Patches the train step that training builds to take `DELAY` s more; counts the steps."""

    def __init__(self, monkeypatch):
        self.started = 0
        original = steps.make_train_step

        def sleep(loss):
            self.started += 1
            time.sleep(DELAY)
            return loss

        @jax.jit
        def delay(state, metrics):
            loss = jax.pure_callback(
                sleep, jax.ShapeDtypeStruct(metrics['loss'].shape, metrics['loss'].dtype),
                metrics['loss'])
            # The next step reads the state, so it cannot start before the sleep ends.
            state = state.replace(step=state.step + (0 * loss).astype(state.step.dtype))
            return state, dict(metrics, loss=loss)

        def make_train_step(*args, **kwargs):
            step = original(*args, **kwargs)

            def compile_slow(*example):
                compiled = step.lower(*example).compile()
                return lambda state, *batch: delay(*compiled(state, *batch))

            # What the loop calls: step.lower(...).compile(), then the compiled step.
            return types.SimpleNamespace(lower=lambda *example: types.SimpleNamespace(
                compile=lambda: compile_slow(*example)))

        monkeypatch.setattr(steps, 'make_train_step', make_train_step)


def test_sigterm_stops_within_two_steps_whatever_log_every_steps_is(tiny_config, tmp_path,
                                                                    monkeypatch):
    slow = SlowSteps(monkeypatch)
    config = tiny_config(total_steps=60, log_every_steps=1000, checkpoint_every_steps=1000,
                         log_every_seconds=0.0)
    signalled = {}

    def signal_after_three_steps():
        while slow.started < 3:
            time.sleep(0.01)
        signalled['started'], signalled['at'] = slow.started, time.perf_counter()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=signal_after_three_steps, daemon=True).start()
    with pytest.raises(preemption.Preempted) as stopped:
        train.train_and_evaluate(config, str(tmp_path))
    elapsed = time.perf_counter() - signalled['at']
    # Step `started` was running; at most the one after it was dispatched. Unbounded, the
    # loop had queued dozens of steps and saved after all of them.
    assert stopped.value.step <= signalled['started'] + 1, (stopped.value.step, signalled)
    assert (tmp_path / 'checkpoints' / str(stopped.value.step)).is_dir()
    assert elapsed < 2 * DELAY + 5, elapsed  # two steps and a save, with room for a busy CPU


@pytest.mark.slow
def test_progress_lines_come_after_the_first_step_and_every_log_every_seconds(tiny_config,
        tmp_path, monkeypatch, caplog):
    SlowSteps(monkeypatch)
    config = tiny_config(total_steps=8, log_every_steps=1000, checkpoint_every_steps=1000,
                         log_every_seconds=1.0)
    caplog.set_level(logging.INFO)
    train.train_and_evaluate(config, str(tmp_path))
    progress = [int(m.group(1)) for m in (
        re.search(r'step (\d+)/8 \| loss \d+\.\d+ \| \d+ img/s \| ETA \d+m\d\ds$', r.message)
        for r in caplog.records) if m]
    # The first step, then about every second (2 steps) before the last, logged in full.
    assert progress[0] == 1 and len(progress) >= 2, progress
    assert progress == sorted(progress) and progress[-1] < 8
    assert any(re.search(r'step 8/8 \| loss .* acc', r.message) for r in caplog.records)
