"""Symmetry-preserving relaxation directly in Wyckoff free variables.

The energy is minimised over the free variables of a :class:`~jaxcsp.symmetry.WyckoffCrystals`
batch, with gradients flowing through :func:`~jaxcsp.symmetry.reconstruct`, so the space group
holds by construction (it can only be *raised* by accident, never lowered).

DOF rows (see :mod:`jaxcsp.optimize._base`), scaled so that ASE's per-row ``maxstep`` (Å) and
``fmax`` (eV/Å) keep their meaning approximately: with ``ℓ = V0^(1/3)`` the starting cell's
length scale,

* rows ``0..S-1``: ``ℓ ·`` the site free coordinates ``(x, y, z)`` (fractional → Å); components
  that are not free have exactly zero gradient and never move;
* row ``S``: ``ℓ · log(a/a0, b/b0, c/c0)`` (a relative length change, Å);
* row ``S+1``: ``ℓ ·`` the change of ``(α, β, γ)`` in radians (Å of shear).

Only the lattice parameters free for the crystal system move. ``cell=False`` masks the two cell
rows out (fixed cell). The objective is the enthalpy ``E + p V`` when the cell moves.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxcsp.errors import InvalidArgumentError
from jaxcsp.optimize._dofs import WyckoffFree
from jaxcsp.optimize._relax import Lanes, RelaxResult, _check_args, relax_lanes, result_from_state
from jaxcsp.optimize._wyckoff_dofs import (
    WyckoffData,
    crystals_from_wyckoff_dofs,
    initial_wyckoff_dofs,
    wyckoff_from_dofs,
)
from jaxcsp.potentials import check_species
from jaxcsp.symmetry import reconstruct

__all__ = ["WyckoffData", "crystals_from_wyckoff_dofs", "relax_wyckoff", "wyckoff_from_dofs"]

Array = jax.Array


def relax_wyckoff(
    wc,
    potential,
    *,
    method: str = "bfgs_linesearch",
    fmax: float = 0.01,
    cell: bool = True,
    max_steps: int = 1000,
    pressure: float = 0.0,
    chunk: int = 50,
    neighbor_backend: str = "auto",
    progress: bool = False,
    dofs: WyckoffFree | None = None,
    **options: Any,
) -> tuple[Any, RelaxResult]:
    """Relax a ``WyckoffCrystals`` batch in its free variables (symmetry kept by construction).

    Args:
      wc: concrete :class:`~jaxcsp.symmetry.WyckoffCrystals` batch.
      potential: any :class:`~jaxcsp.potentials.Potential`.
      method: ``"bfgs_linesearch"``, ``"fire"`` or ``"lbfgs"``.
      fmax: convergence threshold on the largest DOF-gradient row (≈ eV/Å, see the module
        docstring).
      cell: also relax the free lattice parameters.
      dofs: a :class:`~jaxcsp.optimize.WyckoffFree` value instead of ``cell``
        (``WyckoffFree(fixed_cell=True)`` is ``cell=False``); ``cell`` is then not used.
      max_steps, pressure (eV/Å³), chunk, neighbor_backend, progress, **options: as in
        :func:`jaxcsp.optimize.relax`.

    Returns:
      ``(wc_final, result)``: the relaxed Wyckoff batch and a
      :class:`~jaxcsp.optimize.RelaxResult` for the reconstructed crystals.
    """
    if dofs is not None:
        if not isinstance(dofs, WyckoffFree):
            raise InvalidArgumentError(
                f"relax_wyckoff moves Wyckoff free variables: dofs must be a WyckoffFree, "
                f"got {type(dofs).__name__}",
                argument="dofs",
                value=dofs,
            )
        cell = not dofs.fixed_cell
    mode = "wyckoff" if cell else "wyckoff_fixed_cell"
    _check_args(method, None, fmax=fmax, max_steps=max_steps, pressure=pressure, chunk=chunk)
    c0 = reconstruct(wc, wrap=False)
    check_species(potential, c0)
    x0, row_mask, scale = initial_wyckoff_dofs(wc, cell)
    dtype = wc.cell.dtype
    data = WyckoffData(
        wc=wc,
        scale=scale,
        abc0=jnp.asarray(wc.cell[:, :3], dtype),
        angles0=jnp.deg2rad(jnp.asarray(wc.cell[:, 3:], dtype)),
        pressure=jnp.broadcast_to(jnp.asarray(pressure, dtype), (wc.batch_size,)),
    )
    invalid = jnp.zeros((wc.batch_size,), bool)
    state = relax_lanes(
        Lanes(x0, row_mask, data, c0, invalid),
        potential,
        method=method,
        options=options,
        mode=mode,
        fmax=fmax,
        max_steps=max_steps,
        chunk=chunk,
        neighbor_backend=neighbor_backend,
        progress=progress,
        desc=f"relax_wyckoff ({method})",
    )
    wc_final = wyckoff_from_dofs(state.x, data)
    return wc_final, result_from_state(
        state, reconstruct(wc_final, wrap=True), potential, neighbor_backend
    )
