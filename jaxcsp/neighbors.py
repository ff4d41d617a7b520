"""Batched periodic neighbor lists (fixed capacity, any cell, jit/vmap/grad-safe).

Contract:

* :class:`Neighbors` — ``index (B, N, K)`` int32, integer image ``shift (B, N, K, 3)`` int32,
  ``mask (B, N, K)`` bool and ``overflow (B,)`` bool; ``cutoff`` (Å) is static metadata.
* Convention (ASE's and vesin's): the vector from atom ``i`` to its neighbor ``j`` is
  ``r_j - r_i + shift @ lattice`` with ``r = frac @ lattice`` computed from the fractional
  coordinates *as given* (they need not be wrapped into ``[0, 1)``). Lists are full (both i→j and
  j→i); an atom's own periodic images are neighbors, the zero-shift self pair is not; padded atoms
  have no neighbors and are nobody's neighbor. A pair is a neighbor when its distance is strictly
  below the cutoff. Slots ``k`` with ``mask == False`` hold ``index = i`` (the atom itself) and a
  zero shift, so gathers stay in bounds and masked vectors are exactly zero.
* Capacity ``K`` and the image ranges are *shapes*: they are chosen on the host from the data
  (:func:`neighbor_list_spec`, with headroom) and checked inside ``jit``. :func:`update` reuses
  them while structures move and sets ``overflow`` for every crystal whose list did not fit or
  whose cell became too thin for the image budget; :func:`neighbor_list` re-allocates and
  recomputes until nothing overflows, so a list is never silently truncated.

Algorithm. Coordinates are wrapped, ``f = w + o`` with ``w`` in ``[0, 1)`` and integer ``o``; the
wrap is folded back into the returned shift (``shift = s + o_i - o_j``). With
``x_d = cutoff / width_d`` (``width_d = V / |a_e × a_f|`` the perpendicular width of the cell
along axis ``d``), a neighbor needs ``|w_j - w_i + s|_d <= x_d``, so for each pair the admissible
shifts along ``d`` form the interval ``[ceil(-x_d - Δw_d), floor(x_d - Δw_d)]``, which holds at most
``k_d = floor(2 x_d) + 1`` integers. Each pair therefore tests ``k_1 k_2 k_3`` candidate images
``s = lo_ij + t`` (``t`` in its crystal's box ``[0, k_1) × [0, k_2) × [0, k_3)``, numbered
within a static budget ``M``: the largest box of the batch, not the product of the per-axis
maxima, which for a batch of random cells is often 5-10x larger), instead of all
``prod(2 ceil(x_d) + 1)`` images of a cell-wide search (1 instead of 27 for a minimum-image cell,
8 instead of 27 for cells between one and two cutoffs wide). Candidates are tested in Cartesian
space (``|(Δw + lo) @ L + t @ L|² < cutoff²``, the image offset added on the fly) and the
survivors of each row are compacted into the ``K`` slots with a prefix sum. The Pallas kernel
(``pallas_kernels/neighbor_list.py``) computes the same candidate test on GPU.

>>> import numpy as np
>>> from jaxcsp.crystal import Crystals
>>> c = Crystals.create(np.eye(3) * 2.0, [[0.0, 0.0, 0.0]], [29])
>>> nl = neighbor_list(c, 2.5)
>>> int(nl.mask.sum())  # the 6 face images at 2 Å and 12 edge images at 2.83 Å -> 6
6
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

import pallas_kernels.neighbor_list as _pk
from jaxcsp.crystal import Crystals
from jaxcsp.errors import InvalidArgumentError, InvalidStructureError, JaxcspError

__all__ = [
    "EdgeList",
    "EdgeListSpec",
    "NeighborListOverflowError",
    "NeighborListSpec",
    "Neighbors",
    "cell_widths",
    "distances",
    "edge_list",
    "edge_list_spec",
    "edge_list_vectors",
    "edge_vectors",
    "neighbor_list",
    "neighbor_list_spec",
    "round_up_capacity",
    "update",
]

Array = jax.Array

#: Fractional-coordinate margin of the per-pair image interval (candidates are over-, never
#: under-enumerated; the distance test is exact).
_FRAC_EPS = _pk.FRAC_EPS
#: Backends accepted by :func:`neighbor_list`.
BACKENDS = ("auto", "xla", "pallas")
#: Upper bound on candidate images per pair (guards against absurd cutoff / width ratios).
MAX_IMAGES = 16384
#: Counted neighbor capacities are rounded up to a multiple of this, so that batches of similar
#: density reuse the same compiled programs.
CAPACITY_QUANTUM = 8


class NeighborListOverflowError(JaxcspError, RuntimeError):
    """A neighbor list still overflowed after re-allocation (should not happen; report it)."""


# ---------------------------------------------------------------------- types


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class Neighbors:
    """Fixed-capacity neighbor lists of a batch of crystals.

    Attributes:
      index: ``(B, N, K)`` int32, index ``j`` of each neighbor of atom ``i`` (``i`` itself in
        unused slots).
      shift: ``(B, N, K, 3)`` int32, integer image shift; the vector i→j is
        ``r_j - r_i + shift @ lattice`` (Å).
      mask: ``(B, N, K)`` bool, ``True`` for real entries.
      overflow: ``(B,)`` bool, ``True`` where the list of that crystal is incomplete (capacity
        ``K`` or the image range of the spec was too small); such a list must be rebuilt.
      cutoff: static float, cutoff radius in Å (pairs with distance ``< cutoff``).
    """

    index: Array
    shift: Array
    mask: Array
    overflow: Array
    cutoff: float = dataclasses.field(metadata=dict(static=True))

    @property
    def capacity(self) -> int:
        """Slots per atom ``K`` (static)."""
        return self.index.shape[-1]

    @property
    def num_neighbors(self) -> Array:
        """Neighbors per atom ``(B, N)`` int32."""
        return jnp.sum(self.mask, axis=-1, dtype=jnp.int32)

    def __repr__(self) -> str:
        try:
            return (
                f"Neighbors(shape={tuple(self.index.shape)}, cutoff={self.cutoff}, "
                f"overflow={np.asarray(self.overflow).any() if _concrete(self.overflow) else '?'})"
            )
        except (AttributeError, TypeError):
            return f"Neighbors(index={self.index!r}, cutoff={self.cutoff})"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NeighborListSpec:
    """Static shapes of a neighbor list, decided on the host (a pytree with no leaves).

    Pass it to :func:`update` inside ``jit``; it is hashable and has no array leaves, so it can
    be a static argument or an ordinary (empty) pytree argument.

    Attributes:
      cutoff: cutoff radius in Å.
      max_neighbors: capacity ``K`` (slots per atom).
      images: a box ``(m_1, m_2, m_3)`` whose product ``M`` is the static budget of candidate
        images per pair; each crystal enumerates its own box ``k_d = floor(2 cutoff / width_d)
        + 1`` inside it, so it covers every cell with ``k_1 k_2 k_3 <= M``.
      backend: ``"xla"`` or ``"pallas"`` (resolved, never ``"auto"``).
      interpret: run the Pallas kernel in interpret mode (automatic off GPU).
    """

    cutoff: float = dataclasses.field(metadata=dict(static=True))
    max_neighbors: int = dataclasses.field(metadata=dict(static=True))
    images: tuple[int, int, int] = dataclasses.field(metadata=dict(static=True))
    backend: str = dataclasses.field(default="xla", metadata=dict(static=True))
    interpret: bool = dataclasses.field(default=False, metadata=dict(static=True))

    @property
    def num_images(self) -> int:
        """Candidate images per pair ``M = m_1 m_2 m_3``."""
        return self.images[0] * self.images[1] * self.images[2]


# ---------------------------------------------------------------------- validation


def _concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_cutoff(cutoff: Any) -> float:
    if isinstance(cutoff, jax.core.Tracer):
        raise InvalidArgumentError(
            "cutoff must be a concrete Python number (it fixes shapes); use "
            "neighbor_list_spec outside jit and update inside it",
            argument="cutoff",
        )
    try:
        value = float(cutoff)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(
            f"cutoff must be a number, got {cutoff!r}", argument="cutoff", value=cutoff
        ) from e
    if not math.isfinite(value) or value <= 0.0:
        raise InvalidArgumentError(
            f"cutoff must be positive and finite, got {value!r}", argument="cutoff", value=value
        )
    return value


def _check_max_neighbors(max_neighbors: Any) -> int | None:
    if max_neighbors is None:
        return None
    if isinstance(max_neighbors, bool) or not isinstance(max_neighbors, (int, np.integer)):
        raise InvalidArgumentError(
            f"max_neighbors must be a positive int or None, got {max_neighbors!r}",
            argument="max_neighbors",
            value=max_neighbors,
        )
    if max_neighbors < 1:
        raise InvalidArgumentError(
            f"max_neighbors must be >= 1, got {max_neighbors}",
            argument="max_neighbors",
            value=max_neighbors,
        )
    return int(max_neighbors)


def _resolve_backend(backend: Any) -> str:
    if backend not in BACKENDS:
        raise InvalidArgumentError(
            f"unknown neighbor-list backend {backend!r}; expected one of {BACKENDS}",
            argument="backend",
            value=backend,
        )
    if backend == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "xla"
    return backend


def _check_crystals(crystals: Any) -> Crystals:
    if not isinstance(crystals, Crystals):
        raise InvalidStructureError(
            f"expected a Crystals batch, got {type(crystals).__name__}", field="crystals"
        )
    if crystals.lattice.ndim != 3 or crystals.frac.ndim != 3:
        raise InvalidStructureError(
            "expected a batched Crystals (lattice (B, 3, 3), frac (B, N, 3)); got lattice "
            f"{tuple(crystals.lattice.shape)} and frac {tuple(crystals.frac.shape)}",
            field="lattice",
        )
    return crystals


# ---------------------------------------------------------------------- geometry


_Lattice = TypeVar("_Lattice", np.ndarray, Array)


def cell_widths(lattice: _Lattice) -> _Lattice:
    """Perpendicular widths of cells: ``width_d = |V| / |a_e × a_f|``.

    Args:
      lattice: ``(..., 3, 3)`` lattice rows in Å.

    Returns:
      ``(..., 3)`` distances in Å between opposite faces of the cell (float, lattice dtype).
    """
    xp = np if isinstance(lattice, np.ndarray) else jnp
    a, b, c = lattice[..., 0, :], lattice[..., 1, :], lattice[..., 2, :]
    areas = xp.stack(
        [
            xp.linalg.norm(xp.cross(b, c), axis=-1),
            xp.linalg.norm(xp.cross(c, a), axis=-1),
            xp.linalg.norm(xp.cross(a, b), axis=-1),
        ],
        axis=-1,
    )
    vol = xp.abs(xp.sum(a * xp.cross(b, c), axis=-1))
    return vol[..., None] / areas


def _wrap(frac: Array) -> tuple[Array, Array]:
    """``frac = w + o`` with ``w`` in ``[0, 1)`` and integer ``o`` (int32)."""
    o = jnp.floor(frac)
    w = frac - o
    over = w >= 1.0  # -1e-17 - floor(-1e-17) rounds to exactly 1.0
    w = jnp.where(over, w - 1.0, w)
    o = jnp.where(over, o + 1.0, o)
    return w, o.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("images", "capacity", "backend", "interpret"))
def _build(
    lattice: Array,
    frac: Array,
    mask: Array,
    cutoff: Array,
    *,
    images: tuple[int, int, int],
    capacity: int,
    backend: str,
    interpret: bool,
) -> tuple[Array, Array, Array, Array, Array]:
    """Lists with static shapes; ``cutoff`` is traced (one compilation per shape, not cutoff)."""
    dtype = frac.dtype
    lattice = lattice.astype(dtype)
    cutoff = jnp.asarray(cutoff, dtype)
    w, o = _wrap(frac)
    x = cutoff / cell_widths(lattice)  # (B, 3)
    image_overflow = jnp.prod(_pk.crystal_box(x), axis=-1) > math.prod(images)

    def lists(w, lattice, mask, x, o):
        return _pk.neighbor_list(
            w,
            lattice,
            mask,
            x,
            cutoff,
            images=images,
            max_neighbors=capacity,
            interpret=interpret,
            use_kernel=backend == "pallas",
            o=o,  # fold the wrap back in: shifts relative to the coordinates as given
        )

    # Materialise the integer lists (see pallas_kernels.neighbor_list.fence): otherwise XLA:CPU
    # recomputes the compaction inside every consumer, e.g. each use in an energy.
    token = jnp.sum(mask, dtype=jnp.int32) >= 0
    raw = _pk.fence(lists, token, w, lattice, mask, x, o)
    max_count = jnp.max(raw.count, axis=-1, initial=0)
    overflow = (max_count > capacity) | image_overflow
    return raw.index, raw.shift, raw.mask, overflow, max_count


def _update(spec: NeighborListSpec, crystals: Crystals) -> tuple[Neighbors, Array]:
    index, shift, mask, overflow, max_count = _build(
        crystals.lattice,
        crystals.frac,
        crystals.mask,
        jnp.asarray(spec.cutoff, crystals.frac.dtype),
        images=spec.images,
        capacity=spec.max_neighbors,
        backend=spec.backend,
        interpret=spec.interpret,
    )
    nl = Neighbors(index=index, shift=shift, mask=mask, overflow=overflow, cutoff=spec.cutoff)
    return nl, max_count


def update(spec: NeighborListSpec, crystals: Crystals) -> Neighbors:
    """Recompute neighbor lists with the fixed shapes of ``spec`` (jit-safe).

    Call it every step of a relaxation; check ``overflow`` (per crystal) and rebuild the spec
    with :func:`neighbor_list_spec` on the host when any is set.

    >>> import jax, numpy as np
    >>> from jaxcsp.crystal import Crystals
    >>> c = Crystals.create(np.eye(3) * 3.0, [[0, 0, 0], [0.5, 0.5, 0.5]], [11, 17])
    >>> spec = neighbor_list_spec(c, 3.0)
    >>> step = jax.jit(update)
    >>> nl = step(spec, c.replace(frac=c.frac + 0.01))
    >>> nl.index.shape == (1, 2, spec.max_neighbors), bool(nl.overflow[0])
    (True, False)

    Args:
      spec: shapes from :func:`neighbor_list_spec` (a leaf-less pytree: pass it as an ordinary
        or static argument).
      crystals: batch with ``lattice (B, 3, 3)`` Å, ``frac (B, N, 3)``, ``mask (B, N)``.

    Returns:
      :class:`Neighbors` with ``K = spec.max_neighbors``; ``overflow[b]`` is True when crystal
      ``b`` has an atom with more than ``K`` neighbors or a cell thinner than the image range of
      ``spec`` allows (its list is then incomplete).
    """
    return _update(spec, crystals)[0]


def _host_widths(crystals: Crystals, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 lattices and perpendicular widths of a concrete batch (host side), checked."""
    if not _concrete(crystals.lattice):
        raise InvalidStructureError(
            f"{who} needs concrete crystals (call it outside jit)", field="lattice"
        )
    lat = np.asarray(crystals.lattice, dtype=np.float64)
    widths = cell_widths(lat)
    bad = ~np.all(np.isfinite(widths) & (widths > 0), axis=-1)
    if bad.any():
        raise InvalidStructureError(
            "degenerate or non-finite cell", index=int(np.argmax(bad)), field="lattice"
        )
    return lat, widths


