"""What a study's runs achieved, read back from their workdirs: the table of results.md.

Each run's workdir holds what `resnet_jax.main` wrote (config.json, metrics.jsonl,
final_eval.json once finished) and what `resnet_jax.paper.reproduce` adds (reproduce.json: the
command, and the wall time and CPU of each attempt). Nothing here trains or needs a device.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import platform
import statistics
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from resnet_jax import backend, models, pretrained
from resnet_jax.models import summary
from resnet_jax.paper import studies

RECORD_FILE = 'reproduce.json'
# The fields that make a run's schedule: a run is labelled 'paper' only when all of them
# are the paper recipe's.
SCHEDULE_FIELDS = ('total_steps', 'num_epochs', 'batch_size', 'schedule')


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One run of a study as its workdir shows it (`final` is None until it has finished)."""

    model: str
    seed: int
    workdir: pathlib.Path
    config: dict | None  # config.json: None before the run has started
    final: dict | None  # final_eval.json
    last_step: int  # the last step in metrics.jsonl (0: none yet)
    train_error: float | None  # %, the last training record's
    wall_seconds: float | None  # summed over the attempts that reproduce made
    cpus: tuple[str, ...]  # the CPU model name of each attempt
    runs_at_once: int = 1  # the most runs of the study that trained at once during an attempt

    @property
    def test_error(self) -> float | None:
        return None if self.final is None else 100 * (1 - self.final['top1_accuracy'])


def read_json(path: pathlib.Path) -> dict | None:
    """The JSON object in `path`, or None when the file is absent."""
    return json.loads(path.read_text()) if path.is_file() else None


def read_metrics(workdir: pathlib.Path) -> list[dict]:
    """The records of `<workdir>/metrics.jsonl`, in order ([] when it is absent)."""
    path = workdir / 'metrics.jsonl'
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_run(workdir: pathlib.Path, model: str, seed: int) -> RunResult:
    """The state and results of the run in `workdir`."""
    records = read_metrics(workdir)
    train = [r for r in records if 'train/accuracy' in r]
    attempts = (read_json(workdir / RECORD_FILE) or {}).get('attempts', [])
    return RunResult(
        model=model, seed=seed, workdir=workdir,
        config=read_json(workdir / 'config.json'),
        final=read_json(workdir / 'final_eval.json'),
        last_step=max((r['step'] for r in records), default=0),
        train_error=100 * (1 - train[-1]['train/accuracy']) if train else None,
        wall_seconds=sum(a['wall_seconds'] for a in attempts) if attempts else None,
        cpus=tuple(a['cpu'] for a in attempts),
        runs_at_once=max((a.get('runs_at_once', 1) for a in attempts), default=1))


def cpu_model_name() -> str:
    """This machine's CPU as /proc/cpuinfo names it (else the platform's word for it), its
    core count and the vector instructions that decide the CPU kernels (docs/cpu.md)."""
    name = platform.processor() or platform.machine() or 'unknown CPU'
    try:
        for line in pathlib.Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                name = line.partition(':')[2].strip()
                break
    except OSError:
        pass
    isa = backend.host_cpu_isa()
    return f'{name}, {os.cpu_count()} cores' + (f', {isa}' if isa else '')


def _schedule_of(config: dict) -> dict:
    return {field: config.get(field) for field in SCHEDULE_FIELDS}


def schedule_label(config: dict, model: str,
                   experiment: str | pathlib.Path = studies.CIFAR10_EXPERIMENT) -> str:
    """'paper' only for the paper's schedule (64k iterations, lr /10 at 32k and 48k), else
    the run's length: 'short (2,500 steps)' for the recipe's short variant, otherwise
    'shortened (N steps)' (or 'changed' when it is as long as the paper's but differs)."""
    module = studies.load_experiment(experiment)
    recipe = json.loads(module.get_config(model).to_json_best_effort())
    short = json.loads(module.get_config(f'{model},short').to_json_best_effort())
    if _schedule_of(config) == _schedule_of(recipe):
        return 'paper'
    steps = config.get('total_steps')
    if _schedule_of(config) == _schedule_of(short):
        return f'short ({steps:,} steps)'
    if steps is not None and steps < recipe['total_steps']:
        return f'shortened ({steps:,} steps)'
    return f'changed ({steps:,} steps)' if steps is not None else 'changed (epochs)'


_PARAMS: dict[str, int] = {}


def count_params(workdir: pathlib.Path, config: dict, num_classes: int) -> int:
    """Parameters of the model of a run (its config.json, and the copy of a block file it
    kept), from shapes alone (no device work)."""
    section = json.dumps(config['model'], sort_keys=True) + str(num_classes)
    if section not in _PARAMS:
        if (workdir / 'config.json').is_file():
            config = pretrained.read_config(str(workdir))
        else:
            config = pretrained.config_from_json(config)
        net = models.from_config(config, num_classes)
        shapes = jax.eval_shape(
            lambda x: net.init(jax.random.key(0), x, train=False),
            jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
        _PARAMS[section] = summary.count_params(shapes['params'])
    return _PARAMS[section]


def _mean_spread(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f'{values[0]:.2f}'
    return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})'


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


