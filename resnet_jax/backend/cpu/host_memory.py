"""Host malloc settings for training on the CPU: keep the memory XLA frees after each step.

XLA:CPU allocates a step's temporary buffers afresh at every execution and frees them at
its end; glibc hands such large blocks back to the kernel (munmap) and maps new ones the
next step, so every step faults in hundreds of MB of zeroed pages: about 50,000 page
faults and a fifth of a CIFAR ResNet-20 step on a 2-core CPU. With one malloc arena, no
mmap and no trimming, freed blocks stay in the heap and the next step reuses them.

This must happen before JAX starts its CPU backend (the settings bind when a thread first
allocates, and XLA's threads start with the backend). The process then keeps its peak
memory until it exits, and its threads share one malloc arena: right for a training job
that is bound by XLA's compute on a CPU, so it is applied only when JAX will run on the
CPU alone (`cpu_only_run`).
"""

import ctypes
import importlib.metadata
import importlib.util
import logging
import os
import platform

import jax

# mallopt(3) parameters, from glibc's malloc.h. A trim threshold of -1 reads as the largest
# size: never trim (a ResNet-50 step's temporaries alone exceed the largest positive int).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))


def cpu_only_run() -> bool:
    """Whether JAX will run on the CPU alone, decided without starting a backend: the first
    of JAX_PLATFORMS (or jax_platforms) is 'cpu', or no GPU/TPU plugin is installed."""
    platforms = jax.config.jax_platforms or os.environ.get('JAX_PLATFORMS', '')
    if platforms:
        return platforms.split(',')[0].strip() == 'cpu'
    has_plugin = bool(importlib.metadata.entry_points(group='jax_plugins'))
    return not has_plugin and importlib.util.find_spec('libtpu') is None


def keep_freed_memory() -> bool:
    """Sets glibc malloc to keep freed memory for reuse; False where that is not possible
    (another C library). Call it before JAX starts a backend; see the module doc."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return False
    mallopt = ctypes.CDLL(None).mallopt
    if not all(mallopt(parameter, value) == 1 for parameter, value in _SETTINGS):
        logging.warning('glibc refused a malloc setting; CPU steps may fault in fresh memory')
        return False
    return True


def configure_for_cpu_training(enabled: bool = True) -> bool:
    """`keep_freed_memory()` if `enabled` and the run is CPU-only; whether it was applied."""
    return enabled and cpu_only_run() and keep_freed_memory()
