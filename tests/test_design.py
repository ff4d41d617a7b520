"""Design stage: candidates, Algorithm 1 in batches, CN screening, ASE db + resume, plot, CLI."""

from __future__ import annotations

import ase.db
import jax
import numpy as np
import pytest

from jaxcsp.design import design, generate_candidates, loss_histogram, pyxtal_baseline

N, BATCH, STEPS = 8, 8, 40


def test_generate_candidates_is_deterministic_and_mixed():
    a = generate_candidates(jax.random.key(3), 12)
    b = generate_candidates(jax.random.key(3), 12)
    np.testing.assert_array_equal(a.spg, b.spg)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert np.asarray(a.num_atoms).tolist() == [4, 6, 8, 12] * 3
    assert len(np.unique(np.asarray(a.spg))) > 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("design")
    db, png = d / "out.db", d / "out.png"
    res = design(N, seed=5, db=db, plot=png, steps=STEPS, batch_size=BATCH, progress=False)
    return res, db, png


def test_design_writes_every_candidate(run):
    res, db, png = run
    assert png.exists() and png.stat().st_size > 10_000
    with ase.db.connect(db) as con:
        rows = list(con.select())
    assert len(rows) == N
    assert sorted(r.candidate for r in rows) == list(range(N))
    for r in rows:
        assert {"valid_env", "loss", "spg", "loss_initial", "valid_env_initial"} <= set(
            r.key_value_pairs
        )
        assert r.spg == res.spg[r.candidate]
        assert r.loss == pytest.approx(res.loss[r.candidate])
        assert bool(r.valid_env) == bool(res.valid[r.candidate])
    # the optimiser lowers the descriptor loss of every candidate that had any to lower
    assert np.all(res.loss <= res.loss_initial + 1e-9)
    assert np.median(res.loss) < np.median(res.loss_initial)
    assert res.n_valid_env == int(res.valid.sum())
    assert "N_valid_env" in res.summary()
    counts, edges = loss_histogram(res.loss)
    assert counts.sum() == N and len(edges) == len(counts) + 1


def test_design_resumes_from_db(run):
    res, db, _ = run
    again = design(N, seed=5, db=db, steps=STEPS, batch_size=BATCH, progress=False)
    assert again.resumed == N and again.seconds == 0.0
    np.testing.assert_allclose(again.loss, res.loss)
    np.testing.assert_array_equal(again.valid, res.valid)
    with ase.db.connect(db) as con:
        assert con.count() == N  # nothing written twice


def test_cli_design(tmp_path, capsys):
    from jaxcsp.cli import main

    db = tmp_path / "cli.db"
    rc = main(
        [
            "design",
            "--n",
            str(N),
            "--seed",
            "5",
            "--steps",
            str(STEPS),
            "--batch-size",
            str(BATCH),
            "--db",
            str(db),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "N_valid_env (CN=3)" in out and "loss histogram after" in out
    with ase.db.connect(db) as con:
        assert con.count() == N


def test_pyxtal_baseline_runs_on_candidates(run):
    res, _, _ = run
    small = [i for i in range(N) if res.num_atoms[i] == 4][:1]
    base = pyxtal_baseline(res.initial, small, progress=False)
    assert base["valid"].shape == (1,) and base["seconds"][0] > 0
    assert np.isfinite(base["loss"][0])
