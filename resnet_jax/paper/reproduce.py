"""Reproduces a CIFAR-10 study of the paper with one command: its runs, results.md, figures.

    python -m resnet_jax.paper.reproduce STUDY --workdir DIR [--models resnet20,plain56,...]
        [--schedule paper|short] [--seeds N] [--parallel N] [--config.FIELD=VALUE ...]

STUDY is `cifar10` (Table 6: ResNet-20 ... 110; add resnet1202 with --models) or
`degradation` (Figure 6: plain-20 ... 56 and ResNet-20 ... 110; Figure 7). Each run is
`python -m resnet_jax.main --config experiments/cifar10.py:MODEL[,short]` in a process of
its own, in DIR/MODEL_SCHEDULE_seedS, one after another (`--parallel N`: N at once on the
one device, for a GPU that one small run leaves mostly idle); `--config.` overrides apply to
every run (`--config.total_steps=20` shrinks a study to seconds). Everything is checked
before the first run starts.

Running the same command again continues the study: finished runs (final_eval.json
written, with the same config) are skipped, an interrupted one resumes from its last
checkpoint. SIGTERM or Ctrl-C stops the running runs at their next step, after each has
saved a checkpoint (exit 143). After each run, DIR/results.md is written anew and the
figures drawn: DIR/figure6.png (training curves, resnet_jax.paper.plot) and, for the
degradation study, DIR/figure7.png and .json (layer responses, resnet_jax.paper.layer_responses).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures

import jax
from absl import flags
from ml_collections import config_flags

from resnet_jax import cli, configs, pretrained
from resnet_jax.paper import results_table, studies
from resnet_jax.runs import checkpoint, preemption

# Overrides that would change what a study is: it sets these itself.
_STUDY_FIELDS = {'seed': 'use --seeds', 'model.name': 'use --models'}


class StudyError(ValueError):
    """A study that cannot run as asked; the message says what to change."""


class Run:
    """One run of a study: a model, a schedule and a seed, in a workdir of its own."""

    def __init__(self, directory: pathlib.Path, model: str, schedule: str, seed: int,
                 overrides: Sequence[str], experiment: str | pathlib.Path):
        self.model, self.schedule, self.seed = model, schedule, seed
        self.name = studies.run_name(model, schedule, seed)
        self.workdir = directory / self.name
        self.spec = studies.experiment_spec(model, schedule, experiment)
        self.args = ['--config', self.spec, '--workdir', str(self.workdir),
                     f'--config.seed={seed}', *overrides]
        self.config = build_config(self.spec, self.args[4:])

    @property
    def command(self) -> list[str]:
        return [sys.executable, '-m', 'resnet_jax.main', *self.args]

    def finished(self) -> bool:
        return (self.workdir / 'final_eval.json').is_file()

    def check_existing(self) -> None:
        """A workdir that holds a run of another config is an error (nothing is touched)."""
        saved = results_table.read_json(self.workdir / 'config.json')
        if saved is None:
            return
        # Over the current defaults: a run saved before a field existed has its default.
        saved = json.loads(pretrained.config_from_json(saved).to_json_best_effort())
        wanted = json.loads(self.config.to_json_best_effort())
        differences = checkpoint.describe_differences(saved, wanted)
        if differences:
            shown = '; '.join(d.replace('checkpoint', 'there').replace('this run', 'now')
                              for d in differences[:3])
            more = f' and {len(differences) - 3} more' if len(differences) > 3 else ''
            raise StudyError(
                f'{self.workdir} holds a run of another config ({shown}{more}); use another '
                '--workdir, or remove that directory to run it again')


def build_config(spec: str, overrides: Sequence[str]):
    """The config `python -m resnet_jax.main --config SPEC OVERRIDES...` would run, parsed
    the way it parses them; StudyError with one line if an override is wrong."""
    argv = ['reproduce', f'--config={spec}', *overrides]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', None, 'experiment', flag_values=values,
                                    lock_config=True, sys_argv=argv)
    try:
        values(argv)
        config = values.config
        config.keys()
    except Exception as error:  # noqa: BLE001 - whatever flags or the config raise
        raise StudyError(cli.error_line(error)) from None
    try:
        configs.validate_config(config)
    except configs.ConfigError as error:
        raise StudyError(f'{spec}: {error}') from None
    if config.total_steps is not None and config.eval_every_steps > config.total_steps:
        raise StudyError(
            f'eval_every_steps={config.eval_every_steps} is longer than the run '
            f'({config.total_steps} steps); add --config.eval_every_steps=N (0: only at the end)')
    return config


def parse_args(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """The study's arguments and its `--config.FIELD=VALUE` overrides."""
    parser = argparse.ArgumentParser(
        prog='python -m resnet_jax.paper.reproduce',
        description='Runs a CIFAR-10 study of the paper; writes results.md and figures.')
    parser.add_argument('study', help=f'one of {", ".join(studies.STUDIES)}')
    parser.add_argument('--workdir', required=True,
                        help='the study directory: one workdir per run under it')
    parser.add_argument('--models', help='comma-separated models instead of the study\'s, '
                        'e.g. resnet20,plain56 (any of the experiment file\'s MODELS)')
    parser.add_argument('--experiment', default=str(studies.CIFAR10_EXPERIMENT),
                        help='the experiment file of the runs (default: experiments/'
                        'cifar10.py; also experiments/preact_cifar10.py, se_resnet.py)')
    parser.add_argument('--schedule', default='paper', choices=tuple(studies.SCHEDULES),
                        help="'paper': 64k iterations; 'short': 2.5k (default: paper)")
    parser.add_argument('--seeds', type=int, default=1, help='runs per model, seeds 0..N-1')
    parser.add_argument('--parallel', type=int, default=1,
                        help='runs trained at once, each a process of its own sharing the '
                        'device (a GPU; not a TPU, which one process holds); default 1')
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for arg in rest:
        if not arg.startswith('--config.') or '=' not in arg:
            parser.error(f'unrecognized argument {arg!r} (overrides are --config.FIELD=VALUE)')
        field = arg[len('--config.'):].partition('=')[0]
        if field in _STUDY_FIELDS:
            parser.error(f'{arg}: the study sets {field} itself; {_STUDY_FIELDS[field]}')
        overrides.append(arg)
    try:
        args.runs = plan(args, overrides)
    except StudyError as error:
        parser.error(str(error))
    return args, overrides


