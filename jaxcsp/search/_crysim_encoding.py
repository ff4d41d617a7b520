"""CRYSIM's bit-vector encoding of symmetric crystals (symmetry-informed integer encoding).

A crystal of a fixed unit-cell composition is a vector of ``M`` bits (Liang et al., CRYSIM,
Methods 4.2 and Supplementary C), in this order:

===================  ==============  ==========================================================
segment              bits            meaning
===================  ==============  ==========================================================
``a``, ``b``, ``c``  ``N_ll`` each   one-hot bin of each cell length in ``length_range`` (Å)
``alpha`` ...        ``N_lg`` each   one-hot bin of each cell angle in ``angle_range`` (deg)
``crystal_system``   ``N_C``         one-hot over the crystal systems with a compatible group
``space_group``      ``N_S``         one-hot; ``N_S`` = most compatible groups of one system
``wpc_group``        ``N_W``         one-hot; which group of ``wpc_group_size`` WPCs
``coords:<El>``      ``g**3`` each   voxel grid of the independent sites of element ``El``
===================  ==============  ==========================================================

Rules (``s`` = compatible groups of the crystal system, ``W`` = WPCs of the group):

* Continuous values: bin ``floor((v - lo) / u)`` (clipped to the range), decoded to the bin
  centre. By default ``N_ll = round(10 g (hi - lo) / hi)`` and ``N_lg = (130 - 50) / 2 = 40``.
  Lengths and angles that the crystal system ties or fixes are encoded as they are (``b = a``
  in a tetragonal cell, 90 degrees, ...) and ignored when decoding: the decoded cell takes its
  free entries from their bins and applies the system's rule (:func:`jaxcsp.symmetry.cell_rule`).
* Crystal systems in the order of :data:`jaxcsp.symmetry.CRYSTAL_SYSTEMS`, compatible ones only
  (a system is compatible when one of its groups has a WPC for the composition). The ``id``-th
  compatible group of a system (ascending number) sets bit ``floor(id N_S / s)``; bit ``i``
  decodes to ``ceil((i + 1) s / N_S) - 1``, the group whose bits cover ``i``. This is the exact
  inverse of the encoding, and agrees with the paper's worked example (bits 2, 3, 4 of the
  cubic system of A4B4 give P23, F23, F23).
* WPCs of a group: :func:`jaxcsp.symmetry.wyckoff_combinations` (at most ``max_wpcs``),
  stably sorted by decreasing largest multiplicity of their Wyckoff positions. They are cut into
  ``K = ceil(W / wpc_group_size)`` consecutive groups (``K <= N_W``); group ``k`` sets bit
  ``floor(k N_W / K)`` and bit ``i`` decodes to group ``ceil((i + 1) K / N_W) - 1``. With
  ``W = N_W * wpc_group_size`` (the default cap, 30 000, reached by large systems) bit ``i`` is
  WPCs ``100 i .. 100 i + 99``, as in the paper.
* Coordinates: every independent site with a free coordinate sets the voxel
  ``(floor(g x), floor(g y), floor(g z))`` of its free vector (wrapped into [0, 1); a value
  within 1e-4 voxel of a boundary counts as the upper voxel) in the grid of its element,
  flattened as ``(l g + m) g + n``. Sites on fixed positions set nothing. To decode one WPC,
  the free sites of each element, in the order of the WPC (Wyckoff index ascending, general
  position first), take that element's 1-bits from the left (lowest index first) until every
  free site has one; a site's free vector is its voxel's centre, projected onto the Wyckoff
  position (e.g. ``(x, 2x, z)``). Surplus 1-bits are ignored.

Decoding (:func:`decode`) a vector: one-hot segments take their first 1-bit (bit 0 when none is
set) and are reported infeasible unless exactly one bit is set; the cell is built from the bin
centres (a triclinic cell with ``V < 0.1 a b c`` has its angle bins moved one by one towards 90
degrees until it does not); then every WPC of the selected group is built with those
coordinates, and the one with the largest minimum interatomic distance (MID, periodic images
included) is returned (ties: the earlier WPC). Where the paper is silent:

* an element with fewer 1-bits than free sites gets the missing voxels drawn at random among its
  unset voxels (``info["filled_sites"]``);
* when every candidate has two atoms closer than ``overlap_tol`` (e.g. a general site whose
  voxel centre lies on a mirror, or two sites in one voxel), all voxels of that vector are
  redrawn at random (``info["repaired"]``) until one candidate does not.

The randomness comes from ``key`` when given, otherwise from ``seed`` and the vector's own bits,
so decoding is a deterministic function of each row. Shapes are fixed (every candidate is padded
to ``N`` sites and ``N`` atoms, ``N`` the atoms of the composition, and evaluated in jitted
chunks of fixed size), so the MID evaluation compiles once per composition.

Round trips: ``decode(encode(x))`` keeps the crystal system, space group, WPC group and lattice
bins of ``x`` (so ``encode`` of it agrees with ``encode(x)`` on every one-hot segment), and
``encode . decode`` is idempotent on those segments. With the pure MID rule it is not always
idempotent on the coordinate bits: re-encoding a decoded crystal drops the 1-bits its WPC did
not use and moves voxels of special sites onto their positions, so the other candidates of the
group change and one of them may win. ``decode(..., prefer_exact=True)`` first considers the
candidates whose own encoding reproduces the coordinate bits exactly; then
``encode(decode(y))`` is a fixed point of ``encode . decode`` (unless the decoded crystal
overlaps), and ``decode(encode(x))`` re-encodes to ``encode(x)``: it is ``x``'s own WPC (or one
with the same free sites and a larger MID) with its free coordinates at the voxel centres.

>>> enc = crysim_encoding("Si8", length_range=(3.0, 12.0), ldr=4)
>>> enc.num_bits, [s.size for s in enc.segments]
(649, [30, 30, 30, 40, 40, 40, 7, 68, 300, 64])
"""

