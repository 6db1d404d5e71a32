"""The device mesh and the shardings of batches and replicated state.

Data parallelism is `jax.jit` over a one-axis mesh; the per-device part of the train
step is written with `jax.shard_map` and explicit collectives over `DATA_AXIS`. On a
multi-process job the mesh spans the devices of every process, and host arrays become
global arrays through `global_array`.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from resnet_jax import configs

DATA_AXIS = 'data'


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh over all devices (of every process) for data parallelism."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def platform(mesh: Mesh) -> str:
    """The platform of the mesh's devices: 'cpu', 'gpu' or 'tpu'."""
    return mesh.devices.flat[0].platform


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


class InFlight:
    """Bounds how far the host runs ahead of the devices: `add` the result of each
    dispatched step; past `limit` pending results, it waits for the oldest and returns it
    from `add` (the rest from `drain`), fetched to the host. With limit 0, `add` waits for
    each result at once.

    XLA:CPU starts each device's part of a multi-device computation on one thread pool and,
    with many computations queued on a device, blocks a pool thread until one of them
    finishes. When simulated CPU devices share a few threads, a device waiting in a
    collective for another, plus such blocked launches, can hold every thread, so that the
    computations they wait for never run: a deadlock, which XLA ends by aborting the process
    after its collective timeout. A couple of steps in flight keep every device busy without
    ever queueing that deep.
    """

    def __init__(self, limit: int = 2):
        if limit < 0:
            raise ValueError(f'InFlight needs a limit of at least 0, got {limit}')
        self.limit = limit
        self._pending: collections.deque = collections.deque()

    def add(self, result: Any) -> list[Any]:
        """Adds a dispatched result; returns those that had to be waited for, fetched."""
        self._pending.append(result)
        return [jax.device_get(self._pending.popleft())
                for _ in range(len(self._pending) - self.limit)]

    def drain(self) -> list[Any]:
        """Waits for every pending result; returns them fetched, oldest first."""
        done = jax.device_get(list(self._pending))
        self._pending.clear()
        return done
