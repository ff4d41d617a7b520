"""Coordination numbers: PyXtal's bond rule, the CN validity check, a smooth CN for losses.

Contract:

* Bond rule (PyXtal's ``pyxtal.check_validity`` with ``criteria={"CN": ...}``): atoms ``i`` and
  ``j`` are bonded when ``d_ij < factor * (r_i + r_j)`` with PyXtal's covalent radii
  (``Tol_matrix(prototype="molecular")``: ``factor = 1.2``; C–C: 1.2 × (0.78 + 0.78) = 1.872 Å).
  All periodic images count (an atom's own images included), via :mod:`jaxcsp.neighbors`.
* :func:`coordination_numbers` counts bonds per atom ``(B, N)``; :func:`valid_environment`
  is the seed's validity test (every real atom has an allowed CN, e.g. CN = 3 for sp² carbon:
  the ``N_valid_env`` criterion). PyXtal tests the first atom of each Wyckoff site; all atoms
  of a site have the same environment, so testing every atom is the same test.
* :func:`smooth_coordination_numbers` is a differentiable surrogate
  ``sum_j s((d_ij - d0_ij) / width)`` with a Fermi switch ``s(x) = 1 / (1 + e^x)`` tapered to
  zero at ``d0 + taper * width`` (so the neighbor list cutoff makes no jump).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.crystal import Crystals
from jaxcsp.elements import atomic_numbers
from jaxcsp.errors import InvalidStructureError
from jaxcsp.neighbors import distances, edge_list_vectors, neighbor_list

__all__ = [
    "PYXTAL_BOND_FACTOR",
    "bond_cutoffs",
    "coordination_numbers",
    "pyxtal_covalent_radii",
    "smooth_coordination_numbers",
    "smooth_coordination_numbers_edge_list",
    "valid_environment",
]

Array = jax.Array

#: PyXtal's factor on the sum of covalent radii for bonds (``Tol_matrix("molecular")``).
PYXTAL_BOND_FACTOR = 1.2


@functools.cache
def pyxtal_covalent_radii() -> np.ndarray:
    """PyXtal's covalent radii (Å) indexed by atomic number, ``(119,)`` float64 (0 for Z = 0)."""
    from pyxtal.database.element import Element

    out = np.zeros(119)
    for row in Element("H").elements_list:
        z, r = int(row[0]), row[6]
        if 0 < z < 119 and r is not None:
            out[z] = float(r)
    return out


def bond_cutoffs(factor: float = PYXTAL_BOND_FACTOR, radii: Any = None) -> np.ndarray:
    """Bond-length cutoffs ``factor * (r_i + r_j)`` for all pairs of atomic numbers.

    Args:
      factor: multiple of the sum of covalent radii (PyXtal: 1.2).
      radii: ``(119,)`` radii in Å indexed by atomic number (default :func:`pyxtal_covalent_radii`).

    Returns:
      ``(119, 119)`` float64 numpy array in Å.
    """
    r = pyxtal_covalent_radii() if radii is None else np.asarray(radii, np.float64)
    if r.shape != (119,):
        raise InvalidStructureError(f"radii must have shape (119,), got {r.shape}", field="radii")
    return float(factor) * (r[:, None] + r[None, :])


def _pair_cutoffs(crystals: Crystals, index: Array, table: np.ndarray | Array) -> Array:
    t = jnp.asarray(table, crystals.frac.dtype)

    def one(species, idx):
        return t[species[:, None], species[idx]]

    return jax.vmap(one)(crystals.species, index)


def _max_cutoff(crystals: Crystals, table: np.ndarray) -> float:
    z = np.unique(np.asarray(crystals.species)[np.asarray(crystals.mask)])
    if len(z) == 0:
        return float(table.max())
    return float(table[np.ix_(z, z)].max())


def _neighbors(crystals: Crystals, neighbors: Any, cutoff: float):
    if neighbors is not None:
        return neighbors
    if isinstance(crystals.frac, jax.core.Tracer) or isinstance(crystals.lattice, jax.core.Tracer):
        raise InvalidStructureError(
            "pass `neighbors` inside jit (jaxcsp.neighbors.neighbor_list_spec + update)",
            field="neighbors",
        )

    return neighbor_list(crystals, cutoff)


def coordination_numbers(
    crystals: Crystals,
    *,
    factor: float = PYXTAL_BOND_FACTOR,
    radii: Any = None,
    neighbors: Any = None,
) -> Array:
    """Bonded neighbors of every atom by PyXtal's rule ``d < factor * (r_i + r_j)``.

    Args:
      crystals: batch (``lattice (B, 3, 3)`` Å, ``frac (B, N, 3)``, ``species``, ``mask``).
      factor: multiple of the sum of covalent radii.
      radii: ``(119,)`` covalent radii in Å (default PyXtal's).
      neighbors: a :class:`~jaxcsp.neighbors.Neighbors` with a cutoff at least the largest
        bond cutoff of the species present (required inside ``jit``); ``None`` builds one.

    Returns:
      ``(B, N)`` int32 coordination numbers (0 for padding).
    """
    table = bond_cutoffs(factor, radii)
    nl = _neighbors(crystals, neighbors, _max_cutoff(crystals, table) if neighbors is None else 0)
    return _coordination(crystals, nl, table)


@jax.jit
def _coordination(crystals: Crystals, nl: Any, table: Array) -> Array:
    d = distances(crystals, nl)
    bonded = nl.mask & (d < _pair_cutoffs(crystals, nl.index, table))
    return jnp.sum(bonded & crystals.mask[..., None], axis=-1, dtype=jnp.int32)


