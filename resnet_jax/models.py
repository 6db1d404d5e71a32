"""Every ResNet of He et al. (2015), "Deep Residual Learning for Image Recognition".

One table of depths (`model_spec`) covers the ImageNet nets (18 to 200 layers, Table 1),
the CIFAR-10 nets (6n+2 layers, Section 4.2) and their plain twins. Block type, shortcut
option (A/B/C, Section 3.3), stride placement (v1 or v1.5) and the compute dtype are
configuration of one `ResNet` module, not copies of code.

Module names are stable, because checkpoints and weight conversion depend on them:
`stem_conv`, `stem_bn`, `stage{i}_block{j}` (1-based; inside: `conv1`, `bn1`, ...,
`shortcut_conv`, `shortcut_bn`) and `head`.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.layers import XLA_LAYERS, Layers

BLOCKS = ('basic', 'bottleneck')
STEMS = ('imagenet', 'cifar')
SHORTCUTS = ('A', 'B', 'C', 'none')
VARIANTS = ('v1', 'v1.5')

# He et al. (2015, "Delving deep into rectifiers") with fan-out, as the paper and torchvision:
# an untruncated normal with variance 2 / (kh * kw * out_channels).
he_normal = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# Stem geometry: (kernel, stride, 3x3/2 max pool after it?). Its width is stage_widths[0]:
# 64 for the ImageNet nets and 16 for the CIFAR nets, as in the paper.
_STEMS = {'imagenet': (7, 2, True), 'cifar': (3, 1, False)}


def _conv(layers: Layers, features: int, kernel: int, strides: int, dtype: Any,
          name: str) -> nn.Module:
    """A kxk convolution without bias (BN follows) and torchvision's symmetric padding k//2.

    With that padding a stride-s layer maps a side H to ceil(H/s), as the subsampling of
    shortcut A does, so both paths of a block always agree in shape.
    """
    pad = kernel // 2
    return layers.conv(
        features,
        (kernel, kernel),
        strides=(strides, strides),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=he_normal,
        name=name,
    )


def _shortcut(
    x: jax.Array, features: int, strides: int, kind: str, dtype: Any, norm: Callable,
    layers: Layers,
) -> jax.Array | None:
    """The skip path of a block: identity, zero-padded identity (A), projection (B, C), or
    None for a plain block (shortcut 'none')."""
    if kind == 'none':
        return None
    changes_shape = strides != 1 or x.shape[-1] != features
    if kind == 'C' or (kind == 'B' and changes_shape):
        x = _conv(layers, features, 1, strides, dtype, 'shortcut_conv')(x)
        return norm(name='shortcut_bn')(x)
    if kind == 'A' and changes_shape:
        if x.shape[-1] > features:
            raise ValueError('shortcut A can only add channels, not remove them')
        # Parameter-free: subsample like the strided conv, fill the new channels with zeros.
        x = x[:, ::strides, ::strides]
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, features - x.shape[-1])))
    return x


class _Block(nn.Module):
    """Fields shared by both block types; `norm` is a configured `layers.norm`:
    `norm(name=...)(x, residual, relu=True)` is `relu(BN(x) + residual)`."""

    width: int
    strides: int
    shortcut: str
    variant: str
    zero_init_residual: bool
    dtype: Any
    norm: Callable
    layers: Layers

    expansion: ClassVar[int]

    def _conv3x3(self, strides: int, name: str) -> nn.Module:
        return _conv(self.layers, self.width, 3, strides, self.dtype, name)

    def _merge(self, x: jax.Array, branch: jax.Array, bn_name: str) -> jax.Array:
        """The branch's last BN, the addition of the shortcut and the ReLU after it (v1
        post-activation); plain blocks have no addition. A zero scale of that BN
        (`zero_init_residual`) makes the block start as its shortcut."""
        skip = _shortcut(x, self.width * self.expansion, self.strides, self.shortcut,
                         self.dtype, self.norm, self.layers)
        init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
        return self.norm(scale_init=init, name=bn_name)(branch, skip, relu=True)


class BasicBlock(_Block):
    """Two 3x3 convolutions (ResNet-18/34 and the CIFAR nets); stride on the first."""

    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = self._conv3x3(self.strides, 'conv1')(x)
        y = self.norm(name='bn1')(y, relu=True)
        y = self._conv3x3(1, 'conv2')(y)
        return self._merge(x, y, 'bn2')


class BottleneckBlock(_Block):
    """1x1 reduce, 3x3, 1x1 expand (x4). v1 strides the first 1x1 (paper), v1.5 the 3x3."""

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s1, s2 = (self.strides, 1) if self.variant == 'v1' else (1, self.strides)
        y = _conv(self.layers, self.width, 1, s1, self.dtype, 'conv1')(x)
        y = self.norm(name='bn1')(y, relu=True)
        y = self._conv3x3(s2, 'conv2')(y)
        y = self.norm(name='bn2')(y, relu=True)
        y = _conv(self.layers, self.width * self.expansion, 1, 1, self.dtype, 'conv3')(y)
        return self._merge(x, y, 'bn3')


_BLOCK_CLASSES: dict[str, type[_Block]] = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}


def _check_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ValueError(f'{field} must be one of {list(choices)}, got {value!r}')


class ResNet(nn.Module):
    """A v1 (post-activation) ResNet or plain net: stem, stages of blocks, pool, dense head.

    Stage i > 1 starts with a stride-2 block. Parameters and BN statistics are float32;
    `dtype` is the compute dtype of the convolutions and BNs; logits are float32.
    """

    stage_sizes: Sequence[int]
    stage_widths: Sequence[int]
    block: str
    stem: str
    num_classes: int
    shortcut: str
    variant: str = 'v1'
    zero_init_residual: bool = False
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    bn_axis_name: str | None = None
    # Training BatchNorm statistics over groups of this many examples of each device's
    # batch ("ghost" BatchNorm; layers.BatchNormAddRelu.group_size); None: the whole batch.
    bn_group_size: int | None = None
    # True: every BatchNorm normalises with its running statistics in training too and
    # leaves them as they are (fine-tuning a pretrained net on small batches).
    frozen_batch_norm: bool = False
    # The convolution, BatchNorm and pooling modules (resnet_jax.layers; the platform's
    # choice, from resnet_jax.backend).
    layers: Layers = XLA_LAYERS

    def _check(self) -> None:
        _check_choice('block', self.block, BLOCKS)
        _check_choice('stem', self.stem, STEMS)
        _check_choice('shortcut', self.shortcut, SHORTCUTS)
        _check_choice('variant', self.variant, VARIANTS)
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
            group_size=self.bn_group_size,
            dtype=self.dtype,
            param_dtype=jnp.float32,
        )
        kernel, stride, max_pool = _STEMS[self.stem]
        x = jnp.asarray(x, self.dtype)
        x = _conv(self.layers, self.stage_widths[0], kernel, stride, self.dtype, 'stem_conv')(x)
        x = norm(name='stem_bn')(x, relu=True)
        if max_pool:
            x = self.layers.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        stages = {'stem': x}

        block_cls = _BLOCK_CLASSES[self.block]
        stages_config = zip(self.stage_sizes, self.stage_widths, strict=True)
        for i, (size, width) in enumerate(stages_config, start=1):
            for j in range(1, size + 1):
                x = block_cls(
                    width=width,
                    strides=2 if i > 1 and j == 1 else 1,
                    shortcut=self.shortcut,
                    variant=self.variant,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    norm=norm,
                    layers=self.layers,
                    name=f'stage{i}_block{j}',
                )(x)
            stages[f'stage{i}'] = x

        # Pool and classify in float32: the mean over H*W and the logits want the precision.
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        # The pooled features, for use as a backbone (resnet_jax.features): kept only when
        # apply is called with mutable=['intermediates'].
        self.sow('intermediates', 'pre_logits', x)
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                          name='head')(x)
        return (logits, stages) if return_stages else logits


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One row of the depth table: the architecture a model name stands for."""

    stem: str
    block: str
    stage_sizes: tuple[int, ...]
    stage_widths: tuple[int, ...]
    plain: bool  # no shortcuts at all (the paper's "plain" baselines)


