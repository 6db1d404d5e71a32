"""The depth table: the stages of every named net, as data.

The ImageNet nets (18 to 200 layers, Table 1 of He et al. 2015), the CIFAR-10 nets of
6n+2 layers (Section 4.2) with basic blocks and of 9n+2 layers with bottlenecks (He et al.
2016: ResNet-164 and ResNet-1001), and their plain twins. A new depth is one line here.
"""

from __future__ import annotations

import dataclasses

IMAGENET_WIDTHS = (64, 128, 256, 512)
CIFAR_WIDTHS = (16, 32, 64)  # bottleneck nets: the inner widths, outputs 4x


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One row of the depth table: the architecture a model name stands for."""

    stem: str  # 'imagenet' or 'cifar'
    block: str  # the kind of block: 'basic' or 'bottleneck' (models.blocks.BLOCKS)
    stage_sizes: tuple[int, ...]
    stage_widths: tuple[int, ...]
    plain: bool  # no shortcuts at all (the paper's "plain" baselines)


def _depth_table() -> dict[str, ModelSpec]:
    imagenet = {
        18: ('basic', (2, 2, 2, 2)),
        34: ('basic', (3, 4, 6, 3)),
        50: ('bottleneck', (3, 4, 6, 3)),
        101: ('bottleneck', (3, 4, 23, 3)),
        152: ('bottleneck', (3, 8, 36, 3)),
        200: ('bottleneck', (3, 24, 36, 3)),
    }
    table = {}
    for depth, (block, sizes) in imagenet.items():
        table[f'resnet{depth}'] = ModelSpec('imagenet', block, sizes, IMAGENET_WIDTHS, False)
    for depth in (18, 34):
        table[f'plain{depth}'] = dataclasses.replace(table[f'resnet{depth}'], plain=True)
    # n=1 (ResNet-8) is not in the paper: the smallest member, for tests and smoke runs.
    for n in (1, 3, 5, 7, 9, 18, 200):
        table[f'cifar_resnet{6 * n + 2}'] = ModelSpec('cifar', 'basic', (n,) * 3, CIFAR_WIDTHS,
                                                      False)
    for n in (18, 111):
        table[f'cifar_resnet{9 * n + 2}'] = ModelSpec('cifar', 'bottleneck', (n,) * 3,
                                                      CIFAR_WIDTHS, False)
    for n in (3, 5, 7, 9, 18):
        table[f'cifar_plain{6 * n + 2}'] = dataclasses.replace(
            table[f'cifar_resnet{6 * n + 2}'], plain=True)
    return table


_SPECS = _depth_table()
MODEL_NAMES: tuple[str, ...] = tuple(_SPECS)


def model_spec(name: str) -> ModelSpec:
    """The architecture of a model name; ValueError listing every valid name if unknown."""
    if name not in _SPECS:
        raise ValueError(f'unknown model {name!r}; valid names: {", ".join(MODEL_NAMES)}')
    return _SPECS[name]


def model_parts(name: str) -> tuple[str, ...]:
    """The parts of a model that can be frozen as a whole: 'stem', 'stage1'..., 'head'."""
    spec = model_spec(name)
    return ('stem', *(f'stage{i}' for i in range(1, len(spec.stage_sizes) + 1)), 'head')


def part_of(module_name: str) -> str:
    """The part ('stem', 'stage2', 'head') of a top-level module ('stem_bn', 'stage2_block3').
    The final BatchNorm of a pre-activation net goes with the head: frozen stages leave it
    trained, as they leave the classifier."""
    return 'head' if module_name == 'final_bn' else module_name.split('_')[0]
