"""The direct CPU convolution kernels (resnet_jax.backend.cpu.kernels) compute what lax computes:
forward, input gradient and weight gradient, alone, in a model and in the data-parallel
train step; everything they do not cover goes to lax; the build is cached and its failure
falls back to XLA."""

import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import pytest
from jax import lax
from rounding import assert_equal_up_to_rounding, train_step_terms

from resnet_jax import backend, configs
from resnet_jax.backend.cpu.kernels import batchnorm, conv, native, pooling
from resnet_jax.models import layers
from resnet_jax.training import benchmark

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _lax_and_kernel_vjps(x, kernel, **conv_args):
    """(outputs, input grads, kernel grads) of lax's and the kernels' convolution."""
    results = []
    for fn in (lax.conv_general_dilated, conv.conv_general_dilated):
        y, vjp = jax.vjp(jax.jit(lambda x, k, fn=fn: fn(x, k, **conv_args)), x, kernel)
        dy = jax.random.normal(jax.random.key(2), y.shape)
        results.append((y, *vjp(dy)))
    return results


SLOW = pytest.mark.slow  # the fast tier keeps one case of each kind


@pytest.mark.parametrize('shape, kernel_shape, stride', [
    ((4, 9, 11, 16), (3, 3, 16, 32), 1),    # odd sizes: partly filled column blocks
    pytest.param((3, 7, 7, 32), (5, 5, 32, 16), 1, marks=SLOW),
    pytest.param((5, 8, 8, 64), (3, 3, 64, 64), 1, marks=SLOW),  # two vectors per tile
    pytest.param((2, 6, 13, 16), (1, 1, 16, 48), 1, marks=SLOW),
    ((4, 32, 32, 3), (3, 3, 3, 16), 1),     # the CIFAR stem
    pytest.param((2, 33, 30, 3), (7, 7, 3, 64), 2, marks=SLOW),  # ImageNet stem, odd side
    ((3, 16, 16, 16), (3, 3, 16, 32), 2),   # a stage's first, strided convolution
    pytest.param((3, 15, 9, 32), (3, 3, 32, 64), 2, marks=SLOW),
    pytest.param((2, 12, 12, 5), (3, 3, 5, 16), 3, marks=SLOW),
])
def test_kernels_compute_what_lax_computes(shape, kernel_shape, stride):
    keys = jax.random.split(jax.random.key(0))
    x = jax.random.normal(keys[0], shape)
    kernel = jax.random.normal(keys[1], kernel_shape)
    pad = kernel_shape[0] // 2
    args = dict(window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                dimension_numbers=NHWC)
    assert conv.covers(x, kernel, **args)
    want, got = _lax_and_kernel_vjps(x, kernel, **args)
    height, width, inputs, outputs = kernel_shape
    # The length of each dot product: a window of inputs, a window of output gradients,
    # every output position of every image.
    terms = (height * width * inputs, height * width * outputs,
             want[0].size // outputs)
    for name, w, g, n in zip(('output', 'input grad', 'kernel grad'), want, got, terms,
                             strict=True):
        assert g.shape == w.shape, name
        assert_equal_up_to_rounding(g, w, terms=n, err_msg=name)


@pytest.mark.parametrize('change', [
    dict(dtype=jnp.float16),                            # (bfloat16: test_bfloat16_kernels)
    dict(features=8),                                   # not a multiple of 16 outputs
    dict(padding=((0, 2), (1, 1))),                     # asymmetric
    dict(padding='SAME'),
    dict(rhs_dilation=(2, 2)),
    dict(feature_group_count=2),
    dict(window_strides=(1, 2)),
])
def test_what_the_kernels_do_not_cover_goes_to_lax(change):
    features = change.get('features', 16)
    dtype = change.get('dtype', jnp.float32)
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16), dtype)
    groups = change.get('feature_group_count', 1)
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 16 // groups, features), dtype)
    args = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), dimension_numbers=NHWC)
    args.update({k: v for k, v in change.items() if k not in ('dtype', 'features')})
    assert not conv.covers(x, kernel, **args)
    jaxpr = str(jax.make_jaxpr(lambda x, k: conv.conv_general_dilated(x, k, **args))(x, kernel))
    assert 'ffi_call' not in jaxpr and 'conv_general_dilated' in jaxpr


