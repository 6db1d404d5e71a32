"""Tests of resnet_jax.models: published parameter counts, shapes, and the wiring of each option.

Big nets are only traced (jax.eval_shape); real computation uses tiny nets and inputs.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rounding import assert_equal_up_to_rounding

from resnet_jax import models
from resnet_jax.models import MODEL_NAMES, ResNet, create_model, layers


def _count(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _image(size: int, batch: int = 1) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)


@functools.cache
def _variable_shapes(name: str, size: int, **kwargs):
    """Shapes of the variables of a named model, traced, never computed."""
    num_classes = 10 if name.startswith('cifar') else 1000
    model = create_model(name, num_classes=num_classes, **kwargs)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), _image(size))


def _stage_shapes(model: ResNet, size: int, train: bool = False):
    """Traced (logits, stages) of `model` for one size x size image."""
    def run(x):
        out, _ = model.init_with_output(jax.random.key(0), x, train=train, return_stages=True)
        return out
    return jax.eval_shape(run, _image(size))


def _init(model: ResNet, x: jax.Array):
    """Real variables of `model`, from the module's own initialisers.

    An 'rbg' key: XLA compiles threefry-based initialisers of even a tiny net for many
    seconds on CPU, rbg ones in a fraction of that; the initialisers are the same.
    """
    key = jax.random.key(0, impl='rbg')
    return jax.jit(lambda x: model.init(key, x, train=False))(x)


def _synthetic_variables(model: ResNet, x: jax.Array):
    """Variables with the model's structure and no random init to compile: kernels from
    numpy, BN scale 1 and bias 0, running mean 0 and variance 1."""
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = path[-1].key
        if name == 'kernel' or path[0].key == 'head':
            return jnp.asarray(rng.normal(0.0, 0.3, leaf.shape), leaf.dtype)
        return jnp.full(leaf.shape, 1.0 if name in ('scale', 'var') else 0.0, leaf.dtype)
    return jax.tree_util.tree_map_with_path(fill, shapes)


def _apply(model: ResNet, variables, x: jax.Array, **kwargs):
    """`model.apply(variables, x, **kwargs)`, jitted."""
    return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def _inputs(*shape: int, seed: int = 1) -> jax.Array:
    """Random images from numpy (no PRNG kernel to compile)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _tiny(block: str = 'basic', **kwargs) -> ResNet:
    """A two-stage net small enough to initialise and run for real in milliseconds."""
    fields = dict(stage_sizes=(1, 1), stage_widths=(8, 16), block=models.BLOCKS[block],
                  stem='cifar', num_classes=5, shortcut='B')
    return ResNet(**(fields | kwargs))


# --- parameter counts against published numbers ---------------------------------------------

TORCHVISION_PARAMS = {
    'resnet18': 11_689_512,
    'resnet34': 21_797_672,
    'resnet50': 25_557_032,
    'resnet101': 44_549_160,
    'resnet152': 60_192_808,
}


@pytest.mark.parametrize('name', TORCHVISION_PARAMS)
def test_imagenet_v15_param_counts_equal_torchvision(name):
    shapes = _variable_shapes(name, 224, variant='v1.5')
    assert _count(shapes['params']) == TORCHVISION_PARAMS[name]


def test_resnet200_adds_sixteen_stage2_blocks_to_resnet152():
    # resnet200 is resnet152 with 24 instead of 8 blocks in stage 2 (no public torchvision
    # count); each extra block has 1x1 512->128, 3x3 128->128, 1x1 128->512 and 3 BNs.
    block = 512 * 128 + 2 * 128 + 9 * 128 * 128 + 2 * 128 + 128 * 512 + 2 * 512
    resnet200 = _count(_variable_shapes('resnet200', 224)['params'])
    assert resnet200 == TORCHVISION_PARAMS['resnet152'] + 16 * block == 64_673_832


