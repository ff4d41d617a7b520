"""Simulated annealing of QUBOs: dense couplings, and factorization machines at ``O(K)`` per flip.

Both annealers minimise, over bit vectors ``x ∈ {0, 1}^M``, an objective

    E(x) = QUBO(x) + Σ_g λ_g (Σ_{i∈g} x_i − 1)²

where the optional second sum is a one-hot penalty over disjoint groups of bits (zero on
*feasible* states, those with exactly one bit set in every group). QUBO conventions are those
of :mod:`jaxcsp.models.fm`:

* :func:`anneal_qubo`: ``QUBO(x) = offset + h·x + xᵀ J x`` with a dense ``J (M, M)`` (any
  square matrix; it is symmetrised and its diagonal folded into ``h``). One flip costs
  ``O(M)`` (the local-field vector of every replica is updated with a row of the symmetric
  coupling matrix; skipped when no replica accepted).
* :func:`anneal_fm`: the factorization machine ``QUBO(x) = offset + h·x
  + ½ Σ_k [(W_k·x)² − (W_k²)·x]`` with ``W (K, M)``, never forming the ``M × M`` couplings.
  Each replica keeps ``v = W x`` (``K``) and the per-group counts, and the energy change of
  flipping bit ``i`` (``d = 1 − 2 x_i``) is, exactly,

      ΔE_i = d (h_i + w_i·v) + ½ (1 − d) |w_i|² + λ_{g(i)} (2 d (c_{g(i)} − 1) + 1),

  because ``½[(v_k + d w_ki)² − v_k²] − ½ d w_ki² = d w_ki v_k + ½ w_ki² (1 − d)`` with
  ``d² = 1``, and ``(c + d − 1)² − (c − 1)² = 2 d (c − 1) + 1``: ``O(K)`` per flip.

Algorithm (both): ``R`` replicas run in parallel, batched on a trailing replica axis (states are
held as ``(M, R)``, so the flip of bit ``i`` touches one contiguous row for all replicas). Each
sweep visits the bits in order ``0 … M − 1`` with single-bit Metropolis updates (accept when
``β ΔE ≤ −log u``, ``u`` uniform from a counter-based hash of the key, sweep, bit and
replica) at one inverse temperature; ``β`` follows the geometric
schedule ``β_s = β₀ (β₁ / β₀)^{s / (S − 1)}`` over the ``S`` sweeps. The lowest-energy state of
each replica at the end of any sweep is kept and returned. Start states are uniformly random
bits, with exactly one random bit per group when groups are given.

Defaults, from the coefficient scale. Let ``τ_i`` be the typical single-flip energy change of
bit ``i`` in the unpenalised QUBO: the root mean square of its field ``h_i + Σ_{j≠i} Q_ij x_j``
over uniformly random states (``Q = J + Jᵀ`` off the diagonal, ``h`` with ``diag(J)`` folded
in), ``τ_i = sqrt((h_i + ½ Σ_j Q_ij)² + ¼ Σ_j Q_ij²)``.

* penalty (groups given, ``penalty=None``): ``λ = max_i τ_i``, the same for every group;
* ``β₀ = ln 2 / max_i (τ_i + λ_g(i))`` (``λ = 0`` for free bits): in the first sweep a typical
  flip, including adding a bit to a satisfied group or removing its only bit (``+λ``), is
  accepted with probability at least 1/2;
* ``β₁ = ln 100 / (0.01 · median_i τ_i)``: in the last sweep a flip costing 1% of a typical
  change is accepted with probability at most 1%.

This follows dwave-samplers' rule (hot: accept the largest change with probability 1/2; cold:
accept the smallest with probability 1%) with *typical* instead of extreme changes: for
real-valued FM couplings the extremes are useless (the worst case ``|h_i| + Σ_j |Q_ij|`` counts
every coupling aligned, and the smallest non-zero ``|Q_ij|`` is near zero, which put
``β₁/β₀`` at ``10¹³`` on the 2,000-bit benchmark and spent most sweeps frozen). The penalty is
not large enough to make every local minimum feasible (``λ > max_i (|h_i| + Σ_j |Q_ij|)``
would be, and anneals worse); ``feasible`` says which results are. Computing ``τ`` costs
``O(M² K)`` for :func:`anneal_fm` (row blocks, never ``M²`` memory); pass ``beta_range`` and
``penalty`` to skip it.

Everything is pure and jit-compiled: ``num_sweeps``, ``beta_range``, ``penalty`` and all
coefficients are traced (changing them compiles nothing); ``num_replicas``, ``M``, ``K`` and
the number of groups fix the shapes. The functions may be called under ``jax.jit`` (with
``groups`` and ``num_replicas`` static) or ``jax.vmap`` (e.g. over keys).

>>> import jax, jax.numpy as jnp
>>> h = jnp.array([1.0, -1.0, 1.0, -1.0])
>>> r = anneal_qubo(jax.random.key(0), 0.0, h, jnp.zeros((4, 4)), num_replicas=4,
...                 num_sweeps=20)
>>> r.states[r.best].tolist(), float(r.energies[r.best])
([0, 1, 0, 1], -2.0)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxcsp import parallel
from jaxcsp.errors import InvalidArgumentError, check_int, check_real
from jaxcsp.models.fm import FMModel, _group_arrays, fm_coefficients

__all__ = ["AnnealResult", "anneal_fm", "anneal_qubo", "default_beta_range"]

Array = jax.Array

#: sweeps between two exact recomputations of the local fields in :func:`anneal_qubo`
REFRESH_SWEEPS = 32
#: rows per block when scanning couplings for the default β range
_BLOCK = 256


class AnnealResult(NamedTuple):
    """Outcome of :func:`anneal_qubo` / :func:`anneal_fm`.

    Attributes:
      states: ``(R, M)`` int8, the lowest-energy state each replica reached (checked at the end
        of every sweep).
      energies: ``(R,)`` float, the objective of ``states`` (QUBO plus one-hot penalty;
        equal to the QUBO energy for feasible states), recomputed exactly; units of the
        coefficients.
      feasible: ``(R,)`` bool, whether each state has exactly one bit in every group; ``None``
        without groups.
      best: ``()`` int32, index of the lowest-energy replica (among feasible ones, if any).
      beta_range: ``(2,)`` float, the ``(β₀, β₁)`` used (inverse energy units).
      penalty: ``(G,)`` float, the ``λ`` of each group used (energy units); ``None`` without
        groups.
    """

    states: Array
    energies: Array
    feasible: Array | None
    best: Array
    beta_range: Array
    penalty: Array | None


# ------------------------------------------------------------------------- host checks


def _is_concrete(v: Any) -> bool:
    return not isinstance(v, jax.core.Tracer)


def _group_ids(groups: Sequence[Any] | None, num_bits: int) -> tuple[np.ndarray, int]:
    """``(gid (M,) int32, G)``: the group of each bit, ``G`` (a dummy group) if in none."""
    if groups is None:
        return np.zeros((num_bits,), np.int32), 0
    arrays, _ = _group_arrays(groups, num_bits, disjoint=True)
    gid = np.full((num_bits,), len(arrays), np.int32)
    for g, a in enumerate(arrays):
        gid[a] = g
    return gid, len(arrays)


def _check_common(num_replicas, num_sweeps, beta_range, initial_states, num_bits, unroll):
    if initial_states is None:
        num_replicas = check_int("num_replicas", num_replicas)
    else:
        s = np.shape(initial_states)
        if len(s) != 2 or s[1] != num_bits:
            raise InvalidArgumentError(
                f"initial_states must be (R, {num_bits}), got {s}",
                argument="initial_states",
                value=None,
            )
        num_replicas = s[0]
    if _is_concrete(num_sweeps):
        check_int("num_sweeps", num_sweeps)
    if beta_range is not None:
        if np.shape(beta_range) != (2,):
            raise InvalidArgumentError(
                f"beta_range must be (beta0, beta1), got {beta_range!r}",
                argument="beta_range",
                value=beta_range,
            )
        try:
            values = np.asarray(beta_range, dtype=float)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            values = None  # traced: checked by nobody, as any traced argument
        if values is not None:
            check_real("beta_range", values, unit="1/energy")
    check_int("unroll", unroll)
    return num_replicas


# ------------------------------------------------------------------------ shared pieces


def _typical_fields(row_block, hlin: Array, num_bits: int) -> Array:
    """``τ_i``: root-mean-square single-flip energy change of bit ``i`` over uniform random states.

    The flip changes the energy by ``±(h_i + Σ_{j≠i} Q_ij x_j)``; for independent fair bits
    ``x_j`` that field has mean ``μ_i = h_i + ½ Σ_j Q_ij`` and variance ``¼ Σ_j Q_ij²``, so
    ``τ_i = sqrt(μ_i² + ¼ Σ_j Q_ij²)``. ``row_block(rows (B,))`` returns the rows
    ``Q[rows] (B, M)`` of the symmetric couplings (diagonal ignored); blocks of ``_BLOCK`` rows,
    never ``M²`` memory.
    """
    nb = -(-num_bits // _BLOCK)
    rows = jnp.arange(nb * _BLOCK, dtype=jnp.int32).reshape(nb, _BLOCK)
    cols = jnp.arange(num_bits, dtype=jnp.int32)

    def one(r):
        rc = jnp.minimum(r, num_bits - 1)
        q = jnp.where(cols[None, :] == rc[:, None], 0.0, row_block(rc))
        mu = hlin[rc] + 0.5 * jnp.sum(q, axis=1)
        return jnp.sqrt(mu * mu + 0.25 * jnp.sum(q * q, axis=1))

    return jax.lax.map(one, rows).reshape(-1)[:num_bits]


def _default_penalty(tau: Array) -> Array:
    top = jnp.max(tau)
    return jnp.where(top > 0, top, 1.0)


def _beta_from_fields(tau: Array, lam_bits: Array) -> Array:
    """``(β₀, β₁)`` from the typical fields ``τ`` and each bit's group penalty ``λ_g(i)``."""
    hot_scale = jnp.max(tau + lam_bits)
    hot = jnp.where(hot_scale > 0, jnp.log(2.0) / jnp.where(hot_scale > 0, hot_scale, 1.0), 0.1)
    positive = tau > 0
    # median of the positive τ (the zero ones sorted to the end)
    srt = jnp.sort(jnp.where(positive, tau, jnp.inf))
    n = jnp.sum(positive)
    med = srt[jnp.maximum(n - 1, 0) // 2]
    cold = jnp.where(n > 0, jnp.log(100.0) / (0.01 * jnp.where(n > 0, med, 1.0)), 1.0)
    return jnp.stack([hot, jnp.maximum(cold, hot)])


def _penalty_full(penalty: Array, num_groups: int, dtype) -> Array:
    """``(G + 1,)`` strengths, the dummy group last with 0."""
    lam = jnp.broadcast_to(jnp.asarray(penalty, dtype), (num_groups,))
    return jnp.concatenate([lam, jnp.zeros((1,), dtype)])


def _initial_states(key, num_bits, num_replicas, gid, num_groups, dtype) -> Array:
    """Random ``(M, R)`` states: free bits fair coins, one random bit per group."""
    k1, k2 = jax.random.split(key)
    free = jax.random.bernoulli(k1, 0.5, (num_bits, num_replicas))
    if num_groups == 0:
        return free.astype(dtype)
    u = jax.random.uniform(k2, (num_bits, num_replicas))
    umax = jax.ops.segment_max(u, gid, num_segments=num_groups + 1)
    pick = u == umax[gid]
    return jnp.where((gid < num_groups)[:, None], pick, free).astype(dtype)


def _counts(x: Array, gid: Array, num_groups: int) -> Array:
    return jax.ops.segment_sum(x, gid, num_segments=num_groups + 1)


def _mix32(z: Array) -> Array:
    """A 32-bit integer hash (xor-shift-multiply finaliser), elementwise on uint32."""
    z = (z ^ (z >> 16)) * jnp.uint32(0x7FEB352D)
    z = (z ^ (z >> 15)) * jnp.uint32(0x846CA68B)
    return z ^ (z >> 16)


def _thresholds(
    seed: Array, sweep: Array, num_bits: int, rid: Array, num_replicas: int, dtype
) -> Array:
    """``−log u`` for ``(M, R_local)`` uniforms ``u ∈ (0, 1]`` of one sweep, counter-based.

    ``u`` hashes (seed, sweep, bit, replica): about ten integer operations per number, several
    times cheaper than ``jax.random`` for the ``M · R`` numbers every sweep needs. ``rid``
    ``(R_local,)`` uint32 are the global indices of the replicas held here (``arange(R)`` on
    one device; a slice of it per device under a mesh, so every replica draws the same numbers
    wherever it runs).
    """
    k = _mix32(seed[0] ^ _mix32(sweep.astype(jnp.uint32) + seed[1]))
    c = (
        jax.lax.broadcasted_iota(jnp.uint32, (num_bits, rid.shape[0]), 0) * jnp.uint32(num_replicas)
        + rid[None, :]
    )
    bits = _mix32(_mix32(c ^ k) + k)
    u = ((bits >> 8).astype(jnp.float32) + 1.0) * (1.0 / (1 << 24))  # (0, 1]
    return (-jnp.log(u)).astype(dtype)


def _over_replicas(body, mesh):
    """``body(x0 (M, R), rid (R,)) -> (bx (M, R), be (R,))``, split over ``mesh``'s devices.

    Replicas are independent: under a mesh each device anneals its slice of the replica axis
    and nothing is communicated (a flip's "did any replica accept" test stays local instead of
    becoming a cross-device reduction per bit). Coefficients are closed over (replicated).
    """
    return parallel.per_device(
        body, mesh, (P(None, parallel.BATCH_AXIS), P(parallel.BATCH_AXIS)),
        (P(None, parallel.BATCH_AXIS), P(parallel.BATCH_AXIS)),
    )  # fmt: skip


def _anneal_loop(key, x0, rid, num_replicas, aux0, e0, flip, bits, refresh, betas, num_sweeps,
                 unroll):  # fmt: skip
    """Run the sweeps; returns ``(best_x (M, R), best_e (R,))``.

    ``rid`` ``(R,)``: global replica indices of the columns of ``x0`` (of ``num_replicas``).

    A sweep is a ``lax.scan`` over the rows of the state (bit ``i`` of every replica) together
    with that bit's data ``bits`` (leading axis ``M``) and its acceptance thresholds: the state
    is streamed through, never updated in place inside the loop (an in-place row update of a
    carried ``(M, R)`` array makes XLA copy it on every flip).
    ``flip(beta, (aux, e), (x_i, t_i, bit_i)) -> ((aux, e), new x_i)``.
    """
    num_bits = x0.shape[0]
    dtype = x0.dtype
    b0, b1 = betas[0], betas[1]
    denom = jnp.maximum(num_sweeps - 1, 1).astype(dtype)
    ratio = b1 / b0

    seed = jax.random.bits(key, (2,), jnp.uint32)

    def sweep(s, carry):
        x, aux, e, bx, be = carry
        beta = b0 * ratio ** (s.astype(dtype) / denom)
        t = _thresholds(seed, s, num_bits, rid, num_replicas, dtype)
        (aux, e), x = jax.lax.scan(
            lambda c, row: flip(beta, c, row), (aux, e), (x, t, bits), unroll=unroll
        )
        x, aux, e = refresh(s, x, aux, e)
        better = e < be
        return x, aux, e, jnp.where(better[None, :], x, bx), jnp.where(better, e, be)

    out = jax.lax.fori_loop(0, num_sweeps, sweep, (x0, aux0, e0, x0, e0))
    return out[3], out[4]


def _finish(bx, be, gid, num_groups, betas, lam) -> AnnealResult:
    if num_groups:
        c = _counts(bx, gid, num_groups)[:num_groups]
        feasible = jnp.all(c == 1, axis=0)
        masked = jnp.where(feasible, be, jnp.inf)
        best = jnp.where(jnp.any(feasible), jnp.argmin(masked), jnp.argmin(be))
        penalty = lam[:num_groups]
    else:
        feasible, penalty = None, None
        best = jnp.argmin(be)
    return AnnealResult(bx.T.astype(jnp.int8), be, feasible, best.astype(jnp.int32), betas, penalty)


# ----------------------------------------------------------------------------- dense path


def _symmetric(h, J):
    """``(h + diag J, Q = J + Jᵀ with zero diagonal)``."""
    d = jnp.diagonal(J)
    q = J + J.T
    q = q - jnp.diag(jnp.diagonal(q))
    return h + d, q


def _dense_penalised(offset, h1, q, gid, num_groups, lam):
    if not num_groups:
        return offset, h1, q
    lg = lam[gid]
    same = (gid[:, None] == gid[None, :]) & (gid < num_groups)[:, None]
    same = same & ~jnp.eye(gid.shape[0], dtype=bool)
    q = q + jnp.where(same, 2.0 * lg[:, None], 0.0)
    return offset + jnp.sum(lam), h1 - lg, q


def default_beta_range(
    h: Any, J: Any, *, groups: Sequence[Any] | None = None, penalty: Any = None
) -> Array:
    """Default ``(β₀, β₁)`` of a dense QUBO ``h·x + xᵀ J x`` (see the module docstring).

    Args:
      h: ``(M,)`` linear coefficients (energy units).
      J: ``(M, M)`` couplings, any square matrix (energy units).
      groups: disjoint one-hot groups the annealer will penalise, or ``None``.
      penalty: their ``λ`` (scalar or ``(G,)``; default ``max_i τ_i``).

    Returns:
      ``(2,)`` float array, inverse energy units: ``β₀ = ln 2 / max_i (τ_i + λ_g(i))`` and
      ``β₁ = ln 100 / (0.01 · median_i τ_i)`` (at least ``β₀``); ``(0.1, 1)`` for an all-zero
      QUBO.

    >>> [round(float(b), 3) for b in default_beta_range(jnp.array([1.0, -2.0]), jnp.zeros((2, 2)))]
    [0.347, 460.517]
    """
    h = jnp.asarray(h)
    J = jnp.asarray(J, h.dtype)
    h1, q = _symmetric(h, J)
    m = h.shape[0]
    tau = _typical_fields(lambda r: q[r], h1, m)
    gid, ng = _group_ids(groups, m)
    lam = _penalty_full(_default_penalty(tau) if penalty is None else penalty, ng, h.dtype)
    return _beta_from_fields(tau, lam[jnp.asarray(gid)])


@functools.partial(
    jax.jit,
    static_argnames=("num_replicas", "num_groups", "auto_beta", "auto_penalty", "unroll", "mesh"),
)
def _anneal_dense(
    key, offset, h, J, gid, beta_range, penalty, num_sweeps, x0, *,
    num_replicas, num_groups, auto_beta, auto_penalty, unroll, mesh=None,
):  # fmt: skip
    num_bits = h.shape[0]
    dtype = h.dtype
    h1, q = _symmetric(h, J)
    if auto_beta or (num_groups and auto_penalty):
        tau = _typical_fields(lambda r: q[r], h1, num_bits)
    if num_groups and auto_penalty:
        penalty = _default_penalty(tau)
    lam = _penalty_full(penalty if num_groups else 0.0, num_groups, dtype)
    betas = _beta_from_fields(tau, lam[gid]) if auto_beta else jnp.asarray(beta_range, dtype)
    off, h1, q = _dense_penalised(offset, h1, q, gid, num_groups, lam)
    key, kx = jax.random.split(key)
    if x0 is None:
        x0 = _initial_states(kx, num_bits, num_replicas, gid, num_groups, dtype)
    else:
        x0 = x0.T.astype(dtype)

    def exact(x):
        f = h1[:, None] + q @ x
        return f, off + 0.5 * jnp.sum(x * (h1[:, None] + f), axis=0)

    def flip(beta, carry, row):
        f, e = carry
        xi, t, (qi, i) = row
        d = 1.0 - 2.0 * xi
        de = d * jax.lax.dynamic_index_in_dim(f, i, keepdims=False)
        step = jnp.where(beta * de <= t, d, 0.0)
        f = jax.lax.cond(
            jnp.any(step != 0), lambda f: f + qi[:, None] * step[None, :], lambda f: f, f
        )
        return (f, e + step * d * de), xi + step

    def refresh(s, x, f, e):
        def redo(_):
            f, e = exact(x)
            return x, f, e

        return jax.lax.cond((s + 1) % REFRESH_SWEEPS == 0, redo, lambda _: (x, f, e), None)

    bits = (q, jnp.arange(num_bits, dtype=jnp.int32))

    def body(x0, rid):
        f0, e0 = exact(x0)
        bx, _ = _anneal_loop(
            key, x0, rid, num_replicas, f0, e0, flip, bits, refresh, betas, num_sweeps, unroll
        )
        return bx, exact(bx)[1]

    bx, be = _over_replicas(body, mesh)(x0, jnp.arange(num_replicas, dtype=jnp.uint32))
    return _finish(bx, be, gid, num_groups, betas, lam)


def _dispatch(
    impl, key, offset, h, coef, groups, beta_range, penalty, num_sweeps, initial_states,
    num_replicas, unroll, mesh,
):  # fmt: skip
    """Check the common arguments and call a jitted annealer (dense ``J`` or low-rank ``W``)."""
    m = h.shape[0]
    r = _check_common(num_replicas, num_sweeps, beta_range, initial_states, m, unroll)
    parallel.check_divisible(r, mesh, argument="num_replicas", what="num_replicas")
    gid, ng = _group_ids(groups, m)
    return impl(
        key,
        jnp.asarray(offset, h.dtype),
        h,
        coef,
        jnp.asarray(gid),
        None if beta_range is None else jnp.asarray(beta_range, h.dtype),
        None if penalty is None else jnp.asarray(penalty, h.dtype),
        jnp.asarray(num_sweeps, jnp.int32),
        None if initial_states is None else jnp.asarray(initial_states),
        num_replicas=r,
        num_groups=ng,
        auto_beta=beta_range is None,
        auto_penalty=penalty is None,
        unroll=unroll,
        mesh=mesh,
    )


def anneal_qubo(
    key: Any,
    offset: Any,
    h: Any,
    J: Any,
    *,
    num_replicas: int = 64,
    num_sweeps: Any = 1000,
    beta_range: Any = None,
    groups: Sequence[Any] | None = None,
    penalty: Any = None,
    initial_states: Any = None,
    unroll: int = 1,
    mesh: Any = None,
) -> AnnealResult:
    """Simulated annealing of a dense QUBO ``offset + h·x + xᵀ J x`` (plus one-hot penalties).

    Cost per sweep: ``O(M · R)`` for the proposals plus ``O(M)`` per bit for which at least one
    replica accepted (the local fields ``f = h' + Q x`` of all replicas are updated with row
    ``i`` of ``Q = J + Jᵀ``); fields and energies are recomputed exactly every
    ``REFRESH_SWEEPS`` sweeps and at the end. Memory: a few ``M × M`` matrices.

    Args:
      key: ``jax.random`` key.
      offset: ``()`` constant (energy units).
      h: ``(M,)`` linear coefficients (energy units; float dtype sets the compute dtype).
      J: ``(M, M)`` couplings (energy units), any square matrix (see
        :func:`jaxcsp.models.fm.qubo_energy`).
      num_replicas: ``R``, independent chains run in parallel.
      num_sweeps: ``S >= 1``, sweeps over all bits (may be traced).
      beta_range: ``(β₀, β₁)`` inverse temperatures of the first and last sweep (1/energy
        units; may be traced), or ``None`` for the default of the module docstring.
      groups: disjoint one-hot groups (sequence of 1-d index arrays), penalised with
        ``λ_g (Σ_{i∈g} x_i − 1)²`` and reported in ``feasible``.
      penalty: ``λ``, scalar or ``(G,)`` (energy units), or ``None`` for ``max_i τ_i`` (module
        docstring).
      initial_states: ``(R, M)`` 0/1 start states (overrides ``num_replicas``), or ``None``.
      unroll: inner-loop unroll factor (a compile-time tuning knob).
      mesh: a :func:`jaxcsp.parallel.batch_mesh`: the replicas are split over its devices
        (``R`` a multiple of its size), each device annealing its own with no communication;
        the same states and energies as on one device.

    Returns:
      :class:`AnnealResult`.
    """
    h = jnp.asarray(h)
    if not jnp.issubdtype(h.dtype, jnp.floating):
        h = h.astype(jnp.zeros(()).dtype)
    J = jnp.asarray(J, h.dtype)
    m = h.shape[0] if h.ndim == 1 else -1
    if h.ndim != 1 or J.shape != (m, m):
        raise InvalidArgumentError(
            f"h must be (M,) and J (M, M), got {h.shape} and {J.shape}", argument="J", value=None
        )
    return _dispatch(
        _anneal_dense, key, offset, h, J, groups, beta_range, penalty, num_sweeps, initial_states,
        num_replicas, unroll, mesh,
    )  # fmt: skip


# --------------------------------------------------------------------------- low-rank path


@functools.partial(
    jax.jit,
    static_argnames=("num_replicas", "num_groups", "auto_beta", "auto_penalty", "unroll", "mesh"),
)
def _anneal_lowrank(
    key, offset, h, w, gid, beta_range, penalty, num_sweeps, x0, *,
    num_replicas, num_groups, auto_beta, auto_penalty, unroll, mesh=None,
):  # fmt: skip
    num_bits = h.shape[0]
    dtype = h.dtype
    wt = w.T  # (M, K): row i is w_i
    s2 = jnp.sum(w * w, axis=0)  # (M,)

    if auto_beta or (num_groups and auto_penalty):
        tau = _typical_fields(lambda r: wt[r] @ w, h, num_bits)
    if num_groups and auto_penalty:
        penalty = _default_penalty(tau)
    lam = _penalty_full(penalty if num_groups else 0.0, num_groups, dtype)
    betas = _beta_from_fields(tau, lam[gid]) if auto_beta else jnp.asarray(beta_range, dtype)
    key, kx = jax.random.split(key)
    if x0 is None:
        x0 = _initial_states(kx, num_bits, num_replicas, gid, num_groups, dtype)
    else:
        x0 = x0.T.astype(dtype)

    def exact(x):
        v = w @ x  # (K, R)
        c = _counts(x, gid, num_groups)  # (G + 1, R)
        e = offset + h @ x + 0.5 * (jnp.sum(v * v, axis=0) - s2 @ x) + lam @ (c - 1.0) ** 2
        return (v, c), e

    def flip(beta, carry, row):
        (v, c), e = carry
        xi, t, (wi, hi, si, g, lg) = row
        d = 1.0 - 2.0 * xi
        # an elementwise product and a K-sum fuse with the rest; a dot would be its own kernel
        de = d * (hi + jnp.sum(wi[:, None] * v, axis=0)) + 0.5 * (1.0 - d) * si
        if num_groups:
            cg = jax.lax.dynamic_index_in_dim(c, g, keepdims=False)
            de = de + lg * (2.0 * d * (cg - 1.0) + 1.0)
        step = jnp.where(beta * de <= t, d, 0.0)
        v = v + wi[:, None] * step[None, :]
        if num_groups:
            c = jax.lax.dynamic_update_index_in_dim(c, cg + step, g, 0)
        return ((v, c), e + step * d * de), xi + step

    def refresh(s, x, aux, e):
        aux, e = exact(x)
        return x, aux, e

    bits = (wt, h, s2, gid, lam[gid])

    def body(x0, rid):
        aux0, e0 = exact(x0)
        return _anneal_loop(
            key, x0, rid, num_replicas, aux0, e0, flip, bits, refresh, betas, num_sweeps, unroll
        )

    bx, be = _over_replicas(body, mesh)(x0, jnp.arange(num_replicas, dtype=jnp.uint32))
    return _finish(bx, be, gid, num_groups, betas, lam)


def anneal_fm(
    key: Any,
    fm: FMModel | tuple,
    *,
    num_replicas: int = 64,
    num_sweeps: Any = 1000,
    beta_range: Any = None,
    groups: Sequence[Any] | None = None,
    penalty: Any = None,
    initial_states: Any = None,
    unroll: int = 1,
    mesh: Any = None,
) -> AnnealResult:
    """Simulated annealing of a factorization machine's QUBO at ``O(K)`` per flip.

    Minimises ``offset + h·x + ½ Σ_k [(W_k·x)² − (W_k²)·x]`` (plus one-hot penalties) without
    forming the ``M × M`` couplings: each replica keeps ``v = W x`` and its group counts, so a
    proposal costs ``O(K)`` and a sweep ``O(M K R)``; ``v``, the counts and the energies are
    recomputed exactly (``O(M K R)``) after every sweep. The same moves, schedule and defaults
    as :func:`anneal_qubo` on ``fm_to_qubo(fm)``, at a fraction of the cost for ``K ≪ M``.

    Args:
      key: ``jax.random`` key.
      fm: an :class:`~jaxcsp.models.fm.FMModel` (original energy units), or
        ``(offset (), h (M,), W (K, M))`` as :func:`~jaxcsp.models.fm.fm_coefficients`
        returns (float dtype of ``h`` sets the compute dtype).
      num_replicas, num_sweeps, beta_range, groups, penalty, initial_states, unroll, mesh: as in
        :func:`anneal_qubo` (the default ``β`` range and penalty scan ``WᵀW`` in row blocks,
        ``O(M² K)`` time once; pass both to skip it).

    Returns:
      :class:`AnnealResult`; ``energies`` are FM energies plus penalty, exact.
    """
    offset, h, w = fm_coefficients(fm) if isinstance(fm, FMModel) else fm
    h = jnp.asarray(h)
    if not jnp.issubdtype(h.dtype, jnp.floating):
        h = h.astype(jnp.zeros(()).dtype)
    w = jnp.asarray(w, h.dtype)
    m = h.shape[0] if h.ndim == 1 else -1
    if h.ndim != 1 or w.ndim != 2 or w.shape[1] != m:
        raise InvalidArgumentError(
            f"h must be (M,) and W (K, M), got {h.shape} and {w.shape}", argument="fm", value=None
        )
    return _dispatch(
        _anneal_lowrank, key, offset, h, w, groups, beta_range, penalty, num_sweeps, initial_states,
        num_replicas, unroll, mesh,
    )  # fmt: skip
