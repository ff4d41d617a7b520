"""Shared conventions of jaxcsp's optimizers: per-structure algorithms, one batched driver state.

Every optimizer minimises independent objectives over *rows*: the free variables of one
structure are ``x`` with shape ``(R, 3)`` and ``row_mask`` ``(R,)`` marks the real rows (atoms,
cell rows of a cell filter, or groups of three Wyckoff free variables). Row semantics matter
because ASE's step limits and convergence test are per row: no row moves more than ``maxstep``
per update, and a structure has converged when the largest row norm of its gradient is below
``fmax`` (for atoms: the largest force, eV/Å).

An optimizer's math is an :class:`Algorithm`, written for **one** structure without a batch
axis, as three pure functions (ask and tell):

* ``init(x, row_mask, energy, grad, ok) -> state``: the algorithm's state at the evaluated
  start (``ok`` is False where the value or gradient is not finite);
* ``propose(state, row_mask) -> (state, x_trial)``: the next point to evaluate;
* ``update(state, row_mask, x_trial, energy, grad, ok) -> (state, stepped)``: take the
  evaluation at ``x_trial`` in; ``stepped`` (bool scalar) says whether that completed an
  optimizer step (FIRE and L-BFGS: every evaluation; a line search: an accepted point or a
  restart of its Hessian).

The state holds only the algorithm, with at least the fields ``x``, ``energy`` and ``grad``
(the current point, its value and gradient). Hyperparameters are closed over, so they may be
traced values: a program compiled for one ``maxstep`` serves every other.

:func:`batched` turns an algorithm and a **batched** objective ``value_and_grad(x (B,R,3),
data) -> (value (B,), grad (B,R,3)[, overflow (B,) bool])`` into an :class:`Optimizer`
``(init_fn, step_fn)`` over a :class:`RelaxState`: the algorithm is ``vmap``-ed over the batch,
the objective is evaluated exactly once per ``step_fn`` call for the whole batch, and the
driver keeps the bookkeeping every algorithm shares — ``status``, ``steps``, ``force_calls`` and
``overflow`` ``(B,)`` with the meanings below. ``overflow`` flags structures whose
fixed-capacity intermediates (neighbor lists) did not fit; ``data`` is any pytree the caller
threads through. Structures that are no longer ``RUNNING`` are frozen (their lanes are still
computed, then discarded).
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
    "Algorithm",
    "Optimizer",
    "RelaxState",
    "as_objective",
    "batched",
    "masked_fmax",
    "row_norms",
    "select",
]

Array = jax.Array

RUNNING = 0  #: still optimising
CONVERGED = 1  #: largest gradient row norm < fmax
MAX_STEPS = 2  #: hit ``max_steps`` without converging
EXPLODED = 3  #: non-finite or > ``f_upper`` gradients/values during the run
INVALID = 4  #: non-finite value or gradient at the starting point
UNCERTAIN = 5  #: uncertainty above ``max_uncertainty`` (the last point below it is kept)
STATUS_NAMES = ("running", "converged", "max_steps", "exploded", "invalid", "uncertain")


class Algorithm(NamedTuple):
    """One structure's optimizer math as ask/tell functions (see the module docstring).

    Attributes:
      init: ``init(x (R,3), row_mask (R,) bool, energy (), grad (R,3), ok () bool) -> state``.
      propose: ``propose(state, row_mask) -> (state, x_trial (R,3))``.
      update: ``update(state, row_mask, x_trial, energy, grad, ok) -> (state, stepped () bool)``.
    """

    init: Callable[..., Any]
    propose: Callable[..., Any]
    update: Callable[..., Any]


class Optimizer(NamedTuple):
    """A batched optimizer as a pure function pair (built by :func:`batched`).

    Attributes:
      init_fn: ``init_fn(x (B,R,3), row_mask (B,R), data, *, fmax, max_steps) -> RelaxState``.
      step_fn: ``step_fn(state, data) -> RelaxState`` (one objective evaluation for the batch).
    """

    init_fn: Callable[..., Any]
    step_fn: Callable[..., Any]


class RelaxState(NamedTuple):
    """The batched driver state: an algorithm's state and the bookkeeping every optimizer shares.

    Attributes:
      opt: the algorithm's state, every leaf with the batch ``B`` as its leading axis.
      row_mask: ``(B, R)`` bool, real rows.
      fmax: ``(B,)`` setting: convergence threshold on the largest gradient row norm (eV/Å for
        atoms).
      max_steps: ``(B,)`` int32 setting: the step budget.
      status: ``(B,)`` int32 code (``RUNNING``, ``CONVERGED``, ...; see ``STATUS_NAMES``).
      steps: ``(B,)`` int32 optimizer steps taken.
      force_calls: ``(B,)`` int32 objective evaluations (energy + forces), the start included.
      overflow: ``(B,)`` bool, an evaluation reported neighbor-list overflow.
    """

    opt: Any
    row_mask: Array
    fmax: Array
    max_steps: Array
    status: Array
    steps: Array
    force_calls: Array
    overflow: Array

    @property
    def x(self) -> Array:
        """``(B, R, 3)`` the current point of every structure (DOF units, e.g. Å)."""
        return self.opt.x

    @property
    def energy(self) -> Array:
        """``(B,)`` the objective at ``x`` (e.g. eV)."""
        return self.opt.energy

    @property
    def grad(self) -> Array:
        """``(B, R, 3)`` the gradient at ``x`` (e.g. eV/Å; forces are ``-grad``)."""
        return self.opt.grad


def row_norms(g: Array) -> Array:
    """Euclidean norms of the rows of ``g`` ``(..., R, 3)`` -> ``(..., R)``."""
    return jnp.sqrt(jnp.sum(g * g, axis=-1))


def masked_fmax(g: Array, row_mask: Array) -> Array:
    """Largest row norm over real rows, ``(..., R, 3), (..., R) -> (...)`` (ASE's ``fmax`` test)."""
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


def finite_rows(e: Array, g: Array, f_upper: Any) -> Array:
    """True where the value is finite and every gradient entry is finite and ≤ ``f_upper``.

    ``e`` ``(...)``, ``g`` ``(..., R, 3)`` -> ``(...)`` bool.
    """
    gmax = jnp.max(jnp.abs(g), axis=(-2, -1))
    return jnp.isfinite(e) & jnp.all(jnp.isfinite(g), axis=(-2, -1)) & (gmax <= f_upper)


def select(cond: Array, a: Any, b: Any) -> Any:
    """Leafwise ``a`` where ``cond`` (a scalar, or ``(B,)`` over leaves with leading ``B``), else
    ``b``; the two pytrees have the same structure and the result the leaves' shapes."""

    def sel(x, y):
        m = jnp.reshape(cond, jnp.shape(cond) + (1,) * (jnp.ndim(x) - jnp.ndim(cond)))
        return jnp.where(m, x, y)

    return jax.tree.map(sel, a, b)


def batched(algorithm: Algorithm, value_and_grad: Callable, *, f_upper: Any = 1e25) -> Optimizer:
    """The batched optimizer of a per-structure ``algorithm`` (see the module docstring).

    Args:
      algorithm: an :class:`Algorithm` written for one structure.
      value_and_grad: batched objective ``(x (B,R,3), data) -> (value (B,), grad (B,R,3)[,
        overflow (B,)])``.
      f_upper: a point whose gradient exceeds this (or whose value or gradient is not finite)
        is a failed point: ``INVALID`` at the start, ``EXPLODED`` when a step lands there.

    Returns:
      ``Optimizer(init_fn, step_fn)`` over :class:`RelaxState`. A structure's status after a
      step: ``EXPLODED`` if its new point failed, else ``CONVERGED`` if the new gradient's
      largest row norm is below ``fmax``, else ``MAX_STEPS`` once ``steps >= max_steps``.
    """
    objective = as_objective(value_and_grad)
    init_one = jax.vmap(algorithm.init)
    propose = jax.vmap(algorithm.propose)
    update = jax.vmap(algorithm.update)

    def init_fn(x, row_mask, data=None, *, fmax=0.01, max_steps=1000) -> RelaxState:
        row_mask = jnp.asarray(row_mask, bool)
        x = jnp.where(row_mask[..., None], x, 0.0)
        b = x.shape[0]
        e, g, overflow = objective(x, row_mask, data)
        fmax = jnp.broadcast_to(jnp.asarray(fmax, x.dtype), (b,))
        max_steps = jnp.broadcast_to(jnp.asarray(max_steps, jnp.int32), (b,))
        ok = finite_rows(e, g, f_upper)
        status = jnp.where(
            ~ok, INVALID, jnp.where(masked_fmax(g, row_mask) < fmax, CONVERGED, RUNNING)
        )
        status = jnp.where((status == RUNNING) & (max_steps <= 0), MAX_STEPS, status)
        return RelaxState(
            opt=init_one(x, row_mask, e, g, ok),
            row_mask=row_mask,
            fmax=fmax,
            max_steps=max_steps,
            status=status.astype(jnp.int32),
            steps=jnp.zeros((b,), jnp.int32),
            force_calls=jnp.ones((b,), jnp.int32),
            overflow=overflow,
        )

    def step_fn(st: RelaxState, data=None) -> RelaxState:
        run = st.status == RUNNING
        opt, x_trial = propose(st.opt, st.row_mask)
        x_trial = jnp.where(st.row_mask[..., None], x_trial, 0.0)
        e, g, overflow = objective(x_trial, st.row_mask, data)
        opt, stepped = update(opt, st.row_mask, x_trial, e, g, finite_rows(e, g, f_upper))
        stepped = run & stepped
        steps = st.steps + stepped.astype(jnp.int32)
        ok = finite_rows(opt.energy, opt.grad, f_upper)
        status = jnp.where(stepped & ~ok, EXPLODED, st.status)
        converged = stepped & ok & (masked_fmax(opt.grad, st.row_mask) < st.fmax)
        status = jnp.where(converged, CONVERGED, status)
        status = jnp.where((status == RUNNING) & (steps >= st.max_steps), MAX_STEPS, status)
        return st._replace(
            opt=select(run, opt, st.opt),
            status=status.astype(jnp.int32),
            steps=steps,
            force_calls=st.force_calls + run.astype(jnp.int32),
            overflow=st.overflow | (overflow & run),
        )

    return Optimizer(init_fn, step_fn)
