"""The ``Crystals`` batch: a padded, frozen pytree of periodic structures.

Contract:

* ``lattice`` ``(B, 3, 3)`` float — rows are the lattice vectors **a**, **b**, **c** in Å.
* ``frac`` ``(B, N, 3)`` float — fractional coordinates; Cartesian positions are
  ``frac @ lattice`` (Å).
* ``species`` ``(B, N)`` int32 — atomic numbers; ``0`` marks a padding slot.
* ``mask`` ``(B, N)`` bool — ``True`` for real atoms (always ``species > 0``).

Every crystal is fully periodic. A single crystal is a batch of one; functions are written for
one crystal (leaves ``(3, 3)``, ``(N, 3)``, ``(N,)``) and batched with :func:`jax.vmap`; the
derived properties below work on both shapes. ``Crystals`` passes unchanged through
:func:`jax.jit`, :func:`jax.vmap`, :func:`jax.grad` and :func:`jax.tree.map`.

Host-side helpers (:meth:`Crystals.create`, :func:`stack`, :func:`concatenate`, :func:`unstack`,
:func:`pad`, :func:`compact`) decide shapes and validate with numpy; they raise
:class:`~jaxcsp.errors.InvalidStructureError` naming the structure and field. Device-side helpers
(:meth:`Crystals.wrap`, :meth:`Crystals.take`, properties) are pure ``jnp`` and trace under jit.

>>> import numpy as np
>>> c = Crystals.create(np.eye(3) * 3.0, [[0, 0, 0], [0.5, 0.5, 0.5]], [11, 17])
>>> c.batch_size, c.max_atoms, float(c.volume[0])
(1, 2, 27.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.elements import atomic_numbers
from jaxcsp.errors import InvalidStructureError, check_real

__all__ = [
    "MIN_DISTANCE",
    "Crystals",
    "check_overlaps",
    "compact",
    "concatenate",
    "find_overlaps",
    "pad",
    "stack",
    "unstack",
    "validate",
]

Array = jax.Array

#: Largest atomic number accepted.
MAX_Z = 118
#: A cell whose volume is below this fraction of |a||b||c| is treated as singular.
SINGULAR_TOL = 1e-8
#: Two atoms (or an atom and a periodic image) closer than this (Å) overlap.
MIN_DISTANCE = 0.1
#: Pair entries :func:`find_overlaps` evaluates at once (bounds its memory to a few MB).
_PAIR_BLOCK = 1 << 18


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Crystals:
    """A padded batch of periodic crystals (see the module docstring for the contract).

    Attributes:
      lattice: ``(B, 3, 3)`` float, lattice vectors as rows, Å.
      frac: ``(B, N, 3)`` float, fractional coordinates (dimensionless).
      species: ``(B, N)`` int32, atomic numbers; 0 = padding.
      mask: ``(B, N)`` bool, ``True`` for real atoms.

    Build one with :meth:`Crystals.create` (validates on the host) or, inside traced code, with
    the plain constructor (no checks) or :func:`dataclasses.replace`.
    """

    lattice: Array
    frac: Array
    species: Array
    mask: Array

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        lattice: Any,
        frac: Any,
        species: Any,
        mask: Any | None = None,
        *,
        dtype: Any | None = None,
        source: str | None = None,
    ) -> Crystals:
        """Build a validated batch from array-likes (host side, not traceable).

        Unbatched input (``lattice (3, 3)``, ``frac (N, 3)``, ``species (N,)``) becomes a batch
        of one. Species may be atomic numbers or element symbols (``"Si"``; ``""`` or ``"X"``
        for padding is not accepted: use 0).

        Args:
          lattice: ``(B, 3, 3)`` or ``(3, 3)`` lattice rows, Å.
          frac: ``(B, N, 3)`` or ``(N, 3)`` fractional coordinates.
          species: ``(B, N)`` or ``(N,)`` atomic numbers (int) or symbols (str), 0 = padding.
          mask: optional ``(B, N)`` bool; defaults to ``species > 0`` and must equal it if given.
          dtype: float dtype of ``lattice``/``frac``; defaults to the input's float dtype as
            canonicalised by JAX (float32 unless ``jax_enable_x64``).
          source: name used in error messages (e.g. a file path).

        Returns:
          A validated :class:`Crystals`.

        Raises:
          InvalidStructureError: ragged or mismatched shapes, unknown elements, non-finite
            coordinates, singular or left-handed cells, or an inconsistent mask.
        """
        lat = _as_float_array(lattice, "lattice", source)
        fr = _as_float_array(frac, "frac", source)
        sp = _species_array(species, source)
        if lat.ndim == 2 and fr.ndim == 2 and sp.ndim == 1:
            lat, fr, sp = lat[None], fr[None], sp[None]
            if mask is not None:
                mask = np.asarray(mask)[None]
        mk = (sp > 0) if mask is None else np.asarray(mask)
        validate_arrays(lat, fr, sp, mk, source=source)
        if dtype is None:
            dtype = jax.dtypes.canonicalize_dtype(np.result_type(lat.dtype, fr.dtype))
        return cls(
            lattice=jnp.asarray(lat, dtype=dtype),
            frac=jnp.asarray(fr, dtype=dtype),
            species=jnp.asarray(sp, dtype=jnp.int32),
            mask=jnp.asarray(mk, dtype=bool),
        )

    # ------------------------------------------------------------------ derived quantities
    @property
    def positions(self) -> Array:
        """Cartesian positions ``(..., N, 3)`` in Å (``frac @ lattice``; padding at the origin)."""
        return jnp.einsum("...ni,...ij->...nj", self.frac, self.lattice)

    @property
    def num_atoms(self) -> Array:
        """Number of real atoms per crystal, ``(...,)`` int32."""
        return jnp.sum(self.mask, axis=-1, dtype=jnp.int32)

    @property
    def volume(self) -> Array:
        """Signed cell volume ``det(lattice)``, ``(...,)`` in Å³ (positive for valid cells)."""
        return jnp.linalg.det(self.lattice)

    @property
    def batch_size(self) -> int:
        """Number of crystals ``B`` (static)."""
        return self.lattice.shape[0]

    @property
    def max_atoms(self) -> int:
        """Padded atom dimension ``N`` (static)."""
        return self.frac.shape[-2]

    @property
    def dtype(self):
        """Float dtype of ``lattice`` and ``frac``."""
        return self.frac.dtype

    def __len__(self) -> int:
        return self.batch_size

    def __repr__(self) -> str:
        try:
            return (
                f"Crystals(batch_size={self.lattice.shape[0]}, max_atoms={self.frac.shape[-2]}, "
                f"dtype={self.frac.dtype})"
            )
        except (AttributeError, IndexError, TypeError):  # leaves replaced by tree.map
            return (
                f"Crystals(lattice={self.lattice!r}, frac={self.frac!r}, "
                f"species={self.species!r}, mask={self.mask!r})"
            )

    # ------------------------------------------------------------------ device-side helpers
    def replace(self, **changes: Any) -> Crystals:
        """Return a copy with some fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def wrap(self) -> Crystals:
        """Wrap fractional coordinates into ``[0, 1)`` (differentiable; padding stays 0)."""
        return self.replace(frac=_wrap_frac(self.frac, self.mask))

    def take(self, indices: Any) -> Crystals:
        """Sub-batch by integer indices ``(K,)`` (or a boolean mask on the host). Traceable."""
        if isinstance(indices, jax.core.Tracer) and indices.dtype == bool:
            raise TypeError(
                "Crystals.take: a boolean mask selects a data-dependent number of rows; inside "
                "jit pass integer indices (e.g. jnp.nonzero(mask, size=K)[0])"
            )
        if not isinstance(indices, jax.Array) or indices.dtype == bool:
            # host indices (or a concrete boolean mask): numpy's meaning, on the host
            indices = np.asarray(indices)
            if indices.dtype == bool:
                indices = np.flatnonzero(indices)
        return _take(self, indices)

    def validate(self, *, source: str | None = None) -> Crystals:
        """Check this (concrete, batched) crystal batch on the host; return it unchanged.

        Raises:
          InvalidStructureError: see :meth:`create`.
        """
        validate_arrays(
            np.asarray(self.lattice),
            np.asarray(self.frac),
            np.asarray(self.species),
            np.asarray(self.mask),
            source=source,
        )
        return self