@pytest.mark.slow
def test_train_step_with_the_kernels_is_the_xla_step(tiny_config):
    """The whole data-parallel step (shard_map over the CPU devices, barriers, BN) with all
    the kernels, with the convolution kernels only and with XLA's ops: the same losses over
    three steps (each after the previous update) and the same evaluation of the updated
    state."""
    results, config = {}, tiny_config(image_size=16)
    terms = train_step_terms(config.batch_size, jax.device_count(), config.image_size)
    for kernels in ('kernels', 'conv', 'xla'):
        config.cpu_kernels = kernels
        built = benchmark.build_steps(config)
        compiled = built.train_compiled.as_text()
        assert ('resnet_conv2d_forward' in compiled) == (kernels in ('kernels', 'conv'))
        assert ('resnet_bn_grad_input' in compiled) == (kernels == 'kernels')
        losses = [float(jax.device_get(built.train(step))['loss']) for step in range(3)]
        results[kernels] = losses, jax.device_get(built.evaluate(0))
    for kernels in ('kernels', 'conv'):
        for step, (got, want) in enumerate(zip(results[kernels][0], results['xla'][0],
                                               strict=True)):
            assert_equal_up_to_rounding(got, want, terms=terms, steps=step + 1)
        for got, want in zip(jax.tree.leaves(results[kernels][1]),
                             jax.tree.leaves(results['xla'][1]), strict=True):
            assert_equal_up_to_rounding(got, want, terms=terms, steps=3)


def test_cpu_kernels_setting_is_validated():
    config = configs.get_base_config()
    config.dataset = 'synthetic'
    config.total_steps = 1
    config.cpu_kernels = 'onednn'
    expected = r"cpu_kernels='onednn': choose one of \('auto', 'kernels', 'conv', 'xla'\)"
    with pytest.raises(configs.ConfigError, match=expected):
        configs.validate_config(config)
    with pytest.raises(ValueError, match=expected):
        backend.layers('onednn', 'gpu')


def test_each_choice_gives_its_layers():
    for xla in (backend.layers('xla', 'cpu'), backend.layers('kernels', 'gpu'),
                backend.layers('auto', 'tpu')):
        assert xla == layers.XLA_LAYERS
    convolutions = backend.layers('conv', 'cpu')
    assert convolutions.conv.keywords == {'conv_general_dilated': conv.conv_general_dilated,
                                          'dot_general': conv.dot_general}
    assert convolutions.norm is layers.BatchNorm
    assert convolutions.norm_relu is layers.norm_relu
    assert convolutions.max_pool is layers.XLA_LAYERS.max_pool
    every = backend.layers('kernels', 'cpu')
    assert every.conv == convolutions.conv
    assert every.norm.keywords == {'fused': batchnorm}
    assert every.max_pool is pooling.max_pool
    assert every.norm_relu is layers.fused_norm_relu


@pytest.mark.parametrize('isa', native.ISAS)
def test_auto_uses_the_kernels_only_where_they_are_tuned(isa, monkeypatch):
    built = []
    monkeypatch.setattr(native, 'load', lambda: built.append(isa) or isa)
    want = backend.layers('kernels', 'cpu') if isa == 'avx512' else layers.XLA_LAYERS
    monkeypatch.setattr(native, 'host_isa', lambda: None)  # known only once built
    built.clear()
    assert backend.layers('auto', 'cpu') == want and built == [isa]
    monkeypatch.setattr(native, 'host_isa', lambda: isa)  # known from the CPU's flags
    built.clear()
    assert backend.layers('auto', 'cpu') == want
    assert built == ([isa] if isa == 'avx512' else [])  # nothing built to go unused


def test_the_library_has_the_tiles_this_cpu_was_expected_to_get():
    """-march=native: AVX-512 tiles on a CPU with AVX-512F, AVX2 tiles on one with AVX2 and
    FMA only, the generic ones elsewhere; x86-64-v3 (an AVX2 CPU) gives the AVX2 tiles."""
    if native.target_arch() == 'x86-64-v3':
        assert native.load() == 'avx2'
    elif native.host_isa() is None:
        pytest.skip('built for another target, or a CPU whose flags are not known')
    else:
        assert native.load() == native.host_isa()


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env})


