"""Simulated annealing of FM QUBOs: :func:`jaxcsp.models.anneal_fm` (``O(K)`` per flip) and
:func:`jaxcsp.models.anneal_qubo` (dense) vs dwave-samplers ``SimulatedAnnealingSampler``.

Problems: a random factorization machine of rank ``K = 8`` over a CRYSIM-like bit vector of
``M`` bits (``--sizes``, default 2,000 / 4,000 / 8,000): one-hot groups for the six lattice
parameters (``--lattice-bits`` each), the crystal system (7), the space group (60) and the
Wyckoff-position-combination group (300); the remaining bits are the voxel grids of the
atomic sites, free bits (several sites may share a species grid). Coefficients:
``h ~ N(0, 1/M)``, ``W ~ N(0, 1/M)``; one-hot penalty ``λ`` = jaxcsp's default (the largest typical
single-flip energy change ``max_i τ_i``, see :mod:`jaxcsp.models.anneal`).

Every solver anneals the *same* penalised QUBO with the *same* geometric β schedule (jaxcsp's
default range for that QUBO, passed to the peer as ``beta_range``, so no solver pays for
computing it inside the timings), single-bit Metropolis sweeps in bit order:

* peer: ``SimulatedAnnealingSampler.sample(bqm, num_reads=--peer-reads,
  num_sweeps=--peer-sweeps)`` on the dense BQM (single-threaded C++; BQM construction is
  excluded). Its best energy is the **target**; its wall time for that run is its time to the
  target (an upper bound: fewer sweeps might do).
* ours: ``anneal_fm`` and ``anneal_qubo`` with ``--replicas`` replicas, run warm for a ladder of
  sweep counts (16, 32, 64, ...; ``num_sweeps`` is traced, so the ladder compiles once) until a
  run reaches the target or one run takes longer than ``--budget`` seconds. *Time to equal
  quality* is the warm wall time of the first run whose best energy is at or below the target
  (``1e-6`` relative tolerance); "cold" adds the first call's compilation.

All energies are re-evaluated in float64 numpy from the returned bit vectors (ours compute in
float32). Printed: one table per size, and ``compare`` lines (peer time / our time to the
target); JSON lines go to ``benchmarks/results/anneal.jsonl``. Run from the repository root::

    python -m benchmarks.anneal [--sizes 2000,4000,8000] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import time

import jax
import numpy as np

from benchmarks.harness import Timing, compare, compile_clock, record
from jaxcsp.models import anneal_fm, anneal_qubo, fm_to_qubo

SUITE = "anneal"
RANK = 8


def crysim_groups(num_bits: int, lattice_bits: int = 20) -> list[np.ndarray]:
    """One-hot groups of a CRYSIM-like bit vector: 6 lattice parameters, crystal system (7),
    space group (60), WPC group (300); the bits after them (voxel grids) are in no group."""
    sizes = [lattice_bits] * 6 + [7, 60, 300]
    if sum(sizes) >= num_bits:
        raise ValueError(f"{num_bits} bits cannot hold the groups {sizes}")
    starts = np.cumsum([0, *sizes])
    return [np.arange(a, b) for a, b in itertools.pairwise(starts)]


def random_fm(num_bits: int, seed: int = 0):
    """``(offset, h (M,), W (K, M))`` float32, ``h, W ~ N(0, 1/M)``."""
    rng = np.random.default_rng(seed)
    s = 1.0 / np.sqrt(num_bits)
    h = (rng.normal(size=num_bits) * s).astype(np.float32)
    w = (rng.normal(size=(RANK, num_bits)) * s).astype(np.float32)
    return np.float32(0.0), h, w


def energy64(fm, groups, lam, x) -> np.ndarray:
    """Exact float64 objective (FM + one-hot penalty) of bit vectors ``x (R, M)``."""
    off, h, w = (np.asarray(a, np.float64) for a in fm)
    x = np.asarray(x, np.float64)
    v = x @ w.T
    e = off + x @ h + 0.5 * (np.sum(v * v, axis=1) - x @ np.sum(w * w, axis=0))
    for g, lg in zip(groups, np.broadcast_to(lam, (len(groups),)), strict=True):
        e = e + float(lg) * (x[:, g].sum(1) - 1.0) ** 2
    return e


def ladder(run, fm, groups, lam, target, *, budget, max_sweeps, label):
    """Warm runs of ``run(num_sweeps)`` for 16, 32, ... sweeps until the target is reached.

    Returns ``(rows, cold_s, compile_s, hit)`` where ``hit`` is the first row reaching it.
    """
    c0 = compile_clock()[0]
    t = time.perf_counter()
    jax.block_until_ready(run(16))
    cold_first = time.perf_counter() - t
    compile_s = compile_clock()[0] - c0
    rows, hit, s = [], None, 16
    while s <= max_sweeps:
        t = time.perf_counter()
        r = jax.block_until_ready(run(s))
        dt = time.perf_counter() - t
        e = energy64(fm, groups, lam, r.states)
        feas = np.asarray(r.feasible) if r.feasible is not None else np.ones(len(e), bool)
        best = float(np.min(np.where(feas, e, np.inf))) if feas.any() else float(np.min(e))
        ok = best <= target + 1e-6 * max(1.0, abs(target))
        row = dict(solver=label, sweeps=s, wall_s=dt, best=best, feasible=float(feas.mean()),
                   reached=bool(ok))  # fmt: skip
        rows.append(row)
        print(
            f"    {label:<22} sweeps {s:>5}  {dt:9.3f} s  best {best:13.6f}  "
            f"feasible {feas.mean():5.0%}  {'REACHED' if ok else ''}",
            flush=True,
        )
        if ok:
            hit = row
            break
        if dt > budget:
            break
        s *= 2
    return rows, cold_first, compile_s, hit


def peer_run(fm, groups, lam, betas, *, reads, sweeps, seed):
    import dimod
    from dwave.samplers import SimulatedAnnealingSampler

    off, h, w = (np.asarray(a, np.float64) for a in fm)
    lam = float(np.broadcast_to(lam, (len(groups),))[0])
    # the penalised QUBO in float64 numpy (jnp would truncate to float32 without x64)
    J = np.triu(w.T @ w, 1)
    h = h.copy()
    for g in groups:
        h[g] -= lam
        J[np.ix_(g, g)] += np.triu(np.full((len(g), len(g)), 2.0 * lam), 1)
    t = time.perf_counter()
    bqm = dimod.BQM(h, J, float(off) + lam * len(groups), "BINARY")
    build_s = time.perf_counter() - t
    del J
    sampler = SimulatedAnnealingSampler()
    t = time.perf_counter()
    ss = sampler.sample(
        bqm,
        num_reads=reads,
        num_sweeps=sweeps,
        beta_range=[float(betas[0]), float(betas[1])],
        beta_schedule_type="geometric",
        seed=seed,
    )
    sample_s = time.perf_counter() - t
    x = ss.record.sample.astype(np.float64)
    e = energy64(fm, groups, lam, x)
    assert np.allclose(e, ss.record.energy, rtol=1e-6, atol=1e-6), "BQM energy mismatch"
    feas = np.all(np.stack([x[:, g].sum(1) == 1 for g in groups], 1), axis=1)
    best = float(np.min(np.where(feas, e, np.inf))) if feas.any() else float(np.min(e))
    return best, float(feas.mean()), sample_s, build_s


def bench_size(m, args):
    groups = crysim_groups(m, args.lattice_bits)
    fm = random_fm(m, args.seed)
    key = jax.random.key(args.seed)
    # jaxcsp's defaults for this QUBO (penalty, then β range), computed once
    t = time.perf_counter()
    d = anneal_fm(key, fm, num_replicas=2, num_sweeps=1, groups=groups)
    lam = np.asarray(d.penalty)
    betas = np.asarray(d.beta_range)
    defaults_s = time.perf_counter() - t
    free = m - sum(len(g) for g in groups)
    case = f"M={m} K={RANK} groups={len(groups)} free={free}"
    print(
        f"\n{case}: penalty λ = {lam[0]:.4g}, β = ({betas[0]:.4g}, {betas[1]:.4g}) "
        f"(defaults, first call incl. compile: {defaults_s:.1f} s)",
        flush=True,
    )

    best, feas, peer_s, build_s = peer_run(
        fm, groups, lam, betas, reads=args.peer_reads, sweeps=args.peer_sweeps, seed=args.seed
    )
    target = best
    print(
        f"    {'dwave SA (peer)':<22} sweeps {args.peer_sweeps:>5}  {peer_s:9.3f} s  best "
        f"{best:13.6f}  feasible {feas:5.0%}  ({args.peer_reads} reads; BQM build "
        f"{build_s:.1f} s excluded) = TARGET",
        flush=True,
    )
    kw = dict(num_replicas=args.replicas, groups=groups, penalty=lam, beta_range=betas)
    results = {}
    runs = {
        "jaxcsp anneal_fm": lambda s: anneal_fm(key, fm, num_sweeps=s, **kw),
    }
    if m <= args.dense_max:
        off, h, J = fm_to_qubo(fm)
        runs["jaxcsp anneal_qubo"] = lambda s: anneal_qubo(key, off, h, J, num_sweeps=s, **kw)
    for label, run in runs.items():
        rows, cold, comp, hit = ladder(
            run, fm, groups, lam, target, budget=args.budget, max_sweeps=args.max_sweeps,
            label=label,
        )  # fmt: skip
        results[label] = (rows, cold, comp, hit)
        for row in rows:
            record(SUITE, dict(case=case, kind="ladder", target=target, replicas=args.replicas,
                               m=m, **row))  # fmt: skip

    print(f"\n  time to the peer's best energy {target:.6f} ({case})")
    print(f"    {'solver':<22} {'sweeps':>6} {'warm s':>9} {'cold s':>9} {'peer/ours':>9}")
    print(f"    {'dwave SA (peer)':<22} {args.peer_sweeps:>6} {peer_s:9.3f} {peer_s:9.3f}")
    for label, (rows, _cold, comp, hit) in results.items():
        if hit is None:
            last = rows[-1]
            print(
                f"    {label:<22} not reached (best {last['best']:.6f} after "
                f"{last['sweeps']} sweeps, {last['wall_s']:.1f} s)"
            )
            record(SUITE, dict(case=case, kind="summary", solver=label, reached=False,
                               target=target, best=last["best"], m=m))  # fmt: skip
            continue
        warm = hit["wall_s"]
        print(
            f"    {label:<22} {hit['sweeps']:>6} {warm:9.3f} {warm + comp:9.3f} "
            f"x{peer_s / warm:8.2f}"
        )
        compare(
            SUITE,
            f"{case} time-to-target",
            Timing((warm,), warm, comp),
            Timing((peer_s,), peer_s, 0.0),
            peer_name=f"dwave SA {args.peer_reads}x{args.peer_sweeps}",
            extra=dict(solver=label, sweeps=hit["sweeps"], replicas=args.replicas,
                       target=target, ours_best=hit["best"], peer_reads=args.peer_reads,
                       peer_sweeps=args.peer_sweeps, penalty=float(lam[0]),
                       beta_range=[float(b) for b in betas], m=m,
                       ours_cold_s=warm + comp),
        )  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="2000,4000,8000")
    p.add_argument("--replicas", type=int, default=64)
    p.add_argument("--peer-reads", type=int, default=2)
    p.add_argument("--peer-sweeps", type=int, default=1000)
    p.add_argument("--max-sweeps", type=int, default=4096)
    p.add_argument("--budget", type=float, default=60.0, help="stop a ladder after a run this long")
    p.add_argument("--dense-max", type=int, default=8000, help="largest M for anneal_qubo")
    p.add_argument("--lattice-bits", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="M=600, 16 replicas, short runs")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.replicas, args.peer_reads, args.peer_sweeps = "600", 16, 1, 200
        args.max_sweeps, args.budget, args.lattice_bits = 1024, 5.0, 10
    for m in (int(s) for s in args.sizes.split(",")):
        bench_size(m, args)


if __name__ == "__main__":
    main()
