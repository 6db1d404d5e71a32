"""The command line: `python -m resnet_jax.main`, experiment files and overrides."""

import json
import pathlib
import subprocess
import sys

import pytest

from resnet_jax import configs

REPO = pathlib.Path(__file__).resolve().parent.parent
CIFAR_ARGS = ['resnet20', 'resnet32', 'resnet44', 'resnet56', 'resnet110', 'resnet1202',
              'plain20', 'plain32', 'plain44', 'plain56', 'plain110']
IMAGENET_FILES = ['r18.py', 'r34.py', 'r50.py', 'r101.py', 'r152.py']


def run_main(*args, timeout=240):
    """Runs the main job in a subprocess (it inherits the 2 simulated devices)."""
    return subprocess.run(
        [sys.executable, '-m', 'resnet_jax.main', *args], cwd=REPO, capture_output=True,
        text=True, timeout=timeout)


@pytest.mark.slow
def test_main_job_end_to_end_with_overrides(tmp_path):
    result = run_main(
        '--config', 'experiments/smoke.py', '--workdir', str(tmp_path),
        '--config.total_steps=4', '--config.model.name=cifar_resnet8',
        '--config.checkpoint_every_steps=2', '--config.log_every_steps=2',
        '--config.eval_every_steps=2')
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((tmp_path / 'config.json').read_text())
    assert saved['total_steps'] == 4 and saved['model']['name'] == 'cifar_resnet8'
    assert 'step 4/4' in result.stderr
    assert (tmp_path / 'final_eval.json').is_file()
    assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2', '4']


@pytest.mark.slow
def test_the_persistent_compilation_cache_is_written(tmp_path):
    cache = tmp_path / 'cache'
    result = run_main(
        '--config', 'experiments/smoke.py', '--workdir', str(tmp_path / 'run'),
        f'--compilation_cache_dir={cache}', '--config.total_steps=2',
        '--config.model.name=cifar_resnet8', '--config.eval_every_steps=0')
    assert result.returncode == 0, result.stderr[-3000:]
    assert any(cache.iterdir()), 'no compiled program was cached'


def test_a_typo_in_an_override_is_an_error(tmp_path):
    result = run_main('--config', 'experiments/smoke.py', '--workdir', str(tmp_path),
                      '--config.totl_steps=4')
    assert result.returncode != 0
    assert 'totl_steps' in result.stderr


def test_a_value_of_the_wrong_type_is_an_error(tmp_path):
    result = run_main('--config', 'experiments/smoke.py', '--workdir', str(tmp_path),
                      '--config.batch_size=many')
    assert result.returncode != 0
    assert 'batch_size' in result.stderr
    assert not (tmp_path / 'checkpoints').exists()


def test_a_bad_value_is_a_one_line_error_without_traceback(tmp_path):
    result = run_main('--config', 'experiments/smoke.py', '--workdir', str(tmp_path),
                      '--config.batch_size=7')
    assert result.returncode == 1
    assert 'batch_size=7 does not divide among 2 devices' in result.stderr
    assert 'Traceback' not in result.stderr


@pytest.mark.parametrize('arg', CIFAR_ARGS)
def test_every_cifar_experiment_is_a_valid_paper_recipe(arg):
    config = configs.load_config(f'{REPO}/experiments/cifar10.py:{arg}')
    configs.validate_config(config)
    assert config.model.name == f'cifar_{arg}'
    assert (config.batch_size, config.total_steps) == (128, 64_000)
    assert tuple(config.schedule.boundaries) == (32_000, 48_000)
    assert config.schedule.warmup == (400 if arg == 'resnet110' else None)


def test_the_short_variant_is_the_same_recipe_over_fewer_steps():
    full = configs.load_config(f'{REPO}/experiments/cifar10.py:resnet20')
    short = configs.load_config(f'{REPO}/experiments/cifar10.py:resnet20,short')
    configs.validate_config(short)
    assert (short.total_steps, tuple(short.schedule.boundaries)) == (2_500, (1_250, 1_875))
    # The boundaries sit at the same fractions of the run as the paper's 32k and 48k of 64k.
    assert [b / short.total_steps for b in short.schedule.boundaries] == [
        b / full.total_steps for b in full.schedule.boundaries]
    different = {k for k in full.to_dict() if full.to_dict()[k] != short.to_dict()[k]}
    assert different == {'total_steps', 'schedule', 'log_every_steps', 'eval_every_steps',
                         'checkpoint_every_steps'}
    with pytest.raises(ValueError, match="the only one is 'resnet20,short'"):
        configs.load_config(f'{REPO}/experiments/cifar10.py:resnet20,long')


def test_unknown_cifar_experiment_lists_the_valid_ones():
    with pytest.raises(ValueError, match='resnet56'):
        configs.load_config(f'{REPO}/experiments/cifar10.py:resnet57')


@pytest.mark.parametrize('name', IMAGENET_FILES + ['smoke.py'])
def test_imagenet_and_smoke_experiments_validate_on_synthetic_data(name):
    config = configs.load_config(f'{REPO}/experiments/{name}')
    with config.unlocked():
        if config.dataset == 'imagenet2012':
            config.dataset = 'synthetic'
    configs.validate_config(config)


@pytest.mark.parametrize('name', IMAGENET_FILES)
def test_imagenet_experiments_validate_as_streamed(name):
    config = configs.load_config(f'{REPO}/experiments/{name}')
    assert configs.pipeline(config) == 'streaming'
    configs.validate_config(config)


@pytest.mark.slow
def test_cpu_devices_splits_the_cpu(tmp_path):
    result = run_main(
        '--config', 'experiments/smoke.py', '--workdir', str(tmp_path), '--cpu_devices=3',
        '--config.total_steps=2', '--config.model.name=cifar_resnet8',
        '--config.batch_size=6', '--config.eval_batch_size=6', '--config.eval_every_steps=0')
    assert result.returncode == 0, result.stderr[-3000:]
    assert '3 devices' in result.stderr