# A stand-in for the C++ compiler: it answers --version and "compiles" by copying the
# library this session built, so that the rebuild below costs no real compile.
COPYING_COMPILER = """#!/bin/sh
[ "$1" = --version ] && {{ echo copying-compiler 1; exit 0; }}
while [ $# -gt 1 ]; do [ "$1" = -o ] && exec cp {library} "$2"; shift; done
exit 1
"""


def test_processes_starting_together_build_the_kernels_once(tmp_path):
    native.load()
    compiler = tmp_path / 'c++'
    # The copying compiler, slowed down and counting its builds (its links: a build
    # compiles each source, then links them once).
    compiler.write_text(COPYING_COMPILER.format(library=native.library_path()).replace(
        'while', f'case " $* " in *" -c "*|*" --version "*) ;; *) echo built >> '
        f'{tmp_path / "builds"}; sleep 1;; esac\nwhile', 1))
    compiler.chmod(0o755)
    env = {**os.environ, 'CXX': str(compiler),
           'RESNET_JAX_KERNEL_CACHE': str(tmp_path / 'cache')}
    code = 'from resnet_jax.backend.cpu.kernels import native; native.build()'
    started = [subprocess.Popen([sys.executable, '-c', code], env=env, stderr=subprocess.PIPE,
                                text=True) for _ in range(3)]
    for process in started:
        assert process.wait(timeout=300) == 0, process.stderr.read()
    assert (tmp_path / 'builds').read_text().split() == ['built']


def test_build_is_cached_and_a_broken_library_is_rebuilt(tmp_path, monkeypatch):
    native.load()
    compiler = tmp_path / 'c++'
    compiler.write_text(COPYING_COMPILER.format(library=native.library_path()))
    compiler.chmod(0o755)
    monkeypatch.setenv('CXX', str(compiler))
    monkeypatch.setenv('RESNET_JAX_KERNEL_CACHE', str(tmp_path / 'cache'))
    code = ('from resnet_jax.backend.cpu.kernels import native; print(native.load()); '
            'print(native.library_path())')
    first = _run(code)
    assert first.returncode == 0, first.stderr
    isa, library = first.stdout.strip().splitlines()[-2:]
    assert isa in native.ISAS
    built_at = os.stat(library).st_mtime_ns
    time.sleep(0.05)
    again = _run(code)
    assert again.returncode == 0, again.stderr
    assert os.stat(library).st_mtime_ns == built_at  # loaded, not rebuilt

    with open(library, 'wb') as f:  # a truncated file, as a full disk might leave
        f.write(b'\x7fELF')
    rebuilt = _run(code)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert os.path.getsize(library) > 1000
    assert rebuilt.stdout.strip().splitlines()[-2] == isa


def test_a_failing_compile_names_the_command_and_leaves_nothing_behind(tmp_path, monkeypatch):
    compiler = tmp_path / 'c++'
    compiler.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo failing 1; exit 0; }\n'
                        'case " $* " in *pooling.cc*) echo "pooling.cc:1: error: no" >&2; '
                        'exit 1;; esac\nexit 0\n')
    compiler.chmod(0o755)
    monkeypatch.setenv('CXX', str(compiler))
    monkeypatch.setenv('RESNET_JAX_KERNEL_CACHE', str(tmp_path / 'cache'))
    with pytest.raises(native.KernelBuildError, match=r'(?s)pooling\.cc.*pooling\.cc:1: error'):
        native.build()
    assert [p.name for p in (tmp_path / 'cache').iterdir()] == [native.library_path().name
                                                                + '.lock']


def test_without_a_compiler_auto_falls_back_to_xla_with_a_warning(tmp_path):
    code = ('from resnet_jax import backend; from resnet_jax.models import layers; '
            "assert backend.layers('kernels', 'cpu') == layers.XLA_LAYERS")
    result = _run(code, RESNET_JAX_KERNEL_CACHE=str(tmp_path), CXX='/nonexistent/c++')
    assert result.returncode == 0, result.stderr
    assert 'CPU kernels unavailable' in result.stderr
    assert "no working C++ compiler '/nonexistent/c++'" in result.stderr