def _depth_table() -> dict[str, ModelSpec]:
    imagenet_widths = (64, 128, 256, 512)
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
        table[f'resnet{depth}'] = ModelSpec('imagenet', block, sizes, imagenet_widths, False)
    for depth in (18, 34):
        table[f'plain{depth}'] = dataclasses.replace(table[f'resnet{depth}'], plain=True)
    # CIFAR-10 (Section 4.2): 6n+2 layers, 3 stages of n basic blocks, 16/32/64 filters.
    # n=1 (ResNet-8) is not in the paper: the smallest member, for tests and smoke runs.
    for n in (1, 3, 5, 7, 9, 18, 200):
        table[f'cifar_resnet{6 * n + 2}'] = ModelSpec(
            'cifar', 'basic', (n,) * 3, (16, 32, 64), False)
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


def create_model(
    name: str,
    *,
    num_classes: int,
    shortcut: str | None = None,
    variant: str = 'v1',
    zero_init_residual: bool = False,
    dtype: Any = jnp.float32,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    bn_axis_name: str | None = None,
    bn_group_size: int | None = None,
    frozen_batch_norm: bool = False,
    layers: Layers = XLA_LAYERS,
) -> ResNet:
    """The ResNet called `name` (one of MODEL_NAMES).

    `shortcut=None` picks the family's default: 'B' for the ImageNet ResNets (the paper's
    choice for 50/101/152 and torchvision's; note the paper's Table 2 trained 18/34 with 'A'),
    'A' for the CIFAR ResNets (as the paper), 'none' for plain nets. The torchvision-equivalent
    ImageNet nets are shortcut 'B' with variant 'v1.5'.
    """
    spec = model_spec(name)
    if shortcut is None:
        shortcut = 'none' if spec.plain else ('A' if spec.stem == 'cifar' else 'B')
    _check_choice('shortcut', shortcut, SHORTCUTS)
    if spec.plain and shortcut != 'none':
        raise ValueError(f'{name} is a plain net: it takes shortcut "none", not {shortcut!r}')
    if not spec.plain and shortcut == 'none':
        raise ValueError(f'{name} is a residual net: for no shortcuts use its plain twin '
                         '(a plain* or cifar_plain* name)')
    model = ResNet(
        stage_sizes=spec.stage_sizes,
        stage_widths=spec.stage_widths,
        block=spec.block,
        stem=spec.stem,
        num_classes=num_classes,
        shortcut=shortcut,
        variant=variant,
        zero_init_residual=zero_init_residual,
        dtype=dtype,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        bn_axis_name=bn_axis_name,
        bn_group_size=bn_group_size,
        frozen_batch_norm=frozen_batch_norm,
        layers=layers,
    )
    model._check()  # fail here, not at the first trace
    return model



