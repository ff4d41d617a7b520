"""Host-side models as a :class:`Potential`: ``jax.pure_callback`` + ``custom_vjp``.

A host model is any object with a method

``compute(lattice (B, 3, 3), frac (B, N, 3), species (B, N), mask (B, N)) ->
(energy (B,), forces (B, N, 3), stress (B, 3, 3))``

working on numpy arrays (Å, eV, eV/Å, eV/Å³ with ASE's stress sign). :func:`host_potential`
wraps it so that ``potential.energy(crystal)`` is a JAX function of ``crystal.lattice`` and
``crystal.frac``:

* the forward pass is one ``jax.pure_callback`` with ``vmap_method="broadcast_all"``, so under
  ``jax.vmap`` (e.g. in :func:`jaxcsp.calculator.calculate`) the host receives the **whole batch**
  at once and can run batched inference;
* the backward pass (``custom_vjp``) uses the model's own forces and stress, no second call:
  ``∂E/∂frac = -F Lᵀ`` and ``∂E/∂L = L⁻ᵀ (V σ)`` (at fixed fractional coordinates), so
  ``jax.grad`` with respect to positions, the lattice, or anything upstream of them (Wyckoff free
  variables through :func:`jaxcsp.symmetry.reconstruct`) is right.

Second derivatives are not available (the cotangents are constants of the callback).
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.crystal import Crystals
from jaxcsp.potentials._base import Potential

__all__ = ["HostModel", "host_potential"]

Array = jax.Array


class HostModel(Protocol):
    """A batched host-side energy model (see the module docstring)."""

    def compute(
        self, lattice: np.ndarray, frac: np.ndarray, species: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def _host_call(model: HostModel, dtype: Any, lattice, frac, species, mask):
    lattice = np.asarray(lattice, dtype=np.float64)
    frac = np.asarray(frac, dtype=np.float64)
    species = np.asarray(species)
    mask = np.asarray(mask)
    lead = lattice.shape[:-2]
    n = frac.shape[-2]
    e, f, s = model.compute(
        lattice.reshape(-1, 3, 3),
        frac.reshape(-1, n, 3),
        species.reshape(-1, n),
        mask.reshape(-1, n),
    )
    return (
        np.asarray(e, dtype=dtype).reshape(lead),
        np.asarray(f, dtype=dtype).reshape((*lead, n, 3)),
        np.asarray(s, dtype=dtype).reshape((*lead, 3, 3)),
    )


def _callback(model: HostModel, lattice, frac, species, mask):
    dtype = frac.dtype
    n = frac.shape[-2]
    shapes = (
        jax.ShapeDtypeStruct((), dtype),
        jax.ShapeDtypeStruct((n, 3), dtype),
        jax.ShapeDtypeStruct((3, 3), dtype),
    )
    return jax.pure_callback(
        lambda *a: _host_call(model, np.dtype(dtype), *a),
        shapes,
        lattice,
        frac,
        species,
        mask,
        vmap_method="broadcast_all",
    )


def _make_energy(model: HostModel):
    @jax.custom_vjp
    def energy(lattice, frac, species, mask):
        return _callback(model, lattice, frac, species, mask)[0]

    def fwd(lattice, frac, species, mask):
        e, f, s = _callback(model, lattice, frac, species, mask)
        return e, (lattice, f, s)

    def bwd(res, g):
        lattice, f, s = res
        volume = jnp.abs(jnp.linalg.det(lattice))
        d_frac = -g * (f @ lattice.T)
        d_lattice = g * volume * (jnp.linalg.inv(lattice).T @ s)
        return d_lattice.astype(lattice.dtype), d_frac.astype(f.dtype), None, None

    energy.defvjp(fwd, bwd)
    return energy


_ENERGY_FNS: dict[int, Any] = {}


def _host_energy(params: Any, crystal: Crystals, neighbors: Any, options: Any) -> Array:
    model = options
    fn = _ENERGY_FNS.get(id(model))
    if fn is None:
        fn = _ENERGY_FNS[id(model)] = _make_energy(model)
    lattice = crystal.lattice.astype(crystal.frac.dtype)
    return fn(lattice, crystal.frac, crystal.species, crystal.mask)


def host_potential(
    model: HostModel, *, name: str, species: tuple[int, ...] | None = None
) -> Potential:
    """Wrap a batched host model as a :class:`Potential` (``cutoff=None``: no jaxcsp lists).

    Args:
      model: object with ``compute(lattice, frac, species, mask)`` (see module docstring); it
        is kept alive by the returned potential and used as its static identity.
      name: potential name for error messages.
      species: supported atomic numbers (``None``: any).

    Returns:
      A :class:`Potential` whose energy is differentiable w.r.t. ``lattice`` and ``frac`` (first
      derivatives only) and batches through ``jax.vmap`` into one host call.
    """
    return Potential(
        _host_energy, params=None, cutoff=None, species=species, options=model, name=name
    )