def test_an_unwritable_cache_falls_back_to_xla_with_a_warning(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    code = ('from resnet_jax import backend; from resnet_jax.models import layers; '
            "assert backend.layers('kernels', 'cpu') == layers.XLA_LAYERS")
    result = _run(code, RESNET_JAX_KERNEL_CACHE=str(blocker / 'cache'))
    assert result.returncode == 0, result.stderr
    assert 'cannot write the kernel cache' in result.stderr
    assert '$RESNET_JAX_KERNEL_CACHE' in result.stderr


def test_library_depends_on_source_and_compiler(monkeypatch, tmp_path):
    path = native.library_path()
    monkeypatch.setenv('RESNET_JAX_KERNEL_CACHE', str(tmp_path))
    assert native.library_path().parent == tmp_path
    assert native.library_path().name == path.name
    monkeypatch.setattr(native, 'FLAGS', (*native.FLAGS, '-DOTHER'))
    assert native.library_path().name != path.name
    monkeypatch.setattr(native, 'FLAGS', native.FLAGS[:-1])
    # Another target than this session's (which may itself be x86-64-v3, as for an AVX2 CPU).
    other = 'native' if native.target_arch() == 'x86-64-v3' else 'x86-64-v3'
    monkeypatch.setenv('RESNET_JAX_KERNEL_MARCH', other)
    assert native.library_path().name != path.name


REPEATED_WEIGHT_GRADS = '''
import sys, pathlib
import jax
from resnet_jax.backend.cpu.kernels import conv, native

if len(sys.argv) > 1:
    native.SOURCES = (pathlib.Path(sys.argv[1]), *native.SOURCES[1:])
x = jax.random.normal(jax.random.key(0), (64, 16, 16, 16))
dy = jax.random.normal(jax.random.key(1), (64, 16, 16, 32))
kernel = jax.random.normal(jax.random.key(2), (3, 3, 16, 32))
grad = jax.jit(lambda x, k: jax.vjp(lambda k: conv.conv2d(x, k, 1), k)[1](dy)[0])
first = grad(x, kernel)
print(all(bool((grad(x, kernel) == first).all()) for _ in range(30)))
'''


@pytest.mark.slow
def test_weight_gradient_repeats_bit_for_bit():
    """The per-thread partial sums are over fixed chunks of images, added in a fixed order:
    a run resumed from a checkpoint must repeat the uninterrupted one exactly."""
    result = _run(REPEATED_WEIGHT_GRADS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == 'True'


@pytest.mark.parametrize('shape, features', [((4, 6, 5, 24), 32), ((2, 3, 3, 3), 16)])
def test_pointwise_weight_gradient_matches_lax(shape, features):
    """1x1 convolutions (matrix products over the channels) take their weight gradient
    from the kernels; values and input gradient are XLA's."""
    x = jax.random.normal(jax.random.key(0), shape)
    kernel = jax.random.normal(jax.random.key(1), (shape[-1], features))
    numbers = (((3,), (0,)), ((), ()))
    y, vjp = jax.vjp(lambda x, k: conv.dot_general(x, k, numbers), x, kernel)
    want_y, want_vjp = jax.vjp(lambda x, k: lax.dot_general(x, k, numbers), x, kernel)
    dy = jax.random.normal(jax.random.key(2), y.shape)
    assert 'ffi_call' in str(jax.make_jaxpr(lambda x, k: jax.vjp(
        lambda k: conv.dot_general(x, k, numbers), k)[1](dy))(x, kernel))
    terms = (shape[-1], features, x.size // shape[-1])  # y, input grad, kernel grad
    for got, want, n in zip((y, *vjp(dy)), (want_y, *want_vjp(dy)), terms, strict=True):
        assert_equal_up_to_rounding(got, want, terms=n)


def test_other_matrix_products_go_to_lax():
    numbers = (((3,), (0,)), ((), ()))
    for x, kernel in ((jnp.ones((2, 3, 3, 8)), jnp.ones((8, 8))),  # 8 outputs
                      (jnp.ones((2, 3, 3, 8), jnp.float16), jnp.ones((8, 16), jnp.float16)),
                      (jnp.ones((6, 8)), jnp.ones((8, 16)))):  # not a feature map
        jaxpr = str(jax.make_jaxpr(lambda x, k: conv.dot_general(
            x, k, numbers if x.ndim == 4 else (((1,), (0,)), ((), ()))))(x, kernel))
        assert 'custom_vjp' not in jaxpr and 'dot_general' in jaxpr
