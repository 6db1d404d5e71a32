"""BatchNorm with the residual addition and ReLU after it, in the CPU kernels of batchnorm.cc.

    y = act(BN(x) + residual)      act: ReLU or identity; the residual is optional

`train` normalises with the batch's statistics (and returns them for the running
averages), `infer` with given ones. Both are differentiable (custom VJPs whose backward
passes are kernels too) and match `flax.linen.BatchNorm` (biased variance, epsilon inside
the square root) to float32 rounding. They take float32 or bfloat16 [..., C] activations
with C a multiple of 16 (`covers`; bfloat16 ones are computed in float32 and every output
activation rounded once, as flax's BatchNorm with dtype=bfloat16 computes); per-channel
vectors are float32 [C].
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from resnet_jax.backend.cpu.kernels import native


def covers(x: jax.Array) -> bool:
    """Whether the kernels take activations like `x`."""
    return x.dtype in (jnp.float32, jnp.bfloat16) and x.ndim >= 2 and x.shape[-1] % 16 == 0


def _activations(target: str, count: int, x: jax.Array, *args: jax.Array,
                 **attributes) -> list[jax.Array]:
    """The kernel `target` for x's dtype, with `count` results of x's shape and dtype."""
    return native.call(native.for_dtype(target, x.dtype), [x.shape] * count, x, *args,
                       dtype=x.dtype, **attributes)


def _sums(target: str, rows: int, x: jax.Array, *args: jax.Array, **attributes) -> jax.Array:
    """The kernel `target` for x's dtype, with one float32 result of `rows` per-channel rows."""
    (sums,) = native.call(native.for_dtype(target, x.dtype), [(rows, x.shape[-1])], x, *args,
                          **attributes)
    return sums


def train(x: jax.Array, scale: jax.Array, bias: jax.Array, residual: jax.Array | None = None,
          *, relu: bool, epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(y, mean, var): BN with the statistics of `x` over all but its last axis.

    mean and var (biased) are for the running averages and carry no gradient.
    """
    extra = () if residual is None else (residual,)
    y, mean, var = _train(x, scale, bias, extra, relu, epsilon)
    return y, lax.stop_gradient(mean), lax.stop_gradient(var)


def infer(x: jax.Array, mean: jax.Array, var: jax.Array, scale: jax.Array, bias: jax.Array,
          residual: jax.Array | None = None, *, relu: bool, epsilon: float) -> jax.Array:
    """BN with given statistics (the running averages at evaluation)."""
    a = scale * lax.rsqrt(var + epsilon)
    extra = () if residual is None else (residual,)
    return _scale_shift(x, a, bias - mean * a, extra, relu)


def _apply(x, a, b, extra, relu):
    """act(x * a + b [+ residual]) for `extra` = () or (residual,)."""
    target = 'resnet_bn_apply_add' if extra else 'resnet_bn_apply'
    (y,) = _activations(target, 1, x, jnp.stack([a, b]), *extra, relu=relu)
    return y


def _rows(x):
    return x.size // x.shape[-1]


# ------------------------------------------------------------------ with batch statistics
# `extra` is () or (residual,): a pytree, so that the backward pass knows which it was.


@partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _train(x, scale, bias, extra, relu, epsilon):
    return _train_fwd(x, scale, bias, extra, relu, epsilon)[0]


def _train_fwd(x, scale, bias, extra, relu, epsilon):
    stats = _sums('resnet_bn_stats', 2, x)
    mean, var = stats[0], stats[1]
    inv_std = lax.rsqrt(var + epsilon)
    a = scale * inv_std
    y = _apply(x, a, bias - mean * a, extra, relu)
    # Without the ReLU the backward pass needs no mask, and y need not be kept.
    kept = (x, y if relu else None, mean, inv_std, scale, tuple(None for _ in extra))
    return (y, mean, var), kept


def _train_bwd(relu, epsilon, kept, cotangents):
    x, y, mean, inv_std, scale, extra = kept
    dy = cotangents[0]  # mean and var are stop_gradient'ed by `train`
    mask_from = y if relu else dy  # not read without the ReLU
    sums = _sums('resnet_bn_grad_stats', 2, dy, mask_from, x, mean, relu=relu)
    bias_grad, scale_grad = sums[0], sums[1] * inv_std
    # dx = a * (dz - mean(dz) - x_hat * mean(dz * x_hat)), a = scale / std, as p, q, s.
    p = scale * inv_std
    q = -p * inv_std * scale_grad / _rows(x)
    s = -p * bias_grad / _rows(x)
    coef = jnp.stack([p, q, s, mean])
    if extra and relu:
        dx, dz = _activations('resnet_bn_grad_input_dz', 2, dy, mask_from, x, coef, relu=True)
        return dx, scale_grad, bias_grad, (dz,)
    (dx,) = _activations('resnet_bn_grad_input', 1, dy, mask_from, x, coef, relu=relu)
    return dx, scale_grad, bias_grad, tuple(dy for _ in extra)


_train.defvjp(_train_fwd, _train_bwd)


# ------------------------------------------------------------------ with given statistics


@partial(jax.custom_vjp, nondiff_argnums=(4,))
def _scale_shift(x, a, b, extra, relu):
    return _apply(x, a, b, extra, relu)


def _scale_shift_fwd(x, a, b, extra, relu):
    y = _apply(x, a, b, extra, relu)
    return y, (x, y, a, tuple(None for _ in extra))


def _scale_shift_bwd(relu, kept, dy):
    # Gradients through evaluation-mode BN are rare (analysis, not training): plain XLA.
    x, y, a, extra = kept
    dz = jnp.where(y > 0, dy, 0) if relu else dy
    axes = tuple(range(x.ndim - 1))
    return dz * a, jnp.sum(dz * x, axes), jnp.sum(dz, axes), tuple(dz for _ in extra)


_scale_shift.defvjp(_scale_shift_fwd, _scale_shift_bwd)
