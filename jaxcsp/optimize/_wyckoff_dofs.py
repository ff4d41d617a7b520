"""Wyckoff free-variable DOF rows: the per-structure constants and the map back to crystals.

Separate from :mod:`jaxcsp.optimize._symmetric` (the driver of symmetry-preserving
relaxations) so that :mod:`jaxcsp.optimize._relax` can map DOF rows to structures without
importing the Wyckoff driver: the optimize package's imports stay acyclic. The DOF layout is
documented in :mod:`jaxcsp.optimize._symmetric`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcsp.crystal import Crystals
from jaxcsp.symmetry import reconstruct

__all__ = ["WyckoffData", "crystals_from_wyckoff_dofs", "initial_wyckoff_dofs", "wyckoff_from_dofs"]

Array = jax.Array


class WyckoffData(NamedTuple):
    """Per-structure constants of a Wyckoff relaxation.

    Attributes:
      wc: the starting :class:`~jaxcsp.symmetry.WyckoffCrystals` (index maps, species).
      scale: ``(B,)`` ``ℓ = V0^(1/3)`` in Å.
      abc0: ``(B, 3)`` starting lengths (Å). angles0: ``(B, 3)`` starting angles (radians).
      pressure: ``(B,)`` eV/Å³.
    """

    wc: Any
    scale: Array
    abc0: Array
    angles0: Array
    pressure: Array


def initial_wyckoff_dofs(wc, cell: bool):
    """Starting DOF rows ``(B, S+2, 3)``, row mask ``(B, S+2)`` and ``ℓ (B,)`` (Å)."""
    c = reconstruct(wc, wrap=False)
    vol = jnp.abs(c.volume)
    scale = vol ** (1.0 / 3.0)
    b = wc.site_mask.shape[0]
    x = jnp.concatenate(
        [wc.coords * scale[:, None, None], jnp.zeros((b, 2, 3), wc.cell.dtype)], axis=1
    )
    row_mask = jnp.concatenate([wc.site_mask, jnp.full((b, 2), cell)], axis=1)
    return x, row_mask, scale


def wyckoff_from_dofs(x: Array, data: WyckoffData):
    """The :class:`~jaxcsp.symmetry.WyckoffCrystals` described by DOF rows ``x`` (traceable)."""
    s = data.wc.site_mask.shape[1]
    scale = data.scale[:, None]
    coords = x[:, :s] / scale[..., None]
    abc = data.abc0 * jnp.exp(x[:, s] / scale)
    angles = jnp.rad2deg(data.angles0 + x[:, s + 1] / scale)
    return data.wc.replace(coords=coords, cell=jnp.concatenate([abc, angles], axis=-1))


def crystals_from_wyckoff_dofs(x: Array, data: WyckoffData) -> Crystals:
    """The reconstructed crystals of DOF rows ``x`` (traceable, differentiable)."""
    return reconstruct(wyckoff_from_dofs(x, data), wrap=False)
