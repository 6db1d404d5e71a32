"""The max-pooling kernels (resnet_jax.backend.cpu.kernels.pooling) compute what flax's max_pool and
XLA's gradient of it compute, ties and NaNs included; other poolings go to flax."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rounding import assert_bfloat16_rounding_of

from resnet_jax.backend.cpu.kernels import pooling

STEM_POOL = dict(window_shape=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _both(x, weights, **args):
    """(forward, gradient) of the kernels' and of flax's max pooling."""
    results = []
    for fn in (pooling.max_pool, nn.max_pool):
        pool = jax.jit(lambda x, fn=fn: fn(x, **args))
        grad = jax.jit(jax.grad(lambda x, fn=fn: jnp.sum(fn(x, **args) * weights)))
        results.append((pool(x), grad(x)))
    return results


VALID_2X2 = dict(window_shape=(2, 2), strides=(2, 2), padding=((0, 0), (0, 0)))


@pytest.mark.parametrize('shape, args', [
    ((2, 12, 12, 16), STEM_POOL), ((3, 7, 9, 32), STEM_POOL), ((1, 1, 1, 16), STEM_POOL),
    ((2, 12, 12, 16), VALID_2X2), ((3, 7, 9, 32), VALID_2X2)])
def test_forward_and_gradient_match_flax_with_ties(shape, args):
    # Small integers after a ReLU: most windows hold several equal maxima (zeros and
    # repeats); the gradient must go to the same one as XLA's.
    x = jax.nn.relu(jnp.round(jax.random.normal(jax.random.key(0), shape) * 2))
    side = lambda s: (s + 2 * args['padding'][0][0] - args['window_shape'][0]) // 2 + 1  # noqa: E731
    weights = jax.random.normal(jax.random.key(1), (shape[0], side(shape[1]), side(shape[2]),
                                                    shape[3]))
    assert pooling.covers(x, **args)
    (y, dx), (want_y, want_dx) = _both(x, weights, **args)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dx, want_dx)


def test_bfloat16_maxima_are_exact_and_the_gradient_rounded_once():
    x = jax.nn.relu(jnp.round(jax.random.normal(jax.random.key(0), (2, 12, 12, 16)) * 2))
    x = (x + jax.random.normal(jax.random.key(2), x.shape) / 8).astype(jnp.bfloat16)
    weights = jax.random.normal(jax.random.key(1), (2, 6, 6, 16)).astype(jnp.bfloat16)
    assert pooling.covers(x, **STEM_POOL)
    y = jax.jit(lambda x: pooling.max_pool(x, **STEM_POOL))(x)
    dx = jax.jit(jax.grad(lambda x: jnp.sum(pooling.max_pool(x, **STEM_POOL).astype(
        jnp.float32) * weights.astype(jnp.float32))))(x)
    x32, w32 = x.astype(jnp.float32), weights.astype(jnp.float32)
    want_y = nn.max_pool(x32, **STEM_POOL)
    want_dx = jax.grad(lambda x: jnp.sum(nn.max_pool(x, **STEM_POOL) * w32))(x32)
    assert y.dtype == dx.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y.astype(jnp.float32), want_y)
    # Overlapping 3x3/2 windows: at most 4 output gradients meet at one input.
    assert_bfloat16_rounding_of(dx.astype(jnp.float32), want_dx, terms=4)


def test_nan_is_the_maximum():
    """As in flax's forward pass: a diverged value shows in every window that holds it."""
    x = jnp.zeros((1, 5, 5, 16)).at[0, 1, 1, 5].set(jnp.nan)  # in 2 x 2 windows
    (y, _), (want_y, _) = _both(x, jnp.ones((1, 3, 3, 16)), **STEM_POOL)
    np.testing.assert_array_equal(y, want_y)
    assert int(jnp.isnan(y).sum()) == 4


@pytest.mark.parametrize('change', [dict(dtype=jnp.float16), dict(channels=8),
                                    dict(padding='SAME'), dict(strides=(1, 2)),
                                    dict(padding=((1, 0), (1, 0)))])
def test_what_the_kernels_do_not_cover_goes_to_flax(change):
    channels = change.pop('channels', 16)
    dtype = change.pop('dtype', jnp.float32)
    args = {**STEM_POOL, **change}
    x = jnp.ones((1, 6, 6, channels), dtype)
    assert not pooling.covers(x, **args)
    jaxpr = str(jax.make_jaxpr(lambda x: pooling.max_pool(x, **args))(x))
    assert 'ffi_call' not in jaxpr and 'reduce_window_max' in jaxpr
