"""Meshes, shardings and multi-process helpers: sharding is data, not code paths.

Every array of a training run is a global `jax.Array` on one `Mesh` with axes ('data', 'fsdp'):

    batches      leading (example) axis split over all devices: PartitionSpec(('data', 'fsdp'))
    parameters   replicated, or with FSDP (ZeRO-3 style) each array's largest axis divisible by the 'fsdp' size
                 split over 'fsdp' (arrays smaller than `min_fsdp_size` stay replicated); optimizer moments and EMA
                 parameters have the parameters' shapes and so get the same shardings

XLA's SPMD partitioner inserts the all-gathers and reduce-scatters the step needs. The same jitted function runs
on 1 CPU, 8 virtual CPU devices, a GPU node or a TPU pod slice; only the mesh changes. Each process feeds its own
block of the global batch (`global_batch`), which `diffax.data` pipelines produce in process order.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp")
BATCH_AXES = MESH_AXES  # The batch is split over both axes: FSDP is data parallelism with sharded parameters.


class ClusterError(RuntimeError):
    """The environment describes a multi-process run, but JAX's distributed runtime did not start."""


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Starts JAX's multi-process runtime when the run spans several processes; a no-op for a single process.

    With no arguments, `jax.distributed.initialize()` reads the cluster from the environment (TPU pod slices,
    SLURM with several tasks, Open MPI); if no cluster is detected this stays a single-process run. If one is
    detected (`cluster_in_environment`) and the initialization fails, that is an error: otherwise each worker
    would quietly train alone. Explicit arguments (e.g. two processes on 127.0.0.1) take precedence.
    """
    explicit = coordinator_address is not None
    if explicit and (num_processes is None or process_id is None):
        raise ValueError(f"coordinator_address {coordinator_address!r} needs num_processes and process_id, got "
                         f"num_processes={num_processes}, process_id={process_id}")
    if hasattr(jax.config, "jax_cpu_collectives_implementation"):  # CPU processes talk through gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as error:
            cluster = cluster_in_environment()
            if cluster:
                raise ClusterError(f"jax.distributed failed to start on this {cluster}: {error}") from error
            logging.info("single-process run (jax.distributed: %s)", error)
            return
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def cluster_in_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """"TPU pod slice" or "SLURM job of N tasks" when the environment describes several processes, else None.
    TPU VMs list their workers in TPU_WORKER_HOSTNAMES (comma-separated); SLURM sets SLURM_NTASKS."""
    environ = os.environ if environ is None else environ
    if len([host for host in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if host]) > 1:
        return "TPU pod slice"
    if int(environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in environ:
        return f"SLURM job of {environ['SLURM_NTASKS']} tasks"
    return None


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over `devices` (default: all); one of the sizes may be -1 for "the rest"."""
    devices = list(jax.devices() if devices is None else devices)
    count = len(devices)
    sizes = [data, fsdp]
    if sizes.count(-1) > 1 or any(size == 0 or size < -1 for size in sizes):
        raise ValueError(f"mesh sizes data={data}, fsdp={fsdp}: expected positive sizes, at most one -1")
    if -1 in sizes:
        known = math.prod(size for size in sizes if size != -1)
        if count % known:
            raise ValueError(f"mesh size {known} does not divide the {count} devices (data={data}, fsdp={fsdp})")
        sizes[sizes.index(-1)] = count // known
    if math.prod(sizes) != count:
        raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} = {math.prod(sizes)} does not match the "
                         f"{count} devices")
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def mesh_from_config(mesh_config) -> Mesh:
    """The mesh of a config's `mesh` section: ('data', 'fsdp') sizes over its first `num_devices` devices (-1:
    all; single-process runs only)."""
    devices = jax.devices()
    if mesh_config.num_devices != -1:
        if jax.process_count() > 1:
            raise ValueError(f"config.mesh.num_devices = {mesh_config.num_devices}: expected -1 (all devices) in a "
                             f"run of {jax.process_count()} processes")
        devices = devices[:mesh_config.num_devices]
    return make_mesh(mesh_config.data, mesh_config.fsdp, devices)


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Splits axis `leading_axes` (the example axis, after e.g. a steps axis) over all devices."""
    return NamedSharding(mesh, PartitionSpec(*([None] * leading_axes), BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(global_batch_size: int, devices: int, microbatches: int = 1) -> int:
    """Returns the per-device micro-batch; raises when the batch does not split evenly over `devices` devices and
    `microbatches` micro-batches (and processes)."""
    if global_batch_size <= 0 or global_batch_size % microbatches:
        raise ValueError(f"batch_size {global_batch_size} is not a positive multiple of grad_accum_steps "
                         f"{microbatches}")
    micro = global_batch_size // microbatches
    if micro % devices:
        raise ValueError(f"batch_size {global_batch_size} / grad_accum_steps {microbatches} = {micro} examples per "
                         f"micro-batch is not divisible by {devices} devices")
    if global_batch_size % jax.process_count():
        raise ValueError(f"batch_size {global_batch_size} is not divisible by {jax.process_count()} processes")
    return micro // devices


def fsdp_spec(shape: Sequence[int], fsdp_size: int, min_size: int) -> PartitionSpec:
    """Splits the largest axis that `fsdp_size` divides over 'fsdp'; replicated if none or if the array is small."""
    if fsdp_size == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp_size == 0:
            return PartitionSpec(*([None] * axis), "fsdp")
    return PartitionSpec()


def tree_shardings(abstract_tree, mesh: Mesh, *, fsdp: bool, min_fsdp_size: int = 2**14):
    """NamedShardings for every leaf of a pytree of arrays / ShapeDtypeStructs: replicated or FSDP (module doc)."""
    fsdp_size = mesh.shape["fsdp"] if fsdp else 1

    def leaf_sharding(leaf) -> NamedSharding:
        return NamedSharding(mesh, fsdp_spec(np.shape(leaf), fsdp_size, min_fsdp_size))

    return jax.tree.map(leaf_sharding, abstract_tree)


def global_batch(local_batch: Mapping[str, np.ndarray], sharding: NamedSharding,
                 example_axis: int = 0) -> dict[str, jax.Array]:
    """Assembles each process's block of the batch into global arrays split by `sharding`.

    local_batch values have this process's examples on `example_axis`; the global arrays have
    `process_count` times as many, process p's block at [p * b, (p + 1) * b) as `diffax.data` orders them.
    """
    processes = jax.process_count()

    def assemble(local: np.ndarray) -> jax.Array:
        global_shape = list(local.shape)
        global_shape[example_axis] *= processes
        return jax.make_array_from_process_local_data(sharding, local, tuple(global_shape))

    return {key: assemble(np.asarray(value)) for key, value in local_batch.items()}


def to_host(tree):
    """Fetches a pytree of (possibly sharded, multi-process) arrays as numpy arrays on every process."""
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
