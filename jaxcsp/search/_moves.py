"""Basin-hopping moves (FUSE2's move set, for cells without modules), host side.

A structure is ``(lattice (3, 3) Å, frac (n, 3), numbers (n,) int)`` in NumPy. Every move
keeps the stoichiometry (a cell holds ``k`` formula units, ``min_units <= k <= max_units``) and
returns a structure that passes :func:`check_structure` (the distance rule of the random
generator and a non-degenerate cell), or raises :class:`MoveNotApplicable` with the reason.
The moves, by name, and the FUSE2 moves they stand for (Hughes et al., "FUSE2", section 2.2):

==================  =============================================================  =========
name                what it does                                                   FUSE2
==================  =============================================================  =========
``swap_two``        swap two atoms of different species                            1
``to_void``         move one atom into a void > ``void_distance`` from all others  2
``swap_some``       permute the species of ``i`` atoms, ``n > i > 2``              3
``swap_some_void``  as ``swap_some``, some of them moved into voids instead        4
``swap_all``        permute the species of every atom                              5
``swap_all_void``   as ``swap_all``, some atoms moved into voids                   6
``swap_blocks``     swap the contents of two blocks of a block grid                7
``swap_layers``     swap two layers along an axis                                  8
``new_shape``       new random cell shape, same volume and fractional coordinates  9
``mutate``          new random positions for the atoms of a block with 1-4 atoms   10
``double``          double along an axis: repeat, shift 1/2, invert or mirror      11
``triple``          triple along an axis: repeat or shift 1/3                      12
``new_random``      a new random symmetric structure of at most the current size   13
``new_random_max``  a new random symmetric structure of at most ``max_units``      14
``halve``           the reverse of ``double``: keep a stoichiometric half          (11)
``third``           the reverse of ``triple``: keep a stoichiometric third         (12)
``strain``          random symmetric strain, ``|eps| <= strain``                   --
``shape_strain``    volume-preserving (traceless) strain                           --
``rattle``          Gaussian displacements of ``rattle`` Å                         --
==================  =============================================================  =========

The two ``new_random*`` moves are requests (:class:`NewRandom`) that the method fulfils with
its generator, batched over the population. FUSE2's sub-modules are blocks of a grid whose
edge is ``4 r̄`` (``r̄`` the mean covalent radius of the composition, FUSE's ``I_p = 4 R_at``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

import numpy as np

from jaxcsp.elements import COVALENT_RADII

__all__ = [
    "MOVES",
    "MoveContext",
    "MoveNotApplicable",
    "NewRandom",
    "apply_move",
    "check_structure",
    "min_distance_ratio",
]

Structure = tuple[np.ndarray, np.ndarray, np.ndarray]


class MoveNotApplicable(Exception):
    """A move cannot apply to this structure (elemental swap, no void, too many atoms, ...)."""

    def __init__(self, move: str, reason: str):
        self.move = move
        self.reason = reason
        super().__init__(f"{move}: {reason}")


@dataclasses.dataclass(frozen=True)
class NewRandom:
    """A request for a fresh random structure of ``units`` formula units."""

    units: int


@dataclasses.dataclass(frozen=True)
class MoveContext:
    """What the moves need to know besides the structure.

    Attributes:
      formula: ``{atomic number: count}`` of one formula unit (the reduced composition).
      max_units: largest number of formula units a cell may hold.
      min_units: smallest number of formula units a cell may hold.
      distance_factor: two atoms are at least ``distance_factor * (r_cov,i + r_cov,j)`` apart.
      void_distance: a void is farther than this from every atom, Å (FUSE2's default 1 Å;
        never closer than the distance rule allows).
      strain: largest strain component of ``strain`` and ``shape_strain``.
      rattle: standard deviation of ``rattle``'s displacements, Å.
      tries: attempts with fresh random numbers before a move is not applicable.
    """

    formula: Mapping[int, int]
    max_units: int
    min_units: int = 1
    distance_factor: float = 0.5
    void_distance: float = 1.0
    strain: float = 0.1
    rattle: float = 0.3
    tries: int = 8

    @property
    def elemental(self) -> bool:
        return len(self.formula) == 1

    @property
    def block(self) -> float:
        """Edge of a block (FUSE's sub-module ``I_p = 4 r̄``), Å."""
        z = np.asarray(list(self.formula))
        w = np.asarray([self.formula[k] for k in self.formula], float)
        return 4.0 * float(np.sum(COVALENT_RADII[z] * w) / w.sum())

    def units(self, numbers: np.ndarray) -> int:
        """Formula units of a cell with these atoms."""
        z0, c0 = next(iter(self.formula.items()))
        return int(np.sum(numbers == z0)) // c0


# ----------------------------------------------------------------------------- validity


def _widths(lattice: np.ndarray) -> np.ndarray:
    vol = abs(np.linalg.det(lattice))
    cross = np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]])
    return vol / np.maximum(np.linalg.norm(cross, axis=1), 1e-300)


