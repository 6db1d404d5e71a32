"""Errors a user can cause: one clear line, a non-zero exit, never a traceback.

Each entry point (`resnet_jax.main`, `resnet_jax.models.summary`, `resnet_jax.training.benchmark`,
`launch.sh`) runs in a subprocess, with a missing package, a bad path, a bad flag or an
image that cannot be decoded; the other bad-argument cases of the argparse commands call
their `main` in this process. Image folders are generated in temporary directories.
"""

import importlib
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from model_dirs import assert_one_line_error, usage_error_in_process
from PIL import Image

from resnet_jax import backend

REPO = pathlib.Path(__file__).resolve().parent.parent
SMOKE = ['--config', 'experiments/smoke.py', '--config.model.name=cifar_resnet8',
         '--config.total_steps=2', '--config.eval_every_steps=0']


def run(args, env=None, timeout=240):
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def main(*args, env=None):
    return run([sys.executable, '-m', 'resnet_jax.main', *args], env=env)


def image_folder(root: pathlib.Path, broken: str | None = None) -> pathlib.Path:
    """<root>/{train,test}/{a,b}/*.png of 32x32; `broken` (a relative path) is not an image."""
    rng = np.random.default_rng(0)
    for split, count in (('train', 8), ('test', 2)):
        for name in ('a', 'b'):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                image = rng.integers(0, 256, (32, 32, 3), np.uint8)
                Image.fromarray(image).save(root / split / name / f'{i}.png')
    if broken:
        (root / broken).write_bytes(b'\xff\xd8\xff\xe0 this is no JPEG')
    return root


# ---------------------------------------------------------------- resnet_jax.main


def test_main_a_missing_package_is_named_with_the_install_command(tmp_path):
    # A stand-in that fails to import as an absent TensorFlow would.
    (tmp_path / 'tensorflow').mkdir()
    (tmp_path / 'tensorflow' / '__init__.py').write_text(
        "raise ModuleNotFoundError(\"No module named 'tensorflow'\", name='tensorflow')\n")
    env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{os.environ.get("PYTHONPATH", "")}')
    result = main('--config', 'experiments/r101.py', '--workdir', str(tmp_path / 'run'),
                  f'--config.data_dir={tmp_path}', env=env)
    assert_one_line_error(result, "needs the package 'tensorflow', which is not installed: "
                                  'pip install -e .')
    assert not (tmp_path / 'run' / 'checkpoints').exists()


@pytest.mark.slow
def test_main_a_missing_imagenet_is_the_prepare_message(tmp_path):
    pytest.importorskip('tensorflow_datasets')
    result = main('--config', 'experiments/r101.py', '--workdir', str(tmp_path / 'run'),
                  f'--config.data_dir={tmp_path}')
    assert_one_line_error(result, "DatasetNotFoundError: the tfds data set 'imagenet2012' is "
                                  'not prepared')
    assert 'tfds build imagenet2012 --manual_dir' in result.stderr


@pytest.mark.parametrize('args, expected', [
    (['--config', 'experiments/nope.py', '--workdir', 'W'],
     "--config: [Errno 2] No such file or directory: 'experiments/nope.py'"),
    (['--config', 'experiments/smoke.py', '--workdir', '/dev/null/run'],
     "WorkdirError: workdir '/dev/null/run' is not writable (Not a directory)"),
    ([*SMOKE, '--workdir', 'W', '--config.dataset=image_folder',
      '--config.data_dir=/no/such/folder'],
     'DatasetNotFoundError: no image folder at /no/such/folder'),
], ids=['config file', 'workdir', 'data_dir'])
def test_main_a_bad_path_is_one_line(args, expected, tmp_path):
    args = [str(tmp_path / 'run') if a == 'W' else a for a in args]
    assert_one_line_error(main(*args), expected)


@pytest.mark.parametrize('args, expected', [
    (['--nosuch_flag'], "FATAL Flags parsing error: Unknown command line flag 'nosuch_flag'"),
    (['--config.totl_steps=3'], 'Did you mean "total_steps" instead of "totl_steps"?'),
    (['--config.batch_size=many'], "--config.batch_size=many: invalid literal for int()"),
    (['--config.model.name=resnet51'], "ConfigError: model.name='resnet51' is unknown"),
    (['--cpu_devices=-1'], 'flag --cpu_devices=-1: -1 is not a non-negative integer'),
], ids=['unknown flag', 'misspelt override', 'wrong type', 'bad value', 'cpu devices'])
def test_main_a_bad_flag_is_one_line(args, expected, tmp_path):
    assert_one_line_error(main(*SMOKE, '--workdir', str(tmp_path / 'run'), *args), expected)