PAPER_CIFAR_PARAMS = {  # Table 6, millions
    'cifar_resnet20': 0.27,
    'cifar_resnet32': 0.46,
    'cifar_resnet44': 0.66,
    'cifar_resnet56': 0.85,
    'cifar_resnet110': 1.7,
    'cifar_resnet1202': 19.4,
}


@pytest.mark.parametrize('name', [
    pytest.param(name, marks=pytest.mark.slow) if name == 'cifar_resnet1202' else name
    for name in PAPER_CIFAR_PARAMS])  # tracing 1,202 layers takes seconds
def test_cifar_param_counts_match_paper_table6(name):
    params = _count(_variable_shapes(name, 32)['params'])
    assert params / 1e6 == pytest.approx(PAPER_CIFAR_PARAMS[name], rel=0.02)


def test_model_names_cover_the_paper():
    assert MODEL_NAMES == (
        'resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152', 'resnet200',
        'plain18', 'plain34',
        'cifar_resnet8', 'cifar_resnet20', 'cifar_resnet32', 'cifar_resnet44', 'cifar_resnet56',
        'cifar_resnet110', 'cifar_resnet1202', 'cifar_resnet164', 'cifar_resnet1001',
        'cifar_plain20', 'cifar_plain32', 'cifar_plain44', 'cifar_plain56', 'cifar_plain110',
    )


def test_module_names_are_stable():
    params = _variable_shapes('resnet18', 224)['params']
    assert set(params) == {'stem_conv', 'stem_bn', 'head'} | {
        f'stage{i}_block{j}' for i in range(1, 5) for j in range(1, 3)}
    assert set(params['stage2_block1']) == {
        'conv1', 'bn1', 'conv2', 'bn2', 'shortcut_conv', 'shortcut_bn'}
    assert 'bias' not in params['stem_conv']  # BN follows every conv
    assert params['head']['kernel'].shape == (512, 1000)


# --- shapes -----------------------------------------------------------------------------------

def test_imagenet_stage_shapes():
    logits, stages = _stage_shapes(create_model('resnet50', num_classes=1000), 224)
    assert logits.shape == (1, 1000) and logits.dtype == jnp.float32
    assert {k: v.shape for k, v in stages.items()} == {
        'stem': (1, 56, 56, 64),
        'stage1': (1, 56, 56, 256),
        'stage2': (1, 28, 28, 512),
        'stage3': (1, 14, 14, 1024),
        'stage4': (1, 7, 7, 2048),
    }


def test_cifar_stage_shapes():
    logits, stages = _stage_shapes(create_model('cifar_resnet20', num_classes=10), 32)
    assert logits.shape == (1, 10)
    assert {k: v.shape for k, v in stages.items()} == {
        'stem': (1, 32, 32, 16),
        'stage1': (1, 32, 32, 16),
        'stage2': (1, 16, 16, 32),
        'stage3': (1, 8, 8, 64),
    }


@pytest.mark.parametrize('name', ['resnet50', 'cifar_resnet20'])
def test_any_image_side_works_and_each_strided_layer_follows_output_side(name):
    # Padding k//2 maps every side H to ceil(H/s) >= 1, so even 1-pixel images run; the
    # CPU kernels compute their output shapes with the same layers.output_side.
    spec = models.model_spec(name)
    model = create_model(name, num_classes=10)
    for side in (1, 33, 224):
        _, stages = _stage_shapes(model, side)
        stem = layers.output_side(side, 7 if spec.stem == 'imagenet' else 3,
                                  2 if spec.stem == 'imagenet' else 1,
                                  3 if spec.stem == 'imagenet' else 1)
        if spec.stem == 'imagenet':
            stem = layers.output_side(stem, 3, 2, 1)  # the max pool
        assert stages['stem'].shape[1] == stem
        last = stem
        for _ in spec.stage_sizes[1:]:
            last = layers.output_side(last, 3, 2, 1)
        assert stages[f'stage{len(spec.stage_sizes)}'].shape[1] == last >= 1


