"""``relax``: batched relaxation of a ``Crystals`` batch with any ``Potential``.

Degrees of freedom (DOF rows, see :mod:`jaxcsp.optimize._base`):

* ``cell_filter=None`` — the Cartesian positions, ``(B, N, 3)`` Å; the cell is fixed.
* ``cell_filter="frechet"`` — ASE ``FrechetCellFilter`` semantics: rows ``0..N-1`` hold the
  positions in the *undeformed* cell, rows ``N..N+2`` hold ``exp_cell_factor · log(F)`` where the
  deformation gradient ``F`` maps the starting cell ``L0`` to ``L = L0 Fᵀ`` (positions
  ``r = u Fᵀ``), ``exp_cell_factor`` = number of atoms, and the objective is the enthalpy
  ``E + p V`` (``pressure`` in eV/Å³). The gradient of the cell rows is the exact derivative
  through the matrix exponential (autodiff), i.e. ASE's Fréchet-derivative forces. The cell
  block sits in the fixed rows ``N..N+2`` of the padded array, so padding never hides it.

Both are :class:`~jaxcsp.optimize.Dofs` values (:class:`~jaxcsp.optimize.AtomPositions`,
:class:`~jaxcsp.optimize.FrechetCell`); any other kind is passed as ``dofs=`` and nothing here
depends on which (see :mod:`jaxcsp.optimize._dofs`).

``symmetric=True`` on a ``Crystals`` batch is the FixSymmetry-style mode: spglib's operations
of each starting structure (``symprec``) symmetrise the atom and cell gradients every
evaluation, so the optimizer never breaks the starting symmetry. Relaxation directly in Wyckoff
free variables (symmetry by construction) is :func:`relax_wyckoff`.

Neighbor lists use :func:`jaxcsp.neighbors.update` with shapes chosen on the host; a step in
which any structure overflows them is discarded, the shapes are re-chosen for the structures as
they are, and the step is redone (so nothing is lost or truncated).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp import neighbors as nb
from jaxcsp import parallel
from jaxcsp.calculator import calculate, calculate_with_neighbors
from jaxcsp.crystal import Crystals, find_overlaps
from jaxcsp.errors import InvalidArgumentError, JaxcspError, check_int, check_real
from jaxcsp.neighbors import CAPACITY_QUANTUM
from jaxcsp.optimize._base import (
    CONVERGED,
    EXPLODED,
    INVALID,
    RUNNING,
    STATUS_NAMES,
    UNCERTAIN,
    masked_fmax,
    select,
)
from jaxcsp.optimize._bfgs import bfgs_linesearch
from jaxcsp.optimize._dofs import Dofs, as_dofs
from jaxcsp.optimize._fire import fire
from jaxcsp.optimize._lbfgs import lbfgs
from jaxcsp.potentials import check_species
from jaxcsp.runtime import release_compiled_programs

__all__ = [
    "METHODS",
    "RelaxData",
    "RelaxResult",
    "crystals_from_dofs",
    "initial_dofs",
    "make_optimizer",
    "relax",
    "symmetry_operations",
]

Array = jax.Array

#: Optimizers :func:`relax` knows, by name.
METHODS: dict[str, Callable] = {"bfgs_linesearch": bfgs_linesearch, "fire": fire, "lbfgs": lbfgs}
CELL_FILTERS = (None, "frechet")


class RelaxData(NamedTuple):
    """Per-structure constants of a relaxation (pytree of ``(B, ...)`` arrays).

    Attributes:
      lattice0: ``(B, 3, 3)`` starting cell (Å), the reference of the cell filter.
      frac0: ``(B, N, 3)`` starting fractional coordinates.
      species: ``(B, N)`` int32 atomic numbers. mask: ``(B, N)`` bool real atoms.
      cell_factor: ``(B,)`` exp_cell_factor of the Fréchet filter (number of atoms).
      pressure: ``(B,)`` scalar pressure in eV/Å³ (enthalpy term, cell filter only).
      sym_perm: ``(B, G, N)`` int32 atom permutation of each symmetry operation, or ``None``.
      sym_rot: ``(B, G, 3, 3)`` Cartesian row-vector matrices ``M`` (``r -> r M``), or ``None``.
      sym_mask: ``(B, G)`` bool real operations, or ``None``.
    """

    lattice0: Array
    frac0: Array
    species: Array
    mask: Array
    cell_factor: Array
    pressure: Array
    sym_perm: Array | None = None
    sym_rot: Array | None = None
    sym_mask: Array | None = None


class RelaxResult(NamedTuple):
    """Per-structure outcome of :func:`relax` (every input gets a row).

    Attributes:
      crystals: final structures (``Crystals``, same padding as the input).
      energy: ``(B,)`` potential energy in eV at the final structure (no pV term).
      forces: ``(B, N, 3)`` eV/Å. stress: ``(B, 3, 3)`` eV/Å³ (ASE sign convention).
      max_force: ``(B,)`` measured: the largest DOF-gradient row norm at the end, eV/Å
        (includes the cell rows); compare it with the ``fmax`` setting. The database rows of
        :func:`relax_stream` carry the same value under the same name.
      converged: ``(B,)`` bool. status: ``(B,)`` int32 code (see ``status_names``).
      steps: ``(B,)`` optimizer steps. force_calls: ``(B,)`` energy+force evaluations.
    """

    crystals: Crystals
    energy: Array
    forces: Array
    stress: Array
    max_force: Array
    converged: Array
    status: Array
    steps: Array
    force_calls: Array

    @property
    def status_names(self) -> list[str]:
        """Status of every structure as a word (``converged``, ``max_steps``, ...)."""
        return [STATUS_NAMES[int(s)] for s in np.asarray(self.status)]


# ---------------------------------------------------------------------- DOFs


def initial_dofs(crystals: Crystals, cell_filter: Any) -> tuple[Array, Array]:
    """Starting DOF rows ``x (B, R, 3)`` and ``row_mask (B, R)`` of a batch (traceable).

    ``cell_filter`` is a :class:`~jaxcsp.optimize.Dofs` or a built-in name (``None``,
    ``"frechet"``).
    """
    return as_dofs(cell_filter).init(crystals)


def crystals_from_dofs(x: Array, data: Any, cell_filter: Any) -> Crystals:
    """The structures described by DOF rows ``x`` (traceable and differentiable).

    ``cell_filter`` is a :class:`~jaxcsp.optimize.Dofs` or a built-in name: ``None`` /
    ``"frechet"`` (``data`` a :class:`RelaxData`) or ``"wyckoff"`` / ``"wyckoff_fixed_cell"``
    (``data`` a :class:`~jaxcsp.optimize._wyckoff_dofs.WyckoffData`).
    """
    return as_dofs(cell_filter).to_crystals(x, data)


def _symmetrize(g: Array, data: RelaxData, cell_filter: Any) -> Array:
    """Average gradient rows over the symmetry operations (FixSymmetry-style)."""
    n = data.mask.shape[-1]

    def one(g, perm, rot, opmask, mask):
        count = jnp.maximum(jnp.sum(opmask), 1)
        atoms = g[:n]
        contrib = jnp.einsum("ni,kij->knj", atoms, rot) * opmask[:, None, None]
        sym = jnp.zeros_like(atoms).at[perm.reshape(-1)].add(contrib.reshape(-1, 3)) / count
        sym = jnp.where(mask[:, None], sym, 0.0)
        if not as_dofs(cell_filter).has_cell:
            return sym
        cell = g[n:]
        cell_sym = jnp.einsum("kji,jl,klm->im", rot, cell, rot * opmask[:, None, None]) / count
        return jnp.concatenate([sym, cell_sym], axis=0)

    return jax.vmap(one)(g, data.sym_perm, data.sym_rot, data.sym_mask, data.mask)


def _objective(potential, spec, cell_filter: Any) -> Callable:
    def total(x, data):
        c = crystals_from_dofs(x, data, cell_filter)
        if spec is None:
            nl, overflow = None, jnp.zeros(x.shape[0], bool)
            e = potential.energies(c, None)
        else:
            nl = nb.update(spec, jax.lax.stop_gradient(c))
            overflow = nl.overflow
            e = potential.energies(c, nl)
        if as_dofs(cell_filter).has_cell:
            e = e + data.pressure * jnp.abs(jnp.linalg.det(c.lattice))
        return jnp.sum(e), (e, overflow)

    def value_and_grad(x, data):
        (_, (e, overflow)), g = jax.value_and_grad(total, has_aux=True)(x, data)
        if getattr(data, "sym_perm", None) is not None:
            g = _symmetrize(g, data, cell_filter)
        return e, g, overflow

    return value_and_grad


def _factory(method: str) -> Callable:
    """The optimizer factory of ``method``; :class:`JaxcspError` naming the choices if unknown."""
    if method not in METHODS:
        raise JaxcspError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method]


#: optimizer keywords that set array shapes (L-BFGS's ring buffer of curvature pairs): they are
#: compiled into the program. Every other hyperparameter is a traced value (see
#: :func:`split_options`): changing ``maxstep``, ``dt`` or ``c1`` reuses the compiled program.
SHAPE_OPTIONS = frozenset({"memory"})


def split_options(method: str, options: dict, dtype: Any) -> tuple[tuple, dict[str, Array]]:
    """The compiled and the traced hyperparameters of an optimizer (host side).

    Args:
      method: a key of :data:`METHODS`.
      options: keyword hyperparameters as given by the caller (any subset of the factory's).
      dtype: float dtype of the degrees of freedom; real hyperparameters are cast to it.

    Returns:
      ``(static, traced)``: ``static`` the sorted ``(name, value)`` pairs of
      :data:`SHAPE_OPTIONS` that were given (hashable, a static argument); ``traced`` every other
      keyword of the factory, the given value or else its default, as a scalar array (``dtype``
      for real hyperparameters, int32 for integer ones). Every call thus traces the same
      pytree, whatever subset the caller names, and one program serves every value.

    Raises:
      JaxcspError: unknown method.
      InvalidArgumentError: a keyword the method does not take, or a value that is not a real
        number (an integer for integer hyperparameters).
    """
    params = {
        name: p.default
        for name, p in inspect.signature(_factory(method)).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise InvalidArgumentError(
            f"{method} takes no option {unknown[0]!r}; its options are {sorted(params)}",
            argument=unknown[0],
            value=options[unknown[0]],
        )
    static, traced = [], {}
    for name, default in params.items():
        value = options.get(name, default)
        integer = isinstance(default, int) and not isinstance(default, bool)
        try:
            arr = np.asarray(value)
        except Exception:  # anything that is not a number is reported below
            arr = np.asarray(None)
        ok = arr.ndim == 0 and arr.dtype.kind in "iuf" and bool(np.isfinite(arr))
        if ok and integer:
            ok = float(arr).is_integer() and (name not in SHAPE_OPTIONS or float(arr) >= 1)
        if not ok:
            kind = "an integer" if integer else "a finite real number"
            raise InvalidArgumentError(
                f"{method} option {name!r} must be {kind}, got {value!r}",
                argument=name,
                value=value,
            )
        if name in SHAPE_OPTIONS:
            if name in options:
                static.append((name, int(arr)))
        else:
            traced[name] = jnp.asarray(arr, jnp.int32 if integer else dtype)
    return tuple(sorted(static)), traced


def make_optimizer(method: str, value_and_grad: Callable, options: dict | None = None):
    """Build the ``(init_fn, step_fn)`` pair of a named method with keyword ``options``."""
    return _factory(method)(value_and_grad, **(options or {}))


# ---------------------------------------------------------------------- jitted drivers


@functools.partial(jax.jit, static_argnames=("method", "options", "cell_filter"))
def _init(
    x, row_mask, data, potential, spec, fmax, max_steps, *, method, options, cell_filter, hyper
):
    opt = make_optimizer(
        method, _objective(potential, spec, cell_filter), {**dict(options), **hyper}
    )
    return opt.init_fn(x, row_mask, data, fmax=fmax, max_steps=max_steps)


def _uncertainty(potential, spec, cell_filter, x, data):
    """``(B,)`` the potential's uncertainty at the DOFs ``x`` (``uncertainty_fn``)."""
    c = crystals_from_dofs(x, data, cell_filter)
    nl = None if spec is None else nb.update(spec, jax.lax.stop_gradient(c))
    return potential.uncertainties(c, nl)


def _rows(mask, a, b):
    """Per-structure select over every leaf of two states: ``a`` where ``mask`` (B,), else b."""
    b_size = mask.shape[0]

    def pick(u, v):
        if u.ndim == 0 or u.shape[0] != b_size:  # a batch-wide leaf: the new state's
            return v
        return jnp.where(mask.reshape((-1,) + (1,) * (u.ndim - 1)), u, v)

    return jax.tree_util.tree_map(pick, a, b)


def _stop_at_previous(halt, st, new, status):
    """Rows ``halt`` (B,) keep their point of ``st`` and stop with ``status``; the rejected
    point was evaluated, so its force calls count, and ``new``'s overflow flags stand."""
    kept = _rows(halt, st, new)
    return kept._replace(
        status=jnp.where(halt, status, kept.status),
        force_calls=new.force_calls,
        overflow=new.overflow,
    )


def _below_floor_at_start(state, floor):
    """Running structures whose starting objective is already below ``floor`` (B,) eV stop
    as ``EXPLODED`` without moving."""
    low = (state.status == RUNNING) & (state.energy < floor)
    return state._replace(status=jnp.where(low, EXPLODED, state.status))


@functools.partial(jax.jit, static_argnames=("cell_filter",))
def _check_start(state, data, potential, spec, max_uncertainty, *, cell_filter):
    """Mark running structures whose starting point is already too uncertain ``UNCERTAIN``."""
    u = _uncertainty(potential, spec, cell_filter, state.x, data)
    halt = (state.status == RUNNING) & ~(u <= max_uncertainty)
    return state._replace(status=jnp.where(halt, UNCERTAIN, state.status))


@functools.partial(
    jax.jit, static_argnames=("method", "options", "cell_filter", "n_steps", "guarded")
)
def _run(
    state, data, potential, spec, max_uncertainty=None, energy_floor=None, *, method, options,
    cell_filter, hyper, n_steps, guarded=False,
):  # fmt: skip
    opt = make_optimizer(
        method, _objective(potential, spec, cell_filter), {**dict(options), **hyper}
    )

    def cond(carry):
        i, st, bad = carry
        return (i < n_steps) & jnp.any(st.status == RUNNING) & ~bad

    def guard(st, new):
        # a structure that accepted a new point where the potential is too uncertain keeps
        # its previous point and stops (the seed's uncertainty criterion U > U_max)
        moved = (new.steps > st.steps) & (st.status == RUNNING)

        def check(_):
            u = _uncertainty(potential, spec, cell_filter, new.x, data)
            return moved & ~(u <= max_uncertainty)

        halt = jax.lax.cond(jnp.any(moved), check, lambda _: jnp.zeros_like(moved), None)
        return _stop_at_previous(halt, st, new, UNCERTAIN)

    def floor(st, new):
        # an accepted point below the energy floor (a learned potential's hole: atoms falling
        # into one another, the energy without bound) keeps its previous point and stops
        # as exploded, before the collapsing cell needs ever larger neighbor lists
        low = (new.steps > st.steps) & (st.status == RUNNING) & (new.energy < energy_floor)
        return _stop_at_previous(low, st, new, EXPLODED)

    def body(carry):
        i, st, _ = carry
        new = opt.step_fn(st, data)
        if guarded:
            new = guard(st, new)
        if energy_floor is not None:
            new = floor(st, new)
        bad = jnp.any(new.overflow)
        # a step whose neighbor list overflowed is discarded (its numbers are incomplete); the
        # loop stops at the last good state, flagged with the failed step's overflow
        kept = jax.tree_util.tree_map(lambda old, nw: jnp.where(bad, old, nw), st, new)
        return i + 1, kept._replace(overflow=new.overflow), bad

    state = state._replace(overflow=jnp.zeros_like(state.overflow))
    return jax.lax.while_loop(cond, body, (jnp.asarray(0), state, jnp.asarray(False)))[1]


# ---------------------------------------------------------------------- host-side helpers


def symmetry_operations(crystals: Crystals, *, symprec: float = 1e-4) -> tuple[Array, ...]:
    """spglib operations of every structure as atom permutations and Cartesian matrices.

    Args:
      crystals: concrete batch.
      symprec: spglib distance tolerance in Å.

    Returns:
      ``(perm (B, G, N) int32, rot (B, G, 3, 3), op_mask (B, G) bool)``: operation ``k`` of
      structure ``b`` maps atom ``i`` to atom ``perm[b, k, i]`` and a Cartesian row vector
      ``r`` to ``r @ rot[b, k]``; ``G`` is the largest group order in the batch.
    """
    import warnings

    import spglib

    lat = np.asarray(crystals.lattice, np.float64)
    frac = np.asarray(crystals.frac, np.float64)
    species = np.asarray(crystals.species)
    mask = np.asarray(crystals.mask)
    b, n, _ = frac.shape
    ops = []
    for i in range(b):
        m = mask[i]
        idx = np.nonzero(m)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            sym = spglib.get_symmetry((lat[i], frac[i][m], species[i][m]), symprec=symprec)
        rots = sym["rotations"] if sym is not None else np.eye(3, dtype=int)[None]
        trans = sym["translations"] if sym is not None else np.zeros((1, 3))
        f = frac[i][m]
        perms, mats = [], []
        inv = np.linalg.inv(lat[i])
        for r, t in zip(rots, trans, strict=True):
            img = f @ r.T + t
            d = img[:, None, :] - f[None, :, :]
            d -= np.round(d)
            dist = np.linalg.norm(d @ lat[i], axis=-1)
            j = np.argmin(dist, axis=1)
            perm = np.arange(n)
            perm[idx] = idx[j]
            perms.append(perm)
            mats.append(inv @ r.T @ lat[i])
        ops.append((np.stack(perms), np.stack(mats)))
    g = max(len(p) for p, _ in ops)
    perm = np.tile(np.arange(n), (b, g, 1))
    rot = np.tile(np.eye(3), (b, g, 1, 1))
    op_mask = np.zeros((b, g), bool)
    for i, (p, r) in enumerate(ops):
        perm[i, : len(p)] = p
        rot[i, : len(r)] = r
        op_mask[i, : len(p)] = True
    dtype = crystals.lattice.dtype
    return jnp.asarray(perm, jnp.int32), jnp.asarray(rot, dtype), jnp.asarray(op_mask)


#: neighbor-list shapes chosen so far in this process, per (cutoff, method): a new choice that
#: an earlier one covers at a bounded extra cost reuses it, so a long run of new structures
#: reaches a few shapes (compiled once each) instead of compiling for every new batch
_CHOSEN_SPECS: dict[tuple, list] = {}
#: reuse a covering spec if it tests at most this many times the candidate images / slots
_REUSE_IMAGES, _REUSE_CAPACITY = 2.0, 1.5


def _quantize_capacity(k: int) -> int:
    """Round a capacity up to the grid 8, 12, 16, 24, 32, 48, ... (< 1.5x, few values)."""
    k = max(int(k), CAPACITY_QUANTUM)
    p = 1 << (k - 1).bit_length()
    return p * 3 // 4 if k <= p * 3 // 4 else p


def _spec_for(potential, crystals: Crystals, *, backend: str, growth: float = 1.0):
    """Neighbor-list shapes for a batch (host side): counted, quantized, or an earlier covering one.

    The capacity is rounded up to a coarse grid, and a spec chosen earlier in this process
    for the same cutoff and backend is reused when it covers this batch (image budget and
    capacity at least those needed) for at most ``_REUSE_IMAGES`` times the images and
    ``_REUSE_CAPACITY`` times the slots: the set of compiled shapes stays small however many
    batches come. Of several covering specs the earliest chosen is taken, not the cheapest:
    the list only grows, so a batch gets the same spec as the first time it was seen, and a
    second identical ``relax`` call compiles nothing (with "cheapest", a spec added later in
    the first call, e.g. for its final evaluation, could win and compile a new program).
    """
    if potential.cutoff is None:
        return None

    need = nb.neighbor_list_spec(
        crystals,
        float(potential.cutoff),
        backend=backend,
        capacity_headroom=0.5 * growth,
        cell_headroom=0.15 * growth,
    )
    k = _quantize_capacity(need.max_neighbors)
    chosen = _CHOSEN_SPECS.setdefault((need.cutoff, need.backend, need.interpret), [])
    fits = [
        s
        for s in chosen
        if need.num_images <= s.num_images <= _REUSE_IMAGES * need.num_images
        and k <= s.max_neighbors <= _REUSE_CAPACITY * k
    ]
    if fits:
        return fits[0]
    spec = dataclasses.replace(need, max_neighbors=k)
    chosen.append(spec)
    return spec


def make_data(
    crystals: Crystals,
    *,
    pressure: float = 0.0,
    symmetric: bool = False,
    symprec: float = 1e-4,
) -> RelaxData:
    """Per-structure constants for :func:`relax` (host side)."""
    b = crystals.batch_size
    dtype = crystals.lattice.dtype
    sym = symmetry_operations(crystals, symprec=symprec) if symmetric else (None, None, None)
    return RelaxData(
        lattice0=crystals.lattice,
        frac0=crystals.frac,
        species=crystals.species,
        mask=crystals.mask,
        cell_factor=crystals.num_atoms.astype(dtype),
        pressure=jnp.broadcast_to(jnp.asarray(pressure, dtype), (b,)),
        sym_perm=sym[0],
        sym_rot=sym[1],
        sym_mask=sym[2],
    )


def _check_args(method, cell_filter, **numbers):
    """Host-side argument checks of the relaxation drivers (before anything is compiled).

    ``numbers`` are the numeric arguments to check, by name: ``fmax`` and ``symprec`` must be
    positive and finite, ``pressure`` finite, ``max_steps``, ``chunk``, ``refill_every`` and
    ``max_atoms`` integers >= 1, ``min_batch`` an integer >= 0.

    Raises:
      JaxcspError: unknown method or cell filter.
      InvalidArgumentError: a numeric argument out of its domain (``error.argument`` names it).
    """
    _factory(method)
    if not (isinstance(cell_filter, Dofs) or cell_filter in CELL_FILTERS):
        raise JaxcspError(
            f"unknown cell_filter {cell_filter!r}; choose None or 'frechet' or pass dofs="
        )
    units = {"fmax": "eV/Å", "symprec": "Å", "pressure": "eV/Å³"}
    minimum = {"min_batch": 0}
    for name, value in numbers.items():
        if name in ("fmax", "symprec"):
            check_real(name, value, unit=units[name])
        elif name == "pressure":
            check_real(name, value, positive=False, unit=units[name])
        else:
            check_int(name, value, minimum=minimum.get(name, 1))


def _choose_dofs(cell_filter: Any, dofs: Any, symmetric: bool = False) -> Any:
    """The DOFs a driver relaxes: ``dofs`` if given (then ``cell_filter`` must be ``None``)."""
    if dofs is None:
        return cell_filter
    if not isinstance(dofs, Dofs):
        raise InvalidArgumentError(
            f"dofs must be a jaxcsp.optimize.Dofs, got {type(dofs).__name__}",
            argument="dofs",
            value=dofs,
        )
    if cell_filter is not None:
        raise InvalidArgumentError(
            "give either cell_filter or dofs, not both", argument="dofs", value=dofs
        )
    if symmetric and not dofs.atom_rows:
        raise InvalidArgumentError(
            f"symmetric=True symmetrises atom (and cell) rows; {type(dofs).__name__} has none",
            argument="dofs",
            value=dofs,
        )
    for name in (None, "frechet"):  # a built-in kind given as a value: the named mode's programs
        if dofs == as_dofs(name):
            return name
    return dofs


def _bucket(n_running: int, min_batch: int) -> int:
    """Smallest power of two ``>= n_running`` and ``>= min_batch``."""
    return max(int(min_batch), 1 << max(0, int(n_running) - 1).bit_length())


def _leading(tree, b: int) -> bool:
    return all(jnp.ndim(a) > 0 and a.shape[0] == b for a in jax.tree_util.tree_leaves(tree))


class Lanes(NamedTuple):
    """Starting rows of structures to relax; every leaf has the rows ``K`` as its leading axis.

    Attributes:
      x0: ``(K, R, 3)`` starting DOF rows. row_mask: ``(K, R)`` bool real rows.
      data: the DOFs' per-structure constants (e.g. :class:`RelaxData`).
      crystals: the ``(K, N)`` starting structures (neighbor-list shapes, energy floor).
      invalid: ``(K,)`` bool, rejected before the run (e.g. overlapping atoms): status
        ``INVALID`` after the first evaluation, never moved.
    """

    x0: Array
    row_mask: Array
    data: Any
    crystals: Crystals
    invalid: Array


class BatchSource:
    """A :func:`drive` source that hands over one whole batch at once (``relax``'s).

    Args:
      lanes: the structures, keyed ``0 .. K-1`` in row order.
    """

    def __init__(self, lanes: Lanes):
        self._lanes: Lanes | None = lanes
        self.hint = lanes.crystals

    def __len__(self) -> int:
        return 0 if self._lanes is None else int(self._lanes.x0.shape[0])

    def take(self, n: int) -> tuple[list[int], Lanes | None]:
        """All rows (``n`` must cover them: the batch is not split), then nothing."""
        lanes, self._lanes = self._lanes, None
        if lanes is None:
            return [], None
        k = int(lanes.x0.shape[0])
        if n < k:
            raise ValueError(f"BatchSource hands over its {k} rows at once; asked for {n}")
        return list(range(k)), lanes


class CollectSink:
    """A :func:`drive` sink that keeps every finished structure's final state, in key order.

    Args:
      size: number of keys (``0 .. size-1``).

    Attributes:
      state: after the run, the :class:`~jaxcsp.optimize._base.RelaxState` of all ``size``
        structures (key ``k`` in row ``k``).
    """

    def __init__(self, size: int):
        self.size = int(size)
        self.state: Any = None

    def __call__(self, keys, finished, state, lanes, spec) -> None:
        del lanes, spec
        if self.state is None:
            self.state = jax.tree_util.tree_map(
                lambda a: jnp.zeros((self.size, *a.shape[1:]), a.dtype), state
            )
        rows = np.where(finished, keys, self.size)  # others: out of range, dropped
        self.state = _put_rows(self.state, jnp.asarray(rows, jnp.int32), state)


@jax.jit
def _put_rows(full, rows, state):
    return jax.tree_util.tree_map(lambda f, a: f.at[rows].set(a, mode="drop"), full, state)


_merge = jax.jit(select)  # refilled lanes take the fresh state


def _idle(state, idle: np.ndarray):
    """Lanes that hold no structure (``idle`` (S,) host bool) never run: marked stopped."""
    if not idle.any():
        return state
    return state._replace(status=jnp.where(jnp.asarray(idle), CONVERGED, state.status))


def _set_rows(lanes: Lanes, rows: np.ndarray, new: Lanes) -> Lanes:
    """``lanes`` with rows ``rows`` replaced by ``new``'s (host side, no program per count)."""

    def put(a, b):
        a = np.array(a)
        a[rows] = np.asarray(b)
        return jax.device_put(a)

    return jax.tree_util.tree_map(put, lanes, new)


def _gather(tree, idx):
    """Rows ``idx`` of every leaf of ``tree``."""
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def drive(
    source,
    sink,
    potential,
    *,
    slots: int,
    method: str,
    options: dict,
    mode: Any,
    fmax: float,
    max_steps: int,
    chunk: int,
    neighbor_backend: str,
    progress: bool = False,
    desc: str = "relax",
    min_batch: int = 32,
    mesh: Any = None,
    max_uncertainty: float | None = None,
    min_energy_per_atom: float | None = None,
):
    """The one relaxation loop: lanes filled from a source, finished structures to a sink.

    ``relax``, ``relax_wyckoff`` and ``relax_stream`` (once per size class) all run here; the
    search layer's relaxations run through them.

    * **Lanes.** The working batch has ``slots`` lanes (padded to a multiple of the mesh size);
      ``source.take(n) -> (keys, Lanes | None)`` fills them and ``len(source)`` says how many
      structures it still holds; ``source.hint`` (a ``Crystals`` batch) chooses the first
      neighbor-list shapes, so that structures taken later fit too.
    * **Sink.** After every chunk of ``chunk`` steps, the lanes whose structure stopped are
      handed to ``sink(keys (S,) int, finished (S,) bool, state, lanes, spec)`` (host arrays
      and the working batch) — a database writer writes them out there, :class:`CollectSink`
      keeps them — and refilled from the source: the refilled lanes are initialised (one
      evaluation of the working batch) and merged in, the others keep their state.
    * **Compaction.** Once the source is dry and at most half of the lanes still run, the
      running ones are gathered into a smaller working batch (a power of two, at least
      ``min_batch``; spare lanes idle), so that a long tail of slow structures does not pay for
      the whole batch every step; the neighbor-list shapes are re-chosen for it. A structure's
      trajectory does not depend on the batch it sits in (up to the summation order of
      neighbor sums); the working sizes met compile once each and are reused by later calls.
      ``min_batch=0`` turns compaction off; it is off too when the DOF data is not batched.
    * **Overflow.** A step whose neighbor list overflows is discarded inside the jitted
      chunk, which stops at the last good state; the shapes are re-chosen, with more
      head-room, for the structures as they are at that state and the run goes on from it
      (nothing is lost, truncated or redone). A start that overflows is evaluated again with
      larger shapes.
    * **Guards.** ``min_energy_per_atom`` (eV/atom): a structure whose newly accepted point
      has an objective per atom (energy, plus ``pV`` with a cell filter) below it stops as
      ``EXPLODED`` at its previous point; one that starts below it does not move.
      ``max_uncertainty`` (a potential with an ``uncertainty_fn``): a structure whose start,
      or a newly accepted point, is more uncertain stops as ``UNCERTAIN`` at its last point
      below (the start, if that is already above).
    * ``mesh`` (:func:`jaxcsp.parallel.batch_mesh`): every working batch is split over its
      devices.

    Returns:
      Nothing; every structure the source held has gone to the sink.
    """
    first_keys, first = source.take(slots)
    if first is None:
        return
    static, hyper = split_options(method, options, first.x0.dtype)
    kw = dict(method=method, options=static, cell_filter=mode, hyper=hyper)
    guarded = max_uncertainty is not None
    # None when unguarded: relax and relax_stream share compiled programs
    mu = jnp.asarray(max_uncertainty, first.x0.dtype) if guarded else None

    def place(tree):
        return parallel.shard_batch(tree, mesh)

    def floor_of(lanes: Lanes):  # (S,) eV: the floor times each lane's atom count
        if min_energy_per_atom is None:
            return None
        n_atoms = lanes.crystals.num_atoms.astype(lanes.x0.dtype)
        return place(float(min_energy_per_atom) * n_atoms)

    def start(lanes: Lanes, spec, growth):
        """Evaluate every lane's start (shapes grown until nothing overflows)."""
        while True:
            state = _init(lanes.x0, lanes.row_mask, lanes.data, potential, spec, fmax,
                          max_steps, **kw)  # fmt: skip
            if not bool(jnp.any(state.overflow)):
                break
            growth *= 2.0
            spec = _spec_for(potential, lanes.crystals, backend=neighbor_backend, growth=growth)
        state = place(state._replace(status=jnp.where(lanes.invalid, INVALID, state.status)))
        floor = floor_of(lanes)
        if floor is not None:
            state = _below_floor_at_start(state, floor)
        if guarded:
            state = _check_start(state, lanes.data, potential, spec, mu, cell_filter=mode)
        return state, spec, growth

    slots = parallel.padded_size(max(int(slots), 1), mesh)
    keys = np.full(slots, -1, np.int64)
    keys[: len(first_keys)] = first_keys
    lanes = place(parallel.pad_batch(first, slots))
    growth = 1.0
    spec = _spec_for(potential, source.hint, backend=neighbor_backend)
    state, spec, growth = start(lanes, spec, growth)
    state = _idle(state, keys < 0)
    can_compact = min_batch > 0 and _leading(lanes, slots)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(first_keys) + len(source), desc=desc, unit="struct")
    while True:
        release_compiled_programs()  # near the process's map cap: drop cached programs
        finished = (keys >= 0) & (np.asarray(state.status) != RUNNING)
        if finished.any():
            sink(keys.copy(), finished, state, lanes, spec)
            keys[finished] = -1
            if bar is not None:
                bar.update(int(finished.sum()))
            new_keys, new = source.take(int(finished.sum()))
            if new is not None and new_keys:
                rows = np.nonzero(finished)[0][: len(new_keys)]
                lanes = place(_set_rows(lanes, rows, new))
                fresh, spec, growth = start(lanes, spec, growth)
                mask = np.zeros(slots, bool)  # on the host: no program per refill count
                mask[rows] = True
                state = _merge(place(mask), fresh, state)
                keys[rows] = new_keys
        running = keys >= 0
        n_running = int(running.sum())
        if n_running == 0:
            break
        target = parallel.padded_size(_bucket(n_running, min_batch), mesh)
        if can_compact and len(source) == 0 and target <= slots // 2:
            run_rows = np.nonzero(running)[0]
            idx = np.concatenate([run_rows, np.full(target - n_running, run_rows[0])])
            idx_d = jnp.asarray(idx, jnp.int32)
            state, lanes = place(_gather(state, idx_d)), place(_gather(lanes, idx_d))
            keys = np.concatenate([keys[run_rows], np.full(target - n_running, -1)])
            slots = target
            state = _idle(state, keys < 0)
            # the new working batch compiles anyway: re-choose the neighbor shapes for the
            # structures it holds now, with the base head-room
            growth = 1.0
            current = crystals_from_dofs(state.x, lanes.data, mode)
            spec = _spec_for(potential, current, backend=neighbor_backend)
        new_state = _run(state, lanes.data, potential, spec, mu, floor_of(lanes),
                         n_steps=chunk, guarded=guarded, **kw)  # fmt: skip
        state, spec, growth = _after_chunk(
            state, new_state, lanes.data, potential, spec, growth, mode, neighbor_backend
        )
    if bar is not None:
        bar.close()


