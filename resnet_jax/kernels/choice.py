"""Which parts of a model the CPU kernels compute, from `config.cpu_kernels`."""

import dataclasses
import logging
from collections.abc import Callable

from jax import lax

from resnet_jax.kernels import conv, native

# 'auto': on a CPU backend, the convolutions and the BatchNorm/residual/ReLU ops in the
# kernels (XLA's where the kernels cannot be built, with a warning); elsewhere XLA's.
# 'conv': the convolution kernels only. 'xla': XLA's everywhere.
CHOICES = ('auto', 'conv', 'xla')


@dataclasses.dataclass(frozen=True)
class CpuKernels:
    """What the model's layers are computed with (see `models.create_model`)."""

    conv_general_dilated: Callable = lax.conv_general_dilated
    fused_batch_norm: bool = False


def for_platform(choice: str, platform: str) -> CpuKernels:
    """The kernels a model on `platform` uses for `config.cpu_kernels` = `choice`."""
    if choice not in CHOICES:
        raise ValueError(f'cpu_kernels={choice!r}: choose one of {CHOICES}')
    if choice == 'xla' or platform != 'cpu':
        return CpuKernels()
    try:
        native.load()
    except native.KernelBuildError as e:
        logging.warning('CPU kernels unavailable, using XLA\'s ops (slower): %s', e)
        return CpuKernels()
    return CpuKernels(conv.conv_general_dilated, fused_batch_norm=choice == 'auto')
