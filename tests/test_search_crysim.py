"""The CRYSIM method on the search layer: data, model, annealing and decoding per iteration.

A small run (Si8, Stillinger-Weber, 32 initial single points, 2 CRYSIM iterations of 4
candidates, a 4x4x4 voxel grid) checked for the loop's bookkeeping; the search quality runs are
slow (``pytest -m slow``).
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxcsp as jc

pytestmark = pytest.mark.xdist_group("search_crysim")

KW = dict(seed=1, max_iterations=3, progress=False)
N0 = 32  # initial single points


def _method():
    return jc.search.crysim_search(N0, 4, ldr=4, num_sweeps=50, fm_epochs=30, num_replicas=16)


@pytest.fixture(scope="module")
def crysim_run(tmp_path_factory):
    db = tmp_path_factory.mktemp("crysim") / "si8.db"
    pot = jc.potentials.stillinger_weber()
    return jc.search.run(_method(), "Si8", pot, db=db, **KW), db, pot


def test_initial_data_are_single_points_then_relaxed_candidates(crysim_run):
    result, db, _ = crysim_run
    rows = sorted(jc.io.connect_db(db).select(), key=lambda r: r.input_id)
    assert len(rows) == N0 + 2 * 4
    assert {r.status for r in rows[:N0]} <= {"single_point", "exploded"}
    assert all(r.force_calls == 1 and r.steps == 0 for r in rows[:N0])
    assert {r.status for r in rows[N0:]} <= {"converged", "max_steps", "invalid"}
    assert all(r.method == "crysim" for r in rows)
    # single points are counted as oracle calls but never ranked
    assert result.metrics["oracle_calls"] == sum(r.force_calls for r in rows)
    assert all(r["id"] >= N0 for r in result.ranking)


def test_data_bits_describe_the_structures_and_energies_are_the_rows(crysim_run):
    result, db, _ = crysim_run
    pop = result.state.population
    enc = jc.search.crysim_encoding(
        "Si8", length_range=tuple(float(v) for v in pop["length_range"]), ldr=4
    )
    bits, energy = pop["bits"], pop["energy"]
    # iterations 0..1 are in the data (the last proposal awaits the next step)
    assert bits.shape == (N0 + 1 * 4, enc.num_bits)
    rows = sorted(jc.io.connect_db(db).select(), key=lambda r: r.input_id)
    for k in range(len(energy)):
        r = rows[k]
        if np.isfinite(energy[k]):
            assert energy[k] == pytest.approx(r.energy / r.natoms, rel=1e-12)
    # every data vector is feasible: exactly one bit in each one-hot segment
    for g in enc.one_hot_groups:
        assert (bits[:, g].sum(axis=1) == 1).all()
    # the annealed candidates are new vectors, distinct from each other
    assert len({row.tobytes() for row in bits[N0:]}) == len(bits[N0:])


def test_model_is_trained_on_the_data(crysim_run):
    from jaxcsp.models import FMModel

    result, _, _ = crysim_run
    pop = result.state.population
    fm = pop["fm"]
    model = FMModel(fm["params"], float(fm["y_mean"]), float(fm["y_std"]), 8, pop["bits"].shape[1])
    pred = np.asarray(model.predict(pop["bits"]))
    y = pop["energy"]
    ok = np.isfinite(y)
    r = np.corrcoef(pred[ok], y[ok])[0, 1]
    print(f"FM fit: correlation {r:.3f} on {ok.sum()} rows")
    assert r > 0.3  # it learned something of the energies


@pytest.mark.slow  # resume is checked on the random search in the default suite
def test_rerun_resumes_to_the_same_result(crysim_run):
    result, db, pot = crysim_run
    n = len(jc.io.connect_db(db))
    again = jc.search.run(_method(), "Si8", pot, db=db, **KW)
    assert len(jc.io.connect_db(db)) == n
    assert again.ranking == result.ranking
    np.testing.assert_array_equal(again.state.population["bits"], result.state.population["bits"])
