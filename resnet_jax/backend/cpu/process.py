"""A CPU run's process settings, which must precede JAX's start: the JAX devices a CPU is
split into, and the malloc settings of `host_memory`; and the flags of `resnet_jax.main`
that choose them.
"""

from __future__ import annotations

import jax
from absl import flags

from resnet_jax.backend.cpu import host_memory


def define_flags(flag_values: flags.FlagValues) -> None:
    """`--cpu_devices` and `--keep_freed_memory`, in `flag_values`."""
    flags.DEFINE_integer(
        'cpu_devices', 0,
        'Split each CPU into this many JAX devices (0: one), data parallel over its cores '
        '(docs/cpu.md measures when it pays); each normalises its own share of the batch, as '
        'GPUs would, unless --config.sync_batch_norm=True.', lower_bound=0,
        flag_values=flag_values)
    flags.DEFINE_bool(
        'keep_freed_memory', True,
        'On a CPU-only run, keep the memory XLA frees after each step for the next one '
        'instead of returning it to the system (glibc malloc settings; '
        'resnet_jax/backend/cpu/host_memory.py): faster steps (docs/cpu.md), and the process '
        'then holds its peak memory.', flag_values=flag_values)


def configure(keep_freed_memory: bool = True, cpu_devices: int = 0) -> bool:
    """Applies the settings; whether malloc now keeps freed memory."""
    if cpu_devices:
        jax.config.update('jax_num_cpu_devices', cpu_devices)
    return host_memory.configure_for_cpu_training(keep_freed_memory)
