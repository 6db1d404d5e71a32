"""Which parts of a model the CPU kernels compute, from `config.cpu_kernels`."""

import dataclasses
import logging
from collections.abc import Callable

import flax.linen as nn
from jax import lax

from resnet_jax.kernels import conv, native, pooling

# 'auto': on a CPU backend, the convolutions, the BatchNorm/residual/ReLU ops and the max
# pooling in the kernels (XLA's where the kernels cannot be built, with a warning);
# elsewhere XLA's.
# 'conv': the convolution kernels only. 'xla': XLA's everywhere.
CHOICES = ('auto', 'conv', 'xla')


@dataclasses.dataclass(frozen=True)
class CpuKernels:
    """What computes a model's kxk and 1x1 convolutions (lax's signatures), BatchNorms (with the
    residual addition and ReLU after them: `batch_norm.BatchNorm(kernels=...)`) and max
    pooling (flax's signature). The defaults are XLA's ops."""

    conv_general_dilated: Callable = lax.conv_general_dilated
    dot_general: Callable = lax.dot_general  # the 1x1 convolutions' (lax's signature)
    fused_batch_norm: bool = False
    max_pool: Callable = nn.max_pool


XLA_OPS = CpuKernels()


def for_platform(choice: str, platform: str) -> CpuKernels:
    """The kernels a model on `platform` uses for `config.cpu_kernels` = `choice`."""
    if choice not in CHOICES:
        raise ValueError(f'cpu_kernels={choice!r}: choose one of {CHOICES}')
    if choice == 'xla' or platform != 'cpu':
        return XLA_OPS
    try:
        native.load()
    except native.KernelBuildError as e:
        logging.warning('CPU kernels unavailable, using XLA\'s ops (slower): %s', e)
        return XLA_OPS
    convolutions = CpuKernels(conv.conv_general_dilated, conv.dot_general)
    if choice == 'conv':
        return convolutions
    return dataclasses.replace(convolutions, fused_batch_norm=True, max_pool=pooling.max_pool)
