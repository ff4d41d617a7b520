"""Energy, forces and stress of a batch of crystals from any :class:`~jaxcsp.potentials.Potential`.

Contract:

* :func:`calculate` (host side) checks species coverage, builds neighbor lists whose capacity is
  chosen outside ``jit`` from the data (never truncated; :func:`jaxcsp.neighbors.neighbor_list`
  re-allocates on overflow) and runs the jitted :func:`calculate_with_neighbors`.
* :func:`calculate_with_neighbors` is pure and jit/vmap-safe: relaxers call it every step with
  lists from :func:`jaxcsp.neighbors.update`.
* Units and signs (ASE's): energy ``(B,)`` eV; forces ``-∂E/∂positions`` ``(B, N, 3)`` eV/Å, zero
  on padded atoms; stress ``(1/V) ∂E/∂ε`` ``(B, 3, 3)`` eV/Å³ for a symmetric strain ``ε``
  applied to the lattice and the positions together (``L → L (1 + ε)``, fractional coordinates
  fixed; positive = the cell wants to shrink, i.e. tensile), obtained by autodiff of the energy.
  Multiply by ``-1 / ase.units.GPa`` for pressure-style GPa.
* Mixed sizes share one padded batch (``Crystals`` padding); padded atoms have no neighbors and
  feel no force.

>>> import numpy as np, jaxcsp as jc
>>> from jaxcsp import potentials
>>> c = jc.Crystals.create(np.eye(3) * 1.6, [[0.0, 0.0, 0.0]], [18])
>>> r = calculate(potentials.lennard_jones(sigma=1.0, epsilon=1.0, cutoff=2.5), c)
>>> r.energy.shape, r.forces.shape, r.stress.shape
((1,), (1, 1, 3), (1, 3, 3))
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp import neighbors as nb
from jaxcsp import parallel
from jaxcsp.crystal import Crystals
from jaxcsp.errors import InvalidStructureError
from jaxcsp.potentials._base import Potential, check_species

__all__ = [
    "Results",
    "build_neighbors",
    "calculate",
    "calculate_energy",
    "calculate_with_neighbors",
    "energies",
]

Array = jax.Array


class Results(NamedTuple):
    """Energies, forces and stresses of a batch.

    Attributes:
      energy: ``(B,)`` total energies in eV (float dtype of the crystals, at least float32).
      forces: ``(B, N, 3)`` forces ``-∂E/∂r`` in eV/Å; zero on padded atoms.
      stress: ``(B, 3, 3)`` stress ``(1/V) ∂E/∂ε`` in eV/Å³ (ASE sign convention, symmetric).
    """

    energy: Array
    forces: Array
    stress: Array


def _deformed(crystal: Crystals, displacement: Array, strain: Array) -> Crystals:
    """Displace atoms by ``displacement (N, 3)`` Å, then strain the cell by ``1 + sym(strain)``."""
    lattice = crystal.lattice
    eye = jnp.eye(3, dtype=lattice.dtype)
    sym = 0.5 * (strain + strain.T)
    frac = crystal.frac + displacement @ jnp.linalg.inv(lattice)
    return crystal.replace(lattice=lattice @ (eye + sym), frac=frac)


def _efs_single(potential: Potential, crystal: Crystals, neighbors: Any) -> tuple:
    dtype = crystal.frac.dtype
    u0 = jnp.zeros(crystal.frac.shape, dtype)
    e0 = jnp.zeros((3, 3), crystal.lattice.dtype)

    def fn(u, eps):
        return potential.energy(_deformed(crystal, u, eps), neighbors)

    energy, (du, deps) = jax.value_and_grad(fn, argnums=(0, 1))(u0, e0)
    volume = jnp.abs(jnp.linalg.det(crystal.lattice))
    forces = jnp.where(crystal.mask[:, None], -du, jnp.zeros_like(du))
    stress = 0.5 * (deps + deps.T) / volume
    return energy, forces, stress


def _efs_batch(potential: Potential, crystals: Crystals, neighbors: Any) -> tuple:
    """As ``vmap(_efs_single)`` through the potential's batched energy (one graph per batch)."""
    u0 = jnp.zeros(crystals.frac.shape, crystals.frac.dtype)
    e0 = jnp.zeros(crystals.lattice.shape, crystals.lattice.dtype)

    def fn(u, eps):
        deformed = jax.vmap(_deformed)(crystals, u, eps)
        e = potential.energies(deformed, neighbors)
        return jnp.sum(e), e

    (_, energy), (du, deps) = jax.value_and_grad(fn, argnums=(0, 1), has_aux=True)(u0, e0)
    volume = jnp.abs(jnp.linalg.det(crystals.lattice))
    forces = jnp.where(crystals.mask[..., None], -du, jnp.zeros_like(du))
    stress = 0.5 * (deps + jnp.swapaxes(deps, -1, -2)) / volume[:, None, None]
    return energy, forces, stress


