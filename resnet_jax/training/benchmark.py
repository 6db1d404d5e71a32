"""Speed of the real train and eval steps on synthetic data, without an input pipeline.

    python -m resnet_jax.training.benchmark --config experiments/cifar10.py:resnet20
    python -m resnet_jax.training.benchmark --config experiments/r50.py --batch-size 32 --steps 3

The model, optimiser, state and steps are built by the functions that
`train.train_and_evaluate` uses (`build_model_and_optimizer`, `backend.run_keys`,
`steps.make_steps` with the input path's own preprocessing,
`train_state.create_train_state`); only the data differ: random uint8 images
that live on the device, as the in-memory input path keeps them.

Timing: after compilation and `--warmup` steps, `--repeats` windows of `--steps` steps
each. The host waits for the device only at the end of a window, so dispatch overlaps
execution as in training. The step time of a window is its wall time over `--steps`;
the report gives the median and the min/max over windows.

Model FLOP utilisation (MFU): training costs about 3 x 2 x MACs per image (forward,
and a backward pass twice as costly), evaluation 2 x MACs; MACs come from
`resnet_jax.models.summary`. The peak is a datasheet figure for known accelerators, or on a
CPU the rate of a large matrix product measured in the same run (`--peak-tflops`
overrides both).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax import backend, configs, parallel
from resnet_jax.inputs.base import shape_from_config
from resnet_jax.inputs.device_preprocessing import InMemoryPreprocessing, StreamedPreprocessing
from resnet_jax.models import summary
from resnet_jax.training import steps, train, train_state

# Dense peak TFLOP/s by device_kind prefix and compute dtype (vendor datasheets, SXM parts).
# On NVIDIA GPUs XLA runs float32 convolutions and matrix products on the tensor cores in
# TF32 at the default precision, so float32 is compared with the TF32 rate (against the
# plain float32 rate a ResNet-50 step exceeds 100% "MFU").
DATASHEET_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    'NVIDIA H100': {'bfloat16': 989.0, 'float32': 494.7},
    'NVIDIA H200': {'bfloat16': 989.0, 'float32': 494.7},
    'NVIDIA A100': {'bfloat16': 312.0, 'float32': 156.0},
    'TPU v4': {'bfloat16': 275.0, 'float32': 275.0},
    'TPU v5 lite': {'bfloat16': 197.0, 'float32': 197.0},
    'TPU v5p': {'bfloat16': 459.0, 'float32': 459.0},
}


@dataclasses.dataclass(frozen=True)
class Timing:
    """Seconds per step over the timed windows."""

    median: float
    min: float
    max: float
    windows: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """Everything the benchmark measured; `to_json` gives the --json file."""

    config: str
    model: str
    backend: str
    device_kind: str
    num_devices: int
    batch_size: int
    eval_batch_size: int
    image_size: int
    dtype: str
    macs_per_image: int
    train_compile_s: float
    eval_compile_s: float
    train: Timing
    eval: Timing
    train_images_per_s: float
    eval_images_per_s: float
    peak_tflops: float
    peak_source: str
    train_mfu: float
    eval_mfu: float
    peak_memory_bytes: int | None  # from device.memory_stats(); None where not reported
    compiled_memory_bytes: int | None  # XLA's estimate: arguments + outputs + temporaries

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def time_windows(run: Callable[[int], Any], steps: int, repeats: int) -> Timing:
    """Times `repeats` windows; `run(i)` dispatches step i and returns what it produced.

    As in training, the host keeps a couple of steps in flight (`parallel.InFlight`): the
    device runs the window's steps back to back.
    """
    per_step = []
    step = 0
    for _ in range(repeats):
        start = time.perf_counter()
        in_flight = parallel.InFlight()
        for _ in range(steps):
            in_flight.add(run(step))
            step += 1
        in_flight.drain()
        per_step.append((time.perf_counter() - start) / steps)
    return Timing(statistics.median(per_step), min(per_step), max(per_step), tuple(per_step))


def measure_matmul_peak(dtype: str = 'float32', size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` timed size x size matrix products on device 0."""
    a = jax.device_put(jnp.ones((size, size), dtype), jax.devices()[0])
    # A chain of products, so that each call does enough work to time and nothing is cached.
    chain = 4

    @jax.jit
    def products(x):
        for _ in range(chain):
            x = jnp.dot(x, a) * 0.5
        return x

    x = products(a).block_until_ready()
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        x = products(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return chain * 2 * size**3 / best


def peak_flops(dtype: str, override_tflops: float | None) -> tuple[float, str]:
    """The peak FLOP/s of one device and where the figure comes from."""
    if override_tflops:
        return override_tflops * 1e12, '--peak-tflops'
    kind = jax.devices()[0].device_kind
    for prefix, peaks in DATASHEET_PEAK_TFLOPS.items():
        if kind.startswith(prefix) and dtype in peaks:
            return peaks[dtype] * 1e12, f'datasheet {prefix} {dtype}'
    size = 2048 if jax.default_backend() == 'cpu' else 8192
    return measure_matmul_peak(dtype, size), f'measured {size}x{size} {dtype} matmul'


def peak_memory() -> int | None:
    """The largest peak_bytes_in_use over the local devices, or None where not reported."""
    peaks = []
    for device in jax.local_devices():
        stats = device.memory_stats()
        if stats and 'peak_bytes_in_use' in stats:
            peaks.append(stats['peak_bytes_in_use'])
    return max(peaks) if peaks else None


def compiled_memory(compiled: Any) -> int | None:
    """XLA's own estimate of a compiled step's footprint per device (any backend)."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 -- not every backend implements it
        return None
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


@dataclasses.dataclass
class CompiledSteps:
    """The compiled train and eval steps of a config, ready to dispatch on synthetic data.

    `train(i)` runs training step i (updating the state held here) and `evaluate(i)` one
    eval batch; both return device arrays without waiting for them.
    """

    model: Any
    image_size: int
    batch_size: int
    eval_batch_size: int
    num_devices: int
    train_compile_s: float
    eval_compile_s: float
    train_compiled: Any
    eval_compiled: Any
    train: Callable[[int], Any]
    evaluate: Callable[[int], Any]


def build_steps(
    config: ml_collections.ConfigDict, eval_batch_size: int | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> CompiledSteps:
    """Builds and compiles the steps of `config` exactly as `train.train_and_evaluate` does."""
    num_classes, image_size = shape_from_config(config)
    batch_size = config.batch_size
    eval_batch_size = eval_batch_size or batch_size
    mesh = parallel.make_mesh()
    parallel.check_divisible(batch_size, mesh, 'batch_size')
    parallel.check_divisible(eval_batch_size, mesh, 'eval_batch_size')

    # Enough distinct examples that consecutive steps gather different images.
    num_examples = 4 * max(batch_size, eval_batch_size)
    rng = np.random.default_rng(config.seed)
    images_np = rng.integers(0, 256, (num_examples, image_size, image_size, 3), np.uint8)
    labels_np = rng.integers(0, num_classes, num_examples, dtype=np.int32)

    steps_per_epoch = num_examples // batch_size
    model, tx, schedule, _ = train.build_model_and_optimizer(
        config, num_classes, steps_per_epoch, mesh)
    init_key, augment_key = backend.run_keys(config.seed)
    state = train_state.create_train_state(model, tx, image_size, init_key, mesh)

    replicated = parallel.replicated(mesh)
    images = jax.device_put(images_np, replicated)
    labels = jax.device_put(labels_np, replicated)
    # Index batches are put on the device up front, so that no transfer is timed.
    train_indices = [jax.device_put(np.arange(i * batch_size, (i + 1) * batch_size,
                                              dtype=np.int32), replicated)
                     for i in range(steps_per_epoch)]
    eval_indices = jax.device_put(np.arange(eval_batch_size, dtype=np.int32), replicated)
    eval_mask = jax.device_put(np.ones(eval_batch_size, np.float32), replicated)

    # The steps of the config's own input path, built by its own preprocessing; streamed
    # batches arrive cropped and sharded, so only the device's part of the input is timed.
    # Evaluation times the in-memory eval step (the same forward pass).
    if configs.pipeline(config) == 'streaming':
        preprocessing = StreamedPreprocessing.from_config(config, model.dtype)
        sharded = parallel.batch_sharded(mesh)
        batches = [(jax.device_put(images_np[i * batch_size:(i + 1) * batch_size], sharded),
                    jax.device_put(labels_np[i * batch_size:(i + 1) * batch_size], sharded))
                   for i in range(steps_per_epoch)]
    else:
        preprocessing = InMemoryPreprocessing.from_config(config, images_np, model.dtype)
        batches = [(images, labels, indices) for indices in train_indices]
    run_steps = steps.make_steps(config, mesh, model, tx, schedule, preprocessing,
                                 augment_key)
    train_step, eval_step = run_steps.train, run_steps.evaluate.in_memory_step

    start = time.perf_counter()
    train_compiled = train_step.lower(state, *batches[0]).compile()
    train_compile_s = time.perf_counter() - start
    log(f'compiled the train step in {train_compile_s:.1f} s')
    start = time.perf_counter()
    eval_compiled = eval_step.lower(state, images, labels, eval_indices, eval_mask).compile()
    eval_compile_s = time.perf_counter() - start

    def train_one(i: int):
        nonlocal state
        state, metrics = train_compiled(state, *batches[i % steps_per_epoch])
        return metrics

    def evaluate(_: int):
        return eval_compiled(state, images, labels, eval_indices, eval_mask)

    return CompiledSteps(model, image_size, batch_size, eval_batch_size, mesh.devices.size,
                         train_compile_s, eval_compile_s, train_compiled, eval_compiled,
                         train_one, evaluate)


def run_benchmark(
    config: ml_collections.ConfigDict,
    *,
    config_name: str = '',
    steps_per_window: int = 5,
    repeats: int = 5,
    warmup: int = 2,
    eval_batch_size: int | None = None,
    peak_tflops: float | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> BenchmarkResult:
    """Builds the training step of `config` and times it (and the eval step)."""
    s = build_steps(config, eval_batch_size, log)
    if warmup:
        time_windows(s.train, warmup, 1)
    train_timing = time_windows(s.train, steps_per_window, repeats)
    log(f'train step: median {1e3 * train_timing.median:.1f} ms')
    if warmup:
        time_windows(s.evaluate, warmup, 1)
    eval_timing = time_windows(s.evaluate, steps_per_window, repeats)

    peak, peak_source = peak_flops(config.dtype, peak_tflops)
    macs = summary.summarize(s.model, s.image_size).macs
    train_ips = s.batch_size / train_timing.median
    eval_ips = s.eval_batch_size / eval_timing.median
    return BenchmarkResult(
        config=config_name,
        model=config.model.name,
        backend=jax.default_backend(),
        device_kind=jax.devices()[0].device_kind,
        num_devices=s.num_devices,
        batch_size=s.batch_size,
        eval_batch_size=s.eval_batch_size,
        image_size=s.image_size,
        dtype=config.dtype,
        macs_per_image=macs,
        train_compile_s=s.train_compile_s,
        eval_compile_s=s.eval_compile_s,
        train=train_timing,
        eval=eval_timing,
        train_images_per_s=train_ips,
        eval_images_per_s=eval_ips,
        peak_tflops=peak / 1e12,
        peak_source=peak_source,
        train_mfu=6 * macs * train_ips / (peak * s.num_devices),
        eval_mfu=2 * macs * eval_ips / (peak * s.num_devices),
        peak_memory_bytes=peak_memory(),
        compiled_memory_bytes=compiled_memory(s.train_compiled),
    )


def format_result(r: BenchmarkResult) -> str:
    """The human-readable report."""
    def ms(t: Timing) -> str:
        return (f'median {1e3 * t.median:.1f} ms (min {1e3 * t.min:.1f}, '
                f'max {1e3 * t.max:.1f}, {len(t.windows)} windows)')

    if r.peak_memory_bytes is None:
        memory = f'not reported by the {r.backend} backend (device.memory_stats() is None)'
    else:
        memory = f'{r.peak_memory_bytes / 2**20:,.0f} MiB'
    lines = [
        f'{r.config or r.model}: {r.model}, {r.image_size}px, {r.dtype}, batch {r.batch_size} '
        f'(eval {r.eval_batch_size}) on {r.num_devices} x {r.device_kind} ({r.backend})',
        f'compile:       train {r.train_compile_s:.1f} s, eval {r.eval_compile_s:.1f} s',
        f'train step:    {ms(r.train)}',
        f'train:         {r.train_images_per_s:,.1f} images/s',
        f'eval step:     {ms(r.eval)}',
        f'eval:          {r.eval_images_per_s:,.1f} images/s',
        f'peak memory:   {memory}',
    ]
    if r.compiled_memory_bytes is not None:
        lines.append(f'XLA estimate:  {r.compiled_memory_bytes / 2**20:,.0f} MiB per device '
                     '(train step: arguments + outputs + temporaries)')
    lines += [
        f'MACs/image:    {r.macs_per_image / 1e6:,.1f} M (train FLOPs/image = 6 x MACs)',
        f'peak:          {r.peak_tflops:.3f} TFLOP/s per device ({r.peak_source})',
        f'MFU:           train {100 * r.train_mfu:.1f}%, eval {100 * r.eval_mfu:.1f}%',
    ]
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m resnet_jax.training.benchmark`."""
    parser = argparse.ArgumentParser(
        prog='python -m resnet_jax.training.benchmark',
        description='Times the real train and eval steps of a config on synthetic data.')
    parser.add_argument('--config', required=True, metavar='FILE[:ARG]',
                        help='an experiment config, e.g. experiments/cifar10.py:resnet20')
    parser.add_argument('--batch-size', type=int, help='global batch (default: the config\'s)')
    parser.add_argument('--eval-batch-size', type=int, help='default: the train batch size')
    parser.add_argument('--steps', type=int, default=5, help='steps per timed window')
    parser.add_argument('--repeats', type=int, default=5, help='timed windows')
    parser.add_argument('--warmup', type=int, default=2, help='untimed steps after compiling')
    parser.add_argument('--dtype', choices=configs.DTYPES, help='default: the config\'s')
    parser.add_argument('--peak-tflops', type=float,
                        help='peak of one device for the MFU (default: datasheet or measured)')
    parser.add_argument('--json', metavar='OUT', help='also write the figures to this file')
    parser.add_argument('--keep-freed-memory', action=argparse.BooleanOptionalAction,
                        default=True, help='on a CPU-only run, as resnet_jax.main\'s flag '
                        '(resnet_jax/backend/cpu/host_memory.py)')
    return parser


def load_config(spec: str, batch_size: int | None = None,
                dtype: str | None = None) -> ml_collections.ConfigDict:
    """The experiment config `FILE[:ARG]` with the benchmark's overrides, validated."""
    config = configs.load_config(spec)
    if batch_size:
        config.batch_size = batch_size
    if dtype:
        config.dtype = dtype
    if config.total_steps is None and config.num_epochs is None:
        config.total_steps = 1_000  # only shapes the learning-rate schedule
    configs.validate_config(_as_synthetic(config))
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; bad arguments or configs exit 2 with a message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    backend.configure_process(args.keep_freed_memory)  # before JAX starts
    if min(args.steps, args.repeats) < 1 or args.warmup < 0:
        parser.error('--steps and --repeats must be positive, --warmup >= 0')
    json_dir = os.path.dirname(os.path.abspath(args.json)) if args.json else None
    if json_dir and not os.path.isdir(json_dir):  # found now, not after the whole run
        parser.error(f'--json {args.json}: the folder {json_dir} does not exist')
    try:
        config = load_config(args.config, args.batch_size, args.dtype)
    except (configs.ConfigError, ValueError) as error:
        parser.error(str(error))
    try:
        result = run_benchmark(
            config, config_name=args.config, steps_per_window=args.steps,
            repeats=args.repeats, warmup=args.warmup, eval_batch_size=args.eval_batch_size,
            peak_tflops=args.peak_tflops,
            log=lambda message: print(message, file=sys.stderr, flush=True))
    except configs.ConfigError as error:
        parser.error(str(error))
    print(format_result(result))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result.to_json(), f, indent=2)
            f.write('\n')
    return 0


def _as_synthetic(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy that validates as a synthetic run (ImageNet configs name imagenet2012)."""
    copy = ml_collections.ConfigDict(config.to_dict())
    num_classes, image_size = shape_from_config(config)
    copy.dataset = 'synthetic'
    copy.num_classes, copy.image_size = num_classes, image_size
    return copy


if __name__ == '__main__':
    sys.exit(main())
