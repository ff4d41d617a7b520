"""A real search, small: storage, oracle counting, resume, ranking and the CLI on it.

One random search (Si8, Stillinger-Weber, 2 iterations of 8 candidates, variable cell) is run
once for the module; the tests read its result and database. The long acceptance runs (three
seeds finding diamond at the default budget, LJ Ar8, kill -9 and resume in a subprocess) are in
``tests/test_search_slow.py`` (``pytest -m slow -k search``).
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxcsp as jc
from jaxcsp.errors import JaxcspError

pytestmark = pytest.mark.xdist_group("search_run")

DIAMOND = "jaxcsp/data/structures/si_diamond.cif"
KW = dict(seed=3, max_iterations=2, reference=DIAMOND, progress=False)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    db = tmp_path_factory.mktemp("search") / "si8.db"
    method = jc.search.random_search(8)
    oracle = jc.search.Oracle(jc.potentials.stillinger_weber(), budget=100_000)
    result = jc.search.run(method, "Si8", oracle, db=db, **KW)
    return method, oracle, result, db


def test_every_candidate_is_one_row_with_its_key_value_pairs(searched):
    _, _, result, db = searched
    rows = list(jc.io.connect_db(db).select())
    ids = sorted(r.input_id for r in rows)
    assert ids == list(range(16))
    for r in rows:
        assert r.method == "random" and r.iteration == r.input_id // 8
        for key in ("energy_per_atom", "oracle_calls", "unique", "matches_reference"):
            assert key in r.key_value_pairs, key
        if r.status in ("converged", "max_steps"):
            n = r.natoms
            assert r.energy_per_atom == pytest.approx(r.energy / n, rel=1e-12)
            assert r.enthalpy_per_atom == pytest.approx(r.energy / n, rel=1e-12)  # p = 0
    assert result.metrics["n_evaluated"] == 16


def test_archive_holds_the_relaxed_structures_of_the_rows(searched):
    _, _, result, db = searched
    rows = {r.input_id: r for r in jc.io.connect_db(db).select()}
    archive = result.state.archive
    for k, cid in enumerate(np.asarray(archive.ids)):
        a = rows[int(cid)].toatoms()
        n = len(a)
        np.testing.assert_allclose(
            np.asarray(archive.crystals.lattice[k]), a.cell.array, atol=1e-12
        )
        np.testing.assert_allclose(
            np.asarray(archive.crystals.frac[k, :n]), a.get_scaled_positions(wrap=False), atol=1e-9
        )
        assert float(archive.energy[k]) == pytest.approx(rows[int(cid)].energy, abs=1e-12)


def test_oracle_calls_are_the_relaxations_force_calls(searched):
    _, _, result, db = searched
    rows = {r.input_id: r for r in jc.io.connect_db(db).select()}
    per_row = np.asarray([rows[i].force_calls for i in range(16)])
    assert (per_row > 0).all()
    np.testing.assert_array_equal(np.asarray(result.state.archive.oracle_calls), per_row)
    assert [rows[i].oracle_calls for i in range(16)] == per_row.tolist()
    assert result.metrics["oracle_calls"] == int(per_row.sum())
    assert int(result.state.oracle_calls) == int(per_row.sum())


def test_stored_rows_are_minima_of_the_oracle(searched):
    """Stored structures, recomputed from the rows: energy and forces as stored, converged
    (the potential itself is checked against jax-md in test_potentials_reference.py).

    Convergence is tested, as ASE's ``FrechetCellFilter`` tests it, on the gradient of the
    atoms' positions in the *undeformed* cell (the stored ``max_force``, below fmax 0.01): the
    Cartesian forces are that gradient times the inverse deformation, so a cell that shrank
    from its start converges with Cartesian forces somewhat above fmax (0.0112 eV/Å for one
    structure here), never far above.
    """
    _, oracle, _, db = searched
    rows = list(jc.io.connect_db(db).select("status=converged"))
    assert rows
    atoms = [r.toatoms() for r in rows]
    res = jc.calculate(oracle.potential, jc.io.from_ase(atoms))
    np.testing.assert_allclose(np.asarray(res.energy), [r.energy for r in rows], atol=1e-8)
    for k, (a, r) in enumerate(zip(atoms, rows, strict=True)):
        forces = np.asarray(res.forces[k])[: len(a)]
        np.testing.assert_allclose(forces, r.forces, atol=1e-8)
        assert r.max_force < 0.01
        assert np.linalg.norm(forces, axis=1).max() < 0.02


def test_labels_are_greedy_structure_matcher_groups(searched):
    """Labels equal a plain greedy grouping by StructureMatcher (every structure compared with
    every group's first member, in id order): the prefilter dropped no true match."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    _, _, result, _ = searched
    archive = result.state.archive
    ok = np.flatnonzero(archive.ok)
    structs = jc.io.to_pymatgen(archive.crystals.take(ok))
    sm = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5.0)
    reps: list[int] = []
    expected = {}
    for a in range(len(ok)):
        rep = next((r for r in reps if sm.fit(structs[r], structs[a])), None)
        if rep is None:
            reps.append(a)
            rep = a
        expected[int(ok[a])] = int(ok[rep])
    assert {int(k): int(result.labels[k]) for k in ok} == expected


