"""``relax_stream``: continuous batching of many relaxations into an ASE database.

The scheduler of the seed's Algorithm 3 (Zhao et al., SI "Continuous scheduling"):

* Work is grouped into size classes (atom counts padded to 8, 16, 32, 64, ...) and processed
  largest class first (the seed sorts by size, largest first).
* Each class runs a **fixed-shape** batch of ``slots = max_atoms // N_class`` structures (the
  atom cap ``N_max`` of the seed's Eq. 1), so nothing recompiles while structures come and go.
* Every ``refill_every`` steps, finished slots (converged, out of steps, exploded, invalid) are
  written to the database and refilled from the queue; the refilled lanes are re-initialised
  with one evaluation of the whole fixed-shape batch and merged in, the others keep their state.
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

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp import parallel
from jaxcsp.crystal import Crystals, check_overlaps, concatenate, pad
from jaxcsp.errors import InvalidStructureError, JaxcspError, StructureFileError, check_real
from jaxcsp.io import connect_db, from_ase, to_ase
from jaxcsp.optimize._base import RUNNING, STATUS_NAMES, masked_fmax, select
from jaxcsp.optimize._relax import (
    _after_chunk,
    _below_floor_at_start,
    _check_args,
    _choose_dofs,
    _init,
    _run,
    _spec_for,
    crystals_from_dofs,
    final_results,
    initial_dofs,
    make_data,
    split_options,
)
from jaxcsp.potentials import check_elements, check_species
from jaxcsp.runtime import release_compiled_programs

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


def _lanes(batch: Crystals | None, items: list, n_pad: int, filler: Crystals) -> Crystals:
    """Host side: a fixed-shape batch with ``items[k]`` in lane ``k``.

    Lanes whose item is ``None`` keep ``batch``'s content (or the ``filler`` structure when
    building the first batch), so every lane always holds a valid crystal.
    """
    fields = ("lattice", "frac", "species", "mask")
    if batch is None:
        first = pad(filler, n_pad)
        leaves = {f: np.repeat(np.asarray(getattr(first, f)), len(items), axis=0) for f in fields}
    else:
        leaves = {f: np.array(getattr(batch, f)) for f in fields}
    for k, w in enumerate(items):
        if w is not None:
            one = pad(w.crystal, n_pad)
            for f in fields:
                leaves[f][k] = np.asarray(getattr(one, f))[0]
    return Crystals(**{f: jnp.asarray(v) for f, v in leaves.items()})


_merge = jax.jit(select)  # refilled lanes take the fresh state


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
        ``pressure``, ``max_atoms``, ``refill_every``, ``min_energy_per_atom``), or an
        optimizer option the method does not take.
      InvalidStructureError: an input holds an element the potential does not cover
        (``index`` = its input id).
      JaxcspError: bad arguments, or a database that holds rows of a different source.
    """

    def place(tree):
        return parallel.shard_batch(tree, mesh)

    cell_filter = _choose_dofs(cell_filter, dofs)
    _check_args(
        method,
        cell_filter,
        fmax=fmax,
        max_steps=max_steps,
        pressure=pressure,
        max_atoms=max_atoms,
        refill_every=refill_every,
    )
    # the structures are read as the default float dtype (float64 with x64)
    static, hyper = split_options(method, options, jnp.result_type(float))
    floor_per_atom = None
    if min_energy_per_atom is not None:
        floor_per_atom = float(check_real("min_energy_per_atom", min_energy_per_atom,
                                          positive=False, unit="eV/atom"))  # fmt: skip

    def _floor(data):  # (slots,) eV: the floor times each lane's atom count
        return floor_per_atom * jnp.sum(data.mask, axis=1).astype(data.lattice0.dtype)

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
    kw = dict(method=method, options=static, cell_filter=cell_filter, hyper=hyper)
    compiles = 0

    bar = None
    if progress and work:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(work), desc=f"relax_stream ({method})", unit="struct")

    classes: dict[int, list[_Work]] = {}
    for w in work:
        classes.setdefault(size_class(w.natoms), []).append(w)

    for n_pad in sorted(classes, reverse=True):
        queue = list(classes[n_pad])
        slots = parallel.padded_size(max(1, min(len(queue), max_atoms // n_pad)), mesh)
        filler = queue[0].crystal
        lanes: list[_Work | None] = [queue.pop(0) if queue else None for _ in range(slots)]
        batch = _lanes(None, lanes, n_pad, filler)
        # neighbor shapes from every structure of the class, so refills fit
        everyone = concatenate([pad(w.crystal, n_pad) for w in classes[n_pad]])
        growth = 1.0
        spec = _spec_for(potential, everyone, backend=neighbor_backend)
        before = _programs()

        def start(batch, spec):
            data = place(make_data(batch, pressure=pressure))
            x0, row_mask = place(initial_dofs(batch, cell_filter))
            st = _init(x0, row_mask, data, potential, spec, fmax, max_steps, **kw)
            if floor_per_atom is not None:
                st = _below_floor_at_start(st, _floor(data))
            return data, place(st)

        data, state = start(batch, spec)
        idle = jnp.asarray([w is None for w in lanes])
        state = place(state._replace(status=jnp.where(idle, 1, state.status)))
        while True:
            if bool(jnp.any(state.overflow)):
                growth *= 2.0
                spec = _spec_for(potential, batch, backend=neighbor_backend, growth=growth)
                data, fresh = start(batch, spec)
                # restart every lane of this batch with the larger shapes (deterministic)
                state = place(fresh._replace(status=jnp.where(idle, 1, fresh.status)))
                continue
            status = np.asarray(state.status)
            finished = [k for k, w in enumerate(lanes) if w is not None and status[k] != RUNNING]
            if finished:
                final = crystals_from_dofs(state.x, data, cell_filter)
                res = final_results(potential, final, spec)
                fm = np.asarray(masked_fmax(state.grad, state.row_mask))
                e = np.asarray(res.energy)
                f = np.asarray(res.forces)
                s = np.asarray(res.stress)
                steps = np.asarray(state.steps)
                calls = np.asarray(state.force_calls)

                for k in finished:
                    job = lanes[k]
                    assert job is not None  # only lanes that hold a structure finish
                    one = final.take(jnp.asarray([k]))
                    atoms = to_ase(one)[0]
                    name = STATUS_NAMES[int(status[k])]
                    energy = float(e[k]) if np.isfinite(e[k]) else None
                    voigt = s[k][[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
                    _write_row(
                        con,
                        atoms,
                        dict(
                            extra.get(job.input_id, {}),
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
                    statuses[name] = statuses.get(name, 0) + 1
                    written += 1
                    lanes[k] = queue.pop(0) if queue else None
                if bar is not None:
                    bar.update(len(finished))
                    bar.set_postfix(
                        rate=f"{bar.n / max(time.perf_counter() - t0, 1e-9):.1f}/s",
                        slots=slots,
                        n=n_pad,
                    )
                refill = [k for k in finished if lanes[k] is not None]
                idle = jnp.asarray([w is None for w in lanes])
                if refill:
                    batch = _lanes(
                        batch,
                        [lanes[k] if k in refill else None for k in range(slots)],
                        n_pad,
                        filler,
                    )
                    data, fresh = start(batch, spec)
                    mask = np.zeros(slots, bool)  # on the host: no program per refill count
                    mask[refill] = True
                    state = _merge(place(mask), fresh, state)
                state = place(state._replace(status=jnp.where(idle, 1, state.status)))
            if all(w is None for w in lanes):
                break
            sizes = _programs()
            if release_compiled_programs():  # near the map cap: cached programs were dropped
                compiles += sizes - before
                before = 0
            floor = None if floor_per_atom is None else _floor(data)
            new = _run(
                state, data, potential, spec, None, floor, n_steps=refill_every, guarded=False, **kw
            )  # guarded as relax passes it: one cache entry, programs shared with relax
            state, spec, growth = _after_chunk(
                state, new, data, potential, spec, growth, cell_filter, neighbor_backend
            )
        compiles += _programs() - before
    if bar is not None:
        bar.close()
    return StreamSummary(
        total=len(images),
        skipped=skipped,
        written=written,
        statuses=statuses,
        wall_s=time.perf_counter() - t0,
        compiles=compiles,
    )
