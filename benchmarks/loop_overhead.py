"""What the training loop adds over the bare train step, measured side by side.

Alternates, `--repeats` times, two processes on the same config and batch:
- the loop: `python -m resnet_jax.main` on synthetic data held on the device, images/s
  from its metrics.jsonl (every window of `--log-every` steps after the first, which
  holds the warm-up);
- the bare step: `python -m resnet_jax.training.benchmark`, windows of `--log-every` steps.
and prints the median images/s of each and their ratio (loop / bare step). With
`--cpu-devices 1,2` it does so for each number of JAX CPU devices, alternating, and also
prints the loop's speed-up from splitting the CPU.

    python benchmarks/loop_overhead.py --config experiments/cifar10.py:resnet20 \
        [--batch-size 128] [--steps 60] [--log-every 10] [--repeats 3]

Only in-memory configs compare like for like (the benchmark times the in-memory step for
them); the loop saves one checkpoint at the end, after its last window.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

from resnet_jax import configs
from resnet_jax.inputs.base import shape_from_config

REPO = pathlib.Path(__file__).resolve().parent.parent


def _run(command: list[str], cpu_devices: int) -> None:
    env = dict(os.environ,
               XLA_FLAGS=f'--xla_force_host_platform_device_count={cpu_devices}')
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f'{" ".join(command)} failed:\n{result.stderr[-3000:]}')


def loop_images_per_sec(config: str, batch_size: int, steps: int, log_every: int,
                        image_size: int, num_classes: int, workdir: pathlib.Path,
                        cpu_devices: int) -> float:
    """Median images/s of the training loop's log windows, the first one excluded."""
    _run(
        [sys.executable, '-m', 'resnet_jax.main', '--config', config, '--workdir',
         str(workdir), '--config.dataset=synthetic', '--config.pipeline=memory',
         f'--config.image_size={image_size}', f'--config.num_classes={num_classes}',
         f'--config.synthetic.num_train_examples={4 * batch_size}',
         f'--config.synthetic.num_eval_examples={batch_size}',
         f'--config.batch_size={batch_size}', f'--config.eval_batch_size={batch_size}',
         f'--config.total_steps={steps}', f'--config.log_every_steps={log_every}',
         '--config.eval_every_steps=0', f'--config.checkpoint_every_steps={steps}'],
        cpu_devices)
    records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
    rates = [r['train/images_per_sec'] for r in records if 'train/images_per_sec' in r]
    return statistics.median(rates[1:])


def bare_step_images_per_sec(config: str, batch_size: int, log_every: int, windows: int,
                             out: pathlib.Path, cpu_devices: int) -> float:
    """Median images/s of the benchmark's windows of `log_every` steps."""
    _run(
        [sys.executable, '-m', 'resnet_jax.training.benchmark', '--config', config, '--batch-size',
         str(batch_size), '--steps', str(log_every), '--repeats', str(windows), '--json',
         str(out)], cpu_devices)
    return json.loads(out.read_text())['train_images_per_s']


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--config', default='experiments/cifar10.py:resnet20')
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--steps', type=int, default=60, help='steps of each loop run')
    parser.add_argument('--log-every', type=int, default=10, help='steps per window')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--cpu-devices', default='1',
                        help='comma-separated JAX CPU device counts to compare, e.g. 1,2')
    args = parser.parse_args(argv)
    device_counts = [int(n) for n in args.cpu_devices.split(',')]
    windows = args.steps // args.log_every - 1
    if windows < 1:
        parser.error('--steps must hold at least two --log-every windows')
    # The shape the benchmark takes from the config (or its data set), so both agree.
    num_classes, image_size = shape_from_config(configs.load_config(args.config))

    loop = {n: [] for n in device_counts}
    bare = {n: [] for n in device_counts}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for n in device_counts:
                loop[n].append(loop_images_per_sec(
                    args.config, args.batch_size, args.steps, args.log_every, image_size,
                    num_classes, pathlib.Path(tmp) / f'loop{repeat}_{n}', n))
                bare[n].append(bare_step_images_per_sec(
                    args.config, args.batch_size, args.log_every, windows,
                    pathlib.Path(tmp) / f'bare{repeat}_{n}.json', n))
                print(f'repeat {repeat}, {n} CPU device(s): loop {loop[n][-1]:.1f} img/s, '
                      f'bare step {bare[n][-1]:.1f} img/s, ratio '
                      f'{loop[n][-1] / bare[n][-1]:.3f}', flush=True)
    result = {}
    for n in device_counts:
        ratios = [a / b for a, b in zip(loop[n], bare[n], strict=True)]
        result[n] = {'loop_images_per_sec': statistics.median(loop[n]),
                     'bare_step_images_per_sec': statistics.median(bare[n]),
                     'ratio_median': statistics.median(ratios)}
        print(f'{args.config}, batch {args.batch_size}, {n} CPU device(s): loop '
              f'{result[n]["loop_images_per_sec"]:.1f} img/s, bare step '
              f'{result[n]["bare_step_images_per_sec"]:.1f} img/s (medians of {args.repeats});'
              f' loop / bare step = {result[n]["ratio_median"]:.3f} (per repeat '
              f'{", ".join(f"{r:.3f}" for r in ratios)})')
    for n in device_counts[1:]:
        speedups = [a / b for a, b in zip(loop[n], loop[device_counts[0]], strict=True)]
        print(f'loop with {n} CPU devices / with {device_counts[0]}: median '
              f'{statistics.median(speedups):.3f} (per repeat '
              f'{", ".join(f"{r:.3f}" for r in speedups)})')
    return result


if __name__ == '__main__':
    main()
