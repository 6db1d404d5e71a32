"""JAX against PyTorch, side by side in one run: the training step of the same model.

    python benchmarks/cpu_vs_torch.py                      # the three default cases
    python benchmarks/cpu_vs_torch.py --case experiments/cifar10.py:resnet56@128 \
        --contenders jax,jax-2dev,torch,torch-compile --repeats 7

Each contender is a worker process that builds and compiles its step once, then waits.
The parent asks the workers in turn, round after round, to time one window of `--steps`
steps, so that every contender sees the same machine load (a shared machine is noisy).
It prints the median seconds per step of each and the ratio to PyTorch eager (> 1: faster
than torch eager). The default cases are CIFAR ResNet-20 and ResNet-56 at batch 128 and
ResNet-50 at batch 32 (`DEFAULT_CASES`).

Contenders: `jax` (the real `resnet_jax` step via `resnet_jax.training.benchmark.build_steps`, with
the XLA_FLAGS of the environment and, as `resnet_jax.main` on a CPU, malloc keeping freed
memory: resnet_jax/backend/cpu/host_memory.py), `jax-2dev` (the same on 2 simulated CPU
devices, data parallel over the cores), a `-xla`, `-conv` or `-kernels` suffix to either
(the same with `cpu_kernels='xla'`: XLA's ops instead of resnet_jax.backend.cpu.kernels',
`'conv'`: the convolution kernels only, or `'kernels'`: all of them, on any CPU), `torch`,
`torch-compile`, and any `jax+NAME` defined with
`--variant NAME='--xla_flag=value ...'` (extra XLA_FLAGS; for trying XLA options).
Options after a slash change the worker's malloc: `/retain` (e.g. `torch/retain`) starts it
with the environment variables that give glibc malloc the settings resnet_jax applies (one
arena, no mmap, no trimming: freed memory is reused, not faulted in afresh); `/glibc`
(`jax` only) leaves glibc's defaults; `/thp` starts it with
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (large blocks on transparent huge pages, faulted in
2 MiB at a time). A suffix `@PATH` (e.g. `jax@../before`) runs the contender with the
`resnet_jax` of the checkout at PATH: a change against the revision before it, side by side.
A last suffix `:bfloat16` or `:float32` (e.g. `jax:bfloat16,torch:bfloat16`) sets that
contender's dtype (default `--dtype`; torch's bfloat16 is `torch.autocast`); ratios are
to torch eager of the same dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_CASES = ('experiments/cifar10.py:resnet20@128', 'experiments/cifar10.py:resnet56@128',
                 'experiments/r50.py@32')


# ----------------------------------------------------------------------------- workers


def _jax_worker(config_spec: str, batch_size: int, dtype: str, cpu_kernels: str):
    try:
        from resnet_jax.training import benchmark
    except ImportError:  # a `jax@CHECKOUT` from before the package was grouped by role
        from resnet_jax import benchmark

    config = benchmark.load_config(config_spec, batch_size, dtype)
    config.cpu_kernels = cpu_kernels
    steps = benchmark.build_steps(config)
    return steps.train, steps.train_compile_s


def _torch_worker(config_spec: str, batch_size: int, dtype: str, compile: bool):
    import torch

    sys.path.insert(0, str(REPO / 'benchmarks'))
    import torch_reference

    from resnet_jax.inputs.base import shape_from_config
    from resnet_jax.training import benchmark

    config = benchmark.load_config(config_spec, batch_size, dtype)
    num_classes, image_size = shape_from_config(config)
    model = torch_reference.ResNet(config.model.name, num_classes, config.model.variant,
                                   config.model.shortcut)
    images, labels = torch_reference.synthetic_data(batch_size, image_size, num_classes)
    pad = config.pad_pixels if config.augment == 'pad_crop_flip' else None
    step = torch_reference.make_train_step(
        model, dtype=dtype, augment_pad=pad, pixel_mean=images.float().mean(0),
        compile=compile)
    batches = [torch.arange(i * batch_size, (i + 1) * batch_size) for i in range(4)]
    start = time.perf_counter()
    step(images, labels, batches[0])  # torch.compile compiles here
    return (lambda i: step(images, labels, batches[i % 4])), time.perf_counter() - start


def worker(kind: str, config_spec: str, batch_size: int, dtype: str, steps: int,
           warmup: int, cpus: set[int] | None = None) -> None:
    """Builds one contender, then times a window per 'run' line read from stdin."""
    kind = kind.partition('@')[0]  # the checkout took effect in the environment
    kind, _, options = kind.partition('/')  # thp and retain took effect in the environment
    glibc_malloc = options == 'glibc'
    if cpus:
        # Before torch or jax start: both size their thread pools from the affinity mask.
        os.sched_setaffinity(0, cpus)
    if kind.startswith('torch'):
        run, compile_s = _torch_worker(config_spec, batch_size, dtype, kind == 'torch-compile')
        block = lambda out: out  # noqa: E731 -- torch on the CPU is synchronous
    else:
        from resnet_jax import backend

        if not glibc_malloc:
            backend.configure_process()  # as resnet_jax.main, before JAX starts
        import jax

        suffix = kind.rpartition('-')[2]
        cpu_kernels = suffix if suffix in ('xla', 'conv', 'kernels') else 'auto'
        run, compile_s = _jax_worker(config_spec, batch_size, dtype, cpu_kernels)
        block = jax.block_until_ready
    step = 0
    for _ in range(warmup):
        block(run(step))
        step += 1
    print(json.dumps({'ready': True, 'compile_s': compile_s}), flush=True)
    for line in sys.stdin:
        if line.strip() != 'run':
            break
        start = time.perf_counter()
        out = None
        for _ in range(steps):
            out = run(step)
            step += 1
        block(out)
        print(json.dumps({'step_s': (time.perf_counter() - start) / steps}), flush=True)


# ----------------------------------------------------------------------------- parent


HUGE_PAGE_TUNABLE = 'glibc.malloc.hugetlb=1'
# glibc malloc keeping freed memory for reuse: one arena, no mmap, no trimming.
RETAIN_MALLOC_ENV = {'MALLOC_ARENA_MAX': '1', 'MALLOC_MMAP_MAX_': '0',
                     'MALLOC_TRIM_THRESHOLD_': str(2**62)}


def _worker_env(kind: str, variants: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    kind, _, checkout = kind.partition('@')
    kind, _, options = kind.partition('/')
    if options == 'thp':
        env['GLIBC_TUNABLES'] = ':'.join(filter(None, [env.get('GLIBC_TUNABLES'),
                                                       HUGE_PAGE_TUNABLE]))
    elif options == 'retain':
        env.update(RETAIN_MALLOC_ENV)
    flags = env.get('XLA_FLAGS', '')
    if kind.startswith('jax-2dev'):
        flags += ' --xla_force_host_platform_device_count=2'
    elif kind.startswith('jax+'):
        flags += ' ' + variants[kind[4:]]
    env['XLA_FLAGS'] = flags.strip()
    code = pathlib.Path(checkout).resolve() if checkout else REPO
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(code), env.get('PYTHONPATH')]))
    return env


DTYPES = ('float32', 'bfloat16')


def _kind_and_dtype(contender: str, default: str) -> tuple[str, str]:
    """'torch:bfloat16' -> ('torch', 'bfloat16'); 'jax' -> ('jax', default)."""
    kind, _, dtype = contender.rpartition(':')
    return (kind, dtype) if dtype in DTYPES else (contender, default)


def run_case(case: str, contenders: list[str], variants: dict[str, str], dtype: str,
             steps: int, repeats: int, warmup: int, cpus: str = '') -> dict:
    """Times every contender on one `CONFIG@BATCH` case, alternating windows."""
    spec, _, batch = case.rpartition('@')
    procs = {}
    for contender in contenders:
        kind, kind_dtype = _kind_and_dtype(contender, dtype)
        cmd = [sys.executable, __file__, '--worker', kind, '--worker-config', spec,
               '--batch-size', batch, '--dtype', kind_dtype, '--steps', str(steps),
               '--warmup', str(warmup)] + (['--cpus', cpus] if cpus else [])
        procs[contender] = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=_worker_env(kind, variants), cwd=REPO)
        # Build one at a time, so that compilations do not overlap the others' timing.
        ready = json.loads(procs[contender].stdout.readline())
        print(f'  {contender}: ready, compile/first step {ready["compile_s"]:.1f} s',
              file=sys.stderr, flush=True)
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(repeats):
        # Rotate the order each round, so that no contender always follows the same one.
        order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
        for kind in order:
            procs[kind].stdin.write('run\n')
            procs[kind].stdin.flush()
            times[kind].append(json.loads(procs[kind].stdout.readline())['step_s'])
    for p in procs.values():
        p.stdin.close()
        p.wait()
    return {'case': case, 'batch_size': int(batch), 'dtype': dtype, 'steps': steps,
            'cpus': cpus or 'all', 'times': times,
            'medians': {k: statistics.median(v) for k, v in times.items()}}


def format_case(result: dict) -> str:
    medians = result['medians']
    windows = len(next(iter(result['times'].values())))
    lines = [f'{result["case"]} ({result["dtype"]}, cpus {result["cpus"]}), median of '
             f'{windows} windows of {result["steps"]} steps:']
    for kind, t in medians.items():
        dtype = _kind_and_dtype(kind, result['dtype'])[1]
        reference = next((medians[c] for c in medians
                          if _kind_and_dtype(c, result['dtype']) == ('torch', dtype)), None)
        ratio = f'  x{reference / t:.2f} vs torch eager {dtype}' if reference else ''
        spread = result['times'][kind]
        lines.append(f'  {kind:<18} {1e3 * t:9.1f} ms/step  '
                     f'{result["batch_size"] / t:8.1f} img/s  '
                     f'(min {1e3 * min(spread):.1f}, max {1e3 * max(spread):.1f}){ratio}')
    return '\n'.join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--case', action='append', help='CONFIG[:ARG]@BATCH (repeatable)')
    parser.add_argument('--contenders', default='jax,torch',
                        help='comma-separated: jax, jax-2dev, jax-xla, jax-2dev-xla, jax-conv, '
                             'jax-kernels, jax+NAME, torch, torch-compile; a /retain, /glibc '
                             '(jax only) or /thp suffix sets the malloc (see the docstring)')
    parser.add_argument('--variant', action='append', default=[], metavar="NAME='FLAGS'",
                        help='extra XLA_FLAGS for the contender jax+NAME')
    parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
    parser.add_argument('--steps', type=int, default=3, help='steps per timed window')
    parser.add_argument('--repeats', type=int, default=5, help='rounds of windows')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--cpus', default='', metavar='0,1',
                        help='pin every worker to these CPUs (e.g. 0: one core each, '
                             'single-threaded); default: all')
    parser.add_argument('--json', metavar='OUT')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    parser.add_argument('--worker-config', help=argparse.SUPPRESS)
    parser.add_argument('--batch-size', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        cpus = {int(c) for c in args.cpus.split(',')} if args.cpus else None
        worker(args.worker, args.worker_config, int(args.batch_size), args.dtype, args.steps,
               args.warmup, cpus)
        return 0
    variants = dict(v.split('=', 1) for v in args.variant)
    contenders = args.contenders.split(',')
    results = []
    for case in args.case or DEFAULT_CASES:
        print(f'{case}:', file=sys.stderr, flush=True)
        result = run_case(case, contenders, variants, args.dtype, args.steps, args.repeats,
                          args.warmup, args.cpus)
        print(format_case(result), flush=True)
        results.append(result)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
