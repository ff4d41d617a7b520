"""Batched Moré–Thuente line search with ASE ``LineSearch`` semantics, one structure per lane.

Every quantity is an array over the batch axis ``(B,)``; branches of the scalar algorithm become
``jnp.where`` selections, so one call advances every structure's line search by one function
evaluation. The logic follows ASE's ``ase.utils.linesearch.LineSearch`` (a port of MINPACK-2
``dcsrch``/``dcstep`` as modified by ASE): the step is limited so no row of ``stp * p`` moves
more than ``maxstep`` (Å) per update, the WARN states end the search successfully (as they do in
ASE), ERROR states are reported so the caller can restart the structure's Hessian, and the
``no_update`` flag ends the search after the next evaluation.

Units: steps ``stp`` are dimensionless multiples of the direction ``p``; ``f`` and ``g`` are the
(scaled) objective and its directional derivative along ``p``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["LineSearchParams", "LineSearchState", "ls_iterate", "ls_start"]

Array = jax.Array

# task codes
FG = 0  #: evaluate f and g at the returned step
CONVERGED = 1  #: sufficient decrease + curvature conditions hold
WARNING = 2  #: ended on a MINPACK warning (treated as success, as in ASE)
ERROR = 3  #: could not start (direction not a descent direction, bad bounds)


class LineSearchParams(NamedTuple):
    """Hyperparameters (ASE ``BFGSLineSearch`` defaults). Plain floats or traced scalars."""

    maxstep: float = 0.2  #: largest row displacement per update, Å
    c1: float = 0.23  #: sufficient-decrease (Armijo) coefficient
    c2: float = 0.46  #: curvature coefficient
    xtrapl: float = 1.1  #: lower extrapolation factor
    xtrapu: float = 4.0  #: upper extrapolation factor
    stpmax: float = 50.0  #: largest step multiple
    stpmin: float = 1e-8  #: smallest step multiple
    xtol: float = 1e-14  #: relative interval width that ends the search


class LineSearchState(NamedTuple):
    """Per-structure line-search memory, every field ``(B,)``.

    ``stx, fx, gx`` is the best step so far (lowest f) with its value and slope; ``sty, fy, gy``
    the other end of the bracketing interval; ``stmin, stmax`` the current trial interval;
    ``old_stp`` the last evaluated step (ASE's ``old_stp``).
    """

    task: Array
    bracket: Array
    finit: Array
    ginit: Array
    gtest: Array
    stx: Array
    fx: Array
    gx: Array
    sty: Array
    fy: Array
    gy: Array
    stmin: Array
    stmax: Array
    width: Array
    width1: Array
    old_stp: Array
    no_update: Array


def determine_step(stp: Array, old_stp: Array, pnorm: Array, maxstep) -> Array:
    """Limit the change ``stp - old_stp`` so that no row of ``(stp - old_stp) * p`` exceeds maxstep.

    ``pnorm`` is the largest row norm of the direction ``p`` (``(B,)``).
    """
    dr = stp - old_stp
    longest = jnp.abs(dr) * pnorm
    scale = jnp.where(longest >= maxstep, maxstep / jnp.where(longest > 0, longest, 1.0), 1.0)
    return old_stp + dr * scale


def ls_start(
    f: Array, g: Array, pnorm: Array, prm: LineSearchParams
) -> tuple[LineSearchState, Array]:
    """Start a search from step 0 with value ``f`` and slope ``g`` along ``p``; first trial step.

    Returns:
      ``(state, stp)``: ``state.task`` is ``FG`` (evaluate at ``stp``) or ``ERROR`` (``g >= 0``:
      not a descent direction, or non-finite input).
    """
    stp = jnp.ones_like(f)
    bad = ~(g < 0) | ~jnp.isfinite(f) | ~jnp.isfinite(pnorm)
    zero = jnp.zeros_like(f)
    width = jnp.full_like(f, prm.stpmax - prm.stpmin)
    state = LineSearchState(
        task=jnp.where(bad, ERROR, FG).astype(jnp.int32),
        bracket=jnp.zeros(f.shape, bool),
        finit=f,
        ginit=g,
        gtest=prm.c1 * g,
        stx=zero,
        fx=f,
        gx=g,
        sty=zero,
        fy=f,
        gy=g,
        stmin=zero,
        stmax=stp + prm.xtrapu * stp,
        width=width,
        width1=width / 0.5,
        old_stp=zero,
        no_update=jnp.zeros(f.shape, bool),
    )
    return state, determine_step(stp, zero, pnorm, prm.maxstep)


def _dcstep(s: LineSearchState, stp, fp, gp, pnorm, prm: LineSearchParams):
    """One Moré–Thuente safeguarded step (ASE's ``LineSearch.update``), all lanes at once."""
    stx, fx, gx, sty, fy, gy = s.stx, s.fx, s.gx, s.sty, s.fy, s.gy
    lo, hi = s.stmin, s.stmax  # the current interval (ASE passes stmin/stmax here)
    sign = gp * (gx / jnp.abs(gx))
    theta = 3.0 * (fx - fp) / (stp - stx) + gx + gp
    smax = jnp.maximum(jnp.maximum(jnp.abs(theta), jnp.abs(gx)), jnp.abs(gp))
    disc = (theta / smax) ** 2 - (gx / smax) * (gp / smax)

    # case 1: higher function value -> the minimum is bracketed
    g1 = smax * jnp.sqrt(disc)
    g1 = jnp.where(stp < stx, -g1, g1)
    p1 = (g1 - gx) + theta
    q1 = ((g1 - gx) + g1) + gp
    stpc1 = stx + (p1 / q1) * (stp - stx)
    stpq1 = stx + ((gx / ((fx - fp) / (stp - stx) + gx)) / 2.0) * (stp - stx)
    stpf1 = jnp.where(
        jnp.abs(stpc1 - stx) < jnp.abs(stpq1 - stx), stpc1, stpc1 + (stpq1 - stpc1) / 2.0
    )

    # case 2: derivatives of opposite sign -> bracketed
    g2 = smax * jnp.sqrt(disc)
    g2 = jnp.where(stp > stx, -g2, g2)
    p2 = (g2 - gp) + theta
    q2 = ((g2 - gp) + g2) + gx
    stpc2 = stp + (p2 / q2) * (stx - stp)
    stpq2 = stp + (gp / (gp - gx)) * (stx - stp)
    stpf2 = jnp.where(jnp.abs(stpc2 - stp) > jnp.abs(stpq2 - stp), stpc2, stpq2)

    # case 3: same sign, derivative magnitude decreases
    g3 = smax * jnp.sqrt(jnp.maximum(0.0, disc))
    g3 = jnp.where(stp > stx, -g3, g3)
    p3 = (g3 - gp) + theta
    q3 = (g3 + (gx - gp)) + g3
    r3 = p3 / q3
    stpc3 = jnp.where((r3 < 0.0) & (g3 != 0), stp + r3 * (stx - stp), jnp.where(stp > stx, hi, lo))
    stpq3 = stp + (gp / (gp - gx)) * (stx - stp)
    near = jnp.where(jnp.abs(stpc3 - stp) < jnp.abs(stpq3 - stp), stpc3, stpq3)
    near = jnp.where(
        stp > stx,
        jnp.minimum(stp + 0.66 * (sty - stp), near),
        jnp.maximum(stp + 0.66 * (sty - stp), near),
    )
    far = jnp.where(jnp.abs(stpc3 - stp) > jnp.abs(stpq3 - stp), stpc3, stpq3)
    far = jnp.maximum(lo, jnp.minimum(hi, far))
    stpf3 = jnp.where(s.bracket, near, far)

    # case 4: same sign, derivative magnitude does not decrease
    theta4 = 3.0 * (fp - fy) / (sty - stp) + gy + gp
    s4 = jnp.maximum(jnp.maximum(jnp.abs(theta4), jnp.abs(gy)), jnp.abs(gp))
    g4 = s4 * jnp.sqrt((theta4 / s4) ** 2 - (gy / s4) * (gp / s4))
    g4 = jnp.where(stp > sty, -g4, g4)
    p4 = (g4 - gp) + theta4
    q4 = ((g4 - gp) + g4) + gy
    stpc4 = stp + (p4 / q4) * (sty - stp)
    stpf4 = jnp.where(s.bracket, stpc4, jnp.where(stp > stx, hi, lo))

    c1 = fp > fx
    c2 = ~c1 & (sign < 0)
    c3 = ~c1 & ~c2 & (jnp.abs(gp) < jnp.abs(gx))
    stpf = jnp.where(c1, stpf1, jnp.where(c2, stpf2, jnp.where(c3, stpf3, stpf4)))
    bracket = s.bracket | c1 | c2

    # update the interval
    new_sty = jnp.where(c1, stp, jnp.where(sign < 0, stx, sty))
    new_fy = jnp.where(c1, fp, jnp.where(sign < 0, fx, fy))
    new_gy = jnp.where(c1, gp, jnp.where(sign < 0, gx, gy))
    new_stx = jnp.where(c1, stx, stp)
    new_fx = jnp.where(c1, fx, fp)
    new_gx = jnp.where(c1, gx, gp)
    stp_new = determine_step(stpf, s.old_stp, pnorm, prm.maxstep)
    return new_stx, new_fx, new_gx, new_sty, new_fy, new_gy, stp_new, bracket


def ls_iterate(
    s: LineSearchState, stp: Array, f: Array, g: Array, pnorm: Array, prm: LineSearchParams
) -> tuple[LineSearchState, Array]:
    """Advance every lane by one evaluation: ``f``, ``g`` were evaluated at step ``stp``.

    Lanes whose task is not ``FG`` are returned unchanged. Returns ``(state, stp)``: where
    ``state.task`` is ``CONVERGED`` or ``WARNING`` the search ended at ``stp`` (the evaluated
    step, returned unchanged); where it is ``FG`` the next trial step is returned.
    """
    s = s._replace(old_stp=jnp.where(s.task == FG, stp, s.old_stp))
    ftest = s.finit + stp * s.gtest
    warn = (
        (s.bracket & ((stp <= s.stmin) | (stp >= s.stmax)))
        | (s.bracket & (s.stmax - s.stmin <= prm.xtol * s.stmax))
        | ((stp == prm.stpmax) & (f <= ftest) & (g <= s.gtest))
        | ((stp == prm.stpmin) & ((f > ftest) | (g >= s.gtest)))
    )
    conv = (f <= ftest) & (jnp.abs(g) <= prm.c2 * (-s.ginit))
    done = warn | conv

    stx, fx, gx, sty, fy, gy, nstp, bracket = _dcstep(s, stp, f, g, pnorm, prm)
    width, width1 = s.width, s.width1
    bisect = bracket & (jnp.abs(sty - stx) >= 0.66 * width1)
    nstp = jnp.where(bisect, stx + 0.5 * (sty - stx), nstp)
    width1 = jnp.where(bracket, width, width1)
    width = jnp.where(bracket, jnp.abs(sty - stx), width)
    stmin = jnp.where(bracket, jnp.minimum(stx, sty), nstp + prm.xtrapl * (nstp - stx))
    stmax = jnp.where(bracket, jnp.maximum(stx, sty), nstp + prm.xtrapu * (nstp - stx))
    nstp = jnp.clip(nstp, prm.stpmin, prm.stpmax)
    no_update = (stx == nstp) & (nstp == prm.stpmax) & (stmin > prm.stpmax)
    fallback = ((bracket & (nstp < stmin)) | (nstp >= stmax)) | (
        bracket & (stmax - stmin < prm.xtol * stmax)
    )
    nstp = jnp.where(fallback, stx, nstp)

    active = s.task == FG
    upd = active & ~done

    def pick(new, old):
        return jnp.where(upd, new, old)

    task = jnp.where(active & conv, CONVERGED, jnp.where(active & warn, WARNING, s.task))
    out = LineSearchState(
        task=task.astype(jnp.int32),
        bracket=pick(bracket, s.bracket),
        finit=s.finit,
        ginit=s.ginit,
        gtest=s.gtest,
        stx=pick(stx, s.stx),
        fx=pick(fx, s.fx),
        gx=pick(gx, s.gx),
        sty=pick(sty, s.sty),
        fy=pick(fy, s.fy),
        gy=pick(gy, s.gy),
        stmin=pick(stmin, s.stmin),
        stmax=pick(stmax, s.stmax),
        width=pick(width, s.width),
        width1=pick(width1, s.width1),
        old_stp=s.old_stp,
        no_update=pick(no_update, s.no_update),
    )
    return out, jnp.where(upd, nstp, stp)
