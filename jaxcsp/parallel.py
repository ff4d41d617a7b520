"""Data parallelism over devices: the batch axis sharded with :mod:`jax.sharding`.

Contract:

* Every batched computation in jaxcsp is independent per structure along the leading batch axis,
  so data parallelism needs no new code paths: place the batch with :func:`shard_batch` over a
  one-axis :class:`jax.sharding.Mesh` (:func:`batch_mesh`, axis ``"batch"``) and ``jax.jit``
  partitions the computation (XLA's SPMD partitioner follows the inputs' sharding). Results keep
  the sharding; ``np.asarray`` gathers them.
* The batch must divide evenly over the devices: :func:`pad_batch` repeats row 0 up to a multiple
  of the mesh size (host side) and returns the real row count, so callers trim.
* Host entry points take ``mesh=``: :func:`jaxcsp.calculate` and
  :func:`jaxcsp.optimize.relax` pad, shard, run and trim; ``relax`` also re-shards its working
  batch after each compaction (working batch sizes stay multiples of the mesh size), and padded
  rows never move (they are marked invalid).
* Multi-host: call :func:`jax.distributed.initialize` first in every process; :func:`batch_mesh`
  with no argument then spans ``jax.devices()`` of all hosts.
* Test on CPU with ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (set before importing
  JAX): eight virtual devices give the same single points as one, bit for bit, and the same
  relaxations up to summation order (XLA compiles the per-device shape apart from the whole
  batch; a line search can turn a 1e-11 eV difference into a different step count on a few
  rows) (``tests/test_parallel.py``).

>>> mesh = batch_mesh()
>>> mesh.axis_names, mesh.size == len(jax.devices())
(('batch',), True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxcsp.errors import InvalidArgumentError

__all__ = [
    "BATCH_AXIS",
    "batch_mesh",
    "batch_sharding",
    "check_divisible",
    "pad_batch",
    "padded_size",
    "per_device",
    "replicated",
    "shard_batch",
]

#: Name of the mesh axis the batch is split over.
BATCH_AXIS = "batch"


def batch_mesh(devices: Sequence[Any] | int | None = None) -> Mesh:
    """A one-axis mesh (``"batch"``) over devices.

    Args:
      devices: ``None`` for every device JAX sees (all hosts after
        :func:`jax.distributed.initialize`), an int for the first ``n`` devices, or a sequence of
        devices.

    Returns:
      :class:`jax.sharding.Mesh` with axis names ``("batch",)``.
    """
    if devices is None:
        devs = jax.devices()
    elif isinstance(devices, int):
        all_devs = jax.devices()
        if not 1 <= devices <= len(all_devs):
            raise InvalidArgumentError(
                f"choose 1..{len(all_devs)} devices (JAX sees {len(all_devs)}), got {devices}",
                argument="devices",
            )
        devs = all_devs[:devices]
    else:
        devs = list(devices)
    return Mesh(np.asarray(devs), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding that splits the leading axis of an array over ``mesh``'s batch axis."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, PartitionSpec())


def padded_size(n: int, mesh: Mesh | None) -> int:
    """Smallest multiple of the mesh size ``>= n`` (``n`` when ``mesh`` is ``None``)."""
    if mesh is None:
        return int(n)
    m = int(mesh.size)
    return -(-int(n) // m) * m


def pad_batch(tree: Any, size: int) -> Any:
    """Pad every leaf's leading axis to ``size`` rows by repeating row 0 (host side).

    Args:
      tree: pytree whose array leaves share a leading batch axis ``B <= size``.
      size: rows wanted.

    Returns:
      The padded tree (unchanged when ``B == size``).
    """

    def pad(a):
        a = jnp.asarray(a)
        extra = size - a.shape[0]
        if extra < 0:
            raise ValueError(f"cannot pad a batch of {a.shape[0]} down to {size}")
        if extra == 0:
            return a
        return jnp.concatenate([a, jnp.repeat(a[:1], extra, axis=0)], axis=0)

    return jax.tree_util.tree_map(pad, tree)


def shard_batch(tree: Any, mesh: Mesh | None) -> Any:
    """Place a batch on ``mesh`` with its leading axis split over the devices.

    Leaves without a leading axis of the batch's size (scalars, shared tables) are replicated.

    Args:
      tree: pytree of arrays with a common leading batch axis ``B`` divisible by ``mesh.size``
        (see :func:`pad_batch`).
      mesh: a mesh from :func:`batch_mesh`, or ``None`` (the tree is returned as it is).

    Returns:
      The same tree on the devices.

    Raises:
      ValueError: ``B`` is not a multiple of the mesh size.
    """
    if mesh is None:
        return tree
    leaves = jax.tree_util.tree_leaves(tree)
    sizes = [np.shape(a)[0] for a in leaves if np.ndim(a) > 0]
    b = max(set(sizes), key=sizes.count) if sizes else 0
    if b % mesh.size:
        raise ValueError(f"a batch of {b} does not split over {mesh.size} devices; pad it first")
    split, full = batch_sharding(mesh), replicated(mesh)

    def put(a):
        return jax.device_put(a, split if np.ndim(a) > 0 and np.shape(a)[0] == b else full)

    return jax.tree_util.tree_map(put, tree)


def check_divisible(n: int, mesh: Mesh | None, *, argument: str, what: str) -> None:
    """Refuse ``n`` items (replicas, members) that do not split evenly over ``mesh``.

    Raises:
      InvalidArgumentError: ``n`` is not a multiple of the mesh size (naming ``argument``).
    """
    if mesh is not None and n % mesh.size:
        raise InvalidArgumentError(
            f"{what} ({n}) must be a multiple of the mesh's {mesh.size} devices",
            argument=argument,
            value=n,
        )


def per_device(fn: Any, mesh: Mesh | None, in_specs: Any, out_specs: Any) -> Any:
    """``fn`` run on each device's slice of its inputs (:func:`jax.shard_map`), or ``fn`` itself
    without a mesh.

    For work that is independent along the split axis (annealing replicas, ensemble members):
    each device runs ``fn`` on its slice with no communication. Arrays ``fn`` closes over are
    replicated. Specs name :data:`BATCH_AXIS`, e.g. ``PartitionSpec(None, BATCH_AXIS)``.
    """
    if mesh is None:
        return fn
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
