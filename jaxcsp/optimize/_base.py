"""Shared conventions of jaxcsp's batched optimizers.

Every optimizer minimises a batch of independent objectives over *rows*: the free variables of
sample ``b`` are ``x[b]`` with shape ``(R, 3)`` and ``row_mask[b]`` ``(R,)`` marks the real rows
(atoms, cell rows of a cell filter, or groups of three Wyckoff free variables). Row semantics
matter because ASE's step limits and convergence test are per row: no row moves more than
``maxstep`` per update, and a sample has converged when the largest row norm of its gradient is
below ``fmax`` (for atoms: the largest force, eV/Å).

An objective is a **batched** function ``value_and_grad(x, data) -> (value (B,), grad (B, R, 3))``
or ``-> (value, grad, overflow (B,) bool)`` where ``overflow`` flags samples whose fixed-capacity
intermediates (neighbor lists) did not fit; ``data`` is any pytree the caller threads through.

Optimizers are ``(init_fn, step_fn)`` pairs (:class:`Optimizer`): ``init_fn(x, row_mask, data,
fmax=, max_steps=)`` evaluates the objective once and returns a state; each ``step_fn(state,
data)`` call evaluates the objective exactly once for the whole batch. Every state carries
``status``, ``steps``, ``force_calls`` and ``overflow`` ``(B,)`` with the meanings below; samples
that are no longer ``RUNNING`` are frozen (their lanes are still computed, then discarded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "CONVERGED",
    "EXPLODED",
    "INVALID",
    "MAX_STEPS",
    "RUNNING",
    "STATUS_NAMES",
    "UNCERTAIN",
    "Optimizer",
    "as_objective",
    "masked_fmax",
    "row_norms",
]

Array = jax.Array

RUNNING = 0  #: still optimising
CONVERGED = 1  #: largest gradient row norm < fmax
MAX_STEPS = 2  #: hit ``max_steps`` without converging
EXPLODED = 3  #: non-finite or > ``f_upper`` gradients/values during the run
INVALID = 4  #: non-finite value or gradient at the starting point
UNCERTAIN = 5  #: uncertainty above ``max_uncertainty`` (the last point below it is kept)
STATUS_NAMES = ("running", "converged", "max_steps", "exploded", "invalid", "uncertain")


class Optimizer(NamedTuple):
    """A batched optimizer as a pure function pair.

    Attributes:
      init_fn: ``init_fn(x (B,R,3), row_mask (B,R), data, *, fmax, max_steps) -> state``.
      step_fn: ``step_fn(state, data) -> state`` (one objective evaluation for the batch).
    """

    init_fn: Callable[..., Any]
    step_fn: Callable[..., Any]


def row_norms(g: Array) -> Array:
    """Euclidean norms of the rows of ``g`` ``(..., R, 3)`` -> ``(..., R)``."""
    return jnp.sqrt(jnp.sum(g * g, axis=-1))


def masked_fmax(g: Array, row_mask: Array) -> Array:
    """Largest row norm over real rows, ``(B, R, 3), (B, R) -> (B,)`` (ASE's ``fmax`` test)."""
    return jnp.max(jnp.where(row_mask, row_norms(g), 0.0), axis=-1)


def as_objective(value_and_grad: Callable) -> Callable:
    """Normalise an objective to return ``(value, grad, overflow)`` with masked-out rows zeroed."""

    def fn(x, row_mask, data):
        out = value_and_grad(x, data)
        if len(out) == 2:
            e, g = out
            overflow = jnp.zeros(e.shape, bool)
        else:
            e, g, overflow = out
        g = jnp.where(row_mask[..., None], g, jnp.zeros_like(g))
        return e, g, overflow

    return fn


def finite_rows(e: Array, g: Array, f_upper: float) -> Array:
    """``(B,)`` True where the value is finite and every gradient entry is finite and ≤ f_upper."""
    gmax = jnp.max(jnp.abs(g), axis=(-2, -1))
    return jnp.isfinite(e) & jnp.all(jnp.isfinite(g), axis=(-2, -1)) & (gmax <= f_upper)


def where_rows(mask: Array, a: Any, b: Any) -> Any:
    """Per-structure select over two pytrees of batched leaves: ``a`` where ``mask`` (B,) bool.

    Every leaf has the batch ``B`` as its leading axis; the result has the leaves' shapes.
    """

    def sel(x, y):
        m = mask.reshape(mask.shape + (1,) * (x.ndim - 1))
        return jnp.where(m, x, y)

    return jax.tree.map(sel, a, b)


def first_evaluation(objective, x, row_mask, data, fmax, max_steps, f_upper):
    """Shared start of the one-evaluation-per-step optimizers (FIRE, L-BFGS): the objective at
    ``x`` (padded rows zeroed) and the starting status of every sample (``INVALID``,
    ``CONVERGED``, ``MAX_STEPS`` for a zero step budget, else ``RUNNING``)."""
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


def after_evaluation(st, x_new, e, g, overflow, run, f_upper):
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