# --- shortcut options -------------------------------------------------------------------------

def _blocks_with_projection(params) -> set[str]:
    return {name for name, sub in params.items() if 'shortcut_conv' in sub}


@pytest.mark.parametrize('name, changing', [
    ('resnet18', {'stage2_block1', 'stage3_block1', 'stage4_block1'}),
    # A bottleneck's first block also changes channels, 64 -> 256.
    ('resnet50', {'stage1_block1', 'stage2_block1', 'stage3_block1', 'stage4_block1'}),
])
def test_projection_placement_per_shortcut_option(name, changing):
    all_blocks = {k for k in _variable_shapes(name, 64)['params'] if k.startswith('stage')}
    assert _blocks_with_projection(_variable_shapes(name, 64, shortcut='A')['params']) == set()
    assert _blocks_with_projection(_variable_shapes(name, 64, shortcut='B')['params']) == changing
    assert _blocks_with_projection(_variable_shapes(name, 64, shortcut='C')['params']) == all_blocks


def test_shortcut_a_adds_no_parameters():
    resnet = _variable_shapes('cifar_resnet20', 32)
    plain = _variable_shapes('cifar_plain20', 32)
    assert jax.tree.map(lambda x: x.shape, resnet) == jax.tree.map(lambda x: x.shape, plain)


def _zero_branch_kernels(params):
    """Zero every conv kernel inside the blocks' residual branches (not the projections)."""
    def zero(path, leaf):
        keys = [p.key for p in path]
        in_branch = keys[0].startswith('stage') and keys[1].startswith('conv')
        return jnp.zeros_like(leaf) if in_branch else leaf
    return jax.tree_util.tree_map_with_path(zero, params)


@pytest.mark.parametrize('shortcut', ['A', 'B', 'C', 'none'])
def test_skip_path_with_zeroed_branches(shortcut):
    # With every branch conv zeroed, a block's branch is BN(0) = 0 at initial statistics, so
    # a residual block returns relu(shortcut(x)) and a plain block returns zeros.
    model = _tiny(shortcut=shortcut, stage_sizes=(2, 1, 1), stage_widths=(4, 8, 16))
    x = _inputs(2, 8, 8, 3)
    variables = _synthetic_variables(model, x)
    variables = {**variables, 'params': _zero_branch_kernels(variables['params'])}
    _, stages = _apply(model, variables, x, train=False, return_stages=True)
    stem = stages['stem']
    assert float(jnp.abs(stem).max()) > 0
    if shortcut == 'none':
        for i in (1, 2, 3):
            np.testing.assert_array_equal(stages[f'stage{i}'], 0.0)
    elif shortcut == 'C':  # projections everywhere: not an identity even in stage 1
        assert not np.allclose(stages['stage1'], stem)
    else:  # identity inside stage 1 (stem output is already >= 0, so relu keeps it)
        np.testing.assert_array_equal(stages['stage1'], stem)
    if shortcut == 'A':  # subsample and zero-pad the new channels
        np.testing.assert_array_equal(
            stages['stage2'], jnp.pad(stem[:, ::2, ::2], ((0, 0), (0, 0), (0, 0), (0, 4))))
        np.testing.assert_array_equal(
            stages['stage3'], jnp.pad(stem[:, ::4, ::4], ((0, 0), (0, 0), (0, 0), (0, 12))))


# --- v1 / v1.5 --------------------------------------------------------------------------------

