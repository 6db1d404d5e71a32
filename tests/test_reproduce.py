"""The paper's studies by one command: resnet_jax.paper.reproduce, plot and layer_responses.

One tiny study (ResNet-20 and plain-20, 1 seed, 12 steps on 8x8 synthetic images) is run
for real in subprocesses, stopped by SIGTERM in its first run, resumed with both runs at
once (--parallel 2), and run again; the other tests read its workdirs.
"""

import contextlib
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_dirs import assert_one_line_error, usage_error_in_process
from rounding import assert_equal_up_to_rounding
from stopping import signal_when_logged

from resnet_jax import models
from resnet_jax.paper import layer_responses, plot, results_table, studies
from resnet_jax.paper import reproduce as reproduce_module

REPO = pathlib.Path(__file__).resolve().parent.parent
TOTAL = 12
TINY = ['--config.dataset=synthetic', '--config.num_classes=10', '--config.image_size=8',
        '--config.synthetic.num_train_examples=128', '--config.synthetic.num_eval_examples=40',
        '--config.batch_size=16', '--config.eval_batch_size=16',
        f'--config.total_steps={TOTAL}', '--config.eval_every_steps=4',
        '--config.log_every_steps=1', '--config.checkpoint_every_steps=2']


def reproduce(*args):
    return [sys.executable, '-m', 'resnet_jax.paper.reproduce', *args]


def study_args(directory, *extra):
    """The arguments of the tiny study's `python -m resnet_jax.paper.reproduce`."""
    return ['cifar10', '--workdir', str(directory), '--models', 'resnet20,plain20',
            '--schedule', 'short', *extra, *TINY]


