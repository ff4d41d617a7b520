"""Factorization machine: formula, QUBO, one-hot penalty, training, checkpoints."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcsp.errors import InvalidArgumentError, JaxcspError
from jaxcsp.models import (
    FactorizationMachine,
    FMModel,
    fm_coefficients,
    fm_to_qubo,
    load_fm,
    one_hot_penalty,
    qubo_energy,
    save_fm,
    train_fm,
)
from jaxcsp.runtime import CompileCounter


def _random_model(rng, m, k, *, y_mean=-3.0, y_std=2.5):
    params = {
        "b": jnp.asarray(rng.normal()),
        "h": jnp.asarray(rng.normal(size=m)),
        "w": jnp.asarray(rng.normal(size=(k, m))),
    }
    return FMModel(params, y_mean, y_std, k, m)


def _all_states(m):
    return np.array(list(itertools.product([0.0, 1.0], repeat=m)))


def test_fm_equals_naive_pairwise_sum():
    rng = np.random.default_rng(0)
    m, k = 7, 3
    fm = FactorizationMachine(num_bits=m, rank=k)
    variables = fm.init(jax.random.key(0), jnp.zeros((m,)))
    p = {
        "b": jnp.asarray(rng.normal()),
        "h": jnp.asarray(rng.normal(size=m)),
        "w": jnp.asarray(rng.normal(size=(k, m))),
    }
    assert jax.tree.map(jnp.shape, variables["params"]) == jax.tree.map(jnp.shape, p)
    x = rng.normal(size=(5, m))  # real-valued inputs too: the identity holds for any x
    x[:3] = rng.integers(0, 2, (3, m))
    w = np.asarray(p["w"])
    naive = float(p["b"]) + x @ np.asarray(p["h"])
    for i in range(m):
        for j in range(i + 1, m):
            naive = naive + (w[:, i] @ w[:, j]) * x[:, i] * x[:, j]
    got = fm.apply({"params": p}, x)
    np.testing.assert_allclose(got, naive, rtol=1e-12, atol=1e-12)
    model = FMModel(p, 0.0, 1.0, k, m)
    np.testing.assert_allclose(model.predict(x[:3]), naive[:3], rtol=1e-12, atol=1e-12)


def test_fm_to_qubo_equals_predict_exhaustively():
    rng = np.random.default_rng(1)
    model = _random_model(rng, 10, 4)
    offset, h, J = fm_to_qubo(model)
    assert h.shape == (10,) and J.shape == (10, 10)
    np.testing.assert_array_equal(np.tril(np.asarray(J)), 0.0)  # strictly upper triangular
    x = _all_states(10)
    np.testing.assert_allclose(qubo_energy(offset, h, J, x), model.predict(x), rtol=1e-12)
    # the factored form of the same FM (the input of anneal_fm) agrees too
    off2, h2, w2 = fm_coefficients(model)
    _, _, J2 = fm_to_qubo((off2, h2, w2))
    np.testing.assert_allclose(J2, J, rtol=1e-12)
    # a general (non-triangular) J: qubo_energy symmetrises and folds the diagonal
    sym = np.asarray(J) * 0.5
    sym = sym + sym.T + np.diag(rng.normal(size=10))
    ref = qubo_energy(offset, h + np.diag(sym), np.triu(sym + sym.T - 2 * np.diag(np.diag(sym))), x)
    np.testing.assert_allclose(qubo_energy(offset, h, sym, x), ref, rtol=1e-12)


def test_one_hot_penalty_zero_exactly_on_feasible_states():
    groups = [np.array([0, 1, 2]), np.array([3, 4]), np.array([6, 7, 5])]
    strength = np.array([1.5, 0.5, 2.0])
    offset, h, J = one_hot_penalty(groups, strength, num_bits=9)
    assert h.shape == (9,) and J.shape == (9, 9)
    x = _all_states(9)
    pen = np.asarray(qubo_energy(offset, h, J, x))
    counts = np.stack([x[:, g].sum(1) for g in groups], axis=1)
    ref = ((counts - 1) ** 2) @ strength
    np.testing.assert_allclose(pen, ref, atol=1e-12)
    feasible = np.all(counts == 1, axis=1)
    assert np.all(pen[feasible] == 0.0)
    assert np.all(pen[~feasible] >= strength.min() - 1e-12)
    with pytest.raises(InvalidArgumentError):
        one_hot_penalty([[0, 0, 1]], 1.0)
    with pytest.raises(InvalidArgumentError):
        one_hot_penalty([[0, 12]], 1.0, num_bits=9)


def test_train_reaches_high_heldout_pcc_and_recompiles_nothing():
    rng = np.random.default_rng(2)
    m, n_train, n_test = 40, 1000, 200
    w = rng.normal(size=(3, m))
    h = rng.normal(size=m)
    x = rng.integers(0, 2, (n_train + n_test, m)).astype(float)
    y = 4.0 + 0.3 * (x @ h + 0.5 * ((x @ w.T) ** 2).sum(1) - 0.5 * x @ (w**2).sum(0))
    xt, yt, xe, ye = x[:n_train], y[:n_train], x[n_train:], y[n_train:]

    model = train_fm(jax.random.key(0), xt, yt, rank=8, max_epochs=120, patience=30)
    pcc = np.corrcoef(np.asarray(model.predict(xe)), ye)[0, 1]
    assert pcc > 0.9, pcc
    hist = model.history
    assert 1 <= hist.epochs <= 120 and 0 <= hist.best_epoch < hist.epochs
    assert hist.val_loss.shape == (hist.epochs,)
    assert hist.val_loss[hist.best_epoch] == np.nanmin(hist.val_loss)
    assert model.y_mean == pytest.approx(yt.mean()) and model.y_std == pytest.approx(yt.std())

    # same shapes, other hyperparameters, warm start on differently scaled energies:
    # nothing compiles, and the warm start is an exact change of standardisation
    y2 = 3.0 * yt + 7.0
    with CompileCounter() as cc:
        warm = train_fm(
            jax.random.key(1),
            xt,
            y2,
            alpha=1.0,
            beta=5.0,
            learning_rate=1e-14,
            max_epochs=3,
            patience=2,
            params=model,
        )
        pred = np.asarray(warm.predict(xe))
    assert cc.count == 0, f"{cc.count} programs compiled"
    np.testing.assert_allclose(pred, np.asarray(model.predict(xe)), rtol=1e-9, atol=1e-9)
    assert warm.y_mean == pytest.approx(y2.mean()) and warm.rank == 8
    assert warm.history.epochs <= 3

    # data that grew or shrank within its size bucket (1024 rows) compiles nothing either: a
    # search adding a batch per iteration does not recompile the fit every iteration
    with CompileCounter() as cc:
        train_fm(jax.random.key(2), x[:1017], y[:1017], max_epochs=3, params=model)
        train_fm(jax.random.key(3), xt[:900], yt[:900], max_epochs=3, params=model)
    assert cc.count == 0, f"{cc.count} programs compiled"


def test_padding_rows_change_nothing():
    """The fit of 150 samples is the same padded to 192 rows (its bucket) or to 384."""
    from jaxcsp.models.fm import _bucket, _fit

    assert [_bucket(n) for n in (1, 128, 129, 192, 193, 1000, 1025)] == [
        128,
        128,
        192,
        192,
        256,
        1024,
        1536,
    ]
    rng = np.random.default_rng(5)
    n, m = 150, 12
    x = rng.integers(0, 2, (n, m)).astype(float)
    z = rng.normal(size=n)
    p0 = {"b": jnp.zeros(()), "h": jnp.zeros(m), "w": jnp.asarray(0.1 * rng.normal(size=(3, m)))}
    hyper = (*(jnp.asarray(v) for v in (10.0, 1.0, 1e-2, 0.0)), jnp.asarray(40), jnp.asarray(40))
    out = []
    for n_pad in (192, 384):
        xp, zp = np.zeros((n_pad, m)), np.zeros(n_pad)
        xp[:n], zp[:n] = x, z
        best, epochs, best_epoch, _ = _fit(
            jax.random.key(0),
            jnp.asarray(xp),
            jnp.asarray(zp),
            jnp.asarray(n, jnp.int32),
            jnp.asarray(15, jnp.int32),
            p0,
            hyper,
            batch_size=32,
            history_len=64,
        )
        out.append((best, int(epochs), int(best_epoch)))
    (a, ea, ba), (b, eb, bb) = out
    assert (ea, ba) == (eb, bb) and ea == 40
    for k in ("b", "h", "w"):
        np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-9, atol=1e-12)


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.integers(0, 2, (64, 12)).astype(float)
    y = x @ rng.normal(size=12)
    model = train_fm(jax.random.key(2), x, y, rank=3, max_epochs=5, batch_size=16)
    path = tmp_path / "fm.msgpack"
    save_fm(path, model)
    loaded = load_fm(path)
    assert (loaded.rank, loaded.num_bits) == (3, 12)
    assert (loaded.y_mean, loaded.y_std) == (model.y_mean, model.y_std)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    np.testing.assert_array_equal(loaded.history.val_loss, model.history.val_loss)
    assert loaded.history.best_epoch == model.history.best_epoch
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(JaxcspError):
        load_fm(bad)
