"""`lax.conv_general_dilated` with the direct CPU kernels of conv2d.cc where they apply.

`conv_general_dilated` has lax's signature, so it is what `nn.Conv(conv_general_dilated=...)`
calls. Convolutions the kernels cover (float32, NHWC/HWIO, an odd square kernel with
padding K//2 on every side, any stride, a multiple of 16 output channels: every kxk
convolution of the ResNets here) run forward and weight gradient in the kernels, and the
input gradient too at stride 1 with a multiple of 16 input channels; the other input
gradients (strided layers, the stem's, which nothing uses) stay with XLA. Every other
convolution goes to lax unchanged.

bfloat16 convolutions (both operands bfloat16) take the same path where the kernels have
bfloat16 tiles this CPU runs (`bfloat16_ready`): products summed in float32 and rounded
once, as XLA's; an odd number of input channels (the stem's 3) is padded with a zero
channel, since the tiles take channels in pairs. The weight gradient is summed in float32
from the bfloat16 operands and rounded to bfloat16, the kernel's dtype.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from resnet_jax.backend.cpu.kernels import native
from resnet_jax.models.layers import output_side

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def bfloat16_ready() -> bool:
    """Whether bfloat16 convolutions run in the kernels here: the library has bfloat16
    tiles and this CPU has their instructions."""
    isa = native.loaded_bf16_isa()
    return bool(isa) and native.cpu_has(isa)


def _call(target: str, shape: Sequence[int], x: jax.Array, y: jax.Array, stride: int,
          dtype: Any = jnp.float32) -> jax.Array:
    (out,) = native.call(target, [shape], x, y, dtype=dtype, stride=np.int64(stride))
    return out


def _forward(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    size, features = kernel.shape[0], kernel.shape[3]
    # The kernels pad size // 2 on each side (the model's convolutions).
    shape = (x.shape[0], output_side(x.shape[1], size, stride, size // 2),
             output_side(x.shape[2], size, stride, size // 2), features)
    if x.dtype == jnp.bfloat16:
        return _call('resnet_conv2d_bf16_forward', shape, x, kernel, stride, jnp.bfloat16)
    return _call('resnet_conv2d_forward', shape, x, kernel, stride)


def _weight_grad(x: jax.Array, dy: jax.Array, shape: Sequence[int], stride: int) -> jax.Array:
    """The kernel's gradient, in the kernel's dtype (x's)."""
    if x.dtype == jnp.bfloat16:
        grad = _call('resnet_conv2d_bf16_weight_grad', shape, x, dy, stride)
        return grad.astype(jnp.bfloat16)
    return _call('resnet_conv2d_weight_grad', shape, x, dy, stride)


def _lax_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    pad = kernel.shape[0] // 2
    return lax.conv_general_dilated(x, kernel, (stride, stride), [(pad, pad)] * 2,
                                    dimension_numbers=_NHWC)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """The convolution of NHWC `x` with HWIO `kernel` (odd size K, padding K//2), in the
    CPU kernels."""
    return _forward(x, kernel, stride)


def _conv2d_fwd(x, kernel, stride):
    return _forward(x, kernel, stride), (x, kernel)


def _conv2d_bwd(stride, residuals, dy):
    x, kernel = residuals
    kernel_grad = _weight_grad(x, dy, kernel.shape, stride)
    if stride == 1 and x.shape[3] % 16 == 0:
        # The same convolution of dy, with the kernel turned by 180 degrees and its input
        # and output channels swapped.
        input_grad = _forward(dy, jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2), 1)
    else:
        _, lax_vjp = jax.vjp(lambda x: _lax_conv(x, kernel, stride), x)
        (input_grad,) = lax_vjp(dy)
    return input_grad, kernel_grad


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def covers(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int], padding: Any,
           lhs_dilation: Sequence[int] | None = None,
           rhs_dilation: Sequence[int] | None = None,
           dimension_numbers: Any = None, feature_group_count: int = 1,
           batch_group_count: int = 1, preferred_element_type: Any = None) -> bool:
    """Whether the kernels compute this convolution (arguments as lax's)."""
    if lhs.ndim != 4 or rhs.ndim != 4:
        return False
    size, size_w, channels, features = rhs.shape
    pad = size // 2
    numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    return (_kernel_dtypes(lhs, rhs, preferred_element_type)
            and numbers == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
            and size == size_w and size % 2 == 1
            and not isinstance(padding, str)
            and [tuple(p) for p in padding] == [(pad, pad)] * 2
            and len(set(window_strides)) == 1 and window_strides[0] >= 1
            and _all_ones(lhs_dilation) and _all_ones(rhs_dilation)
            and feature_group_count == 1 and batch_group_count == 1
            and lhs.shape[3] == channels and features % 16 == 0)


