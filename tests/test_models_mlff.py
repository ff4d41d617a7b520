"""Learned force fields (jaxcsp.models.mlff): derivatives, invariances, training, uncertainty.

References: central finite differences of the energy (forces and stress), exact symmetry
operations (rotation, translation, permutation), Stillinger-Weber labels (the oracle the
ensemble learns), and the seed's uncertainty behaviour (U high away from the data, lower once
those structures are labelled).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mlff_reference import ENSEMBLE_FILE, N_TRAIN, dataset, labels, random_si8
from mlff_reference import train as train_as_shipped

import jaxcsp as jc
from jaxcsp.crystal import Crystals
from jaxcsp.errors import InvalidArgumentError, InvalidStructureError, JaxcspError
from jaxcsp.models import labelled_data, load_ensemble, save_ensemble, train_ensemble
from jaxcsp.runtime import CompileCounter


@pytest.fixture(scope="module")
def trained():
    """The shipped ensemble (``tests/mlff_reference.py``: trained on 16 random Si8 cells under
    Stillinger-Weber), its training data, and 16 held-out cells with their labels."""
    train, held, ref = dataset()
    return load_ensemble(ENSEMBLE_FILE), train, held, ref


def test_forces_and_stress_are_derivatives_of_the_energy(trained):
    ens = trained[0]
    pot = ens.potential()
    c = trained[2].take(np.arange(2))
    res = jc.calculate(pot, c)
    lat = np.asarray(c.lattice)
    cart = np.einsum("bni,bij->bnj", np.asarray(c.frac), lat)
    h = 1e-5

    def energy(cart_b, lat_b, b):
        frac = np.linalg.solve(lat_b.T, cart_b.T).T
        one = Crystals(
            lattice=jnp.asarray(lat_b[None]), frac=jnp.asarray(frac[None]),
            species=c.species[b : b + 1], mask=c.mask[b : b + 1],
        )  # fmt: skip
        return float(jc.calculate(pot, one).energy[0])

    for b in range(2):
        fd = np.zeros((3, 3))
        for i in range(3):
            for a in range(3):
                plus, minus = cart[b].copy(), cart[b].copy()
                plus[i, a] += h
                minus[i, a] -= h
                fd[i, a] = -(energy(plus, lat[b], b) - energy(minus, lat[b], b)) / (2 * h)
        np.testing.assert_allclose(np.asarray(res.forces[b, :3]), fd, rtol=1e-5, atol=1e-6)
        # stress: derivative with respect to a symmetric strain, per volume
        vol = abs(np.linalg.det(lat[b]))
        for a, bb in ((0, 0), (1, 2)):
            eps = np.zeros((3, 3))
            eps[a, bb] = eps[bb, a] = h / (1 if a == bb else 2)
            d = np.eye(3)
            ep = energy(cart[b] @ (d + eps), lat[b] @ (d + eps), b)
            em = energy(cart[b] @ (d - eps), lat[b] @ (d - eps), b)
            sd = (ep - em) / (2 * h) / vol
            assert float(res.stress[b, a, bb]) == pytest.approx(sd, rel=1e-5, abs=1e-8)


def test_float32_arithmetic_agrees_with_float64(trained):
    ens = trained[0]
    c = trained[2].take(np.arange(2))
    full = jc.calculate(ens.potential(), c)
    fast = jc.calculate(ens.with_compute_dtype("float32").potential(), c)
    assert fast.energy.dtype == full.energy.dtype == jnp.float64  # geometry and sums stay f64
    np.testing.assert_allclose(fast.energy, full.energy, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fast.forces, full.forces, atol=1e-4)
    assert not np.array_equal(np.asarray(fast.forces), np.asarray(full.forces))  # it is f32
    with pytest.raises(InvalidArgumentError, match="compute_dtype"):
        ens.with_compute_dtype("int8")


def test_energy_invariant_under_rotation_translation_permutation(trained):
    ens = trained[0]
    c = trained[2].take(np.arange(3))
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    perm = rng.permutation(8)
    moved = Crystals(
        lattice=jnp.asarray(np.asarray(c.lattice) @ q.T),
        frac=jnp.asarray((np.asarray(c.frac) + rng.uniform(size=(1, 1, 3)))[:, perm]),
        species=c.species[:, perm],
        mask=c.mask[:, perm],
    )
    a, b = ens.predict(c), ens.predict(moved)
    np.testing.assert_allclose(np.asarray(a.energy), np.asarray(b.energy), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(a.uncertainty), np.asarray(b.uncertainty), rtol=1e-6)
    # forces rotate with the crystal and follow the atoms
    fa = np.asarray(a.forces)[:, perm] @ q.T
    np.testing.assert_allclose(fa, np.asarray(b.forces), atol=1e-8)
    np.testing.assert_allclose(
        np.asarray(ens.features(c)), np.asarray(ens.features(moved)), rtol=1e-6, atol=1e-9
    )


def _held_out_errors(ens, held, ref):
    pred = ens.predict(held)
    f_rmse = float(np.sqrt(np.mean((np.asarray(pred.forces) - np.asarray(ref.forces)) ** 2)))
    f_rms = float(np.sqrt(np.mean(np.asarray(ref.forces) ** 2)))
    e_ref = np.asarray(ref.energy) / 8
    e_mae = float(np.mean(np.abs(np.asarray(pred.energy) / 8 - e_ref)))
    print(f"held-out force RMSE {f_rmse:.3f} eV/Å (label RMS {f_rms:.3f}); "
          f"energy MAE {e_mae:.4f} eV/atom (label std {e_ref.std():.4f})")  # fmt: skip
    assert f_rmse < 0.6 * f_rms
    assert e_mae < e_ref.std()
    # members are independent models: their predictions differ
    assert float(jnp.min(pred.energy_std)) > 0
    return pred


def test_trained_ensemble_predicts_held_out_labels(trained):
    ens, _, held, ref = trained
    _held_out_errors(ens, held, ref)


@pytest.mark.slow
def test_fresh_training_matches_the_shipped_ensemble(trained):
    """Training from scratch (as ``tests/data/make_mlff_ensemble.py`` does) learns the held-out
    labels, and predicts what the shipped ensemble predicts (float32 training: to 1e-3 eV/atom
    and 1e-2 eV/Å)."""
    shipped, data, held, ref = trained
    ens = train_as_shipped(data)
    pred = _held_out_errors(ens, held, ref)
    h = ens.history
    assert h.train_loss.shape[0] == 3 and np.all(h.epochs >= 1)
    assert np.all(h.val_loss[np.arange(3), h.best_epoch] <= h.val_loss[:, 0])
    ship = shipped.predict(held)
    np.testing.assert_allclose(np.asarray(pred.energy) / 8, np.asarray(ship.energy) / 8, atol=1e-3)
    np.testing.assert_allclose(np.asarray(pred.forces), np.asarray(ship.forces), atol=1e-2)


def test_retraining_in_the_same_bucket_compiles_nothing(trained):
    ens, train, _, _ = trained
    more = labelled_data(
        train.crystals.take(np.arange(N_TRAIN - 1)), train.energy[:-1], train.forces[:-1],
        train.stress[:-1],
    )  # fmt: skip
    # a first call in this test (the suite may have released compiled programs since the
    # fixture trained), then a second with other data of the same bucket and other settings
    train_ensemble(jax.random.key(4), more, ensemble=ens, max_epochs=1, patience=1)
    more = labelled_data(
        train.crystals.take(np.arange(N_TRAIN - 2)), train.energy[:-2], train.forces[:-2],
        train.stress[:-2],
    )  # fmt: skip
    with CompileCounter() as cc:
        again = train_ensemble(jax.random.key(5), more, ensemble=ens, max_epochs=3, patience=2,
                               learning_rate=1e-3)  # fmt: skip
    assert cc.count == 0
    assert again.num_members == 3
    h = again.history
    assert h.train_loss.shape == (3, 3) and np.all((h.epochs >= 1) & (h.epochs <= 3))
    assert h.n_train + h.n_val == N_TRAIN - 2


@pytest.mark.slow  # 30 epochs of retraining: about 40 s at the suite's XLA flags
def test_uncertainty_rises_away_from_the_data_and_falls_once_labelled(trained):
    ens, train, held, _ = trained
    # far from the data: the same kind of cells squeezed to 75 % of their length
    far = random_si8(7, 16)
    far = Crystals(lattice=far.lattice * 0.75, frac=far.frac, species=far.species, mask=far.mask)
    u_near = float(np.median(np.asarray(ens.predict(held).uncertainty)))
    u_far = float(np.median(np.asarray(ens.predict(far).uncertainty)))
    far_data, _ = labels(far)
    from jaxcsp.crystal import concatenate

    both = labelled_data(
        concatenate([train.crystals, far]),
        jnp.concatenate([train.energy, far_data.energy]),
        jnp.concatenate([train.forces, far_data.forces]),
        jnp.concatenate([train.stress, far_data.stress]),
    )
    # warm start in the same size bucket (32): the training program is reused
    after = train_ensemble(
        jax.random.key(9), both, ensemble=ens, max_epochs=30, patience=10, learning_rate=3e-3
    )
    u_after = float(np.median(np.asarray(after.predict(far).uncertainty)))
    print(f"median U: held-out {u_near:.3f}, squeezed {u_far:.3f}, squeezed after labels "
          f"{u_after:.3f}")  # fmt: skip
    assert u_far > u_near
    assert u_after < u_far


def test_relax_stops_where_the_ensemble_is_unsure(trained):
    from jaxcsp.optimize import relax

    ens = trained[0]
    pot = ens.potential()
    c = trained[2].take(np.arange(4))
    u0 = np.asarray(ens.predict(c).uncertainty)
    # a threshold between the structures' starting uncertainties: those above do not move,
    # those below stop (if they stop on it) at a point still below it
    thr = float(np.median(u0))
    res = relax(c, pot, fmax=0.05, cell_filter="frechet", max_steps=20, max_uncertainty=thr)
    names = res.status_names
    u_end = np.asarray(ens.predict(res.crystals).uncertainty)
    for b in range(4):
        if u0[b] > thr:
            assert names[b] == "uncertain" and int(res.steps[b]) == 0
            np.testing.assert_allclose(
                np.asarray(res.crystals.frac[b]), np.asarray(c.frac[b]), atol=1e-12
            )
        else:
            assert u_end[b] <= thr * (1 + 1e-9)
    assert "uncertain" in names


def _strained_diamond_and_held_out(trained):
    c = jc.io.read("jaxcsp/data/structures/si_diamond.cif")
    c = c.replace(lattice=c.lattice * 1.05)  # every force vanishes by symmetry
    return jc.crystal.concatenate([c, trained[2].take(np.arange(3))])


def test_a_force_floor_makes_u_meaningful_where_forces_vanish_by_symmetry(trained):
    """Strained diamond: the seed's ``U`` is round-off over round-off (about 7 here); with the
    floor at the relaxation's threshold it is ~1e-10, and elsewhere the floor changes nothing."""
    ens = trained[0]
    c = _strained_diamond_and_held_out(trained)
    pred = ens.predict(c)
    assert float(jnp.abs(pred.forces[0]).max()) < 1e-10 and float(pred.uncertainty[0]) > 0.5
    floored = ens.potential(force_floor=0.05)
    u = np.asarray(jax.jit(floored.uncertainties)(c, ens._neighbors(c)))
    assert u[0] < 1e-6
    np.testing.assert_allclose(u[1:], np.asarray(pred.uncertainty[1:]), rtol=1e-6)
    with pytest.raises(InvalidArgumentError, match="force_floor"):
        ens.potential(force_floor=float("nan"))


