"""Tests of the pre-activation ResNets (He et al. 2016, "Identity Mappings in Deep Residual
Networks"): parameter counts against that paper, and the wiring of its blocks.

Big nets are only traced (jax.eval_shape); real computation uses tiny nets.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax.models import architecture, create_model
from resnet_jax.models.layers import XLA_LAYERS
from resnet_jax.paper import layer_responses


def _shapes(name: str, block: str = '', size: int = 32, **fields):
    model = create_model(name, num_classes=10 if name.startswith('cifar') else 1000,
                         block=block, **fields)
    image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return model, jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                                 image)


def _weights(params) -> int:
    """Scalars of the convolution kernels and the head: what the paper counts (its 10.2M
    for ResNet-1001 is 10.19M of weights; with the BatchNorms' scales and biases 10.33M)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(math.prod(leaf.shape) for path, leaf in leaves
               if path[-1].key == 'kernel' or path[0].key == 'head')


# Table 4 of He et al. (2016), millions; its ResNet-110 figure is the 2015 paper's.
PAPER_PARAMS = {'cifar_resnet110': 1.7, 'cifar_resnet164': 1.7, 'cifar_resnet1001': 10.2}


@pytest.mark.parametrize('name', [
    pytest.param(name, marks=pytest.mark.slow) if name == 'cifar_resnet1001' else name
    for name in PAPER_PARAMS])  # tracing 1,001 layers takes seconds
def test_cifar_param_counts_match_the_paper(name):
    block = 'preact_' + models.model_spec(name).block
    _, variables = _shapes(name, block)
    assert round(_weights(variables['params']) / 1e6, 1) == PAPER_PARAMS[name]


def test_depths_are_6n_plus_2_and_9n_plus_2():
    for name, layers_per_block in [('cifar_resnet110', 2), ('cifar_resnet164', 3),
                                   ('cifar_resnet1001', 3)]:
        spec = models.model_spec(name)
        assert sum(spec.stage_sizes) * layers_per_block + 2 == int(name[len('cifar_resnet'):])


@pytest.mark.parametrize('name', ['resnet50', 'resnet200'])
def test_imagenet_v2_has_the_weights_of_v1(name):
    # The same convolutions; v2 drops the projections' BNs, the stem's BN moves to the end.
    _, v1 = _shapes(name, size=64)
    _, v2 = _shapes(name, 'preact_bottleneck', size=64)
    assert _weights(v2['params']) == _weights(v1['params'])


def test_preactivation_net_structure():
    model, variables = _shapes('cifar_resnet164', 'preact_bottleneck')
    params = variables['params']
    assert model.shortcut == 'B'  # projections for increasing dimensions, as the paper
    assert 'stem_bn' not in params and params['final_bn']['scale'].shape == (256,)
    # Every stage's first block projects (16->64 in stage 1), without a BN after it.
    for i in (1, 2, 3):
        first = params[f'stage{i}_block1']
        assert 'shortcut_conv' in first and 'shortcut_bn' not in first
        assert 'shortcut_conv' not in params[f'stage{i}_block2']
    assert set(params['stage1_block2']) == {'bn1', 'conv1', 'bn2', 'conv2', 'bn3', 'conv3'}
    assert params['stage1_block2']['bn1']['scale'].shape == (64,)  # normalises the input


def _tiny(block, **fields):
    return models.ResNet(stage_sizes=(2, 1), stage_widths=(8, 16), block=block, stem='cifar',
                         num_classes=3, shortcut='B', **fields)


@pytest.mark.parametrize('block', [models.PreActBasicBlock, models.PreActBottleneckBlock])
def test_zero_init_residual_makes_each_identity_block_its_shortcut(block):
    model = _tiny(block, zero_init_residual=True)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0, impl='rbg'), x, train=False))(x)
    last = 'conv2' if block is models.PreActBasicBlock else 'conv3'
    assert not np.any(variables['params']['stage1_block2'][last]['kernel'])
    _, state = model.apply(variables, x, train=False, capture_intermediates=True,
                           mutable=['intermediates'])
    out = state['intermediates']
    np.testing.assert_array_equal(out['stage1_block2']['__call__'][0],
                                  out['stage1_block1']['__call__'][0])


def test_a_preactivation_block_ends_with_the_addition():
    # x + F(x): a block whose branch is zero passes negative values through (no ReLU after
    # the addition), unlike the paper's v1 block.
    layers = XLA_LAYERS
    block = models.PreActBasicBlock(
        width=8, strides=1, shortcut='B', zero_init_residual=True, dtype=jnp.float32,
        norm=functools.partial(layers.norm, use_running_average=True), layers=layers)
    x = -jnp.ones((1, 4, 4, 8))
    variables = block.init(jax.random.key(0), x)
    np.testing.assert_array_equal(block.apply(variables, x), x)


def test_layer_responses_of_a_preactivation_net_have_one_layer_per_basic_block():
    model = _tiny(models.PreActBasicBlock)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    variables = jax.jit(lambda x: model.init(jax.random.key(0, impl='rbg'), x, train=False))(x)
    found = layer_responses.responses(model, variables, x)
    assert list(found) == ['stage1_block1/bn2', 'stage1_block2/bn2', 'stage2_block1/bn2']


def test_the_default_shortcut_is_decided_once():
    # Built directly or from a config, a pre-activation CIFAR net projects (B); v1 pads (A).
    direct = models.ResNet(stage_sizes=(1, 1), stage_widths=(8, 16),
                           block=models.PreActBasicBlock, stem='cifar', num_classes=3)
    _, variables = _shapes('cifar_resnet20', 'preact_basic')
    assert 'shortcut_conv' in variables['params']['stage2_block1']
    shapes = jax.eval_shape(lambda x: direct.init(jax.random.key(0), x, train=False),
                            jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
    assert 'shortcut_conv' in shapes['params']['stage2_block1']  # A would pad instead
    assert create_model('cifar_resnet20', num_classes=10).shortcut == 'A'


def test_naming_the_depth_tables_block_records_the_same_model():
    # A checkpoint of block '' resumes with block 'basic' and back (the same network).
    section = architecture.config_section()
    section.name = 'cifar_resnet20'
    model = create_model('cifar_resnet20', num_classes=10)
    unnamed = architecture.record(section, model)
    section.block = 'basic'
    assert architecture.record(section, model) == unnamed == {
        'name': 'cifar_resnet20', 'shortcut': 'A', 'variant': 'v1'}
    section.block = 'preact_basic'
    assert architecture.record(section, model)['block'] == 'preact_basic'
