"""Residual blocks: the paper's two (Figure 5) and the pre-activation pair of He et al. (2016),
"Identity Mappings in Deep Residual Networks".

The contract of a block, which `ResNet` relies on and which a block defined elsewhere (an
experiment file: experiments/se_resnet.py) follows:

- It is a `Block`: a flax module built with the fields below and called as
  `block(x) -> y` on NHWC activations in the compute dtype. `y` has
  `width * expansion` channels and a side of ceil(side / strides).
- `width`: its inner width (the stage's width); `strides`: 1, or 2 for a stage's first
  block; `shortcut`: 'A', 'B', 'C' or 'none' (`Block.skip` makes that path; None in a
  plain net); `zero_init_residual`: start as its shortcut (each block decides how);
  `dtype`: the compute dtype (parameters stay float32); `layers`: the injected building
  blocks (`resnet_jax.models.layers.Layers`: convolution, BatchNorm, `norm_relu`, dense, pooling),
  which are all a block may compute with besides jax.numpy, so that every platform can
  substitute its own; `norm`: `layers.norm` configured for this run (train or eval,
  momentum, epsilon, statistics' axis): `self.norm(name=...)` is a BatchNorm module.
- Class attributes: `expansion` (output channels over width), `preactivation` (True:
  its input is not normalised, so the network ends with BN + ReLU before the pooling, and
  its stem convolution has none after it), `three_by_three_norms` (the BatchNorms whose
  output is the response of a 3x3 layer: resnet_jax.paper.layer_responses); the package's
  bottlenecks also `stride_on_3x3` (config `variant`: `with_variant`).
- Helpers for a block's code: `self.conv(features, kernel, strides, name)`,
  `self.skip(x)`, `self.last_norm(name)` (the BN that `zero_init_residual` zeroes);
  `BasicBlock.branch(x)` is the basic block's residual function up to its last BN.

Module names are stable, because checkpoints and weight conversion depend on them:
`conv1`, `bn1`, ..., `shortcut_conv`, `shortcut_bn`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.layers import Layers

SHORTCUTS = ('A', 'B', 'C', 'none')

# He et al. (2015, "Delving deep into rectifiers") with fan-out, as the paper and torchvision:
# an untruncated normal with variance 2 / (kh * kw * out_channels).
he_normal = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv(layers: Layers, features: int, kernel: int, strides: int, dtype: Any, name: str,
         kernel_init: Callable = he_normal) -> nn.Module:
    """A kxk convolution without bias (BN follows) and torchvision's symmetric padding k//2.

    With that padding a stride-s layer maps a side H to ceil(H/s), as the subsampling of
    shortcut A does, so both paths of a block always agree in shape.
    """
    pad = kernel // 2
    return layers.conv(features, (kernel, kernel), strides=(strides, strides),
                       padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                       param_dtype=jnp.float32, kernel_init=kernel_init, name=name)


def shortcut_path(x: jax.Array, features: int, strides: int, kind: str, dtype: Any,
             layers: Layers, norm: Callable | None) -> jax.Array | None:
    """The skip path of a block: identity, zero-padded identity (A), projection (B, C), or
    None for a plain block (kind 'none'). A projection is a 1x1 convolution followed by
    `norm` (None: the convolution alone, as in pre-activation blocks)."""
    if kind == 'none':
        return None
    if is_projection(kind, x.shape[-1], features, strides):
        x = conv(layers, features, 1, strides, dtype, 'shortcut_conv')(x)
        return x if norm is None else norm(name='shortcut_bn')(x)
    if kind == 'A' and (strides != 1 or x.shape[-1] != features):
        if x.shape[-1] > features:
            raise ValueError('shortcut A can only add channels, not remove them')
        # Parameter-free: subsample like the strided conv, fill the new channels with zeros.
        x = x[:, ::strides, ::strides]
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - x.shape[-1])))
    return x


def is_projection(kind: str, in_features: int, features: int, strides: int) -> bool:
    """Whether shortcut `kind` is a 1x1 convolution here: always for C, for B where the
    shape changes."""
    return kind == 'C' or (kind == 'B' and (strides != 1 or in_features != features))


class Block(nn.Module):
    """What every block is given (see the module docstring)."""

    width: int
    strides: int
    shortcut: str
    zero_init_residual: bool
    dtype: Any
    norm: Callable
    layers: Layers

    expansion: ClassVar[int] = 1
    preactivation: ClassVar[bool] = False
    three_by_three_norms: ClassVar[tuple[str, ...]] = ()

    def conv(self, features: int, kernel: int, strides: int, name: str,
             kernel_init: Callable = he_normal) -> nn.Module:
        return conv(self.layers, features, kernel, strides, self.dtype, name, kernel_init)

    def skip(self, x: jax.Array, *, normalised: bool = True) -> jax.Array | None:
        """This block's shortcut of `x` (a projection BN-normalised unless not `normalised`)."""
        return shortcut_path(x, self.width * self.expansion, self.strides, self.shortcut,
                        self.dtype, self.layers, self.norm if normalised else None)

    def preactivated_skip(self, x: jax.Array, preactivated: jax.Array) -> jax.Array | None:
        """A pre-activation block's shortcut: a projection (without BN) of its normalised
        input `preactivated`, as He et al. (2016); otherwise of `x` itself."""
        projects = is_projection(self.shortcut, x.shape[-1], self.width * self.expansion,
                                 self.strides)
        return self.skip(preactivated if projects else x, normalised=False)

    def last_norm(self, name: str) -> nn.Module:
        """The branch's last BatchNorm; a zero scale (`zero_init_residual`) makes a
        post-activation block start as its shortcut."""
        init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        return self.norm(scale_init=init, name=name)


