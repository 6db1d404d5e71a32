"""Builds the C++ kernels of this package for the host CPU and registers them with XLA.

The sources ship with the package and are compiled into one library on first use, with
the system's C++ compiler (`$CXX`, else `c++`) for this CPU (`-march=native`, or the target
`$RESNET_JAX_KERNEL_MARCH` names), against the
XLA FFI headers of the installed jaxlib. The library is cached under
`$RESNET_JAX_KERNEL_CACHE` (default: `kernels/` of `resnet_jax.user_cache`), keyed by
the sources, compiler, flags, jaxlib and CPU, so a later start, or another process, loads it in
milliseconds. Nothing is built on GPU or TPU hosts unless asked for."""

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import jaxlib
from jax.sharding import PartitionSpec as P

from resnet_jax import file_lock, user_cache

_HERE = Path(__file__).parent
SOURCES = (_HERE / 'conv2d.cc', _HERE / 'conv2d_amx.cc', _HERE / 'batchnorm.cc',
           _HERE / 'pooling.cc')
HEADERS = (_HERE / 'parallel.h', _HERE / 'slabs.h', _HERE / 'amx.h', _HERE / 'conv2d_amx.h')
TARGETS = ('resnet_conv2d_forward', 'resnet_conv2d_weight_grad', 'resnet_conv2d_bf16_forward',
           'resnet_conv2d_bf16_weight_grad', 'resnet_bn_stats',
           'resnet_bn_apply', 'resnet_bn_apply_add', 'resnet_bn_grad_stats',
           'resnet_bn_grad_input', 'resnet_bn_grad_input_dz', 'resnet_bn_stats_bf16',
           'resnet_bn_apply_bf16', 'resnet_bn_apply_add_bf16', 'resnet_bn_grad_stats_bf16',
           'resnet_bn_grad_input_bf16', 'resnet_bn_grad_input_dz_bf16', 'resnet_max_pool_forward',
           'resnet_max_pool_backward', 'resnet_max_pool_forward_bf16',
           'resnet_max_pool_backward_bf16')
FLAGS = ('-O3', '-std=c++17', '-shared', '-fPIC')
# The register tiles a build can have (conv2d.cc's `resnet_kernels_isa`).
ISAS = ('avx512', 'avx2', 'generic')
# The bfloat16 instructions a build's bfloat16 convolutions can use (`resnet_kernels_bf16`),
# best first, with the /proc/cpuinfo flags that say a CPU has them ('amx_bf16': AMX tiles
# where a convolution's shape fits them, vdpbf16ps elsewhere).
BF16_ISAS = {'amx_bf16': ('amx_bf16', 'amx_tile', 'avx512_bf16'),
             'avx512_bf16': ('avx512_bf16',)}


def target_arch() -> str:
    """The `-march` the kernels are built for: `$RESNET_JAX_KERNEL_MARCH`, default `native`
    (this CPU). `x86-64-v3` builds them as for an AVX2 CPU without AVX-512, on any x86-64."""
    return os.environ.get('RESNET_JAX_KERNEL_MARCH', 'native')


def _flags() -> tuple[str, ...]:
    return (*FLAGS, f'-march={target_arch()}')


class KernelBuildError(RuntimeError):
    """The CPU kernels could not be compiled or loaded."""


def cache_dir() -> Path:
    return Path(os.environ.get('RESNET_JAX_KERNEL_CACHE') or user_cache.root() / 'kernels')


def _compiler() -> str:
    return os.environ.get('CXX', 'c++')


@functools.cache
def _cpuinfo() -> str | None:
    """/proc/cpuinfo, read once per process (the flags are asked for at every convolution a
    model traces); None where it cannot be read."""
    try:
        return Path('/proc/cpuinfo').read_text()
    except OSError:
        return None


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU model and its instruction-set flags."""
    text = _cpuinfo()
    if text is None:
        return platform.processor() or platform.machine()
    first = text.split('\n\n', 1)[0]
    keep = ('model name', 'flags', 'Features', 'CPU part')
    return '\n'.join(line for line in first.splitlines() if line.split(':')[0].strip() in keep)


def _cpu_flags() -> set[str] | None:
    """This CPU's instruction-set flags (Linux), None where they cannot be read."""
    text = _cpuinfo()
    return None if text is None else set(text.split())