# ---------------------------------------------------------------------- validation


def _as_float_array(x: Any, field: str, source: str | None) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except ValueError as e:  # ragged nested lists
        raise InvalidStructureError(
            f"ragged or malformed array ({e})", field=field, source=source
        ) from e
    if arr.dtype == object:
        raise InvalidStructureError("ragged or malformed array", field=field, source=source)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidStructureError(
            f"expected numbers, got dtype {arr.dtype}", field=field, source=source
        )
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _species_array(species: Any, source: str | None) -> np.ndarray:
    try:
        arr = np.asarray(species)
    except ValueError as e:
        raise InvalidStructureError(f"ragged species ({e})", field="species", source=source) from e
    if arr.dtype == object:
        raise InvalidStructureError(
            "ragged or malformed species array", field="species", source=source
        )
    if arr.dtype.kind in "US":
        flat = [str(s) for s in arr.reshape(-1)]
        try:
            nums = atomic_numbers(flat)
        except InvalidStructureError as e:
            index = None
            if arr.ndim == 2 and e.index is not None:
                index = e.index // arr.shape[1]
            raise InvalidStructureError(
                e.reason, index=index, field="species", source=source
            ) from e
        return np.asarray(nums, dtype=np.int32).reshape(arr.shape)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InvalidStructureError(
                "atomic numbers must be integers", field="species", source=source
            )
    elif arr.dtype.kind not in "iu":
        raise InvalidStructureError(
            f"expected atomic numbers or symbols, got dtype {arr.dtype}",
            field="species",
            source=source,
        )
    return arr.astype(np.int32)


