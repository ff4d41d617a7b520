"""The host driver of every search: evaluate proposals on the oracle, store, deduplicate, resume.

:func:`run` is the loop ``init → (evaluate → step)*`` of :mod:`jaxcsp.search._base` with:

* **Relaxation** of each proposal through :func:`jaxcsp.optimize.relax_stream` (continuous
  batching), after the oracle's cheap tiers (batched :func:`jaxcsp.optimize.relax`).
* **Storage**: every evaluated candidate becomes one ASE-database row as it finishes, keyed by
  its global candidate id (``input_id``), with key-value pairs ``method``, ``iteration``,
  ``energy_per_atom``, ``enthalpy_per_atom``, ``oracle_calls``, ``<tier>_calls``, ``status``
  and, once the iteration is complete, ``unique``, ``duplicate_of`` and ``matches_reference``.
* **Resuming**: the database is the source of truth. A rerun replays the method: candidates of
  iteration ``t`` are re-proposed (deterministically, from the seed), the ones already in the
  database are read back instead of relaxed, and the evaluation handed to ``step`` is always
  the one read from the database, so a killed and resumed search ends with the same archive,
  ranking and metrics as an uninterrupted one: the same candidates, unique structures and
  duplicates, and rows written before the kill unchanged. The structures that were in flight
  are relaxed again in other batches, whose array shapes differ (batch-mates, neighbor-list
  capacity), so their energies agree with the uninterrupted run's to rounding (about 1e-6
  eV/atom at ``fmax=0.01``), not bit for bit. The run's settings are stored in the
  database's metadata and a rerun with different settings is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.calculator import calculate
from jaxcsp.crystal import Crystals, concatenate
from jaxcsp.elements import atomic_numbers, chemical_symbols
from jaxcsp.errors import InvalidStructureError, JaxcspError
from jaxcsp.io import connect_db, from_ase, read, to_ase, to_pymatgen
from jaxcsp.optimize import Dofs, relax, relax_stream
from jaxcsp.optimize._stream import _fingerprint
from jaxcsp.search._base import (
    STATUS_CODES,
    Evaluation,
    InvalidSearchError,
    Method,
    Oracle,
    Proposal,
    SearchState,
    record,
)
from jaxcsp.search._dedup import Deduplicator
from jaxcsp.search._metrics import rank, search_metrics
from jaxcsp.symmetry import compatible_space_groups
from jaxcsp.symmetry._wpc import parse_composition

__all__ = ["SearchResult", "check_setup", "evaluate", "run"]

#: Relaxed cells thinner than this (Å, smallest distance between opposite faces), or thinner
#: than ``MIN_RELATIVE_WIDTH (V/N)^(1/3)`` (a needle or sheet of a cell, e.g. atoms spread
#: beyond the cutoff along one axis), collapsed during relaxation: invalid candidates.
MIN_CELL_WIDTH = 0.5
MIN_RELATIVE_WIDTH = 0.15
#: Relaxed structures with two atoms closer than this fraction of their covalent radii sum
#: (ASE's ``covalent_radii``) fused during relaxation (e.g. a Buckingham catastrophe, whose
#: energy runs to -inf): invalid candidates, never ranked.
MIN_DISTANCE_FACTOR = 0.5


def _fused(atoms) -> bool:
    """Whether two atoms of an ASE ``Atoms`` are closer than ``MIN_DISTANCE_FACTOR`` × radii."""
    from ase.data import covalent_radii

    if len(atoms) < 2:
        return False
    d = atoms.get_all_distances(mic=True)
    r = covalent_radii[atoms.numbers]
    limit = MIN_DISTANCE_FACTOR * (r[:, None] + r[None, :])
    np.fill_diagonal(d, np.inf)
    return bool((d < limit).any())


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What :func:`run` returns.

    Attributes:
      state: the final :class:`SearchState` (its ``archive`` holds every candidate).
      labels: ``(P,) int64`` deduplication labels over the archive (index of the group's first
        member; invalid candidates are their own label).
      matches_reference: ``(P,) bool`` or ``None`` without a reference.
      reference_energy: the reference's relaxed enthalpy per atom (eV/atom), or ``None``.
      ranking: :func:`jaxcsp.search.rank` rows (distinct structures, lowest first).
      metrics: :func:`jaxcsp.search.search_metrics` plus ``wall_s`` and ``iterations``.
      db: the database path.
    """

    state: SearchState
    labels: np.ndarray
    matches_reference: np.ndarray | None
    reference_energy: float | None
    ranking: list[dict[str, Any]]
    metrics: dict[str, Any]
    db: str