def _kernel_dtypes(lhs: jax.Array, rhs: jax.Array, preferred_element_type: Any) -> bool:
    """float32 operands, or bfloat16 ones where the bfloat16 tiles run."""
    if lhs.dtype != rhs.dtype or preferred_element_type not in (None, lhs.dtype):
        return False
    return lhs.dtype == jnp.float32 or (lhs.dtype == jnp.bfloat16 and bfloat16_ready())


def _all_ones(values: Sequence[int] | None) -> bool:
    return values is None or all(v == 1 for v in values)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
    """`lax.conv_general_dilated`, computed by the CPU kernels where they apply."""
    if covers(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
              dimension_numbers, feature_group_count, batch_group_count,
              preferred_element_type):
        if lhs.dtype == jnp.bfloat16 and lhs.shape[3] % 2:
            lhs = jnp.pad(lhs, ((0, 0), (0, 0), (0, 0), (0, 1)))
            rhs = jnp.pad(rhs, ((0, 0), (0, 0), (0, 1), (0, 0)))
        return conv2d(lhs, rhs, int(window_strides[0]))
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
        feature_group_count, batch_group_count, precision, preferred_element_type)


# ------------------------------------------------------------------ 1x1 convolutions
# A 1x1 convolution is a matrix product over the channels; XLA's matrix products are fast
# for the forward pass and the input gradient, but for the weight gradient, which sums over
# every pixel, XLA:CPU first transposes the activations (one thread, a copy of the whole
# tensor) and then computes it slowly on ResNet-50's large feature maps. The weight
# gradient kernel of conv2d.cc with a 1x1 window computes it directly, without the copy.


# In bfloat16 the products are the kernels' too (XLA:CPU's bfloat16 matrix products are
# slower than its float32 ones): the forward pass and the input gradient as the 1x1
# convolution kernel, which needs an even number of input channels and, for the input
# gradient, a multiple of 16.


def _matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [N, H, W, C] times kernel [C, O] over C."""
    if x.dtype == jnp.bfloat16 and kernel.shape[1] % 16 == 0:
        return _forward(x, kernel[None, None], 1)
    return lax.dot_general(x, kernel, (((3,), (0,)), ((), ())))


@jax.custom_vjp
def pointwise(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x [N, H, W, C] times kernel [C, O] over C: a 1x1 convolution (stride 1)."""
    return _matmul(x, kernel)


def _pointwise_fwd(x, kernel):
    return pointwise(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, dy):
    x, kernel = residuals
    input_grad = _matmul(dy, kernel.T)
    kernel_grad = _weight_grad(x, dy, (1, 1, *kernel.shape), 1)
    return input_grad, kernel_grad[0, 0]


pointwise.defvjp(_pointwise_fwd, _pointwise_bwd)


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, *,
                out_sharding=None):
    """`lax.dot_general`; 1x1 convolutions ([N, H, W, C] by [C, O], O a multiple of 16) get
    their weight gradient from the CPU kernels, and in bfloat16 (an even C) their products
    too."""
    if (lhs.ndim == 4 and rhs.ndim == 2 and _kernel_dtypes(lhs, rhs, preferred_element_type)
            and (lhs.dtype == jnp.float32 or lhs.shape[3] % 2 == 0)
            and tuple(map(tuple, dimension_numbers[0])) == ((3,), (0,))
            and not any(dimension_numbers[1]) and rhs.shape[1] % 16 == 0
            and out_sharding is None):
        return pointwise(lhs, rhs)
    return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type,
                           out_sharding=out_sharding)
