"""Active learning with ensembles as a search method (jaxcsp.search.active_learning)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxcsp as jc
from jaxcsp import search
from jaxcsp.io import connect_db

SI_DIAMOND = "jaxcsp/data/structures/si_diamond.cif"
TINY = dict(
    num_members=3, features=16, max_epochs=40, patience=10, learning_rate=2e-3,
    relax_steps=30, max_cycles=2, min_cycles=1, k=2, n_lowest=1,
)  # fmt: skip


def test_clusters_are_found_and_ranked_by_their_lowest_member():
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + 0.1 * rng.normal(size=(6, 2)) for c in centers] + [[[50.0, 50.0]]])
    labels = search.cluster_labels(x, eps=0.3)  # standardised units: the blobs are ~0.9 apart
    assert len(set(labels[:18])) == 3 and labels[18] == -1  # the far point is noise
    for b in range(3):
        assert len(set(labels[6 * b : 6 * b + 6])) == 1
    energy = np.arange(19, dtype=float)[::-1]  # later points lower
    low = search.lowest_clusters(labels, energy, 2)
    assert [i for i, _ in low] == [17, 11]
    assert low[0][1] == energy[17]
    # automatic eps follows the spread: the same three clusters
    auto = search.cluster_labels(x)
    assert len(set(auto[:18])) == 3


def test_bad_settings_are_refused():
    with pytest.raises(search.InvalidSearchError, match="n_search"):
        search.active_learning(0, 8, 4)
    with pytest.raises(search.InvalidSearchError, match="batch_size"):
        search.active_learning(8, 4, 8)
    with pytest.raises(search.InvalidSearchError, match="n_initial"):
        search.active_learning(8, 8, 4, n_initial=9)
    with pytest.raises(search.InvalidSearchError, match="max_uncertainty"):
        search.active_learning(8, 8, 4, max_uncertainty=-1)
    with pytest.raises(search.InvalidSearchError, match="compute_dtype"):
        search.active_learning(8, 8, 4, compute_dtype="float16")


@pytest.mark.slow
@pytest.mark.manual
def test_cycles_label_single_points_retrain_relax_and_validate(tmp_path):
    db = tmp_path / "al.db"
    m = search.active_learning(16, 32, 8, **TINY)
    sw = jc.potentials.stillinger_weber()
    r = search.run(m, "Si8", sw, db=db, max_iterations=10, reference=SI_DIAMOND, progress=False)
    report = r.state.population["report"]
    # iteration 0 labels, cycles 1 and 2 retrain + relax, the second ends in validation
    assert [c["cycle"] for c in report] == [1, 2]
    assert r.metrics["iterations"] == 3
    assert [c["labels"] for c in report] == [16, 24]  # n_initial = 2 batches, then 1
    archive = r.state.archive
    status = np.asarray(archive.status)
    single = status == search._base.STATUS_CODES["single_point"]
    # validation: the lowest structure of each of the (at most k) lowest clusters, and the
    # n_lowest lowest structures besides
    low = r.state.population["report"][-1]["lowest_clusters"]
    assert single.sum() == 24 and (~single).sum() == len(low) + 1
    # every label is one oracle call; validation relaxations count every force call
    calls = np.asarray(archive.oracle_calls)
    assert np.all(calls[single] == 1)
    assert r.metrics["oracle_calls"] == int(calls.sum())
    # the labels the method trained on are the oracle's forces and stress
    labels = archive.crystals.take(np.nonzero(single)[0])
    ref = jc.calculate(sw, labels)
    np.testing.assert_allclose(
        np.asarray(archive.forces)[single], np.asarray(ref.forces), rtol=1e-8, atol=1e-8
    )
    np.testing.assert_allclose(
        np.asarray(archive.stress)[single], np.asarray(ref.stress), rtol=1e-8, atol=1e-10
    )
    # rows carry the cycle and, for validation, the ensemble's prediction
    rows = list(connect_db(db).select(status="single_point"))
    assert len(rows) == 24 and {row.cycle for row in rows} == {0, 1}
    final = [row for row in connect_db(db).select() if row.get("status") != "single_point"]
    assert all(np.isfinite(row.predicted_energy_per_atom) for row in final)
    assert all(row.cycle == 2 for row in final)
    # the pools moved under the ensemble (or stopped on its uncertainty), none was dropped
    pop = r.state.population
    assert pop["search_pool"].batch_size == 16 and pop["train_pool"].batch_size == 32
    st = report[-1]["statuses"]
    assert sum(st.values()) == 48


def test_training_pool_labels_are_p1_cells_and_symmetric_pool_is_symmetric():
    import spglib

    m = search.active_learning(8, 16, 4, **TINY)
    state, proposal = m.init(jax.random.key(3), (("Si", 8),))
    assert not proposal.relax and proposal.size == 8  # n_initial = 2 * batch_size
    pop = state.population

    def groups(c):
        return [
            spglib.get_symmetry_dataset(
                (a.cell[:], a.get_scaled_positions(), a.numbers), symprec=1e-3
            ).number
            for a in jc.io.to_ase(c)
        ]

    assert max(groups(pop["search_pool"])) > 1
    # noise broke any accidental symmetry of the labelled cells
    assert groups(proposal.crystals) == [1] * 8
