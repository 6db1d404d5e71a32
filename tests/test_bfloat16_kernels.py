"""bfloat16 on the CPU: the kernels' bfloat16 convolutions compute, to one bfloat16
rounding, what float32 computes from the same bfloat16 values; a run asking for bfloat16
computes in it only where those kernels run, and in float32 elsewhere, saying so. (The
bfloat16 BatchNorm and pooling kernels, plain vector code on any CPU, are tested with the
float32 ones.)

The convolution tests run where this CPU has the bfloat16 instructions the library was
built with (AVX512-BF16; AMX as well, where it has them, each path on its own) and are
skipped, with the reason, elsewhere."""

import logging

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from rounding import assert_bfloat16_rounding_of

from resnet_jax import backend
from resnet_jax.backend.cpu import kernel_layers
from resnet_jax.backend.cpu.kernels import conv, native
from resnet_jax.training import benchmark

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _bfloat16_ready() -> bool:
    try:
        native.load()
    except native.KernelBuildError:
        return False
    return conv.bfloat16_ready()


needs_bf16_tiles = pytest.mark.skipif(
    not _bfloat16_ready(),
    reason='the kernels were built without bfloat16 tiles: this CPU lacks the instructions '
           f'they use ({", ".join(native.BF16_ISAS)}), or $RESNET_JAX_KERNEL_MARCH names a '
           'target without them')


def _has_amx() -> bool:
    return _bfloat16_ready() and native.loaded_bf16_isa() == 'amx_bf16'


@pytest.fixture(params=['amx', 'vdpbf16ps'])
def bf16_path(request):
    """Each of the library's bfloat16 paths this CPU has: AMX tiles (where the shape fits
    them) and vdpbf16ps alone."""
    if request.param == 'amx' and not _has_amx():
        pytest.skip('the kernels have no AMX tiles here: this CPU lacks amx_bf16 and '
                    'amx_tile, or the OS refused the tile state')
    native.use_amx(request.param == 'amx')
    yield request.param
    native.use_amx(True)


def _normal(key, shape):
    return jax.random.normal(jax.random.key(key), shape).astype(jnp.bfloat16)