def study_command(directory, *extra):
    return reproduce(*study_args(directory, *extra))


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    """The study's directory and the output of its three invocations."""
    directory = tmp_path_factory.mktemp('study')
    # 1: stopped by SIGTERM during the first run, once that run has logged step 3.
    stopped = signal_when_logged(study_command(directory), f'step 3/{TOTAL}', signal.SIGTERM,
                                 cwd=REPO)
    # 2: resumes the first run while it runs the second; 3: finds both finished (in this
    # process: a run it started would show in its output, and a process only to print
    # "skipped" twice costs as much as an import of JAX).
    resumed = subprocess.run(study_command(directory, '--parallel', '2'), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    mtimes = {p: p.stat().st_mtime_ns for p in directory.glob('*/final_eval.json')}
    again_argv = study_args(directory)
    with contextlib.redirect_stderr(io.StringIO()) as stderr:
        returncode = reproduce_module.main(again_argv)
    again = subprocess.CompletedProcess(again_argv, returncode, '', stderr.getvalue())
    return {'dir': directory, 'stopped': stopped, 'resumed': resumed, 'again': again,
            'mtimes': mtimes}


def table_rows(markdown: str) -> dict[str, dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith('| ')]
    header = [c.strip() for c in lines[0].strip('|').split('|')]
    rows = [dict(zip(header, [c.strip() for c in line.strip('|').split(' | ')], strict=True))
            for line in lines[1:]]
    return {row['model']: row for row in rows}


@pytest.mark.slow
def test_sigterm_stops_the_study_and_the_same_command_resumes_it(study):
    returncode, stderr = study['stopped']
    assert returncode == 143, stderr[-3000:]
    assert 'run the same command to continue' in stderr
    first = study['dir'] / 'resnet20_short_seed0'
    attempts = json.loads((first / 'reproduce.json').read_text())['attempts']
    assert [a['returncode'] for a in attempts] == [143, 0]
    resumed = study['resumed']
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '[resnet20_short_seed0] ' in resumed.stderr  # both at once: lines say whose
    assert 'Resumed from the checkpoint of step' in resumed.stderr
    assert 'all 2 runs finished' in resumed.stderr
    steps = [r['step'] for r in results_table.read_metrics(first) if 'train/loss' in r]
    assert steps == list(range(1, TOTAL + 1))  # each step once, across the stop
    second = json.loads((study['dir'] / 'plain20_short_seed0' / 'reproduce.json').read_text())
    assert [a['runs_at_once'] for a in (*attempts, *second['attempts'])] == [1, 2, 2]


@pytest.mark.slow
def test_a_finished_study_is_not_trained_again(study):
    again = study['again']
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count('finished before; skipped') == 2
    assert 'resnet_jax.main' not in again.stderr  # no run was started
    assert {p: p.stat().st_mtime_ns for p in study['mtimes']} == study['mtimes']


@pytest.mark.slow
def test_results_md_has_a_row_per_model_and_never_calls_a_short_run_paper(study):
    rows = table_rows((study['dir'] / 'results.md').read_text())
    assert list(rows) == ['resnet20', 'plain20']
    for model, row in rows.items():
        assert row['schedule'] == f'shortened ({TOTAL} steps)'
        assert row['steps'] == str(TOTAL) and row['seeds done'] == '1/1'
        final = json.loads((study['dir'] / f'{model}_short_seed0' / 'final_eval.json')
                           .read_text())
        assert row['test error (%)'] == f'{100 * (1 - final["top1_accuracy"]):.2f}'
        assert float(row['train error (%)']) >= 0
        assert 'synthetic' in row['data'] and 'eval split: test' in row['data']
        assert 'cpu' in row['hardware']
        assert row['wall time per run'].endswith(' (up to 2 runs at once)')
    assert rows['resnet20']['params'] == '0.27M (paper 0.27M)'
    assert rows['resnet20']['paper test error (%)'] == '8.75'
    assert rows['plain20']['paper test error (%)'] == '— (no table value)'
    assert (study['dir'] / 'figure6.png').read_bytes()[:4] == b'\x89PNG'


def test_schedule_labels():
    experiment = studies.load_experiment()

    def config(arg, **changes):
        return json.loads(experiment.get_config(arg).to_json_best_effort()) | changes

    assert results_table.schedule_label(config('resnet110'), 'resnet110') == 'paper'
    assert results_table.schedule_label(config('resnet20,short'), 'resnet20') == \
        'short (2,500 steps)'
    assert results_table.schedule_label(config('resnet20', total_steps=20), 'resnet20') == \
        'shortened (20 steps)'


def test_several_seeds_give_mean_spread_and_best(tmp_path):
    config = {'total_steps': 100, 'model': {'name': 'cifar_resnet32'}, 'num_classes': 10,
              'dataset': 'cifar10'}
    runs = [results_table.RunResult(
        'resnet32', seed, tmp_path, config, {'top1_accuracy': accuracy, 'split': 'test'},
        100, 1.0, 60.0, ()) for seed, accuracy in enumerate((0.92, 0.93, 0.94))]
    row = dict(zip(results_table.COLUMNS, results_table.model_row('resnet32', runs),
                   strict=True))
    assert row['test error (%)'] == '7.00 ± 1.00 (n=3)'
    assert row['best'] == '6.00' and row['seeds done'] == '3/3'
    assert row['wall time per run'] == '1m00s mean'


def test_sigterm_stops_every_run_of_a_parallel_study(tmp_path, monkeypatch):
    """Both children at once; one SIGTERM to the supervisor reaches both, each exits 143."""
    child = ('import pathlib, signal, sys, time; '
             'signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)); '
             'pathlib.Path(sys.argv[1]).touch(); time.sleep(60)')
    runs = []
    for name in ('a', 'b'):
        run = reproduce_module.Run.__new__(reproduce_module.Run)
        run.name, run.workdir = name, tmp_path / name
        runs.append(run)
    monkeypatch.setattr(reproduce_module.Run, 'command', property(
        lambda run: [sys.executable, '-c', child, str(run.workdir / 'up')]))

    def stop_once_both_are_up():
        while not all((r.workdir / 'up').exists() for r in runs):
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=stop_once_both_are_up, daemon=True).start()
    started, ended = time.monotonic(), []
    failed, stopped, trained = reproduce_module.train_runs(
        runs, 2, dict(os.environ), lambda: ended.append(True))
    assert (failed, stopped, trained) == ([], True, {'a', 'b'})
    assert time.monotonic() - started < 30 and not ended  # no results.md for stopped runs
    for run in runs:
        attempt, = json.loads((run.workdir / 'reproduce.json').read_text())['attempts']
        assert attempt['returncode'] == 143 and attempt['runs_at_once'] == 2


