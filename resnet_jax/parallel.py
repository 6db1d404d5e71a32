"""The device mesh and the shardings of batches and replicated state.

Data parallelism is `jax.jit` over a one-axis mesh; the per-device part of the train
step is written with `jax.shard_map` and explicit collectives over `DATA_AXIS`. On a
multi-process job the mesh spans the devices of every process, and host arrays become
global arrays through `global_array`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resnet_jax import configs

DATA_AXIS = 'data'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh over all devices (of every process) for data parallelism."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays that every device holds whole (parameters, data indices)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of arrays split along their leading (batch) axis over the devices."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def global_array(local: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array of `sharding` from this process's part of it.

    For a replicated sharding every process passes the whole array (and the same one);
    for a batch-sharded one, its own rows. On one process this is `jax.device_put`.
    """
    return jax.make_array_from_process_local_data(sharding, local)


def check_divisible(batch_size: int, mesh: Mesh, field: str) -> None:
    """Raises ConfigError unless a global batch splits evenly over the mesh's devices."""
    devices = mesh.devices.size
    if batch_size % devices:
        raise configs.ConfigError(
            f'{field}={batch_size} does not divide among {devices} devices: set '
            f'--config.{field} to a multiple of {devices}')
