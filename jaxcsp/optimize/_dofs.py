"""Degrees of freedom of a relaxation as values: :class:`Dofs`.

A ``Dofs`` says how a batch of crystals becomes the free variables an optimizer moves and how
those variables become crystals again:

* ``init(crystals) -> (x, row_mask)``: DOF rows ``x (B, R, 3)`` (float, the crystals' dtype)
  and ``row_mask (B, R)`` bool (``False`` rows never move and do not count in ``fmax``);
* ``to_crystals(x, data) -> Crystals``: traceable and differentiable; ``data`` is the
  :class:`~jaxcsp.optimize.RelaxData` of the batch (starting cell ``lattice0``, starting
  fractional coordinates ``frac0``, ``species``, ``mask``, ``cell_factor``, ``pressure``);
* ``has_cell``: the DOFs move the cell, so the objective is the enthalpy ``E + pV``.

The optimizer minimises ``E(to_crystals(x))`` (+ ``pV``) over ``x``; its gradient with respect
to ``x`` is the generalised force, and convergence is the largest row norm of that gradient
below ``fmax``. Nothing else in the optimizers or the drivers knows the kind of DOF, so a new
kind is one small frozen dataclass (hashable: it is a static argument of the compiled
programs), and ``relax(c, potential, dofs=MyKind())`` or ``relax_stream(..., dofs=MyKind())``
relaxes with it: the relaxation guide (``docs/relaxation.md``, "Degrees of freedom") builds a
free cell with fixed fractional coordinates in ten lines. The built-in kinds are
:class:`AtomPositions` (``cell_filter=None``), :class:`FrechetCell` (``cell_filter="frechet"``)
and :class:`WyckoffFree` (what :func:`~jaxcsp.optimize.relax_wyckoff` uses).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import jax.scipy.linalg

from jaxcsp.crystal import Crystals
from jaxcsp.errors import JaxcspError
from jaxcsp.optimize._wyckoff_dofs import crystals_from_wyckoff_dofs

__all__ = ["AtomPositions", "Dofs", "FrechetCell", "WyckoffFree", "as_dofs"]

Array = jax.Array


class Dofs:
    """Base class of the degrees of freedom of a relaxation (see the module docstring).

    Subclasses are frozen dataclasses; they override :meth:`init`, :meth:`to_crystals` and,
    when the DOFs move the cell, set ``has_cell = True``.
    """

    #: the DOFs move the cell: the objective adds ``pressure * volume`` (enthalpy)
    has_cell: bool = False
    #: rows ``0..N-1`` are atoms and, with ``has_cell``, rows ``N..N+2`` the cell (the layout the
    #: FixSymmetry-style ``symmetric=True`` mode symmetrises)
    atom_rows: bool = False

    def init(self, crystals: Crystals) -> tuple[Array, Array]:
        """Starting DOF rows ``x (B, R, 3)`` and ``row_mask (B, R)`` of a batch (traceable)."""
        raise NotImplementedError(f"{type(self).__name__} does not define init")

    def to_crystals(self, x: Array, data: Any) -> Crystals:
        """The crystals described by DOF rows ``x (B, R, 3)`` (traceable, differentiable)."""
        raise NotImplementedError(f"{type(self).__name__} does not define to_crystals")


def _frac(pos: Array, data: Any) -> Array:
    """Fractional coordinates ``(B, N, 3)`` of positions in the starting cell (padding zero)."""
    frac = jnp.einsum("bni,bij->bnj", pos, jnp.linalg.inv(data.lattice0))
    return jnp.where(data.mask[..., None], frac, 0.0)


@dataclasses.dataclass(frozen=True)
class AtomPositions(Dofs):
    """Cartesian positions ``(B, N, 3)`` Å in a fixed cell (``cell_filter=None``)."""

    atom_rows = True

    def init(self, crystals: Crystals) -> tuple[Array, Array]:
        return jnp.where(crystals.mask[..., None], crystals.positions, 0.0), crystals.mask

    def to_crystals(self, x: Array, data: Any) -> Crystals:
        return Crystals(lattice=data.lattice0, frac=_frac(x, data), species=data.species,
                        mask=data.mask)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FrechetCell(Dofs):
    """Positions and cell with ASE ``FrechetCellFilter`` semantics (``cell_filter="frechet"``).

    Rows ``0..N-1`` hold the positions in the undeformed cell, rows ``N..N+2`` hold
    ``exp_cell_factor · log(F)`` (``F`` the deformation gradient, ``L = L0 Fᵀ``,
    ``exp_cell_factor`` = number of atoms); the cell block sits in the fixed rows ``N..N+2`` of
    the padded array, so padding never hides it.
    """

    has_cell = True
    atom_rows = True

    def init(self, crystals: Crystals) -> tuple[Array, Array]:
        pos = jnp.where(crystals.mask[..., None], crystals.positions, 0.0)
        b = pos.shape[0]
        x = jnp.concatenate([pos, jnp.zeros((b, 3, 3), pos.dtype)], axis=1)
        return x, jnp.concatenate([crystals.mask, jnp.ones((b, 3), bool)], axis=1)

    def to_crystals(self, x: Array, data: Any) -> Crystals:
        n = data.mask.shape[-1]
        f = jax.vmap(jax.scipy.linalg.expm)(x[:, n:] / data.cell_factor[:, None, None])
        lattice = jnp.einsum("bij,bkj->bik", data.lattice0, f)
        return Crystals(lattice=lattice, frac=_frac(x[:, :n], data), species=data.species,
                        mask=data.mask)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class WyckoffFree(Dofs):
    """Wyckoff free variables and cell parameters (symmetry by construction).

    ``data`` is a :class:`~jaxcsp.optimize._wyckoff_dofs.WyckoffData`; the starting rows come
    from :func:`~jaxcsp.optimize._wyckoff_dofs.initial_wyckoff_dofs` (used by
    :func:`~jaxcsp.optimize.relax_wyckoff`, which builds them from ``WyckoffCrystals``).
    """

    fixed_cell: bool = False

    @property
    def has_cell(self) -> bool:  # type: ignore[override]  # a per-instance value here
        return not self.fixed_cell

    def to_crystals(self, x: Array, data: Any) -> Crystals:
        return crystals_from_wyckoff_dofs(x, data)


#: the names the drivers accept for the built-in kinds
_NAMED = {
    None: AtomPositions(),
    "frechet": FrechetCell(),
    "wyckoff": WyckoffFree(),
    "wyckoff_fixed_cell": WyckoffFree(fixed_cell=True),
}


def as_dofs(kind: Any) -> Dofs:
    """A :class:`Dofs` from a ``Dofs`` or a built-in name (``None``, ``"frechet"``, ...).

    Raises:
      JaxcspError: neither a ``Dofs`` nor a known name.
    """
    if isinstance(kind, Dofs):
        return kind
    if isinstance(kind, str | None) and kind in _NAMED:
        return _NAMED[kind]
    raise JaxcspError(f"unknown cell_filter {kind!r}; choose None, 'frechet' or pass a Dofs")
