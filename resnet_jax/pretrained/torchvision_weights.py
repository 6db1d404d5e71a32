"""torchvision ResNet state dicts <-> this codebase's Flax variables.

torchvision's ResNets are this codebase's ImageNet nets with shortcut B and variant v1.5
(stride on the bottleneck's 3x3), BatchNorm epsilon 1e-5, 7x7/2 stem conv padded by 3 and
a 3x3/2 max pool padded by 1, which `resnet_jax.models` also does. Names map one to one:

    conv1, bn1                        -> stem_conv, stem_bn
    layer{i}.{j}.conv{k}, .bn{k}      -> stage{i}_block{j+1}/conv{k}, bn{k}
    layer{i}.{j}.downsample.0, .1     -> stage{i}_block{j+1}/shortcut_conv, shortcut_bn
    fc                                -> head

Layouts: conv weights OIHW -> kernel HWIO, fc weight [out, in] -> kernel [in, out],
BatchNorm weight/bias -> params scale/bias, running_mean/var -> batch_stats mean/var.
`num_batches_tracked` carries nothing the model uses and is dropped.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax import models


class StateDictMismatchError(ValueError):
    """A state dict whose names or shapes are not those of the model it was given for."""


# Flax leaf name -> torchvision suffix, per kind of module.
_BN_PARAMS = {'scale': 'weight', 'bias': 'bias'}
_BN_STATS = {'mean': 'running_mean', 'var': 'running_var'}
_IGNORED_SUFFIXES = ('num_batches_tracked',)


def _torch_module(flax_module: str) -> str:
    """The torchvision module name of a Flax module path ('stage1_block2/conv1', ...)."""
    if flax_module == 'stem_conv':
        return 'conv1'
    if flax_module == 'stem_bn':
        return 'bn1'
    if flax_module == 'head':
        return 'fc'
    block, layer = flax_module.split('/')
    stage, index = block.removeprefix('stage').split('_block')
    layer = {'shortcut_conv': 'downsample.0', 'shortcut_bn': 'downsample.1'}.get(layer, layer)
    return f'layer{stage}.{int(index) - 1}.{layer}'


def _expected(variables_shapes: dict[str, Any]) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """{torch name: (collection, flax path, torch shape)} for a model's variable shapes."""
    expected = {}
    for collection, tree in variables_shapes.items():
        for path, leaf in traverse_util.flatten_dict(tree, sep='/').items():
            module, leaf_name = path.rsplit('/', 1)
            torch_module = _torch_module(module)
            shape = tuple(leaf.shape)
            if leaf_name == 'kernel' and len(shape) == 4:
                torch_leaf, shape = 'weight', (shape[3], shape[2], shape[0], shape[1])
            elif leaf_name == 'kernel':
                torch_leaf, shape = 'weight', (shape[1], shape[0])
            elif module == 'head':
                torch_leaf = leaf_name
            else:
                torch_leaf = (_BN_PARAMS if collection == 'params' else _BN_STATS)[leaf_name]
            expected[f'{torch_module}.{torch_leaf}'] = (collection, path, shape)
    return expected


def variable_shapes(model: models.ResNet, image_size: int = 32) -> dict[str, Any]:
    """The shapes of the model's variables, found without computing them."""
    dummy = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), dummy)


def check_architecture(model: models.ResNet) -> None:
    """Only torchvision's architecture (ImageNet stem, shortcut B, v1.5) has its weights."""
    problems = []
    if model.stem != 'imagenet':
        problems.append('a CIFAR net (torchvision has ImageNet ResNets only)')
    if model.shortcut != 'B':
        problems.append(f'shortcut {model.shortcut!r} (torchvision: B)')
    v1_5 = models.blocks.with_variant(models.BottleneckBlock, 'v1.5')
    if model.block is models.BottleneckBlock:
        problems.append("variant 'v1' (torchvision: v1.5)")
    elif model.block not in (models.BasicBlock, v1_5):
        problems.append(f'{model.block.__name__} blocks (torchvision: the paper\'s, v1.5)')
    if problems:
        raise StateDictMismatchError('torchvision weights need the torchvision architecture; '
                                     'the model is ' + ', '.join(problems))