def check_setup(composition: Any, potential: Any) -> tuple[tuple[str, int], ...]:
    """Parse and check a search's composition against the potential, before any compute.

    Args:
      composition: ``"Si8"`` or ``{"Na": 4, "Cl": 4}`` (unit-cell counts).
      potential: the oracle's potential (its ``species``, when not ``None``, must cover every
        element).

    Returns:
      the composition as ``(("Si", 8),)``.

    Raises:
      InvalidSearchError: ``field="composition"`` for an unparsable composition, an unknown
        element, a count that is not a positive integer, or a composition no space group can
        hold; ``field="potential"`` for an element the potential does not cover.
    """
    try:
        comp = tuple(parse_composition(composition))
        zs = atomic_numbers([el for el, _ in comp])
    except InvalidStructureError as e:
        raise InvalidSearchError(e.reason, field="composition") from None
    covered = getattr(potential, "species", None)
    if covered is not None:
        missing = [el for el, z in zip((e for e, _ in comp), zs, strict=True) if z not in covered]
        if missing:
            raise InvalidSearchError(
                f"potential {getattr(potential, 'name', '?')!r} does not cover "
                f"{', '.join(missing)} (covers {', '.join(chemical_symbols(covered))})",
                field="potential",
            )
    if not compatible_space_groups(dict(comp)):
        text = "".join(f"{e}{n}" for e, n in comp)
        raise InvalidSearchError(
            f"no space group can hold {text} (no Wyckoff-position combination)",
            field="composition",
        )
    return comp


def _read_rows(con, ids: np.ndarray) -> dict[int, Any]:
    lo, hi = int(ids.min()), int(ids.max())
    return {int(r.input_id): r for r in con.select(f"input_id>={lo},input_id<={hi}")}


