"""Fault tolerance: kill and resume, SIGTERM, bad checkpoints, incompatible runs, bad disks.

The kill tests run the real main job in subprocesses (2 simulated CPU devices, as the
rest of the suite) and kill them for real; the uninterrupted runs they are compared with
run in this process (the same devices, flags and compiled steps).
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from stopping import signal_when_logged

from resnet_jax.paper import reproduce
from resnet_jax.runs import checkpoint, preemption, workdir
from resnet_jax.training import train

REPO = pathlib.Path(__file__).resolve().parent.parent
TOTAL = 12
MAIN = [sys.executable, '-m', 'resnet_jax.main']
TINY_RUN = [
    '--config', 'tests/tiny_config.py', '--config.synthetic.num_eval_examples=16',
    f'--config.total_steps={TOTAL}', '--config.log_every_steps=1',
    '--config.checkpoint_every_steps=3', '--config.eval_every_steps=6',
]
COMMAND = [*MAIN, *TINY_RUN]


def run_to_end(workdir, command=COMMAND):
    result = subprocess.run([*command, f'--workdir={workdir}'], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def run_in_process(workdir, run: list[str]) -> None:
    """The run of `python -m resnet_jax.main RUN` in this process: the same devices, XLA
    flags and compiled steps as the subprocesses, which inherit this environment; the
    references the killed runs are compared with, without a process start each."""
    (config_flag, spec, *overrides) = run
    assert config_flag == '--config', run
    train.train_and_evaluate(reproduce.build_config(spec, overrides), str(workdir))


def start_and_signal(workdir, at_step: int | None, signum: int, command=COMMAND,
                     at_line: str | None = None):
    """Starts the job and sends `signum` once it has logged `at_step` (or a line holding
    `at_line`); returns the result."""
    return signal_when_logged([*command, f'--workdir={workdir}'],
                              at_line or f'step {at_step}/{TOTAL}', signum, cwd=REPO)


def final_arrays(workdir):
    return jax.tree.leaves(ocp.StandardCheckpointer().restore(
        pathlib.Path(workdir) / 'checkpoints' / str(TOTAL) / 'state'))


def logged_train_steps(workdir):
    records = [json.loads(line) for line in
               (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
    return [r['step'] for r in records if 'train/loss' in r]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
    path = tmp_path_factory.mktemp('uninterrupted')
    run_in_process(path, TINY_RUN)
    return path


def assert_same_final_state(workdir, reference):
    for a, b in zip(final_arrays(workdir), final_arrays(reference), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigkill_then_rerun_equals_a_run_never_stopped(tmp_path, uninterrupted):
    killed = start_and_signal(tmp_path, at_step=8, signum=signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    resumed = run_to_end(tmp_path)
    # Killed while step 8 (or, the loop running ahead of the log, 9) was under way; on a
    # loaded machine the asynchronous save of step 6 may not have committed yet, and the
    # run resumes from step 3. Never from scratch.
    assert re.search(r'Resumed from the checkpoint of step [369]\.', resumed.stderr), \
        resumed.stderr[-3000:]
    assert_same_final_state(tmp_path, uninterrupted)
    # Some steps ran twice, but the history records each step once, in order.
    assert logged_train_steps(tmp_path) == list(range(1, TOTAL + 1))
    assert json.loads((tmp_path / 'final_eval.json').read_text()) == json.loads(
        (uninterrupted / 'final_eval.json').read_text())


def streaming_run(data_dir) -> list[str]:
    """The main job's flags to stream an image folder (3 steps per epoch), saving every 4
    steps."""
    return [
        '--config', 'experiments/smoke.py', '--config.pipeline=streaming',
        '--config.dataset=image_folder', f'--config.data_dir={data_dir}',
        '--config.num_classes=3', '--config.image_size=32', '--config.model.name=cifar_resnet8',
        '--config.streaming.scale_range=(36,48)',
        '--config.streaming.eval_resize=36', '--config.streaming.lighting_std=0.1',
        '--config.batch_size=6', '--config.eval_batch_size=4', f'--config.total_steps={TOTAL}',
        '--config.log_every_steps=1', '--config.checkpoint_every_steps=4',
        '--config.eval_every_steps=6',
    ]


@pytest.mark.slow
def test_sigkill_then_rerun_equals_a_run_never_stopped_when_streaming(tmp_path):
    pytest.importorskip('tensorflow')
    from streaming_helpers import write_folder

    run = streaming_run(write_folder(tmp_path / 'folder'))
    command = [*MAIN, *run]
    uninterrupted_run = tmp_path / 'uninterrupted'
    run_in_process(uninterrupted_run, run)
    killed_run = tmp_path / 'killed'
    killed = start_and_signal(killed_run, at_step=7, signum=signal.SIGKILL, command=command)
    assert killed.returncode == -signal.SIGKILL
    resumed = run_to_end(killed_run, command)
    # Resumed mid-epoch: from step 4 (epoch 1) or 8 (epoch 2), the loop running ahead.
    assert re.search(r'Resumed from the checkpoint of step [48]\.', resumed.stderr), \
        resumed.stderr[-3000:]
    assert 'Resumed the input of epoch' in resumed.stderr
    assert_same_final_state(killed_run, uninterrupted_run)
    assert logged_train_steps(killed_run) == list(range(1, TOTAL + 1))
    assert json.loads((killed_run / 'final_eval.json').read_text()) == json.loads(
        (uninterrupted_run / 'final_eval.json').read_text())


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_exits_cleanly(tmp_path, uninterrupted):
    stopped = start_and_signal(tmp_path, at_step=4, signum=signal.SIGTERM)
    assert stopped.returncode == preemption.PREEMPTED_EXIT_CODE, stopped.stderr[-2000:]
    assert 'Traceback' not in stopped.stderr
    saved = max(int(p.name) for p in (tmp_path / 'checkpoints').iterdir())
    assert saved in (4, 5)  # the step that was running when the signal came, or the next
    assert f'saved the checkpoint of step {saved} and exited' in stopped.stderr
    resumed = run_to_end(tmp_path)
    assert f'Resumed from the checkpoint of step {saved}' in resumed.stderr
    assert_same_final_state(tmp_path, uninterrupted)


@pytest.mark.slow
def test_sigterm_while_it_compiles_stops_after_the_first_step(tmp_path):
    stopped = start_and_signal(tmp_path, None, signal.SIGTERM, at_line='Data: ')
    assert stopped.returncode == preemption.PREEMPTED_EXIT_CODE, stopped.stderr[-2000:]
    assert 'saved the checkpoint of step 1 and exited' in stopped.stderr
    assert [p.name for p in (tmp_path / 'checkpoints').iterdir()] == ['1']


def _checkpoint_files(path, step):
    return [p for p in (path / 'checkpoints' / str(step) / 'state').rglob('*')
            if p.is_file() and '/d/' in str(p)]


@pytest.mark.slow
def test_unreadable_checkpoints_are_set_aside_and_the_newest_good_one_is_used(tiny_config,
                                                                              tmp_path):
    straight = tmp_path / 'straight'
    train.train_and_evaluate(tiny_config(total_steps=8), str(straight))

    broken = tmp_path / 'broken'
    keep_all = {'keep_checkpoints': 10}
    train.train_and_evaluate(tiny_config(total_steps=6, **keep_all), str(broken))  # 2, 4, 6
    for file in _checkpoint_files(broken, 6):  # truncated files
        file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 2])
    for file in _checkpoint_files(broken, 4):  # missing files
        file.unlink()
    half_written = broken / 'checkpoints' / '7.orbax-checkpoint-tmp-123'
    half_written.mkdir()
    (half_written / 'junk').write_text('a crash left this')

    train.train_and_evaluate(tiny_config(total_steps=8, **keep_all), str(broken))
    aside = sorted(p.name.split('-')[0] for p in (broken / 'checkpoints_unreadable').iterdir())
    assert aside == ['4', '6']
    steps = sorted(int(p.name) for p in (broken / 'checkpoints').iterdir() if p.name.isdigit())
    assert steps == [2, 4, 6, 8]  # 2 was kept and resumed from; 4, 6, 8 written anew
    for a, b in zip(jax.tree.leaves(ocp.StandardCheckpointer().restore(
            broken / 'checkpoints' / '8' / 'state')),
            jax.tree.leaves(ocp.StandardCheckpointer().restore(
                straight / 'checkpoints' / '8' / 'state')), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('overrides, expected', [
    ({'num_classes': 5}, ['num_classes: checkpoint 10, this run 5', 'params/head/kernel']),
    ({'model.name': 'cifar_plain20'}, ["model.name: checkpoint 'cifar_resnet8'"]),
])
def test_a_checkpoint_of_another_run_is_a_clear_error_and_nothing_changes(tiny_config,
        tmp_path, overrides, expected):
    train.train_and_evaluate(tiny_config(total_steps=2), str(tmp_path))
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns)
                    for p in tmp_path.rglob('*') if p.is_file())
    with pytest.raises(checkpoint.IncompatibleCheckpointError) as raised:
        train.train_and_evaluate(tiny_config(total_steps=4, **overrides), str(tmp_path))
    for text in expected:
        assert text in str(raised.value)
    after = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns)
                   for p in tmp_path.rglob('*') if p.is_file())
    assert after == before


@pytest.mark.slow
def test_a_longer_schedule_is_a_safe_change_on_resume(tiny_config, tmp_path):
    train.train_and_evaluate(tiny_config(total_steps=2), str(tmp_path))
    train.train_and_evaluate(tiny_config(total_steps=4, **{'schedule.boundaries': (3,)}),
                             str(tmp_path))
    assert logged_train_steps(tmp_path) == [2, 4]


def test_a_full_disk_is_found_before_compiling(tiny_config, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(workdir.shutil, 'disk_usage',
                        lambda path: usage._replace(free=1 << 20))
    start = time.perf_counter()
    with pytest.raises(workdir.WorkdirError, match=r'1\.0 MiB free but'):
        train.train_and_evaluate(tiny_config(), str(tmp_path))
    assert time.perf_counter() - start < 20
    assert not (tmp_path / 'checkpoints').exists()


def test_a_bucket_that_cannot_be_reached_is_a_workdir_error():
    with pytest.raises(workdir.WorkdirError, match='not writable'):
        workdir.prepare_workdir('gs://resnet-jax-no-such-bucket-for-tests/run')


@pytest.mark.skipif(os.geteuid() == 0, reason='root can write into read-only directories')
def test_a_read_only_workdir_is_an_error(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(workdir.WorkdirError, match='not writable'):
            workdir.prepare_workdir(str(tmp_path / 'run'))
    finally:
        tmp_path.chmod(0o700)


@pytest.mark.slow
def test_non_finite_steps_can_be_skipped(tiny_config, tmp_path):
    config = tiny_config(total_steps=6, skip_nonfinite_steps=True, log_every_steps=1)
    config.schedule.base_lr = 1e30
    train.train_and_evaluate(config, str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
    skipped = sum(r.get('train/skipped', 0) for r in records)
    assert 1 <= skipped < 6
    for leaf in jax.tree.leaves(ocp.StandardCheckpointer().restore(
            tmp_path / 'checkpoints' / '6' / 'state')):
        assert np.all(np.isfinite(leaf))


def test_when_no_checkpoint_can_be_read_nothing_is_moved_and_the_run_stops(tiny_config, tmp_path):
    train.train_and_evaluate(tiny_config(total_steps=2), str(tmp_path))
    for file in _checkpoint_files(tmp_path, 2):
        file.write_bytes(b'')
    with pytest.raises(checkpoint.UnreadableCheckpointsError, match='step 2'):
        train.train_and_evaluate(tiny_config(total_steps=4), str(tmp_path))
    assert (tmp_path / 'checkpoints' / '2').is_dir()
    assert not (tmp_path / 'checkpoints_unreadable').exists()


def test_relative_and_home_workdirs_are_resolved_at_the_start(tiny_config, tmp_path, monkeypatch):
    home, cwd = tmp_path / 'home', tmp_path / 'cwd'
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv('HOME', str(home))
    monkeypatch.chdir(cwd)
    assert workdir.resolve_workdir('~/run') == str(home / 'run')
    assert workdir.resolve_workdir('runs/a') == str(cwd / 'runs' / 'a')
    assert workdir.resolve_workdir('gs://bucket/run') == 'gs://bucket/run'
    for given, where in (('~/run', home / 'run'), ('runs/a', cwd / 'runs' / 'a')):
        train.train_and_evaluate(tiny_config(total_steps=2), given)
        assert (where / 'checkpoints' / '2').is_dir() and (where / 'final_eval.json').is_file()