def _check_image_count(count: np.ndarray, cutoff: float, widths: np.ndarray) -> None:
    """Raise when a crystal needs more than :data:`MAX_IMAGES` candidate images (``count (B,)``)."""
    if len(count) and count.max() > MAX_IMAGES:
        worst = int(np.argmax(count))
        raise InvalidStructureError(
            f"cutoff {cutoff} Å needs {int(count[worst])} periodic images per pair "
            f"(cell widths {widths[worst].round(3).tolist()} Å); the cell is too thin for this "
            f"cutoff (limit {MAX_IMAGES})",
            index=worst,
            field="lattice",
        )


def neighbor_list_spec(
    crystals: Crystals,
    cutoff: float,
    *,
    max_neighbors: int | None = None,
    backend: str = "auto",
    capacity_headroom: float = 0.25,
    cell_headroom: float = 0.05,
    round_capacity: bool = True,
) -> NeighborListSpec:
    """Choose the static shapes of a neighbor list from concrete data (host side).

    Args:
      crystals: concrete batch (not traced).
      cutoff: cutoff radius in Å (positive, finite).
      max_neighbors: capacity ``K``; ``None`` counts the neighbors of the data and adds
        ``capacity_headroom``, rounded up to a multiple of :data:`CAPACITY_QUANTUM` when
        ``round_capacity`` (batches of similar density then share compiled programs).
      backend: ``"auto"`` (Pallas on GPU, XLA elsewhere), ``"xla"`` or ``"pallas"`` (off GPU the
        kernel runs in interpret mode: correct, slow).
      capacity_headroom: relative head-room on the counted capacity.
      cell_headroom: relative amount by which cell widths may shrink before :func:`update`
        reports an image-range overflow.
      round_capacity: round a counted capacity up to a multiple of :data:`CAPACITY_QUANTUM`
        (``False``: exactly the count plus head-room).

    Returns:
      A hashable :class:`NeighborListSpec`.

    Raises:
      InvalidArgumentError: bad cutoff, capacity or backend.
      InvalidStructureError: a degenerate cell.
    """
    cutoff = _check_cutoff(cutoff)
    max_neighbors = _check_max_neighbors(max_neighbors)
    resolved = _resolve_backend(backend)
    crystals = _check_crystals(crystals)
    _, widths = _host_widths(crystals, "neighbor_list_spec")
    need = _pk.crystal_box(cutoff * (1.0 + cell_headroom) / widths)
    images: tuple[int, int, int] = (1, 1, 1)
    if len(need):  # each crystal enumerates its own box: the budget is the largest box
        m = need[int(np.argmax(need.prod(axis=-1)))]
        images = (int(m[0]), int(m[1]), int(m[2]))
    if math.prod(images) > MAX_IMAGES:
        worst = int(np.argmax(need.prod(axis=-1)))
        raise InvalidStructureError(
            f"cutoff {cutoff} Å needs {math.prod(images)} periodic images per pair "
            f"(cell widths {widths[worst].round(3).tolist()} Å); the cell is too thin for this "
            f"cutoff (limit {MAX_IMAGES})",
            index=worst,
            field="lattice",
        )
    interpret = resolved == "pallas" and jax.default_backend() != "gpu"
    if max_neighbors is None:
        counted = _host_max_neighbors(crystals, cutoff, widths)
        max_neighbors = max(1, math.ceil(counted * (1.0 + capacity_headroom)))
        if round_capacity:
            max_neighbors = round_up_capacity(max_neighbors)
    return NeighborListSpec(cutoff, max_neighbors, images, resolved, interpret)


