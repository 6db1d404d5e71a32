"""The model's layers on a CPU, from `config.cpu_kernels`: the kernels of `kernels/`, or
XLA's ops.

'auto' uses the kernels only where their register tiles were tuned and measured to beat
XLA's ops (`TUNED`: x86-64 with AVX-512); on every other CPU (AVX2 without AVX-512, ARM,
older x86) XLA's. 'kernels' uses them on any CPU they build for, 'conv' only their
convolutions, 'xla' none. Where they cannot be built (no compiler, say), a warning and
XLA's ops.
"""

import dataclasses
import functools
import logging

from resnet_jax.cpu.kernels import batchnorm, conv, native, pooling
from resnet_jax.layers import XLA_LAYERS, Conv, FusingBatchNorm, Layers, fused_norm_relu

CHOICES = ('auto', 'kernels', 'conv', 'xla')
# Instruction sets (native.ISAS) on which 'auto' picks the kernels.
TUNED = ('avx512',)

_CONVOLUTIONS = Layers(
    conv=functools.partial(Conv, conv_general_dilated=conv.conv_general_dilated,
                           dot_general=conv.dot_general))
_ALL_KERNELS = dataclasses.replace(
    _CONVOLUTIONS, norm=functools.partial(FusingBatchNorm, fused=batchnorm),
    norm_relu=fused_norm_relu, max_pool=pooling.max_pool)


def layers(choice: str) -> Layers:
    """The layers of a model on the CPU for `config.cpu_kernels` = `choice`."""
    if choice not in CHOICES:
        raise ValueError(f'cpu_kernels={choice!r}: choose one of {CHOICES}')
    if choice == 'xla' or (choice == 'auto' and not _tuned(native.host_isa())):
        return XLA_LAYERS  # (without building them: they would not be used)
    try:
        isa = native.load()
    except native.KernelBuildError as e:
        logging.warning("CPU kernels unavailable, using XLA's ops: %s", e)
        return XLA_LAYERS
    if choice == 'auto' and not _tuned(isa):
        return XLA_LAYERS
    return _CONVOLUTIONS if choice == 'conv' else _ALL_KERNELS


def _tuned(isa: str | None) -> bool:
    """Whether 'auto' uses the kernels built with `isa`'s tiles (None: not known yet)."""
    if isa is None or isa in TUNED:
        return True
    logging.info("The CPU kernels are not tuned for %s; using XLA's ops "
                 '(--config.cpu_kernels=kernels uses them anyway)', isa)
    return False
