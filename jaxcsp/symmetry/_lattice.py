"""Lattice free parameters per crystal system and the differentiable map to a lattice matrix.

Contract:

* Cell parameters are stored as a 6-vector ``(a, b, c, alpha, beta, gamma)``: lengths in Å,
  angles in **degrees**. Which entries are free variables depends on the crystal system
  (monoclinic groups use PyXtal's unique axis b, R groups hexagonal axes):

  ============  ====================  =====================================
  system        free                  tied / fixed
  ============  ====================  =====================================
  triclinic     a b c alpha beta gamma
  monoclinic    a b c beta            alpha = gamma = 90
  orthorhombic  a b c                 angles 90
  tetragonal    a c                   b = a, angles 90
  trigonal      a c                   b = a, alpha = beta = 90, gamma = 120
  hexagonal     a c                   b = a, alpha = beta = 90, gamma = 120
  cubic         a                     b = c = a, angles 90
  ============  ====================  =====================================

* A *rule* is two arrays: ``source (6,) int32`` (entry ``j`` takes the value of free entry
  ``source[j]``, or is fixed when ``source[j] == -1``) and ``fixed (6,)`` (the fixed values).
  :func:`expand_cell` applies a rule with a pure gather, so gradients reach the free entries only.
* :func:`lattice_matrix` is PyXtal's ``para2matrix(..., format="upper")``: rows are lattice
  vectors, ``c`` along z, ``b`` in the yz plane. It is pure ``jnp`` (jit/vmap/grad-safe).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import Array

from jaxcsp.symmetry._tables import crystal_system

__all__ = [
    "cell_parameters",
    "cell_rule",
    "expand_cell",
    "lattice_matrix",
    "num_lattice_free",
]

_RULES = {
    "triclinic": ((0, 1, 2, 3, 4, 5), (0, 0, 0, 0, 0, 0)),
    "monoclinic": ((0, 1, 2, -1, 4, -1), (0, 0, 0, 90, 0, 90)),
    "orthorhombic": ((0, 1, 2, -1, -1, -1), (0, 0, 0, 90, 90, 90)),
    "tetragonal": ((0, 0, 2, -1, -1, -1), (0, 0, 0, 90, 90, 90)),
    "trigonal": ((0, 0, 2, -1, -1, -1), (0, 0, 0, 90, 90, 120)),
    "hexagonal": ((0, 0, 2, -1, -1, -1), (0, 0, 0, 90, 90, 120)),
    "cubic": ((0, 0, 0, -1, -1, -1), (0, 0, 0, 90, 90, 90)),
}


def cell_rule(spg: int) -> tuple[np.ndarray, np.ndarray]:
    """Host-side rule for the cell parameters of space group ``spg``.

    Returns:
      ``(source, fixed)``: ``source (6,) int32`` and ``fixed (6,) float64`` (degrees for
      angles), see the module docstring. Free entries are those with ``source[j] == j``.
    """
    src, fixed = _RULES[crystal_system(spg)]
    return np.asarray(src, np.int32), np.asarray(fixed, np.float64)


def num_lattice_free(spg: int) -> int:
    """Number of free lattice parameters of ``spg`` (6, 4, 3, 2, 2, 2 or 1)."""
    src, _ = cell_rule(spg)
    return int(np.sum(src == np.arange(6)))


def expand_cell(cell: Array, source: Array, fixed: Array) -> Array:
    """Apply a cell rule: tie and fix entries of ``cell`` (pure gather, differentiable).

    Args:
      cell: ``(..., 6)`` float, (a, b, c in Å; alpha, beta, gamma in degrees).
      source: ``(..., 6)`` int32 from :func:`cell_rule` (broadcastable to ``cell``).
      fixed: ``(..., 6)`` float fixed values.

    Returns:
      ``(..., 6)`` full cell parameters, same dtype as ``cell``.
    """
    source = jnp.asarray(source)
    gathered = jnp.take_along_axis(
        cell, jnp.broadcast_to(jnp.maximum(source, 0), cell.shape), axis=-1
    )
    return jnp.where(source >= 0, gathered, jnp.asarray(fixed, cell.dtype))


def lattice_matrix(cell: Array) -> Array:
    """Lattice matrix from cell parameters in PyXtal's "upper" convention.

    Args:
      cell: ``(..., 6)`` float: a, b, c in Å, alpha, beta, gamma in degrees.

    Returns:
      ``(..., 3, 3)`` lattice vectors as rows (Å), ``c = (0, 0, c)``,
      ``b = (0, b sin(alpha), b cos(alpha))``. Matches ``pyxtal.lattice.para2matrix`` and
      ``Lattice.from_para(...).matrix``. Non-physical angles give NaN entries.
    """
    cell = jnp.asarray(cell)
    a, b, c = cell[..., 0], cell[..., 1], cell[..., 2]
    al, be, ga = (jnp.deg2rad(cell[..., i]) for i in (3, 4, 5))
    cos_al, sin_al = jnp.cos(al), jnp.sin(al)
    a3 = a * jnp.cos(be)
    a2 = a * (jnp.cos(ga) - jnp.cos(be) * cos_al) / sin_al
    a1 = jnp.sqrt(a * a - a2 * a2 - a3 * a3)
    zero = jnp.zeros_like(a)
    rows = [
        jnp.stack([a1, a2, a3], axis=-1),
        jnp.stack([zero, b * sin_al, b * cos_al], axis=-1),
        jnp.stack([zero, zero, c], axis=-1),
    ]
    return jnp.stack(rows, axis=-2)


def cell_parameters(lattice: Array) -> Array:
    """Cell parameters of lattice matrices (inverse of :func:`lattice_matrix` up to rotation).

    Args:
      lattice: ``(..., 3, 3)`` rows are lattice vectors (Å).

    Returns:
      ``(..., 6)`` (a, b, c in Å; alpha, beta, gamma in degrees).
    """
    lattice = jnp.asarray(lattice)
    lengths = jnp.linalg.norm(lattice, axis=-1)

    def angle(i, j):
        cos = jnp.sum(lattice[..., i, :] * lattice[..., j, :], -1) / (
            lengths[..., i] * lengths[..., j]
        )
        return jnp.rad2deg(jnp.arccos(jnp.clip(cos, -1.0, 1.0)))

    return jnp.concatenate(
        [lengths, jnp.stack([angle(1, 2), angle(0, 2), angle(0, 1)], axis=-1)], axis=-1
    )
