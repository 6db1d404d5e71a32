"""Starts JAX's distributed runtime when the job runs as several processes.

One scheme, checked in this order:

1. Explicit: `--num_processes N --process_id I --coordinator_address HOST:PORT` (flags of
   `resnet_jax.main`), for any launcher, e.g. several processes on one machine.
   `--num_processes=1` forces a single-process run (no detection).
2. Detected: a launcher that JAX recognises itself announces several processes: a SLURM
   `srun` step of more than one task, an Open MPI `mpirun` of more than one rank, or a
   Cloud TPU VM (every worker of a pod slice; JAX reads the slice's workers from the
   TPU metadata, and on a one-host slice it finds one process). JAX then finds the
   coordinator, the process count and the process id on its own.
3. Otherwise: a single process; nothing is started and nothing changes.

This must run before anything asks JAX for its devices (that starts the backends).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
from collections.abc import Mapping

import jax
from absl import logging


class DistributedSetupError(ValueError):
    """The explicit multi-process flags are incomplete or inconsistent."""


@dataclasses.dataclass(frozen=True)
class ProcessFlags:
    """What the command line said about the processes of the job (None: not given)."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def explicit(self) -> bool:
        return any(value is not None for value in dataclasses.astuple(self))


def _int_env(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ.get(name, '1'))
    except ValueError:
        return 1


def _on_cloud_tpu_vm() -> bool:
    """A TPU VM: libtpu installed and TPU chips visible (as JAX itself checks)."""
    if importlib.util.find_spec('libtpu') is None:
        return False
    return bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))


def detect_launcher(environ: Mapping[str, str] = os.environ) -> str | None:
    """Names the multi-process launcher that started this process, or None.

    A SLURM batch script itself (outside `srun`) has no step variables, so a plain
    `python -m resnet_jax.main` inside `sbatch` stays a single process.
    """
    if 'SLURM_PROCID' in environ and _int_env(environ, 'SLURM_STEP_NUM_TASKS') > 1:
        return 'slurm'
    if _int_env(environ, 'OMPI_COMM_WORLD_SIZE') > 1:
        return 'openmpi'
    if _on_cloud_tpu_vm():
        return 'cloud_tpu'
    return None


def check_flags(flags: ProcessFlags) -> None:
    """Raises DistributedSetupError unless explicit flags describe one process of a job."""
    if not flags.explicit:
        return
    if flags.num_processes is None:
        raise DistributedSetupError(
            '--coordinator_address and --process_id need --num_processes as well')
    if flags.num_processes < 1:
        raise DistributedSetupError(f'--num_processes={flags.num_processes} must be positive')
    if flags.num_processes == 1:
        return
    missing = [f'--{name}' for name in ('coordinator_address', 'process_id')
               if getattr(flags, name) is None]
    if missing:
        raise DistributedSetupError(
            f'--num_processes={flags.num_processes} needs {" and ".join(missing)} too '
            '(the same HOST:PORT on every process; ids 0 .. num_processes-1)')
    if not 0 <= flags.process_id < flags.num_processes:
        raise DistributedSetupError(
            f'--process_id={flags.process_id} must be in 0 .. {flags.num_processes - 1}')


def initialize(flags: ProcessFlags | None = None,
               environ: Mapping[str, str] = os.environ) -> bool:
    """Calls `jax.distributed.initialize` when this process is one of several.

    Returns whether it did. Raises DistributedSetupError on inconsistent flags.
    """
    flags = flags or ProcessFlags()
    check_flags(flags)
    if flags.explicit:
        if flags.num_processes == 1:
            return False
        jax.distributed.initialize(
            coordinator_address=flags.coordinator_address,
            num_processes=flags.num_processes, process_id=flags.process_id)
        how = f'coordinator {flags.coordinator_address}'
    else:
        launcher = detect_launcher(environ)
        if launcher is None:
            return False
        jax.distributed.initialize()  # JAX reads the launcher's environment itself
        how = f'detected {launcher}'
    logging.info('Process %d of %d (%s); %d local of %d devices.', jax.process_index(),
                 jax.process_count(), how, jax.local_device_count(), jax.device_count())
    return True