def plan(args: argparse.Namespace, overrides: Sequence[str]) -> list[Run]:
    """Every run of the study, each config built and checked; StudyError if any is wrong."""
    if args.study not in studies.STUDIES:
        raise StudyError(f'unknown study {args.study!r}; choose one of '
                         f'{", ".join(studies.STUDIES)}')
    study = studies.STUDIES[args.study]
    models = study.models if args.models is None else tuple(
        m.strip() for m in args.models.split(',') if m.strip())
    try:
        valid = studies.model_names(args.experiment)
    except (OSError, ValueError) as error:
        raise StudyError(f'--experiment={args.experiment}: {cli.error_line(error)}') from None
    unknown = [m for m in models if m not in valid]
    if unknown or not models:
        where = 'in --models' if args.models is not None else \
            f'of the {study.name} study in {args.experiment} (choose with --models)'
        raise StudyError(f'unknown model {(unknown or [args.models])[0]!r} {where}; '
                         f'choose from {", ".join(valid)}')
    if args.seeds < 1:
        raise StudyError(f'--seeds={args.seeds}: give 1 or more')
    if args.parallel < 1:
        raise StudyError(f'--parallel={args.parallel}: give 1 or more')
    directory = pathlib.Path(args.workdir).expanduser().resolve()
    runs = [Run(directory, model, args.schedule, seed, overrides, args.experiment)
            for model in dict.fromkeys(models) for seed in range(args.seeds)]
    for run in runs:
        run.check_existing()
    return runs