def _evaluation_from_rows(
    rows: Mapping[int, Any],
    ids: np.ndarray,
    proposal: Proposal,
    iteration: int,
    pressure: float,
    tier_names: list[str],
) -> Evaluation:
    n = proposal.crystals.frac.shape[1]  # atom slots of the proposal
    dtype = proposal.crystals.lattice.dtype
    atoms, energy, status, calls, tiers = [], [], [], [], []
    forces = np.full((len(ids), n, 3), np.nan)
    stress = np.full((len(ids), 3, 3), np.nan)
    for k, i in enumerate(ids):
        r = rows[int(i)]
        a = r.toatoms()
        atoms.append(a)
        f, s = r.get("forces"), r.get("stress")
        if f is not None and len(f) <= n:
            forces[k, : len(f)] = f
            forces[k, len(f) :] = 0.0
        if s is not None and np.size(s) == 6:
            xx, yy, zz, yz, xz, xy = np.asarray(s, np.float64)
            stress[k] = [[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]
        e = r.get("energy")
        ok = e is not None and r.get("status") in ("converged", "max_steps", "single_point")
        energy.append(float(e) if ok else np.nan)
        status.append(STATUS_CODES.get(str(r.get("status")), STATUS_CODES["invalid"]))
        calls.append(int(r.get("force_calls", 0)))
        tiers.append([int(r.get(f"{t}_calls", 0)) for t in tier_names])
        del k
    try:
        relaxed = from_ase(atoms, dtype=dtype, max_atoms=n, source="search database")
    except InvalidStructureError:  # a row that cannot be loaded keeps its proposal, invalid
        parts = []
        for k, a in enumerate(atoms):
            try:
                parts.append(from_ase([a], dtype=dtype, max_atoms=n, source="search database"))
            except InvalidStructureError:
                parts.append(proposal.crystals.take(np.asarray([k])))
                energy[k] = np.nan
                status[k] = STATUS_CODES["invalid"]
        relaxed = concatenate(parts)
    energy_a = np.asarray(energy, np.float64)
    lat = np.asarray(relaxed.lattice, np.float64)
    vol = np.abs(np.linalg.det(lat))
    n_atoms = np.asarray(relaxed.mask).sum(axis=1)
    # a relaxation that collapsed its cell (flat, or a needle: atoms beyond the cutoff along
    # one axis feel no stress there) or fused two atoms is not a prediction: invalid, not ranked
    widths = vol[:, None] / np.maximum(
        np.linalg.norm(np.cross(lat[:, [1, 2, 0]], lat[:, [2, 0, 1]]), axis=-1), 1e-300
    )
    ell = (vol / np.maximum(n_atoms, 1)) ** (1.0 / 3.0)  # length per atom, Å
    thin = widths.min(axis=1)
    collapsed = ((thin < MIN_CELL_WIDTH) | (thin < MIN_RELATIVE_WIDTH * ell)) & np.isfinite(
        energy_a
    )
    fused = [bool(np.isfinite(e)) and _fused(a) for e, a in zip(energy_a, atoms, strict=True)]
    collapsed |= np.asarray(fused, bool)
    collapsed &= np.asarray(status) != STATUS_CODES["single_point"]
    energy_a[collapsed] = np.nan
    status = [STATUS_CODES["invalid"] if c else st for c, st in zip(collapsed, status, strict=True)]
    x64 = jax.config.jax_enable_x64  # type: ignore[attr-defined]  # a dynamic jax.config option
    return Evaluation(
        ids=jnp.asarray(ids, jnp.int64 if x64 else jnp.int32),
        iteration=jnp.full(len(ids), iteration, jnp.int32),
        crystals=relaxed,
        energy=jnp.asarray(energy_a),
        enthalpy_per_atom=jnp.asarray((energy_a + pressure * vol) / n_atoms),
        status=jnp.asarray(status, jnp.int32),
        oracle_calls=jnp.asarray(calls),
        tier_calls=jnp.asarray(np.asarray(tiers, np.int64).reshape(len(ids), len(tier_names))),
        forces=jnp.asarray(forces, dtype),
        stress=jnp.asarray(stress, dtype),
    )


def evaluate(
    proposal: Proposal,
    oracle: Oracle,
    *,
    db: str | os.PathLike,
    first_id: int,
    iteration: int = 0,
    method: str = "",
    fmax: float = 0.01,
    cell_filter: str | None = "frechet",
    pressure: float = 0.0,
    max_steps: int = 1000,
    optimizer: str = "bfgs_linesearch",
    max_atoms: int = 2048,
    dofs: Dofs | None = None,
) -> Evaluation:
    """Relax a proposal on the oracle (after its cheap tiers) into the database; resume-safe.

    Candidates whose ids are already in ``db`` are read back, not relaxed again; the returned
    evaluation is always built from the database rows.

    Args:
      proposal: ``P`` candidates.
      oracle: the :class:`Oracle`.
      db: ASE database path or URL.
      first_id: global id of the first candidate (ids are ``first_id .. first_id + P - 1``).
      iteration: the iteration number written into each row.
      method: the method name written into each row.
      fmax: oracle force threshold, eV/Å.
      cell_filter: ``"frechet"`` (variable cell, the default) or ``None``.
      pressure: eV/Å³ (enthalpy ``E + pV`` with the cell filter).
      max_steps: step cap per relaxation.
      optimizer: ``"bfgs_linesearch"``, ``"fire"`` or ``"lbfgs"``.
      max_atoms: atom cap per relaxation batch.
      dofs: a :class:`jaxcsp.optimize.Dofs` the relaxations move instead of ``cell_filter``'s
        (e.g. a new kind of degrees of freedom); ``cell_filter`` is then not used.

    Returns:
      :class:`Evaluation` with ``P`` entries in id order.
    """
    if proposal.size == 0:  # nothing proposed this iteration: an empty evaluation
        return _empty_evaluation(proposal, iteration, len(oracle.tiers))
    if not proposal.relax:
        return _single_points(
            proposal,
            oracle,
            db=db,
            first_id=first_id,
            iteration=iteration,
            method=method,
            pressure=pressure,
        )
    ids = np.arange(first_id, first_id + proposal.size, dtype=np.int64)
    con = connect_db(db)
    rows = _read_rows(con, ids)
    tier_names = [t.name for t in oracle.tiers]
    if len(rows) < len(ids):
        c = proposal.crystals
        tier_calls = np.zeros((proposal.size, len(oracle.tiers)), np.int64)
        for k, tier in enumerate(oracle.tiers):
            res = relax(
                c,
                tier.potential,
                fmax=tier.fmax,
                max_steps=tier.max_steps,
                pressure=pressure,
                method=optimizer,
                **_dof_args(cell_filter, dofs),
            )
            tier_calls[:, k] = np.asarray(res.force_calls)
            status = np.asarray(res.status)
            keep = (status == STATUS_CODES["converged"]) | (status == STATUS_CODES["max_steps"])
            # a candidate the cheap tier could not handle goes to the oracle as it was
            c = jax.tree.map(
                lambda a, b, keep=keep: jnp.where(keep.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
                res.crystals,
                c,
            )
        kvp = [
            dict(
                method=method,
                iteration=int(iteration),
                **{f"{t}_calls": int(tier_calls[j, k]) for k, t in enumerate(tier_names)},
                **_info_row(proposal, j),
            )
            for j in range(proposal.size)
        ]
        relax_stream(
            to_ase(c),
            oracle.potential,
            db=db,
            input_ids=ids,
            key_value_pairs=kvp,
            max_atoms=max_atoms,
            method=optimizer,
            fmax=fmax,
            max_steps=max_steps,
            pressure=pressure,
            progress=False,
            **_dof_args(cell_filter, dofs),
        )
        rows = _read_rows(con, ids)
    return _evaluation_from_rows(rows, ids, proposal, iteration, pressure, tier_names)


def _empty_evaluation(proposal: Proposal, iteration: int, n_tiers: int) -> Evaluation:
    x64 = jax.config.jax_enable_x64  # type: ignore[attr-defined]  # a dynamic jax.config option
    int_t = jnp.int64 if x64 else jnp.int32
    dt = proposal.crystals.lattice.dtype
    return Evaluation(
        ids=jnp.zeros(0, int_t),
        iteration=jnp.zeros(0, jnp.int32),
        crystals=proposal.crystals,
        energy=jnp.zeros(0, dt),
        enthalpy_per_atom=jnp.zeros(0, dt),
        status=jnp.zeros(0, jnp.int32),
        oracle_calls=jnp.zeros(0, int_t),
        tier_calls=jnp.zeros((0, n_tiers), int_t),
    )


#: Row keys the driver writes itself; a proposal's ``info`` may not use them.
_DRIVER_KEYS = frozenset(
    (
        "method", "iteration", "input_id", "input_hash", "status", "converged", "steps",
        "force_calls", "n_atoms", "energy_per_atom", "max_force", "oracle_calls", "unique",
        "duplicate_of", "enthalpy_per_atom", "matches_reference",
    )
)  # fmt: skip


def _info_row(proposal: Proposal, k: int) -> dict:
    """Key-value pairs of candidate ``k`` from the proposal's ``info`` (plain Python values)."""
    if not proposal.info:
        return {}
    out = {}
    for name, values in proposal.info.items():
        if name in _DRIVER_KEYS or name.endswith("_calls"):
            raise InvalidSearchError(
                f"proposal info {name!r} clashes with a key the driver writes", field="info"
            )
        v = np.asarray(values)
        if v.shape[:1] != (proposal.size,):
            raise InvalidSearchError(
                f"proposal info {name!r} has shape {v.shape}, expected ({proposal.size},)",
                field="info",
            )
        x = v[k].item()
        out[name] = x
    return out


def _single_points(proposal, oracle, *, db, first_id, iteration, method, pressure):
    """Single-point oracle labels of a proposal (no relaxation), one row each; resume-safe."""
    from ase.calculators.singlepoint import SinglePointCalculator

    ids = np.arange(first_id, first_id + proposal.size, dtype=np.int64)
    con = connect_db(db)
    rows = _read_rows(con, ids)
    if len(rows) < len(ids):
        res = calculate(oracle.potential, proposal.crystals)
        e, f, s = (np.asarray(x) for x in (res.energy, res.forces, res.stress))
        for k, atoms in enumerate(to_ase(proposal.crystals)):
            if int(ids[k]) in rows:
                continue
            n = len(atoms)
            good = bool(np.isfinite(e[k]))
            atoms.calc = (
                SinglePointCalculator(
                    atoms,
                    energy=float(e[k]),
                    forces=f[k][:n],
                    stress=s[k][[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]],
                )
                if good
                else None
            )
            con.write(
                atoms,
                key_value_pairs=dict(
                    input_id=int(ids[k]),
                    input_hash=_fingerprint(atoms),
                    method=method,
                    iteration=int(iteration),
                    status="single_point" if good else "exploded",
                    converged=False,
                    steps=0,
                    force_calls=1,
                    n_atoms=n,
                    energy_per_atom=float(e[k]) / n if good else 0.0,
                    **_info_row(proposal, k),
                ),
            )
        rows = _read_rows(con, ids)
    return _evaluation_from_rows(rows, ids, proposal, iteration, pressure, [])


class _Labels:
    """Archive labels, extended one evaluation at a time (greedy: earlier labels are final)."""

    def __init__(self, species, ltol: float, stol: float, angle_tol: float):
        self.dedup = Deduplicator(ltol=ltol, stol=stol, angle_tol=angle_tol, species=species)
        self.where: list[int] = []  # archive index of each deduplicated (valid) candidate
        self.labels = np.zeros(0, dtype=np.int64)

    def extend(self, ev: Evaluation) -> np.ndarray:
        start = len(self.labels)
        new = np.arange(start, start + ev.size, dtype=np.int64)  # invalid: their own label
        idx = np.flatnonzero(ev.ok)
        if len(idx):
            sub = self.dedup.add(ev.crystals.take(idx))
            self.where.extend((start + idx).tolist())
            new[idx] = np.asarray(self.where, dtype=np.int64)[sub]
        self.labels = np.concatenate([self.labels, new])
        return self.labels


def _dof_args(cell_filter: str | None, dofs: Dofs | None) -> dict:
    """The relaxation's DOF keywords: ``dofs`` when given (``cell_filter`` unused), else the
    cell filter."""
    return dict(cell_filter=cell_filter) if dofs is None else dict(cell_filter=None, dofs=dofs)


def _reference(
    reference: Any, oracle: Oracle, *, fmax, cell_filter, pressure, max_steps, dofs=None
):
    """The reference as a batch of one, relaxed on the oracle potential (not counted)."""
    if isinstance(reference, (str, os.PathLike)):
        ref = read(reference)
    elif isinstance(reference, Crystals):
        ref = reference
    else:
        ref = from_ase([reference], source="reference")
    ref = ref.take(np.asarray([0]))
    res = relax(
        ref,
        oracle.potential,
        fmax=fmax,
        pressure=pressure,
        max_steps=max_steps,
        **_dof_args(cell_filter, dofs),
    )
    n = int(np.asarray(ref.mask).sum())
    vol = abs(float(np.linalg.det(np.asarray(res.crystals.lattice[0], np.float64))))
    return ref, (float(res.energy[0]) + pressure * vol) / n


def _match(reference_structures, crystals: Crystals, ltol, stol, angle_tol) -> bool:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    sm = StructureMatcher(ltol=ltol, stol=stol, angle_tol=angle_tol)
    found = to_pymatgen(crystals)[0]
    return any(bool(sm.fit(ref, found)) for ref in reference_structures)


def _settings_key(settings: dict) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def run(
    method: Method,
    composition: Any,
    oracle: Oracle | Any,
    *,
    db: str | os.PathLike,
    seed: int = 0,
    max_iterations: int | None = None,
    fmax: float = 0.01,
    cell_filter: str | None = "frechet",
    pressure: float = 0.0,
    max_steps: int = 1000,
    optimizer: str = "bfgs_linesearch",
    reference: Any = None,
    ltol: float = 0.2,
    stol: float = 0.3,
    angle_tol: float = 5.0,
    window: float = 0.1,
    max_atoms: int = 2048,
    stop_at_reference: bool = False,
    progress: bool = True,
    dofs: Dofs | None = None,
) -> SearchResult:
    """Run a search method on a composition with an oracle, into an ASE database; resumable.

    Args:
      method: a :class:`Method` (e.g. :func:`jaxcsp.search.random_search`).
      composition: unit-cell composition, ``"Si8"`` or ``{"Na": 4, "Cl": 4}``.
      oracle: an :class:`Oracle`, or a bare ``Potential`` (an oracle without budget or tiers).
      db: ASE database path or URL; rows are written as candidates finish; rerunning the same
        call resumes (the rows written before a kill as they were; see the module docstring).
      seed: integer seed of the search's ``jax.random`` key.
      max_iterations: stop after this many iterations (``None``: only the budget stops it;
        one of the two is required).
      fmax: oracle force threshold, eV/Å.
      cell_filter: ``"frechet"`` (variable cell, the default) or ``None`` (fixed cell).
      pressure: eV/Å³; candidates are ranked by enthalpy per atom ``(E + pV)/n``.
      max_steps: step cap per relaxation.
      optimizer: ``"bfgs_linesearch"``, ``"fire"`` or ``"lbfgs"``.
      reference: known ground truth (a structure file, ``Crystals`` or ``ase.Atoms``) for the
        metrics I_M,0, N_E and N_M; relaxed on the oracle potential first (not counted). A list
        or tuple of them is a degenerate ground truth (e.g. fcc and hcp under Lennard-Jones): a
        candidate matching any one matches, and the reference energy is the lowest of them.
      ltol, stol, angle_tol: ``StructureMatcher`` tolerances for deduplication and matching.
      window: N_low_E window, eV/atom.
      max_atoms: atom cap per relaxation batch.
      stop_at_reference: also stop at the end of the first iteration in which a candidate
        matches ``reference`` (a benchmark's "time to the ground truth"; needs ``reference``).
      progress: show a progress display (rich).
      dofs: a :class:`jaxcsp.optimize.Dofs` every relaxation (the oracle's, its tiers', the
        reference's) moves instead of ``cell_filter``'s, e.g. a new kind of degrees of freedom;
        ``cell_filter`` is then not used.

    Returns:
      :class:`SearchResult`.

    Raises:
      InvalidSearchError: bad composition, uncovered element, no compatible space group, a
        budget or ``max_iterations`` below one, neither given, or a non-positive ``fmax`` —
        all before any compute. JaxcspError: a database that holds another search.
    """
    if not isinstance(oracle, Oracle):
        oracle = Oracle(oracle)
    comp = check_setup(composition, oracle.potential)
    for t in oracle.tiers:
        check_setup(dict(comp), t.potential)
    if max_iterations is not None and (
        isinstance(max_iterations, bool)
        or int(max_iterations) != max_iterations
        or max_iterations < 1
    ):
        raise InvalidSearchError(
            f"must be a positive integer, got {max_iterations!r}", field="max_iterations"
        )
    if max_iterations is None and oracle.budget is None:
        raise InvalidSearchError(
            "give an oracle budget or max_iterations (the search would never stop)",
            field="budget",
        )
    if not (np.isfinite(fmax) and fmax > 0):
        raise InvalidSearchError(f"must be a positive number (eV/Å), got {fmax!r}", field="fmax")
    if stop_at_reference and reference is None:
        raise InvalidSearchError(
            "stop_at_reference needs a reference structure", field="stop_at_reference"
        )
    if dofs is not None:
        if not isinstance(dofs, Dofs):
            raise InvalidSearchError(
                f"must be a jaxcsp.optimize.Dofs, got {type(dofs).__name__}", field="dofs"
            )
        cell_filter = None  # the DOFs replace it
    elif cell_filter not in (None, "frechet"):
        raise InvalidSearchError(
            f"must be 'frechet' or None, got {cell_filter!r}", field="cell_filter"
        )
    t0 = time.perf_counter()
    con = connect_db(db)
    settings = dict(
        method=method.name,
        config=dict(method.config),
        composition=[list(x) for x in comp],
        seed=int(seed),
        oracle=oracle.name,
        tiers=[
            [t.name, getattr(t.potential, "name", "?"), t.fmax, t.max_steps] for t in oracle.tiers
        ],
        fmax=float(fmax),
        cell_filter=cell_filter if dofs is None else repr(dofs),
        pressure=float(pressure),
        max_steps=int(max_steps),
        optimizer=optimizer,
    )
    meta = dict(con.metadata)
    if "search" in meta and meta["search"] != json.loads(_settings_key(settings)):
        raise JaxcspError(
            f"{os.fspath(db)} holds a search with other settings ({meta['search']}); "
            "use another database to start a new search"
        )
    if "search" not in meta:
        con.metadata = dict(meta, search=json.loads(_settings_key(settings)))

    ref_structure = ref_energy = None
    if reference is not None:
        # several references: degenerate ground truths (LJ's fcc and hcp), any one matches
        refs = list(reference) if isinstance(reference, (list, tuple)) else [reference]
        ref_structure, energies = [], []
        for one in refs:
            ref_c, e_ref = _reference(
                one,
                oracle,
                fmax=fmax,
                cell_filter=cell_filter,
                pressure=pressure,
                max_steps=max_steps,
                dofs=dofs,
            )
            ref_structure.append(to_pymatgen(ref_c)[0])
            energies.append(e_ref)
        ref_energy = min(energies)

    key = jax.random.key(int(seed))
    state, proposal = method.init(key, comp)
    rep_match: dict[int, bool] = {}
    labels = np.zeros(0, np.int64)

    grouping = _Labels(atomic_numbers([e for e, _ in comp]), ltol, stol, angle_tol)
    matches = np.zeros(0, bool)
    display = _Display(progress, oracle.budget, max_iterations, method.name)
    try:
        while True:
            it = int(state.iteration)
            ev = evaluate(
                proposal,
                oracle,
                db=db,
                first_id=int(state.next_id),
                iteration=it,
                method=method.name,
                fmax=fmax,
                cell_filter=cell_filter,
                pressure=pressure,
                max_steps=max_steps,
                optimizer=optimizer,
                max_atoms=max_atoms,
                dofs=dofs,
            )
            archive = ev if state.archive is None else Evaluation.concatenate([state.archive, ev])
            new_labels = grouping.extend(ev)
            if ref_structure is not None:
                reps = np.unique(new_labels[archive.ok])
                for r in reps:
                    if int(r) not in rep_match:
                        rep_match[int(r)] = _match(
                            ref_structure,
                            archive.crystals.take(np.asarray([r])),
                            ltol,
                            stol,
                            angle_tol,
                        )
                matches = np.asarray(
                    [
                        archive.ok[k] and rep_match.get(int(new_labels[k]), False)
                        for k in range(archive.size)
                    ],
                    bool,
                )
            _annotate(
                con,
                archive,
                new_labels,
                matches if ref_structure is not None else None,
                start=len(labels),
            )
            labels = new_labels
            done_calls = int(state.oracle_calls) + int(np.asarray(ev.oracle_calls).sum())
            display.update(it + 1, done_calls, archive)
            stop = (
                (max_iterations is not None and it + 1 >= max_iterations)
                or (oracle.budget is not None and done_calls >= oracle.budget)
                or (stop_at_reference and bool(matches.any()))
                or proposal.final  # the method's own stopping criterion
            )
            if stop:
                state = record(state, ev)
                break
            state, proposal = method.step(state, ev)
    finally:
        display.close()

    assert state.archive is not None
    archive = state.archive
    mref = matches if ref_structure is not None else None
    metrics = search_metrics(
        archive, labels, matches_reference=mref, reference_energy=ref_energy, window=window
    )
    metrics["iterations"] = int(state.iteration)
    metrics["wall_s"] = time.perf_counter() - t0
    ranking = rank(archive, labels, matches_reference=mref)
    return SearchResult(state, labels, mref, ref_energy, ranking, metrics, os.fspath(db))


def _annotate(con, archive: Evaluation, labels, matches, *, start: int) -> None:
    """Write ``oracle_calls``, ``unique``, ``duplicate_of``, ``matches_reference`` and
    ``enthalpy_per_atom`` into the rows of archive entries ``start..`` (earlier entries'
    labels never change: deduplication is greedy in id order)."""
    ids = np.asarray(archive.ids)
    rows = _read_rows(con, ids[start:]) if archive.size > start else {}
    h = np.asarray(archive.enthalpy_per_atom)
    for k in range(start, archive.size):
        r = rows[int(ids[k])]
        kv: dict[str, int | float | bool] = dict(
            oracle_calls=int(np.asarray(archive.oracle_calls)[k]),
            unique=bool(archive.ok[k] and labels[k] == k),
            duplicate_of=int(ids[labels[k]]),
        )
        if np.isfinite(h[k]):
            kv["enthalpy_per_atom"] = float(h[k])
        if matches is not None:
            kv["matches_reference"] = bool(matches[k])
        con.update(r.id, **kv)


class _Display:
    """A rich progress display: oracle calls against the budget (or iterations), best energy."""

    def __init__(self, enabled: bool, budget, max_iterations, name: str):
        self.progress = None
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self.by_calls = budget is not None
        total = budget if self.by_calls else max_iterations
        self.progress = Progress(
            "[bold]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            "{task.fields[info]}",
            TimeElapsedColumn(),
            transient=False,
        )
        self.progress.start()
        unit = "oracle calls" if self.by_calls else "iterations"
        self.task = self.progress.add_task(f"search ({name}, {unit})", total=total, info="")

    def update(self, iterations: int, calls: int, archive: Evaluation) -> None:
        if self.progress is None:
            return
        h = np.asarray(archive.enthalpy_per_atom)
        best = np.nanmin(h) if np.isfinite(h).any() else float("nan")
        done = calls if self.by_calls else iterations
        self.progress.update(
            self.task,
            completed=min(done, self.progress.tasks[0].total or done),
            info=f"it {iterations}  {archive.size} structures  best {best:.4f} eV/atom",
        )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