def validate_arrays(
    lattice: np.ndarray,
    frac: np.ndarray,
    species: np.ndarray,
    mask: np.ndarray,
    *,
    source: str | None = None,
) -> None:
    """Validate raw batch arrays on the host (shapes, finiteness, cells, species, mask).

    Args:
      lattice: ``(B, 3, 3)`` Å. frac: ``(B, N, 3)``. species: ``(B, N)`` int. mask: ``(B, N)``.
      source: name used in error messages.

    Raises:
      InvalidStructureError: the first problem found, naming structure index and field.
    """

    def err(msg, index=None, field=None):
        return InvalidStructureError(msg, index=index, field=field, source=source)

    if lattice.ndim != 3 or lattice.shape[1:] != (3, 3):
        raise err(f"expected shape (B, 3, 3), got {lattice.shape}", field="lattice")
    b = lattice.shape[0]
    if frac.ndim != 3 or frac.shape[2] != 3:
        raise err(f"expected shape (B, N, 3), got {frac.shape}", field="frac")
    if frac.shape[0] != b:
        raise err(f"batch size {frac.shape[0]} != lattice batch size {b}", field="frac")
    n = frac.shape[1]
    if species.shape != (b, n):
        raise err(f"expected shape {(b, n)} to match frac, got {species.shape}", field="species")
    if mask.shape != (b, n):
        raise err(f"expected shape {(b, n)} to match frac, got {mask.shape}", field="mask")
    if mask.dtype != bool:
        raise err(f"expected a bool mask, got dtype {mask.dtype}", field="mask")

    bad = ~np.all(np.isfinite(lattice), axis=(1, 2))
    if bad.any():
        raise err("non-finite lattice entries", index=int(np.argmax(bad)), field="lattice")
    bad = ~np.all(np.isfinite(frac), axis=(1, 2))
    if bad.any():
        i = int(np.argmax(bad))
        atom = int(np.argmax(~np.all(np.isfinite(frac[i]), axis=1)))
        raise err(f"non-finite fractional coordinates (atom {atom})", index=i, field="frac")

    bad = (species < 0) | (species > MAX_Z)
    if bad.any():
        i = int(np.argmax(bad.any(axis=1)))
        z = int(species[i][bad[i]][0])
        raise err(f"atomic number {z} outside 0..{MAX_Z}", index=i, field="species")
    bad = mask != (species > 0)
    if bad.any():
        i = int(np.argmax(bad.any(axis=1)))
        raise err("mask must be True exactly where species > 0", index=i, field="mask")
    empty = ~mask.any(axis=1)
    if empty.any():
        raise err("structure has no atoms", index=int(np.argmax(empty)), field="species")

    vol = np.linalg.det(lattice)
    scale = np.prod(np.linalg.norm(lattice, axis=2), axis=1)
    singular = ~(np.abs(vol) > SINGULAR_TOL * scale)
    if singular.any():
        i = int(np.argmax(singular))
        raise err(f"cell is singular (volume {vol[i]:.3g} Å^3)", index=i, field="lattice")
    left = vol < 0
    if left.any():
        i = int(np.argmax(left))
        raise err(
            f"cell is left-handed (det = {vol[i]:.6g} Å^3); reorder or negate a lattice vector "
            "(and its fractional column)",
            index=i,
            field="lattice",
        )


