"""XLA:CPU compiler options for the train and eval steps, and the optimization barriers
they keep.

XLA:CPU computes the weight gradient of a convolution from transposed copies of the
convolution's input and of its output gradient. Left alone, it fuses the elementwise chains
that produced them (BatchNorm, ReLU and the residual additions forward, their gradients
backward) into each transpose, recomputing them there in a cache-hostile order: over half
of the CIFAR ResNet-20 step and of the ResNet-50 step. An optimization barrier on each
convolution's input, and on the gradient of its output, keeps those one buffer that the
transpose only copies; the compiler option keeps XLA:CPU from deleting the barriers before
fusion (its `cse_barrier_expander` pass).

XLA:CPU also hands every convolution with more than 16 input or output features (so every
weight gradient too) to its YNNPACK library by default. In these training steps XLA's own
(Eigen) convolutions are faster (docs/cpu.md has the measurements). Reductions and matrix
products (the 1x1 convolutions, the head) stay with YNNPACK. XLA_FLAGS that set
`xla_cpu_experimental_ynn_fusion_type` override this (benchmarks/cpu_vs_torch.py --variant).
Other backends get none of these options.
"""

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

CPU_COMPILER_OPTIONS = {
    'xla_disable_hlo_passes': 'cse_barrier_expander',
    'xla_cpu_experimental_ynn_fusion_type':
        'LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT',
}


@jax.custom_vjp
def _barrier_gradient(y: jax.Array) -> jax.Array:
    """The identity, whose gradient passes through an optimization barrier."""
    return y


def _barrier_gradient_fwd(y):
    return y, None


def _barrier_gradient_bwd(_, g):
    return (jax.lax.optimization_barrier(g),)


_barrier_gradient.defvjp(_barrier_gradient_fwd, _barrier_gradient_bwd)


def _barrier_conv_operands(next_fun, args, kwargs, context):
    """A Flax interceptor: each convolution's input, and its output's gradient, are barriers."""
    if context.method_name != '__call__' or not isinstance(context.module, nn.Conv):
        return next_fun(*args, **kwargs)
    args = (jax.lax.optimization_barrier(args[0]), *args[1:])
    return _barrier_gradient(next_fun(*args, **kwargs))


@functools.cache
def compiler_options() -> dict[str, Any]:
    """CPU_COMPILER_OPTIONS, less the YNNPACK choice where XLA_FLAGS makes its own (as the
    benchmarks' variants do) or where this jaxlib does not know the option."""
    ynn = 'xla_cpu_experimental_ynn_fusion_type'
    without_ynn = {k: v for k, v in CPU_COMPILER_OPTIONS.items() if k != ynn}
    if f'--{ynn}=' in os.environ.get('XLA_FLAGS', ''):
        return without_ynn
    probe = jax.device_put(jnp.zeros((), jnp.float32), jax.devices('cpu')[0])
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_COMPILER_OPTIONS).lower(probe).compile()
    except Exception:  # noqa: BLE001 -- another jaxlib's option names: its default choice
        return without_ynn
    return CPU_COMPILER_OPTIONS


@contextlib.contextmanager
def conv_barriers() -> Iterator[None]:
    """Within it, each convolution's input and the gradient of its output are optimization
    barriers (wrap the training forward pass of the model in it)."""
    with nn.intercept_methods(_barrier_conv_operands):
        yield