class Supervisor:
    """Runs the study's children, up to `parallel` at once; SIGTERM, SIGINT or SIGHUP stops
    every child gracefully.

    Each child runs in a process group of its own, so that Ctrl-C at a terminal reaches
    only this process, which passes it on as SIGTERM: each child then saves a checkpoint
    of its current step and exits, instead of dying with a KeyboardInterrupt.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, parallel: int = 1):
        self.parallel = parallel
        self.stop_signal: int | None = None
        self._children: dict[str, subprocess.Popen] = {}
        self._peaks: dict[str, int] = {}  # per running child: the most children at once
        self._lock = threading.Lock()
        self._previous = {}

    def __enter__(self) -> Supervisor:
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum, frame) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
            print(f'reproduce: received {signal.Signals(signum).name}: stopping the running '
                  'runs at their next step (each saves a checkpoint first)', file=sys.stderr,
                  flush=True)
        for child in list(self._children.values()):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def run(self, run: Run, env: dict) -> int:
        """Runs `run` to its end (or its stop); its output goes to stderr (each line led by
        the run's name when several run at once) and to its train.log."""
        run.workdir.mkdir(parents=True, exist_ok=True)
        record_path = run.workdir / results_table.RECORD_FILE
        record = results_table.read_json(record_path) or {'attempts': []}
        record['command'] = shlex.join(run.command)
        prefix = f'[{run.name}] ' if self.parallel > 1 else ''
        started = time.time()
        with open(run.workdir / 'train.log', 'a', encoding='utf-8') as log:
            log.write(f'--- {datetime.datetime.now().astimezone().isoformat()} '
                      f'{record["command"]}\n')
            with self._lock:
                child = subprocess.Popen(
                    run.command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True, bufsize=1, process_group=0)
                self._children[run.name] = child
                for name in self._children:
                    self._peaks[name] = max(self._peaks.get(name, 0), len(self._children))
            if self.stop_signal is not None:  # a signal came while it started
                child.send_signal(signal.SIGTERM)
            for line in child.stdout:
                sys.stderr.write(prefix + line)
                log.write(line)
            returncode = child.wait()
        with self._lock:
            del self._children[run.name]
            runs_at_once = self._peaks.pop(run.name)
        record['attempts'].append({
            'started': datetime.datetime.fromtimestamp(started).astimezone().isoformat(),
            'wall_seconds': round(time.time() - started, 1), 'returncode': returncode,
            'cpu': results_table.cpu_model_name(), 'runs_at_once': runs_at_once})
        record_path.write_text(json.dumps(record, indent=2) + '\n')
        return returncode


def write_results(args: argparse.Namespace, runs: Sequence[Run], command: str) -> None:
    """results.md from every run's workdir, then the figures of what has metrics."""
    study = studies.STUDIES[args.study]
    directory = runs[0].workdir.parent
    results = [results_table.read_run(r.workdir, r.model, r.seed) for r in runs]
    (directory / 'results.md').write_text(
        results_table.results_markdown(study, results, command, args.experiment))
    drawn = [r for r in results if r.last_step]
    if drawn:
        from resnet_jax.paper import plot  # matplotlib: only once there is something to draw
        labels = dict.fromkeys(results_table.schedule_label(r.config, r.model, args.experiment)
                               for r in drawn)
        plot.plot_workdirs([r.workdir for r in drawn], directory / 'figure6.png',
                           title=f'{study.name} study, {", ".join(labels)}')


def draw_layer_responses(study: studies.Study, runs: Sequence[Run], trained: set[str],
                         env: dict) -> None:
    """figure7.png and .json, once the study's layer-response models (seed 0) have finished;
    again only when one of them was trained since."""
    figure7 = [r for r in runs if r.seed == 0 and r.model in study.layer_response_models]
    if not figure7 or not all(r.finished() for r in figure7):
        return
    directory = runs[0].workdir.parent
    if (directory / 'figure7.json').is_file() and not trained & {r.name for r in figure7}:
        return
    # A process of its own: it evaluates on the accelerator, which this one leaves alone.
    command = [sys.executable, '-m', 'resnet_jax.paper.layer_responses',
               *[str(r.workdir) for r in figure7], '-o', str(directory / 'figure7.png'),
               '--json', str(directory / 'figure7.json')]
    if subprocess.run(command, env=env, check=False).returncode != 0:
        print(f'reproduce: the layer responses failed: {shlex.join(command)}', file=sys.stderr)


def run_environment(parallel: int) -> dict[str, str]:
    """The runs' environment: this one (they pick the accelerator), where several share a
    GPU each preallocating an equal share of its memory instead of JAX's default 75%."""
    env = dict(os.environ)
    if parallel > 1 and not {'XLA_PYTHON_CLIENT_MEM_FRACTION',
                             'XLA_PYTHON_CLIENT_PREALLOCATE'} & env.keys():
        env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = f'{0.9 / parallel:.3f}'
    return env


def train_runs(runs: Sequence[Run], parallel: int, env: dict,
               after_each: Callable[[], None]) -> tuple[list[str], bool, set[str]]:
    """Trains the unfinished runs, `parallel` at once, calling `after_each` when one ends.

    Returns the names of the runs that failed, whether the study was stopped (a signal, or
    a run that exited as preempted: then no further run starts), and the runs trained.
    """
    failed, trained = [], set()
    halted = threading.Event()  # a run was stopped: start no more
    pending = []
    for number, run in enumerate(runs, start=1):
        if run.finished():
            print(f'reproduce: [{number}/{len(runs)}] {run.name}: finished before; skipped',
                  file=sys.stderr, flush=True)
        else:
            pending.append((number, run))
    with Supervisor(parallel) as supervisor, futures.ThreadPoolExecutor(parallel) as pool:

        def attempt(number: int, run: Run) -> int | None:
            """The run's exit status; None when the study was stopped before it began."""
            if supervisor.stop_signal is not None or halted.is_set():
                return None
            print(f'reproduce: [{number}/{len(runs)}] {run.name}: {shlex.join(run.command)}',
                  file=sys.stderr, flush=True)
            return supervisor.run(run, env)

        jobs = {pool.submit(attempt, number, run): run for number, run in pending}
        for job in futures.as_completed(jobs):
            run, returncode = jobs[job], job.result()
            if returncode is None:
                continue
            trained.add(run.name)
            if returncode == preemption.PREEMPTED_EXIT_CODE or supervisor.stop_signal:
                halted.set()  # the run saved its step: re-running the command resumes it
                continue
            if returncode != 0:
                failed.append(run.name)
                print(f'reproduce: {run.name} failed (exit {returncode}); its log: '
                      f'{run.workdir / "train.log"}; going on with the others',
                      file=sys.stderr, flush=True)
            after_each()
    return failed, halted.is_set() or supervisor.stop_signal is not None, trained


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the study; 0 when every run has finished, 1 if any failed, 143 when stopped."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # This process only reads configs and shapes; it must not take the accelerator from
    # the runs (a GPU client would reserve most of its memory).
    jax.config.update('jax_platforms', 'cpu')
    args, _ = parse_args(argv)
    runs: list[Run] = args.runs
    env = run_environment(args.parallel)
    command = 'python -m resnet_jax.paper.reproduce ' + shlex.join(argv)
    failed, stopped, trained = train_runs(runs, args.parallel, env,
                                          lambda: write_results(args, runs, command))
    write_results(args, runs, command)
    results = runs[0].workdir.parent / 'results.md'
    if stopped:
        print(f'reproduce: stopped; {results} shows where the study stands; run the same '
              'command to continue', file=sys.stderr)
        return preemption.PREEMPTED_EXIT_CODE
    draw_layer_responses(studies.STUDIES[args.study], runs, trained, env)
    if failed:
        print(f'reproduce: {len(failed)} run(s) failed: {", ".join(failed)}; fix the cause and '
              f'run the same command again (finished runs are skipped); {results}',
              file=sys.stderr)
        return 1
    print(f'reproduce: all {len(runs)} runs finished; {results}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
