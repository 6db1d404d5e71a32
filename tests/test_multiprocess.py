"""Several processes, one job: 2 processes x 2 CPU devices train as 1 process x 4 devices.

Each run is `python -m resnet_jax.main` in subprocesses with their own XLA_FLAGS (the
2 devices that conftest.py forces on this process do not apply to them); the two
processes of the multi-process run meet at a coordinator on a free localhost port.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from resnet_jax import distributed

REPO = pathlib.Path(__file__).resolve().parent.parent
TIMEOUT = 240

# CIFAR ResNet-8 on 8x8 synthetic images, 4 steps; 30 eval examples in batches of 8 make
# a padded last batch, so the exact evaluation is checked across processes as well.
TINY_RUN = [
    '--config', 'experiments/smoke.py', '--config.model.name=cifar_resnet8',
    '--config.image_size=8', '--config.synthetic.num_train_examples=64',
    '--config.synthetic.num_eval_examples=30', '--config.batch_size=8',
    '--config.eval_batch_size=8', '--config.total_steps=4', '--config.log_every_steps=2',
    '--config.eval_every_steps=2', '--config.checkpoint_every_steps=2',
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('localhost', 0))
        return sock.getsockname()[1]


def _start(workdir, devices: int, *extra) -> subprocess.Popen:
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
               JAX_PLATFORMS='cpu')
    return subprocess.Popen(
        [sys.executable, '-m', 'resnet_jax.main', *TINY_RUN, '--workdir', str(workdir),
         *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)


def _finish(processes: list[subprocess.Popen]) -> list[str]:
    """Waits for every process; fails with the logs of any that did not succeed."""
    try:
        logs = [process.communicate(timeout=TIMEOUT)[0] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for index, (process, log) in enumerate(zip(processes, logs, strict=True)):
        assert process.returncode == 0, f'process {index} failed:\n{log[-4000:]}'
    return logs


def _final_params(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    """The parameters and BatchNorm statistics of the last checkpoint, as numpy arrays."""
    path = (workdir / 'checkpoints' / '4' / 'state').resolve()
    checkpointer = ocp.PyTreeCheckpointer()
    metadata = checkpointer.metadata(path).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), metadata)
    state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    flat = jax.tree_util.tree_flatten_with_path(
        {'params': state['params'], 'batch_stats': state['batch_stats']})[0]
    return {jax.tree_util.keystr(key): np.asarray(leaf) for key, leaf in flat}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """The same training as 1 process x 4 devices and as 2 processes x 2 devices."""
    single, multi = tmp_path_factory.mktemp('one_process'), tmp_path_factory.mktemp('two')
    address = f'localhost:{_free_port()}'
    # All three at once: the 2 cores are shared, and the pair waits on each other anyway.
    started = [_start(single, 4)] + [
        _start(multi, 2, f'--coordinator_address={address}', '--num_processes=2',
               f'--process_id={index}') for index in range(2)]
    logs = _finish(started)
    return single, multi, logs


def test_two_processes_train_as_one(runs):
    """Equal to float32 rounding: the cross-device mean of the gradients is summed in
    another order by gloo (2 processes) than by XLA's in-process all-reduce (1 process),
    e.g. psum([1, e, e, e]) with e = 2**-24 is 1 + 4e across processes and 1 in one.
    Observed after 4 steps: 60 of 62 arrays differ, by at most 4e-7. A real fault (a
    process on other examples, a mean over local devices only) moves parameters by
    ~1e-3 or more in one step at learning rate 0.1.
    """
    single, multi, _ = runs
    one, two = _final_params(single), _final_params(multi)
    assert one.keys() == two.keys()
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_two_processes_write_metrics_and_results_once(runs):
    single, multi, logs = runs
    assert 'Process 0 of 2' in logs[1] and 'Process 1 of 2' in logs[2]
    assert 'step 4/4' in logs[1] and 'step 4/4' not in logs[2]  # process 1 only warns

    def records(workdir):
        return [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]

    # Every record (train and eval at steps 2 and 4) once, as in the one-process run.
    assert [sorted(r) for r in records(multi)] == [sorted(r) for r in records(single)]
    for a, b in zip(records(single), records(multi), strict=True):
        assert b['step'] == a['step']
        assert b.get('train/loss', 0) == pytest.approx(a.get('train/loss', 0), rel=1e-5)
    one = json.loads((single / 'final_eval.json').read_text())
    two = json.loads((multi / 'final_eval.json').read_text())
    assert two.pop('split') == one.pop('split') and two.pop('step') == one.pop('step') == 4
    assert two == pytest.approx(one, rel=1e-5)  # the top-1/top-5 counts must agree
    assert sorted(p.name for p in (multi / 'checkpoints').iterdir()) == ['2', '4']
    assert not list(multi.glob('.write_test_*'))


@pytest.mark.parametrize('flags, message', [
    (distributed.ProcessFlags(num_processes=2), '--coordinator_address and --process_id'),
    (distributed.ProcessFlags('localhost:1234', 2, 2), 'must be in 0 .. 1'),
    (distributed.ProcessFlags(process_id=0), 'need --num_processes'),
    (distributed.ProcessFlags(num_processes=0), 'must be positive'),
])
def test_incomplete_process_flags_are_errors(flags, message):
    with pytest.raises(distributed.DistributedSetupError, match=message):
        distributed.check_flags(flags)


def test_one_explicit_process_starts_nothing():
    assert not distributed.initialize(distributed.ProcessFlags(num_processes=1))


@pytest.mark.parametrize('environ, launcher', [
    ({}, None),
    ({'SLURM_PROCID': '0', 'SLURM_NTASKS': '8'}, None),  # the sbatch script, not a step
    ({'SLURM_PROCID': '3', 'SLURM_STEP_NUM_TASKS': '8'}, 'slurm'),
    ({'SLURM_PROCID': '0', 'SLURM_STEP_NUM_TASKS': '1'}, None),
    ({'OMPI_COMM_WORLD_SIZE': '4'}, 'openmpi'),
])
def test_launcher_detection(environ, launcher):
    assert distributed.detect_launcher(environ) == launcher