@needs_bf16_tiles
@pytest.mark.parametrize('shape, kernel_shape, stride', [
    ((5, 9, 11, 16), (3, 3, 16, 32), 1),    # partly filled column blocks; an odd batch
    pytest.param((2, 8, 8, 64), (3, 3, 64, 64), 1,  # several channel pairs, output vectors
                 marks=pytest.mark.slow),
    ((4, 16, 16, 3), (3, 3, 3, 16), 1),     # the CIFAR stem: 3 channels, padded to 4
    ((3, 15, 9, 32), (3, 3, 32, 64), 2),    # strided: the input gradient is XLA's
    pytest.param((2, 6, 13, 16), (1, 1, 16, 48), 1, marks=pytest.mark.slow),
    # Rows wider than two AMX tiles, the last partly filled; 48 channels (AMX takes 32 at a
    # time forward: vdpbf16ps there; 16 in the weight gradient); 16 outputs.
    ((3, 5, 37, 48), (3, 3, 48, 16), 1),
    # Batches of small maps: AMX takes groups of whole images per task (here 3, 3, 3, 1),
    # 1x1 ones reading their inputs in place.
    ((10, 4, 5, 32), (3, 3, 32, 32), 1),
    ((10, 3, 5, 32), (1, 1, 32, 32), 1),
])
def test_bfloat16_convolution_is_float32_rounded_once(shape, kernel_shape, stride, bf16_path):
    x, kernel = _normal(0, shape), _normal(1, kernel_shape)
    pad = kernel_shape[0] // 2
    args = dict(window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                dimension_numbers=NHWC)
    assert conv.covers(x, kernel, **args)

    def in_float32(x, k):  # the same bfloat16 values, summed in float32 and not rounded
        return lax.conv_general_dilated(x.astype(jnp.float32), k.astype(jnp.float32), **args)

    got, got_vjp = jax.vjp(jax.jit(lambda x, k: conv.conv_general_dilated(x, k, **args)),
                           x, kernel)
    want, want_vjp = jax.vjp(in_float32, x, kernel)
    assert got.dtype == jnp.bfloat16
    assert 'resnet_conv2d_bf16_forward' in jax.jit(
        lambda x, k: conv.conv_general_dilated(x, k, **args)).lower(x, kernel).as_text()
    dy = _normal(2, got.shape)
    got_grads = got_vjp(dy)
    want_grads = want_vjp(dy.astype(jnp.float32))
    height, width, inputs, outputs = kernel_shape
    terms = (height * width * inputs, height * width * outputs, got.size // outputs)
    for name, g, w, n in zip(('output', 'input grad', 'kernel grad'), (got, *got_grads),
                             (want, *want_grads), terms, strict=True):
        assert g.dtype == jnp.bfloat16, name
        assert_bfloat16_rounding_of(g.astype(jnp.float32), w.astype(jnp.float32), terms=n,
                                    err_msg=name)


@pytest.mark.slow
@needs_bf16_tiles
def test_a_bfloat16_train_step_runs_in_the_bfloat16_kernels_and_learns():
    losses = {}
    for dtype in ('float32', 'bfloat16'):
        config = benchmark.load_config('experiments/cifar10.py:resnet20', 32, dtype)
        config.cpu_kernels = 'kernels'
        config.schedule.warmup = 0
        built = benchmark.build_steps(config)
        if dtype == 'bfloat16':
            compiled = built.train_compiled.as_text()
            for target in ('resnet_conv2d_bf16_forward', 'resnet_conv2d_bf16_weight_grad',
                           'resnet_bn_apply_add_bf16', 'resnet_bn_grad_input_bf16'):
                assert target in compiled, target
        # The same 32 images (differently augmented) again and again.
        losses[dtype] = [float(jax.device_get(built.train(0))['loss']) for _ in range(4)]
    first, bf16 = losses['float32'][0], losses['bfloat16']
    # The same network and images: the first loss agrees to bfloat16's few digits over
    # 20 layers, and training lowers it.
    assert abs(bf16[0] - first) < 0.05 * first, losses
    assert min(bf16[1:]) < 0.85 * bf16[0], losses


def test_bfloat16_where_the_kernels_have_no_bfloat16_tiles_is_float32(monkeypatch, caplog):
    monkeypatch.setattr(native, 'cpu_has', lambda isa: False)  # a CPU without them
    monkeypatch.setattr(native, 'host_bf16_isa', lambda: '')
    kernel_layers._warn_float32.cache_clear()
    x = jnp.ones((1, 4, 4, 16), jnp.bfloat16)
    assert not conv.covers(x, jnp.ones((3, 3, 16, 16), jnp.bfloat16), (1, 1), ((1, 1), (1, 1)),
                           dimension_numbers=NHWC)
    with caplog.at_level(logging.WARNING):
        for choice in ('kernels', 'auto', 'kernels'):
            assert backend.compute_dtype('bfloat16', choice, 'cpu') == jnp.float32
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # once per reason
    assert all('dtype=bfloat16 computes in float32 on this CPU' in w for w in warnings)


def test_bfloat16_is_kept_off_the_cpu_and_with_the_tuned_tiles(monkeypatch):
    assert backend.compute_dtype('bfloat16', 'xla', 'gpu') == jnp.bfloat16
    assert backend.compute_dtype('float32', 'auto', 'cpu') == jnp.float32
    assert backend.compute_dtype('bfloat16', 'xla', 'cpu') == jnp.float32
    ready = _bfloat16_ready()
    want = jnp.bfloat16 if ready else jnp.float32
    monkeypatch.setattr(conv, 'bfloat16_ready', lambda: ready)

    def on(vendor, isa, loaded=None):  # a CPU of this vendor, its library using `loaded`
        monkeypatch.setattr(native, 'cpu_vendor', lambda: vendor)
        monkeypatch.setattr(native, 'host_bf16_isa', lambda: isa)
        monkeypatch.setattr(native, 'loaded_bf16_isa', lambda: loaded or isa)
        return backend.compute_dtype('bfloat16', 'auto', 'cpu')

    assert on('AuthenticAMD', 'avx512_bf16') == want
    assert on('GenuineIntel', 'amx_bf16') == want
    assert on('GenuineIntel', 'avx512_bf16') == jnp.float32  # slower than float32 there
    # An AMX CPU whose OS refused the tile state: vdpbf16ps alone, float32 instead.
    assert on('GenuineIntel', 'amx_bf16', loaded='avx512_bf16') == jnp.float32


@needs_bf16_tiles
@pytest.mark.parametrize('channels, features', [
    (64, 256), pytest.param(256, 64, marks=pytest.mark.slow), (6, 16)])
def test_bfloat16_1x1_convolution_is_float32_rounded_once(channels, features, bf16_path):
    x, kernel = _normal(8, (2, 7, 9, channels)), _normal(9, (channels, features))
    numbers = (((3,), (0,)), ((), ()))
    got, got_vjp = jax.vjp(jax.jit(lambda x, k: conv.dot_general(x, k, numbers)), x, kernel)
    want, want_vjp = jax.vjp(lambda x, k: lax.dot_general(
        x.astype(jnp.float32), k.astype(jnp.float32), numbers), x, kernel)
    text = jax.jit(jax.vjp(lambda x, k: conv.dot_general(x, k, numbers), x, kernel)[1]).lower(
        got).as_text()
    assert 'resnet_conv2d_bf16_weight_grad' in text
    dy = _normal(10, got.shape)
    terms = (channels, features, got.size // features)
    for name, g, w, n in zip(('output', 'input grad', 'kernel grad'), (got, *got_vjp(dy)),
                             (want, *want_vjp(dy.astype(jnp.float32))), terms, strict=True):
        assert g.dtype == jnp.bfloat16, name
        assert_bfloat16_rounding_of(g.astype(jnp.float32), w.astype(jnp.float32), terms=n,
                                    err_msg=name)
