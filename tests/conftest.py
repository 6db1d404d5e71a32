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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files that hold end-to-end (`slow`) tests first, in their order: pytest-xdist
    hands out whole files in this order, so the short files come last and the workers
    finish together (by default it starts with the files of the most tests, which left one
    worker alone with the README job at the end)."""
    end_to_end = {item.path for item in items if item.get_closest_marker('slow')}
    items.sort(key=lambda item: item.path not in end_to_end)


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
