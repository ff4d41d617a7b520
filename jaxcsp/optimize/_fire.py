"""Batched FIRE and L-BFGS with ASE's semantics and defaults (one evaluation per step).

Both follow the loop of ASE's ``Optimizer.irun``: the state holds the gradient at the current
point; a step moves every running sample once from that gradient and evaluates the objective
at the new point (so a sample that takes ``n`` steps uses ``n + 1`` evaluations, as in ASE).

* :func:`fire` — ASE ``FIRE`` (Bitzek et al. 2006): dt 0.1, dtmax 1.0, Nmin 5, finc 1.1,
  fdec 0.5, astart 0.1, fa 0.99, maxstep 0.2 applied to the norm of the *whole* displacement
  (ASE's FIRE, unlike its line search, does not limit per row).
* :func:`lbfgs` — ASE ``LBFGS`` without line search: memory 100, initial inverse Hessian
  ``I / alpha`` with alpha 70, damping 1, the step scaled so that no row moves more than maxstep
  0.2; the curvature pairs live in a fixed ``(B, memory, 3R)`` ring buffer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcsp.optimize._base import (
    CONVERGED,
    EXPLODED,
    INVALID,
    MAX_STEPS,
    RUNNING,
    Optimizer,
    as_objective,
    finite_rows,
    masked_fmax,
    row_norms,
    where_rows,
)

__all__ = ["FIREState", "LBFGSState", "fire", "lbfgs"]

Array = jax.Array


def _first_eval(objective, x, row_mask, data, fmax, max_steps, f_upper):
    row_mask = jnp.asarray(row_mask, bool)
    x = jnp.where(row_mask[..., None], x, 0.0)
    b = x.shape[0]
    e, g, overflow = objective(x, row_mask, data)
    fmax = jnp.broadcast_to(jnp.asarray(fmax, x.dtype), (b,))
    max_steps = jnp.broadcast_to(jnp.asarray(max_steps, jnp.int32), (b,))
    ok = finite_rows(e, g, f_upper)
    status = jnp.where(~ok, INVALID, jnp.where(masked_fmax(g, row_mask) < fmax, CONVERGED, RUNNING))
    status = jnp.where((status == RUNNING) & (max_steps <= 0), MAX_STEPS, status)
    return x, row_mask, e, g, overflow, fmax, max_steps, status.astype(jnp.int32)


def _after_eval(st, x_new, e, g, overflow, run, f_upper):
    """Shared bookkeeping after the evaluation at the new point."""
    ok = finite_rows(e, g, f_upper)
    steps = st.steps + run.astype(jnp.int32)
    status = jnp.where(run & ~ok, EXPLODED, st.status)
    status = jnp.where(run & ok & (masked_fmax(g, st.row_mask) < st.fmax), CONVERGED, status)
    status = jnp.where((status == RUNNING) & (steps >= st.max_steps), MAX_STEPS, status)
    return dict(
        x=where_rows(run, x_new, st.x),
        energy=jnp.where(run, e, st.energy),
        grad=where_rows(run, g, st.grad),
        status=status.astype(jnp.int32),
        steps=steps,
        force_calls=st.force_calls + run.astype(jnp.int32),
        overflow=st.overflow | (overflow & run),
    )


class FIREState(NamedTuple):
    """State of :func:`fire`; ``x``, ``grad``, ``velocity`` are ``(B, R, 3)``, the rest ``(B,)``."""

    x: jax.Array
    energy: jax.Array
    grad: jax.Array
    row_mask: jax.Array
    velocity: jax.Array
    dt: jax.Array
    a: jax.Array
    n_pos: jax.Array
    fmax: jax.Array
    max_steps: jax.Array
    status: jax.Array
    steps: jax.Array
    force_calls: jax.Array
    overflow: jax.Array


def fire(
    value_and_grad: Callable,
    *,
    dt: float = 0.1,
    maxstep: float = 0.2,
    dtmax: float = 1.0,
    nmin: int = 5,
    finc: float = 1.1,
    fdec: float = 0.5,
    astart: float = 0.1,
    fa: float = 0.99,
    a: float = 0.1,
    f_upper: float = 1e25,
) -> Optimizer:
    """Batched FIRE with ASE's defaults (see the module docstring).

    Args:
      value_and_grad: batched objective ``(x (B,R,3), data) -> (value (B,), grad (B,R,3)[,
        overflow])``.
      dt, maxstep, dtmax, nmin, finc, fdec, astart, fa, a: ASE ``FIRE`` parameters (maxstep in
        DOF units, Å for atoms; dt in ASE's internal units).
      f_upper: gradients above this or non-finite values mark a sample ``EXPLODED``.

    Returns:
      ``Optimizer(init_fn, step_fn)`` over :class:`FIREState`.
    """
    objective = as_objective(value_and_grad)

    def init_fn(x, row_mask, data=None, *, fmax=0.01, max_steps=1000) -> FIREState:
        x, row_mask, e, g, overflow, fmax, max_steps, status = _first_eval(
            objective, x, row_mask, data, fmax, max_steps, f_upper
        )
        b = x.shape[0]
        return FIREState(
            x=x,
            energy=e,
            grad=g,
            row_mask=row_mask,
            velocity=jnp.zeros_like(x),
            dt=jnp.full((b,), dt, x.dtype),
            a=jnp.full((b,), a, x.dtype),
            n_pos=jnp.zeros((b,), jnp.int32),
            fmax=fmax,
            max_steps=max_steps,
            status=status,
            steps=jnp.zeros((b,), jnp.int32),
            force_calls=jnp.ones((b,), jnp.int32),
            overflow=overflow,
        )

    def step_fn(st: FIREState, data=None) -> FIREState:
        run = st.status == RUNNING
        f = -st.grad
        v = st.velocity
        first = st.steps == 0
        vf = jnp.sum(f * v, axis=(-2, -1))
        f2 = jnp.sum(f * f, axis=(-2, -1))
        v2 = jnp.sum(v * v, axis=(-2, -1))
        mix = (vf > 0.0) & ~first
        reset = ~(vf > 0.0) & ~first
        scale = jnp.sqrt(v2) / jnp.sqrt(jnp.where(f2 > 0, f2, 1.0))
        v_mix = (1.0 - st.a)[:, None, None] * v + (st.a * scale)[:, None, None] * f
        grow = mix & (st.n_pos > nmin)
        dt_new = jnp.where(grow, jnp.minimum(st.dt * finc, dtmax), st.dt)
        a_new = jnp.where(grow, st.a * fa, st.a)
        n_pos = jnp.where(mix, st.n_pos + 1, st.n_pos)
        v = where_rows(mix, v_mix, v)
        v = where_rows(reset, jnp.zeros_like(v), v)
        a_new = jnp.where(reset, astart, a_new)
        dt_new = jnp.where(reset, st.dt * fdec, dt_new)
        n_pos = jnp.where(reset, 0, n_pos)
        v = v + dt_new[:, None, None] * f
        dr = dt_new[:, None, None] * v
        norm = jnp.sqrt(jnp.sum(dr * dr, axis=(-2, -1)))
        dr = (
            dr
            * jnp.where(norm > maxstep, maxstep / jnp.where(norm > 0, norm, 1.0), 1.0)[
                :, None, None
            ]
        )
        x_new = jnp.where(st.row_mask[..., None], st.x + dr, 0.0)
        e, g, overflow = objective(x_new, st.row_mask, data)
        common = _after_eval(st, x_new, e, g, overflow, run, f_upper)
        return st._replace(
            velocity=where_rows(run, v, st.velocity),
            dt=jnp.where(run, dt_new, st.dt),
            a=jnp.where(run, a_new, st.a),
            n_pos=jnp.where(run, n_pos, st.n_pos),
            **common,
        )

    return Optimizer(init_fn, step_fn)


class LBFGSState(NamedTuple):
    """State of :func:`lbfgs`: ring buffers ``s``, ``y`` ``(B, M, 3R)``, ``rho`` ``(B, M)``."""

    x: jax.Array
    energy: jax.Array
    grad: jax.Array
    row_mask: jax.Array
    s: jax.Array
    y: jax.Array
    rho: jax.Array
    iteration: jax.Array
    fmax: jax.Array
    max_steps: jax.Array
    status: jax.Array
    steps: jax.Array
    force_calls: jax.Array
    overflow: jax.Array


def lbfgs(
    value_and_grad: Callable,
    *,
    maxstep: float = 0.2,
    memory: int = 100,
    damping: float = 1.0,
    alpha: float = 70.0,
    f_upper: float = 1e25,
) -> Optimizer:
    """Batched L-BFGS with ASE ``LBFGS`` semantics (no line search; see the module docstring).

    Args:
      value_and_grad: batched objective, as for :func:`fire`.
      maxstep: largest row displacement per step (Å for atoms).
      memory: number of curvature pairs kept. damping: step multiplier.
      alpha: initial inverse Hessian is ``I / alpha`` (eV/Å² for atoms).
      f_upper: as for :func:`fire`.

    Returns:
      ``Optimizer(init_fn, step_fn)`` over :class:`LBFGSState`.
    """
    objective = as_objective(value_and_grad)

    def init_fn(x, row_mask, data=None, *, fmax=0.01, max_steps=1000) -> LBFGSState:
        x, row_mask, e, g, overflow, fmax, max_steps, status = _first_eval(
            objective, x, row_mask, data, fmax, max_steps, f_upper
        )
        b, r, _ = x.shape
        return LBFGSState(
            x=x,
            energy=e,
            grad=g,
            row_mask=row_mask,
            s=jnp.zeros((b, memory, 3 * r), x.dtype),
            y=jnp.zeros((b, memory, 3 * r), x.dtype),
            rho=jnp.zeros((b, memory), x.dtype),
            iteration=jnp.zeros((b,), jnp.int32),
            fmax=fmax,
            max_steps=max_steps,
            status=status,
            steps=jnp.zeros((b,), jnp.int32),
            force_calls=jnp.ones((b,), jnp.int32),
            overflow=overflow,
        )

    def _two_loop(s, y, rho, it, q):
        # pairs are stored oldest-first in slots 0..n-1 of a rolled buffer (see step_fn)
        n = jnp.minimum(it, memory)

        def back(i, carry):
            q, a = carry
            j = memory - 1 - i
            use = j < n
            ai = jnp.where(use, rho[j] * jnp.dot(s[j], q), 0.0)
            return q - ai * y[j], a.at[j].set(ai)

        q, a_coef = jax.lax.fori_loop(0, memory, back, (q, jnp.zeros((memory,), q.dtype)))
        z = q / alpha

        def fwd(j, z):
            use = j < n
            bj = rho[j] * jnp.dot(y[j], z)
            return z + jnp.where(use, (a_coef[j] - bj), 0.0) * s[j]

        return -jax.lax.fori_loop(0, memory, fwd, z)

    def step_fn(st: LBFGSState, data=None) -> LBFGSState:
        run = st.status == RUNNING
        b, r, _ = st.x.shape
        p = jax.vmap(_two_loop)(st.s, st.y, st.rho, st.iteration, st.grad.reshape(b, 3 * r))
        p = p.reshape(b, r, 3)
        longest = jnp.max(jnp.where(st.row_mask, row_norms(p), 0.0), -1)
        p = (
            p
            * jnp.where(longest >= maxstep, maxstep / jnp.where(longest > 0, longest, 1), 1.0)[
                :, None, None
            ]
        )
        x_new = jnp.where(st.row_mask[..., None], st.x + damping * p, 0.0)
        e, g, overflow = objective(x_new, st.row_mask, data)
        common = _after_eval(st, x_new, e, g, overflow, run, f_upper)
        # store the new curvature pair (newest in the last slot once the buffer is full)
        s_new = (x_new - st.x).reshape(b, 3 * r)
        y_new = (g - st.grad).reshape(b, 3 * r)
        rho_new = 1.0 / jnp.sum(s_new * y_new, -1)
        n = st.iteration  # pairs stored so far (capped at memory)
        full = n >= memory
        slot = jnp.where(full, memory - 1, n)

        def push(buf, val, full, slot):
            buf = jnp.where(full, jnp.roll(buf, -1, axis=0), buf)
            return buf.at[slot].set(val)

        s_buf = jax.vmap(push)(st.s, s_new, full, slot)
        y_buf = jax.vmap(push)(st.y, y_new, full, slot)
        rho_buf = jax.vmap(push)(st.rho, rho_new, full, slot)
        return st._replace(
            s=where_rows(run, s_buf, st.s),
            y=where_rows(run, y_buf, st.y),
            rho=jnp.where(run[:, None], rho_buf, st.rho),
            iteration=jnp.where(run, jnp.minimum(st.iteration + 1, memory), st.iteration),
            **common,
        )

    return Optimizer(init_fn, step_fn)
