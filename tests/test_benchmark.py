"""The benchmark harness on tiny sizes: it runs the real steps and reports sane figures.

Speed itself is not tested here (see DESIGN.md: speed belongs in benchmarks that print).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from resnet_jax.training import benchmark

REPO = pathlib.Path(__file__).resolve().parent.parent

@pytest.mark.slow
def test_prints_every_figure_and_writes_json(tiny_config_path, tmp_path, capsys):
    out = tmp_path / 'result.json'
    argv = ['--config', tiny_config_path, '--batch-size', '6', '--steps', '2', '--repeats', '2',
            '--warmup', '1', '--json', str(out)]
    assert benchmark.main(argv) == 0
    text = capsys.readouterr().out
    for label in ('compile:', 'train step:', 'train:', 'eval step:', 'eval:', 'peak memory:',
                  'MFU:', 'images/s', 'matmul'):
        assert label in text
    result = json.loads(out.read_text())
    assert result['batch_size'] == 6 and result['num_devices'] == 2  # tests run on 2 devices
    assert result['model'] == 'cifar_resnet8' and result['dtype'] == 'float32'
    train = result['train']
    assert len(train['windows']) == 2
    assert 0 < train['min'] <= train['median'] <= train['max']
    assert result['train_images_per_s'] == pytest.approx(6 / train['median'])
    assert result['macs_per_image'] > 0 and result['peak_tflops'] > 0
    assert 0 < result['train_mfu'] and 0 < result['eval_mfu']
    assert result['train_compile_s'] > 0


@pytest.mark.slow
def test_dtype_override_and_datasheet_peak(tiny_config_path, capsys):
    argv = ['--config', tiny_config_path, '--dtype', 'bfloat16', '--steps', '1', '--repeats', '1',
            '--warmup', '0', '--peak-tflops', '2.5']
    assert benchmark.main(argv) == 0
    text = capsys.readouterr().out
    assert 'bfloat16' in text
    assert '2.500 TFLOP/s per device (--peak-tflops)' in text


def test_a_batch_that_does_not_split_over_the_devices_is_a_usage_error(tiny_config_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(['--config', tiny_config_path, '--batch-size', '3'])
    assert exit_info.value.code == 2
    assert 'batch_size=3' in capsys.readouterr().err


def test_time_windows_waits_once_per_window():
    calls = []
    timing = benchmark.time_windows(lambda i: calls.append(i) or i, steps=3, repeats=2)
    assert calls == list(range(6))
    assert len(timing.windows) == 2 and timing.min <= timing.median <= timing.max


def test_imagenet_config_runs_as_synthetic():
    config = benchmark.load_config(str(REPO / 'experiments' / 'r50.py'), 2, 'bfloat16')
    assert config.dataset == 'imagenet2012'  # unchanged: only the validation sees synthetic
    assert config.batch_size == 2 and config.dtype == 'bfloat16'


def test_torch_reference_matches_the_jax_models():
    """Optional: the PyTorch reference has the parameter counts of the JAX models."""
    torch = pytest.importorskip('torch')
    sys.path.insert(0, str(REPO / 'benchmarks'))
    import torch_reference

    expected = {('resnet50', 'v1.5'): 25_557_032, ('cifar_resnet20', 'v1'): 269_722,
                ('cifar_resnet56', 'v1'): 853_018}
    for (name, variant), params in expected.items():
        classes = 10 if name.startswith('cifar') else 1000
        model = torch_reference.ResNet(name, classes, variant)
        assert sum(p.numel() for p in model.parameters()) == params
    model = torch_reference.ResNet('cifar_resnet8', 3)
    images, labels = torch_reference.synthetic_data(4, 8, 3)
    step = torch_reference.make_train_step(model, augment_pad=2)
    loss = step(images, labels, torch.arange(4))
    assert torch.isfinite(loss)


@pytest.mark.slow
def test_side_by_side_runner(tiny_config_path, tmp_path):
    """The runner drives worker processes and prints a median per contender."""
    contenders = 'jax,torch' if _has_torch() else 'jax'
    out = tmp_path / 'side_by_side.json'
    cmd = [sys.executable, str(REPO / 'benchmarks' / 'cpu_vs_torch.py'), '--case',
           f'{tiny_config_path}@4', '--contenders', contenders, '--steps', '1', '--repeats', '2',
           '--json', str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert 'ms/step' in done.stdout
    result = json.loads(out.read_text())[0]
    assert set(result['medians']) == set(contenders.split(','))
    assert all(len(times) == 2 for times in result['times'].values())


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
def test_gpu_benchmark_script_runs_small_on_a_cpu(tmp_path):
    """benchmarks/gpu_benchmark.sh with SMALL=1: every JAX case of the GPU run, shrunk, on
    the CPU, each writing its figures (the script runs on a GPU only when one is at hand).
    It checks the script, not a CPU's speed: the suite's XLA flags, which halve the
    compile of its ResNet-50.

    It is also the suite's ResNet-50 trained on 2 devices, on the CPU kernels where they
    are tuned (bfloat16 tiles, else float32): XLA runs independent kernel calls side by
    side, and each must finish when every pool thread is busy with another (waiting for its
    helpers instead once hung this step)."""
    env = {**os.environ, 'SMALL': '1', 'SKIP_F32': '1', 'OUTPUT': str(tmp_path),
           'PATH': f'{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'}
    done = subprocess.run(['bash', str(REPO / 'benchmarks' / 'gpu_benchmark.sh')], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for case in ('r50_bf16', 'cifar_r20'):
        result = json.loads((tmp_path / f'{case}.json').read_text())
        assert result['train_images_per_s'] > 0 and result['eval_images_per_s'] > 0
