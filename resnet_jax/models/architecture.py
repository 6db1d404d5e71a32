"""The config's `model` section, derived from the model: its fields and defaults, their
validation, and the model a section describes.

The section holds three fields that choose the architecture, `name` (a row of the depth
table), `block` and `variant`, and every field of `ResNet` declared with `option`, by the
same name and default. Adding a field to the model is one `option` line in `ResNet` plus
its use: the config, its validation and `from_config` follow.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from resnet_jax import pyfiles
from resnet_jax.models import blocks, depths, resnet
from resnet_jax.models.layers import XLA_LAYERS, Layers


@dataclasses.dataclass(frozen=True)
class Field:
    """A field of the config's `model` section."""

    name: str
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    type: type = str  # of a None default: ml_collections needs it


_SELECTION = (
    Field('name', 'cifar_resnet20', 'a row of the depth table (models.MODEL_NAMES)',
          depths.MODEL_NAMES),
    Field('block', '', "'': the post-activation block of the name's kind (the paper's); a "
          f'name of models.BLOCKS {tuple(blocks.BLOCKS)}; or FILE.py:CLASS, a '
          'models.Block subclass defined in a file (experiments/se_resnet.py)'),
    Field('variant', 'v1', "bottlenecks' stride: 'v1' on the first 1x1 (paper), 'v1.5' on "
          'the 3x3 (torchvision)', blocks.VARIANTS),
)


def fields() -> tuple[Field, ...]:
    """Every field of the section, in order."""
    options = []
    for f in resnet.config_options():
        choices = f.metadata['choices']
        kind = next((type(c) for c in choices or () if c is not None), type(f.default))
        options.append(Field(f.name, f.default, f.metadata['doc'],
                             tuple(choices) if choices else None, kind))
    return (*_SELECTION, *options)


def config_section() -> ml_collections.ConfigDict:
    """The `model` section of the base config: every field at its default."""
    section = ml_collections.ConfigDict()
    for f in fields():
        section[f.name] = config_dict.placeholder(f.type) if f.default is None else f.default
    return section


def validate(section: Any) -> None:
    """Raises ValueError naming the field, for a section that describes no model."""
    for f in fields():
        value = section[f.name]
        if f.choices is not None and value not in f.choices:
            choices = ', '.join(str(c) for c in f.choices if c is not None) + (
                ' (or leave it unset: None)' if None in f.choices else '')
            raise ValueError(f'model.name={value!r} is unknown; valid names: {choices}'
                             if f.name == 'name' else
                             f'model.{f.name}={value!r}: choose one of {choices}')
    if section.bn_group_size < 0:
        raise ValueError('model.bn_group_size must be >= 0 (0: no groups)')
    block_class(section)  # a block that cannot be found or is no Block
    _shortcut(section, depths.model_spec(section.name))


# A run keeps a copy of a block's file here in its workdir, from which the model is rebuilt.
BLOCK_FILES_DIR = 'blocks'


def block_file(block: str) -> str | None:
    """The file of a `model.block` that names one (FILE.py:CLASS), else None."""
    path, _, class_name = block.rpartition(':')
    return path if path.endswith('.py') and class_name else None


def block_in_directory(block: str, directory: str) -> str:
    """`block` with its file replaced by the copy a run kept in `directory` (a workdir or
    model directory), where there is one."""
    path = block_file(block)
    if path is None:
        return block
    copy = os.path.join(directory, BLOCK_FILES_DIR, os.path.basename(path))
    return f'{copy}:{block.rpartition(":")[2]}' if os.path.isfile(copy) else block


def block_class(section: Any) -> type[blocks.Block]:
    """The Block class that `section.block` and `section.variant` name."""
    spec = depths.model_spec(section.name)
    name = section.block or spec.block
    if name in blocks.BLOCKS:  # `variant` places the stride of the package's bottlenecks
        return blocks.with_variant(blocks.BLOCKS[name], section.variant)
    if block_file(name):  # a class of a file is used as it is written
        return _class_in_file(*name.rsplit(':', 1))
    raise ValueError(f'model.block={name!r}: choose one of {tuple(blocks.BLOCKS)}, or '
                     'FILE.py:CLASS for a block class defined in a file')