def min_distance_ratio(
    lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, distance_factor: float
) -> float:
    """Smallest ``d_ij / (distance_factor (r_i + r_j))`` over every pair, periodic images and
    an atom's own images included (``>= 1`` passes the distance rule).

    Args:
      lattice: ``(3, 3)`` rows, Å. frac: ``(n, 3)``. numbers: ``(n,)`` atomic numbers.
      distance_factor: the rule's factor on the covalent radii sum.
    """
    r = COVALENT_RADII[numbers]
    limit = distance_factor * (r[:, None] + r[None, :])
    reach = 2.0 * float(limit.max()) if len(r) else 0.0
    n_img = np.ceil(reach / np.maximum(_widths(lattice), 1e-12)).astype(int)
    n_img = np.minimum(n_img, 20)
    grids = [np.arange(-k, k + 1) for k in n_img]
    shifts = np.stack(np.meshgrid(*grids, indexing="ij"), -1).reshape(-1, 3)
    d = frac[None, :, :] - frac[:, None, :]
    d -= np.round(d)
    cart = (d[:, :, None, :] + shifts[None, None]) @ lattice  # (n, n, S, 3)
    dist = np.linalg.norm(cart, axis=-1)
    zero = int(np.flatnonzero(np.all(shifts == 0, axis=1))[0])
    idx = np.arange(len(r))
    dist[idx, idx, zero] = np.inf  # an atom and itself; its own images stay
    return float(np.min(dist / limit[:, :, None]))


def check_structure(
    lattice: np.ndarray, frac: np.ndarray, numbers: np.ndarray, ctx: MoveContext
) -> str | None:
    """Why a structure is not a valid move result, or ``None`` when it is.

    Valid: the composition is ``k`` formula units with ``min_units <= k <= max_units``; the cell is
    not degenerate (every width, the distance between opposite faces, is at least
    ``0.3 (V/n)^(1/3)`` and at least a tenth of the widest); every pair of atoms (own images
    included) obeys the distance rule; coordinates are finite.
    """
    if not (np.all(np.isfinite(lattice)) and np.all(np.isfinite(frac))):
        return "non-finite coordinates"
    k = ctx.units(numbers)
    for z, c in ctx.formula.items():
        if int(np.sum(numbers == z)) != k * c:
            return "broken stoichiometry"
    if len(numbers) != k * sum(ctx.formula.values()) or not ctx.min_units <= k <= ctx.max_units:
        return f"{len(numbers)} atoms is not {ctx.min_units}..{ctx.max_units} formula units"
    vol = abs(np.linalg.det(lattice))
    ell = (vol / len(numbers)) ** (1 / 3)
    w = _widths(lattice)
    if w.min() < 0.3 * ell or w.min() < 0.1 * w.max():
        return "degenerate cell"
    if min_distance_ratio(lattice, frac, numbers, ctx.distance_factor) < 1.0:
        return "atoms closer than the distance rule"
    return None


# ----------------------------------------------------------------------------- helpers


def _need_mixed(name: str, ctx: MoveContext):
    if ctx.elemental:
        raise MoveNotApplicable(name, "the composition is elemental")


def _void(rng, lattice, frac, numbers, atom: int, ctx: MoveContext, samples: int = 256):
    """A fractional point farther than the void distance (and the distance rule) from every
    atom but ``atom``, the farthest of ``samples`` random points; ``None`` if there is none."""
    others = np.delete(np.arange(len(numbers)), atom)
    if not len(others):
        return rng.random(3)
    pts = rng.random((samples, 3))
    d = pts[:, None, :] - frac[None, others, :]
    d -= np.round(d)
    dist = np.linalg.norm(d @ lattice, axis=-1)  # nearest image is enough near a void
    r = COVALENT_RADII
    rule = ctx.distance_factor * (r[numbers[atom]] + r[numbers[others]])
    need = np.maximum(ctx.void_distance, rule)
    margin = (dist / need[None, :]).min(axis=1)
    best = int(np.argmax(margin))
    return pts[best] if margin[best] > 1.0 else None


