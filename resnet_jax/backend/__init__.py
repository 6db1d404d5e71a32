"""What the platform changes in a run, in one place: the seam between the paper's code
(models, steps, loop) and what makes it fast on a given platform.

- `layers`: the model's building blocks (`resnet_jax.models.layers.Layers`), injected into it;
- `compute_dtype`: the dtype it computes in (bfloat16 on a CPU only where it pays);
- `jit_options` and `training_context`: compiler options of the steps, and a context for
  the model's training forward pass; `accumulation_unroll`: how gradient accumulation loops;
- `run_keys`: the run's random keys;
- `configure_process`: process settings that must precede JAX's start.

GPUs and TPUs get XLA's defaults; CPUs what `resnet_jax.backend.cpu` says.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax.backend.cpu import compiler, host_memory, kernel_layers
from resnet_jax.models.layers import XLA_LAYERS, Layers


def layers(cpu_kernels: str, platform: str) -> Layers:
    """The layers of a model on `platform` ('cpu', 'gpu', 'tpu') for `config.cpu_kernels`."""
    if cpu_kernels not in kernel_layers.CHOICES:
        raise ValueError(f'cpu_kernels={cpu_kernels!r}: choose one of {kernel_layers.CHOICES}')
    if platform != 'cpu':
        return XLA_LAYERS  # nothing is built or traced for the CPU kernels elsewhere
    return kernel_layers.layers(cpu_kernels)


def compute_dtype(dtype: str, cpu_kernels: str, platform: str) -> jnp.dtype:
    """The dtype a model computes in for `config.dtype` on `platform`: as asked, except that
    a CPU computes bfloat16 only where its kernels make it faster than float32."""
    if platform != 'cpu':
        return jnp.dtype(dtype)
    return kernel_layers.compute_dtype(dtype, cpu_kernels)


def jit_options(platform: str) -> dict[str, Any]:
    """Keyword arguments of `jax.jit` for the train steps on `platform`."""
    if platform != 'cpu':
        return {}
    return {'compiler_options': compiler.compiler_options()}


@contextlib.contextmanager
def training_context(platform: str) -> Iterator[None]:
    """Wraps the model's forward pass in a train step (traced inside it)."""
    if platform != 'cpu':
        yield
        return
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


def configure_process(keep_freed_memory: bool = True) -> bool:
    """Before JAX starts: on a CPU-only run, malloc settings that keep the memory XLA frees
    after each step (`resnet_jax.backend.cpu.host_memory`); whether they were applied."""
    return host_memory.configure_for_cpu_training(keep_freed_memory)