def _class_in_file(path: str, class_name: str) -> type[blocks.Block]:
    try:
        module = pyfiles.import_file(path)
    except FileNotFoundError:
        raise ValueError(f'model.block: no file {path}') from None
    cls = getattr(module, class_name, None)
    if not (inspect.isclass(cls) and issubclass(cls, blocks.Block)):
        found = [n for n, v in vars(module).items()
                 if inspect.isclass(v) and issubclass(v, blocks.Block) and v is not blocks.Block]
        raise ValueError(f'model.block: {path} defines no models.Block subclass '
                         f'{class_name!r}; it defines {found or "none"}')
    return cls


def _shortcut(section: Any, spec: depths.ModelSpec) -> str:
    """The section's shortcut, or the family's: 'none' for plain nets, else
    `resnet.default_shortcut`; an error where the two disagree."""
    shortcut = section.shortcut
    if shortcut is None:
        shortcut = 'none' if spec.plain else \
            resnet.default_shortcut(spec.stem, block_class(section))
    if spec.plain and shortcut != 'none':
        raise ValueError(f'{section.name} is a plain net: it takes shortcut "none", not '
                         f'{shortcut!r}')
    if not spec.plain and shortcut == 'none':
        raise ValueError(f'{section.name} is a residual net: for no shortcuts use its plain '
                         'twin (a plain* or cifar_plain* name)')
    if section.zero_init_residual and shortcut == 'none':
        raise ValueError('model.zero_init_residual on a plain net would zero every block '
                         'output')
    return shortcut


def create_model(name: str, *, num_classes: int, dtype: Any = jnp.float32,
                 bn_axis_name: str | None = None, frozen_batch_norm: bool = False,
                 layers: Layers = XLA_LAYERS, **model_fields: Any) -> resnet.ResNet:
    """The ResNet called `name` (one of MODEL_NAMES); `model_fields` are fields of the
    config's `model` section (block, variant, shortcut, zero_init_residual, ...), the others
    at their defaults.

    The torchvision-equivalent ImageNet nets are shortcut 'B' with variant 'v1.5'.
    """
    section = config_section()
    unknown = set(model_fields) - set(section)
    if unknown:
        raise TypeError(f'create_model got unknown fields {sorted(unknown)}; the model '
                        f'fields are {sorted(section)}')
    section.update(name=name, **{k: v for k, v in model_fields.items() if v is not None})
    validate(section)
    spec = depths.model_spec(name)
    options = {f.name: section[f.name] for f in resnet.config_options()}
    options['shortcut'] = _shortcut(section, spec)
    model = resnet.ResNet(
        stage_sizes=spec.stage_sizes, stage_widths=spec.stage_widths,
        block=block_class(section), stem=spec.stem, num_classes=num_classes, dtype=dtype,
        bn_axis_name=bn_axis_name, frozen_batch_norm=frozen_batch_norm, layers=layers,
        **options)
    model._check()  # fail here, not at the first trace
    return model


def from_config(config: Any, num_classes: int, *, layers: Layers = XLA_LAYERS,
                dtype: Any = None, bn_axis_name: str | None = None) -> resnet.ResNet:
    """The model that an experiment config's `model` section, `dtype` (unless `dtype` is
    given) and `frozen_batch_norm` describe, built from `layers`."""
    return create_model(num_classes=num_classes, dtype=jnp.dtype(dtype or config.dtype),
                        bn_axis_name=bn_axis_name,
                        frozen_batch_norm=config.frozen_batch_norm, layers=layers,
                        **config.model.to_dict())


def record(section: Any, model: resnet.ResNet) -> dict[str, Any]:
    """What a checkpoint records of its model (a resumed run or `init_from` must match it):
    the name, the resolved shortcut, the variant, and the block where it is not the
    depth table's (one defined in a file as FILENAME.py:CLASS, wherever the file is)."""
    described = {'name': section.name, 'shortcut': model.shortcut, 'variant': section.variant}
    block = section.block or depths.model_spec(section.name).block
    if block != depths.model_spec(section.name).block:
        path = block_file(block)
        described['block'] = block if path is None else \
            f'{os.path.basename(path)}:{block.rpartition(":")[2]}'
    return described
