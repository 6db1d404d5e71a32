"""The network of He et al. (2015): a stem, stages of residual blocks, global average
pooling and a dense head; with pre-activation blocks (He et al. 2016) a BN + ReLU before
the pooling.

Module names are stable, because checkpoints and weight conversion depend on them:
`stem_conv`, `stem_bn` (not in pre-activation nets), `stage{i}_block{j}` (1-based),
`final_bn` (pre-activation nets only) and `head`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.blocks import SHORTCUTS, Block, conv
from resnet_jax.models.layers import XLA_LAYERS, Layers

STEMS = ('imagenet', 'cifar')
# Stem geometry: (kernel, stride, 3x3/2 max pool after it?). Its width is stage_widths[0]:
# 64 for the ImageNet nets and 16 for the CIFAR nets, as in the paper.
_STEMS = {'imagenet': (7, 2, True), 'cifar': (3, 1, False)}


def option(default: Any, doc: str, choices: Sequence[Any] | None = None) -> Any:
    """A field of `ResNet` that is also a field of the experiment config's `model` section,
    by the same name, with this default (resnet_jax.models.architecture derives the
    section, its validation and the conversion from these)."""
    return dataclasses.field(default=default,
                             metadata={'config': True, 'doc': doc, 'choices': choices})


def default_shortcut(stem: str, block: type[Block]) -> str:
    """The papers' shortcut of a residual family: A for the CIFAR ResNets, B for the ImageNet
    ones (the 2015 paper's choice for 50/101/152, and torchvision's; its Table 2 trained
    18/34 with A); B for pre-activation nets, projections where dimensions increase (2016)."""
    return 'A' if stem == 'cifar' and not block.preactivation else 'B'


class ResNet(nn.Module):
    """A ResNet or plain net: stem, stages of `block`, pool, dense head.

    Stage i > 1 starts with a stride-2 block. Parameters and BN statistics are float32;
    `dtype` is the compute dtype of the convolutions and BNs; logits are float32.
    """

    stage_sizes: Sequence[int]
    stage_widths: Sequence[int]
    block: type[Block]  # models.blocks: the contract
    stem: str
    num_classes: int
    shortcut: str | None = option(
        None, "'A' zero-padded identity, 'B' projections where the shape changes, 'C' "
        "projections everywhere (Section 3.3), 'none' (plain nets); None: the family's "
        '(default_shortcut)', (*SHORTCUTS, None))
    zero_init_residual: bool = option(
        False, 'every block starts as its shortcut (the block says how: a zero scale of '
        "the branch's last BN, or a zero last convolution in pre-activation blocks)")
    bn_momentum: float = option(0.9, 'momentum of the running BatchNorm statistics')
    bn_epsilon: float = option(1e-5, 'BatchNorm epsilon')
    bn_group_size: int = option(
        0, "> 0: training BatchNorm statistics over groups of this many examples of each "
        "device's batch ('ghost' BatchNorm: 64 gives the paper's statistics, 128 images over "
        "two GPUs, on one device); 0: over each device's whole batch")
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    # True: every BatchNorm normalises with its running statistics in training too and
    # leaves them as they are (fine-tuning a pretrained net on small batches).
    frozen_batch_norm: bool = False
    # The convolution, BatchNorm and pooling modules (resnet_jax.models.layers; the platform's
    # choice, from resnet_jax.backend).
    layers: Layers = XLA_LAYERS

    def _check(self) -> None:
        if self.stem not in STEMS:
            raise ValueError(f'stem must be one of {list(STEMS)}, got {self.stem!r}')
        if self.shortcut not in (*SHORTCUTS, None):
            raise ValueError(f'shortcut must be one of {list(SHORTCUTS)}, got '
                             f'{self.shortcut!r}')
        if len(self.stage_sizes) != len(self.stage_widths):
            raise ValueError('stage_sizes and stage_widths must have the same length')
        if self.zero_init_residual and self.shortcut == 'none':
            raise ValueError('zero_init_residual on a plain net would zero every block output')

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, return_stages: bool = False) -> Any:
        """Logits [B, num_classes] for images [B, H, W, C]; with `return_stages` also a dict
        {'stem': ..., 'stage1': ..., ...} of the output of each part."""
        self._check()
        norm = functools.partial(
            self.layers.norm,
            use_running_average=not train or self.frozen_batch_norm,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            axis_name=self.bn_axis_name,
            group_size=self.bn_group_size or None,
            dtype=self.dtype,
            param_dtype=jnp.float32,
        )
        preactivation = self.block.preactivation
        kernel, stride, max_pool = _STEMS[self.stem]
        x = jnp.asarray(x, self.dtype)
        x = conv(self.layers, self.stage_widths[0], kernel, stride, self.dtype, 'stem_conv')(x)
        if not preactivation:  # a pre-activation block normalises its input itself
            x = self.layers.norm_relu(norm(name='stem_bn'), x)
        if max_pool:
            x = self.layers.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        stages = {'stem': x}

        stages_config = zip(self.stage_sizes, self.stage_widths, strict=True)
        for i, (size, width) in enumerate(stages_config, start=1):
            for j in range(1, size + 1):
                x = self.block(
                    width=width,
                    strides=2 if i > 1 and j == 1 else 1,
                    shortcut=self.shortcut or default_shortcut(self.stem, self.block),
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    norm=norm,
                    layers=self.layers,
                    name=f'stage{i}_block{j}',
                )(x)
            stages[f'stage{i}'] = x
        if preactivation:
            x = self.layers.norm_relu(norm(name='final_bn'), x)

        # Pool and classify in float32: the mean over H*W and the logits want the precision.
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        # The pooled features, for use as a backbone (resnet_jax.pretrained.features): kept
        # only when apply is called with mutable=['intermediates'].
        self.sow('intermediates', 'pre_logits', x)
        logits = self.layers.dense(self.num_classes, dtype=jnp.float32,
                                   param_dtype=jnp.float32, name='head')(x)
        return (logits, stages) if return_stages else logits


def config_options() -> tuple[dataclasses.Field, ...]:
    """The fields of `ResNet` that the config's `model` section sets (`option`)."""
    return tuple(f for f in dataclasses.fields(ResNet) if f.metadata.get('config'))