from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.crystal import MIN_DISTANCE, Crystals
from jaxcsp.elements import atomic_numbers
from jaxcsp.errors import InvalidArgumentError, InvalidStructureError, check_int, check_real
from jaxcsp.symmetry import (
    CRYSTAL_SYSTEMS,
    WyckoffCrystals,
    cell_rule,
    compatible_space_groups,
    crystal_system,
    from_pyxtal,
    parse_composition,
    reconstruct,
    wyckoff_combinations,
    wyckoff_positions,
)
from jaxcsp.symmetry._generate import min_pair_margin

__all__ = [
    "CrysimEncoding",
    "Segment",
    "crysim_encoding",
    "crysim_length_range",
    "decode",
    "encode",
]

#: Names of the one-hot segments, in the order of :attr:`CrysimEncoding.one_hot_groups`.
ONE_HOT_SEGMENTS = (
    "a",
    "b",
    "c",
    "alpha",
    "beta",
    "gamma",
    "crystal_system",
    "space_group",
    "wpc_group",
)
#: A decoded triclinic cell must have ``V >= _MIN_VOLUME_FRACTION * a b c``.
_MIN_VOLUME_FRACTION = 0.1


class Segment(NamedTuple):
    """One contiguous block of bits.

    Attributes:
      name: ``"a"``, ..., ``"gamma"``, ``"crystal_system"``, ``"space_group"``,
        ``"wpc_group"`` or ``"coords:<element>"``.
      offset: index of its first bit in the vector.
      size: number of bits.
    """

    name: str
    offset: int
    size: int

    @property
    def indices(self) -> np.ndarray:
        """``(size,) int64`` bit indices ``offset .. offset + size - 1``."""
        return np.arange(self.offset, self.offset + self.size)