def cpu_vendor() -> str:
    """This CPU's vendor ('AuthenticAMD', 'GenuineIntel', ...), '' where not known."""
    return next((line.split(':', 1)[1].strip() for line in (_cpuinfo() or '').splitlines()
                 if line.startswith('vendor_id')), '')


def _not_x86() -> bool:
    return platform.machine().lower() not in ('x86_64', 'amd64')


def host_isa() -> str | None:
    """The tiles (`ISAS`) a build for this CPU will have, without building: from the CPU's
    flags on Linux, 'generic' on other machines that are not x86-64; None where that is
    not known (a target other than native, or x86-64 without /proc/cpuinfo)."""
    if target_arch() != 'native':
        return None
    flags = _cpu_flags()
    if flags is None:
        return 'generic' if _not_x86() else None
    if 'avx512f' in flags:
        return 'avx512'
    return 'avx2' if {'avx2', 'fma'} <= flags else 'generic'


def host_bf16_isa() -> str | None:
    """The bfloat16 instructions (`BF16_ISAS`) a build for this CPU will use, '' for none,
    without building; None where that is not known (as `host_isa`)."""
    if target_arch() != 'native':
        return None
    flags = _cpu_flags()
    if flags is None:
        return '' if _not_x86() else None
    return next((isa for isa, needs in BF16_ISAS.items() if set(needs) <= flags), '')


def cpu_has(bf16_isa: str) -> bool:
    """Whether this CPU says it has these bfloat16 instructions: a library built for
    another -march may have tiles that this CPU cannot run."""
    needs = BF16_ISAS.get(bf16_isa)
    return needs is not None and set(needs) <= (_cpu_flags() or set())


