"""``relax_stream``: continuous batching of many relaxations into an ASE database.

The scheduler of the seed's Algorithm 3 (Zhao et al., SI "Continuous scheduling"):

* Work is grouped into size classes (atom counts padded to 8, 16, 32, 64, ...) and processed
  largest class first (the seed sorts by size, largest first).
* Each class runs a **fixed-shape** batch of ``slots = max_atoms // N_class`` structures (the
  atom cap ``N_max`` of the seed's Eq. 1), so nothing recompiles while structures come and go.
* Every ``refill_every`` steps, finished slots (converged, out of steps, exploded, invalid) are
  written to the database and refilled from the queue; the refilled lanes are re-initialised
  with one evaluation of the whole fixed-shape batch and merged in, the others keep their state.
  Once the queue is empty, the running structures are compacted into smaller batches as in
  :func:`jaxcsp.optimize.relax` (``min_batch``). The loop is
  :func:`jaxcsp.optimize._relax.drive`, the one ``relax`` runs, with this class's queue as its
  source and the database as its sink.
* Each finished structure becomes one database row, committed on its own, with the final
  structure, energy/forces/stress (ASE ``SinglePointCalculator``) and key-value pairs
  ``input_id``, ``input_hash``, ``status``, ``converged``, ``steps``, ``force_calls``,
  ``max_force``, ``n_atoms``, ``energy_per_atom``. Inputs that cannot even be loaded (NaN
  coordinates, singular cells, atoms closer than 0.1 Å) get a row with ``status="invalid"``
  and an ``error`` message, and are not relaxed. An element the potential does not cover, in
  any input, and out-of-range arguments (``fmax <= 0``, ...) raise before anything is written
  or compiled.
* Rerunning with the same source and database resumes: inputs whose ``input_id`` is already in
  the database are skipped (and their ``input_hash`` must match, so a different source is not
  silently mixed in). A kill loses only the in-flight structures' progress, never a row, and
  produces no duplicates. The in-flight structures restart in other batches (other
  batch-mates, possibly another neighbor-list capacity), so their rows equal an uninterrupted
  run's up to floating-point rounding, not bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxcsp.crystal import Crystals, check_overlaps, concatenate, pad
from jaxcsp.errors import InvalidStructureError, JaxcspError, StructureFileError, check_real
from jaxcsp.io import connect_db, from_ase, to_ase
from jaxcsp.optimize._base import STATUS_NAMES, masked_fmax
from jaxcsp.optimize._relax import (
    Lanes,
    _check_args,
    _choose_dofs,
    _init,
    _run,
    crystals_from_dofs,
    drive,
    final_results,
    initial_dofs,
    make_data,
    split_options,
)
from jaxcsp.potentials import check_elements, check_species

__all__ = ["StreamSummary", "relax_stream", "size_class"]

#: Smallest padded atom count of a size class.
MIN_CLASS = 8


@dataclasses.dataclass(frozen=True)
class StreamSummary:
    """What one :func:`relax_stream` call did.

    Attributes:
      total: inputs in the source. skipped: already in the database (resumed).
      written: rows written by this call. statuses: count of each status among written rows.
      wall_s: seconds. compiles: number of (re)compilations of the jitted step per class.
    """

    total: int
    skipped: int
    written: int
    statuses: dict[str, int]
    wall_s: float
    compiles: int


def size_class(n: int) -> int:
    """Padded atom count of the class holding an ``n``-atom structure (8, 16, 32, ...)."""
    c = MIN_CLASS
    while c < n:
        c *= 2
    return c


def _load_source(source: Any) -> list:
    """Inputs as a list of ``ase.Atoms`` (one per input id), or raise for an unreadable source."""
    from ase import Atoms

    if isinstance(source, (str, os.PathLike)):
        import ase.io

        path = os.fspath(source)
        if not os.path.exists(path):
            raise StructureFileError("no such file", path=path)
        try:
            images = ase.io.read(path, index=":")
        except Exception as e:
            raise StructureFileError(f"could not parse ({type(e).__name__}: {e})", path=path) from e
        return list(images) if isinstance(images, list) else [images]
    if isinstance(source, Crystals):
        return to_ase(source)
    if isinstance(source, Atoms):
        return [source]
    return list(source)


def _fingerprint(atoms) -> str:
    """``"sha1:<16 hex digits>"`` of species, cell and positions (to 1e-8 Å).

    The prefix keeps the value a string for ASE's database, which refuses strings that parse
    as numbers (a bare digest such as ``29704083404169e7`` does).
    """
    h = hashlib.sha1()
    h.update(np.asarray(atoms.numbers, np.int64).tobytes())
    h.update(np.round(np.asarray(atoms.cell.array, np.float64), 8).tobytes())
    h.update(np.round(np.asarray(atoms.positions, np.float64), 8).tobytes())
    return "sha1:" + h.hexdigest()[:16]


def _done_ids(db) -> dict[int, str]:
    done = {}
    for row in db.select("input_id>=0", columns=["key_value_pairs"]):
        done[int(row.input_id)] = str(row.get("input_hash", ""))
    return done


def _write_row(db, atoms, kvp: dict, energy=None, forces=None, stress=None) -> None:
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = atoms.copy()
    if energy is not None:
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
    db.write(atoms, key_value_pairs=kvp)


@dataclasses.dataclass
class _Work:
    input_id: int
    atoms: Any
    crystal: Crystals  # batch of one, float64/float32 per x64
    natoms: int
    digest: str


def _prepare(
    images: list, potential, done: dict[int, str], db, ids: list[int], extra: dict[int, dict]
) -> tuple[list[_Work], int, int]:
    """Validate inputs one by one; write rows for invalid ones; return the remaining work.

    An element the potential does not cover, in any input, is a set-up mistake: it raises
    before any row is written. Overlapping atoms, NaN coordinates or a singular cell make
    only that input's row ``invalid``.
    """
    check_elements(potential, [a.numbers for a in images], ids=ids)
    work, skipped, written = [], 0, 0
    for i, atoms in zip(ids, images, strict=True):
        digest = _fingerprint(atoms)
        if i in done:
            if done[i] not in (digest, digest.removeprefix("sha1:")):  # bare: older databases
                raise JaxcspError(
                    f"database already holds input_id {i} with a different structure "
                    f"(hash {done[i]} != {digest}): is this the same source?"
                )
            skipped += 1
            continue
        try:
            c = from_ase(atoms, source=f"input {i}")
            check_species(potential, c, source=f"input {i}")
            check_overlaps(c, source=f"input {i}")
        except InvalidStructureError as e:
            _write_row(
                db,
                atoms,
                dict(
                    extra.get(i, {}),
                    input_id=i,
                    input_hash=digest,
                    status="invalid",
                    converged=False,
                    steps=0,
                    force_calls=0,
                    error=str(e)[:500],
                ),
            )
            written += 1
            continue
        work.append(_Work(i, atoms, c, len(atoms), digest))
    return work, skipped, written


class _ClassSource:
    """The :func:`~jaxcsp.optimize._relax.drive` source of one size class: its queue, in order."""

    def __init__(self, queue: list[_Work], n_pad: int, dofs: Any, pressure: float):
        self.queue = list(queue)
        self.n_pad, self.dofs, self.pressure = n_pad, dofs, pressure
        # neighbor shapes from every structure of the class, so refills fit
        self.hint = concatenate([pad(w.crystal, n_pad) for w in self.queue])

    def __len__(self) -> int:
        return len(self.queue)

    def take(self, n: int) -> tuple[list[int], Lanes | None]:
        jobs, self.queue = self.queue[:n], self.queue[n:]
        if not jobs:
            return [], None
        batch = concatenate([pad(w.crystal, self.n_pad) for w in jobs])
        x0, row_mask = initial_dofs(batch, self.dofs)
        data = make_data(batch, pressure=self.pressure)
        invalid = jnp.zeros(len(jobs), bool)
        return [w.input_id for w in jobs], Lanes(x0, row_mask, data, batch, invalid)


class _DatabaseSink:
    """Writes every finished lane as one database row (committed on its own)."""

    def __init__(self, con, jobs: dict[int, _Work], extra: dict[int, dict], potential, dofs):
        self.con, self.jobs, self.extra = con, jobs, extra
        self.potential, self.dofs = potential, dofs
        self.statuses: dict[str, int] = {}
        self.written = 0

    def __call__(self, keys, finished, state, lanes, spec) -> None:
        final = crystals_from_dofs(state.x, lanes.data, self.dofs)
        res = final_results(self.potential, final, spec)
        fm = np.asarray(masked_fmax(state.grad, state.row_mask))
        e, f, s = np.asarray(res.energy), np.asarray(res.forces), np.asarray(res.stress)
        status = np.asarray(state.status)
        steps, calls = np.asarray(state.steps), np.asarray(state.force_calls)
        for k in np.nonzero(finished)[0]:
            job = self.jobs[int(keys[k])]
            atoms = to_ase(final.take(jnp.asarray([k])))[0]
            name = STATUS_NAMES[int(status[k])]
            energy = float(e[k]) if np.isfinite(e[k]) else None
            voigt = s[k][[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            _write_row(
                self.con,
                atoms,
                dict(
                    self.extra.get(job.input_id, {}),
                    input_id=job.input_id,
                    input_hash=job.digest,
                    status=name,
                    converged=name == "converged",
                    steps=int(steps[k]),
                    force_calls=int(calls[k]),
                    max_force=float(fm[k]),
                    n_atoms=job.natoms,
                    energy_per_atom=(energy / job.natoms) if energy is not None else 0.0,
                ),
                energy=energy,
                forces=f[k][: job.natoms] if energy is not None else None,
                stress=voigt if energy is not None else None,
            )
            self.statuses[name] = self.statuses.get(name, 0) + 1
            self.written += 1


def _programs() -> int:
    """Programs compiled so far for the relaxation's two jitted functions."""
    # the size of a jitted function's cache is not in jax's typed interface
    return _run._cache_size() + _init._cache_size()  # type: ignore[attr-defined]