def test_main_a_bad_config_argument_is_one_line(tmp_path):
    result = main('--config', 'experiments/cifar10.py:resnet57', '--workdir', str(tmp_path))
    assert_one_line_error(result, "ValueError: unknown CIFAR experiment 'resnet57'; choose one "
                                  'of resnet20')


def test_main_an_undecodable_image_in_memory_names_the_file(tmp_path):
    folder = image_folder(tmp_path / 'folder', broken='train/b/broken.jpg')
    result = main(*SMOKE, '--workdir', str(tmp_path / 'run'), '--config.dataset=image_folder',
                  f'--config.data_dir={folder}', '--config.num_classes=2')
    assert_one_line_error(result, f'DataError: cannot decode image {folder}/train/b/broken.jpg: ')


@pytest.mark.slow
def test_main_an_undecodable_image_streamed_names_the_file(tmp_path):
    """In the eval split, met after training (the training stream's own check of a broken
    training image is in-process: test_streaming.py)."""
    pytest.importorskip('tensorflow')
    broken = 'test/a/broken.jpg'
    folder = image_folder(tmp_path / 'folder', broken=broken)
    result = main(*SMOKE, '--workdir', str(tmp_path / 'run'), '--config.pipeline=streaming',
                  '--config.dataset=image_folder', f'--config.data_dir={folder}',
                  '--config.num_classes=2', '--config.streaming.scale_range=(32,40)',
                  '--config.streaming.eval_resize=32', '--config.batch_size=6',
                  '--config.eval_batch_size=4', '--config.total_steps=6')
    assert_one_line_error(result, f'DataError: cannot decode image {folder}/{broken}: ')


# ---------------------------------------------------------------- summary, benchmark


# Each case in process (argparse exits before any work); the commands themselves, once each.
@pytest.mark.parametrize('module, args, expected', [
    ('models.summary', ['--model', 'resnet51'], "error: unknown model 'resnet51'"),
    ('models.summary', ['--config', 'experiments/nope.py'],
     "error: config file 'experiments/nope.py' does not exist"),
    ('models.summary', ['--model', 'resnet50', '--variant', 'v3'],
     'argument --variant: invalid choice'),
    ('training.benchmark', ['--config', 'experiments/nope.py'],
     "error: config file 'experiments/nope.py' does not exist"),
    ('training.benchmark', ['--config', 'experiments/smoke.py', '--steps', 'two'],
     "argument --steps: invalid int value: 'two'"),
    ('training.benchmark',
     ['--config', 'experiments/smoke.py', '--json', '/no/such/dir/out.json'],
     'error: --json /no/such/dir/out.json: the folder /no/such/dir does not exist'),
], ids=['summary model', 'summary config', 'summary flag', 'benchmark config',
        'benchmark flag', 'benchmark json'])
def test_summary_and_benchmark_bad_input_is_a_usage_error(module, args, expected, capsys,
                                                          monkeypatch):
    monkeypatch.chdir(REPO)  # the config paths are relative, as a user in the repository types
    # Not the benchmark's process-wide malloc settings in this test process.
    monkeypatch.setattr(backend, 'configure_process', lambda *args, **kwargs: False)
    main_function = importlib.import_module(f'resnet_jax.{module}').main
    assert_one_line_error(usage_error_in_process(main_function, args, capsys), expected,
                          returncode=2)


@pytest.mark.slow
@pytest.mark.parametrize('module, args, expected', [
    ('models.summary', ['--model', 'resnet51'], "error: unknown model 'resnet51'"),
    ('training.benchmark', ['--config', 'experiments/nope.py'],
     "error: config file 'experiments/nope.py' does not exist"),
], ids=['summary', 'benchmark'])
def test_summary_and_benchmark_commands_exit_with_a_usage_error(module, args, expected):
    result = run([sys.executable, '-m', f'resnet_jax.{module}', *args])
    assert_one_line_error(result, expected, returncode=2)


# ---------------------------------------------------------------- launch.sh


def test_launch_local_passes_main_one_line_errors_on(tmp_path):
    result = run([str(REPO / 'launch.sh'), 'local', *SMOKE, '--workdir', str(tmp_path),
                  '--config.totl_steps=3'], env=dict(os.environ, PYTHON=sys.executable))
    assert_one_line_error(result, 'Did you mean "total_steps" instead of "totl_steps"?')


def test_launch_a_missing_config_file_is_a_usage_error(tmp_path):
    result = run([str(REPO / 'launch.sh'), 'local', '--config', 'experiments/nope.py',
                  '--workdir', str(tmp_path)])
    assert_one_line_error(result, "launch.sh: config file 'experiments/nope.py' does not exist",
                          returncode=2)
