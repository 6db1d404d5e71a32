"""Shared test fixtures. The whole suite runs on 2 simulated CPU devices."""

import os
import pathlib

import suite_flags

from resnet_jax import user_cache  # (imports no JAX)

# Before JAX is imported anywhere: 2 simulated devices, fast compiles (tests/suite_flags.py).
os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {suite_flags.xla_flags()}".strip()

# One persistent compilation cache, shared by this process, pytest-xdist's workers and the
# subprocesses that inherit the environment, and kept between sessions as the main job
# keeps its own (~/.cache/resnet_jax/jax_compilation): many tests compile the same small
# train and eval steps, and a hit skips XLA's compile. The cache is keyed by the program,
# the compiler options and the versions, so a hit is the same executable a compile gives;
# a clean machine (CI) starts empty. Every compile is kept, however short (JAX keeps those
# over 1 s): a tiny run's many small programs (its init, eval step, checkpoint slices) cost
# more to compile than to read back (docs/performance.md).
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      str(user_cache.root() / 'test_compilation'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

import pytest  # noqa: E402
import tiny_config as tiny_config_file  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


# The files that take longest, longest first: seconds of one worker, clean clone, 2 AMD EPYC
# cores with AVX-512, 2026-12-07 (docs/performance.md). Only the order matters, and it holds
# on the AVX2 machines too, where each takes about twice as long.
LONGEST_FIRST = (
    'test_multiprocess.py',  # 62
    'test_fault_tolerance.py',  # 57
    'test_readme.py',  # 55
    'test_reproduce.py',  # 33
    'test_models.py',  # 33
    'test_benchmark.py',  # 32
    'test_errors.py',  # 30
    'test_kernels_avx2.py',  # 25
    'test_custom_blocks.py',  # 25
    'test_no_device_stalls.py',  # 21
    'test_main.py',  # 20
    'test_large_batch.py',  # 19
    'test_conv_kernels.py',  # 18
    'test_train.py',  # 17
    'test_data.py',  # 16
    'test_streaming.py',  # 15
    'test_convert.py',  # 15
    'test_bfloat16_kernels.py',  # 14
    'test_summary.py',  # 12
    'test_preactivation.py',  # 12
    'test_init_from.py',  # 11
    'test_cpu_fast_paths.py',  # 10
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest files first, then the other files with end-to-end (`slow`) tests, then
    the rest: pytest-xdist hands out whole files in this order, so the last files are short
    and the workers finish together (by default it starts with the files of the most tests,
    which left one worker alone with the README job at the end; in alphabetical order one
    was left alone with the 33 s of test_reproduce)."""
    stale = [name for name in LONGEST_FIRST if not (REPO_ROOT / 'tests' / name).is_file()]
    if stale:
        raise pytest.UsageError(f'conftest.LONGEST_FIRST names {stale}, not in tests/: '
                                'rename or remove them there')
    end_to_end = {item.path for item in items if item.get_closest_marker('slow')}

    def rank(item: pytest.Item) -> int:
        if item.path.name in LONGEST_FIRST:
            return LONGEST_FIRST.index(item.path.name)
        return len(LONGEST_FIRST) + (item.path not in end_to_end)

    items.sort(key=rank)


@pytest.fixture(scope='session')
def cifar10_dir() -> pathlib.Path:
    """The real CIFAR-10 image folder: $RESNET_JAX_CIFAR10_DIR or ../shared/data/cifar10-jpeg.

    Read-only: tests must never write into it.
    """
    path = pathlib.Path(os.environ.get('RESNET_JAX_CIFAR10_DIR')
                        or REPO_ROOT.parent / 'shared' / 'data' / 'cifar10-jpeg')
    if not path.is_dir():
        pytest.skip(f'real CIFAR-10 not found at {path} (set RESNET_JAX_CIFAR10_DIR to an '
                    'image folder with train/ and test/)')
    return path


@pytest.fixture(scope='session')
def cifar10_cache_dir(tmp_path_factory) -> pathlib.Path:
    """One decoded-images cache ($RESNET_JAX_CACHE_DIR) for every test of this run, across
    pytest-xdist's workers: the real CIFAR-10 is decoded once (the loader's lock makes a
    second process wait for the first's cache), not once per test that reads it."""
    base = tmp_path_factory.getbasetemp()
    if base.name.startswith('popen-gw'):  # a worker's own folder; its parent is shared
        base = base.parent
    path = base / 'decoded_images'
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def tiny_config():
    """The suite's tiny run (tests/tiny_config.py) with overrides: tiny_config(total_steps=8)."""
    return tiny_config_file.get_config


@pytest.fixture(scope='session')
def tiny_config_path() -> str:
    """tests/tiny_config.py, for `--config` of a command or benchmark.load_config."""
    return tiny_config_file.__file__
