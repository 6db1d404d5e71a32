"""The model's layers on a CPU, from `config.cpu_kernels`: the kernels of `kernels/`, or
XLA's ops.

'auto' uses the kernels only where their register tiles were tuned and measured to beat
XLA's ops (`TUNED`: x86-64 with AVX-512); on every other CPU (AVX2 without AVX-512, ARM,
older x86) XLA's. 'kernels' uses them on any CPU they build for, 'conv' only their
convolutions, 'xla' none. Where they cannot be built (no compiler, say), a warning and
XLA's ops.

bfloat16 (`config.dtype`) needs the kernels' bfloat16 convolutions (`compute_dtype`): XLA:CPU
computes bfloat16 convolutions slower than float32 ones, so a run asking for bfloat16
where they do not run computes in float32, and says so once.
"""

import dataclasses
import functools
import logging

import jax.numpy as jnp

from resnet_jax.backend.cpu import KERNEL_CHOICES as CHOICES
from resnet_jax.backend.cpu.kernels import batchnorm, conv, native, pooling
from resnet_jax.models.layers import XLA_LAYERS, Conv, FusingBatchNorm, Layers, fused_norm_relu

# Instruction sets (native.ISAS) on which 'auto' picks the kernels.
TUNED = ('avx512',)
# The CPU kinds, (vendor, bfloat16 instructions of native.BF16_ISAS), on which the bfloat16
# tiles were tested and measured to beat float32 (docs/cpu.md): where 'auto' uses them.
TUNED_BF16 = (('AuthenticAMD', 'avx512_bf16'), ('GenuineIntel', 'amx_bf16'))

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


def compute_dtype(dtype: str, choice: str) -> jnp.dtype:
    """The dtype a model computes in on this CPU for `config.dtype` and `config.cpu_kernels`:
    bfloat16 only where the kernels' bfloat16 convolutions run ('auto': on a CPU kind of
    `TUNED_BF16`), else float32, with a warning."""
    if dtype != 'bfloat16':
        return jnp.dtype(dtype)
    reason = _why_not_bfloat16(choice)
    if reason is None:
        return jnp.dtype(jnp.bfloat16)
    _warn_float32(reason)
    return jnp.dtype(jnp.float32)


def _why_not_bfloat16(choice: str) -> str | None:
    if choice == 'xla':
        return "cpu_kernels='xla' computes bfloat16 convolutions slower than float32 ones"
    if choice == 'auto' and (native.cpu_vendor(), native.host_bf16_isa()) not in TUNED_BF16:
        return ('this kind of CPU has no bfloat16 tiles tested and tuned for it '
                f'(tuned: {TUNED_BF16}; --config.cpu_kernels=kernels uses any it has)')
    try:
        native.load()
    except native.KernelBuildError as e:
        return f'the CPU kernels are unavailable ({e})'
    if not conv.bfloat16_ready():
        return "the CPU kernels have no bfloat16 tiles for this CPU (they need avx512_bf16)"
    if choice == 'auto' and (native.cpu_vendor(), native.loaded_bf16_isa()) not in TUNED_BF16:
        # An AMX CPU whose OS did not grant the tile state: vdpbf16ps alone, untuned there.
        return (f'the CPU kernels run {native.loaded_bf16_isa()} here, not the tuned '
                f'{native.host_bf16_isa()}')
    return None


@functools.cache
def _warn_float32(reason: str) -> None:
    logging.warning('dtype=bfloat16 computes in float32 on this CPU: %s.', reason)