def from_config(config: Any, num_classes: int, *, layers: Layers = XLA_LAYERS,
                dtype: Any = None, bn_axis_name: str | None = None) -> ResNet:
    """The model that an experiment config's `model` section, `dtype` (unless `dtype` is
    given) and `frozen_batch_norm` describe, built from `layers`."""
    model = config.model
    return create_model(
        model.name,
        num_classes=num_classes,
        shortcut=model.shortcut,
        variant=model.variant,
        zero_init_residual=model.zero_init_residual,
        dtype=jnp.dtype(dtype or config.dtype),
        bn_momentum=model.bn_momentum,
        bn_epsilon=model.bn_epsilon,
        bn_axis_name=bn_axis_name,
        bn_group_size=model.bn_group_size or None,
        frozen_batch_norm=config.frozen_batch_norm,
        layers=layers,
    )

def model_parts(name: str) -> tuple[str, ...]:
    """The parts of a model that can be frozen as a whole: 'stem', 'stage1'..., 'head'."""
    spec = model_spec(name)
    return ('stem', *(f'stage{i}' for i in range(1, len(spec.stage_sizes) + 1)), 'head')


def part_of(module_name: str) -> str:
    """The part ('stem', 'stage2', 'head') of a top-level module ('stem_bn', 'stage2_block3')."""
    return module_name.split('_')[0]
