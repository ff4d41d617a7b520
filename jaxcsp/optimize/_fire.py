"""Batched FIRE with ASE's semantics and defaults (one evaluation per step).

It follows the loop of ASE's ``Optimizer.irun``: the state holds the gradient at the current
point; a step moves every running sample once from that gradient and evaluates the objective
at the new point (so a sample that takes ``n`` steps uses ``n + 1`` evaluations, as in ASE).

:func:`fire` is ASE ``FIRE`` (Bitzek et al. 2006): dt 0.1, dtmax 1.0, Nmin 5, finc 1.1,
fdec 0.5, astart 0.1, fa 0.99, maxstep 0.2 applied to the norm of the *whole* displacement
(ASE's FIRE, unlike its line search, does not limit per row).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxcsp.optimize._base import (
    RUNNING,
    Optimizer,
    after_evaluation,
    as_objective,
    first_evaluation,
    where_rows,
)

__all__ = ["FIREState", "fire"]

Array = jax.Array


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
        x, row_mask, e, g, overflow, fmax, max_steps, status = first_evaluation(
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
        common = after_evaluation(st, x_new, e, g, overflow, run, f_upper)
        return st._replace(
            velocity=where_rows(run, v, st.velocity),
            dt=jnp.where(run, dt_new, st.dt),
            a=jnp.where(run, a_new, st.a),
            n_pos=jnp.where(run, n_pos, st.n_pos),
            **common,
        )

    return Optimizer(init_fn, step_fn)
