"""Times the CPU convolution kernels alone: forward and weight gradient of every 3x3 shape of
CIFAR ResNet-20 (or the shapes given), float32 and bfloat16, side by side in one process.

    python benchmarks/conv_kernels.py [--batch 128] [--repeats 21] [--dtypes float32,bfloat16]

Prints the median time of each call and its GFLOP/s (2 * multiply-adds). bfloat16 rows
need a library with bfloat16 tiles and a CPU with their instructions (docs/cpu.md); where
it has AMX tiles, bfloat16 is timed twice, on them (`bfloat16/amx`) and on vdpbf16ps alone.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from resnet_jax.backend.cpu.kernels import conv, native

# (side, channels in, channels out, stride) of ResNet-20's 3x3 convolutions, the stem first.
RESNET20_SHAPES = ((32, 3, 16, 1), (32, 16, 16, 1), (32, 16, 32, 2), (16, 32, 32, 1),
                   (16, 32, 64, 2), (8, 64, 64, 1))


def median_ms(function, *args, repeats: int) -> float:
    jax.block_until_ready(function(*args))  # compile, and warm the caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(function(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=128)
    parser.add_argument('--repeats', type=int, default=21)
    parser.add_argument('--dtypes', default='float32,bfloat16')
    args = parser.parse_args(argv)
    # (dtype, whether AMX tiles may be used)
    runs = [(jnp.dtype(d), True) for d in args.dtypes.split(',')]
    if (jnp.dtype(jnp.bfloat16), True) in runs and not conv.bfloat16_ready():
        print('bfloat16: no bfloat16 tiles on this CPU; timing float32 only')
        runs = [run for run in runs if run[0] != jnp.bfloat16]
    has_amx = (jnp.dtype(jnp.bfloat16), True) in runs and native.loaded_bf16_isa() == 'amx_bf16'
    if has_amx:
        runs.append((jnp.dtype(jnp.bfloat16), False))
    print(f'{"shape":>24} {"dtype":>18} {"forward ms":>11} {"GFLOP/s":>8} '
          f'{"weight grad ms":>15} {"GFLOP/s":>8}')
    for side, cin, cout, stride in RESNET20_SHAPES:
        keys = jax.random.split(jax.random.key(0), 3)
        out_side = (side - 1) // stride + 1
        for dtype, amx in runs:
            if dtype == jnp.bfloat16:
                native.use_amx(amx)
            name = dtype.name
            if dtype == jnp.bfloat16 and has_amx:
                name += '/amx' if amx else '/vdpbf16ps'
            x = jax.random.normal(keys[0], (args.batch, side, side, cin), dtype)
            kernel = jax.random.normal(keys[1], (3, 3, cin, cout), dtype)
            dy = jax.random.normal(keys[2], (args.batch, out_side, out_side, cout), dtype)
            if cin % 2 and dtype == jnp.bfloat16:  # as conv.py pads the stem's 3 channels
                x = jnp.pad(x, ((0, 0),) * 3 + ((0, 1),))
                kernel = jnp.pad(kernel, ((0, 0),) * 2 + ((0, 1), (0, 0)))
            forward = jax.jit(lambda x, k, s=stride: conv.conv2d(x, k, s))
            weight_grad = jax.jit(lambda x, k, g, s=stride: jax.vjp(
                lambda k: conv.conv2d(x, k, s), k)[1](g)[0])
            flops = 2 * args.batch * out_side * out_side * 9 * x.shape[-1] * cout
            f_ms = median_ms(forward, x, kernel, repeats=args.repeats)
            w_ms = median_ms(weight_grad, x, kernel, dy, repeats=args.repeats)
            print(f'{f"{side}x{side}x{cin}->{cout} /{stride}":>24} {name:>18} '
                  f'{f_ms:11.2f} {flops / f_ms / 1e6:8.0f} {w_ms:15.2f} {flops / w_ms / 1e6:8.0f}')


if __name__ == '__main__':
    main()