def validate(crystals: Crystals, *, source: str | None = None) -> Crystals:
    """Functional alias of :meth:`Crystals.validate`."""
    return crystals.validate(source=source)


def find_overlaps(
    crystals: Crystals, min_distance: float = MIN_DISTANCE, *, source: str | None = None
) -> list[InvalidStructureError | None]:
    """Find structures with two atoms closer than ``min_distance`` (host side, numpy).

    Distances are minimum-image over periodic images: the pair's fractional difference is
    wrapped to ``[-0.5, 0.5]`` and every image within ``m_k = max(1, floor(0.5 + r / d_k))``
    cells along axis ``k`` is tried (``d_k`` the interplanar spacing; a 3x3x3 box for any cell
    whose spacings exceed ``r / 1.5``), which finds every pair closer than ``r`` (``m_k`` is
    capped at 4: exact unless a spacing is below ``r / 4``, i.e. 0.025 Å at the default). An
    atom closer than ``r`` to its own periodic image (a lattice vector shorter than ``r``)
    overlaps too.
    Cost ``O(B N^2)`` numpy work in blocks of a few MB.

    Args:
      crystals: concrete batch (``lattice (B, 3, 3)`` Å, ``frac (B, N, 3)``, ``mask (B, N)``)
        or a single crystal; only real atoms (``mask``) count.
      min_distance: threshold ``r`` in Å (positive).
      source: name used in the error messages (e.g. a file path).

    Returns:
      ``B`` entries: ``None`` for a structure without overlaps, else an
      :class:`~jaxcsp.errors.InvalidStructureError` (``index`` = batch index,
      ``field="frac"``) naming its closest pair by slot index, e.g. ``"atoms 0 and 1 are
      0.000 Å apart (closer than 0.1 Å)"``.

    Raises:
      InvalidArgumentError: ``min_distance`` is not a positive finite number.

    >>> import numpy as np
    >>> c = Crystals.create(np.eye(3) * 3.0, [[0, 0, 0], [0.99, 0, 0]], [14, 14])
    >>> print(find_overlaps(c)[0])
    structure 0, field 'frac': atoms 0 and 1 are 0.030 Å apart (closer than 0.1 Å)
    """
    r = float(check_real("min_distance", min_distance, unit="Å"))
    lat = np.asarray(crystals.lattice, np.float64)
    frac = np.asarray(crystals.frac, np.float64)
    mask = np.asarray(crystals.mask, bool)
    if lat.ndim == 2:
        lat, frac, mask = lat[None], frac[None], mask[None]
    b, n, _ = frac.shape
    out: list[InvalidStructureError | None] = [None] * b
    if b == 0 or n == 0:
        return out
    with np.errstate(all="ignore"):
        try:
            inv = np.linalg.inv(lat)
        except np.linalg.LinAlgError:  # a singular cell somewhere: validate() names it
            inv = np.linalg.pinv(lat)
        # |frac_k| <= r * |column k of inv(L)| for any vector shorter than r
        reach = r * np.linalg.norm(inv, axis=-2)
    reach = np.where(np.isfinite(reach), reach, 0.0)
    m_all = np.clip(np.floor(0.5 + reach), 1, 4).astype(int)  # (B, 3)
    if n * n <= _PAIR_BLOCK:
        per, rows = max(1, _PAIR_BLOCK // (n * n)), n
    else:
        per, rows = 1, max(1, _PAIR_BLOCK // n)
    jj = np.arange(n)
    for s0 in range(0, b, per):
        s = slice(s0, min(b, s0 + per))
        m = m_all[s].max(axis=0)
        grid = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in m], indexing="ij"), -1).reshape(
            -1, 3
        )
        shifts = np.einsum("kj,bjl->bkl", grid.astype(np.float64), lat[s])  # (b, K, 3) Å
        zero = int(np.flatnonzero(~grid.any(axis=1))[0])
        f, msk = frac[s], mask[s]
        best = np.full(f.shape[0], np.inf)
        pair = np.zeros((f.shape[0], 2), int)
        for i0 in range(0, n, rows):
            ii = np.arange(i0, min(n, i0 + rows))
            d = f[:, None, :, :] - f[:, ii, None, :]  # (b, rows, n, 3): atom j - atom i
            d -= np.round(d)
            cart = np.einsum("bijk,bkl->bijl", d, lat[s])
            d2 = np.full(cart.shape[:3], np.inf)
            for k in range(len(grid)):
                dk = np.sum((cart + shifts[:, k, None, None, :]) ** 2, axis=-1)
                if k == zero:
                    dk[:, jj[None, :] == ii[:, None]] = np.inf  # an atom and itself
                np.minimum(d2, dk, out=d2, where=np.isfinite(dk))
            pairs = msk[:, ii, None] & msk[:, None, :] & (jj[None, :] >= ii[:, None])
            d2 = np.where(pairs, d2, np.inf).reshape(d2.shape[0], -1)
            arg = np.argmin(d2, axis=1)
            low = d2[np.arange(len(arg)), arg]
            better = low < best
            best = np.where(better, low, best)
            pair[better] = np.stack([ii[arg // n], arg % n], -1)[better]
        for hit in np.flatnonzero(best < r * r):
            i, j = (int(x) for x in pair[hit])
            who = f"atoms {i} and {j}" if i != j else f"atom {i} and its periodic image"
            out[s0 + int(hit)] = InvalidStructureError(
                f"{who} are {np.sqrt(best[hit]):.3f} Å apart (closer than {r:g} Å)",
                index=s0 + int(hit),
                field="frac",
                source=source,
            )
    return out


def check_overlaps(
    crystals: Crystals, min_distance: float = MIN_DISTANCE, *, source: str | None = None
) -> Crystals:
    """Raise if any structure has two atoms closer than ``min_distance`` Å.

    The raising form of :func:`find_overlaps` (same distances, periodic images included).

    Args:
      crystals: concrete batch ``(B, N)`` or a single crystal.
      min_distance: threshold in Å.
      source: name used in the error message.

    Returns:
      ``crystals`` unchanged.

    Raises:
      InvalidStructureError: ``field="frac"``, ``index`` = the first overlapping structure,
        naming its closest pair.
    """
    for err in find_overlaps(crystals, min_distance, source=source):
        if err is not None:
            raise err
    return crystals


# ---------------------------------------------------------------------- host-side batching


def _as_batch(c: Crystals) -> Crystals:
    if np.ndim(c.lattice) == 2:
        return jax.tree.map(lambda x: jnp.asarray(x)[None], c)
    return c


# Jitted bodies of Crystals methods: called eagerly they are one compiled program per shape
# instead of one per operation.
@jax.jit
def _wrap_frac(frac: Array, mask: Array) -> Array:
    w = frac - jnp.floor(frac)
    w = jnp.where(w >= 1.0, w - 1.0, w)  # -1e-17 - floor(-1e-17) rounds to exactly 1.0
    return jnp.where(mask[..., None], w, jnp.zeros_like(w))


@jax.jit
def _take(crystals: Crystals, indices: Array) -> Crystals:
    return jax.tree.map(lambda x: jnp.take(x, indices, axis=0), crystals)


def pad(crystals: Crystals, max_atoms: int) -> Crystals:
    """Pad (or trim trailing padding of) the atom axis to ``max_atoms`` slots (host side).

    Args:
      crystals: batch with ``N`` slots.
      max_atoms: new slot count ``N'``; may be smaller than ``N`` only if every removed slot is
        padding.

    Returns:
      ``Crystals`` with leaves ``(B, N', ...)``; new slots have species 0, mask False, frac 0.

    Raises:
      InvalidStructureError: if trimming would drop a real atom.
    """
    c = _as_batch(crystals)
    n = c.max_atoms
    if max_atoms < n:
        dropped = np.asarray(c.mask)[:, max_atoms:].any(axis=1)
        if dropped.any():
            raise InvalidStructureError(
                f"cannot pad to {max_atoms} slots: atoms beyond slot {max_atoms} are real",
                index=int(np.argmax(dropped)),
                field="mask",
            )
        return Crystals(
            c.lattice, c.frac[:, :max_atoms], c.species[:, :max_atoms], c.mask[:, :max_atoms]
        )
    extra = max_atoms - n
    return Crystals(
        lattice=c.lattice,
        frac=jnp.pad(c.frac, ((0, 0), (0, extra), (0, 0))),
        species=jnp.pad(c.species, ((0, 0), (0, extra))),
        mask=jnp.pad(c.mask, ((0, 0), (0, extra))),
    )


def concatenate(batches: Sequence[Crystals], *, max_atoms: int | None = None) -> Crystals:
    """Concatenate batches of different atom counts along the batch axis (host side).

    Args:
      batches: non-empty sequence of ``Crystals`` (batched ``(B_i, N_i, ...)`` or single
        ``(N_i, ...)``), all of one float dtype.
      max_atoms: slot count of the result; default ``max_i N_i``.

    Returns:
      ``Crystals`` of batch ``sum_i B_i`` padded to ``max_atoms`` slots, in input order.
    """
    if len(batches) == 0:
        raise InvalidStructureError("cannot concatenate an empty sequence of crystals")
    items = [_as_batch(b) for b in batches]
    dtypes = {b.dtype for b in items}
    if len(dtypes) > 1:
        raise InvalidStructureError(f"mixed float dtypes {sorted(map(str, dtypes))}", field="frac")
    n = max(b.max_atoms for b in items) if max_atoms is None else max_atoms
    items = [pad(b, n) for b in items]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs, axis=0), *items)


def stack(crystals: Sequence[Crystals], *, max_atoms: int | None = None) -> Crystals:
    """Stack single crystals (or batches) of mixed sizes into one padded batch.

    Same as :func:`concatenate`; provided under the name users reach for when each item is one
    crystal.
    """
    return concatenate(crystals, max_atoms=max_atoms)


def compact(crystals: Crystals) -> Crystals:
    """Move real atoms to the front of each row (stable order) and trim to the largest count.

    Host side. Returns ``Crystals`` with ``N = max(num_atoms)``.
    """
    c = _as_batch(crystals)
    mask = np.asarray(c.mask)
    order = np.argsort(~mask, axis=1, kind="stable")
    n = int(mask.sum(axis=1).max()) if mask.size else 0
    idx = jnp.asarray(order[:, :n])
    gather = lambda x: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)  # noqa: E731
    return Crystals(c.lattice, gather(c.frac), gather(c.species), gather(c.mask))


def unstack(crystals: Crystals) -> list[Crystals]:
    """Split a batch into a list of batches of one, each trimmed to its own real atoms.

    Host side. ``concatenate(unstack(c))`` equals ``compact(c)``.
    """
    c = _as_batch(crystals)
    mask = np.asarray(c.mask)
    out = []
    for i in range(c.batch_size):
        sel = np.nonzero(mask[i])[0]
        out.append(
            Crystals(
                lattice=c.lattice[i : i + 1],
                frac=c.frac[i : i + 1, sel],
                species=c.species[i : i + 1, sel],
                mask=c.mask[i : i + 1, sel],
            )
        )
    return out