@pytest.mark.parametrize('variant, conv1_side, conv2_side', [('v1', 8, 8), ('v1.5', 16, 8)])
def test_bottleneck_stride_placement(variant, conv1_side, conv2_side):
    # resnet50 at 64x64: stage 1 is 16x16, so stage2_block1 halves it to 8x8 either on its
    # first 1x1 (v1, the paper) or on its 3x3 (v1.5, torchvision).
    model = create_model('resnet50', num_classes=1000, variant=variant)
    x = _image(64)
    variables = _variable_shapes('resnet50', 64, variant=variant)

    def run(variables, x):
        return model.apply(variables, x, train=False, capture_intermediates=True,
                           mutable=['intermediates'])[1]
    block = jax.eval_shape(run, variables, x)['intermediates']['stage2_block1']
    assert block['conv1']['__call__'][0].shape == (1, conv1_side, conv1_side, 128)
    assert block['conv2']['__call__'][0].shape == (1, conv2_side, conv2_side, 128)
    assert block['conv3']['__call__'][0].shape == (1, 8, 8, 512)


def test_variant_changes_no_parameter_shape():
    v1 = _variable_shapes('resnet50', 64, variant='v1')
    v15 = _variable_shapes('resnet50', 64, variant='v1.5')
    assert jax.tree.map(lambda x: x.shape, v1) == jax.tree.map(lambda x: x.shape, v15)


# --- initialisation ---------------------------------------------------------------------------

@pytest.mark.parametrize('block, last_bn', [('basic', 'bn2'), ('bottleneck', 'bn3')])
def test_zero_init_residual_zeroes_the_last_bn_of_each_branch(block, last_bn):
    model = _tiny(block, zero_init_residual=True)
    x = _inputs(2, 8, 8, 3)
    variables = _init(model, x)
    params = variables['params']
    for name in ('stage1_block1', 'stage2_block1'):
        np.testing.assert_array_equal(params[name][last_bn]['scale'], 0.0)
        np.testing.assert_array_equal(params[name][last_bn]['bias'], 0.0)
        np.testing.assert_array_equal(params[name]['bn1']['scale'], 1.0)
    np.testing.assert_array_equal(params['stage2_block1']['shortcut_bn']['scale'], 1.0)
    np.testing.assert_array_equal(params['stem_bn']['scale'], 1.0)
    if block == 'basic':  # stage 1 keeps its shape, so its block starts as the identity
        _, stages = _apply(model, variables, x, train=False, return_stages=True)
        np.testing.assert_array_equal(stages['stage1'], stages['stem'])


def test_default_init_is_untruncated_he_fan_out_and_unit_bn():
    model = _tiny(stage_sizes=(1,), stage_widths=(64,))
    params = _init(model, jnp.ones((1, 8, 8, 3)))['params']
    kernel = np.asarray(params['stage1_block1']['conv2']['kernel'])  # 3x3x64x64
    std = math.sqrt(2.0 / (3 * 3 * 64))
    assert kernel.std() == pytest.approx(std, rel=0.03)
    assert abs(kernel.mean()) < 0.02 * std
    # A normal has 4.55% of its mass beyond 2 std; a truncated normal (at 2 std) has none.
    assert np.mean(np.abs(kernel) > 2 * std) == pytest.approx(0.0455, abs=0.01)
    for bn in ('stem_bn', 'bn1', 'bn2'):
        tree = params[bn] if bn == 'stem_bn' else params['stage1_block1'][bn]
        np.testing.assert_array_equal(tree['scale'], 1.0)
        np.testing.assert_array_equal(tree['bias'], 0.0)


# --- dtypes and BN ----------------------------------------------------------------------------

def test_bfloat16_activations_float32_params_and_stats():
    model = create_model('resnet18', num_classes=10, dtype=jnp.bfloat16)

    def run(x):
        (logits, stages), variables = model.init_with_output(
            jax.random.key(0), x, train=False, return_stages=True)
        _, updated = model.apply(variables, x, train=True, mutable=['batch_stats'])
        return logits, stages, variables, updated
    logits, stages, variables, updated = jax.eval_shape(run, _image(32, batch=2))
    assert logits.dtype == jnp.float32
    assert {v.dtype for v in stages.values()} == {jnp.dtype(jnp.bfloat16)}
    for tree in (variables['params'], variables['batch_stats'], updated['batch_stats']):
        assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {jnp.dtype(jnp.float32)}


