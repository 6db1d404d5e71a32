"""Shared test fixtures. The whole suite runs on 2 simulated CPU devices."""

import atexit
import os
import pathlib
import shutil
import tempfile

# Before JAX is imported anywhere: data-parallel code paths run on 2 devices in every test.
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=2').strip()

# One persistent compilation cache for the session, shared by this process, pytest-xdist's
# workers and the subprocesses that inherit the environment: many tests compile the same
# small train and eval steps, and a hit skips XLA's compile. Fresh each session, so no test
# depends on what an earlier one left.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    _COMPILATION_CACHE = tempfile.mkdtemp(prefix='resnet_jax_tests_compilation_')
    os.environ['JAX_COMPILATION_CACHE_DIR'] = _COMPILATION_CACHE
    os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
    atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


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
