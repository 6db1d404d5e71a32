"""The BatchNorm kernels (resnet_jax.backend.cpu.kernels.batchnorm) and the BatchNorm module
that uses them compute what flax's BatchNorm followed by the residual addition and ReLU computes:
outputs, statistics, running averages and every gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from rounding import assert_bfloat16_rounding_of, assert_equal_up_to_rounding

from resnet_jax.backend.cpu import kernel_layers
from resnet_jax.backend.cpu.kernels import batchnorm, native
from resnet_jax.models.layers import XLA_LAYERS, FusingBatchNorm

EPS = 1e-5


def _reference(x, scale, bias, residual, relu):
    """flax's BatchNorm (training mode), then + residual, then ReLU; and its statistics."""
    bn = nn.BatchNorm(use_running_average=False, epsilon=EPS)
    variables = {'params': {'scale': scale, 'bias': bias},
                 'batch_stats': {'mean': jnp.zeros_like(scale), 'var': jnp.ones_like(scale)}}
    y, updates = bn.apply(variables, x, mutable=['batch_stats'])
    if residual is not None:
        y = y + residual
    # The running averages start at (0, 1) with momentum 0.99: recover the batch statistics.
    stats = updates['batch_stats']
    mean, var = stats['mean'] / 0.01, (stats['var'] - 0.99) / 0.01
    return (jax.nn.relu(y) if relu else y), mean, var


def _inputs(shape, offset=1.5):
    keys = jax.random.split(jax.random.key(0), 5)
    x = 3 * jax.random.normal(keys[0], shape) + offset
    channels = shape[-1]
    return (x, jax.random.normal(keys[1], (channels,)), jax.random.normal(keys[2], (channels,)),
            jax.random.normal(keys[3], shape), jax.random.normal(keys[4], shape))


@pytest.mark.parametrize('relu', [True, False])
@pytest.mark.parametrize('with_residual', [True, False])
@pytest.mark.parametrize('shape', [(8, 6, 5, 32),  # the fast tier's case; more in the slow one
                                   pytest.param((3, 7, 7, 16), marks=pytest.mark.slow),
                                   pytest.param((2, 4, 4, 64), marks=pytest.mark.slow)])
def test_training_forward_and_gradients_match_flax(shape, with_residual, relu):
    x, scale, bias, residual, weights = _inputs(shape)
    residual = residual if with_residual else None

    def loss(fn, x, scale, bias, residual):
        y, mean, var = fn(x, scale, bias, residual)
        return jnp.sum(y * weights), (y, mean, var)

    kernels = lambda *a: batchnorm.train(*a, relu=relu, epsilon=EPS)  # noqa: E731
    reference = lambda *a: _reference(*a, relu)  # noqa: E731
    argnums = (0, 1, 2, 3) if with_residual else (0, 1, 2)
    got_grads, got = jax.jit(jax.grad(lambda *a: loss(kernels, *a), argnums, has_aux=True))(
        x, scale, bias, residual)
    want_grads, want = jax.jit(jax.grad(lambda *a: loss(reference, *a), argnums,
                                        has_aux=True))(x, scale, bias, residual)
    assert any('ffi_call' in str(eqn) for eqn in jax.make_jaxpr(kernels)(
        x, scale, bias, residual).eqns)
    # Sums over N*H*W, two in sequence: the mean, then the variance about it (and for the
    # input gradient, the sums of dy and of dy * x_hat).
    terms = x.size // x.shape[-1]
    for g, w in zip((*got, *got_grads), (*want, *want_grads), strict=True):
        assert_equal_up_to_rounding(g, w, terms=terms, steps=2)