def _after_chunk(before, new, data, potential, spec, growth, mode, neighbor_backend):
    """Host step after a jitted chunk: ``(state, spec, growth)`` to go on with.

    If the chunk stopped on an overflowing step, ``new`` is the last good state before it: the
    shapes are re-chosen for the structures as they are now and the run goes on from there
    (nothing is recomputed); the head-room doubles only while no step gets through.
    """
    if not bool(jnp.any(new.overflow)):
        return new, spec, growth
    progressed = bool(jnp.any(new.force_calls != before.force_calls))
    growth = 2.0 if progressed else 2.0 * growth
    current = crystals_from_dofs(new.x, data, mode)
    spec = _spec_for(potential, current, backend=neighbor_backend, growth=growth)
    return new._replace(overflow=jnp.zeros_like(new.overflow)), spec, growth


def relax_lanes(lanes: Lanes, potential, **kwargs):
    """Run :func:`drive` over one whole batch and return its final state, in row order."""
    size = int(lanes.x0.shape[0])
    sink = CollectSink(size)
    drive(BatchSource(lanes), sink, potential, slots=size, **kwargs)
    return sink.state


def relax(
    crystals: Crystals,
    potential,
    *,
    method: str = "bfgs_linesearch",
    fmax: float = 0.01,
    cell_filter: str | None = None,
    dofs: Dofs | None = None,
    max_steps: int = 1000,
    symmetric: bool = False,
    symprec: float = 1e-4,
    pressure: float = 0.0,
    chunk: int = 50,
    neighbor_backend: str = "auto",
    progress: bool = False,
    min_batch: int = 32,
    mesh: Any = None,
    max_uncertainty: float | None = None,
    min_energy_per_atom: float | None = -1000.0,
    **options: Any,
) -> RelaxResult:
    """Relax a batch of crystals with any potential (host entry point; jitted inside).

    Args:
      crystals: concrete batch ``(B, N)`` of mixed sizes (padding is respected).
      potential: any :class:`~jaxcsp.potentials.Potential`.
      method: ``"bfgs_linesearch"`` (ASE ``BFGSLineSearch``, fused), ``"fire"`` or ``"lbfgs"``.
      fmax: convergence threshold on the largest force / cell-force row, eV/Å.
      cell_filter: ``None`` (fixed cell) or ``"frechet"`` (ASE ``FrechetCellFilter``): the
        built-in :class:`~jaxcsp.optimize.AtomPositions` and
        :class:`~jaxcsp.optimize.FrechetCell` degrees of freedom.
      dofs: any other :class:`~jaxcsp.optimize.Dofs` (a new kind of degrees of freedom: a
        frozen dataclass with ``init`` and ``to_crystals``); replaces ``cell_filter``.
        ``AtomPositions()`` and ``FrechetCell()`` are the same as ``cell_filter=None`` and
        ``"frechet"`` (and share their compiled programs).
      max_steps: optimizer steps per structure.
      symmetric: FixSymmetry-style mode (spglib operations of the starting structures).
      symprec: spglib tolerance in Å for ``symmetric``.
      pressure: scalar pressure in eV/Å³ (with ``cell_filter``).
      chunk: steps per jitted call between host checks (overflow, progress).
      neighbor_backend: neighbor-list backend (``"auto"``, ``"xla"``, ``"pallas"``).
      progress: show a progress bar.
      min_batch: smallest working batch of the compaction (see :func:`drive`): once at most
        half the structures are still running they are gathered into a smaller batch, so the
        slowest few do not pay for all ``B`` every step; ``0`` turns compaction off. Results
        do not depend on it.
      mesh: a :func:`jaxcsp.parallel.batch_mesh` to split the batch over several devices
        (data parallel; padded to a multiple of the mesh size with rows that never move,
        trimmed from the result). Results do not depend on it.
      max_uncertainty: stop a structure (status ``"uncertain"``) at its last point whose
        uncertainty (the potential's ``uncertainty_fn``, e.g. an ensemble's relative force
        spread ``U``) is at most this; a structure already above it at the start does not
        move. Needs a potential with an ``uncertainty_fn``
        (:meth:`jaxcsp.models.MLFFEnsemble.potential`). ``None``: no such stop.
      min_energy_per_atom: eV/atom. A structure whose newly accepted point lies below it
        (energy per atom, plus ``pV`` per atom with a cell filter) stops with status
        ``"exploded"`` at its previous point (a start below it does not move): a learned
        potential's hole or the Buckingham catastrophe, where atoms fall
        into one another, the energy drops without bound and the collapsing cell would need
        ever larger neighbor lists (e.g. SevenNet-0 from a random SiO2 start with O–O at
        0.7 Å: -8.5e13 eV/atom and 570 neighbors per atom after 200 steps). The default
        -1000 eV/atom is far below any cohesive energy; ``None``: no floor.
      **options: optimizer hyperparameters (e.g. ``maxstep``, ``c1``, ``dt``); traced values,
        so another value reuses the compiled program (except L-BFGS's ``memory``, a shape).

    Returns:
      :class:`RelaxResult`, one row per input structure. Structures with two atoms closer
      than :data:`jaxcsp.crystal.MIN_DISTANCE` (0.1 Å, periodic images included; see
      :func:`jaxcsp.crystal.find_overlaps`) are not relaxed: their status is ``"invalid"``, as
      for a non-finite energy or force at the start.

    Raises:
      InvalidStructureError: an element the potential does not cover (naming the structure).
      InvalidArgumentError: ``max_uncertainty`` not positive or the potential has no
        ``uncertainty_fn``; ``fmax``/``symprec`` not positive and finite, ``pressure`` not
        finite, ``max_steps``/``chunk`` not an integer >= 1, ``min_batch`` negative,
        ``min_energy_per_atom`` not finite; an optimizer option the method does not take.
      JaxcspError: unknown method or cell filter.
    """
    cell_filter = _choose_dofs(cell_filter, dofs, symmetric)
    _check_args(
        method,
        cell_filter,
        fmax=fmax,
        max_steps=max_steps,
        pressure=pressure,
        chunk=chunk,
        min_batch=min_batch,
        **({"symprec": symprec} if symmetric else {}),
    )
    if max_uncertainty is not None:
        check_real("max_uncertainty", max_uncertainty)
        if getattr(potential, "uncertainty_fn", None) is None:
            raise InvalidArgumentError(
                f"max_uncertainty needs a potential with an uncertainty_fn (an ensemble); "
                f"{getattr(potential, 'name', potential)!r} has none",
                argument="max_uncertainty",
                value=max_uncertainty,
            )
    if min_energy_per_atom is not None:
        check_real("min_energy_per_atom", min_energy_per_atom, positive=False, unit="eV/atom")
    check_species(potential, crystals)
    overlapping = np.array([e is not None for e in find_overlaps(crystals)], bool)
    n_real = int(crystals.batch_size)
    if mesh is not None:
        size = parallel.padded_size(n_real, mesh)
        crystals = parallel.pad_batch(crystals, size)
        overlapping = np.concatenate([overlapping, np.ones(size - n_real, bool)])  # never move
    data = make_data(crystals, pressure=pressure, symmetric=symmetric, symprec=symprec)
    x0, row_mask = initial_dofs(crystals, cell_filter)
    lanes = Lanes(x0, row_mask, data, crystals, jnp.asarray(overlapping))
    state = relax_lanes(
        lanes,
        potential,
        method=method,
        options=options,
        mode=cell_filter,
        fmax=fmax,
        max_steps=max_steps,
        chunk=chunk,
        neighbor_backend=neighbor_backend,
        progress=progress,
        desc=f"relax ({method})",
        min_batch=min_batch,
        mesh=mesh,
        max_uncertainty=max_uncertainty,
        min_energy_per_atom=min_energy_per_atom,
    )
    final = crystals_from_dofs(state.x, data, cell_filter)
    # a structure that never took a step (invalid, or converged at its start) is returned as
    # given: the Cartesian round trip of its DOFs may differ in the last bit (FMA contraction)
    still = (state.steps == 0)[:, None, None]
    final = final.replace(
        lattice=jnp.where(still, crystals.lattice.astype(final.lattice.dtype), final.lattice),
        frac=jnp.where(still, crystals.frac.astype(final.frac.dtype), final.frac),
    )
    res = result_from_state(state, final, potential, neighbor_backend)
    if mesh is not None:
        res = jax.tree_util.tree_map(lambda a: a[:n_real], res)
    return res


