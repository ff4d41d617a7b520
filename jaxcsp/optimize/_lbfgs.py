"""L-BFGS with ASE's semantics and defaults (one evaluation per step, no line search).

It follows the loop of ASE's ``Optimizer.irun`` (as :func:`jaxcsp.optimize.fire` does): the
state holds the gradient at the current point; a step moves the structure once from that
gradient and evaluates the objective at the new point (``n`` steps use ``n + 1`` evaluations).

:func:`lbfgs` is ASE ``LBFGS``: memory 100, initial inverse Hessian ``I / alpha`` with alpha 70,
damping 1, the step scaled so that no row moves more than maxstep 0.2; the curvature pairs live in
a fixed ``(memory, 3R)`` ring buffer per structure. :func:`lbfgs_algorithm` is the
per-structure math; :func:`lbfgs` batches it (:func:`jaxcsp.optimize._base.batched`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcsp.optimize._base import Algorithm, Optimizer, batched, row_norms

__all__ = ["LBFGSState", "lbfgs", "lbfgs_algorithm"]

Array = jax.Array


class LBFGSState(NamedTuple):
    """State of one structure's L-BFGS.

    Attributes:
      x, energy, grad: the current point ``(R, 3)``, its value and gradient ``(R, 3)``.
      s, y: ``(M, 3R)`` ring buffers of position and gradient changes, oldest first.
      rho: ``(M,)`` their ``1 / (s·y)``. iteration: pairs stored so far (capped at ``M``).
    """

    x: Array
    energy: Array
    grad: Array
    s: Array
    y: Array
    rho: Array
    iteration: Array


def lbfgs_algorithm(
    *, maxstep: Any = 0.2, memory: int = 100, damping: Any = 1.0, alpha: Any = 70.0
) -> Algorithm:
    """L-BFGS for one structure (ASE ``LBFGS``'s parameters; ``memory`` sets array shapes)."""

    def init(x, row_mask, energy, grad, ok) -> LBFGSState:
        del row_mask, ok
        d = x.size
        return LBFGSState(
            x=x,
            energy=energy,
            grad=grad,
            s=jnp.zeros((memory, d), x.dtype),
            y=jnp.zeros((memory, d), x.dtype),
            rho=jnp.zeros((memory,), x.dtype),
            iteration=jnp.zeros((), jnp.int32),
        )

    def direction(st: LBFGSState) -> Array:
        """ASE's two-loop recursion over the stored pairs (slots ``0..n-1``, oldest first)."""
        n = jnp.minimum(st.iteration, memory)

        def back(i, carry):
            q, coef = carry
            j = memory - 1 - i
            ai = jnp.where(j < n, st.rho[j] * jnp.dot(st.s[j], q), 0.0)
            return q - ai * st.y[j], coef.at[j].set(ai)

        q0 = st.grad.reshape(-1)
        q, coef = jax.lax.fori_loop(0, memory, back, (q0, jnp.zeros((memory,), q0.dtype)))
        z = q / alpha

        def fwd(j, z):
            bj = st.rho[j] * jnp.dot(st.y[j], z)
            return z + jnp.where(j < n, coef[j] - bj, 0.0) * st.s[j]

        return -jax.lax.fori_loop(0, memory, fwd, z).reshape(st.x.shape)

    def propose(st: LBFGSState, row_mask):
        p = direction(st)
        longest = jnp.max(jnp.where(row_mask, row_norms(p), 0.0))
        p = p * jnp.where(longest >= maxstep, maxstep / jnp.where(longest > 0, longest, 1), 1.0)
        return st, st.x + damping * p  # padded rows are zeroed by the driver

    def push(buf, value, full, slot):
        buf = jnp.where(full, jnp.roll(buf, -1, axis=0), buf)
        return buf.at[slot].set(value)

    def update(st: LBFGSState, row_mask, x, energy, grad, ok):
        del row_mask, ok
        s_new = (x - st.x).reshape(-1)
        y_new = (grad - st.grad).reshape(-1)
        rho_new = 1.0 / jnp.sum(s_new * y_new)
        full = st.iteration >= memory  # the newest pair goes to the last slot once full
        slot = jnp.where(full, memory - 1, st.iteration)
        new = LBFGSState(
            x=x,
            energy=energy,
            grad=grad,
            s=push(st.s, s_new, full, slot),
            y=push(st.y, y_new, full, slot),
            rho=push(st.rho, rho_new, full, slot),
            iteration=jnp.minimum(st.iteration + 1, memory),
        )
        return new, True

    return Algorithm(init, propose, update)


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
      value_and_grad: batched objective, as for :func:`jaxcsp.optimize.fire`.
      maxstep: largest row displacement per step (Å for atoms).
      memory: number of curvature pairs kept. damping: step multiplier.
      alpha: initial inverse Hessian is ``I / alpha`` (eV/Å² for atoms).
      f_upper: as for :func:`jaxcsp.optimize.fire`.

    Returns:
      ``Optimizer(init_fn, step_fn)`` over a :class:`~jaxcsp.optimize._base.RelaxState`
      whose ``opt`` is a batched :class:`LBFGSState`.
    """
    algorithm = lbfgs_algorithm(maxstep=maxstep, memory=memory, damping=damping, alpha=alpha)
    return batched(algorithm, value_and_grad, f_upper=f_upper)
