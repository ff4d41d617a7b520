"""Random symmetric crystals (PyXtal ``from_random``-style generation, batched).

Contract: :func:`random_crystals` returns ``n`` crystals of the given unit-cell composition,
each a valid structure of its space group:

1. space group: given (one for all, or one per structure) or uniform over
   :func:`~jaxcsp.symmetry.compatible_space_groups`;
2. Wyckoff combination: uniform over :func:`~jaxcsp.symmetry.wyckoff_combinations` (capped),
   as CRYSIM samples WPCs;
3. lattice: volume ``volume_factor * sum_i (4/3) pi r_i^3`` with ``r_i`` drawn between the
   covalent and the van der Waals radius (PyXtal's rule), shape random within the crystal
   system (length ratios <= ``max_ratio``, free angles in [60, 120] degrees);
4. free coordinates uniform in [0, 1);
5. acceptance (vectorised in ``jnp`` over a batch of candidates): every pair of atoms, own
   periodic images included, is at least ``distance_factor * (r_cov,i + r_cov,j)`` apart
   (PyXtal's default atomic tolerance is 0.5), and every cell width exceeds the largest
   tolerance (so the 27-image check is exact);
6. with ``check_symmetry=True`` (default), spglib (``symprec``) must find exactly the intended
   group. Random continuous parameters almost never raise symmetry, but some WPCs do so by
   construction (e.g. one orbit of a polar group is often centrosymmetric); those candidates
   are rejected and redrawn, so every returned structure has the intended space group.

Candidates are drawn in rounds until ``n`` are accepted or ``max_rounds`` is exhausted. With
``spg=None`` each candidate draws its group afresh, so a compatible group for which every WPC
raises the symmetry (e.g. Si4O8 in P6cc: only sites on the 6-fold axes) is simply never kept.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase.data.vdw_alvarez import vdw_radii as _VDW

from jaxcsp.crystal import Crystals
from jaxcsp.elements import COVALENT_RADII, atomic_numbers
from jaxcsp.errors import InvalidStructureError
from jaxcsp.symmetry._lattice import cell_rule
from jaxcsp.symmetry._tables import _check_spg, crystal_system
from jaxcsp.symmetry._wpc import compatible_space_groups, parse_composition, wyckoff_combinations
from jaxcsp.symmetry._wyckoff import WyckoffCrystals, reconstruct

__all__ = ["GenerationError", "min_distance_margin", "random_crystals", "spglib_space_groups"]


class GenerationError(InvalidStructureError):
    """Random generation could not produce the requested structures."""


@functools.cache
def _wpcs(g: int, comp: tuple[tuple[str, int], ...], cap: int) -> list:
    return wyckoff_combinations(g, dict(comp), max_combinations=cap)


def _radii(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cov = COVALENT_RADII[z]
    vdw = np.asarray(_VDW)[z]
    vdw = np.where(np.isfinite(vdw) & (vdw > cov), vdw, 2.0 * cov)
    return cov, vdw


def _random_cells(rng, spgs, volumes, max_ratio) -> np.ndarray:
    """``(B,6)`` cells (Å, degrees) of the given volumes, shapes random per crystal system."""
    b = len(spgs)
    u = rng.uniform(-0.5, 0.5, size=(b, 3)) * np.log(max_ratio)
    lengths = np.exp(u)
    angles = np.full((b, 3), 90.0)
    out = np.zeros((b, 6))
    for i, g in enumerate(spgs):
        system = crystal_system(int(g))
        src, fixed = cell_rule(int(g))
        ang = fixed[3:].copy()
        if system == "triclinic":
            ang = rng.uniform(60.0, 120.0, size=3)
        elif system == "monoclinic":
            ang[1] = rng.uniform(60.0, 120.0)
        angles[i] = ang
        length = lengths[i][np.maximum(src[:3], 0)]
        c = np.cos(np.deg2rad(ang))
        f = 1 - np.sum(c**2) + 2 * np.prod(c)
        vol_unit = np.prod(length) * np.sqrt(max(f, 1e-12))
        out[i, :3] = length * np.cbrt(volumes[i] / vol_unit)
        out[i, 3:] = ang
    return out


_SHIFTS = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], float)
_ZERO_SHIFT = 13  # the row of _SHIFTS that is (0, 0, 0)


def min_pair_margin(lattice, frac, radius, mask, factor):
    """Smallest ``d_ij - factor (r_i + r_j)`` over pairs and the 27 nearest images, one crystal.

    ``lattice (3, 3)`` Å, ``frac (N, 3)``, ``radius (N,)`` Å, ``mask (N,)``, ``factor`` scalar;
    returns a scalar in Å (the minimum interatomic distance for zero radii or factor).
    """
    d = frac[:, None, :] - frac[None, :, :]
    d = d - jnp.round(d)
    cart = d @ lattice  # (N,N,3)
    tol = factor * (radius[:, None] + radius[None, :])
    pair = mask[:, None] & mask[None, :]
    not_self = ~jnp.eye(frac.shape[0], dtype=bool)
    shifts = jnp.asarray(_SHIFTS, frac.dtype) @ lattice  # (27, 3)

    def image(k, best):  # one image at a time: memory stays O(N^2), one loop body to compile
        v = cart + shifts[k]
        r = jnp.sqrt(jnp.sum(v * v, axis=-1))
        valid = pair & (not_self | (k != _ZERO_SHIFT))
        return jnp.minimum(best, jnp.min(jnp.where(valid, r - tol, jnp.inf)))

    return jax.lax.fori_loop(0, len(_SHIFTS), image, jnp.asarray(jnp.inf, frac.dtype))


@jax.jit
def _margins(c: Crystals, radius_by_z, factor):
    radius = radius_by_z[c.species]
    return jax.vmap(min_pair_margin, in_axes=(0, 0, 0, 0, None))(
        c.lattice, c.frac, radius, c.mask, factor
    )


_reconstruct = jax.jit(reconstruct)


def _bucket(b: int, chunk: int) -> int:
    return min(chunk, 1 << max(b - 1, 0).bit_length())


def _crystal_margins(c: Crystals, distance_factor: float, chunk: int) -> np.ndarray:
    radius = jnp.asarray(COVALENT_RADII, c.frac.dtype)
    b = c.batch_size
    n = max(c.max_atoms, 1)
    chunk = max(1, min(chunk, 1 << int(np.log2(max(4e6 / (n * n), 1)))))
    size = _bucket(b, chunk)  # power-of-two buckets: few compilations
    host = jax.tree_util.tree_map(np.asarray, c)
    out = []
    for s in range(0, b, size):
        take = np.arange(s, min(s + size, b))
        idx = np.concatenate([take, np.full(size - len(take), take[-1])])
        # device_put, not jnp.asarray: the latter compiles a copy program per shape
        sub = jax.device_put(jax.tree_util.tree_map(lambda x, idx=idx: x[idx], host))
        out.append(np.asarray(_margins(sub, radius, distance_factor))[: len(take)])
    return np.concatenate(out) if out else np.zeros(0)


def min_distance_margin(
    wc: WyckoffCrystals, *, distance_factor: float = 0.5, chunk: int = 256
) -> np.ndarray:
    """Smallest ``d_ij - distance_factor * (r_i + r_j)`` per crystal (covalent radii, Å).

    Includes each atom's own periodic images; exact when every cell width exceeds the largest
    tolerance (images within one cell in each direction are checked). Returns ``(B,)`` float64.
    Evaluated in jitted chunks of at most ``chunk`` crystals.
    """
    return _crystal_margins(_reconstruct(wc), distance_factor, chunk)


def _spglib_numbers(c: Crystals, indices, symprec: float) -> np.ndarray:
    import spglib

    lat, frac, sp, mask = (np.asarray(a) for a in (c.lattice, c.frac, c.species, c.mask))
    out = []
    for i in indices:
        m = mask[i]
        with warnings.catch_warnings():  # spglib's own OLD_ERROR_HANDLING deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = spglib.get_symmetry_dataset(
                (lat[i].astype(np.float64), frac[i][m].astype(np.float64), sp[i][m]),
                symprec=symprec,
            )
        out.append(0 if ds is None else ds.number)
    return np.asarray(out, int)


def spglib_space_groups(wc: WyckoffCrystals, *, symprec: float = 1e-3) -> np.ndarray:
    """``(B,) int`` space group found by spglib for each reconstructed crystal (0 if none)."""
    return _spglib_numbers(_reconstruct(wc), range(wc.batch_size), symprec)


def _cell_widths(cell: np.ndarray) -> np.ndarray:
    """``(B,3)`` distances between opposite cell faces (Å), numpy."""
    ang = np.deg2rad(cell[:, 3:])
    c = np.cos(ang)
    f = np.sqrt(np.maximum(1 - np.sum(c**2, -1) + 2 * np.prod(c, -1), 0.0))
    vol = np.prod(cell[:, :3], -1) * f
    s = np.sin(ang)
    # area of the face spanned by the two other vectors: |b||c| sin(alpha), ...
    areas = np.stack(
        [
            cell[:, 1] * cell[:, 2] * s[:, 0],
            cell[:, 0] * cell[:, 2] * s[:, 1],
            cell[:, 0] * cell[:, 1] * s[:, 2],
        ],
        -1,
    )
    return vol[:, None] / areas


def random_crystals(
    key: Any,
    composition: Mapping[str, int] | str,
    n: int,
    *,
    spg: int | Sequence[int] | None = None,
    volume_factor: float = 1.1,
    distance_factor: float = 0.5,
    max_ratio: float = 3.0,
    check_symmetry: bool = True,
    symprec: float = 1e-3,
    max_wpcs: int = 10_000,
    candidates_per_round: int | None = None,
    max_rounds: int = 50,
    max_sites: int | None = None,
    max_atoms: int | None = None,
    dtype: Any = None,
) -> WyckoffCrystals:
    """Random valid symmetric crystals of one unit-cell composition.

    Args:
      key: ``jax.random`` key (the draw is deterministic given the key).
      composition: unit-cell composition, ``{"Si": 4, "O": 8}`` or ``"Si4O8"`` (real elements).
      n: number of crystals.
      spg: one group for all, a sequence of ``n`` groups (one per crystal), or ``None`` for
        uniform over the compatible groups.
      volume_factor: cell volume / sum of atomic sphere volumes (PyXtal's default 1.1).
      distance_factor: minimum distance is ``distance_factor * (r_cov,i + r_cov,j)``.
      max_ratio: largest ratio of two cell lengths.
      check_symmetry: reject structures whose spglib group differs from the intended one.
      symprec: spglib tolerance (Å) for that check.
      max_wpcs: cap on the WPCs enumerated per group.
      candidates_per_round: candidates drawn per missing crystal and round (default 4).
      max_rounds: rounds of drawing before giving up.
      max_sites, max_atoms, dtype: padding and float dtype of the result.

    Returns:
      :class:`WyckoffCrystals` with ``n`` crystals, in the order of ``spg`` when given.

    Raises:
      InvalidStructureError: bad composition or ``spg`` (field ``"composition"``/``"spg"``),
        a group with no WPC for the composition (field ``"composition"``, index = the
        crystal), or generation failing after ``max_rounds`` (``GenerationError``).
    """
    comp = tuple(parse_composition(composition))
    z_el = atomic_numbers([el for el, _ in comp])
    n = int(n)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    groups = None
    if spg is None:
        groups = np.asarray(compatible_space_groups(dict(comp)))
        spgs = rng.choice(groups, size=n)
    elif np.ndim(spg) == 0:
        spgs = np.full(n, _check_spg(spg))
    else:
        spgs = np.asarray(spg).ravel()
        if len(spgs) != n:
            raise InvalidStructureError(f"spg has {len(spgs)} entries for n={n}", field="spg")
    for i, g in enumerate(spgs):
        _check_spg(g, index=i)
        if not _wpcs(int(g), comp, max_wpcs):
            raise InvalidStructureError(
                f"composition {dict(comp)} cannot fill space group {int(g)}",
                index=i,
                field="composition",
            )
    total = sum(c for _, c in comp)
    cov, vdw = _radii(np.asarray(z_el))
    counts = np.asarray([c for _, c in comp], float)
    max_tol = distance_factor * 2 * cov.max()
    per = candidates_per_round or 4
    accepted: dict[int, tuple] = {}
    round_size = _bucket(n * per, 4096)  # fixed candidate batch: one compilation per site count
    for _ in range(max_rounds):
        todo = [i for i in range(n) if i not in accepted]
        if not todo:
            break
        slots = np.repeat(todo, per)[:round_size]
        slots = np.concatenate([slots, rng.choice(todo, round_size - len(slots))])
        if groups is None:
            gs = spgs[slots].astype(int)
        else:  # redraw the group too, so groups whose WPCs always raise symmetry are skipped
            gs = rng.choice(groups, size=len(slots))
        wy, sp, xyz = [], [], []
        for g in gs:
            options = _wpcs(int(g), comp, max_wpcs)
            w = options[rng.integers(len(options))]
            wy_i = [idx for part in w for idx in part]
            sp_i = [z_el[e] for e, part in enumerate(w) for _ in part]
            wy.append(wy_i)
            sp.append(sp_i)
            xyz.append(rng.random((len(wy_i), 3)))
        r3 = rng.uniform(cov**3, vdw**3, size=(len(gs), len(comp)))
        volumes = volume_factor * (4.0 / 3.0) * np.pi * (r3 @ counts)
        cells = _random_cells(rng, gs, volumes, max_ratio)
        s_pad = max(len(w) for w in wy)
        s_pad = 1 << (s_pad - 1).bit_length()
        x64 = jax.config.jax_enable_x64  # type: ignore[attr-defined]  # a dynamic jax.config option
        cand = WyckoffCrystals.create(
            gs,
            wy,
            sp,
            cells,
            xyz,
            max_sites=s_pad,
            max_atoms=total,
            dtype=jnp.float64 if x64 else None,
        )
        ok = np.all(_cell_widths(cells) > max_tol, axis=-1)
        crystals = _reconstruct(cand)
        ok &= _crystal_margins(crystals, distance_factor, 256) >= 0
        host = jax.tree_util.tree_map(np.asarray, crystals) if check_symmetry else None
        for k in np.flatnonzero(ok):
            i = int(slots[k])
            if i in accepted:
                continue  # spglib only on the first good candidate of each slot
            if host is not None and _spglib_numbers(host, [k], symprec)[0] != gs[k]:
                continue
            accepted[i] = (int(gs[k]), wy[k], sp[k], cells[k], xyz[k])
    missing = [i for i in range(n) if i not in accepted]
    if missing:
        raise GenerationError(
            f"no valid structure of space group {int(spgs[missing[0]])} after {max_rounds} rounds "
            f"(try a larger volume_factor or a smaller distance_factor)",
            index=missing[0],
            field="spg",
        )
    rows = [accepted[i] for i in range(n)]
    return WyckoffCrystals.create(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        np.asarray([r[3] for r in rows]),
        [r[4] for r in rows],
        max_sites=max_sites,
        max_atoms=max_atoms,
        dtype=dtype,
    )