@pytest.mark.slow  # two guarded relaxation programs of the ensemble: about 14 s
def test_with_the_floor_a_symmetric_start_relaxes_its_cell(trained):
    """Without the floor the guard stops the strained diamond before its first step; with it
    the cell relaxes (converges, about 1.8 eV lower)."""
    from jaxcsp.optimize import relax

    ens = trained[0]
    c = _strained_diamond_and_held_out(trained)
    kw = dict(fmax=0.05, cell_filter="frechet", max_steps=20, max_uncertainty=0.5)
    stuck = relax(c, ens.potential(), **kw)
    moved = relax(c, ens.potential(force_floor=0.05), **kw)
    assert stuck.status_names[0] == "uncertain" and int(stuck.steps[0]) == 0
    assert moved.status_names[0] == "converged" and int(moved.steps[0]) > 0
    assert float(moved.energy[0]) < float(stuck.energy[0]) - 1.0  # eV


@pytest.mark.slow  # two more relaxation programs of the ensemble (unguarded, guarded): about 20 s
def test_a_guard_that_never_fires_changes_nothing(trained):
    from jaxcsp.optimize import relax

    ens = trained[0]
    pot = ens.potential()
    c = trained[2].take(np.arange(4))
    free = relax(c, pot, fmax=0.05, cell_filter="frechet", max_steps=20)
    loose = relax(c, pot, fmax=0.05, cell_filter="frechet", max_steps=20, max_uncertainty=1e9)
    np.testing.assert_array_equal(np.asarray(free.steps), np.asarray(loose.steps))
    np.testing.assert_allclose(np.asarray(free.energy), np.asarray(loose.energy), rtol=1e-12)