def result_from_state(state, final: Crystals, potential, neighbor_backend: str) -> RelaxResult:
    """Final energies/forces/stress (one more evaluation) and the optimizer's bookkeeping.

    The neighbor shapes come from :func:`_spec_for` (counted on ``final``, so nothing overflows),
    so the final evaluation reuses compiled shapes like the relaxation does.
    """
    res = final_results(potential, final, _spec_for(potential, final, backend=neighbor_backend))
    return RelaxResult(
        crystals=final,
        energy=res.energy,
        forces=res.forces,
        stress=res.stress,
        max_force=masked_fmax(state.grad, state.row_mask),
        converged=state.status == 1,
        status=state.status,
        steps=state.steps,
        force_calls=state.force_calls,
    )


def final_results(potential, crystals: Crystals, spec):
    """Energy, forces and stress of ``crystals`` with the neighbor shapes ``spec`` (or ``None``).

    Falls back to :func:`jaxcsp.calculator.calculate` (shapes re-chosen) if a list overflows.
    """
    nl = None if spec is None else nb.update(spec, crystals)
    if nl is not None and bool(jnp.any(nl.overflow)):
        return calculate(potential, crystals, backend=spec.backend)
    return _calc_jit(potential, crystals, nl)


@jax.jit
def _calc_jit(potential, crystals, neighbors):
    return calculate_with_neighbors(potential, crystals, neighbors)