def test_bn_axis_name_synchronises_statistics():
    # Two "devices" (a vmapped axis) with different halves of a batch: with bn_axis_name the
    # statistics and outputs equal those of one device holding the whole batch.
    x = _inputs(4, 8, 8, 3) * jnp.arange(1, 5)[:, None, None, None]
    local = _tiny()
    variables = _synthetic_variables(local, x)
    whole, whole_stats = _apply(local, variables, x, train=True, mutable=['batch_stats'])

    synced = _tiny(bn_axis_name='data')

    def step(shard):
        return synced.apply(variables, shard, train=True, mutable=['batch_stats'])
    out, stats = jax.jit(jax.vmap(step, axis_name='data'))(x.reshape(2, 2, 8, 8, 3))
    # The statistics sum N*H*W values in another order (2 halves, then across them), two
    # sums in each of the 5 BatchNorms one after another.
    rounding = dict(terms=4 * 8 * 8, steps=2 * 5)
    assert_equal_up_to_rounding(out.reshape(4, -1), whole, **rounding)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(whole_stats), strict=True):
        assert_equal_up_to_rounding(a[0], b, **rounding)
        assert_equal_up_to_rounding(a[1], b, **rounding)

    # Without the axis name each device keeps its own statistics (the paper's default).
    _, stats_local = jax.jit(jax.vmap(
        lambda s: local.apply(variables, s, train=True, mutable=['batch_stats'])))(
        x.reshape(2, 2, 8, 8, 3))
    mean = stats_local['batch_stats']['stem_bn']['mean']
    assert not np.allclose(mean[0], mean[1])


def test_train_step_updates_batch_stats_with_momentum():
    model = _tiny(bn_momentum=0.75)
    x = _inputs(4, 8, 8, 3) + 3.0
    variables = _synthetic_variables(model, x)
    logits, updated = _apply(model, variables, x, train=True, mutable=['batch_stats'])
    assert logits.shape == (4, 5) and bool(jnp.all(jnp.isfinite(logits)))
    # Stem conv input has no BN before it: its per-channel batch mean is known exactly.
    conv = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
    y = conv.apply({'params': variables['params']['stem_conv']}, x)
    assert_equal_up_to_rounding(updated['batch_stats']['stem_bn']['mean'],
                                0.25 * y.mean(axis=(0, 1, 2)), terms=4 * 8 * 8, steps=2)


# --- configuration errors ---------------------------------------------------------------------

def test_unknown_name_lists_every_valid_name():
    with pytest.raises(ValueError, match='resnet51') as info:
        create_model('resnet51', num_classes=10)
    for name in MODEL_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize('name, shortcut', [
    ('plain18', 'B'), ('cifar_plain20', 'A'), ('resnet18', 'none'), ('cifar_resnet20', 'none'),
])
def test_plain_and_shortcut_must_agree(name, shortcut):
    with pytest.raises(ValueError, match='plain'):
        create_model(name, num_classes=10, shortcut=shortcut)


def test_family_default_shortcuts():
    assert create_model('resnet50', num_classes=1).shortcut == 'B'
    assert create_model('cifar_resnet20', num_classes=1).shortcut == 'A'
    assert create_model('plain34', num_classes=1).shortcut == 'none'
    assert create_model('cifar_plain56', num_classes=1).shortcut == 'none'


@pytest.mark.parametrize('kwargs', [
    dict(variant='v2'), dict(shortcut='D'), dict(zero_init_residual=True, shortcut='none'),
])
def test_invalid_options_are_rejected(kwargs):
    name = 'plain18' if kwargs.get('shortcut') == 'none' else 'resnet18'
    with pytest.raises(ValueError):
        create_model(name, num_classes=10, **kwargs)