def test_checkpoint_round_trip(trained, tmp_path):
    ens = trained[0]
    path = tmp_path / "ens.msgpack"
    save_ensemble(path, ens)
    back = load_ensemble(path)
    c = trained[2].take(np.arange(2))
    np.testing.assert_array_equal(
        np.asarray(ens.predict(c).energy), np.asarray(back.predict(c).energy)
    )
    assert back.species == ens.species and back.config == ens.config
    (tmp_path / "bad").write_bytes(b"not msgpack")
    with pytest.raises(JaxcspError, match="bad"):
        load_ensemble(tmp_path / "bad")


def test_bad_input_gets_clear_errors(trained):
    from jaxcsp.optimize import relax

    ens, train, _, _ = trained
    ge = Crystals(
        lattice=train.crystals.lattice[:2], frac=train.crystals.frac[:2],
        species=jnp.where(train.crystals.mask[:2], 32, 0), mask=train.crystals.mask[:2],
    )  # fmt: skip
    with pytest.raises(InvalidStructureError, match="structure 0"):
        ens.predict(ge)
    e = np.asarray(train.energy).copy()
    e[3] = np.nan
    with pytest.raises(InvalidStructureError, match=r"structure 3.*energy") as err:
        labelled_data(train.crystals, e, train.forces, train.stress)
    assert err.value.index == 3 and err.value.field == "energy"
    with pytest.raises(InvalidArgumentError, match="uncertainty_fn"):
        relax(train.crystals.take(np.arange(2)), jc.potentials.stillinger_weber(),
              max_uncertainty=0.5)  # fmt: skip
    with pytest.raises(InvalidStructureError, match="no labelled"):
        labelled_data(train.crystals.take(np.arange(0)), [], np.zeros((0, 8, 3)),
                      np.zeros((0, 3, 3)))  # fmt: skip