def _unique(values) -> str:
    return '; '.join(dict.fromkeys(v for v in values if v)) or 'not recorded'


def model_row(model: str, runs: Sequence[RunResult],
              experiment: str | pathlib.Path = studies.CIFAR10_EXPERIMENT) -> list[str]:
    """The cells of one model's row over its runs (one per seed)."""
    done = [r for r in runs if r.final is not None]
    started = [r for r in runs if r.config is not None]
    first = (done or started or [None])[0]
    config = first.config if first else None
    # Table 6's numbers are for the paper's recipe and its own blocks.
    papers = (pathlib.Path(experiment).resolve() == studies.CIFAR10_EXPERIMENT
              and not (config or {}).get('model', {}).get('block'))
    paper_params = studies.PAPER_PARAMS_M.get(model) if papers else None
    paper = studies.PAPER_TEST_ERROR.get(model) if papers else None
    paper_cell = f'{paper:.2f}' if paper is not None else '— (no table value)'
    if config is None:
        return [model, '', 'not started', '', f'0/{len(runs)}', 'not started', '', '',
                paper_cell, '', '', '']
    params = count_params(first.workdir, config, config.get('num_classes') or 10)
    params_cell = f'{params / 1e6:.2f}M' + (f' (paper {paper_params}M)' if paper_params else '')
    labels = _unique(schedule_label(r.config, model, experiment) for r in done or started)
    steps = _unique(f'{r.config.get("total_steps"):,}' if r.config.get('total_steps')
                    else f'{r.config.get("num_epochs")} epochs' for r in done or started)
    seeds = f'{len(done)}/{len(runs)}'
    if done:
        test = _mean_spread([r.test_error for r in done])
        best = f'{min(r.test_error for r in done):.2f}'
        trained = [r.train_error for r in done if r.train_error is not None]
        train = _mean_spread(trained) if trained else 'not recorded'
    else:
        furthest = max(started, key=lambda r: r.last_step)
        test = f'not finished (step {furthest.last_step:,})'
        best = train = ''
    hardware = _unique(
        f'{r.final.get("num_devices", "?")} x {r.final["device_kind"]}'
        + (f', CPU {_unique(r.cpus)}' if r.cpus else '')
        for r in done if 'device_kind' in r.final) if done else ''
    walls = [r.wall_seconds for r in done if r.wall_seconds is not None]
    wall = (_duration(statistics.mean(walls)) + (' mean' if len(walls) > 1 else '')
            if walls else ('not recorded' if done else ''))
    runs_at_once = max((r.runs_at_once for r in done), default=1)
    if walls and runs_at_once > 1:
        wall += f' (up to {runs_at_once} runs at once)'
    data = _unique(f'{r.final.get("data") or r.config.get("data_dir") or r.config["dataset"]}'
                   f'; eval split: {r.final["split"]}' for r in done)
    return [model, params_cell, labels, steps, seeds, test, best, train, paper_cell, hardware,
            wall, data]


COLUMNS = ('model', 'params', 'schedule', 'steps', 'seeds done', 'test error (%)', 'best',
           'train error (%)', 'paper test error (%)', 'hardware', 'wall time per run', 'data')


def results_markdown(study: studies.Study, runs: Sequence[RunResult], command: str,
                     experiment: str | pathlib.Path = studies.CIFAR10_EXPERIMENT) -> str:
    """results.md: a header, one row per model (in the study's order), and how to read it."""
    by_model: dict[str, list[RunResult]] = {}
    for run in runs:
        by_model.setdefault(run.model, []).append(run)
    lines = [f'# {study.name}: {study.reproduces}', '',
             f'Written {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by',
             f'`{command}`.', '',
             '| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    for model, model_runs in by_model.items():
        cells = [c.replace('|', '\\|') for c in model_row(model, model_runs, experiment)]
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += [
        '',
        'Test error: 100 - top-1 accuracy (%) on the eval split at the end of training. '
        'Train error: 100 - the training accuracy (augmented minibatches, BatchNorm in '
        'training mode) averaged over the last log_every_steps steps. With several seeds: '
        'mean ± sample standard deviation (n = finished runs), and the best run. Schedule '
        "'paper' means the paper's 64k iterations (lr 0.1, /10 at 32k and 48k); any "
        'other length says its steps. Paper: Table 6 of He et al. (2015), on the original '
        'lossless CIFAR-10. Wall time: the training processes of the run, start-up and '
        'compilation included, summed over its attempts; "runs at once" (--parallel) '
        'means it shared the device with other runs of the study for some of that time.', '']
    return '\n'.join(lines)


def error_percent(accuracy: float) -> float:
    """100 * (1 - accuracy), the paper's error in %."""
    return 100 * (1 - accuracy) if math.isfinite(accuracy) else float('nan')