@dataclasses.dataclass(frozen=True, eq=False)
class CrysimEncoding:
    """The layout of CRYSIM bit vectors for one composition (build with :func:`crysim_encoding`).

    Attributes:
      composition: ``((element, count), ...)`` unit-cell composition, in the given order.
      species: atomic numbers of the elements (``None`` for abstract labels such as ``"A"``:
        such an encoding can be inspected but not used by :func:`encode` / :func:`decode`).
      ldr: lattice discretisation resolution ``g`` (voxels per cell edge).
      length_range: ``(lo, hi)`` of the length bins, Å.
      angle_range: ``(lo, hi)`` of the angle bins, degrees.
      length_bins: ``N_ll``, bins per length.
      angle_bins: ``N_lg``, bins per angle.
      crystal_systems: the ``N_C`` compatible crystal systems (names, CS-bit order).
      space_groups: per compatible system, its compatible groups in ascending order.
      num_space_group_bits: ``N_S``.
      num_wpc_groups: ``N_W``, bits of the WPC segment.
      wpc_group_size: WPCs per group (candidates tried when decoding).
      max_wpcs: most WPCs enumerated per space group.
      seed: seed of the decoder's random fills when no key is given.
      segments: every :class:`Segment`, in bit order.
      num_bits: ``M``, the length of a vector.
      one_hot_groups: ``(size,) int64`` bit indices of each one-hot segment, in the order of
        ``ONE_HOT_SEGMENTS`` (lattice, CS, SG, WPC): exactly one bit of each should be set
        (the Ising solver's penalty terms).
    """

    composition: tuple[tuple[str, int], ...]
    species: tuple[int, ...] | None
    ldr: int
    length_range: tuple[float, float]
    angle_range: tuple[float, float]
    length_bins: int
    angle_bins: int
    crystal_systems: tuple[str, ...]
    space_groups: tuple[tuple[int, ...], ...]
    num_space_group_bits: int
    num_wpc_groups: int
    wpc_group_size: int
    max_wpcs: int
    seed: int
    segments: tuple[Segment, ...]
    num_bits: int
    one_hot_groups: tuple[np.ndarray, ...]

    @property
    def num_atoms(self) -> int:
        """Atoms in the unit cell."""
        return sum(n for _, n in self.composition)

    def segment(self, name: str) -> Segment:
        """The :class:`Segment` called ``name`` (e.g. ``"space_group"``, ``"coords:Si"``)."""
        for s in self.segments:
            if s.name == name:
                return s
        raise InvalidArgumentError(f"no segment {name!r}", argument="name", value=name)

    def wpcs(self, spg: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """The sorted WPC list of compatible group ``spg`` (see the module docstring).

        Returns:
          Tuple of WPCs; each a tuple (one entry per element, composition order) of the PyXtal
          Wyckoff indices of its sites, ascending.
        """
        self._system_of(spg)
        return _wpc_table(int(spg), self.composition, self.max_wpcs)[0]

    def num_wpc_groups_of(self, spg: int) -> int:
        """``K = ceil(W / wpc_group_size)``: WPC groups of compatible group ``spg``."""
        return -(-len(self.wpcs(spg)) // self.wpc_group_size)

    def _system_of(self, spg: int) -> tuple[int, int]:
        """``(CS bit, index within the system)`` of compatible group ``spg``."""
        name = crystal_system(int(spg))
        if name in self.crystal_systems:
            ci = self.crystal_systems.index(name)
            if int(spg) in self.space_groups[ci]:
                return ci, self.space_groups[ci].index(int(spg))
        raise InvalidStructureError(
            f"space group {int(spg)} is not compatible with {dict(self.composition)}",
            field="spg",
        )


# ----------------------------------------------------------------------------- construction


def crysim_encoding(
    composition: Mapping[str, int] | str,
    *,
    length_range: tuple[float, float],
    lattice_bins: int | tuple[int, int] | None = None,
    angle_range: tuple[float, float] = (50.0, 130.0),
    ldr: int = 12,
    wpc_group_size: int = 100,
    num_wpc_groups: int = 300,
    max_wpcs: int = 30_000,
    seed: int = 0,
) -> CrysimEncoding:
    """The CRYSIM bit layout for a unit-cell composition (host side).

    Args:
      composition: ``{"Si": 8}`` or ``"Na4Cl4"`` (unit cell).
      length_range: ``(lo, hi)`` Å of the cell-length bins; CRYSIM takes ``lo`` = the smallest
        and ``hi`` = 1.1 x the largest length of its random initial dataset
        (:func:`crysim_length_range`).
      lattice_bins: ``None`` for the paper's counts (``N_ll = round(10 g (hi - lo) / hi)``,
        ``N_lg = (angle hi - angle lo) / 2``, i.e. 2-degree bins), an int for the same count
        for all six, or ``(N_ll, N_lg)``.
      angle_range: ``(lo, hi)`` degrees of the angle bins (CRYSIM: 50 to 130).
      ldr: lattice discretisation resolution ``g``: ``g**3`` voxel bits per element.
      wpc_group_size: WPCs per WPC group (100).
      num_wpc_groups: ``N_W``, bits of the WPC segment (300).
      max_wpcs: most WPCs per space group (30 000); at most
        ``wpc_group_size * num_wpc_groups``.
      seed: seed of the decoder's random fills when :func:`decode` gets no key.

    Returns:
      :class:`CrysimEncoding`. Computes the compatible groups (cheap); the WPC list of a group
      is enumerated the first time it is needed.

    Raises:
      InvalidStructureError: bad composition (field ``"composition"``).
      InvalidArgumentError: a bad range, bin count, ``ldr`` (``ldr**3`` must be at least the
        largest element count) or WPC setting.
    """
    comp = tuple(parse_composition(composition))
    try:
        species: tuple[int, ...] | None = tuple(atomic_numbers([el for el, _ in comp]))
    except InvalidStructureError:
        species = None
    g = check_int("ldr", ldr)
    if g**3 < max(n for _, n in comp):
        raise InvalidArgumentError(
            f"ldr={g} gives {g**3} voxels, fewer than the {max(n for _, n in comp)} atoms of one "
            "element",
            argument="ldr",
            value=ldr,
        )
    lo, hi = _range("length_range", length_range, "Å")
    alo, ahi = _range("angle_range", angle_range, "degrees")
    if alo <= 0 or ahi >= 180:
        raise InvalidArgumentError(
            f"angle_range must lie within (0, 180) degrees, got {angle_range!r}",
            argument="angle_range",
            value=angle_range,
        )
    if lattice_bins is None:
        n_ll = max(1, round(10 * g * (hi - lo) / hi))
        n_lg = max(1, round((ahi - alo) / 2.0))
    elif isinstance(lattice_bins, tuple | list):
        if len(lattice_bins) != 2:
            raise InvalidArgumentError(
                "lattice_bins must be an int or a pair (length bins, angle bins)",
                argument="lattice_bins",
                value=lattice_bins,
            )
        n_ll = check_int("lattice_bins", lattice_bins[0])
        n_lg = check_int("lattice_bins", lattice_bins[1])
    else:
        n_ll = n_lg = check_int("lattice_bins", lattice_bins)
    size = check_int("wpc_group_size", wpc_group_size)
    n_w = check_int("num_wpc_groups", num_wpc_groups)
    cap = check_int("max_wpcs", max_wpcs)
    if cap > size * n_w:
        raise InvalidArgumentError(
            f"max_wpcs={cap} exceeds wpc_group_size * num_wpc_groups = {size * n_w}: some WPCs "
            "would have no bit",
            argument="max_wpcs",
            value=max_wpcs,
        )
    seed = check_int("seed", seed, minimum=0)

    groups = compatible_space_groups(dict(comp))
    systems, by_system = [], []
    for name in CRYSTAL_SYSTEMS:
        gs = tuple(x for x in groups if crystal_system(x) == name)
        if gs:
            systems.append(name)
            by_system.append(gs)
    if not systems:  # pragma: no cover - P1 hosts any composition
        raise InvalidStructureError("no compatible space group", field="composition")
    n_s = max(len(gs) for gs in by_system)

    sizes = [("a", n_ll), ("b", n_ll), ("c", n_ll)]
    sizes += [("alpha", n_lg), ("beta", n_lg), ("gamma", n_lg)]
    sizes += [("crystal_system", len(systems)), ("space_group", n_s), ("wpc_group", n_w)]
    sizes += [(f"coords:{el}", g**3) for el, _ in comp]
    segments, off = [], 0
    for name, n in sizes:
        segments.append(Segment(name, off, n))
        off += n
    one_hot = tuple(s.indices for s in segments[: len(ONE_HOT_SEGMENTS)])
    return CrysimEncoding(
        composition=comp,
        species=species,
        ldr=g,
        length_range=(lo, hi),
        angle_range=(alo, ahi),
        length_bins=n_ll,
        angle_bins=n_lg,
        crystal_systems=tuple(systems),
        space_groups=tuple(by_system),
        num_space_group_bits=n_s,
        num_wpc_groups=n_w,
        wpc_group_size=size,
        max_wpcs=cap,
        seed=seed,
        segments=tuple(segments),
        num_bits=off,
        one_hot_groups=one_hot,
    )


def _range(name: str, value: Any, unit: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
        ok = math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidArgumentError(
            f"{name} must be a pair 0 <= lo < hi ({unit}), got {value!r}",
            argument=name,
            value=value,
        )
    return lo, hi


def crysim_length_range(structures: Any) -> tuple[float, float]:
    """CRYSIM's length bounds from an initial dataset: ``(min length, 1.1 * max length)``.

    Args:
      structures: :class:`~jaxcsp.symmetry.WyckoffCrystals`, :class:`~jaxcsp.crystal.Crystals`
        or an array of cell parameters ``(B, 6)`` / lengths ``(B, 3)`` in Å.

    Returns:
      ``(lo, hi)`` in Å, for ``crysim_encoding(length_range=...)``.
    """
    if isinstance(structures, WyckoffCrystals):
        lengths = _full_cells(structures)[:, :3]
    elif isinstance(structures, Crystals):
        lat = np.asarray(structures.lattice, np.float64).reshape(-1, 3, 3)
        mask = np.asarray(structures.mask).reshape(len(lat), -1).any(-1)
        lengths = np.linalg.norm(lat[mask], axis=-1)
    else:
        lengths = np.asarray(structures, np.float64)
        lengths = lengths.reshape(-1, lengths.shape[-1])[:, :3]
    if lengths.size == 0 or not np.all(np.isfinite(lengths)) or np.any(lengths <= 0):
        raise InvalidArgumentError(
            "need at least one structure with positive finite lengths",
            argument="structures",
        )
    return float(lengths.min()), float(1.1 * lengths.max())


# ----------------------------------------------------------------------------- WPC tables


@functools.lru_cache(maxsize=1024)
def _wpc_table(spg: int, comp: tuple[tuple[str, int], ...], cap: int):
    """``(sorted WPCs, {WPC: index})`` of ``spg`` (cached)."""
    wps = wyckoff_positions(spg)
    raw = wyckoff_combinations(spg, dict(comp), max_combinations=cap)
    order = sorted(
        range(len(raw)),
        key=lambda i: -max(wps[w].multiplicity for part in raw[i] for w in part),
    )
    wpcs = tuple(raw[i] for i in order)
    return wpcs, {w: i for i, w in enumerate(wpcs)}


class _Group(NamedTuple):
    """Host arrays of the ``n <= wpc_group_size`` WPCs of one group, padded to ``N`` sites."""

    wpc_ids: np.ndarray  # (n,) indices into the sorted WPC list
    site_wp: np.ndarray  # (n,N) local Wyckoff index, -1 padding
    site_el: np.ndarray  # (n,N) element index, 0 padding
    site_rank: np.ndarray  # (n,N) which 1-bit of its element the site takes; -1: none
    site_rot: np.ndarray  # (n,N,3,3) first operation (projection)
    site_trans: np.ndarray  # (n,N,3)
    site_free: np.ndarray  # (n,N,3) bool
    site_mask: np.ndarray  # (n,N) bool
    atom_site: np.ndarray  # (n,N)
    atom_op: np.ndarray  # (n,N)
    atom_mask: np.ndarray  # (n,N) bool
    free_count: np.ndarray  # (n,E) free sites per element


@functools.lru_cache(maxsize=4096)
def _group(spg: int, comp: tuple[tuple[str, int], ...], cap: int, size: int, k: int) -> _Group:
    wpcs = _wpc_table(spg, comp, cap)[0]
    ids = np.arange(k * size, min((k + 1) * size, len(wpcs)))
    n_atoms = sum(c for _, c in comp)
    wps = wyckoff_positions(spg)
    n = len(ids)
    shape = (n, n_atoms)
    out: dict[str, np.ndarray] = dict(
        site_wp=np.full(shape, -1, np.int32),
        site_el=np.zeros(shape, np.int32),
        site_rank=np.full(shape, -1, np.int32),
        site_rot=np.zeros((*shape, 3, 3)),
        site_trans=np.zeros((*shape, 3)),
        site_free=np.zeros((*shape, 3), bool),
        site_mask=np.zeros(shape, bool),
        atom_site=np.zeros(shape, np.int32),
        atom_op=np.zeros(shape, np.int32),
        atom_mask=np.zeros(shape, bool),
    )
    for r, wid in enumerate(ids):
        s = a = 0
        for e, part in enumerate(wpcs[wid]):
            rank = 0
            for w in part:
                wp = wps[w]
                out["site_wp"][r, s] = w
                out["site_el"][r, s] = e
                if wp.dof > 0:
                    out["site_rank"][r, s] = rank
                    rank += 1
                out["site_rot"][r, s] = wp.rotations[0]
                out["site_trans"][r, s] = wp.translations[0]
                out["site_free"][r, s] = wp.free
                out["site_mask"][r, s] = True
                m = wp.multiplicity
                out["atom_site"][r, a : a + m] = s
                out["atom_op"][r, a : a + m] = np.arange(wp.op_start, wp.op_start + m)
                out["atom_mask"][r, a : a + m] = True
                s += 1
                a += m
    free_count = np.stack(
        [np.sum((out["site_el"] == e) & (out["site_rank"] >= 0), axis=1) for e in range(len(comp))],
        axis=1,
    )
    grp = _Group(wpc_ids=ids, free_count=free_count, **out)
    for x in grp:
        x.setflags(write=False)
    return grp


# ----------------------------------------------------------------------------- helpers


def _full_cells(wc: WyckoffCrystals) -> np.ndarray:
    """``(B,6) float64`` cells with the crystal system's rule applied."""
    cell = np.asarray(wc.cell, np.float64).reshape(-1, 6)
    src = np.asarray(wc.cell_source).reshape(-1, 6)
    fixed = np.asarray(wc.cell_fixed, np.float64).reshape(-1, 6)
    return np.where(src >= 0, np.take_along_axis(cell, np.maximum(src, 0), axis=-1), fixed)


def _bins(values: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    """Bin index ``floor((v - lo) / u)`` clipped to ``0..n-1``."""
    u = (hi - lo) / n
    return np.clip(np.floor((values - lo) / u + 1e-6), 0, n - 1).astype(np.int64)


def _centres(idx: np.ndarray, lo: float, hi: float, n: int) -> np.ndarray:
    return lo + (np.asarray(idx, np.float64) + 0.5) * (hi - lo) / n


def _volume_fraction(angles_deg: np.ndarray) -> np.ndarray:
    c = np.cos(np.deg2rad(angles_deg))
    f = 1 - np.sum(c**2, axis=-1) + 2 * np.prod(c, axis=-1)
    return np.sqrt(np.maximum(f, 0.0))


def _voxel_of(frac: np.ndarray, g: int) -> np.ndarray:
    """Flat voxel index ``(l g + m) g + n`` of fractional coordinates ``(..., 3)``, wrapped.

    A value within ``1e-4`` voxel of a boundary goes to the upper voxel, so that coordinates
    computed in float32 or float64 (e.g. ``2x`` of a voxel centre, which lies on a boundary)
    land in the same voxel.
    """
    v = np.asarray(frac, np.float64)
    v = v - np.floor(v)
    lmn = np.floor(v * g + 1e-4).astype(np.int64) % g
    return (lmn[..., 0] * g + lmn[..., 1]) * g + lmn[..., 2]


def _sg_bit(idx: int, s: int, n_s: int) -> int:
    return idx * n_s // s


def _sg_from_bit(bit: int, s: int, n_s: int) -> int:
    return ((bit + 1) * s - 1) // n_s


def _structures(structures: Any) -> WyckoffCrystals:
    if isinstance(structures, WyckoffCrystals):
        return structures
    if isinstance(structures, Crystals):
        raise InvalidArgumentError(
            "encode needs the Wyckoff description (space group, Wyckoff positions): pass "
            "WyckoffCrystals or pyxtal structures, not Crystals",
            argument="structures",
        )
    return from_pyxtal(list(structures) if isinstance(structures, Sequence) else structures)


def _need_species(enc: CrysimEncoding) -> tuple[int, ...]:
    if enc.species is None:
        raise InvalidArgumentError(
            f"composition {dict(enc.composition)} has labels that are not elements",
            argument="enc",
        )
    return enc.species


# ----------------------------------------------------------------------------- encode


def encode(enc: CrysimEncoding, structures: Any) -> np.ndarray:
    """Encode symmetric crystals as CRYSIM bit vectors.

    Args:
      enc: the layout (:func:`crysim_encoding`).
      structures: :class:`~jaxcsp.symmetry.WyckoffCrystals` of ``B`` crystals of
        ``enc.composition`` (any padding, any site order), or a sequence of pyxtal crystals.
        Cell lengths (Å) and angles (degrees) outside the bin ranges go to the edge bins.

    Returns:
      ``(B, M) uint8`` bits, ``M = enc.num_bits``.

    Raises:
      InvalidStructureError: naming the crystal (``index``) and the field: ``"spg"`` (a group
        not compatible with the composition), ``"species"`` (an element not in it, or wrong
        counts), ``"wyckoff"`` (a combination not among the group's first ``max_wpcs``).
    """
    z_el = _need_species(enc)
    wc = _structures(structures)
    b = wc.batch_size
    spg = np.asarray(wc.spg).reshape(b)
    wy = np.asarray(wc.wyckoff).reshape(b, -1)
    zs = np.asarray(wc.site_species).reshape(b, -1)
    smask = np.asarray(wc.site_mask).reshape(b, -1)
    free = np.asarray(wc.coords_free).reshape(b, -1, 3)
    xyz = np.asarray(wc.coords, np.float64).reshape(b, -1, 3)
    cells = _full_cells(wc)
    g = enc.ldr
    el_of = {z: e for e, z in enumerate(z_el)}
    out = np.zeros((b, enc.num_bits), np.uint8)
    rows = np.arange(b)
    lo, hi = enc.length_range
    alo, ahi = enc.angle_range
    for j, name in enumerate(ONE_HOT_SEGMENTS[:6]):
        seg = enc.segment(name)
        if j < 3:
            idx = _bins(cells[:, j], lo, hi, enc.length_bins)
        else:
            idx = _bins(cells[:, j], alo, ahi, enc.angle_bins)
        out[rows, seg.offset + idx] = 1
    cs_seg, sg_seg, w_seg = (enc.segment(n) for n in ONE_HOT_SEGMENTS[6:])
    coord_off = [enc.segment(f"coords:{el}").offset for el, _ in enc.composition]
    for i in range(b):
        g_i = int(spg[i])
        try:
            ci, si = enc._system_of(g_i)
        except InvalidStructureError as err:
            raise InvalidStructureError(err.reason, index=i, field="spg") from None
        wps = wyckoff_positions(g_i)
        parts: list[list[int]] = [[] for _ in z_el]
        counts = [0] * len(z_el)
        for s in np.flatnonzero(smask[i]):
            e = el_of.get(int(zs[i, s]))
            if e is None:
                raise InvalidStructureError(
                    f"species {int(zs[i, s])} is not in {dict(enc.composition)}",
                    index=i,
                    field="species",
                )
            parts[e].append(int(wy[i, s]))
            counts[e] += wps[int(wy[i, s])].multiplicity
            if free[i, s].any():
                out[i, coord_off[e] + _voxel_of(xyz[i, s], g)] = 1
        if counts != [n for _, n in enc.composition]:
            raise InvalidStructureError(
                f"atom counts {counts} do not match {dict(enc.composition)}",
                index=i,
                field="species",
            )
        key = tuple(tuple(sorted(p)) for p in parts)
        wpcs, index = _wpc_table(g_i, enc.composition, enc.max_wpcs)
        wid = index.get(key)
        if wid is None:
            raise InvalidStructureError(
                f"Wyckoff combination {key} is not among the {len(wpcs)} WPCs of space group {g_i}",
                index=i,
                field="wyckoff",
            )
        n_groups = -(-len(wpcs) // enc.wpc_group_size)
        out[i, cs_seg.offset + ci] = 1
        out[i, sg_seg.offset + _sg_bit(si, len(enc.space_groups[ci]), sg_seg.size)] = 1
        out[i, w_seg.offset + (wid // enc.wpc_group_size) * w_seg.size // n_groups] = 1
    return out


# ----------------------------------------------------------------------------- decode


def _mid_one(lattice, frac, mask):
    """Minimum interatomic distance (Å) of one crystal, own periodic images included."""
    return min_pair_margin(lattice, frac, jnp.zeros(frac.shape[:1], frac.dtype), mask, 0.0)


@jax.jit
def _mids(wc: WyckoffCrystals):
    c = reconstruct(wc)
    return jax.vmap(_mid_one)(c.lattice, c.frac, c.mask)


def _chunk(n_atoms: int) -> int:
    return int(min(1024, max(8, 1 << int(np.log2(max(2**21 / (n_atoms * n_atoms), 1))))))


def _evaluate(fields: dict[str, np.ndarray], n_atoms: int) -> np.ndarray:
    """MIDs of a flat batch of candidates, in jitted chunks of one fixed size."""
    total = len(fields["spg"])
    size = _chunk(n_atoms)
    dtype = jnp.asarray(0.0).dtype
    out = []
    for s in range(0, total, size):
        take = np.arange(s, min(s + size, total))
        idx = np.concatenate([take, np.full(size - len(take), take[0])])
        sub = {
            k: jnp.asarray(v[idx], dtype if v.dtype.kind == "f" else None)
            for k, v in fields.items()
        }
        out.append(np.asarray(_mids(WyckoffCrystals(**sub)))[: len(take)])
    return np.concatenate(out) if out else np.zeros(0)


def _one_hot(bits: np.ndarray, seg_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First set bit (0 if none) and whether the segment is not exactly one-hot."""
    x = bits[:, seg_idx]
    return np.argmax(x, axis=1), x.sum(axis=1) != 1


def _row_rng(enc: CrysimEncoding, key_data, row_bits: np.ndarray, i: int):
    if key_data is not None:
        return np.random.default_rng([*key_data, i])
    return np.random.default_rng([enc.seed, zlib.crc32(np.packbits(row_bits).tobytes())])


def _lattice_cells(enc: CrysimEncoding, bits: np.ndarray, spg: np.ndarray):
    """``(B,6)`` decoded cells and whether the angles had to be moved."""
    b = len(bits)
    idx = np.stack([_one_hot(bits, enc.one_hot_groups[j])[0] for j in range(6)], axis=1)
    lo, hi = enc.length_range
    alo, ahi = enc.angle_range
    target = int(_bins(np.array([90.0]), alo, ahi, enc.angle_bins)[0])
    adjusted = np.zeros(b, bool)
    cells = np.zeros((b, 6))
    for i in range(b):
        ang = idx[i, 3:].copy()
        if crystal_system(int(spg[i])) == "triclinic":
            while _volume_fraction(
                _centres(ang, alo, ahi, enc.angle_bins)
            ) < _MIN_VOLUME_FRACTION and np.any(ang != target):
                ang += np.sign(target - ang)
                adjusted[i] = True
        raw = np.concatenate(
            [
                _centres(idx[i, :3], lo, hi, enc.length_bins),
                _centres(ang, alo, ahi, enc.angle_bins),
            ]
        )
        src, fixed = cell_rule(int(spg[i]))
        cells[i] = np.where(src >= 0, raw[np.maximum(src, 0)], fixed)
    return cells, adjusted


def _leftmost(seg_bits: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``(B, count)`` the lowest set voxel indices and whether each exists."""
    order = np.argsort(~seg_bits, axis=1, kind="stable")[:, :count]
    have = np.arange(count)[None, :] < seg_bits.sum(axis=1)[:, None]
    return order, have


def _fill(rng, seg_bits: np.ndarray, vox: np.ndarray, have: np.ndarray) -> np.ndarray:
    """Replace missing voxels by distinct random unset voxels (one row of one element)."""
    missing = int((~have).sum())
    if missing == 0:
        return vox
    unset = np.flatnonzero(~seg_bits)
    pick = rng.choice(unset, size=missing, replace=False)
    vox = vox.copy()
    vox[~have] = pick
    return vox


def _matching(compat: np.ndarray) -> np.ndarray | None:
    """A perfect matching of a square bool matrix (rows -> columns), or ``None`` (Kuhn)."""
    n = compat.shape[0]
    col_of_row = -np.ones(n, np.int64)
    row_of_col = -np.ones(n, np.int64)

    def augment(r, seen):
        for c in np.flatnonzero(compat[r]):
            if not seen[c]:
                seen[c] = True
                if row_of_col[c] < 0 or augment(row_of_col[c], seen):
                    row_of_col[c] = r
                    col_of_row[r] = c
                    return True
        return False

    for r in range(n):
        if not augment(r, np.zeros(n, bool)):
            return None
    return col_of_row


def _site_voxels(enc, grp: _Group, pick, vox_row, have_row, set_row):
    """Voxel of each free site of each candidate (leftmost rule), fills and exact matches.

    Returns ``site_vox (size,N)`` (-1 on fixed and padding sites), ``filled (size,)`` and
    ``exact (size,)``. With ``set_row`` (the row's set voxels per element) a candidate whose free
    sites can take exactly those voxels, each a fixed point of its site's projection, uses that
    assignment and is marked exact: its encoding reproduces the row's coordinate bits.
    """
    g = enc.ldr
    el = grp.site_el[pick]
    rank = grp.site_rank[pick]
    free = rank >= 0
    r = np.maximum(rank, 0)
    site_vox = np.where(free, vox_row[el, r], -1)
    filled = np.sum(free & ~have_row[el, r], axis=1)
    exact = np.zeros(len(pick), bool)
    if set_row is None:
        return site_vox, filled, exact
    n_set = np.asarray([len(u) for u in set_row])
    for c in np.unique(pick):
        if not np.array_equal(grp.free_count[c], n_set):
            continue
        vox_c = -np.ones(grp.site_wp.shape[1], np.int64)
        ok = True
        for e, u in enumerate(set_row):
            sites = np.flatnonzero((grp.site_el[c] == e) & (grp.site_rank[c] >= 0))
            if len(sites) == 0:
                continue
            centre = _voxel_centres(u, g)  # (n,3)
            proj = (
                np.einsum("kij,nj->kni", grp.site_rot[c, sites], centre)
                + grp.site_trans[c, sites][:, None, :]
            )
            compat = _voxel_of(proj, g) == u[None, :]
            match = _matching(compat)
            if match is None:
                ok = False
                break
            vox_c[sites] = u[match]
        if ok:
            rows = pick == c
            site_vox[rows] = vox_c
            filled[rows] = 0
            exact[rows] = True
    return site_vox, filled, exact


def _voxel_centres(vox: np.ndarray, g: int) -> np.ndarray:
    """``(..., 3)`` fractional centres of flat voxel indices."""
    vox = np.asarray(vox)
    lmn = np.stack([vox // (g * g), (vox // g) % g, vox % g], axis=-1)
    return (lmn + 0.5) / g


def _candidates(enc, spg_row, cell_row, site_vox, grp: _Group, pick):
    """Candidate fields for one vector (the WPCs ``pick`` of its group) and their centres."""
    z_el = np.asarray(enc.species)
    el = grp.site_el[pick]
    centre = np.where(
        (site_vox >= 0)[..., None], _voxel_centres(np.maximum(site_vox, 0), enc.ldr), 0.0
    )
    coords = np.einsum("snij,snj->sni", grp.site_rot[pick], centre) + grp.site_trans[pick]
    src, fixed = cell_rule(int(spg_row))
    size = len(pick)
    fields = dict(
        spg=np.full(size, spg_row, np.int32),
        wyckoff=grp.site_wp[pick],
        site_species=np.where(grp.site_mask[pick], z_el[el], 0).astype(np.int32),
        site_mask=grp.site_mask[pick],
        cell=np.broadcast_to(cell_row, (size, 6)).copy(),
        coords=coords,
        cell_source=np.broadcast_to(src, (size, 6)).copy(),
        cell_fixed=np.broadcast_to(fixed, (size, 6)).copy(),
        coords_free=grp.site_free[pick],
        atom_site=grp.atom_site[pick],
        atom_op=grp.atom_op[pick],
        atom_mask=grp.atom_mask[pick],
    )
    return fields, centre


def decode(
    enc: CrysimEncoding,
    bits: Any,
    *,
    key: Any = None,
    prefer_exact: bool = False,
    overlap_tol: float = MIN_DISTANCE,
    max_repairs: int = 20,
) -> tuple[WyckoffCrystals, dict[str, np.ndarray]]:
    """Decode CRYSIM bit vectors into symmetric crystals (MID selection over the WPC group).

    Args:
      enc: the layout (:func:`crysim_encoding`).
      bits: ``(B, M)`` (or ``(M,)``) array; entries > 0.5 are 1-bits (bool, uint8 or the
        solver's floats).
      key: ``jax.random`` key for the random fills; ``None``: derived from ``enc.seed`` and
        each row's bits (decoding is then a pure function of the row).
      prefer_exact: among the candidates, prefer (largest MID first) those whose own encoding
        reproduces the row's coordinate bits exactly: each element's 1-bits are exactly its free
        sites' voxels, assigned so that every voxel contains its projected site. Off (the
        paper's rule): the largest MID wins. On: ``encode(decode(y))`` is a fixed point,
        ``encode(decode(encode(decode(y)))) == encode(decode(y))``.
      overlap_tol: a candidate with two atoms (or an atom and its image) closer than this (Å)
        counts as overlapping; a vector whose candidates all overlap has its voxels redrawn.
      max_repairs: most redraws per vector.

    Returns:
      ``(crystals, info)``: :class:`~jaxcsp.symmetry.WyckoffCrystals` of ``B`` crystals padded
      to ``N`` sites and ``N`` atoms (``N = enc.num_atoms``; float dtype: JAX's default), and
      ``info``, a dict of host arrays:

      * ``"space_group"`` ``(B,) int``, ``"crystal_system"`` ``(B,) int`` (index into
        ``enc.crystal_systems``), ``"wpc_group"`` ``(B,) int`` (group ``k`` of the space
        group's WPCs), ``"wpc_index"`` ``(B,) int`` (the chosen WPC in ``enc.wpcs(spg)``);
      * ``"mid"`` ``(B,) float`` MID of each returned crystal (Å) and ``"candidate_mid"``
        ``(B, wpc_group_size) float`` of every candidate of the group, in WPC order
        (``-inf`` past the group's end);
      * ``"infeasible"`` ``(B,) bool``: some one-hot segment did not have exactly one 1-bit;
        ``"infeasible_segments"`` ``(B, 9) bool`` per segment (``ONE_HOT_SEGMENTS`` order);
      * ``"lattice_adjusted"`` ``(B,) bool``: triclinic angles moved towards 90 degrees;
      * ``"filled_sites"`` ``(B,) int``: free sites of the chosen WPC with a randomly drawn
        voxel (too few 1-bits);
      * ``"exact"`` ``(B,) bool``: the chosen candidate reproduces the coordinate bits (only
        computed with ``prefer_exact``);
      * ``"repaired"`` ``(B,) bool``: voxels redrawn because every candidate overlapped;
        ``"overlap"`` ``(B,) bool``: still overlapping after ``max_repairs`` (e.g. a cell too
        small for the composition).

    Raises:
      InvalidArgumentError: ``bits`` of the wrong width, or an encoding of abstract labels.
    """
    z_el = _need_species(enc)
    x = np.asarray(bits)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] != enc.num_bits or x.shape[0] == 0:
        raise InvalidArgumentError(
            f"bits must have shape (B, {enc.num_bits}) with B >= 1, got {np.shape(bits)}",
            argument="bits",
            value=np.shape(bits),
        )
    x = x > 0.5
    check_real("overlap_tol", overlap_tol, unit="Å")
    max_repairs = check_int("max_repairs", max_repairs, minimum=0)
    key_data = None
    if key is not None:
        key_data = np.asarray(jax.random.key_data(key)).ravel().tolist()
    b = len(x)
    n_atoms = enc.num_atoms
    size = enc.wpc_group_size
    rows_all = np.arange(b)

    # symmetry: first 1-bit of each one-hot segment
    onehots = [_one_hot(x, idx) for idx in enc.one_hot_groups]
    infeasible_seg = np.stack([bad for _, bad in onehots], axis=1)
    cs, sg_bit, w_bit = (onehots[j][0] for j in (6, 7, 8))
    n_s, n_w = enc.num_space_group_bits, enc.num_wpc_groups
    spg = np.zeros(b, np.int64)
    group = np.zeros(b, np.int64)
    for r in range(b):
        gs = enc.space_groups[cs[r]]
        spg[r] = gs[_sg_from_bit(int(sg_bit[r]), len(gs), n_s)]
        k_total = enc.num_wpc_groups_of(int(spg[r]))
        group[r] = ((int(w_bit[r]) + 1) * k_total - 1) // n_w
    cells, adjusted = _lattice_cells(enc, x, spg)
    groups = [
        _group(int(spg[i]), enc.composition, enc.max_wpcs, size, int(group[i])) for i in rows_all
    ]
    picks = [np.minimum(np.arange(size), len(grp.wpc_ids) - 1) for grp in groups]
    valid = np.stack([np.arange(size) < len(grp.wpc_ids) for grp in groups])

    # coordinates: leftmost 1-bits of each element, random fills where too few
    g3 = enc.ldr**3
    max_count = max(n for _, n in enc.composition)
    vox = np.zeros((b, len(z_el), max_count), np.int64)
    have = np.zeros((b, len(z_el), max_count), bool)
    segs = []
    for e, (el, count) in enumerate(enc.composition):
        seg = enc.segment(f"coords:{el}")
        sb = x[:, seg.offset : seg.offset + g3]
        segs.append(sb)
        order, h = _leftmost(sb, count)
        vox[:, e, :count] = order
        have[:, e, :count] = h
    rngs: dict[int, np.random.Generator] = {}

    def rng_of(i):
        if i not in rngs:
            rngs[i] = _row_rng(enc, key_data, x[i], i)
        return rngs[i]

    for i in rows_all:
        for e, (_, count) in enumerate(enc.composition):
            if not have[i, e, :count].all():
                vox[i, e, :count] = _fill(
                    rng_of(i), segs[e][i], vox[i, e, :count], have[i, e, :count]
                )

    def evaluate(rows, vox_rows, have_rows, exact_ok):
        parts, extra = [], []
        for j, i in enumerate(rows):
            set_row = [np.flatnonzero(sb[i]) for sb in segs] if exact_ok else None
            sv, filled, exact = _site_voxels(
                enc, groups[i], picks[i], vox_rows[j], have_rows[j], set_row
            )
            parts.append(_candidates(enc, spg[i], cells[i], sv, groups[i], picks[i]))
            extra.append((filled, exact))
        flat = {k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]}
        mids = _evaluate(flat, n_atoms).reshape(len(rows), size)
        mids = np.where(valid[rows], np.nan_to_num(mids, nan=0.0, posinf=0.0), -np.inf)
        centres = [p[1] for p in parts]
        filled = np.stack([f for f, _ in extra])
        exact = np.stack([ex for _, ex in extra]) & valid[rows]
        return mids, centres, filled, exact

    cand_mid, centres, filled, exact = evaluate(rows_all, vox, have, prefer_exact)
    repaired = np.zeros(b, bool)
    for _ in range(max_repairs):
        bad = np.flatnonzero(cand_mid.max(axis=1) < overlap_tol)
        if len(bad) == 0:
            break
        new_vox = np.zeros((len(bad), len(z_el), max_count), np.int64)
        for j, i in enumerate(bad):
            for e, (_, count) in enumerate(enc.composition):
                new_vox[j, e, :count] = rng_of(i).choice(g3, size=count, replace=False)
        m, c, f, ex = evaluate(bad, new_vox, np.zeros_like(have[bad]), False)
        cand_mid[bad], filled[bad], exact[bad] = m, f, ex
        for j, i in enumerate(bad):
            centres[i] = c[j]
        repaired[bad] = True
    score = cand_mid
    if prefer_exact:
        preferred = exact & (cand_mid >= overlap_tol)
        score = np.where(preferred.any(axis=1, keepdims=True) & ~preferred, -np.inf, cand_mid)
    best = np.argmax(score, axis=1)
    mid = cand_mid[rows_all, best]

    wy, sp, xyz = [], [], []
    for i in rows_all:
        grp, j = groups[i], picks[i][best[i]]
        m = grp.site_mask[j]
        wy.append(grp.site_wp[j][m].tolist())
        sp.append([z_el[e] for e in grp.site_el[j][m]])
        xyz.append(centres[i][best[i]][m])
    out = WyckoffCrystals.create(
        spg.tolist(), wy, sp, cells, xyz, max_sites=n_atoms, max_atoms=n_atoms
    )
    info = {
        "space_group": spg,
        "crystal_system": cs,
        "wpc_group": group,
        "wpc_index": np.asarray([groups[i].wpc_ids[best[i]] for i in rows_all], np.int64),
        "mid": mid,
        "candidate_mid": cand_mid,
        "infeasible": infeasible_seg.any(axis=1),
        "infeasible_segments": infeasible_seg,
        "lattice_adjusted": adjusted,
        "filled_sites": filled[rows_all, best],
        "exact": exact[rows_all, best],
        "repaired": repaired,
        "overlap": mid < overlap_tol,
    }
    return out, info