def _compiler_version(compiler: str) -> str:
    try:
        result = subprocess.run([compiler, '--version'], capture_output=True, text=True,
                                timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as e:
        raise KernelBuildError(
            f'no working C++ compiler {compiler!r} ({e}); install one (e.g. g++) or set '
            '$CXX, or use --config.cpu_kernels=xla') from e
    return result.stdout


def library_path() -> Path:
    """Where the library for these sources, compiler, jaxlib and CPU is (or will be) cached."""
    compiler = _compiler()
    try:
        sources = [path.read_bytes() for path in (*SOURCES, *HEADERS)]
    except OSError as e:
        raise KernelBuildError(f'a kernel source is missing ({e}); reinstall resnet_jax') from e
    key = hashlib.sha256()
    for part in (*sources, compiler.encode(), _compiler_version(compiler).encode(),
                 ' '.join(_flags()).encode(), jaxlib.__version__.encode(),
                 _cpu_identity().encode()):
        key.update(part)
        key.update(b'\0')
    return cache_dir() / f'kernels-{key.hexdigest()[:16]}.so'


def build() -> Path:
    """Compiles the kernels unless the cache has them; returns the library's path."""
    target = library_path()
    if target.exists():
        return target
    # Processes starting together (the test suite's workers, the processes of a job) build
    # once: the others wait here and find the library.
    with file_lock.exclusive(str(target) + '.lock'):
        return target if target.exists() else _compile(target)


def _compile(target: Path) -> Path:
    # Compile beside the target and rename: a process that builds without the lock still
    # produces a complete library, and none ever loads a half-written one.
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        build_dir = Path(tempfile.mkdtemp(prefix='build-', dir=target.parent))
    except OSError as e:
        raise KernelBuildError(
            f'cannot write the kernel cache {target.parent} ({e}); point '
            '$RESNET_JAX_KERNEL_CACHE at a writable directory') from e
    try:
        # One compiler per source, side by side (the build is most of a first start), then
        # one link.
        objects = [build_dir / f'{source.stem}.o' for source in SOURCES]
        _run_compiler([[_compiler(), *_flags(), f'-I{jax.ffi.include_dir()}', '-c', str(source),
                        '-o', str(obj)] for source, obj in zip(SOURCES, objects, strict=True)])
        library = build_dir / 'kernels.so'
        _run_compiler([[_compiler(), *_flags(), *map(str, objects), '-o', str(library)]])
        os.replace(library, target)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    return target


def _run_compiler(commands: Sequence[Sequence[str]]) -> None:
    """Runs the commands at once; raises KernelBuildError with the first failure's output."""
    processes = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for command in commands]
    try:
        errors = [process.communicate(timeout=600)[1] for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    for command, process, stderr in zip(commands, processes, errors, strict=True):
        if process.returncode != 0:
            raise KernelBuildError(
                f'compiling the kernels failed ({" ".join(command)}):\n{stderr[-3000:]}')


def _open(path: Path) -> tuple[ctypes.CDLL, dict[str, object]]:
    library = ctypes.CDLL(str(path))
    library.resnet_kernels_isa.restype = ctypes.c_char_p
    library.resnet_kernels_bf16.restype = ctypes.c_char_p
    library.resnet_kernels_set_amx.argtypes = (ctypes.c_int,)
    return library, {name: getattr(library, name) for name in TARGETS}


def use_amx(on: bool) -> None:
    """Whether the bfloat16 convolutions use AMX tiles where the library has them (the
    default) or vdpbf16ps only: for tests and benchmarks that compare the two. Takes effect
    at the next call of a kernel, compiled or not."""
    _load()[2].resnet_kernels_set_amx(int(on))


@functools.cache
def loaded_bf16_isa() -> str:
    """The bfloat16 instructions of the loaded library's convolutions ('' for none)."""
    return _load()[1]


def load() -> str:
    """Builds (if needed) and loads the kernels and registers them as XLA:CPU FFI targets;
    returns the instruction set whose tiles they were built with (`ISAS`). Raises
    KernelBuildError if that fails; a later call tries again."""
    return _load()[0]


@functools.cache
def _load() -> tuple[str, str, ctypes.CDLL]:
    """`load`, the bfloat16 instructions of the library (`BF16_ISAS`, '' for none), and the
    library.

    A cached library that does not load (a truncated file, say) is rebuilt once. Raises
    KernelBuildError if that fails; a later call tries again.
    """
    path = build()
    try:
        library, handlers = _open(path)
    except (OSError, AttributeError):
        path.unlink(missing_ok=True)
        path = build()
        try:
            library, handlers = _open(path)
        except (OSError, AttributeError) as e:
            raise KernelBuildError(f'cannot load the kernels just built at {path}: {e}') from e
    for name, handler in handlers.items():
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(handler), platform='cpu')
    return (library.resnet_kernels_isa().decode(), library.resnet_kernels_bf16().decode(),
            library)


def for_dtype(target: str, dtype: Any) -> str:
    """The kernel `target` for activations of `dtype`: bfloat16 ones have a `_bf16` twin
    (BatchNorm and pooling)."""
    return target + '_bf16' if dtype == jnp.bfloat16 else target


def call(target: str, shapes: Sequence[Sequence[int]], *args: jax.Array,
         dtype: Any = jnp.float32, **attributes: Any) -> list[jax.Array]:
    """Calls the kernel `target` on `args`; returns arrays of `shapes` and `dtype` (one for
    all, or a sequence of one per shape).

    Inside `shard_map` the results live on the same mesh as the first argument and vary
    over the same manual axes: each device's kernel computes its own share.
    """
    load()
    operand = jax.typeof(args[0])
    mesh = operand.sharding.mesh
    dtypes = dtype if isinstance(dtype, (list, tuple)) else [dtype] * len(shapes)
    results = [jax.ShapeDtypeStruct(
        tuple(shape), dtype, sharding=jax.sharding.NamedSharding(mesh, P()),
        manual_axis_type=operand.manual_axis_type)
        for shape, dtype in zip(shapes, dtypes, strict=True)]
    return jax.ffi.ffi_call(target, results)(*args, **attributes)
