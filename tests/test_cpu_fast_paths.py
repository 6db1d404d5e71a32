"""The CPU speed-ups change no result: 1x1 convolutions as matrix products, and the
optimization barriers around convolutions in the CPU train step
(resnet_jax.backend.cpu.compiler)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rounding import (
    BFLOAT16_ROUNDOFF,
    FLOAT32_ROUNDOFF,
    assert_equal_up_to_rounding,
    train_step_terms,
)

from resnet_jax import models, parallel
from resnet_jax.backend.cpu import compiler
from resnet_jax.models import layers
from resnet_jax.training import benchmark

PROJECTIONS = {'model.shortcut': 'B'}  # strided 1x1 projections: 1x1 layers.Conv in the step


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_pointwise_conv_is_the_1x1_conv(stride, dtype):
    kwargs = dict(features=6, kernel_size=(1, 1), strides=(stride, stride),
                  padding=((0, 0), (0, 0)), use_bias=False, dtype=dtype,
                  kernel_init=models.he_normal)
    conv, pointwise = nn.Conv(**kwargs), layers.Conv(**kwargs)
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
    variables = conv.init(jax.random.key(1), x)
    same_init = pointwise.init(jax.random.key(1), x)
    np.testing.assert_array_equal(variables['params']['kernel'], same_init['params']['kernel'])

    def loss(module, variables, x):
        return jnp.sum(jnp.sin(module.apply(variables, x).astype(jnp.float32)))

    want, want_grads = jax.value_and_grad(loss, argnums=(1, 2))(conv, variables, x)
    got, got_grads = jax.value_and_grad(loss, argnums=(1, 2))(pointwise, variables, x)
    outputs = conv.apply(variables, x).astype(jnp.float32)
    if dtype == jnp.float32:  # the loss sums every output; 1x1 dot products are shorter
        rounding = dict(terms=outputs.size, roundoff=FLOAT32_ROUNDOFF)
    else:  # both sum in float32 and round each output once to bfloat16, which dominates
        rounding = dict(terms=1, roundoff=BFLOAT16_ROUNDOFF)
    # |sin(a) - sin(b)| <= |a - b|: the loss is within the outputs' rounding of their sum.
    assert_equal_up_to_rounding(got, want, scale=float(jnp.sum(jnp.abs(outputs))), **rounding)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        assert_equal_up_to_rounding(g, w, **rounding)


@pytest.mark.slow
def test_cpu_train_step_keeps_its_barriers_and_its_results(tiny_config, monkeypatch):
    config = tiny_config(**PROJECTIONS)

    fast = benchmark.build_steps(config)
    assert 'opt-barrier' in fast.train_compiled.as_text()
    monkeypatch.setattr(parallel, 'platform', lambda mesh: 'gpu')  # other backends' step
    plain = benchmark.build_steps(config)
    assert 'opt-barrier' not in plain.train_compiled.as_text()

    terms = train_step_terms(config.batch_size, jax.device_count(), config.image_size)
    for step in range(2):  # the second step starts from the first one's update
        got, want = jax.device_get(fast.train(step)), jax.device_get(plain.train(step))
        for key in ('loss', 'accuracy'):
            assert_equal_up_to_rounding(got[key], want[key], terms=terms, steps=step + 1,
                                        err_msg=key)


def _ynn_fused_opcodes(hlo_text: str) -> set[str]:
    """The opcodes inside the YNNPACK fusions of an optimized HLO module."""
    bodies, name = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r'^(?:ENTRY )?%?(\S+) .*\{$', line)
        if header and not line.startswith(' '):
            name = header.group(1)
            bodies[name] = set()
        elif name and (op := re.search(r' = \S+ ([\w-]+)\(', line)):
            bodies[name].add(op.group(1))
    ynn = r'calls=%?([\w.-]+),[^\n]* backend_config=\{"fusion_config":\{"kind":"__ynn_fusion"'
    called = re.findall(ynn, hlo_text)
    return set().union(*(bodies[c] for c in called))


@pytest.mark.slow
def test_cpu_steps_keep_convolutions_out_of_ynnpack(tiny_config, monkeypatch):
    """The train step and the evaluation step (its forward pass: 1.25x faster on an AVX2
    CPU, docs/cpu.md)."""
    config = tiny_config(**PROJECTIONS)
    config.cpu_kernels = 'xla'  # (the default computes these in resnet_jax.backend.cpu.kernels)

    steps = benchmark.build_steps(config)
    for compiled in (steps.train_compiled, steps.eval_compiled):
        hlo = compiled.as_text()
        assert 'convolution' in hlo  # the 3x3 convolutions, 32 and 64 channels too ...
        assert 'convolution' not in _ynn_fused_opcodes(hlo)  # ... with XLA's own kernels

    # Without the option, XLA:CPU would give some of them to YNNPACK.
    default = {k: v for k, v in compiler.CPU_COMPILER_OPTIONS.items()
               if k != 'xla_cpu_experimental_ynn_fusion_type'}
    monkeypatch.setattr(compiler, 'compiler_options', lambda: default)
    steps = benchmark.build_steps(config)
    for compiled in (steps.train_compiled, steps.eval_compiled):
        assert 'convolution' in _ynn_fused_opcodes(compiled.as_text())