def calculate_with_neighbors(
    potential: Potential, crystals: Crystals, neighbors: Any = None
) -> Results:
    """Energy, forces and stress of a batch with precomputed neighbor lists (jit-safe).

    Args:
      potential: any :class:`~jaxcsp.potentials.Potential`.
      crystals: batch ``lattice (B, 3, 3)`` Å, ``frac (B, N, 3)``, ``species (B, N)``,
        ``mask (B, N)``.
      neighbors: :class:`~jaxcsp.neighbors.Neighbors` of the same batch built with a cutoff
        ``>= potential.cutoff`` (a skin is fine); ``None`` for potentials with ``cutoff=None``.
        Check ``neighbors.overflow`` yourself when lists come from ``update``.

    Returns:
      :class:`Results` (energy ``(B,)`` eV, forces ``(B, N, 3)`` eV/Å, stress ``(B, 3, 3)``
      eV/Å³).
    """
    if potential.batch_energy_fn is not None:
        return Results(*_efs_batch(potential, crystals, neighbors))
    if neighbors is None:
        e, f, s = jax.vmap(lambda c: _efs_single(potential, c, None))(crystals)
    else:
        e, f, s = jax.vmap(lambda c, n: _efs_single(potential, c, n))(crystals, neighbors)
    return Results(e, f, s)


def energies(potential: Potential, crystals: Crystals, neighbors: Any = None) -> Array:
    """Energies ``(B,)`` eV of a batch with precomputed neighbor lists (jit-safe, no gradients).

    Args:
      potential: any :class:`~jaxcsp.potentials.Potential`.
      crystals: batch of ``B`` crystals.
      neighbors: lists of the batch (``None`` when ``potential.cutoff`` is ``None``).

    Returns:
      ``(B,)`` energies in eV.
    """
    return potential.energies(crystals, neighbors)


_calculate_jit = jax.jit(calculate_with_neighbors)


@functools.partial(jax.jit, static_argnames=("spec",))
def _calculate_with_update_jit(potential: Potential, crystals: Crystals, spec: Any):
    nl = nb.update(spec, crystals)
    return calculate_with_neighbors(potential, crystals, nl), jnp.any(nl.overflow)


def _calculate_with_update(potential: Potential, crystals: Crystals, spec: Any):
    """Results and an overflow flag with neighbor shapes fixed by ``spec`` (``None``: no list)."""
    if spec is None:
        return _calculate_jit(potential, crystals, None), False
    return _calculate_with_update_jit(potential, crystals, spec)


_energies_jit = jax.jit(energies)


def build_neighbors(
    potential: Potential,
    crystals: Crystals,
    *,
    skin: float = 0.0,
    backend: str = "auto",
) -> Any:
    """Neighbor lists for ``potential`` on a concrete batch (host side; ``None`` if not needed).

    The capacity is counted from the data, rounded up to a multiple of
    :data:`jaxcsp.neighbors.CAPACITY_QUANTUM` and re-allocated on overflow, so the list is never
    truncated.

    Args:
      potential: the potential (its ``cutoff`` in Å).
      crystals: concrete batch.
      skin: extra radius in Å (Verlet skin for relaxers); the energy is unchanged by it.
      backend: neighbor-list backend (``"auto"``, ``"xla"``, ``"pallas"``).

    Returns:
      :class:`~jaxcsp.neighbors.Neighbors` with ``overflow`` all False, or ``None``.
    """
    if potential.cutoff is None:
        return None

    cutoff = float(potential.cutoff) + float(skin)
    spec = nb.neighbor_list_spec(crystals, cutoff, backend=backend, capacity_headroom=0.0)
    return nb.neighbor_list(crystals, cutoff, max_neighbors=spec.max_neighbors, backend=backend)


def calculate(
    potential: Potential,
    crystals: Crystals,
    *,
    neighbors: Any = None,
    backend: str = "auto",
    source: str | None = None,
    mesh: Any = None,
) -> Results:
    """Energy, forces and stress of a batch of crystals (host entry point, jitted inside).

    Args:
      potential: any :class:`~jaxcsp.potentials.Potential`.
      crystals: concrete batch (mixed sizes are padded into one :class:`Crystals`).
      neighbors: optional precomputed lists (cutoff ``>= potential.cutoff``); built here when
        ``None``.
      backend: neighbor-list backend.
      source: name used in error messages.
      mesh: a :func:`jaxcsp.parallel.batch_mesh` to split the batch over several devices
        (padded to a multiple of the mesh size, trimmed after; results keep the sharding).

    Returns:
      :class:`Results`: energy ``(B,)`` eV, forces ``(B, N, 3)`` eV/Å (zero on padding),
      stress ``(B, 3, 3)`` eV/Å³ (ASE sign convention).

    Raises:
      InvalidStructureError: an element the potential does not cover (naming the structure), or
        a degenerate cell.
    """
    check_species(potential, crystals, source=source)
    if neighbors is None:
        neighbors = build_neighbors(potential, crystals, backend=backend)
    elif bool(np.any(np.asarray(neighbors.overflow))):
        b = int(np.argmax(np.asarray(neighbors.overflow)))
        raise InvalidStructureError(
            "neighbor list overflowed; rebuild it", index=b, field="neighbors", source=source
        )
    if mesh is None:
        return _calculate_jit(potential, crystals, neighbors)

    n = int(crystals.batch_size)
    size = parallel.padded_size(n, mesh)
    padded = parallel.shard_batch(parallel.pad_batch((crystals, neighbors), size), mesh)
    out = _calculate_jit(potential, *padded)
    return Results(*(a[:n] for a in out))


def calculate_energy(
    potential: Potential, crystals: Crystals, *, neighbors: Any = None, backend: str = "auto"
) -> Array:
    """Energies only, ``(B,)`` eV (host entry point; cheaper than :func:`calculate`)."""
    check_species(potential, crystals)
    if neighbors is None:
        neighbors = build_neighbors(potential, crystals, backend=backend)
    return _energies_jit(potential, crystals, neighbors)