def _grid(lattice, ctx: MoveContext, name: str) -> np.ndarray:
    g = np.maximum(1, np.round(np.linalg.norm(lattice, axis=1) / ctx.block)).astype(int)
    if int(np.prod(g)) < 2:
        g[int(np.argmax(np.linalg.norm(lattice, axis=1)))] = 2
    return g


def _block_index(frac, g) -> np.ndarray:
    cell = np.floor(np.mod(frac, 1.0) * g).astype(int) % g
    return (cell[:, 0] * g[1] + cell[:, 1]) * g[2] + cell[:, 2]


def _random_lattice(rng, volume: float) -> np.ndarray:
    """A random cell of this volume: lengths within a factor 2, angles in [60, 120] degrees."""
    for _ in range(100):
        lengths = rng.uniform(1.0, 2.0, 3)
        al, be, ga = np.radians(rng.uniform(60, 120, 3))
        a, b, c = lengths
        cx = c * math.cos(be)
        cy = c * (math.cos(al) - math.cos(be) * math.cos(ga)) / math.sin(ga)
        cz2 = c * c - cx * cx - cy * cy
        if cz2 <= 0.05 * c * c:
            continue
        lat = np.array(
            [[a, 0, 0], [b * math.cos(ga), b * math.sin(ga), 0], [cx, cy, math.sqrt(cz2)]]
        )
        return lat * (volume / abs(np.linalg.det(lat))) ** (1 / 3)
    raise AssertionError("unreachable: random angles in [60, 120] always give a cell")


def _sym_strain(rng, size: float, traceless: bool) -> np.ndarray:
    e = rng.uniform(-size, size, (3, 3))
    e = 0.5 * (e + e.T)
    if traceless:
        e -= np.trace(e) / 3 * np.eye(3)
        # matrix exponential of a symmetric traceless strain: det = 1 exactly
        w, v = np.linalg.eigh(e)
        return (v * np.exp(w)) @ v.T
    return np.eye(3) + e


# ----------------------------------------------------------------------------- moves


def _swap_two(rng, lat, frac, z, ctx):
    _need_mixed("swap_two", ctx)
    i = int(rng.integers(len(z)))
    j = int(rng.choice(np.flatnonzero(z != z[i])))
    z = z.copy()
    z[i], z[j] = z[j], z[i]
    return lat, frac, z


def _to_void(rng, lat, frac, z, ctx):
    i = int(rng.integers(len(z)))
    p = _void(rng, lat, frac, z, i, ctx)
    if p is None:
        raise MoveNotApplicable("to_void", f"no void farther than {ctx.void_distance} Å")
    frac = frac.copy()
    frac[i] = p
    return lat, frac, z


def _permute(rng, z, chosen, name):
    """Permute the species of ``chosen`` atoms so that at least one changes."""
    if len(set(z[chosen].tolist())) < 2:
        raise MoveNotApplicable(name, "the chosen atoms are all of one species")
    z = z.copy()
    for _ in range(100):
        perm = rng.permutation(chosen)
        if np.any(z[perm] != z[chosen]):
            z[chosen] = z[perm]
            return z
    raise MoveNotApplicable(name, "no permutation changes a species")


def _swap_some(rng, lat, frac, z, ctx, void=False):
    name = "swap_some_void" if void else "swap_some"
    if not void:
        _need_mixed(name, ctx)
    n = len(z)
    if n < 4:
        raise MoveNotApplicable(name, f"needs at least 4 atoms, has {n}")
    i = int(rng.integers(3, n))  # n > i > 2
    chosen = rng.choice(n, i, replace=False)
    if not ctx.elemental:
        try:
            z = _permute(rng, z, chosen, name)
        except MoveNotApplicable:
            if not void:
                raise
    if void:
        frac = _voids(rng, lat, frac, z, chosen[rng.random(i) < 0.5], ctx, name)
    return lat, frac, z


def _voids(rng, lat, frac, z, atoms, ctx, name):
    frac = frac.copy()
    if not len(atoms):
        atoms = np.asarray([int(rng.integers(len(z)))])
    for a in atoms:
        p = _void(rng, lat, frac, z, int(a), ctx)
        if p is None:
            raise MoveNotApplicable(name, f"no void farther than {ctx.void_distance} Å")
        frac[a] = p
    return frac


