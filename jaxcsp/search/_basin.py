"""Basin hopping over a population (FUSE2) as a search method.

Each of ``population`` members holds a current relaxed structure. Every iteration:

1. each member draws a move (:mod:`jaxcsp.search._moves`, FUSE2's move set; rates from
   ``moves``, equal by default as in FUSE2) and applies it to its current structure; a move that
   does not apply to that structure (an elemental swap, no void, too many atoms to double, every
   try breaking the distance rule) is counted as skipped with its reason and another move is
   drawn, so one member's failure never stops the population;
2. optionally every moved structure is symmetrised with spglib (``symmetrize``), as FUSE2 does
   before its relaxations (a symmetrised cell the composition rules reject keeps its moved form);
3. the driver relaxes the whole population together (the oracle's cheap tiers first:
   FUSE2's tiered SPP-then-DFT relaxation);
4. each member accepts its relaxed candidate by the Metropolis rule on the enthalpy per atom,
   ``accept if ΔH < 0 or u < exp(-ΔH / kT)`` (``temperature`` is ``kT`` in eV/atom); an invalid
   candidate is rejected;
5. **resets**: a member whose best enthalpy has not improved for ``reset_after`` iterations
   restarts from a fresh generated structure (accepted unconditionally), as FUSE resets stuck
   runs; so does a member whose initial structure failed.

Cells hold any number ``k`` of formula units, ``1 <= k <= max_units`` (the composition given
to the search is the largest cell), so doubling, tripling, halving and the new-random moves change
the cell size while keeping the stoichiometry, as in FUSE2 (maximum atoms per structure).

The initial population comes from ``generator(key, composition, n) -> Crystals`` (random
symmetric structures by default; :func:`pool_generator` draws from a file of generated
structures, e.g. a generative model's output), and the ``new_random*`` moves draw from the
same generator.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxcsp.crystal import Crystals, concatenate
from jaxcsp.crystal import Crystals as _C
from jaxcsp.elements import atomic_numbers, chemical_symbols
from jaxcsp.io import from_ase, read, to_ase
from jaxcsp.search._base import (
    Evaluation,
    InvalidSearchError,
    Method,
    Proposal,
    SearchState,
    positive_int,
    record,
)
from jaxcsp.search._moves import (
    MOVES,
    MoveContext,
    MoveNotApplicable,
    NewRandom,
    apply_move,
    check_structure,
)
from jaxcsp.symmetry import random_crystals, reconstruct

__all__ = ["basin_hopping", "pool_generator", "random_generator"]

Generator = Callable[[jax.Array, Mapping[str, int], int], Crystals]


def random_generator(
    *,
    volume_factor: float = 1.1,
    distance_factor: float = 0.5,
    max_atoms: int | None = None,
    spg: int | None = None,
) -> Generator:
    """Random symmetric structures (:func:`jaxcsp.symmetry.random_crystals`) as a generator.

    Args:
      volume_factor, distance_factor: as :func:`jaxcsp.search.random_search`.
      max_atoms: atom slots of the result (default: the composition's atoms).
      spg: one space group for every structure (``1``: FUSE-like unsymmetric starts);
        ``None``: uniform over the compatible groups.

    Returns:
      ``generator(key, composition, n) -> Crystals (n, max_atoms)`` (Å), deterministic in
      ``key``; ``composition`` is ``{"Si": 8}``.
    """

    def generate(key, composition, n):
        size = max_atoms or sum(composition.values())
        wc = random_crystals(
            key,
            dict(composition),
            n,
            max_sites=size,
            max_atoms=size,
            volume_factor=volume_factor,
            distance_factor=distance_factor,
            spg=spg,
        )
        return reconstruct(wc)

    generate.__name__ = "random" if spg is None else f"random(spg {spg})"
    return generate


def pool_generator(structures: Any, *, fallback: Generator | None = None) -> Generator:
    """Draw from a pool of generated structures (a generative model's output), FUSE2's "mlgen".

    Args:
      structures: a structure file (any format :func:`jaxcsp.io.read` reads, an ASE database
        included), a list of ``ase.Atoms``, or ``Crystals``.
      fallback: generator for compositions the pool lacks or holds too few of (FUSE2 reverts
        to its own generation); random symmetric structures by default.

    Returns:
      ``generator(key, composition, n)``: ``n`` pool structures of exactly that composition,
      drawn without replacement (deterministic in ``key``), then the fallback's.
    """
    if isinstance(structures, _C):
        atoms = to_ase(structures)
    elif isinstance(structures, (list, tuple)):
        atoms = list(structures)
    else:
        atoms = to_ase(read(structures))
    by_comp: dict[tuple, list] = {}
    for a in atoms:
        key = tuple(sorted(a.symbols.formula.count().items()))
        by_comp.setdefault(key, []).append(a)
    fallback = fallback or random_generator()

    def generate(key, composition, n):
        size = sum(composition.values())
        wanted = tuple(sorted((str(e), int(c)) for e, c in composition.items()))
        pool = by_comp.get(wanted, [])
        k_pick, k_fill = jax.random.split(key)
        take = min(n, len(pool))
        order = np.asarray(jax.random.permutation(k_pick, len(pool)))[:take] if take else []
        parts = []
        if take:
            parts.append(from_ase([pool[int(i)] for i in order], max_atoms=size, source="pool"))
        if n - take:
            parts.append(fallback(k_fill, composition, n - take))

        return concatenate(parts) if len(parts) > 1 else parts[0]

    generate.pool_size = len(atoms)  # type: ignore[attr-defined]
    generate.__name__ = "pool"
    return generate


def _formula(comp: tuple[tuple[str, int], ...]) -> tuple[dict[int, int], int]:
    counts = [n for _, n in comp]
    z = math.gcd(*counts)
    zs = atomic_numbers([e for e, _ in comp])
    return {int(k): n // z for k, (_, n) in zip(zs, comp, strict=True)}, z


def _rng(key: jax.Array) -> np.random.Generator:
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _symmetrize(structure, ctx: MoveContext, symprec: float):
    """spglib's standardised cell of a structure, or ``None`` when the rules reject it."""
    import spglib

    lat, frac, z = structure

    def standardize(primitive: bool):
        with warnings.catch_warnings():  # spglib's own OLD_ERROR_HANDLING deprecation notice
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                return spglib.standardize_cell(
                    (lat, frac, z), to_primitive=primitive, no_idealize=False, symprec=symprec
                )
            except Exception:  # spglib raises on cells it cannot analyse
                return None

    out = standardize(False)
    if out is None:
        return None
    lat2, frac2, z2 = (np.asarray(a) for a in out)
    if len(z2) > ctx.max_units * sum(ctx.formula.values()):
        out = standardize(True)
        if out is None:
            return None
        lat2, frac2, z2 = (np.asarray(a) for a in out)
    lat2, frac2, z2 = lat2.astype(float), frac2.astype(float), z2.astype(np.int64)
    return None if check_structure(lat2, frac2, z2, ctx) else (lat2, frac2, z2)


def basin_hopping(
    population: int = 25,
    *,
    temperature: float = 0.01,
    reset_after: int = 20,
    moves: Mapping[str, float] | None = None,
    generator: Generator | None = None,
    max_atoms: int | None = None,
    min_atoms: int | None = None,
    symmetrize: bool = False,
    symprec: float = 0.1,
    volume_factor: float = 1.1,
    distance_factor: float = 0.5,
    spg: int | None = None,
    void_distance: float = 1.0,
    strain: float = 0.1,
    rattle: float = 0.3,
) -> Method:
    """Population basin hopping with FUSE2's moves as a :class:`~jaxcsp.search.Method`.

    Args:
      population: members (FUSE2's initial population of 25); one relaxation batch.
      temperature: Metropolis ``kT`` in eV/atom.
      reset_after: iterations without a new member best before a member restarts from a
        generated structure.
      moves: ``{move name: rate}`` (names of :data:`jaxcsp.search._moves.MOVES`); moves not
        named get rate 0; ``None``: every move at the same rate (FUSE2's default).
      generator: ``generator(key, composition, n) -> Crystals`` for the initial population and
        the new-structure moves (default :func:`random_generator`).
      max_atoms: largest cell in atoms (default: the search composition's atom count); cells
        hold whole formula units up to it.
      min_atoms: smallest cell in atoms (default: ``max_atoms``, a fixed-size search like the
        random baseline's; lower it, e.g. to half, to let ``double``/``halve``/``triple``/
        ``third`` and the new-random moves change the cell size as FUSE2 does).
      symmetrize: symmetrise moved structures with spglib (``symprec``, Å) before relaxation.
      volume_factor, distance_factor: the random generator's rules (as
        :func:`jaxcsp.search.random_search`); ``distance_factor`` is also every move's
        distance rule.
      spg: the default generator's one space group (``1``: unsymmetric starts).
      void_distance: a void is farther than this from every atom, Å.
      strain: largest strain component of the strain moves.
      rattle: standard deviation of the rattle move, Å.

    Returns:
      ``Method("basin", init, step)``. ``state.population`` holds, per member, the current
      structure (``lattice (P, 3, 3)`` Å, ``frac (P, N, 3)``, ``numbers (P, N)``), its
      enthalpy per atom (eV/atom), best, iterations since improving, and the move statistics
      ``proposed``/``accepted``/``skipped`` per move plus ``skip_reasons``.

    >>> m = basin_hopping(4, moves={"rattle": 1, "strain": 1})
    >>> m.name, m.config["moves"]
    ('basin', {'rattle': 1.0, 'strain': 1.0})
    """
    population = positive_int("population", population)
    reset_after = positive_int("reset_after", reset_after)
    if not (np.isfinite(temperature) and temperature > 0):
        raise InvalidSearchError(
            f"must be a positive kT in eV/atom, got {temperature!r}", field="temperature"
        )
    if moves is None:
        rates = {name: 1.0 for name in MOVES}
    else:
        unknown = sorted(set(moves) - set(MOVES))
        if unknown:
            raise InvalidSearchError(
                f"unknown move(s) {', '.join(unknown)}; moves are {', '.join(MOVES)}",
                field="moves",
            )
        rates = {k: float(v) for k, v in moves.items() if float(v) > 0}
        if any(not np.isfinite(v) or v < 0 for v in map(float, moves.values())) or not rates:
            raise InvalidSearchError(
                "rates must be finite, non-negative and not all zero", field="moves"
            )
    names = list(rates)
    weights = np.asarray([rates[n] for n in names])
    config: dict[str, Any] = dict(
        population=population,
        temperature=float(temperature),
        reset_after=reset_after,
        moves=rates,
        generator=getattr(generator, "__name__", "random") if generator else "random",
        max_atoms=max_atoms,
        min_atoms=min_atoms,
        symmetrize=bool(symmetrize),
        symprec=float(symprec),
        volume_factor=float(volume_factor),
        distance_factor=float(distance_factor),
        spg=spg,
        void_distance=float(void_distance),
        strain=float(strain),
        rattle=float(rattle),
    )

    def _setup(comp):
        formula, _ = _formula(comp)
        per_unit = sum(formula.values())
        size = sum(n for _, n in comp) if max_atoms is None else int(max_atoms)
        if size < per_unit:
            raise InvalidSearchError(
                f"{size} atoms cannot hold one formula unit ({per_unit} atoms)", field="max_atoms"
            )
        low = size if min_atoms is None else int(min_atoms)
        if not per_unit <= low <= size:
            raise InvalidSearchError(
                f"must be between one formula unit ({per_unit} atoms) and max_atoms ({size})",
                field="min_atoms",
            )
        ctx = MoveContext(
            formula=formula,
            max_units=size // per_unit,
            min_units=-(-low // per_unit),
            distance_factor=float(distance_factor),
            void_distance=float(void_distance),
            strain=float(strain),
            rattle=float(rattle),
        )
        gen = generator or random_generator(
            volume_factor=volume_factor, distance_factor=distance_factor, max_atoms=size, spg=spg
        )
        return ctx, gen, size

    def _composition(ctx: MoveContext, units: int) -> dict[str, int]:
        return {
            s: c * units
            for s, c in zip(chemical_symbols(list(ctx.formula)), ctx.formula.values(), strict=True)
        }

    def _generate(key, ctx, gen, size, units: list[int]):
        """Fresh structures of these formula-unit counts, one generator call per count."""
        out: list[Any] = [None] * len(units)
        for j, u in enumerate(sorted(set(units))):
            where = [i for i, v in enumerate(units) if v == u]
            # draw a power-of-two count (the first len(where) are used): a handful of batch
            # shapes for the generator's compiled programs instead of one per request count
            n_draw = 1 << (len(where) - 1).bit_length()
            c = gen(jax.random.fold_in(key, j), _composition(ctx, u), n_draw)
            lat = np.asarray(c.lattice, np.float64)
            frac = np.asarray(c.frac, np.float64)
            spec = np.asarray(c.species)
            mask = np.asarray(c.mask)
            for k, i in enumerate(where):
                out[i] = (lat[k], frac[k][mask[k]], spec[k][mask[k]].astype(np.int64))
        return out

    def _pack(structures, size: int, dtype) -> Crystals:
        p = len(structures)
        lat = np.zeros((p, 3, 3))
        frac = np.zeros((p, size, 3))
        spec = np.zeros((p, size), np.int32)
        for i, (la, fr, z) in enumerate(structures):
            lat[i], frac[i, : len(z)], spec[i, : len(z)] = la, fr, z
        return Crystals.create(lat, frac, spec, dtype=dtype)

    def init(key: jax.Array, composition: tuple[tuple[str, int], ...]):
        ctx, gen, size = _setup(composition)
        structures = _generate(
            jax.random.fold_in(key, 0), ctx, gen, size, [ctx.max_units] * population
        )
        c = _pack(structures, size, None)
        m = len(names)
        pop = dict(
            lattice=np.asarray(c.lattice, np.float64),
            frac=np.asarray(c.frac, np.float64),
            numbers=np.asarray(c.species, np.int64),
            enthalpy=np.full(population, np.nan),
            best=np.full(population, np.inf),
            stale=np.zeros(population, np.int64),
            fresh=np.ones(population, bool),  # next candidate accepted unconditionally
            pending=np.full(population, -1, np.int64),  # move index of the candidate (-1: new)
            proposed=np.zeros(m, np.int64),
            accepted=np.zeros(m, np.int64),
            skipped=np.zeros(m, np.int64),
            skip_reasons={},
            resets=np.asarray(0, np.int64),
            moves=list(names),
        )
        state = SearchState.create(key, composition, "basin", pop)
        return state, Proposal(c)

    def step(state: SearchState, evaluation: Evaluation):
        state = record(state, evaluation)
        ctx, gen, size = _setup(state.composition)
        pop = {
            k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.population.items()
        }
        skip_reasons: dict[str, int] = dict(pop["skip_reasons"])
        pop["skip_reasons"] = skip_reasons
        key = jax.random.fold_in(state.key, int(state.iteration))
        k_accept, k_move, k_new = jax.random.split(key, 3)
        rng_accept, rng = _rng(k_accept), _rng(k_move)

        # ---- acceptance of the evaluated candidates
        h_new = np.asarray(evaluation.enthalpy_per_atom, np.float64)
        ok = evaluation.ok
        relaxed = evaluation.crystals
        r_lat = np.asarray(relaxed.lattice, np.float64)
        r_frac = np.asarray(relaxed.frac, np.float64)
        r_num = np.asarray(relaxed.species, np.int64)
        u = rng_accept.random(population)
        for i in range(population):
            h_cur = pop["enthalpy"][i]
            if not ok[i]:
                take = False
            elif pop["fresh"][i]:
                take = True
            else:
                d = h_new[i] - h_cur
                take = bool(d < 0 or u[i] < math.exp(-d / temperature))
            if take:
                pop["lattice"][i], pop["frac"][i] = r_lat[i], r_frac[i]
                pop["numbers"][i] = r_num[i]
                pop["enthalpy"][i] = h_new[i]
                if pop["pending"][i] >= 0:
                    pop["accepted"][pop["pending"][i]] += 1
                pop["fresh"][i] = False
            improved = ok[i] and h_new[i] < pop["best"][i] - 1e-6
            if improved and take:
                pop["best"][i], pop["stale"][i] = h_new[i], 0
            elif not pop["fresh"][i]:
                pop["stale"][i] += 1
            if pop["stale"][i] >= reset_after:
                pop["fresh"][i], pop["stale"][i], pop["best"][i] = True, 0, np.inf
                pop["resets"] = np.asarray(int(pop["resets"]) + 1, np.int64)

        # ---- moves
        proposals: list[Any] = [None] * population
        requests: dict[int, int] = {}
        for i in range(population):
            pop["pending"][i] = -1
            if pop["fresh"][i]:
                requests[i] = int(rng.integers(ctx.min_units, ctx.max_units + 1))
                continue
            mask = pop["numbers"][i] > 0
            current = (pop["lattice"][i], pop["frac"][i][mask], pop["numbers"][i][mask])
            w = weights.copy()
            while w.sum() > 0:
                j = int(rng.choice(len(names), p=w / w.sum()))
                try:
                    out = apply_move(names[j], rng, current, ctx)
                except MoveNotApplicable as e:
                    pop["skipped"][j] += 1
                    skip_reasons[e.reason] = skip_reasons.get(e.reason, 0) + 1
                    w[j] = 0.0
                    continue
                pop["proposed"][j] += 1
                pop["pending"][i] = j
                if isinstance(out, NewRandom):
                    requests[i] = out.units
                else:
                    if symmetrize:
                        out = _symmetrize(out, ctx, symprec) or out
                    proposals[i] = out
                break
            else:  # no move applies: a fresh structure of the same size
                requests[i] = ctx.units(current[2])
        if requests:
            idx = sorted(requests)
            fresh = _generate(k_new, ctx, gen, size, [requests[i] for i in idx])
            for i, s in zip(idx, fresh, strict=True):
                proposals[i] = s
        c = _pack(proposals, size, relaxed.lattice.dtype)
        state = dataclasses.replace(state, population=pop)
        return state, Proposal(c)

    return Method("basin", init, step, config)
