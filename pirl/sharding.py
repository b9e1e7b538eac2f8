"""Device mesh, FSDP parameter sharding, batch sharding and multi-host helpers.

The mesh has two axes, ("data", "fsdp"). Parameters are sharded over "fsdp" only (ZeRO-3 style:
each device holds a slice of every large array and XLA gathers it where it is used); batches are
split over both axes, so every device sees its own rows. Meshes use Auto axis types: shardings are
placement hints that GSPMD propagates, not part of the array types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from pirl import ranges

BATCH_AXES = ("data", "fsdp")
FSDP_MIN_BYTES = 4 * 2**20


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """data × fsdp must equal the device count; −1 in one of them takes what the other leaves."""

    data: int = -1
    fsdp: int = 1
    fsdp_min_bytes: int = FSDP_MIN_BYTES

    def __post_init__(self):
        ranges.check("mesh", self, data=">= 1 or == -1", fsdp=">= 1 or == -1", fsdp_min_bytes=">= 0")


def mesh_shape(config: MeshConfig, num_devices: int) -> tuple[int, int]:
    """(data, fsdp) of the mesh over ``num_devices`` devices (all hosts), −1 resolved."""
    n = num_devices
    data, fsdp = config.data, config.fsdp
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one of data/fsdp may be -1")
    if data == -1:
        data = n // fsdp if fsdp > 0 else 0
    if fsdp == -1:
        fsdp = n // data if data > 0 else 0
    if data < 1 or fsdp < 1 or data * fsdp != n:
        raise ValueError(f"mesh: data={config.data} × fsdp={config.fsdp} does not fit {n} devices")
    return data, fsdp


def make_mesh(config: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(config, len(devices))
    return jax.make_mesh(shape, ("data", "fsdp"), axis_types=(AxisType.Auto,) * 2, devices=devices)


def fsdp_spec(shape: Sequence[int], nbytes: int, fsdp_size: int, min_bytes: int = FSDP_MIN_BYTES) -> PartitionSpec:
    """Shards the largest axis divisible by ``fsdp_size`` (the first one on ties) of arrays of at
    least ``min_bytes``; smaller arrays, and arrays with no divisible axis, are replicated (gathering
    small arrays costs more latency than the memory it saves)."""
    if fsdp_size == 1 or nbytes < min_bytes:
        return PartitionSpec()
    for axis in sorted(range(len(shape)), key=lambda i: -shape[i]):
        if shape[axis] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def param_shardings(mesh: Mesh, params, min_bytes: int = FSDP_MIN_BYTES):
    """NamedSharding per leaf of a tree of arrays or ShapeDtypeStructs, by the FSDP rule.

    Works on a whole TrainState too: optimizer moments have their params' shapes, so the
    shape-based rule places them like the params.
    """
    fsdp_size = mesh.shape["fsdp"]

    def one(x):
        nbytes = int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
        return NamedSharding(mesh, fsdp_spec(x.shape, nbytes, fsdp_size, min_bytes))

    return jax.tree.map(one, params)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over data × fsdp, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_divisible(mesh: Mesh, batch_size: int, what: str = "batch") -> None:
    if batch_size % mesh.size:
        raise ValueError(f"{what} size {batch_size} is not divisible by the {mesh.size} devices of the mesh")


def activation_sharding_constraint(tree):
    """Shards the leading (batch) axis of every activation in ``tree`` over the mesh's batch axes.

    A no-op unless a mesh with those axes is in context (``jax.set_mesh``), so model code can call
    it unconditionally.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(BATCH_AXES) <= set(mesh.axis_names):
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, PartitionSpec(BATCH_AXES)), tree)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins the multi-controller job; on SLURM / TPU pods / Kubernetes JAX finds all three itself.

    A single process (num_processes 1, or nothing given outside a cluster) skips initialization.
    """
    if num_processes == 1:
        return
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except ValueError as e:
        if coordinator_address is None and num_processes is None:
            return  # not in a recognized cluster environment: run as a single process
        raise ValueError(f"jax.distributed.initialize failed for {coordinator_address!r}: {e}") from e


def global_batch(mesh: Mesh, local_tree):
    """Builds global arrays, split over the batch axes, from this host's rows of each leaf.

    Every host passes its own (equal-sized) share; the global batch is the concatenation in process
    order. With one process this is a sharded device_put.
    """
    sharding = batch_sharding(mesh)

    def one(x):
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        check_batch_divisible(mesh, global_shape[0])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(one, local_tree)


def local_rows(x: jax.Array) -> np.ndarray:
    """This host's rows of a batch-sharded global array, in order (the inverse of global_batch)."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    shards = {}
    for s in x.addressable_shards:
        start = s.index[0].start or 0
        shards.setdefault(start, np.asarray(s.data))
    return np.concatenate([shards[k] for k in sorted(shards)])


def host_to_global(mesh: Mesh, x: np.ndarray, axis: int = 0) -> jax.Array:
    """A host array whose ``axis`` holds this host's envs → a global array (envs of all hosts)."""
    if jax.process_count() == 1:
        return jax.numpy.asarray(x)
    moved = np.moveaxis(np.asarray(x), axis, 0)
    return jax.numpy.moveaxis(global_batch(mesh, np.ascontiguousarray(moved)), 0, axis)


# ---------------------------------------------------------------- host-side values across processes
# Each function is a collective when there are several processes: every process calls it, in the
# same order. With one process they reduce to plain numpy.


def to_host(x: jax.Array) -> np.ndarray:
    """The whole value of a (possibly multi-host) global array, as numpy on every host."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def gather_hosts(x: np.ndarray) -> np.ndarray:
    """Every host's rows of ``x`` (leading lengths may differ between hosts), in process order."""
    x = np.asarray(x)
    if jax.process_count() == 1:
        return x
    lengths = np.asarray(multihost_utils.process_allgather(np.int64(len(x))))
    padded = np.zeros((int(lengths.max()), *x.shape[1:]), x.dtype)
    padded[: len(x)] = x
    stacked = np.asarray(multihost_utils.process_allgather(padded))  # [P, max, ...]
    return np.concatenate([stacked[p, :n] for p, n in enumerate(lengths)])


def any_host(flag: bool) -> bool:
    """True where ``flag`` is True on at least one host: keeps hosts' loops in step."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(gather_hosts(np.array([flag])).any())
