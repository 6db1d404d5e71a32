"""Per-stage parameters and multiply-adds of a ResNet, without running it.

Multiply-adds count convolutions and dense layers only, the convention of the paper's
Table 1 and of the torchvision / fvcore figures: a layer costs (output positions) x
(kernel size), i.e. H_out * W_out * kh * kw * C_in / groups * C_out for a convolution and
C_in * C_out for a dense layer. BN, ReLU, pooling and additions are not counted.

    python -m resnet_jax.models.summary --model resnet50 --variant v1.5
"""

import argparse
import dataclasses
import math
import sys
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax import configs
from resnet_jax.inputs.base import shape_from_config
from resnet_jax.models import (
    BLOCKS,
    SHORTCUTS,
    VARIANTS,
    ResNet,
    create_model,
    from_config,
    model_spec,
    part_of,
)


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    """One part of the network: 'stem', 'stage1', ..., or 'head'."""

    part: str
    output_shape: tuple[int, ...]  # per image, without the batch axis
    params: int
    macs: int  # multiply-adds per image


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    """Rows in network order and their totals."""

    rows: tuple[SummaryRow, ...]
    params: int
    macs: int


def count_params(params: Any) -> int:
    """The number of scalars in a pytree of arrays (or of jax.ShapeDtypeStruct)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def summarize(model: ResNet, image_size: int) -> ModelSummary:
    """Parameters and multiply-adds per part for one image_size x image_size RGB image.

    Shapes only: `model.init` runs under `jax.eval_shape`, and an interceptor records the
    output shape of every nn.Conv / nn.Dense call; no FLOPs are spent.
    """
    output_shapes: dict[tuple[str, ...], tuple[int, ...]] = {}

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == '__call__' and isinstance(context.module, nn.Conv | nn.Dense):
            output_shapes[context.module.path] = out.shape
        return out

    def init(x):
        with nn.intercept_methods(record):
            return model.init_with_output(jax.random.key(0), x, train=False, return_stages=True)

    image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    (logits, stages), variables = jax.eval_shape(init, image)
    params = variables['params']

    part_params: dict[str, int] = {}
    for name, subtree in params.items():
        part_params[part_of(name)] = part_params.get(part_of(name), 0) + count_params(subtree)
    part_macs: dict[str, int] = {}
    for path, shape in output_shapes.items():
        kernel = params
        for name in path:
            kernel = kernel[name]
        # Each output position (batch is 1) applies the whole kernel once.
        macs = math.prod(shape[:-1]) * math.prod(kernel['kernel'].shape)
        part_macs[part_of(path[0])] = part_macs.get(part_of(path[0]), 0) + macs

    # Network order (eval_shape returns the stages dict with sorted keys).
    parts = ['stem'] + [f'stage{i}' for i in range(1, len(model.stage_sizes) + 1)]
    shapes = {part: stages[part].shape[1:] for part in parts} | {'head': logits.shape[1:]}
    rows = tuple(
        SummaryRow(part, tuple(shape), part_params.get(part, 0), part_macs.get(part, 0))
        for part, shape in shapes.items()
    )
    return ModelSummary(rows, sum(r.params for r in rows), sum(r.macs for r in rows))


def format_summary(summary: ModelSummary) -> str:
    """A readable table: part, output shape, params, multiply-adds, and a total row."""
    lines = [f'{"part":<8} {"output shape":<14} {"params":>12} {"multiply-adds":>16}']
    for r in summary.rows:
        shape = 'x'.join(map(str, r.output_shape))
        lines.append(f'{r.part:<8} {shape:<14} {r.params:>12,} {r.macs:>16,}')
    lines.append(f'{"total":<8} {"":<14} {summary.params:>12,} {summary.macs:>16,}')
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m resnet_jax.models.summary`."""
    parser = argparse.ArgumentParser(
        prog='python -m resnet_jax.models.summary',
        description='Per-stage parameters and multiply-adds of a ResNet.')
    parser.add_argument('--model', help='a name from resnet_jax.models.MODEL_NAMES')
    parser.add_argument('--config', metavar='FILE[:ARG]',
                        help='the model of an experiment config, e.g. experiments/r50.py')
    parser.add_argument('--block', default='',
                        help=f'one of {", ".join(BLOCKS)}, or FILE.py:CLASS; default: the '
                        "model's post-activation block")
    parser.add_argument('--variant', choices=VARIANTS, default='v1')
    parser.add_argument('--shortcut', choices=SHORTCUTS, default=None,
                        help='default: B for ImageNet ResNets, A for CIFAR, none for plain')
    parser.add_argument('--num-classes', type=int, default=None,
                        help='default: 1000 for ImageNet nets, 10 for CIFAR nets')
    parser.add_argument('--image-size', type=int, default=None,
                        help='default: 224 for ImageNet nets, 32 for CIFAR nets')
    return parser


# The data set each stem was designed for: (classes, image side), defaults of the CLI.
_STEM_DEFAULTS = {'imagenet': (1000, 224), 'cifar': (10, 32)}


def model_from_config(spec: str, num_classes: int | None, image_size: int | None):
    """The model and image side of an experiment config `FILE[:ARG]`."""
    config = configs.load_config(spec)
    with config.unlocked():
        config.num_classes = num_classes or config.num_classes
        config.image_size = image_size or config.image_size
    try:
        num_classes, image_size = shape_from_config(config)
    except configs.ConfigError as error:
        raise ValueError(f'{spec}: {error} (or pass --num-classes and --image-size)') from None
    # The platform's layers and compute dtype change no shape: XLA's layers count the same.
    return from_config(config, num_classes), image_size


def model_from_args(args: argparse.Namespace) -> tuple[ResNet, int]:
    """The model and image side the command line asks for; ValueError if it is invalid."""
    if args.config is not None:
        if args.model is not None:
            raise ValueError('give either --model or --config, not both')
        return model_from_config(args.config, args.num_classes, args.image_size)
    if args.model is None:
        raise ValueError('--model or --config is required')
    num_classes, image_size = _STEM_DEFAULTS[model_spec(args.model).stem]
    num_classes = num_classes if args.num_classes is None else args.num_classes
    image_size = image_size if args.image_size is None else args.image_size
    if num_classes < 1 or image_size < 1:
        raise ValueError('--num-classes and --image-size must be positive')
    model = create_model(args.model, num_classes=num_classes, block=args.block,
                         shortcut=args.shortcut, variant=args.variant)
    return model, image_size


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table; the last line is `params=<int> macs=<int>`. Bad input exits 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model, image_size = model_from_args(args)
    except ValueError as e:
        parser.error(str(e))  # exit code 2, a message instead of a traceback
    summary = summarize(model, image_size)
    print(f'{model.block.__name__} {tuple(model.stage_sizes)}, shortcut {model.shortcut}, '
          f'{model.num_classes} classes, '
          f'{image_size}x{image_size} input')
    print(format_summary(summary))
    print(f'params={summary.params} macs={summary.macs}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
