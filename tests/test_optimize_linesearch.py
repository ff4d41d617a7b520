"""The batched line search against ASE's ``LineSearch`` on analytic functions, lane by lane."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.utils.linesearch import LineSearch

from jaxcsp.optimize._linesearch import (
    CONVERGED,
    FG,
    WARNING,
    LineSearchParams,
    ls_iterate,
    ls_start,
)

# smooth 3-D objectives (one "atom row"), each with a start and a descent direction: a quadratic
# whose first step is limited by maxstep (extrapolation), a stiff quadratic that overshoots
# (bracketing), a double well, a Rosenbrock valley and a quartic with a flat start
A = np.array([0.3, -0.2, 0.1])


def _f(x, k):
    x0, x1, x2 = x[..., 0], x[..., 1], x[..., 2]
    return [
        lambda: 0.05 * jnp.sum((x - A) ** 2, -1),
        lambda: 40.0 * jnp.sum((x - A) ** 2, -1) + x0,
        lambda: (jnp.sum(x**2, -1) - 1.0) ** 2 + 0.3 * x0,
        lambda: (1 - x0) ** 2 + 10.0 * (x1 - x0**2) ** 2 + x2**2,
        lambda: jnp.sum((x - A) ** 4, -1) + 0.01 * x1,
    ][k]()


STARTS = np.array(
    [[2.0, 1.0, -1.0], [0.5, 0.1, 0.0], [0.2, 0.1, 0.05], [-1.2, 1.0, 0.3], [1.5, -0.5, 0.2]]
)
K = len(STARTS)


@jax.jit
def _value_and_grad(x):  # x (K, 3): lane k evaluates objective k
    def one(x, k):
        return jax.lax.switch(k, [lambda x, i=i: _f(x, i) for i in range(K)], x)

    return jax.vmap(jax.value_and_grad(one))(x, jnp.arange(K))


_start, _iterate = jax.jit(ls_start), jax.jit(ls_iterate)  # one program each, traced params
_f_jit = jax.jit(_f, static_argnums=1)
_grad_jit = jax.jit(jax.grad(_f), static_argnums=1)


def _ours(prm):
    x0 = jnp.asarray(STARTS)
    f0, g0 = _value_and_grad(x0)
    p = -g0
    pnorm = jnp.linalg.norm(p, axis=-1)
    st, stp = _start(f0, jnp.sum(g0 * p, -1), pnorm, prm)
    calls = np.zeros(K, int)
    for _ in range(60):
        if not bool(jnp.any(st.task == FG)):
            break
        calls += np.asarray(st.task == FG)
        f, g = _value_and_grad(x0 + stp[:, None] * p)
        st, stp = _iterate(st, stp, f, jnp.sum(g * p, -1), pnorm, prm)
    return (
        np.asarray(stp),
        np.asarray(st.task),
        calls,
        np.asarray(f0),
        np.asarray(g0),
        np.asarray(p),
    )


def _ase(k, prm):
    calls = [0]

    def func(x):
        calls[0] += 1
        return float(_f_jit(jnp.asarray(x), k))

    def fprime(x):
        return np.asarray(_grad_jit(jnp.asarray(x), k))

    x0 = STARTS[k]
    g0 = fprime(x0)
    stp, *_ = LineSearch(xtol=prm.xtol)._line_search(
        func, fprime, x0, -g0, g0, func(x0), None,
        maxstep=prm.maxstep, c1=prm.c1, c2=prm.c2, xtrapl=prm.xtrapl, xtrapu=prm.xtrapu,
        stpmax=prm.stpmax, stpmin=prm.stpmin,
    )  # fmt: skip
    return stp, calls[0] - 1  # not counting the start


@pytest.mark.parametrize("maxstep", [0.2, 0.05])
def test_steps_and_evaluations_match_ase_and_strong_wolfe_holds(maxstep):
    prm = LineSearchParams(maxstep=maxstep)
    stp, task, calls, f0, g0, p = _ours(prm)
    assert set(task.tolist()) <= {CONVERGED, WARNING}
    for k in range(K):
        ref, ref_calls = _ase(k, prm)
        assert ref is not None
        assert stp[k] == pytest.approx(ref, rel=1e-10), k
        assert calls[k] == ref_calls, k
        if task[k] == CONVERGED:  # strong Wolfe conditions at the accepted step
            f, g = _value_and_grad(jnp.asarray(STARTS) + stp[:, None] * p)
            d0, d = float(np.dot(g0[k], p[k])), float(jnp.dot(g[k], p[k]))
            assert float(f[k]) <= f0[k] + prm.c1 * stp[k] * d0
            assert abs(d) <= prm.c2 * abs(d0)
    # the row displacement of the first trial never exceeds maxstep
    _, stp1 = ls_start(
        jnp.asarray(f0), jnp.sum(jnp.asarray(g0 * p), -1), jnp.linalg.norm(p, axis=-1), prm
    )
    assert float(jnp.max(stp1 * jnp.linalg.norm(p, axis=-1))) <= maxstep * (1 + 1e-12)


def test_ascent_direction_is_an_error_not_a_step():
    prm = LineSearchParams()
    st, _ = ls_start(
        jnp.asarray([1.0, jnp.nan]), jnp.asarray([0.5, -1.0]), jnp.asarray([1.0, 1.0]), prm
    )
    assert np.asarray(st.task).tolist() == [3, 3]  # ERROR: uphill, and a non-finite value