def _swap_all(rng, lat, frac, z, ctx, void=False):
    name = "swap_all_void" if void else "swap_all"
    if not void:
        _need_mixed(name, ctx)
    n = len(z)
    if not ctx.elemental:
        z = _permute(rng, z, np.arange(n), name)
    if void:
        k = max(1, int(rng.integers(1, max(2, n // 4 + 1))))
        frac = _voids(rng, lat, frac, z, rng.choice(n, k, replace=False), ctx, name)
    return lat, frac, z


def _swap_blocks(rng, lat, frac, z, ctx):
    g = _grid(lat, ctx, "swap_blocks")
    blocks = _block_index(frac, g)
    a, b = rng.choice(int(np.prod(g)), 2, replace=False)
    if not (np.any(blocks == a) or np.any(blocks == b)):
        raise MoveNotApplicable("swap_blocks", "both blocks are empty")
    corner = lambda k: np.array(np.unravel_index(k, g)) / g  # noqa: E731
    frac = frac.copy()
    ina, inb = blocks == a, blocks == b
    frac[ina] += corner(b) - corner(a)
    frac[inb] += corner(a) - corner(b)
    return lat, np.mod(frac, 1.0), z


def _swap_layers(rng, lat, frac, z, ctx):
    lengths = np.linalg.norm(lat, axis=1)
    layers = np.maximum(1, np.round(lengths / (0.5 * ctx.block))).astype(int)
    axes = np.flatnonzero(layers >= 2)
    if not len(axes):
        raise MoveNotApplicable("swap_layers", "the cell is one layer thick")
    ax = int(rng.choice(axes))
    m = int(layers[ax])
    a, b = rng.choice(m, 2, replace=False)
    idx = np.floor(np.mod(frac[:, ax], 1.0) * m).astype(int) % m
    frac = frac.copy()
    frac[idx == a, ax] += (b - a) / m
    frac[idx == b, ax] += (a - b) / m
    return lat, np.mod(frac, 1.0), z


def _new_shape(rng, lat, frac, z, ctx):
    return _random_lattice(rng, abs(np.linalg.det(lat))), frac, z


def _mutate(rng, lat, frac, z, ctx):
    g = _grid(lat, ctx, "mutate")
    blocks = _block_index(frac, g)
    counts = np.bincount(blocks, minlength=int(np.prod(g)))
    ok = np.flatnonzero((counts >= 1) & (counts <= 4))
    if not len(ok):
        raise MoveNotApplicable("mutate", "no block holds 1-4 atoms")
    k = int(rng.choice(ok))
    corner = np.array(np.unravel_index(k, g)) / g
    frac = frac.copy()
    sel = blocks == k
    frac[sel] = corner + rng.random((int(sel.sum()), 3)) / g
    return lat, frac, z


def _double(rng, lat, frac, z, ctx):
    if 2 * ctx.units(z) > ctx.max_units:
        raise MoveNotApplicable("double", f"{ctx.units(z)} formula units cannot double")
    ax = int(rng.integers(3))
    perp = [k for k in range(3) if k != ax]
    kind = int(rng.integers(4))  # repeat, shift 1/2, invert, mirror
    first = frac.copy()
    second = frac.copy()
    if kind == 1:
        second[:, perp] += 0.5
    elif kind == 2:
        second[:, perp] = -second[:, perp]
    elif kind == 3:
        second[:, ax] = -second[:, ax]  # mirror through the face between the two copies
    first[:, ax] = np.mod(first[:, ax], 1.0) / 2
    second[:, ax] = 0.5 + np.mod(second[:, ax], 1.0) / 2
    lat = lat.copy()
    lat[ax] *= 2
    return lat, np.mod(np.concatenate([first, second]), 1.0), np.concatenate([z, z])


def _triple(rng, lat, frac, z, ctx):
    if 3 * ctx.units(z) > ctx.max_units:
        raise MoveNotApplicable("triple", f"{ctx.units(z)} formula units cannot triple")
    ax = int(rng.integers(3))
    perp = [k for k in range(3) if k != ax]
    shift = bool(rng.integers(2))
    parts = []
    for c in range(3):
        f = frac.copy()
        if shift:
            f[:, perp] += c / 3
        f[:, ax] = (c + np.mod(f[:, ax], 1.0)) / 3
        parts.append(f)
    lat = lat.copy()
    lat[ax] *= 3
    return lat, np.mod(np.concatenate(parts), 1.0), np.concatenate([z, z, z])


def _reduce(rng, lat, frac, z, ctx, m: int):
    name = {2: "halve", 3: "third"}[m]
    units = ctx.units(z)
    if units % m or units // m < ctx.min_units:
        raise MoveNotApplicable(
            name, f"{units} formula units do not make 1/{m} cells of >= {ctx.min_units}"
        )
    for ax in rng.permutation(3):
        for s in rng.permutation(np.linspace(0, 1, 24, endpoint=False)):
            f = np.mod(frac[:, ax] - s, 1.0)
            keep = f < 1.0 / m
            zk = z[keep]
            if all(int(np.sum(zk == e)) * m == int(np.sum(z == e)) for e in ctx.formula):
                new = frac[keep].copy()
                new[:, ax] = f[keep] * m
                lat2 = lat.copy()
                lat2[ax] /= m
                return lat2, np.mod(new, 1.0), zk.copy()
    raise MoveNotApplicable(name, f"no stoichiometric 1/{m} slab along any axis")


def _strain(rng, lat, frac, z, ctx, traceless=False):
    return lat @ _sym_strain(rng, ctx.strain, traceless), frac, z


def _rattle(rng, lat, frac, z, ctx):
    cart = frac @ lat + rng.normal(0.0, ctx.rattle, frac.shape)
    return lat, np.mod(cart @ np.linalg.inv(lat), 1.0), z


def _new_random(rng, lat, frac, z, ctx, up_to_max=False):
    top = ctx.max_units if up_to_max else ctx.units(z)
    return NewRandom(int(rng.integers(ctx.min_units, top + 1)))


# a move: (rng, lattice, frac, numbers, ctx) -> the moved structure or a NewRandom request
Move = Callable[
    [np.random.Generator, np.ndarray, np.ndarray, np.ndarray, MoveContext], Structure | NewRandom
]

MOVES: dict[str, Move] = {
    "swap_two": _swap_two,
    "to_void": _to_void,
    "swap_some": _swap_some,
    "swap_some_void": lambda rng, lat, frac, z, ctx: _swap_some(rng, lat, frac, z, ctx, void=True),
    "swap_all": _swap_all,
    "swap_all_void": lambda rng, lat, frac, z, ctx: _swap_all(rng, lat, frac, z, ctx, void=True),
    "swap_blocks": _swap_blocks,
    "swap_layers": _swap_layers,
    "new_shape": _new_shape,
    "mutate": _mutate,
    "double": _double,
    "triple": _triple,
    "new_random": _new_random,
    "new_random_max": lambda rng, lat, frac, z, ctx: _new_random(
        rng, lat, frac, z, ctx, up_to_max=True
    ),
    "halve": lambda rng, lat, frac, z, ctx: _reduce(rng, lat, frac, z, ctx, m=2),
    "third": lambda rng, lat, frac, z, ctx: _reduce(rng, lat, frac, z, ctx, m=3),
    "strain": _strain,
    "shape_strain": lambda rng, lat, frac, z, ctx: _strain(rng, lat, frac, z, ctx, traceless=True),
    "rattle": _rattle,
}


def apply_move(
    name: str, rng: np.random.Generator, structure: Structure, ctx: MoveContext
) -> Structure | NewRandom:
    """Apply one move, retrying with fresh random numbers until the result is valid.

    Args:
      name: a key of :data:`MOVES`.
      rng: NumPy generator (the move's randomness).
      structure: ``(lattice (3, 3) Å, frac (n, 3), numbers (n,))``.
      ctx: the :class:`MoveContext`.

    Returns:
      the moved structure (passing :func:`check_structure`), or a :class:`NewRandom` request.

    Raises:
      MoveNotApplicable: the move does not apply, or ``ctx.tries`` attempts all broke the
        validity rules (the reason names the last broken rule).
    """
    if name not in MOVES:
        raise KeyError(f"unknown move {name!r}; moves are {', '.join(MOVES)}")
    lat, frac, z = (np.asarray(a) for a in structure)
    lat = lat.astype(np.float64)
    frac = frac.astype(np.float64)
    z = z.astype(np.int64)
    why: str | None = "no attempt"
    for _ in range(max(1, ctx.tries)):
        try:
            out = MOVES[name](rng, lat, frac, z, ctx)
        except MoveNotApplicable as e:  # random choices may succeed on the next try
            last = e
            continue
        if isinstance(out, NewRandom):
            return out
        why = check_structure(*out, ctx)
        if why is None:
            return out
        last = MoveNotApplicable(name, f"every try broke a rule ({why})")
    raise last
