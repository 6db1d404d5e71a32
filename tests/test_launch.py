"""launch.sh: the commands it prints under --dry-run, and its usage errors.

No cloud access exists here: stand-ins for gcloud, sbatch, tar and python3 record any
call, and the tests check that none happens.
"""

import os
import pathlib
import shlex
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
TOOLS = ('gcloud', 'sbatch', 'srun', 'tar', 'python3')
V4_32 = ['tpu', '--name', 'r50-pod', '--zone', 'us-central2-b', '--project', 'my-project',
         '--accelerator', 'v4-32', '--config', 'experiments/r50.py',
         '--workdir', 'gs://my-bucket/r50', '--config.batch_size=1024']


@pytest.fixture
def launch(tmp_path):
    """Runs launch.sh with recording stand-ins for every external tool first on PATH."""
    bin_dir, calls = tmp_path / 'bin', tmp_path / 'calls'
    bin_dir.mkdir()
    for tool in TOOLS:
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho {tool} "$@" >> {calls}\n')
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', TMPDIR='/tmp')
    env.pop('PYTHON', None)

    def run(*args):
        result = subprocess.run([str(REPO / 'launch.sh'), *args], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=30)
        result.calls = calls.read_text() if calls.exists() else ''
        return result

    return run


def test_tpu_dry_run_prints_every_command_for_a_v4_32_slice(launch):
    result = launch(*V4_32, '--dry-run')
    assert result.returncode == 0, result.stderr
    assert result.calls == ''  # nothing ran, gcloud included
    commands = [line for line in result.stdout.splitlines() if not line.startswith('#')]
    where = '--zone=us-central2-b --project=my-project'
    assert commands[:4] == [
        f'gcloud compute tpus tpu-vm describe r50-pod {where}',
        f'gcloud compute tpus tpu-vm create r50-pod {where} --accelerator-type=v4-32 '
        '--version=tpu-ubuntu2204-base',
        'tar -czf /tmp/resnet_jax_r50-pod.tar.gz --exclude=.git --exclude=.venv '
        '--exclude=workdirs --exclude=__pycache__ --exclude=.pytest_cache '
        f"--exclude=.ruff_cache --exclude='*.egg-info' -C {REPO} .",
        'gcloud compute tpus tpu-vm scp /tmp/resnet_jax_r50-pod.tar.gz '
        f'r50-pod:resnet_jax.tar.gz --worker=all {where}',
    ]
    install, job = (shlex.split(line) for line in commands[4:])
    assert len(commands) == 6
    for ssh in (install, job):
        assert ssh[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'r50-pod']
        assert '--worker=all' in ssh
    assert 'pip install' in install[-1] and '-e ".[tpu]"' in install[-1]
    # The command every worker runs, as its shell will split it.
    remote = shlex.split(job[-1].removeprefix('--command='))
    assert remote == ['cd', 'resnet_jax', '&&', '../resnet_jax_venv/bin/python', '-m',
                      'resnet_jax.main', '--config', 'experiments/r50.py', '--workdir',
                      'gs://my-bucket/r50', '--config.batch_size=1024']


def test_tpu_without_accelerator_uses_the_existing_slice(launch):
    result = launch(*V4_32[:5], *V4_32[9:], '--dry-run')  # no --project, no --accelerator
    assert result.returncode == 0, result.stderr
    assert 'create' not in result.stdout and 'describe' not in result.stdout
    assert '--zone=us-central2-b --command=' in result.stdout


def test_overrides_survive_both_shells(launch):
    result = launch(*V4_32, "--config.model.name=it's spaced", '--dry-run')
    job = shlex.split(result.stdout.splitlines()[-1])
    remote = shlex.split(job[-1].removeprefix('--command='))
    assert remote[-1] == "--config.model.name=it's spaced"


def test_slurm_dry_run_prints_the_batch_script(launch):
    result = launch('slurm', '--dry-run', '--nodes', '2', '--gpus-per-node=4',
                    '--partition', 'gpu', '--time', '24:00:00', '--config',
                    'experiments/cifar10.py:resnet56', '--workdir', '/scratch/r56')
    assert result.returncode == 0, result.stderr
    assert result.calls == ''
    lines = result.stdout.splitlines()
    assert lines[0] == "sbatch <<'EOF'" and lines[-1] == 'EOF'
    for line in ('#SBATCH --nodes=2', '#SBATCH --ntasks-per-node=4', '#SBATCH --gpus-per-node=4',
                 '#SBATCH --partition=gpu', '#SBATCH --time=24:00:00',
                 '#SBATCH --signal=TERM@120',
                 'srun --kill-on-bad-exit=1 python3 -m resnet_jax.main --config '
                 'experiments/cifar10.py:resnet56 --workdir /scratch/r56'):
        assert line in lines


def test_local_dry_run(launch):
    result = launch('local', '--dry-run', '--config', 'experiments/smoke.py', '--workdir',
                    'w', '--config.total_steps=3')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ('python3 -m resnet_jax.main --config experiments/smoke.py '
                                     '--workdir w --config.total_steps=3')
    assert result.calls == ''


def _without(args, option):
    i = args.index(option)
    return args[:i] + args[i + 2:]


@pytest.mark.parametrize('args, message', [
    ([], 'no target given'),
    (['gke', '--config', 'experiments/r50.py'], "unknown target 'gke'"),
    (_without(V4_32, '--name'), 'tpu needs --name'),
    (_without(V4_32, '--zone'), 'tpu needs --zone'),
    (_without(V4_32, '--config'), '--config is required'),
    (_without(V4_32, '--workdir'), '--workdir is required'),
    ([*_without(V4_32, '--workdir'), '--workdir', '/tmp/r50'], 'needs a gs:// workdir'),
    ([*V4_32, '--workers', '4'], "unknown option '--workers'"),
    ([*V4_32, '--nodes', '2'], "unknown option '--nodes' for target 'tpu'"),
    ([*V4_32[:-1], '--zone'], '--zone needs a value'),
    ([*V4_32, 'stray'], "unexpected argument 'stray'"),
    ([*_without(V4_32, '--accelerator'), '--accelerator', 'v4'], 'not a TPU type'),
    ([*_without(V4_32, '--config'), '--config', 'experiments/r49.py'], 'does not exist'),
    ([*_without(V4_32, '--config'), '--config', '/etc/passwd'], 'must be inside'),
    (['slurm', '--nodes', '0', '--config', 'experiments/r50.py', '--workdir', 'w'],
     'must be a positive integer'),
    (['local', '--config', 'experiments/smoke.py'], '--workdir is required'),
])
def test_bad_arguments_print_usage_and_start_nothing(launch, args, message):
    for dry_run in ([], ['--dry-run']) if args else ([],):
        result = launch(*args, *dry_run)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr
        assert 'usage:' in result.stderr
        assert result.stdout == '' and result.calls == ''