@pytest.mark.parametrize('relu', [True, False])
@pytest.mark.parametrize('with_residual', [True, False])
def test_inference_forward_and_gradients_match_xla(with_residual, relu):
    x, scale, bias, residual, weights = _inputs((4, 5, 5, 32))
    residual = residual if with_residual else None
    mean, var = jnp.mean(x, (0, 1, 2)) + 0.1, jnp.var(x, (0, 1, 2)) * 1.2

    def reference(x, scale, bias, residual):
        y = (x - mean) * (scale * jax.lax.rsqrt(var + EPS)) + bias
        y = y if residual is None else y + residual
        return jax.nn.relu(y) if relu else y

    def kernels(x, scale, bias, residual):
        return batchnorm.infer(x, mean, var, scale, bias, residual, relu=relu, epsilon=EPS)

    argnums = (0, 1, 2, 3) if with_residual else (0, 1, 2)
    # Elementwise: a few roundings per output (normalise, scale, shift, add); the
    # gradients of scale and bias sum over N*H*W.
    assert_equal_up_to_rounding(kernels(x, scale, bias, residual),
                                reference(x, scale, bias, residual), terms=4)
    got = jax.grad(lambda *a: jnp.sum(kernels(*a) * weights), argnums)(x, scale, bias, residual)
    want = jax.grad(lambda *a: jnp.sum(reference(*a) * weights), argnums)(
        x, scale, bias, residual)
    for g, w in zip(got, want, strict=True):
        assert_equal_up_to_rounding(g, w, terms=x.size // x.shape[-1])


def test_statistics_are_exact_far_from_zero():
    """The sums are of values centred near the mean: the variance of data with a large mean
    keeps its digits (E[x^2] - E[x]^2 in float32 would lose them all at this offset)."""
    x, scale, bias, _, _ = _inputs((16, 8, 8, 16), offset=3000.0)
    _, mean, var = batchnorm.train(x, scale, bias, relu=False, epsilon=EPS)
    x64 = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    n = len(x64)
    # The mean is the first row plus the mean of x - first row: a sum of those n
    # differences and one more rounding of |mean| (scale |mean| / n with n terms).
    deviations = np.abs(x64 - x64[0]).mean(0) + np.abs(x64.mean(0)) / n
    assert_equal_up_to_rounding(mean, x64.mean(0), terms=n, scale=deviations)
    # The variance: a sum of n squares about the mean, so sum|terms| / n is the variance
    # itself (naive E[x^2] - E[x]^2 would be off by about u * 3000**2 = 0.5, 5% of it).
    assert_equal_up_to_rounding(var, x64.var(0), terms=n, scale=x64.var(0))


def test_nan_propagates_through_the_relu():
    """A diverged activation must stay NaN (as jax.nn.relu keeps it), not turn into zeros
    that hide the divergence from the non-finite-loss check."""
    x, scale, bias, _, _ = _inputs((2, 4, 4, 16))
    y, _, _ = batchnorm.train(x.at[0, 0, 0, 3].set(jnp.nan), scale, bias, relu=True,
                              epsilon=EPS)
    assert bool(jnp.isnan(y[..., 3]).all())
    assert bool(jnp.isfinite(y[..., 4]).all())


def test_results_repeat_bit_for_bit():
    x, scale, bias, residual, weights = _inputs((32, 16, 16, 32))
    grad = jax.jit(jax.grad(lambda x, s: jnp.sum(
        batchnorm.train(x, s, bias, residual, relu=True, epsilon=EPS)[0] * weights), (0, 1)))
    first = grad(x, scale)
    for _ in range(10):
        again = grad(x, scale)
        assert all(bool((a == b).all()) for a, b in zip(again, first, strict=True))


def test_kernels_reject_what_they_do_not_cover():
    with pytest.raises(Exception, match='C a multiple of 16'):
        jax.block_until_ready(native.call('resnet_bn_stats', [(2, 8)], jnp.ones((4, 8))))
    assert not batchnorm.covers(jnp.ones((4, 8)))
    assert not batchnorm.covers(jnp.ones((4, 16), jnp.float16))


def _module_results(kernels, x, residual, train, **fields):
    module = FusingBatchNorm(use_running_average=not train, momentum=0.9, epsilon=EPS,
                              fused=batchnorm if kernels else None, **fields)
    variables = module.init(jax.random.key(0), x, residual, relu=True)
    # Non-trivial parameters and running averages.
    variables = jax.tree.map(lambda v: v + 0.1 * jnp.arange(v.shape[0]), variables)
    return variables, module.apply(variables, x, residual, relu=True, mutable=['batch_stats'])


@pytest.mark.parametrize('train', [True, False])
def test_module_with_kernels_is_flax_batch_norm(train):
    x, _, _, residual, _ = _inputs((4, 6, 6, 32))
    variables, (y, updates) = _module_results(True, x, residual, train)
    flax_variables, (want_y, want_updates) = _module_results(False, x, residual, train)
    assert jax.tree.structure(variables) == jax.tree.structure(flax_variables)
    terms = x.size // x.shape[-1]  # the statistics' sums over N*H*W, two in sequence
    for got, want in zip(jax.tree.leaves((variables, y, updates)),
                         jax.tree.leaves((flax_variables, want_y, want_updates)), strict=True):
        assert_equal_up_to_rounding(got, want, terms=terms, steps=2)


@pytest.mark.parametrize('change', [dict(dtype=jnp.bfloat16), dict(channels=8),
                                    dict(axis_name='data')])
def test_module_falls_back_to_flax_where_kernels_do_not_apply(change):
    channels = change.pop('channels', 16)
    module = FusingBatchNorm(use_running_average=True, fused=batchnorm, **change)
    x = jnp.ones((2, 3, 3, channels))
    variables = module.init(jax.random.key(0), x, relu=True)
    jaxpr = str(jax.make_jaxpr(lambda v, x: module.apply(v, x, relu=True))(variables, x))
    assert 'ffi_call' not in jaxpr


@pytest.mark.parametrize('train', [True, False])
def test_the_cpu_layers_compute_a_blocks_norm_relu_as_one_kernel(train):
    # A block writes relu(BN(y) + shortcut) as layers.norm_relu(bn, y, shortcut): the XLA
    # layers compute exactly those three lines, the CPU kernels' layers one fused call.
    x, _, _, residual, _ = _inputs((4, 6, 6, 32))

    def results(layers):
        class End(nn.Module):
            @nn.compact
            def __call__(self, y, shortcut):
                return layers.norm_relu(layers.norm(use_running_average=not train), y,
                                        shortcut)
        module = End()
        variables = module.init(jax.random.key(0), x, residual)
        apply = lambda v, y, s: module.apply(v, y, s, mutable=['batch_stats'])[0]  # noqa: E731
        return apply(variables, x, residual), str(jax.make_jaxpr(apply)(variables, x, residual))

    fused, fused_jaxpr = results(kernel_layers.layers('kernels'))
    reference, reference_jaxpr = results(XLA_LAYERS)
    assert 'ffi_call' in fused_jaxpr and 'ffi_call' not in reference_jaxpr
    assert ' max ' not in fused_jaxpr and ' max ' in reference_jaxpr  # the ReLU: in the kernel
    assert_equal_up_to_rounding(fused, reference, terms=x.size // x.shape[-1], steps=2)


def _bfloat16_normal(key, shape):
    return jax.random.normal(jax.random.key(key), shape).astype(jnp.bfloat16)


@pytest.mark.parametrize('relu, with_residual', [(True, True), (True, False), (False, False)])
def test_bfloat16_batch_norm_is_float32_rounded_once(relu, with_residual):
    shape = (4, 6, 5, 32)
    x = (3 * _bfloat16_normal(3, shape).astype(jnp.float32) + 1.5).astype(jnp.bfloat16)
    scale = jax.random.uniform(jax.random.key(4), (32,), minval=0.5, maxval=1.5)
    bias = jax.random.normal(jax.random.key(5), (32,))
    residual = _bfloat16_normal(6, shape) if with_residual else None
    weights = _bfloat16_normal(7, shape)

    def reference(x, scale, bias, residual):
        x = x.astype(jnp.float32)
        mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
        y = (x - mean) * lax.rsqrt(var + 1e-5) * scale + bias
        y = y if residual is None else y + residual.astype(jnp.float32)
        return (jax.nn.relu(y) if relu else y), mean, var

    def kernels(x, scale, bias, residual):
        return batchnorm.train(x, scale, bias, residual, relu=relu, epsilon=1e-5)

    def loss(fn, *args):
        y, mean, var = fn(*args)
        return jnp.sum(y.astype(jnp.float32) * weights.astype(jnp.float32)), (y, mean, var)

    argnums = (0, 1, 2, 3) if with_residual else (0, 1, 2)
    got_grads, got = jax.jit(jax.grad(lambda *a: loss(kernels, *a), argnums, has_aux=True))(
        x, scale, bias, residual)
    want_grads, want = jax.grad(lambda *a: loss(reference, *a), argnums, has_aux=True)(
        x, scale, bias, residual)
    assert got[0].dtype == got_grads[0].dtype == jnp.bfloat16
    terms = x.size // x.shape[-1]  # sums over N*H*W, two in sequence
    for g, w in zip((*got, *got_grads), (*want, *want_grads), strict=True):
        assert_bfloat16_rounding_of(g.astype(jnp.float32), w.astype(jnp.float32),
                                    terms=2 * terms)
