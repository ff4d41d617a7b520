"""Batched L-BFGS with ASE's semantics and defaults (one evaluation per step, no line search).

It follows the loop of ASE's ``Optimizer.irun`` (as :func:`jaxcsp.optimize.fire` does): the
state holds the gradient at the current point; a step moves every running sample once from that
gradient and evaluates the objective at the new point (``n`` steps use ``n + 1`` evaluations).

:func:`lbfgs` is ASE ``LBFGS``: memory 100, initial inverse Hessian ``I / alpha`` with alpha 70,
damping 1, the step scaled so that no row moves more than maxstep 0.2; the curvature pairs live in
a fixed ``(B, memory, 3R)`` ring buffer.
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
    row_norms,
    where_rows,
)

__all__ = ["LBFGSState", "lbfgs"]

Array = jax.Array


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
        x, row_mask, e, g, overflow, fmax, max_steps, status = first_evaluation(
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
        common = after_evaluation(st, x_new, e, g, overflow, run, f_upper)
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