def round_up_capacity(k: int) -> int:
    """Smallest multiple of :data:`CAPACITY_QUANTUM` that is ``>= k`` (and ``>= 1``)."""
    return CAPACITY_QUANTUM * max(1, math.ceil(int(k) / CAPACITY_QUANTUM))


def _host_max_neighbors(crystals: Crystals, cutoff: float, widths: np.ndarray) -> int:
    """Largest neighbor count of any atom of a concrete batch (numpy, float64, no compilation).

    Same rule as :func:`update` (``|r_j - r_i + s @ L| < cutoff``, the zero-shift self pair
    excluded). Each pair's fractional difference is first wrapped into ``[-1/2, 1/2]``, so only
    shifts with ``|s_k| <= cutoff / w_k + 1/2`` can reach (27 for a cell wider than the
    cutoff, against 125 without the wrap), and ``|d + s L|^2 = |d|^2 + 2 d·(s L) + |s L|^2``
    is one matrix product per chunk of ~4M pair-shifts: ~4 ms for a 256-atom cell at 8.5 Å.
    """
    lat = np.asarray(crystals.lattice, np.float64)
    frac = np.asarray(crystals.frac, np.float64)
    mask = np.asarray(crystals.mask, bool)
    best = 0
    c2 = cutoff * cutoff
    for b in range(lat.shape[0]):
        f = frac[b][mask[b]]
        n = len(f)
        if n == 0:
            continue
        reach = np.floor(cutoff / widths[b] + 0.5 + _FRAC_EPS).astype(int)
        axes = [np.arange(-r, r + 1) for r in reach]
        shifts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(float)
        s_cart = shifts @ lat[b]  # (M, 3)
        s2 = np.einsum("mk,mk->m", s_cart, s_cart)
        zero = np.all(shifts == 0, axis=-1)
        step = max(1, (1 << 22) // max(1, n * len(shifts)))
        for i0 in range(0, n, step):
            df = f[None, :, :] - f[i0 : i0 + step, None, :]  # (c, n, 3)
            df -= np.round(df)
            d = df.reshape(-1, 3) @ lat[b]  # (c n, 3)
            q = d @ (2.0 * s_cart.T)  # (c n, M)
            q += np.einsum("pk,pk->p", d, d)[:, None]
            q += s2[None, :]
            hit = (q < c2).reshape(-1, n, len(shifts))
            rows = np.arange(i0, min(i0 + step, n))
            hit[np.arange(len(rows)), rows] &= ~zero  # the atom itself, unshifted
            best = max(best, int(hit.sum(axis=(1, 2)).max()))
    return best


def neighbor_list(
    crystals: Crystals,
    cutoff: float,
    *,
    max_neighbors: int | None = None,
    backend: str = "auto",
) -> Neighbors:
    """Neighbor lists of a concrete batch, re-allocated until nothing overflows (host side).

    Args:
      crystals: concrete :class:`~jaxcsp.crystal.Crystals` (``lattice (B, 3, 3)`` Å, ``frac
        (B, N, 3)``, ``mask (B, N)``); coordinates need not be wrapped.
      cutoff: cutoff radius in Å; pairs with distance ``< cutoff`` are neighbors.
      max_neighbors: initial capacity ``K``; ``None`` sizes it from the data. If any atom has
        more neighbors, the list is re-allocated with a larger ``K`` and recomputed.
      backend: ``"auto"`` (Pallas on GPU, XLA elsewhere), ``"xla"`` or ``"pallas"``.

    Returns:
      :class:`Neighbors` with ``overflow`` all False.

    Raises:
      InvalidArgumentError: non-positive or non-finite cutoff, ``max_neighbors < 1``, unknown
        backend, a traced cutoff.
      InvalidStructureError: traced input, or a degenerate cell.
    """
    spec = neighbor_list_spec(crystals, cutoff, max_neighbors=max_neighbors, backend=backend)
    for _ in range(3):
        nl, max_count = _update(spec, crystals)
        if not bool(np.any(np.asarray(nl.overflow))):
            return nl
        counted = int(np.max(np.asarray(max_count)))
        grown = max(spec.max_neighbors + 1, math.ceil(counted * 1.25))
        spec = dataclasses.replace(spec, max_neighbors=round_up_capacity(grown))
    raise NeighborListOverflowError(
        f"neighbor list still overflows after re-allocation (K={spec.max_neighbors})"
    )


# ---------------------------------------------------------------------- edge helpers


@jax.jit
def edge_vectors(crystals: Crystals, neighbors: Neighbors) -> Array:
    """Vectors from each atom to its neighbors, ``r_j - r_i + shift @ lattice``.

    Differentiable w.r.t. ``crystals.frac`` and ``crystals.lattice``; masked slots are exactly
    zero (their ``index`` is the atom itself and their shift zero).

    Args:
      crystals: batch (``lattice (B, 3, 3)`` Å, ``frac (B, N, 3)``).
      neighbors: lists of the same batch.

    Returns:
      ``(B, N, K, 3)`` vectors in Å (lattice dtype).
    """

    frac, lattice = crystals.frac, crystals.lattice
    f_j = _pk.gather_neighbors(frac, neighbors.index)  # (B, N, K, 3), flat gather
    df = f_j - frac[:, :, None, :] + neighbors.shift.astype(frac.dtype)
    # Explicit 3-term sum: XLA:CPU runs a (…,3)x(3,3) batched dot far slower than this.
    lat = lattice[:, None, None, :, :]
    v = (
        df[..., 0:1] * lat[..., 0, :]
        + df[..., 1:2] * lat[..., 1, :]
        + df[..., 2:3] * lat[..., 2, :]
    )
    return jnp.where(neighbors.mask[..., None], v, jnp.zeros_like(v))


@jax.jit
def distances(crystals: Crystals, neighbors: Neighbors) -> Array:
    """Lengths of :func:`edge_vectors`, ``(B, N, K)`` in Å; 0 in masked slots.

    Gradients are safe everywhere: masked slots give zero gradient (no NaN from ``sqrt(0)``).

    Args:
      crystals: batch (``lattice (B, 3, 3)`` Å, ``frac (B, N, 3)``).
      neighbors: lists of the same batch.

    Returns:
      ``(B, N, K)`` distances in Å.
    """
    v = edge_vectors(crystals, neighbors)
    d2 = jnp.sum(v * v, axis=-1)
    safe = jnp.where(neighbors.mask, d2, jnp.ones_like(d2))
    return jnp.where(neighbors.mask, jnp.sqrt(safe), jnp.zeros_like(d2))


# ---------------------------------------------------------------------- sparse edge lists


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class EdgeListSpec:
    """Candidate ``(center, neighbor, image)`` triples of a batch, chosen on the host.

    Built by :func:`edge_list_spec` for a set of *query* atoms (the centers) of each crystal:
    every real atom ``j`` of the same crystal and every image offset inside the crystal's own
    image box is one candidate; :func:`edge_list` tests them and compacts the hits into one
    batch-wide edge list. Unlike :class:`NeighborListSpec` (one image box and one capacity per
    atom for the whole batch), the work scales with the sum over crystals of
    ``centers × atoms × images`` of *that* crystal, which is what descriptor losses over a few
    Wyckoff representatives of many small, differently shaped cells need.

    Attributes:
      row: ``(T,)`` int32 query row ``b * R + r`` of each candidate.
      center: ``(T,)`` int32 flat atom index ``b * N + i`` of the center.
      neighbor: ``(T,)`` int32 flat atom index ``b * N + j``.
      crystal: ``(T,)`` int32 crystal ``b`` (candidates are sorted by it).
      offset: ``(T, 3)`` int32 offset inside the crystal's image box.
      valid: ``(T,)`` bool, False for the padding of ``T``.
      box: ``(B, 3)`` int32 images per axis of each crystal's box.
      cutoff: static cutoff in Å.
      max_edges: static capacity ``E`` of the edge list.
      num_rows: static query rows per crystal ``R``.
    """

    row: Array
    center: Array
    neighbor: Array
    crystal: Array
    offset: Array
    valid: Array
    box: Array
    cutoff: float = dataclasses.field(metadata=dict(static=True))
    max_edges: int = dataclasses.field(metadata=dict(static=True))
    num_rows: int = dataclasses.field(metadata=dict(static=True))

    @property
    def num_candidates(self) -> int:
        """Candidate triples ``T`` (static)."""
        return self.row.shape[0]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class EdgeList:
    """One batch-wide list of edges from query rows (centers) to neighbors.

    The vector of edge ``e`` is ``r_j - r_i + shift @ lattice`` with ``i = center[e]`` and
    ``j = neighbor[e]`` (flat indices ``b * N + atom``), the convention of :class:`Neighbors`.
    Unused slots have ``mask == False``, ``neighbor == center`` and a zero shift (zero vector).

    Attributes:
      row: ``(E,)`` int32 query row ``b * R + r`` (segment id for per-row sums).
      center: ``(E,)`` int32 flat center index.
      neighbor: ``(E,)`` int32 flat neighbor index.
      shift: ``(E, 3)`` int32 integer image shift.
      mask: ``(E,)`` bool, real edges (sorted by crystal, then by row).
      overflow: ``(B,)`` bool, True where a crystal's edges did not all fit or its cell became
        too thin for its image box; rebuild the spec on the host (:func:`edge_list_spec`).
      count: ``(B,)`` int32 edges found per crystal (may exceed what fit).
      cutoff: static cutoff in Å.
      num_rows: static query rows per crystal ``R``.
    """

    row: Array
    center: Array
    neighbor: Array
    shift: Array
    mask: Array
    overflow: Array
    count: Array
    cutoff: float = dataclasses.field(metadata=dict(static=True))
    num_rows: int = dataclasses.field(metadata=dict(static=True))

    @property
    def capacity(self) -> int:
        """Edge slots ``E`` (static)."""
        return self.row.shape[0]


#: Largest number of candidate triples :func:`edge_list_spec` builds (memory guard).
MAX_CANDIDATES = 1 << 27


def _round_up(n: int, fine: int = 8) -> int:
    """``n`` rounded up to a multiple of ``2**(bit_length - log2(fine))`` (< 1/fine extra):
    few distinct shapes, so recompilations stay rare as sizes drift."""
    n = max(int(n), 1)
    step = max(1 << max(n.bit_length() - fine.bit_length(), 0), 512)
    return -(-n // step) * step


def edge_list_spec(
    crystals: Crystals,
    cutoff: float,
    *,
    centers: Any = None,
    center_mask: Any = None,
    max_edges: int | None = None,
    capacity_headroom: float = 0.5,
    cell_headroom: float = 0.25,
    min_edges_per_row: int = 0,
    min_box: Any = None,
) -> EdgeListSpec:
    """Candidate triples and edge capacity for :func:`edge_list` (host side).

    Args:
      crystals: concrete batch (``lattice (B, 3, 3)`` Å, ``frac (B, N, 3)``, ``mask (B, N)``).
      cutoff: cutoff radius in Å.
      centers: ``(B, R)`` int atom indices of the query rows (e.g. one representative per
        Wyckoff site); ``None``: every atom (``R = N``).
      center_mask: ``(B, R)`` bool, real rows (default: the centers' atom mask).
      max_edges: edge capacity ``E``; ``None``: the edges of the data plus
        ``capacity_headroom``, at least ``min_edges_per_row`` per real row, rounded up.
      capacity_headroom: relative head-room on the counted edges.
      cell_headroom: relative amount by which cell widths may shrink before :func:`edge_list`
        reports an overflow (each crystal's image box is sized for ``cutoff * (1 + h)``).
      min_edges_per_row: lower bound on the capacity per real row (structures that densify).
      min_box: optional ``(B, 3)`` int lower bound on each crystal's image box (e.g. the box
        of a spec that overflowed).

    Returns:
      :class:`EdgeListSpec`.

    Raises:
      InvalidArgumentError: bad cutoff, centers of the wrong shape or out of range.
      InvalidStructureError: traced input, degenerate cell, or more than
        :data:`MAX_CANDIDATES` candidates (use :func:`neighbor_list` for full lists
        of large cells).
    """
    cutoff = _check_cutoff(cutoff)
    crystals = _check_crystals(crystals)
    lat, widths = _host_widths(crystals, "edge_list_spec")
    frac = np.asarray(crystals.frac, dtype=np.float64)
    amask = np.asarray(crystals.mask, bool)
    b, n = amask.shape
    if centers is None:
        ctr = np.broadcast_to(np.arange(n, dtype=np.int64), (b, n))
        cmask = amask if center_mask is None else np.asarray(center_mask, bool)
    else:
        ctr = np.asarray(centers, dtype=np.int64)
        if ctr.ndim != 2 or ctr.shape[0] != b:
            raise InvalidArgumentError(
                f"centers must have shape (B={b}, R), got {ctr.shape}", argument="centers"
            )
        if ctr.size and (ctr.min() < 0 or ctr.max() >= n):
            raise InvalidArgumentError(f"centers out of range [0, {n})", argument="centers")
        cmask = (
            np.take_along_axis(amask, ctr, axis=1)
            if center_mask is None
            else np.asarray(center_mask, bool) & np.take_along_axis(amask, ctr, axis=1)
        )
    r = ctr.shape[1]
    box = _pk.crystal_box(cutoff * (1.0 + cell_headroom) / widths)  # (B, 3)
    if min_box is not None:
        box = np.maximum(box, np.asarray(min_box, dtype=box.dtype).reshape(b, 3))
    m = box.prod(axis=-1)
    _check_image_count(m, cutoff, widths)
    rows_b = cmask.sum(axis=-1)
    atoms_b = amask.sum(axis=-1)
    sizes = rows_b * atoms_b * m
    total = int(sizes.sum())
    if total > MAX_CANDIDATES:
        worst = int(np.argmax(sizes))
        raise InvalidStructureError(
            f"{total} candidate (center, neighbor, image) triples exceed {MAX_CANDIDATES}; "
            "use jaxcsp.neighbors.neighbor_list for full lists of large or thin cells",
            index=worst,
            field="centers",
        )
    # candidate g of crystal b: local index -> (real row r, real atom j, image t), vectorised
    start = np.concatenate([[0], np.cumsum(sizes)])
    g = np.arange(total, dtype=np.int64)
    cr = np.searchsorted(start, g, side="right") - 1
    local = g - start[cr]
    per_row = (atoms_b * m)[cr]
    r_loc = local // per_row
    j_loc = (local // m[cr]) % atoms_b[cr]
    t = local % m[cr]
    row_order = np.argsort(~cmask, axis=1, kind="stable")  # real rows first
    atom_order = np.argsort(~amask, axis=1, kind="stable")
    rr = row_order[cr, r_loc]
    jj = atom_order[cr, j_loc]
    m2, m3 = box[cr, 1], box[cr, 2]
    cat = {
        "row": cr * r + rr,
        "center": cr * n + ctr[cr, rr],
        "neighbor": cr * n + jj,
        "crystal": cr,
        "offset": np.stack(_pk.image_offset(t, m2, m3), -1),
    }
    size = _round_up(total)
    pad = size - total
    valid = np.concatenate([np.ones(total, bool), np.zeros(pad, bool)])
    arrays = {
        k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]).astype(np.int32)
        for k, v in cat.items()
    }
    if max_edges is None:
        # count the edges of the data (numpy, float64)
        f = frac.reshape(-1, 3)
        ci, nj, cr = cat["center"], cat["neighbor"], cat["crystal"]
        d = f[nj] - f[ci]
        x = (cutoff / widths)[cr]
        s = np.ceil(-x - d - _FRAC_EPS) + cat["offset"]
        v = np.einsum("td,tde->te", d + s, lat[cr])
        self_pair = (ci == nj) & np.all(s == 0, axis=-1)
        found = int(np.sum((np.sum(v * v, -1) < cutoff**2) & ~self_pair))
        floor = min_edges_per_row * int(cmask.sum())
        want = max(math.ceil(found * (1.0 + capacity_headroom)), floor)
        max_edges = _round_up(want)
    elif isinstance(max_edges, bool) or int(max_edges) < 1:
        raise InvalidArgumentError(
            f"max_edges must be >= 1, got {max_edges!r}", argument="max_edges", value=max_edges
        )
    return EdgeListSpec(
        row=jnp.asarray(arrays["row"]),
        center=jnp.asarray(arrays["center"]),
        neighbor=jnp.asarray(arrays["neighbor"]),
        crystal=jnp.asarray(arrays["crystal"]),
        offset=jnp.asarray(arrays["offset"]),
        valid=jnp.asarray(valid),
        box=jnp.asarray(box.astype(np.int32)),
        cutoff=cutoff,
        max_edges=int(max_edges),
        num_rows=r,
    )


@jax.jit
def edge_list(spec: EdgeListSpec, crystals: Crystals) -> EdgeList:
    """Test the candidates of ``spec`` on (moved) ``crystals`` and compact the edges (jit-safe).

    Pairs with distance ``< spec.cutoff`` become edges (the zero-shift self pair excluded), in
    candidate order (by crystal, then row). Integer outputs only: take vectors with
    :func:`edge_list_vectors`, which is what gradients flow through.

    >>> import numpy as np
    >>> from jaxcsp.crystal import Crystals
    >>> c = Crystals.create(np.eye(3) * 2.0, [[0.0, 0.0, 0.0]], [29])
    >>> el = edge_list(edge_list_spec(c, 2.5), c)
    >>> int(el.mask.sum()), bool(el.overflow[0])  # the 6 face images at 2 Å
    (6, False)

    Args:
      spec: from :func:`edge_list_spec` (for a batch with the same ``B`` and ``N``).
      crystals: ``lattice (B, 3, 3)`` Å, ``frac (B, N, 3)`` (need not be wrapped).

    Returns:
      :class:`EdgeList` with ``E = spec.max_edges`` slots; ``overflow[b]`` when crystal ``b``
      has more edges than fit or its cell became too thin for its image box.
    """
    b, n = crystals.mask.shape
    dtype = crystals.frac.dtype
    frac = jax.lax.stop_gradient(crystals.frac).reshape(b * n, 3)
    lat = jax.lax.stop_gradient(crystals.lattice).astype(dtype)
    x = jnp.asarray(spec.cutoff, dtype) / cell_widths(lat)  # (B, 3)
    image_overflow = jnp.any(_pk.crystal_box(x) > spec.box, axis=-1)
    d = frac[spec.neighbor] - frac[spec.center]  # (T, 3)
    s = jnp.ceil(-x[spec.crystal] - d - _FRAC_EPS) + spec.offset.astype(dtype)
    u = d + s
    lat_t = lat[spec.crystal]  # (T, 3, 3)
    v = u[:, 0:1] * lat_t[:, 0, :] + u[:, 1:2] * lat_t[:, 1, :] + u[:, 2:3] * lat_t[:, 2, :]
    self_pair = (spec.center == spec.neighbor) & jnp.all(s == 0, axis=-1)
    ok = spec.valid & (jnp.sum(v * v, axis=-1) < jnp.asarray(spec.cutoff, dtype) ** 2) & ~self_pair
    count = jax.ops.segment_sum(ok.astype(jnp.int32), spec.crystal, num_segments=b)
    e = spec.max_edges
    (sel,) = jnp.nonzero(ok, size=e, fill_value=0)
    live = jnp.arange(e) < jnp.sum(ok, dtype=jnp.int32)
    edge_overflow = jnp.cumsum(count) > e
    center = spec.center[sel]
    return EdgeList(
        row=spec.row[sel],
        center=center,
        neighbor=jnp.where(live, spec.neighbor[sel], center),
        shift=jnp.where(live[:, None], s[sel], 0).astype(jnp.int32),
        mask=live,
        overflow=image_overflow | edge_overflow,
        count=count,
        cutoff=spec.cutoff,
        num_rows=spec.num_rows,
    )


@jax.jit
def edge_list_vectors(crystals: Crystals, edges: EdgeList) -> Array:
    """Edge vectors ``r_j - r_i + shift @ lattice`` ``(E, 3)`` in Å (zero in unused slots).

    Differentiable w.r.t. ``crystals.frac`` and ``crystals.lattice``.

    Args:
      crystals: the batch the edges were built for (``frac (B, N, 3)``, ``lattice (B, 3, 3)``).
      edges: :class:`EdgeList`.

    Returns:
      ``(E, 3)`` float (dtype of ``frac``).
    """
    b, n = crystals.mask.shape
    frac = crystals.frac.reshape(b * n, 3)
    lat = crystals.lattice.astype(frac.dtype)[edges.center // n]  # (E, 3, 3)
    u = frac[edges.neighbor] - frac[edges.center] + edges.shift.astype(frac.dtype)
    v = u[:, 0:1] * lat[:, 0, :] + u[:, 1:2] * lat[:, 1, :] + u[:, 2:3] * lat[:, 2, :]
    return jnp.where(edges.mask[:, None], v, jnp.zeros_like(v))