def valid_environment(
    crystals: Crystals,
    target: Any = 3,
    *,
    factor: float = PYXTAL_BOND_FACTOR,
    radii: Any = None,
    neighbors: Any = None,
) -> Array:
    """The CN validity test: every real atom has an allowed coordination number.

    Args:
      crystals: batch of crystals.
      target: allowed CNs: an int (for every species, e.g. 3 for sp² carbon), a sequence of
        ints, or a mapping ``{element symbol or Z: int or sequence}`` (PyXtal's
        ``criteria["CN"]``, e.g. ``{"C": [3]}``); atoms of species not in the mapping are
        unconstrained.
      factor, radii, neighbors: see :func:`coordination_numbers`.

    Returns:
      ``(B,)`` bool, ``True`` where every atom satisfies the target (the seed's
      ``N_valid_env`` is its sum).
    """
    cn = coordination_numbers(crystals, factor=factor, radii=radii, neighbors=neighbors)
    allowed = _allowed_table(target)  # (119, C) bool; column C - 1 stands for "CN >= C - 1"
    top = allowed.shape[1] - 1
    ok = jnp.asarray(allowed)[crystals.species, jnp.minimum(cn, top)]
    return jnp.all(ok | ~crystals.mask, axis=-1)


def _allowed_table(target: Any) -> np.ndarray:
    def as_list(v):
        vals = [int(v)] if np.ndim(v) == 0 else [int(x) for x in v]
        if not vals or any(x < 0 for x in vals):
            raise InvalidStructureError(
                f"target coordination numbers must be >= 0, got {v!r}", field="target"
            )
        return vals

    if isinstance(target, dict):
        rules = {}
        for k, v in target.items():
            z = int(k) if isinstance(k, (int, np.integer)) else int(atomic_numbers([k])[0])
            rules[z] = as_list(v)
    else:
        vals = as_list(target)
        rules = {z: vals for z in range(1, 119)}
    top = max(x for v in rules.values() for x in v) + 1
    table = np.ones((119, top + 1), bool)  # species without a rule: any CN
    for z, vals in rules.items():
        table[z] = False
        table[z, vals] = True
    return table


def smooth_coordination_numbers(
    crystals: Crystals,
    *,
    width: float = 0.05,
    taper: float = 6.0,
    factor: float = PYXTAL_BOND_FACTOR,
    radii: Any = None,
    neighbors: Any = None,
) -> Array:
    """Differentiable coordination numbers ``sum_j s((d_ij - d0_ij) / width) * taper``.

    Args:
      crystals: batch of crystals.
      width: Fermi width in Å.
      taper: beyond ``d0`` the switch is multiplied by a cosine taper that falls from 1 to 0
        at ``d0 + taper * width`` (the neighbor list must reach that far).
      factor, radii: bond cutoffs ``d0 = factor * (r_i + r_j)`` as in :func:`coordination_numbers`.
      neighbors: neighbor lists with cutoff ``>= max d0 + taper * width`` (required in ``jit``).

    Returns:
      ``(B, N)`` float coordination numbers (dtype of ``crystals.frac``), 0 for padding.
    """
    table = bond_cutoffs(factor, radii)
    reach = taper * width
    nl = _neighbors(
        crystals, neighbors, _max_cutoff(crystals, table) + reach if neighbors is None else 0
    )
    d = distances(crystals, nl)
    d0 = _pair_cutoffs(crystals, nl.index, table)
    x = (d - d0) / width
    s = jax.nn.sigmoid(-x)
    u = jnp.clip((d - d0) / reach, 0.0, 1.0)
    tap = 0.5 * (1 + jnp.cos(jnp.pi * u))
    val = jnp.where(nl.mask & (d < d0 + reach), s * tap, jnp.zeros_like(d))
    return jnp.sum(val, axis=-1) * crystals.mask


def smooth_coordination_numbers_edge_list(
    crystals: Crystals,
    edges: Any,
    *,
    width: float = 0.05,
    taper: float = 6.0,
    factor: float = PYXTAL_BOND_FACTOR,
    radii: Any = None,
) -> Array:
    """:func:`smooth_coordination_numbers` of the query rows of an edge list (jit/grad-safe).

    Args:
      crystals: batch (``B`` crystals) the edges were built for.
      edges: :class:`~jaxcsp.neighbors.EdgeList` reaching ``max d0 + taper * width``.
      width, taper, factor, radii: as in :func:`smooth_coordination_numbers`.

    Returns:
      ``(B, R)`` float coordination numbers of the rows' centers (0 for rows without edges).
    """
    table = jnp.asarray(bond_cutoffs(factor, radii), crystals.frac.dtype)
    reach = taper * width
    b = crystals.mask.shape[0]
    v = edge_list_vectors(crystals, edges)
    d2 = jnp.sum(v * v, axis=-1)
    d = jnp.sqrt(jnp.where(edges.mask, d2, jnp.ones_like(d2)))
    z = crystals.species.reshape(-1)
    d0 = table[z[edges.center], z[edges.neighbor]]
    s = jax.nn.sigmoid(-(d - d0) / width)
    u = jnp.clip((d - d0) / reach, 0.0, 1.0)
    tap = 0.5 * (1 + jnp.cos(jnp.pi * u))
    val = jnp.where(edges.mask & (d < d0 + reach), s * tap, jnp.zeros_like(d))
    rows = b * edges.num_rows
    cn = jax.ops.segment_sum(val, edges.row, num_segments=rows, indices_are_sorted=True)
    return cn.reshape(b, edges.num_rows)
