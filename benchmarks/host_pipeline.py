"""Images per second per CPU core that the streaming pipeline decodes and augments on the host.

Writes ImageNet-like JPEGs (500x375 and the other common ImageNet shapes, quality 90,
smooth shading with objects, texture and sensor noise) into a temporary image folder, or
reads an existing one (--data-dir), and runs the real tf.data pipelines of
`resnet_jax.inputs.tf_pipelines` on it: `TrainStream` with the 'scale' (the paper) and
'inception' host augmentations, and `eval_dataset` in the 'center_crop', 'ten_crop' and
'multi_scale' modes, all with the default `configs.streaming_config()` values and 224-pixel
crops. A reference line decodes whole JPEGs alone (read + `tf.io.decode_jpeg`).

Each pipeline runs with the tf.data thread pool (`private_threadpool_size`) restricted to
1 thread and to every core (`os.cpu_count()`), after a warm-up; every timed repeat is one
full pass over the images, and the repeats of all pipelines are interleaved so that
drifting background load hits them alike. The pool size alone does not bound the cores
used: some ops (the antialiased resize, strided slices) shard their work over TensorFlow's
process-wide intra-op pool. So, unless --no-pin, every thread of the process is also
pinned to as many cores as the pool has threads (Linux), which makes img/s/thread a true
rate per core.

    python benchmarks/host_pipeline.py [--num-images 512] [--repeats 5] [--threads 1,all]
        [--modes decode,scale,inception,center_crop,ten_crop,multi_scale]
        [--device-images-per-sec RATE] [--data-dir DIR] [--no-pin] [--json OUT]

Prints one row per pipeline and thread count:
- img/s: images per second (median of the repeats, [min - max]); an eval image is one
  example with all of its views (10 for ten_crop, 5 sizes for multi_scale),
- img/s/thread: img/s divided by the thread count, the rate per core,
- img/CPU-s: images per second of CPU time of the whole process (all threads): the rate
  per core that other load on the machine disturbs least,
- busy: CPU seconds per second, how many cores the pipeline actually kept busy (below
  the thread count when other processes take CPU time, or the pipeline waits),
- cores: cores needed to feed --device-images-per-sec at this row's img/CPU-s
  (the default is the training rate of ResNet-50, bfloat16, batch 256 on one H100, as
  measured in docs/performance.md; for the eval rows, pass the device's evaluation rate
  instead).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from resnet_jax import configs  # noqa: E402
from resnet_jax.inputs import arrays, sources, tf_pipelines  # noqa: E402

PAPER_IMAGE_SIZE = 224
# (width, height): weight. The common ImageNet shapes, landscape 4:3 the most frequent.
DEFAULT_SIZES = '500x375:8,375x500:4,500x333:3,333x500:1,400x400:1,640x480:1'
MODES = ('decode', 'scale', 'inception', 'center_crop', 'ten_crop', 'multi_scale')
TRAIN_KINDS = ('scale', 'inception')
ROW_NAMES = {'decode': 'decode (whole JPEG)', 'scale': 'train scale',
             'inception': 'train inception', 'center_crop': 'eval center_crop',
             'ten_crop': 'eval ten_crop', 'multi_scale': 'eval multi_scale'}
NUM_CLASSES = 4


@dataclasses.dataclass(frozen=True)
class FolderStats:
    """What the measured JPEGs are like."""

    images: int
    mean_width: float
    mean_height: float
    mean_kilobytes: float
    bits_per_pixel: float


@dataclasses.dataclass
class Case:
    """One pipeline at one thread-pool size, and its measurements."""

    mode: str
    threads: int
    dataset: tf.data.Dataset
    images_per_element: int  # the batch size of a training pipeline, else 1
    elements: int
    seconds: list[float] = dataclasses.field(default_factory=list)
    cpu_seconds: list[float] = dataclasses.field(default_factory=list)

    @property
    def images(self) -> int:
        """Images read by one pass."""
        return self.elements * self.images_per_element


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    """'500x375:8,375x500' -> [(500, 375, 8), (375, 500, 1)]: width, height, weight."""
    sizes = []
    for item in text.split(','):
        shape, _, weight = item.strip().partition(':')
        width, height = (int(v) for v in shape.lower().split('x'))
        sizes.append((width, height, int(weight or 1)))
    return sizes


def parse_threads(text: str) -> list[int]:
    """'1,all' -> [1, os.cpu_count()], without repeats."""
    threads = []
    for item in text.split(','):
        value = (os.cpu_count() or 1) if item.strip() == 'all' else int(item)
        if value not in threads:
            threads.append(value)
    return threads


def _field(rng: np.random.Generator, height: int, width: int, cells: int,
           channels: int) -> np.ndarray:
    """Smooth noise, float32 [height, width, channels], std ~1, `cells` cells on the long side."""
    grid_h = max(2, round(cells * height / max(height, width)))
    grid_w = max(2, round(cells * width / max(height, width)))
    small = rng.standard_normal((channels, grid_h, grid_w)).astype(np.float32)
    return np.stack([np.asarray(Image.fromarray(c, 'F').resize((width, height), Image.BICUBIC))
                     for c in small], axis=-1)


def natural_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """uint8 [height, width, 3] with roughly the statistics of a photograph.

    Large-scale shading with a 1/f-like spectrum and correlated colour, a few shaded
    objects with sharp edges, fine texture in some regions only, and mild sensor noise: a
    JPEG of it has about the size (bits per pixel) and decoding cost of a photo; pure
    noise would compress badly and decode unrealistically slowly, flat colour too fast.
    """
    image = rng.uniform(70, 180, 3).astype(np.float32)
    image = image + sum(_field(rng, height, width, cells, 1) * (40.0 / (cells / 2) ** 0.6)
                        for cells in (2, 4, 8, 16))
    image = image + _field(rng, height, width, 3, 3) * 22 + _field(rng, height, width, 12, 3) * 6
    shading = _field(rng, height, width, 6, 1) * 20
    for _ in range(rng.integers(3, 9)):
        mask = Image.new('L', (width, height))
        draw = ImageDraw.Draw(mask)
        x0, y0 = int(rng.integers(-width // 4, width)), int(rng.integers(-height // 4, height))
        box = [x0, y0, x0 + int(rng.integers(30, max(31, width // 2))),
               y0 + int(rng.integers(30, max(31, height // 2)))]
        (draw.ellipse if rng.random() < 0.6 else draw.rectangle)(box, fill=255)
        alpha = np.asarray(mask, np.float32)[..., None] / 255
        colour = rng.uniform(20, 235, 3).astype(np.float32) + shading * rng.uniform(-1, 1)
        image = image * (1 - alpha) + colour * alpha
    fine = sum(_field(rng, height, width, cells, 1) * (cells / 32) ** -0.3
               for cells in (32, 64, 128, 256) if cells <= max(height, width) / 1.5)
    where = 1 / (1 + np.exp(-3 * _field(rng, height, width, 5, 1) - 1))
    image = image + 45 * where * fine
    image = image + rng.standard_normal((height, width, 1)).astype(np.float32) * 5
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_image_folder(root: str, num_images: int, sizes: Sequence[tuple[int, int, int]],
                       seed: int = 0, quality: int = 90) -> None:
    """`num_images` JPEGs in <root>/train/<class>/; <root>/val/ holds the same files."""
    rng = np.random.default_rng(seed)
    weights = np.array([weight for _, _, weight in sizes], np.float64)
    choices = rng.choice(len(sizes), size=num_images, p=weights / weights.sum())
    for i, choice in enumerate(choices):
        width, height, _ = sizes[choice]
        name = f'class{i % NUM_CLASSES}'
        paths = [os.path.join(root, split, name, f'{i:06d}.jpg') for split in ('train', 'val')]
        for path in paths:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(natural_image(rng, width, height)).save(paths[0], quality=quality)
        try:
            os.link(paths[0], paths[1])
        except OSError:
            with open(paths[0], 'rb') as src, open(paths[1], 'wb') as dst:
                dst.write(src.read())


def folder_stats(root: str, num_images: int, seed: int = 0) -> FolderStats:
    """Mean shape and size of (a sample of `num_images` of) the train images of `root`."""
    paths = arrays.list_image_folder(root).train_paths
    if len(paths) > num_images:
        picks = np.random.default_rng(seed).choice(len(paths), num_images, replace=False)
        paths = [paths[i] for i in picks]
    shapes = []
    for path in paths:
        with Image.open(path) as image:  # reads the header only
            shapes.append(image.size)
    widths, heights = np.array(shapes, np.float64).T
    total_bytes = sum(os.path.getsize(path) for path in paths)
    return FolderStats(len(paths), float(widths.mean()), float(heights.mean()),
                       total_bytes / len(paths) / 1000,
                       8 * total_bytes / float((widths * heights).sum()))


def host_augmentation(kind: str, image_size: int) -> tf_pipelines.HostAugmentation:
    """The augmentation of the default config at `image_size`.

    At the paper's 224 pixels this is exactly `configs.streaming_config()`; another
    image_size (the tests use tiny ones) scales every pixel size of it alike.
    """
    config = configs.get_base_config()
    config.image_size = image_size
    config.streaming.augment = kind if kind in TRAIN_KINDS else 'scale'
    stream = config.streaming
    if image_size != PAPER_IMAGE_SIZE:
        factor = image_size / PAPER_IMAGE_SIZE
        stream.scale_range = _scaled(stream.scale_range, factor)
        stream.eval_resize = _scaled([stream.eval_resize], factor)[0]
        stream.multi_scale_sizes = _scaled(stream.multi_scale_sizes, factor)
    return tf_pipelines.HostAugmentation.from_config(config)


def _scaled(sizes: Sequence[int], factor: float) -> tuple[int, ...]:
    """Pixel sizes times `factor`, rounded, at least 1."""
    return tuple(max(1, round(size * factor)) for size in sizes)


def build_case(mode: str, threads: int, source: sources.ImageFolderSource, image_size: int,
               num_images: int, batch_size: int) -> Case:
    """The project's pipeline for `mode` with a tf.data thread pool of `threads` threads."""
    if mode == 'decode':
        count = min(num_images, source.num_examples('train'))
        records = source.read('train', tf.data.Dataset.range(count))
        dataset = records.map(lambda encoded, label: tf.io.decode_jpeg(encoded, channels=3),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        dataset = dataset.prefetch(tf.data.AUTOTUNE).with_options(tf_pipelines._options(threads))
        return Case(mode, threads, dataset, 1, count)
    augmentation = host_augmentation(mode, image_size)
    if mode in TRAIN_KINDS:
        stream = tf_pipelines.TrainStream(source, augmentation, seed=0, global_batch=batch_size,
                                       process_index=0, process_count=1, shuffle_buffer=1,
                                       threads=threads)
        batches = min(num_images // batch_size, stream.steps_per_epoch)
        return Case(mode, threads, stream.epoch_dataset(0).take(batches), batch_size, batches)
    count = min(num_images, source.num_examples(source.eval_split))
    dataset = tf_pipelines.eval_dataset(source, augmentation, mode, process_index=0,
                                     process_count=1, threads=threads).take(count)
    return Case(mode, threads, dataset, 1, count)


def can_pin() -> bool:
    """Whether threads can be pinned to cores here (Linux)."""
    return hasattr(os, 'sched_setaffinity') and os.path.isdir('/proc/self/task')


def pin_process(cpus: set[int]) -> None:
    """Pins every thread of this process (and so the threads they start) to `cpus`."""
    for task in os.listdir('/proc/self/task'):
        try:
            os.sched_setaffinity(int(task), cpus)
        except OSError:  # the thread has just ended
            pass


def run_pass(case: Case, elements: int | None = None) -> tuple[float, float]:
    """Wall and process CPU seconds to read `elements` (default: all) from a new iterator."""
    cpu_start, start = time.process_time(), time.perf_counter()
    iterator = case.dataset.as_numpy_iterator()
    seen = sum(1 for _ in itertools.islice(iterator, elements))
    del iterator  # stops the prefetching threads of a partial pass
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if elements is None and seen != case.elements:
        raise RuntimeError(f'{case.mode}: {seen} elements, expected {case.elements}')
    return seconds, cpu_seconds


def summarise(case: Case, device_rate: float) -> dict:
    """The row of one case: rates over the repeats."""
    rates = [case.images / s for s in case.seconds]
    median = statistics.median(rates)
    per_cpu_second = statistics.median(case.images / c for c in case.cpu_seconds)
    return {
        'mode': case.mode, 'name': ROW_NAMES[case.mode], 'threads': case.threads,
        'images': case.images, 'seconds': case.seconds, 'cpu_seconds': case.cpu_seconds,
        'images_per_sec': median, 'images_per_sec_min': min(rates),
        'images_per_sec_max': max(rates), 'images_per_sec_per_thread': median / case.threads,
        'images_per_cpu_sec': per_cpu_second,
        'cores_busy': statistics.median(c / s for c, s in
                                        zip(case.cpu_seconds, case.seconds, strict=True)),
        'cores_needed': device_rate / per_cpu_second,
    }


def format_table(rows: Sequence[dict], device_rate: float) -> str:
    """The printed table, one line per row."""
    lines = [f'{"pipeline":<20} {"threads":>7} {"img/s median [min - max]":>26} '
             f'{"img/s/thread":>12} {"img/CPU-s":>9} {"busy":>5} '
             f'{f"cores for {device_rate:,.0f} img/s":>22}']
    for row in rows:
        spread = (f'{row["images_per_sec"]:8.1f} [{row["images_per_sec_min"]:6.1f} - '
                  f'{row["images_per_sec_max"]:6.1f}]')
        lines.append(f'{row["name"]:<20} {row["threads"]:>7} {spread:>26} '
                     f'{row["images_per_sec_per_thread"]:>12.1f} '
                     f'{row["images_per_cpu_sec"]:>9.1f} {row["cores_busy"]:>5.2f} '
                     f'{row["cores_needed"]:>22.1f}')
    return '\n'.join(lines)


def cpu_model() -> str:
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(root: str, args: argparse.Namespace, modes: Sequence[str],
            threads: Sequence[int]) -> list[Case]:
    """Builds every case, warms each up, then times `args.repeats` interleaved passes."""
    source = sources.ImageFolderSource(root)
    cases = [build_case(mode, n, source, args.image_size, args.num_images, args.batch_size)
             for mode in modes for n in threads]
    all_cpus = sorted(os.sched_getaffinity(0)) if args.pin else []

    def pin(case: Case) -> None:
        """Pins the process to as many cores as `case` has threads (if --pin)."""
        if args.pin:
            pin_process(set(all_cpus[:case.threads]))

    try:
        for case in cases:
            if case.elements == 0:
                raise ValueError(f'{case.mode}: no images to measure (--num-images '
                                 f'{args.num_images}, --batch-size {args.batch_size})')
            pin(case)
            run_pass(case, max(1, -(-args.warmup // case.images_per_element)))
        for repeat in range(args.repeats):
            for case in cases:
                pin(case)
                time_case(case, repeat, args)
    finally:
        if args.pin:
            pin_process(set(all_cpus))
    return cases


def time_case(case: Case, repeat: int, args: argparse.Namespace) -> None:
    """One timed pass of `case`, appended to its measurements."""
    seconds, cpu_seconds = run_pass(case)
    case.seconds.append(seconds)
    case.cpu_seconds.append(cpu_seconds)
    if args.verbose:
        print(f'  repeat {repeat + 1}/{args.repeats} {ROW_NAMES[case.mode]:<20} '
              f'{case.threads} threads: {case.images / seconds:8.1f} img/s '
              f'({cpu_seconds / seconds:.2f} cores busy)', file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num-images', type=int, default=512,
                        help='JPEGs to write, and images per timed pass')
    parser.add_argument('--sizes', default=DEFAULT_SIZES,
                        help='WIDTHxHEIGHT[:weight],... of the written JPEGs')
    parser.add_argument('--quality', type=int, default=90, help='JPEG quality')
    parser.add_argument('--data-dir', default='',
                        help='an existing image folder (train/ and val/ or test/) to read '
                        'instead of writing one')
    parser.add_argument('--image-size', type=int, default=PAPER_IMAGE_SIZE,
                        help='crop size; other than 224 scales every size of the recipe')
    parser.add_argument('--batch-size', type=int, default=64,
                        help='local batch of the training pipelines')
    parser.add_argument('--modes', default=','.join(MODES),
                        help=f'comma-separated, of {",".join(MODES)}')
    parser.add_argument('--threads', default='1,all',
                        help="tf.data thread-pool sizes, comma-separated ('all': os.cpu_count())")
    parser.add_argument('--repeats', type=int, default=5, help='timed passes per case')
    parser.add_argument('--warmup', type=int, default=64, help='images read before timing')
    parser.add_argument('--device-images-per-sec', type=float, default=5891.0,
                        help='accelerator images/s to feed (default: the measured ResNet-50 '
                        'bf16 training rate on one H100, docs/performance.md)')
    parser.add_argument('--pin', action=argparse.BooleanOptionalAction, default=can_pin(),
                        help='pin the process to as many cores as the pool has threads')
    parser.add_argument('--seed', type=int, default=0, help='seed of the written images')
    parser.add_argument('--json', default='', help='also write the results to this file')
    parser.add_argument('--verbose', action='store_true', help='print every repeat (stderr)')
    args = parser.parse_args(argv)
    unknown = set(args.modes.split(',')) - set(MODES)
    if unknown:
        parser.error(f'unknown modes {sorted(unknown)}; choose from {MODES}')
    if args.repeats < 1 or args.num_images < 1:
        parser.error('--repeats and --num-images must be positive')
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark, prints the table and returns (and optionally writes) the results."""
    args = parse_args(argv)
    modes = [mode for mode in MODES if mode in args.modes.split(',')]
    threads = parse_threads(args.threads)
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix='host_pipeline_') as temp:
        root = args.data_dir
        if not root:
            root = temp
            written = time.perf_counter()
            write_image_folder(root, args.num_images, parse_sizes(args.sizes), args.seed,
                               args.quality)
            print(f'Wrote {args.num_images} JPEGs in {time.perf_counter() - written:.1f} s.',
                  file=sys.stderr, flush=True)
        stats = folder_stats(root, args.num_images, args.seed)
        cases = measure(root, args, modes, threads)
    rows = [summarise(case, args.device_images_per_sec) for case in cases]
    meta = {
        'date': started.isoformat(timespec='seconds'), 'cpu': cpu_model(),
        'cpu_count': os.cpu_count(), 'tensorflow': tf.__version__,
        'python': platform.python_version(), 'data': args.data_dir or 'generated',
        'images': dataclasses.asdict(stats), 'image_size': args.image_size,
        'batch_size': args.batch_size, 'repeats': args.repeats, 'warmup': args.warmup,
        'pinned': args.pin,
        'device_images_per_sec': args.device_images_per_sec,
    }
    print(f'Host pipeline, {started:%Y-%m-%d %H:%M} UTC, {meta["cpu"]}, '
          f'{meta["cpu_count"]} CPUs, TensorFlow {tf.__version__}')
    print(f'{stats.images} {meta["data"]} JPEGs, mean {stats.mean_width:.0f}x'
          f'{stats.mean_height:.0f}, {stats.mean_kilobytes:.1f} kB, '
          f'{stats.bits_per_pixel:.2f} bits/pixel; crops {args.image_size}px, train batch '
          f'{args.batch_size}; median of {args.repeats} passes; '
          + ('pinned to as many cores as threads' if args.pin else 'not pinned to cores'))
    print(format_table(rows, args.device_images_per_sec))
    train_rows = [row for row in rows if row['mode'] in TRAIN_KINDS and row['threads'] == 1]
    for row in train_rows:
        print(f'Feeding {args.device_images_per_sec:,.0f} img/s with {row["name"]} takes '
              f'{row["cores_needed"]:.1f} cores at {row["images_per_cpu_sec"]:.1f} img/CPU-s '
              f'({args.device_images_per_sec / row["images_per_sec"]:.1f} at the 1-thread '
              f'rate of {row["images_per_sec"]:.1f} img/s).')
    results = {'meta': meta, 'rows': rows}
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == '__main__':
    main()