def relax_stream(
    source: Any,
    potential,
    *,
    db: str | os.PathLike,
    max_atoms: int = 2048,
    method: str = "bfgs_linesearch",
    fmax: float = 0.01,
    cell_filter: str | None = None,
    dofs: Any = None,
    max_steps: int = 1000,
    pressure: float = 0.0,
    refill_every: int = 10,
    min_batch: int = 32,
    neighbor_backend: str = "auto",
    progress: bool = True,
    input_ids: Any = None,
    key_value_pairs: dict | Sequence[dict] | None = None,
    min_energy_per_atom: float | None = -1000.0,
    mesh: Any = None,
    **options: Any,
) -> StreamSummary:
    """Relax every structure of ``source`` with continuous batching, writing rows as they finish.

    Args:
      source: a structure file (anything ASE reads), a ``Crystals`` batch, or a sequence of
        ``ase.Atoms``; input ``i`` is the ``i``-th structure.
      potential: any :class:`~jaxcsp.potentials.Potential`.
      db: ASE database path or URL (SQLite by default); created if missing, resumed if not.
      max_atoms: atom cap ``N_max`` per batch: a class of padded size ``n`` runs
        ``max(1, max_atoms // n)`` slots.
      method, fmax, cell_filter, dofs, max_steps, pressure: as in
        :func:`jaxcsp.optimize.relax`.
      refill_every: steps between refills (and database writes).
      min_batch: once a class's queue is empty and at most half of its slots still run, the
        running structures are compacted into a smaller batch (a power of two, at least
        this), as :func:`jaxcsp.optimize.relax` does; ``0`` keeps every class at its slots.
      neighbor_backend: neighbor-list backend.
      progress: show a progress bar with throughput.
      input_ids: one non-negative ``int`` per input, the ``input_id`` its row carries and
        resuming keys on (default ``0, 1, ...``); lets several calls share one database, as
        the search layer's iterations do.
      key_value_pairs: extra key-value pairs (str, bool or number) written into every row
        of this call, e.g. ``{"method": "random", "iteration": 3}``, or a sequence of such
        dicts, one per input.
      min_energy_per_atom: energy floor in eV/atom, as in :func:`jaxcsp.optimize.relax`: a
        structure that falls below it is written with status ``"exploded"`` at its last
        point above it; ``None``: no floor.
      mesh: a :func:`jaxcsp.parallel.batch_mesh`: every size class runs a multiple of the
        mesh size of slots (rounded up), split over its devices, so continuous batching keeps
        every device's slots filled. Rows do not depend on it (up to summation order).
      **options: optimizer hyperparameters.

    Returns:
      :class:`StreamSummary`.

    Raises:
      StructureFileError: unreadable source or unusable database path.
      InvalidArgumentError: a numeric argument out of range (``fmax``, ``max_steps``,
        ``pressure``, ``max_atoms``, ``refill_every``, ``min_batch``,
        ``min_energy_per_atom``), or an
        optimizer option the method does not take.
      InvalidStructureError: an input holds an element the potential does not cover
        (``index`` = its input id).
      JaxcspError: bad arguments, or a database that holds rows of a different source.
    """
    cell_filter = _choose_dofs(cell_filter, dofs)
    _check_args(
        method,
        cell_filter,
        fmax=fmax,
        max_steps=max_steps,
        pressure=pressure,
        max_atoms=max_atoms,
        refill_every=refill_every,
        min_batch=min_batch,
    )
    # checked before anything is read or written (the structures are read as the default
    # float dtype, float64 with x64)
    split_options(method, options, jnp.result_type(float))
    if min_energy_per_atom is not None:
        check_real("min_energy_per_atom", min_energy_per_atom, positive=False, unit="eV/atom")

    t0 = time.perf_counter()
    images = _load_source(source)
    con = connect_db(db)
    done = _done_ids(con)
    ids = list(range(len(images))) if input_ids is None else [int(i) for i in input_ids]
    if len(ids) != len(images) or len(set(ids)) != len(ids) or min(ids, default=0) < 0:
        raise JaxcspError(
            f"input_ids must be {len(images)} distinct non-negative integers, one per input"
        )
    if key_value_pairs is None or isinstance(key_value_pairs, dict):
        extra = {i: dict(key_value_pairs or {}) for i in ids}
    else:
        rows = list(key_value_pairs)
        if len(rows) != len(ids):
            raise JaxcspError(f"key_value_pairs has {len(rows)} dicts for {len(ids)} inputs")
        extra = {i: dict(kv) for i, kv in zip(ids, rows, strict=True)}
    work, skipped, written = _prepare(images, potential, done, con, ids, extra)
    statuses: dict[str, int] = {"invalid": written} if written else {}
    compiles = 0

    sink = _DatabaseSink(con, {w.input_id: w for w in work}, extra, potential, cell_filter)
    classes: dict[int, list[_Work]] = {}
    for w in work:
        classes.setdefault(size_class(w.natoms), []).append(w)
    for n_pad in sorted(classes, reverse=True):  # largest class first, as the seed does
        queue = classes[n_pad]
        before = _programs()
        drive(
            _ClassSource(queue, n_pad, cell_filter, pressure),
            sink,
            potential,
            slots=max(1, min(len(queue), max_atoms // n_pad)),
            method=method,
            options=options,
            mode=cell_filter,
            fmax=fmax,
            max_steps=max_steps,
            chunk=refill_every,
            neighbor_backend=neighbor_backend,
            progress=progress,
            desc=f"relax_stream ({method}, {n_pad} atoms)",
            min_batch=min_batch,
            mesh=mesh,
            min_energy_per_atom=min_energy_per_atom,
        )
        compiles += max(0, _programs() - before)
    written += sink.written
    for name, n in sink.statuses.items():
        statuses[name] = statuses.get(name, 0) + n
    return StreamSummary(
        total=len(images),
        skipped=skipped,
        written=written,
        statuses=statuses,
        wall_s=time.perf_counter() - t0,
        compiles=compiles,
    )