class BasicBlock(Block):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets); stride on the first."""

    three_by_three_norms = ('bn1', 'bn2')

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.branch(x)
        # relu(BN(y) + shortcut): the end of the paper's Figure 2 (no addition in a plain net).
        return self.layers.norm_relu(self.last_norm('bn2'), y, self.skip(x))

    def branch(self, x: jax.Array) -> jax.Array:
        """conv3x3-BN-ReLU-conv3x3: the residual function up to its last BN."""
        y = self.conv(self.width, 3, self.strides, 'conv1')(x)
        y = self.layers.norm_relu(self.norm(name='bn1'), y)
        return self.conv(self.width, 3, 1, 'conv2')(y)


class BottleneckBlock(Block):
    """1x1 reduce, 3x3, 1x1 expand (x4). The paper strides the first 1x1 ('v1');
    `stride_on_3x3` (variant 'v1.5', torchvision's) the 3x3."""

    expansion = 4
    three_by_three_norms = ('bn2',)
    stride_on_3x3: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s1, s2 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
        y = self.conv(self.width, 1, s1, 'conv1')(x)
        y = self.layers.norm_relu(self.norm(name='bn1'), y)
        y = self.conv(self.width, 3, s2, 'conv2')(y)
        y = self.layers.norm_relu(self.norm(name='bn2'), y)
        y = self.conv(self.width * self.expansion, 1, 1, 'conv3')(y)
        return self.layers.norm_relu(self.last_norm('bn3'), y, self.skip(x))


class PreActBasicBlock(Block):
    """He et al. (2016), Figure 4(e): BN-ReLU-conv3x3, BN-ReLU-conv3x3, plus the shortcut,
    with nothing after the addition. A projection shortcut takes the normalised input,
    as the paper's code does; `zero_init_residual` zeroes the last convolution."""

    preactivation = True
    three_by_three_norms = ('bn2',)  # bn1 follows the previous block's addition

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.layers.norm_relu(self.norm(name='bn1'), x)
        skip = self.preactivated_skip(x, y)
        y = self.conv(self.width, 3, self.strides, 'conv1')(y)
        y = self.layers.norm_relu(self.norm(name='bn2'), y)
        y = self.conv(self.width, 3, 1, 'conv2', _last_conv_init(self))(y)
        return y if skip is None else y + skip


class PreActBottleneckBlock(Block):
    """He et al. (2016): BN-ReLU-conv1x1, BN-ReLU-conv3x3, BN-ReLU-conv1x1 (x4), plus the
    shortcut; strides as `BottleneckBlock`."""

    expansion = 4
    preactivation = True
    three_by_three_norms = ('bn3',)  # the response of conv2, normalised before conv3
    stride_on_3x3: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s1, s2 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
        y = self.layers.norm_relu(self.norm(name='bn1'), x)
        skip = self.preactivated_skip(x, y)
        y = self.conv(self.width, 1, s1, 'conv1')(y)
        y = self.layers.norm_relu(self.norm(name='bn2'), y)
        y = self.conv(self.width, 3, s2, 'conv2')(y)
        y = self.layers.norm_relu(self.norm(name='bn3'), y)
        y = self.conv(self.width * self.expansion, 1, 1, 'conv3', _last_conv_init(self))(y)
        return y if skip is None else y + skip


def _last_conv_init(block: Block) -> Callable:
    return nn.initializers.zeros if block.zero_init_residual else he_normal


BLOCKS: dict[str, type[Block]] = {
    'basic': BasicBlock,
    'bottleneck': BottleneckBlock,
    'preact_basic': PreActBasicBlock,
    'preact_bottleneck': PreActBottleneckBlock,
}
VARIANTS = ('v1', 'v1.5')


@functools.cache
def with_variant(block: type[Block], variant: str) -> type[Block]:
    """`block` with the bottleneck's stride where `variant` puts it ('v1': the first 1x1,
    as the paper; 'v1.5': the 3x3); blocks without a bottleneck are returned as they are."""
    if variant not in VARIANTS:
        raise ValueError(f'variant must be one of {list(VARIANTS)}, got {variant!r}')
    if not hasattr(block, 'stride_on_3x3') or block.stride_on_3x3 == (variant == 'v1.5'):
        return block
    return type(f'{block.__name__}_{variant.replace(".", "_")}', (block,),
                {'stride_on_3x3': variant == 'v1.5', '__module__': block.__module__,
                 '__doc__': block.__doc__})
