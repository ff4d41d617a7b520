"""FIRE with ASE's semantics and defaults (one evaluation per step), written for one structure.

It follows the loop of ASE's ``Optimizer.irun``: the state holds the gradient at the current
point; a step moves the structure once from that gradient and evaluates the objective at the
new point (so a structure that takes ``n`` steps uses ``n + 1`` evaluations, as in ASE).

:func:`fire` is ASE ``FIRE`` (Bitzek et al. 2006): dt 0.1, dtmax 1.0, Nmin 5, finc 1.1,
fdec 0.5, astart 0.1, fa 0.99, maxstep 0.2 applied to the norm of the *whole* displacement
(ASE's FIRE, unlike its line search, does not limit per row). :func:`fire_algorithm` is the
per-structure math; :func:`fire` batches it (:func:`jaxcsp.optimize._base.batched`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxcsp.optimize._base import Algorithm, Optimizer, batched

__all__ = ["FIREState", "fire", "fire_algorithm"]

Array = jax.Array


class FIREState(NamedTuple):
    """State of one structure's FIRE: ``x``, ``grad``, ``velocity`` ``(R, 3)``, the rest scalars.

    Attributes:
      x, energy, grad: the current point, its value and gradient.
      velocity: ASE's ``v`` (DOF units per ASE time unit).
      dt, a: the adaptive time step and mixing factor. n_pos: steps since the last reset.
      started: False before the first step (ASE's ``v is None``: no mixing yet).
    """

    x: Array
    energy: Array
    grad: Array
    velocity: Array
    dt: Array
    a: Array
    n_pos: Array
    started: Array


def fire_algorithm(
    *,
    dt: Any = 0.1,
    maxstep: Any = 0.2,
    dtmax: Any = 1.0,
    nmin: Any = 5,
    finc: Any = 1.1,
    fdec: Any = 0.5,
    astart: Any = 0.1,
    fa: Any = 0.99,
    a: Any = 0.1,
) -> Algorithm:
    """FIRE for one structure (ASE ``FIRE``'s parameters; plain numbers or traced scalars)."""

    def init(x, row_mask, energy, grad, ok) -> FIREState:
        del row_mask, ok
        return FIREState(
            x=x,
            energy=energy,
            grad=grad,
            velocity=jnp.zeros_like(x),
            dt=jnp.asarray(dt, x.dtype),
            a=jnp.asarray(a, x.dtype),
            n_pos=jnp.zeros((), jnp.int32),
            started=jnp.zeros((), bool),
        )

    def propose(st: FIREState, row_mask):
        del row_mask  # ASE's FIRE limits the whole displacement, not rows
        f = -st.grad
        v = st.velocity
        vf, f2, v2 = jnp.sum(f * v), jnp.sum(f * f), jnp.sum(v * v)
        mix = (vf > 0.0) & st.started
        reset = ~(vf > 0.0) & st.started
        grow = mix & (st.n_pos > nmin)
        scale = jnp.sqrt(v2) / jnp.sqrt(jnp.where(f2 > 0, f2, 1.0))
        v_mix = (1.0 - st.a) * v + (st.a * scale) * f
        v = jnp.where(mix, v_mix, jnp.where(reset, 0.0, v))
        dt_grown = jnp.where(grow, jnp.minimum(st.dt * finc, dtmax), st.dt)
        dt_new = jnp.where(reset, st.dt * fdec, dt_grown)
        a_new = jnp.where(reset, astart, jnp.where(grow, st.a * fa, st.a))
        n_pos = jnp.where(reset, 0, jnp.where(mix, st.n_pos + 1, st.n_pos))
        v = v + dt_new * f
        dr = dt_new * v
        norm = jnp.sqrt(jnp.sum(dr * dr))
        dr = dr * jnp.where(norm > maxstep, maxstep / jnp.where(norm > 0, norm, 1.0), 1.0)
        new = st._replace(velocity=v, dt=dt_new, a=a_new.astype(st.a.dtype), n_pos=n_pos)
        return new, st.x + dr  # padded rows are zeroed by the driver

    def update(st: FIREState, row_mask, x, energy, grad, ok):
        del row_mask, ok
        return st._replace(x=x, energy=energy, grad=grad, started=jnp.ones((), bool)), True

    return Algorithm(init, propose, update)


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
      f_upper: gradients above this or non-finite values mark a structure ``EXPLODED``.

    Returns:
      ``Optimizer(init_fn, step_fn)`` over a :class:`~jaxcsp.optimize._base.RelaxState`
      whose ``opt`` is a batched :class:`FIREState`.
    """
    algorithm = fire_algorithm(
        dt=dt, maxstep=maxstep, dtmax=dtmax, nmin=nmin, finc=finc, fdec=fdec, astart=astart,
        fa=fa, a=a,
    )  # fmt: skip
    return batched(algorithm, value_and_grad, f_upper=f_upper)
