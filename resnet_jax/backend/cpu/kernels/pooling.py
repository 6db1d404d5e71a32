"""`flax.linen.max_pool` with the CPU kernels of pooling.cc where they apply.

`max_pool` has flax's signature. Square windows with a square stride and the same padding
on every side, over float32 or bfloat16 NHWC activations with a multiple of 16 channels
(the ImageNet ResNets' 3x3/2 pooling after the stem) run forward and backward in the
kernels; anything else goes to flax's. The gradient goes to the first maximum of each
window in row-major order, as XLA's does.
"""

from collections.abc import Sequence
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.backend.cpu.kernels import native
from resnet_jax.models.layers import output_side


@partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    n, h, w, c = x.shape
    shape = (n, output_side(h, window, stride, padding),
             output_side(w, window, stride, padding), c)
    (y,) = native.call(native.for_dtype('resnet_max_pool_forward', x.dtype), [shape], x,
                       dtype=x.dtype, window=np.int64(window),
                       stride=np.int64(stride), padding=np.int64(padding))
    return y


def _max_pool_fwd(x, window, stride, padding):
    return _max_pool(x, window, stride, padding), x


def _max_pool_bwd(window, stride, padding, x, dy):
    (dx,) = native.call(native.for_dtype('resnet_max_pool_backward', x.dtype), [x.shape], x, dy,
                        dtype=x.dtype, window=np.int64(window),
                        stride=np.int64(stride), padding=np.int64(padding))
    return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def _square(pair: Sequence[Any]) -> bool:
    return len(pair) == 2 and pair[0] == pair[1]


def covers(x: jax.Array, window_shape: Sequence[int], strides: Sequence[int] | None,
           padding: Any) -> bool:
    """Whether the kernels compute this pooling (arguments as flax's)."""
    strides = strides or (1, 1)
    if isinstance(padding, str) or not (_square(window_shape) and _square(strides)):
        return False
    pads = [tuple(p) for p in padding]
    return (x.ndim == 4 and x.dtype in (jnp.float32, jnp.bfloat16) and x.shape[3] % 16 == 0
            and len(pads) == 2 and len(set(pads)) == 1 and pads[0][0] == pads[0][1]
            and 0 <= pads[0][0] < window_shape[0]
            and min(output_side(side, window_shape[0], strides[0], pads[0][0])
                    for side in x.shape[1:3]) >= 1)


def max_pool(inputs: jax.Array, window_shape: Sequence[int],
             strides: Sequence[int] | None = None, padding: Any = 'VALID') -> jax.Array:
    """`flax.linen.max_pool`, computed by the CPU kernels where they apply."""
    if covers(inputs, window_shape, strides, padding):
        stride = strides[0] if strides else 1
        return _max_pool(inputs, int(window_shape[0]), int(stride), int(padding[0][0]))
    return nn.max_pool(inputs, window_shape, strides=strides, padding=padding)
