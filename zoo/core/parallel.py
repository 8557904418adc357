"""Data parallelism with jax.sharding: params replicated, batches split along axis "data".

The same code runs on one CPU, one GPU, all local devices, or (with
``jax.distributed.initialize()`` first) many hosts: only the mesh changes.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (0 = all of them)."""
    devices = jax.devices()
    if num_devices < 0 or num_devices > len(devices):
        raise ValueError(f"num_devices must lie in 0..{len(devices)}; got {num_devices}")
    return Mesh(np.array(devices[: num_devices or len(devices)]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def shard_batch(batch, mesh: Mesh):
    """Places a host batch (dict of numpy arrays, leading batch axis) across the mesh."""
    n = mesh.devices.size
    for name, value in batch.items():
        if value.shape[0] % n:
            raise ValueError(
                f"batch field {name!r} has leading size {value.shape[0]}, which must be "
                f"divisible by the number of devices ({n}); adjust data.batch_size"
            )
    return jax.device_put(batch, batch_sharded(mesh))