def test_ranking_is_by_enthalpy_and_reference_is_matched_independently(searched):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    _, _, result, _ = searched
    h = [r["enthalpy_per_atom"] for r in result.ranking]
    assert h == sorted(h)
    assert sum(r["count"] for r in result.ranking) == result.metrics["n_valid"]
    assert len(result.ranking) == result.metrics["n_unique"]
    diamond = jc.io.to_pymatgen(jc.io.read(DIAMOND))[0]
    sm = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5.0)
    archive = result.state.archive
    for row in result.ranking:
        k = int(np.flatnonzero(np.asarray(archive.ids) == row["id"])[0])
        s = jc.io.to_pymatgen(archive.crystals.take(np.asarray([k])))[0]
        assert row["matches_reference"] == sm.fit(s, diamond), row
    # diamond under SW: -2ε per atom with ε = 2.1683 eV
    assert result.reference_energy == pytest.approx(-4.33660, abs=1e-4)


def test_rerun_resumes_without_oracle_calls_and_same_result(searched):
    method, oracle, result, db = searched
    n_rows = len(jc.io.connect_db(db))
    again = jc.search.run(method, "Si8", oracle, db=db, **KW)
    assert len(jc.io.connect_db(db)) == n_rows
    assert again.ranking == result.ranking
    np.testing.assert_array_equal(again.labels, result.labels)
    drop = ("wall_s",)
    assert {k: v for k, v in again.metrics.items() if k not in drop} == {
        k: v for k, v in result.metrics.items() if k not in drop
    }


def test_rerun_with_other_settings_is_refused(searched):
    method, oracle, _, db = searched
    with pytest.raises(JaxcspError, match="other settings"):
        jc.search.run(method, "Si8", oracle, db=db, **dict(KW, seed=4))


def test_dofs_reach_every_relaxation_of_the_search(tmp_path, monkeypatch):
    """``dofs=`` goes, in place of the cell filter, to the reference's relaxation and to the
    oracle's (spies stop the run there; the relaxations themselves are tested in
    tests/test_optimize_dofs.py) and into the stored settings; a non-Dofs is refused."""
    from jaxcsp.optimize import FrechetCell
    from jaxcsp.search import _driver

    class Stop(Exception):
        pass

    seen = []

    def spy(name):
        def call(*args, **kwargs):
            seen.append((name, kwargs.get("cell_filter"), kwargs.get("dofs")))
            raise Stop

        return call

    monkeypatch.setattr(_driver, "relax", spy("relax"))
    monkeypatch.setattr(_driver, "relax_stream", spy("relax_stream"))
    method, sw, dofs = jc.search.random_search(8), jc.potentials.stillinger_weber(), FrechetCell()
    kw = dict(seed=3, max_iterations=1, progress=False, dofs=dofs)
    with pytest.raises(Stop):
        jc.search.run(method, "Si8", sw, db=tmp_path / "a.db", reference=DIAMOND, **kw)
    with pytest.raises(Stop):
        jc.search.run(method, "Si8", sw, db=tmp_path / "b.db", **kw)
    assert seen == [("relax", None, dofs), ("relax_stream", None, dofs)]
    assert jc.io.connect_db(tmp_path / "a.db").metadata["search"]["cell_filter"] == "FrechetCell()"
    with pytest.raises(jc.search.InvalidSearchError, match="dofs"):
        jc.search.run(method, "Si8", sw, db=tmp_path / "c.db", **dict(kw, dofs="frechet"))


def test_cli_prints_ranked_table_and_metrics(searched, tmp_path, capsys):
    from jaxcsp.cli import main

    _, _, result, db = searched
    import shutil

    copy = tmp_path / "copy.db"
    shutil.copy(db, copy)
    png = tmp_path / "s.png"
    argv = ["search", "--db", str(copy), "--seed", "3", "--batch-size", "8"]
    argv += ["--max-iterations", "2", "--budget", "100000", "--reference", DIAMOND]
    assert main([*argv, "--plot", str(png), "--quiet"]) == 0
    out = capsys.readouterr().out
    best = result.ranking[0]
    assert f"{best['enthalpy_per_atom']:.5f}" in out and f"({best['spg']})" in out
    assert f"oracle calls {result.metrics['oracle_calls']}" in out
    assert "wall time" in out and f"N_unique {result.metrics['n_unique']}" in out
    assert png.stat().st_size > 10_000
