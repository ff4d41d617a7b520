"""Simulated annealing of QUBOs: dense and low-rank (FM) paths, one-hot groups."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcsp.errors import InvalidArgumentError
from jaxcsp.models import (
    anneal_fm,
    anneal_qubo,
    default_beta_range,
    fm_to_qubo,
    one_hot_penalty,
    qubo_energy,
)
from jaxcsp.runtime import CompileCounter

M_SMALL = 14
GROUPS = [np.arange(0, 3), np.arange(3, 7), np.arange(7, 9)]  # bits 9..13 are free
R = 16


def _states(m):
    return np.array(list(itertools.product([0.0, 1.0], repeat=m)))


def _feasible(x, groups):
    return np.all(np.stack([np.asarray(x)[:, g].sum(1) == 1 for g in groups], 1), axis=1)


@pytest.fixture(scope="module")
def small_fm():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, M_SMALL))
    h = rng.normal(size=M_SMALL)
    return (0.25, h, w)


def test_dense_finds_brute_force_optimum():
    rng = np.random.default_rng(1)
    m = 16
    J = np.triu(rng.normal(size=(m, m)), 1)
    h = rng.normal(size=m)
    x = _states(m)
    e = np.asarray(qubo_energy(0.5, h, J, x))
    opt = int(np.argmin(e))
    r = anneal_qubo(jax.random.key(0), 0.5, h, J, num_replicas=R, num_sweeps=200)
    assert r.states.shape == (R, m) and r.states.dtype == jnp.int8
    assert r.feasible is None and r.penalty is None
    np.testing.assert_array_equal(r.states[r.best], x[opt])
    assert float(r.energies[r.best]) == pytest.approx(e[opt], abs=1e-9)
    np.testing.assert_allclose(r.energies, qubo_energy(0.5, h, J, r.states), atol=1e-9)
    np.testing.assert_allclose(r.beta_range, default_beta_range(h, J), rtol=1e-12)


def test_dense_finds_planted_optimum_of_large_qubo():
    # fields pull every bit to x*, couplings too weak to compete (Σ_j |Q_ij| < 1 for every
    # bit): any set S of flips away from x* costs at least |S| − Σ_{i∈S} Σ_j |Q_ij| > 0
    rng = np.random.default_rng(2)
    m = 96
    planted = rng.integers(0, 2, m)
    h = np.where(planted == 1, -1.0, 1.0)
    J = np.triu(rng.uniform(-1, 1, (m, m)), 1)
    J *= 0.9 / np.max(np.abs(J + J.T).sum(1))
    r = anneal_qubo(jax.random.key(3), 0.0, h, J, num_replicas=8, num_sweeps=50)
    np.testing.assert_array_equal(r.states[r.best], planted)


def test_fm_path_energies_equal_dense_qubo_of_its_states(small_fm):
    off, h, J = fm_to_qubo(small_fm)
    po, ph, pJ = one_hot_penalty(GROUPS, 2.0, num_bits=M_SMALL)
    r = anneal_fm(jax.random.key(4), small_fm, num_replicas=R, num_sweeps=8, groups=GROUPS,
                  penalty=2.0)  # fmt: skip
    assert r.states.shape == (R, M_SMALL) and r.feasible.shape == (R,)
    np.testing.assert_allclose(
        r.energies, qubo_energy(off + po, h + ph, J + pJ, r.states), rtol=1e-10, atol=1e-10
    )
    np.testing.assert_array_equal(r.feasible, _feasible(r.states, GROUPS))
    np.testing.assert_allclose(r.penalty, [2.0, 2.0, 2.0])


def test_fm_and_dense_reach_the_feasible_optimum(small_fm):
    off, h, J = fm_to_qubo(small_fm)
    x = _states(M_SMALL)
    e = np.where(_feasible(x, GROUPS), np.asarray(qubo_energy(off, h, J, x)), np.inf)
    opt = int(np.argmin(e))
    kw = dict(num_replicas=R, num_sweeps=300, groups=GROUPS, penalty=2.0)
    low = anneal_fm(jax.random.key(5), small_fm, **kw)
    dense = anneal_qubo(jax.random.key(6), off, h, J, **kw)
    for r in (low, dense):
        assert bool(r.feasible[r.best])
        np.testing.assert_array_equal(r.states[r.best], x[opt])
        assert float(r.energies[r.best]) == pytest.approx(e[opt], abs=1e-9)
        # every state reported feasible satisfies the groups, and has penalty-free energy
        f = np.asarray(r.feasible)
        assert np.all(_feasible(np.asarray(r.states)[f], GROUPS))
        np.testing.assert_allclose(
            np.asarray(r.energies)[f], qubo_energy(off, h, J, r.states)[f], atol=1e-9
        )
    # the same default β range in both paths (computed blockwise from W in the FM path)
    np.testing.assert_allclose(low.beta_range, dense.beta_range, rtol=1e-10)


def test_defaults_agree_and_traced_arguments_do_not_recompile(small_fm):
    off, h, J = fm_to_qubo(small_fm)
    a = anneal_fm(jax.random.key(7), small_fm, num_replicas=R, num_sweeps=4, groups=GROUPS)
    b = anneal_qubo(jax.random.key(7), off, h, J, num_replicas=R, num_sweeps=4, groups=GROUPS)
    np.testing.assert_allclose(a.penalty, b.penalty, rtol=1e-10)
    np.testing.assert_allclose(a.beta_range, b.beta_range, rtol=1e-10)
    kw = dict(num_replicas=R, groups=GROUPS, penalty=2.0)
    anneal_fm(jax.random.key(8), small_fm, num_sweeps=8, beta_range=(0.1, 5.0), **kw)
    with CompileCounter() as cc:
        r = anneal_fm(jax.random.key(9), small_fm, num_sweeps=13, beta_range=(0.2, 9.0), **kw)
        jax.block_until_ready(r)
    assert cc.count == 0
    np.testing.assert_allclose(r.beta_range, [0.2, 9.0])


def test_vmap_over_keys(small_fm):
    def run(k):
        return anneal_fm(k, small_fm, num_replicas=4, num_sweeps=5, groups=GROUPS, penalty=2.0,
                         beta_range=(0.1, 5.0))  # fmt: skip

    out = jax.vmap(run)(jax.random.split(jax.random.key(10), 3))
    assert out.states.shape == (3, 4, M_SMALL) and out.best.shape == (3,)
    one = run(jax.random.split(jax.random.key(10), 3)[1])
    np.testing.assert_array_equal(out.states[1], one.states)


def test_invalid_arguments(small_fm):
    with pytest.raises(InvalidArgumentError, match="disjoint"):
        anneal_fm(jax.random.key(0), small_fm, groups=[[0, 1], [1, 2]])
    with pytest.raises(InvalidArgumentError):
        anneal_qubo(jax.random.key(0), 0.0, np.zeros(3), np.zeros((4, 4)))
    with pytest.raises(InvalidArgumentError):
        anneal_fm(jax.random.key(0), small_fm, num_sweeps=0)
    with pytest.raises(InvalidArgumentError):
        anneal_fm(jax.random.key(0), small_fm, beta_range=(-1.0, 2.0))