def test_parallel_runs_share_the_gpu_memory_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv('XLA_PYTHON_CLIENT_MEM_FRACTION', raising=False)
    monkeypatch.delenv('XLA_PYTHON_CLIENT_PREALLOCATE', raising=False)
    assert 'XLA_PYTHON_CLIENT_MEM_FRACTION' not in reproduce_module.run_environment(1)
    assert reproduce_module.run_environment(4)['XLA_PYTHON_CLIENT_MEM_FRACTION'] == '0.225'
    monkeypatch.setenv('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
    assert 'XLA_PYTHON_CLIENT_MEM_FRACTION' not in reproduce_module.run_environment(4)


def _logged_run(workdir: pathlib.Path, model: str) -> str:
    """A workdir as a run leaves it for plotting: config.json and metrics.jsonl."""
    workdir.mkdir()
    (workdir / 'config.json').write_text(json.dumps({'model': {'name': model}}))
    records = [{'step': s, 'train/accuracy': 0.1 + s / 100, 'test/top1_accuracy': s / 120}
               for s in (10, 20, 30)]
    (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
    return str(workdir)


def test_plot_draws_the_curves_of_logged_runs(tmp_path):
    workdirs = [_logged_run(tmp_path / m, m) for m in ('cifar_resnet20', 'cifar_plain20')]
    assert plot.main([*workdirs, '-o', str(tmp_path / 'curves.png')]) == 0
    assert (tmp_path / 'curves.png').read_bytes()[:4] == b'\x89PNG'
    plain = plot.curves(pathlib.Path(workdirs[1]))
    assert (plain['family'], plain['label'], plain['split']) == ('plain', 'plain-20', 'test')
    assert plain['test'][0] == [10, 20, 30]


@pytest.mark.slow
def test_plot_writes_a_png_from_two_workdirs(study, tmp_path):
    workdirs = [str(study['dir'] / f'{m}_short_seed0') for m in ('resnet20', 'plain20')]
    assert plot.main([*workdirs, '-o', str(tmp_path / 'curves.png')]) == 0
    assert (tmp_path / 'curves.png').read_bytes()[:4] == b'\x89PNG'
    assert plot.curves(pathlib.Path(workdirs[1]))['family'] == 'plain'


@pytest.mark.slow
def test_layer_responses_one_std_per_3x3_layer_of_the_blocks(study, tmp_path):
    workdirs = [str(study['dir'] / f'{m}_short_seed0') for m in ('resnet20', 'plain20')]
    out = tmp_path / 'figure7.json'
    assert layer_responses.main([*workdirs, '-o', str(tmp_path / 'f7.png'),
                                 '--json', str(out)]) == 0
    runs = json.loads(out.read_text())['runs']
    for run in runs:  # 20 = 6n + 2, n = 3: 6n = 18 3x3 layers in the blocks, the stem apart
        assert len(run['layers']) == 18 and run['step'] == TOTAL
        assert all(layer['std'] > 0 for layer in run['layers'])
        assert run['layers'][0]['name'] == 'stage1_block1/bn1'
    assert (tmp_path / 'f7.png').read_bytes()[:4] == b'\x89PNG'


def test_the_sown_response_is_bn_of_the_conv_output_before_add_and_relu():
    model = models.create_model('cifar_resnet8', num_classes=10)
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), np.uint8)
    batch = jnp.asarray(images, jnp.float32) / 255 - 0.5
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(batch)
    # Running statistics away from (0, 1), so that inference-mode BN does something.
    variables = jax.tree.map(lambda v: v * 1.7 + 0.3, variables)
    sown = jax.jit(lambda v, x: layer_responses.responses(model, v, x))(variables, batch)
    _, captured = jax.jit(lambda v, x: model.apply(
        v, x, train=False, capture_intermediates=True, mutable=['intermediates']))(
        variables, batch)
    conv = captured['intermediates']['stage2_block1']['conv2']['__call__'][0]
    bn = {k: variables[k]['stage2_block1']['bn2'] for k in ('params', 'batch_stats')}
    manual = ((conv - bn['batch_stats']['mean']) / jnp.sqrt(bn['batch_stats']['var'] + 1e-5)
              * bn['params']['scale'] + bn['params']['bias'])
    # Elementwise, a few roundings: normalise, scale, shift.
    assert_equal_up_to_rounding(sown['stage2_block1/bn2'], manual, terms=4)
    # ... and its statistics over batches (the last one padded) are numpy's over all values.
    stats = layer_responses.response_statistics(
        model, variables, images, lambda x: x.astype(jnp.float32) / 255 - 0.5, batch_size=4)
    assert len(stats) == 1 + 6  # the stem, and 2 per block of n=1 blocks in 3 stages
    assert_equal_up_to_rounding(stats['stage2_block1/bn2']['std'], np.std(manual),
                                terms=manual.size, steps=2)  # the mean, then the variance