def to_variables(state_dict: dict[str, np.ndarray], model: models.ResNet,
                 source: str = 'the state dict', max_listed: int = 8) -> dict[str, Any]:
    """The Flax variables {'params', 'batch_stats'} of `model` from a torchvision state dict.

    Every variable of the model must be in the state dict with the right shape, and the
    state dict must hold nothing else (but `num_batches_tracked`); otherwise a
    StateDictMismatchError lists the first `max_listed` differences.
    """
    check_architecture(model)
    expected = _expected(variable_shapes(model))
    given = {k: v for k, v in state_dict.items() if not k.endswith(_IGNORED_SUFFIXES)}
    reshaped = [name for name in expected
                if name in given and tuple(given[name].shape) != expected[name][2]]
    missing = set(expected) - set(given)
    unexpected = set(given) - set(expected)
    differences = []
    for name in sorted(set(reshaped) | missing | unexpected, key=_network_order):
        if name in missing:
            differences.append(f'missing {name} {expected[name][2]}')
        elif name in unexpected:
            differences.append(f'unexpected {name} {tuple(given[name].shape)}')
        else:
            differences.append(f'{name}: file {tuple(given[name].shape)}, model '
                               f'{expected[name][2]}')
    if differences:
        shown = '; '.join(differences[:max_listed])
        more = f'; ... {len(differences) - max_listed} more' if len(differences) > max_listed \
            else ''
        raise StateDictMismatchError(
            f'{source} does not match {_describe(model)}: {len(reshaped)} of other shapes, '
            f'{len(missing)} missing, {len(unexpected)} unexpected: {shown}{more}')
    flat = {}
    for name, (collection, path, _) in expected.items():
        value = np.asarray(given[name], np.float32)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif value.ndim == 2:
            value = value.T
        flat[(collection, *path.split('/'))] = value
    return traverse_util.unflatten_dict(flat)


def _network_order(name: str) -> list:
    """Sort key: the order of the modules in the network: the stem, layer1.0 ... layer1.10
    ... (numbers as numbers), then fc."""
    first = name.split('.')[0]
    rank = 0 if first in ('conv1', 'bn1') else 99 if first == 'fc' else 1
    return [rank] + [(0, int(part), '') if part.isdigit() else (1, 0, part)
                     for part in name.split('.')]


def to_state_dict(variables: dict[str, Any]) -> dict[str, np.ndarray]:
    """The torchvision state dict of Flax variables (the inverse of `to_variables`, without
    `num_batches_tracked`): for writing test fixtures and for export to PyTorch."""
    state_dict = {}
    for collection in ('params', 'batch_stats'):
        for path, value in traverse_util.flatten_dict(variables[collection], sep='/').items():
            module, leaf_name = path.rsplit('/', 1)
            value = np.asarray(value)
            if leaf_name == 'kernel':
                torch_leaf = 'weight'
                value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
            elif module == 'head':
                torch_leaf = leaf_name
            else:
                torch_leaf = (_BN_PARAMS if collection == 'params' else _BN_STATS)[leaf_name]
            state_dict[f'{_torch_module(module)}.{torch_leaf}'] = value
    return state_dict


def num_classes_of(state_dict: dict[str, np.ndarray], source: str) -> int:
    """The number of classes of a torchvision ResNet state dict (rows of `fc.weight`)."""
    if 'fc.weight' not in state_dict or state_dict['fc.weight'].ndim != 2:
        raise StateDictMismatchError(f'{source} has no fc.weight [classes, features]: not a '
                                     'torchvision ResNet state dict')
    return int(state_dict['fc.weight'].shape[0])


def _describe(model: models.ResNet) -> str:
    depth_names = [name for name in models.MODEL_NAMES
                   if models.model_spec(name).stage_sizes == tuple(model.stage_sizes)
                   and issubclass(model.block, models.BLOCKS[models.model_spec(name).block])
                   and not models.model_spec(name).plain]
    name = depth_names[0] if depth_names else 'the model'
    return f'{name} ({model.num_classes} classes)'
