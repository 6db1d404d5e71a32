"""The building blocks a ResNet is made of, injected into the model (as the Flax ImageNet
example injects `conv` and `norm`): what computes them depends on the platform
(`resnet_jax.backend`), what they compute does not.

- `Conv`: `flax.linen.Conv`, with 1x1 convolutions computed as matrix products.
- `BatchNorm`: `flax.linen.BatchNorm`, reporting its response, with "ghost" groups.
- `norm_relu(norm, x, residual)`: `relu(norm(x) + residual)`, how a residual block ends and
  how most of its convolutions are followed; on a CPU one kernel (`fused_norm_relu`).
- `nn.Dense` (the head; squeeze-and-excitation), `nn.max_pool` (the ImageNet stem).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def output_side(side: int, window: int, stride: int, padding: int) -> int:
    """The output side of a window sliding over `side` pixels padded by `padding` each end."""
    return (side + 2 * padding - window) // stride + 1


class Conv(nn.Conv):
    """`nn.Conv`; a 1x1 convolution without padding is computed as a strided slice and a
    `dot_general` over the channels (the same 'kernel' parameter [1, 1, in, out], init and
    output), so that its gradients are matrix products too. XLA:CPU otherwise computes the
    weight gradient of a 1x1 convolution as a convolution whose window is the whole feature
    map, far slower than a matrix product."""

    dot_general: Callable = lax.dot_general  # lax's signature

    @nn.compact
    def __call__(self, inputs: jax.Array) -> jax.Array:
        if tuple(self.kernel_size) != (1, 1) or self.use_bias or not _no_padding(self.padding):
            return super().__call__(inputs)
        kernel = self.param('kernel', self.kernel_init,
                            (1, 1, inputs.shape[-1], self.features), self.param_dtype)
        stride_h, stride_w = self.strides
        x = inputs[:, ::stride_h, ::stride_w, :]
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        return self.dot_general(x, kernel[0, 0], (((x.ndim - 1,), (0,)), ((), ())),
                                precision=self.precision)


def _no_padding(padding: Any) -> bool:
    return padding == 'VALID' or (not isinstance(padding, str)
                                  and all(tuple(p) == (0, 0) for p in padding))


class BatchNorm(nn.BatchNorm):
    """`flax.linen.BatchNorm`, which also reports its output (the layer's response) and
    can take its training statistics over groups of the batch.

    The response, BN(x) before any addition or ReLU (the paper's Figure 7,
    resnet_jax.paper.layer_responses), is sown into 'intermediates': a no-op unless that
    collection is mutable.

    With `group_size` ("ghost" BatchNorm), training normalises each group of `group_size`
    consecutive examples of the batch by its own statistics, as if each group were on a
    device of its own (the paper's 128 images over two GPUs: groups of 64); the running
    averages take the mean of the groups' statistics. A batch of at most `group_size` is
    one group. Inference is unchanged.
    """

    group_size: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self._is_ghost(x):
            y = self._ghost_batch_norm(x)
        else:
            y = nn.BatchNorm.__call__(self, x)
        self.sow('intermediates', 'response', y)
        return y

    def _variables(self, x: jax.Array):
        """flax BatchNorm's parameters and statistics, made the same way."""
        features = (x.shape[-1],)
        scale = self.param('scale', self.scale_init, features, self.param_dtype)
        bias = self.param('bias', self.bias_init, features, self.param_dtype)
        ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
        ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
        return scale, bias, ra_mean, ra_var

    def _update_running_averages(self, ra_mean, ra_var, mean, var) -> None:
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var

    def _is_ghost(self, x: jax.Array) -> bool:
        return (bool(self.group_size) and not self.use_running_average
                and x.shape[0] > self.group_size)

    def _ghost_batch_norm(self, x: jax.Array) -> jax.Array:
        """BatchNorm of each group of `group_size` examples, with flax BatchNorm's variables."""
        if self.axis_name is not None or self.axis not in (-1, x.ndim - 1):
            raise ValueError('group_size is for per-device statistics over the last axis')
        if x.shape[0] % self.group_size:
            raise ValueError(f'a batch of {x.shape[0]} does not split into groups of '
                             f'{self.group_size}')
        scale, bias, ra_mean, ra_var = self._variables(x)
        features = (x.shape[-1],)
        groups = x.reshape(-1, self.group_size, *x.shape[1:]).astype(jnp.float32)
        axes = tuple(range(1, groups.ndim - 1))
        mean = groups.mean(axes, keepdims=True)
        # flax's variance: E[x^2] - E[x]^2, clipped at 0.
        var = jnp.maximum((groups * groups).mean(axes, keepdims=True) - mean * mean, 0.0)
        y = (groups - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        self._update_running_averages(ra_mean, ra_var, mean.reshape(-1, *features).mean(0),
                                      var.reshape(-1, *features).mean(0))
        return y.reshape(x.shape).astype(self.dtype or x.dtype)


def norm_relu(norm: Callable[[jax.Array], jax.Array], x: jax.Array,
              residual: jax.Array | None = None) -> jax.Array:
    """relu(norm(x) + residual), the residual optional: how a post-activation block ends
    (the paper's Figure 2) and how most of its convolutions are followed. The reference
    of `Layers.norm_relu`; a platform may compute it as one op (`fused_norm_relu`)."""
    y = norm(x)
    if residual is not None:
        y = y + residual
    return nn.relu(y)


class FusedBatchNormAddRelu(Protocol):
    """An implementation of `relu(BN(x) + residual)` as one op, for the inputs it `covers`
    (the CPU kernels' `resnet_jax.backend.cpu.kernels.batchnorm` is one)."""

    def covers(self, x: jax.Array) -> bool: ...

    def train(self, x, scale, bias, residual=None, *, relu: bool,
              epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]: ...

    def infer(self, x, mean, var, scale, bias, residual=None, *, relu: bool,
              epsilon: float) -> jax.Array: ...


class FusingBatchNorm(BatchNorm):
    """`BatchNorm` that computes `norm_relu(module, x, residual)` as `module(x, residual,
    relu=True)`: one op of `fused` for the inputs it covers (statistics per device: no
    `axis_name`), else BatchNorm, the addition and the ReLU in XLA. The variables are
    flax's BatchNorm's either way, made the same way, and the results the same to float32
    rounding (bfloat16 activations: to their rounding)."""

    fused: FusedBatchNormAddRelu | None = None

    @nn.compact
    def __call__(self, x: jax.Array, residual: jax.Array | None = None, *,
                 relu: bool = False) -> jax.Array:
        if residual is not None and not relu:
            raise ValueError('a residual is added only before a ReLU (relu=True)')
        if self._is_fused(x, residual):
            return self._fused_batch_norm_add_relu(x, residual, relu)
        normalise = functools.partial(BatchNorm.__call__, self)
        return norm_relu(normalise, x, residual) if relu else normalise(x)

    def _fused_batch_norm_add_relu(self, x: jax.Array, residual: jax.Array | None,
                                   relu: bool) -> jax.Array:
        scale, bias, ra_mean, ra_var = self._variables(x)
        if self.use_running_average:
            return self.fused.infer(x, ra_mean.value, ra_var.value, scale, bias, residual,
                                    relu=relu, epsilon=self.epsilon)
        y, mean, var = self.fused.train(x, scale, bias, residual, relu=relu,
                                        epsilon=self.epsilon)
        self._update_running_averages(ra_mean, ra_var, mean, var)
        return y

    def _is_fused(self, x: jax.Array, residual: jax.Array | None) -> bool:
        # Asked for its response (sown by BatchNorm), the layer runs unfused: the fused op
        # never forms BN(x) apart from the addition.
        return (self.fused is not None and self.fused.covers(x) and not self._is_ghost(x)
                and not self.is_mutable_collection('intermediates')
                and (residual is None or residual.dtype == x.dtype)
                and self.use_running_average is not None
                and self.axis in (-1, x.ndim - 1) and self.axis_name is None
                and self.use_scale and self.use_bias
                and self.param_dtype == jnp.float32
                # The kernels' output has x's dtype: flax's must be the same.
                and jnp.dtype(self.dtype or jnp.promote_types(x.dtype, self.param_dtype))
                == x.dtype)


def fused_norm_relu(norm: Callable[..., jax.Array], x: jax.Array,
                    residual: jax.Array | None = None) -> jax.Array:
    """`norm_relu` as one op where `norm` is a `FusingBatchNorm`."""
    if isinstance(norm, FusingBatchNorm):
        return norm(x, residual, relu=True)
    return norm_relu(norm, x, residual)


@dataclasses.dataclass(frozen=True)
class Layers:
    """The building blocks of a model: module classes (or partials of them) with the
    signatures of `Conv`, `BatchNorm` and `nn.Dense`, and functions with the signatures of
    `norm_relu` and `nn.max_pool`. The defaults are XLA's ops on every platform."""

    conv: Callable[..., nn.Module] = Conv
    norm: Callable[..., nn.Module] = BatchNorm
    norm_relu: Callable[..., jax.Array] = norm_relu
    dense: Callable[..., nn.Module] = nn.Dense
    max_pool: Callable[..., jax.Array] = nn.max_pool


XLA_LAYERS = Layers()