# Each case in process (the study's parser exits before any run); the command itself once.
@pytest.mark.parametrize('args, expected', [
    pytest.param(['table7', '--workdir', 'W'],
                 "error: unknown study 'table7'; choose one of cifar10, degradation", id='study'),
    pytest.param(['cifar10', '--workdir', 'W', '--models', 'resnet20,resnet57'],
                 "error: unknown model 'resnet57' in --models; choose from resnet20",
                 id='model'),
    pytest.param(['cifar10', '--workdir', 'W', '--config.totl_steps=3'],
                 'Did you mean "total_steps" instead of "totl_steps"?', id='override'),
    pytest.param(['cifar10', '--workdir', 'W', '--config.seed=3'],
                 'error: --config.seed=3: the study sets seed itself; use --seeds', id='seed'),
    pytest.param(['cifar10', '--workdir', 'W', '--config.total_steps=20'],
                 'error: eval_every_steps=4000 is longer than the run (20 steps); add '
                 '--config.eval_every_steps=N', id='intervals'),
    pytest.param(['cifar10', '--workdir', 'W', '--parallel', '0'],
                 'error: --parallel=0: give 1 or more', id='parallel'),
])
def test_a_bad_study_is_one_line_before_any_run(args, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the default --experiment is relative, as a user types it
    args = [str(tmp_path / 'study') if a == 'W' else a for a in args]
    result = usage_error_in_process(reproduce_module.parse_args, args, capsys)
    assert_one_line_error(result, expected, returncode=2)
    assert not (tmp_path / 'study').exists()


def test_the_study_command_exits_with_a_usage_error(tmp_path):
    result = subprocess.run(reproduce('table7', '--workdir', str(tmp_path / 'study')),
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, "error: unknown study 'table7'", returncode=2)
    assert not (tmp_path / 'study').exists()


@pytest.mark.slow
def test_a_workdir_of_another_config_is_one_line(study):
    result = subprocess.run([*study_command(study['dir']), '--config.pad_pixels=2'], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert_one_line_error(result, 'resnet20_short_seed0 holds a run of another config '
                                  '(pad_pixels: there 4, now 2); use another --workdir',
                          returncode=2)


@pytest.mark.slow
def test_plot_and_layer_responses_name_a_workdir_without_a_run(tmp_path):
    for module in ('resnet_jax.paper.plot', 'resnet_jax.paper.layer_responses'):
        result = subprocess.run([sys.executable, '-m', module, str(tmp_path), '-o',
                                 str(tmp_path / 'x.png')], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert_one_line_error(result, f'error: {tmp_path} has no ', returncode=2)
