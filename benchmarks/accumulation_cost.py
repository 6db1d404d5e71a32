"""What gradient accumulation costs: a step of K micro-batches against K steps of one.

    python benchmarks/accumulation_cost.py --config experiments/cifar10.py:resnet20 \
        --micro-batch 512 --accum 4 --repeats 5

Builds two train steps of the same config in this process: batch M with
grad_accum_steps=1, and batch K*M with grad_accum_steps=K (the same micro-batch, so the
same activation memory), then times them in alternating windows of the same number of
images and prints the median images/s of each and their ratio (> 1: accumulation faster
per image; it saves K-1 optimiser updates and pays for the scan).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax

from resnet_jax import backend
from resnet_jax.training import benchmark


def _timed(train, steps: int, first: int) -> float:
    start = time.perf_counter()
    out = None
    for i in range(steps):
        out = train(first + i)
    jax.block_until_ready(out)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', required=True, metavar='FILE[:ARG]')
    parser.add_argument('--micro-batch', type=int, required=True)
    parser.add_argument('--accum', type=int, required=True, help='micro-batches per step (K)')
    parser.add_argument('--repeats', type=int, default=5, help='windows of each')
    args = parser.parse_args()
    backend.configure_process()  # as resnet_jax.main, before JAX starts
    built = {}
    for accum in (1, args.accum):
        config = benchmark.load_config(args.config, args.micro_batch * accum)
        config.grad_accum_steps = accum
        built[accum] = benchmark.build_steps(config).train
        jax.block_until_ready(built[accum](0))  # warm-up
    seconds: dict[int, list[float]] = {1: [], args.accum: []}
    for r in range(args.repeats):
        # One window of K*M images each: K steps without accumulation, one with.
        for accum in ((1, args.accum) if r % 2 == 0 else (args.accum, 1)):
            steps = args.accum // accum
            seconds[accum].append(_timed(built[accum], steps, 1 + r * steps))
    images = args.micro_batch * args.accum
    rates = {accum: images / statistics.median(s) for accum, s in seconds.items()}
    print(f'{args.config}, micro-batch {args.micro_batch}, {jax.device_count()} device(s), '
          f'median of {args.repeats} windows of {images} images:')
    for accum, rate in rates.items():
        spread = ', '.join(f'{images / s:.1f}' for s in seconds[accum])
        print(f'  batch {args.micro_batch * accum:>6}, grad_accum_steps {accum}: '
              f'{rate:8.1f} images/s  ({spread})')
    print(f'  accumulation / plain: {rates[args.accum] / rates[1]:.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
