"""Tests for relax_stream: kill/resume without loss or duplicates, no recompilation, bad inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from ase import Atoms
from relax_reference import relax_set

import jaxcsp as jc
from jaxcsp import potentials
from jaxcsp.optimize import relax, relax_stream
from jaxcsp.optimize._relax import _init, _run

LJ = dict(sigma=1.7, epsilon=0.1, cutoff=4.25)


def _small_lj(n=16):
    return [a for a in relax_set("lj") if len(a) <= 8][:n]


def _rows(db):
    return list(jc.io.connect_db(db).select(sort="id"))


def test_rows_match_batched_relax_and_no_recompilation(tmp_path):
    images = _small_lj(16)
    pot = potentials.lennard_jones(**LJ)
    db = tmp_path / "out.db"
    # 4 slots for 16 structures: every slot is refilled several times
    summary = relax_stream(images, pot, db=db, max_atoms=32, refill_every=3, progress=False)
    assert summary.written == 16 and summary.skipped == 0
    assert summary.compiles <= 2  # init + step compiled once for the class, then only reused
    rows = _rows(db)
    assert sorted(r.input_id for r in rows) == list(range(16))
    ref = relax(jc.io.from_ase(images), pot, fmax=0.01)
    by_id = {r.input_id: r for r in rows}
    for i in range(16):
        assert by_id[i].status == "converged"
        np.testing.assert_allclose(by_id[i].energy, float(ref.energy[i]), rtol=1e-8, atol=1e-8)
        assert by_id[i].force_calls == int(ref.force_calls[i])
        assert np.abs(by_id[i].forces).max() < 0.01
    # a second stream of the same class reuses the compiled programs
    before = _run._cache_size() + _init._cache_size()
    again = relax_stream(
        images[::-1], pot, db=tmp_path / "b.db", max_atoms=32, refill_every=3, progress=False
    )
    assert again.compiles == 0
    assert _run._cache_size() + _init._cache_size() == before


def test_bad_structures_become_failure_rows(tmp_path):
    images = _small_lj(6)
    nan = images[0].copy()
    nan.positions[0, 0] = np.nan
    overlap = images[1].copy()
    overlap.positions[1] = overlap.positions[0] + 1e-3  # 0.0017 Å apart: rejected, not relaxed
    singular = Atoms(
        "Ar2", positions=[[0, 0, 0], [1, 1, 1]], cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True
    )
    source = [*images, nan, overlap, singular]
    pot = potentials.lennard_jones(**LJ)
    summary = relax_stream(source, pot, db=tmp_path / "x.db", max_atoms=32, progress=False)
    rows = {r.input_id: r for r in _rows(tmp_path / "x.db")}
    assert sorted(rows) == list(range(len(source)))
    assert summary.written == len(source)
    assert rows[6].status == "invalid" and "field 'frac'" in rows[6].error
    assert rows[7].status == "invalid" and rows[7].steps == 0 and rows[7].force_calls == 0
    assert "input 7, structure 0, field 'frac': atoms 0 and 1 are 0.002 Å apart" in rows[7].error
    assert rows[8].status == "invalid" and "singular" in rows[8].error
    assert all(rows[i].status == "converged" for i in range(6))


def test_uncovered_element_raises_before_any_row_or_compile(tmp_path):
    """An element the potential lacks is a set-up mistake: it fails up front, naming the input,
    the element and what the potential covers, instead of ending as an 'invalid' row."""
    si = Atoms("Si2", positions=[[0, 0, 0], [1.4, 1.4, 1.4]], cell=np.eye(3) * 5.6, pbc=True)
    carbon = Atoms("C2", positions=[[0, 0, 0], [1, 1, 1]], cell=np.eye(3) * 4, pbc=True)
    before = _run._cache_size() + _init._cache_size()
    for ids, index in ((None, 1), ([7, 3], 3)):
        db = tmp_path / f"c{index}.db"
        with pytest.raises(jc.InvalidStructureError) as e:
            relax_stream(
                [si, carbon], potentials.stillinger_weber(), db=db, input_ids=ids, progress=False
            )
        assert e.value.index == index and e.value.field == "species"
        assert f"structure {index}, field 'species': element C (Z=6) at atom 0" in str(e.value)
        assert "(covers Si)" in str(e.value)
        assert not db.exists() or _rows(db) == []
    assert _run._cache_size() + _init._cache_size() == before


@pytest.mark.parametrize(
    "kwargs, argument, match",
    [
        ({"fmax": -1.0}, "fmax", r"fmax must be a positive finite number \(eV/Å\), got -1\.0"),
        ({"fmax": float("nan")}, "fmax", "got nan"),
        ({"max_steps": 0}, "max_steps", "max_steps must be an integer >= 1, got 0"),
        ({"max_atoms": 0}, "max_atoms", "max_atoms must be an integer >= 1"),
        ({"refill_every": 0}, "refill_every", "refill_every must be an integer >= 1"),
        ({"pressure": float("inf")}, "pressure", "pressure must be a finite number"),
    ],
)
def test_bad_arguments_raise_before_anything_is_read_or_written(tmp_path, kwargs, argument, match):
    pot = potentials.lennard_jones(**LJ)
    with pytest.raises(jc.errors.InvalidArgumentError, match=match) as e:
        relax_stream(tmp_path / "missing.extxyz", pot, db=tmp_path / "x.db", **kwargs)
    assert e.value.argument == argument and isinstance(e.value, ValueError)
    assert not (tmp_path / "x.db").exists()


def test_relax_reports_overlapping_atoms_invalid_without_moving_them():
    images = _small_lj(16)
    images[1] = images[1].copy()
    images[1].positions[1] = images[1].positions[0]
    pot = potentials.lennard_jones(**LJ)
    c = jc.io.from_ase(images)
    res = relax(c, pot, fmax=0.01)  # same shapes as the batched reference above: no new compile
    names = res.status_names
    assert names[1] == "invalid" and int(res.steps[1]) == 0
    assert all(n == "converged" for i, n in enumerate(names) if i != 1)
    np.testing.assert_array_equal(np.asarray(res.crystals.frac[1]), np.asarray(c.frac[1]))
    for kwargs, argument in (
        ({"fmax": 0.0}, "fmax"),
        ({"max_steps": 1.5}, "max_steps"),
        ({"chunk": 0}, "chunk"),
        ({"min_batch": -1}, "min_batch"),
        ({"symmetric": True, "symprec": -1e-4}, "symprec"),
    ):
        with pytest.raises(jc.errors.InvalidArgumentError) as e:
            relax(c, pot, **kwargs)
        assert e.value.argument == argument


SCRIPT = textwrap.dedent(
    """
    import sys, jax
    jax.config.update("jax_enable_x64", True)
    import ase.io
    from jaxcsp import potentials
    from jaxcsp.optimize import relax_stream
    images = ase.io.read(sys.argv[1], index=":")
    relax_stream(images, potentials.lennard_jones(sigma=1.7, epsilon=0.1, cutoff=4.25),
                 db=sys.argv[2], max_atoms=32, refill_every=3, progress=False,
                 max_steps=int(sys.argv[3]))
    """
)


def _count_read_only(db) -> int:
    """Rows in the database so far, read without ASE: ASE's ``connect`` creates the tables of
    an empty file, racing the writer that is creating them."""
    import sqlite3

    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return 0
    try:
        return int(con.execute("SELECT count(*) FROM systems").fetchone()[0])
    except sqlite3.Error:  # no table yet, or locked by the writer
        return 0
    finally:
        con.close()


def test_kill_and_resume_loses_and_duplicates_nothing(tmp_path):
    import ase.io

    images = [a for a in relax_set("lj") if len(a) <= 8][:24]
    src = tmp_path / "in.extxyz"
    ase.io.write(src, images)
    db = tmp_path / "out.db"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, str(script), str(src), str(db), "1000"], env=env)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if db.exists() and _count_read_only(db) >= 3:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = len(_rows(db))
    if first == len(images):
        pytest.skip("the run finished before it could be killed")
    assert proc.returncode == -signal.SIGKILL
    # the resume has the shapes of test_rows_match_batched_relax_and_no_recompilation (same
    # slots, same chunk): in this process it reuses that test's compiled programs
    summary = relax_stream(
        images, potentials.lennard_jones(**LJ), db=db, max_atoms=32, refill_every=3, progress=False
    )
    assert summary.skipped == first
    rows = _rows(db)
    ids = [r.input_id for r in rows]
    assert sorted(ids) == list(range(len(images)))  # every input exactly once
    assert all(r.status == "converged" for r in rows)


def test_input_hash_is_never_a_number():
    """ASE's database refuses a string value that parses as a number; a bare hex digest can
    (``29704083404169e7`` met in a soak run), the stored fingerprint never does."""
    from ase.build import bulk

    from jaxcsp.optimize._stream import _fingerprint

    for a in np.linspace(3.0, 6.0, 400):
        digest = _fingerprint(bulk("Si", "diamond", a=float(a)))
        with pytest.raises(ValueError):
            float(digest)


@pytest.mark.slow  # three working sizes (8, 4, 2), each compiled
def test_compaction_once_the_queue_is_dry_changes_no_row(tmp_path, monkeypatch):
    """The stream runs the same loop as ``relax``: slots are refilled while the queue lasts,
    then the running structures are compacted into smaller batches; no row changes."""
    from jaxcsp.optimize import _relax

    images = _small_lj(12)
    pot = potentials.lennard_jones(**LJ)
    kw = dict(max_atoms=64, refill_every=3, progress=False)  # 8 slots for 12 structures
    relax_stream(images, pot, db=tmp_path / "plain.db", min_batch=0, **kw)
    sizes = []
    gather = _relax._gather
    monkeypatch.setattr(_relax, "_gather", lambda t, i: sizes.append(len(i)) or gather(t, i))
    relax_stream(images, pot, db=tmp_path / "packed.db", min_batch=2, **kw)
    assert 4 in sizes and max(sizes) < 8  # compacted below the class's 8 slots
    plain = {r.input_id: r for r in _rows(tmp_path / "plain.db")}
    packed = {r.input_id: r for r in _rows(tmp_path / "packed.db")}
    assert sorted(plain) == sorted(packed) == list(range(12))
    for i in range(12):
        a, b = plain[i], packed[i]
        assert (a.status, a.steps, a.force_calls) == (b.status, b.steps, b.force_calls)
        np.testing.assert_allclose(b.energy, a.energy, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(b.positions, a.positions, rtol=0, atol=1e-9)
