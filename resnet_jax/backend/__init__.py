"""What the platform changes in a run, in one place: the seam between the paper's code
(models, steps, loop) and what makes it fast on a given platform.

- `layers`: the model's building blocks (`resnet_jax.models.layers.Layers`), injected into it;
- `compute_dtype`: the dtype it computes in (bfloat16 on a CPU only where it pays);
- `jit_options` and `training_context`: compiler options of the steps, and a context for
  the model's training forward pass; `accumulation_unroll`: how gradient accumulation loops;
- `run_keys`: the run's random keys;
- `configure_process` (and `define_process_flags`, the flags of `resnet_jax.main` that
  choose them): process settings that must precede JAX's start;
- `CPU_KERNEL_CHOICES` and `host_cpu_isa`: what validation and reports name of the CPU.

GPUs and TPUs get XLA's defaults; CPUs what `resnet_jax.backend.cpu` says. Its modules are
imported only when a CPU asks for them: a GPU or TPU run, and the validation of a config,
never import the CPU kernels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
from absl import flags

from resnet_jax.backend.cpu import KERNEL_CHOICES as CPU_KERNEL_CHOICES
from resnet_jax.models.layers import XLA_LAYERS, Layers

__all__ = ['CPU_KERNEL_CHOICES', 'accumulation_unroll', 'compute_dtype', 'configure_process',
           'define_process_flags', 'host_cpu_isa', 'jit_options', 'layers', 'run_keys',
           'training_context']


def layers(cpu_kernels: str, platform: str) -> Layers:
    """The layers of a model on `platform` ('cpu', 'gpu', 'tpu') for `config.cpu_kernels`."""
    if cpu_kernels not in CPU_KERNEL_CHOICES:
        raise ValueError(f'cpu_kernels={cpu_kernels!r}: choose one of {CPU_KERNEL_CHOICES}')
    if platform != 'cpu':
        return XLA_LAYERS  # nothing is built or traced for the CPU kernels elsewhere
    from resnet_jax.backend.cpu import kernel_layers
    return kernel_layers.layers(cpu_kernels)


def compute_dtype(dtype: str, cpu_kernels: str, platform: str) -> jnp.dtype:
    """The dtype a model computes in for `config.dtype` on `platform`: as asked, except that
    a CPU computes bfloat16 only where its kernels make it faster than float32."""
    if platform != 'cpu':
        return jnp.dtype(dtype)
    from resnet_jax.backend.cpu import kernel_layers
    return kernel_layers.compute_dtype(dtype, cpu_kernels)


def jit_options(platform: str) -> dict[str, Any]:
    """Keyword arguments of `jax.jit` for the train and evaluation steps on `platform`."""
    if platform != 'cpu':
        return {}
    from resnet_jax.backend.cpu import compiler
    return {'compiler_options': compiler.compiler_options()}


@contextlib.contextmanager
def training_context(platform: str) -> Iterator[None]:
    """Wraps the model's forward pass in a train step (traced inside it)."""
    if platform != 'cpu':
        yield
        return
    from resnet_jax.backend.cpu import compiler
    with compiler.conv_barriers():
        yield


def accumulation_unroll(platform: str, micro_batches: int) -> int:
    """How many micro-batches of gradient accumulation one loop iteration runs: a CPU
    unrolls up to 8, since XLA:CPU's while loop slowed the step (docs/large_batch.md);
    elsewhere one per iteration (compile time grows with the unrolling)."""
    return min(micro_batches, 8) if platform == 'cpu' else 1


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """The initialisation key and the augmentation key of a run."""
    # 'rbg' keys make the initialiser compile several times faster on a CPU than threefry
    # (and change nothing else); the augmentation keeps threefry, whose numbers do not
    # depend on the sharding.
    return jax.random.key(seed, impl='rbg'), jax.random.fold_in(jax.random.key(seed), 1)


def define_process_flags(flag_values: flags.FlagValues) -> None:
    """The command-line flags of `configure_process`'s settings (`--cpu_devices`,
    `--keep_freed_memory`), defined in `flag_values`."""
    from resnet_jax.backend.cpu import process
    process.define_flags(flag_values)


def configure_process(keep_freed_memory: bool = True, cpu_devices: int = 0) -> bool:
    """Before JAX starts: split the CPU into `cpu_devices` JAX devices (0: one), and on a
    CPU-only run, malloc settings that keep the memory XLA frees after each step
    (`resnet_jax.backend.cpu.host_memory`); whether those were applied."""
    from resnet_jax.backend.cpu import process
    return process.configure(keep_freed_memory, cpu_devices)


def host_cpu_isa() -> str | None:
    """The vector instruction set the CPU kernels would be built for on this host ('avx512',
    'avx2', ...), or None where they cannot be (docs/cpu.md)."""
    from resnet_jax.backend.cpu.kernels import native
    return native.host_isa()
