"""The ``Potential`` protocol: a pure energy function of one crystal and its neighbors.

Contract:

* A :class:`Potential` is a frozen pytree. Its ``params`` (numeric hyperparameters: ε, σ, Tersoff
  tables, network weights, …) are **array leaves**, so they can be traced, differentiated and
  vmapped; everything that decides shapes or code paths (``energy_fn``, ``cutoff``, ``species``,
  ``options``, ``name``) is **static** metadata and hashable, so two potentials built with the same
  constructor arguments share one compiled program.
* ``potential.energy(crystal, neighbors)`` returns the total energy (eV) of **one** crystal
  (leaves ``lattice (3, 3)``, ``frac (N, 3)``, ``species (N,)``, ``mask (N,)``) from its neighbor
  list (``index (N, K)``, ``shift (N, K, 3)``, ``mask (N, K)``; see :mod:`jaxcsp.neighbors`).
  Batch it with :func:`jax.vmap`; differentiate it with :func:`jax.grad`. Padded atoms contribute
  nothing. Potentials with ``cutoff=None`` (external MLIPs) build their own graphs and receive
  ``neighbors=None``.
* ``potential.energies(crystals, neighbors)`` returns the ``(B,)`` energies of a batch:
  ``vmap(energy)``, or the potential's own ``batch_energy_fn`` when it has one (a model that
  processes the batch as one graph). The calculator and the relaxers call it.
* A neighbor list built with a **larger** cutoff than ``potential.cutoff`` (a Verlet skin) gives
  the same energy: every potential masks pairs with ``r >= cutoff`` itself.
* ``species`` is the tuple of atomic numbers the potential covers (``None``: any element).
  :func:`check_species` raises :class:`~jaxcsp.errors.InvalidStructureError` naming the structure
  and the element before anything is traced; inside ``jit`` unsupported species are not checked.
* Energies follow the input float dtype and are accumulated in at least float32.

Any code that takes a ``Potential`` (the calculator, batched relaxers, symmetry-preserving
relaxation through ``reconstruct``, learned Flax potentials, the MLIP bridge) only needs
``energy``, ``cutoff`` and ``species``.

>>> import jax.numpy as jnp
>>> def harmonic(params, crystal, neighbors, options):
...     return params["k"] * jnp.sum(crystal.frac**2)
>>> p = Potential(harmonic, {"k": jnp.asarray(2.0)}, cutoff=None, name="harmonic")
>>> p.cutoff is None, p.name
(True, 'harmonic')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.crystal import Crystals
from jaxcsp.elements import atomic_numbers, chemical_symbols
from jaxcsp.errors import InvalidStructureError

__all__ = [
    "EnergyFn",
    "Potential",
    "accumulator_dtype",
    "check_elements",
    "check_positive",
    "check_species",
    "edge_vectors_single",
    "masked_distances",
    "species_table",
    "species_tuple",
]

Array = jax.Array

#: ``energy_fn(params, crystal, neighbors, options) -> ()`` energy in eV of one crystal.
EnergyFn = Callable[[Any, Crystals, Any, Any], Array]

#: Length of atomic-number lookup tables (Z = 0 … 118).
NUM_Z = 119


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Potential:
    """An interatomic potential: a pure, jit/grad/vmap-composable energy of one crystal.

    Attributes:
      energy_fn: static callable ``energy_fn(params, crystal, neighbors, options)`` returning the
        scalar energy (eV) of one crystal; ``neighbors`` is a single-crystal
        :class:`~jaxcsp.neighbors.Neighbors` (``None`` when ``cutoff`` is ``None``).
      params: pytree of arrays (traced): the numeric hyperparameters.
      cutoff: static float, interaction range in Å (the neighbor-list cutoff), or ``None`` for
        potentials that do not use jaxcsp neighbor lists (external MLIPs).
      species: static tuple of supported atomic numbers, or ``None`` for any element.
      options: static, hashable configuration passed to ``energy_fn`` (e.g. the cutoff mode).
      name: static human-readable name used in error messages.
      batch_energy_fn: optional static callable ``batch_energy_fn(params, crystals, neighbors,
        options)`` returning the ``(B,)`` energies of a batch at once, equal to
        ``vmap(energy_fn)`` up to floating-point summation order (a model may process the batch
        as one graph, e.g. to skip padded neighbor slots). Used by :meth:`energies`.
      uncertainty_fn: optional static callable ``uncertainty_fn(params, crystals, neighbors,
        options)`` returning a ``(B,)`` dimensionless uncertainty of the prediction for a batch
        (e.g. an ensemble's relative force spread); :func:`jaxcsp.optimize.relax` stops a
        structure when it exceeds ``max_uncertainty``. Used by :meth:`uncertainties`.
    """

    energy_fn: EnergyFn = dataclasses.field(metadata=dict(static=True))
    params: Any = None
    cutoff: float | None = dataclasses.field(default=None, metadata=dict(static=True))
    species: tuple[int, ...] | None = dataclasses.field(default=None, metadata=dict(static=True))
    options: Any = dataclasses.field(default=None, metadata=dict(static=True))
    name: str = dataclasses.field(default="potential", metadata=dict(static=True))
    batch_energy_fn: Any = dataclasses.field(default=None, metadata=dict(static=True))
    uncertainty_fn: Any = dataclasses.field(default=None, metadata=dict(static=True))

    def energy(self, crystal: Crystals, neighbors: Any = None) -> Array:
        """Energy of ONE crystal in eV, ``()`` (float dtype of the crystal, ≥ float32).

        Args:
          crystal: unbatched :class:`~jaxcsp.crystal.Crystals` (``lattice (3, 3)`` Å,
            ``frac (N, 3)``, ``species (N,)`` int32, ``mask (N,)`` bool).
          neighbors: unbatched neighbor list (``index (N, K)``, ``shift (N, K, 3)``,
            ``mask (N, K)``) built with a cutoff ≥ ``self.cutoff``; ``None`` if ``cutoff`` is
            ``None``.
        """
        return self.energy_fn(self.params, crystal, neighbors, self.options)

    def energies(self, crystals: Crystals, neighbors: Any = None) -> Array:
        """Energies of a BATCH in eV, ``(B,)``: ``batch_energy_fn`` when given, else
        ``vmap(energy)``. ``neighbors`` is the batch's list (``None`` if ``cutoff`` is ``None``).
        """
        if self.batch_energy_fn is not None:
            return self.batch_energy_fn(self.params, crystals, neighbors, self.options)
        if neighbors is None:
            return jax.vmap(lambda c: self.energy(c, None))(crystals)
        return jax.vmap(self.energy)(crystals, neighbors)

    def uncertainties(self, crystals: Crystals, neighbors: Any = None) -> Array:
        """Uncertainty of the prediction for a BATCH, ``(B,)`` (dimensionless); only for
        potentials with an ``uncertainty_fn`` (e.g. :meth:`jaxcsp.models.MLFFEnsemble.potential`).
        """
        if self.uncertainty_fn is None:
            raise TypeError(f"potential {self.name!r} has no uncertainty_fn")
        return self.uncertainty_fn(self.params, crystals, neighbors, self.options)

    def replace(self, **changes: Any) -> Potential:
        """Copy with some fields replaced (e.g. new ``params`` during training)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return f"Potential(name={self.name!r}, cutoff={self.cutoff}, species={self.species})"


# ---------------------------------------------------------------------- host-side helpers


@overload
def species_tuple(species: None, *, field: str = "species") -> None: ...
@overload
def species_tuple(species: Sequence[int | str], *, field: str = "species") -> tuple[int, ...]: ...
@overload
def species_tuple(
    species: Sequence[int | str] | None, *, field: str = "species"
) -> tuple[int, ...] | None: ...


def species_tuple(
    species: Sequence[int | str] | None, *, field: str = "species"
) -> tuple[int, ...] | None:
    """Normalise element symbols / atomic numbers to a sorted tuple of unique atomic numbers."""
    if species is None:
        return None

    out: list[int] = []
    for s in species:
        if isinstance(s, str):
            out.append(atomic_numbers([s])[0])
        else:
            z = int(s)
            if not 1 <= z < NUM_Z:
                raise InvalidStructureError(f"invalid atomic number {s!r}", field=field)
            out.append(z)
    return tuple(sorted(set(out)))


def species_table(species: Sequence[int]) -> np.ndarray:
    """``(119,)`` int32 table mapping atomic number → type index (0 for unknown elements)."""
    table = np.zeros(NUM_Z, dtype=np.int32)
    for t, z in enumerate(species):
        table[z] = t
    return table


def _not_covered(potential: Potential, z: int, atom: int, index: int, source: str | None):
    assert potential.species is not None  # both callers return early for species=None
    covered = ", ".join(chemical_symbols(potential.species))
    return InvalidStructureError(
        f"element {chemical_symbols([z])[0]} (Z={z}) at atom {atom} is not covered by "
        f"potential {potential.name!r} (covers {covered})",
        index=index,
        field="species",
        source=source,
    )


def check_species(potential: Potential, crystals: Crystals, *, source: str | None = None) -> None:
    """Raise if a (concrete, batched) crystal contains an element the potential does not cover.

    Args:
      potential: the potential.
      crystals: concrete batch ``species (B, N)``.
      source: optional origin used in the message.

    Raises:
      InvalidStructureError: ``field='species'`` and ``index`` = the first offending structure.
    """
    if potential.species is None:
        return
    species = np.asarray(crystals.species)
    if species.ndim == 1:
        species = species[None]
    mask = np.asarray(crystals.mask).reshape(species.shape)
    allowed = np.zeros(NUM_Z, dtype=bool)
    allowed[list(potential.species)] = True
    bad = mask & ~allowed[np.clip(species, 0, NUM_Z - 1)]
    if bad.any():
        b, n = np.argwhere(bad)[0]
        raise _not_covered(potential, int(species[b, n]), int(n), int(b), source)


def check_elements(
    potential: Potential,
    numbers: Sequence[Any],
    *,
    ids: Sequence[int] | None = None,
    source: str | None = None,
) -> None:
    """Raise if any structure, given by its atomic numbers, holds an element the potential lacks.

    The ragged, host-side form of :func:`check_species` for inputs not yet packed into a
    ``Crystals`` batch (e.g. ``[atoms.numbers for atoms in images]``), so that a set-up mistake
    such as NaCl with a silicon potential fails before anything is validated or compiled.
    Numbers outside ``1..118`` are left to structure validation.

    Args:
      potential: the potential (``species=None`` covers every element).
      numbers: one sequence of atomic numbers ``(n_atoms,)`` per structure.
      ids: the index reported for each structure (default ``0, 1, ...``).
      source: optional origin used in the message.

    Raises:
      InvalidStructureError: ``field='species'``, ``index`` = the first offending structure's id,
        naming the element, the atom and what the potential covers.
    """
    if potential.species is None:
        return
    allowed = np.zeros(NUM_Z, dtype=bool)
    allowed[list(potential.species)] = True
    for k, z in enumerate(numbers):
        z = np.asarray(z, dtype=np.int64).reshape(-1)
        bad = (z > 0) & (z < NUM_Z) & ~allowed[np.clip(z, 0, NUM_Z - 1)]
        if bad.any():
            atom = int(np.argmax(bad))
            index = k if ids is None else int(ids[k])
            raise _not_covered(potential, int(z[atom]), atom, index, source)


def check_positive(name: str, value: Any, *, allow_zero: bool = False, potential: str = "") -> None:
    """Raise :class:`InvalidStructureError` (``field=name``) unless all of ``value`` are > 0."""
    arr = np.asarray(value, dtype=np.float64)
    ok = np.all(np.isfinite(arr)) and (np.all(arr >= 0) if allow_zero else np.all(arr > 0))
    if not ok:
        what = "non-negative" if allow_zero else "positive"
        where = f"{potential}: " if potential else ""
        raise InvalidStructureError(
            f"{where}{name} must be finite and {what}, got {value!r}", field=name
        )


def accumulator_dtype(dtype: Any) -> Any:
    """Dtype for energy sums: the input float dtype, but at least float32."""
    return jnp.promote_types(dtype, jnp.float32)


# ---------------------------------------------------------------------- device-side helpers


def edge_vectors_single(crystal: Crystals, neighbors: Any) -> Array:
    """Vectors i→j (``r_j - r_i + shift @ lattice``) of ONE crystal, ``(N, K, 3)`` Å.

    Differentiable w.r.t. ``crystal.frac`` and ``crystal.lattice``; masked slots are zero.
    """
    frac = crystal.frac
    df = frac[neighbors.index] - frac[:, None, :] + neighbors.shift.astype(frac.dtype)
    v = df @ crystal.lattice.astype(frac.dtype)
    return jnp.where(neighbors.mask[..., None], v, jnp.zeros_like(v))


def masked_distances(
    vectors: Array, mask: Array, cutoff: float, fill: float
) -> tuple[Array, Array]:
    """Distances of edge vectors with a gradient-safe fill value outside ``mask & (r < cutoff)``.

    Args:
      vectors: ``(..., 3)`` edge vectors in Å.
      mask: ``(...)`` bool, real edges.
      cutoff: pairs with ``r >= cutoff`` are masked out.
      fill: distance (Å) substituted in masked slots (choose one where the pair function is
        finite); masked slots contribute zero value and zero gradient.

    Returns:
      ``(r, live)``: distances ``(...)`` Å and the live-pair mask ``(...)`` bool.
    """
    d2 = jnp.sum(vectors * vectors, axis=-1)
    live = mask & (d2 < cutoff * cutoff) & (d2 > 0)
    r = jnp.sqrt(jnp.where(live, d2, jnp.ones_like(d2)))
    return jnp.where(live, r, jnp.full_like(r, fill)), live
