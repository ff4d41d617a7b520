"""Batched BFGS + line search vs ASE ``BFGSLineSearch`` + ``FrechetCellFilter`` (same potential).

For each case, ``--n`` random symmetric structures (jaxcsp.symmetry.random_crystals, fixed seed
per case) are relaxed with variable cell to fmax 0.01 eV/Å:

* ours: :func:`jaxcsp.optimize.relax` on the whole batch (one fused evaluation per iteration).
  One run; the seconds JAX spends compiling during it (JAX's own compile events: the first
  chunk, and any neighbor-list shape that grows mid-run) are printed and subtracted;
* peer: ASE ``BFGSLineSearch(FrechetCellFilter(atoms))`` in ``--procs`` single-threaded
  worker processes (the seed's baseline is one process per core), each with one calculator
  reused for all its structures. The calculator is the fastest implementation of the *same*
  potential: ASE's own ``LennardJones`` for LJ (checked equal to ours to 1e-8 on each worker's
  first structure) and :class:`~jaxcsp.potentials.ase_calculator.JaxcspCalculator` for
  Stillinger-Weber (``--peer-calc jaxcsp`` forces the adapter everywhere); its compile time is
  subtracted too. ASE is timed on ``--ase-n`` structures and scaled to ``--n`` (printed).

Also printed: how many structures reach the same energy (1e-4 eV/atom) and the median force
calls of both. Run from the repository root::

    python -m benchmarks.relax [--n 400] [--ase-n 40] [--cases lj8,lj32,sw8,sw64] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import time
import zlib

import jax
import numpy as np

from benchmarks.harness import Timing, compare, compile_clock

jax.config.update("jax_enable_x64", True)

import jaxcsp as jc  # noqa: E402
from jaxcsp import potentials  # noqa: E402
from jaxcsp.optimize import relax  # noqa: E402
from jaxcsp.symmetry import random_crystals, reconstruct  # noqa: E402

CASES = {
    "lj8": ("Ar8", "lj"),
    "lj32": ("Ar32", "lj"),
    "sw8": ("Si8", "sw"),
    "sw64": ("Si64", "sw"),
}
LJ = dict(sigma=1.7, epsilon=0.1, cutoff=4.25)


def make_potential(name: str):
    if name == "lj":
        return potentials.lennard_jones(**LJ)
    return potentials.stillinger_weber()


def _counted(calc):
    """Count evaluations of any ASE calculator in ``calc.n_calls``."""
    calc.n_calls = 0
    inner = calc.calculate

    def calculate(*args, **kwargs):
        calc.n_calls += 1
        return inner(*args, **kwargs)

    calc.calculate = calculate
    return calc


def _peer_calculator(pot_name: str, peer_calc: str, first, n_pad: int, spec):
    """The peer's calculator (one per worker process) and its name."""
    from jaxcsp.potentials.ase_calculator import JaxcspCalculator

    ours = JaxcspCalculator(make_potential(pot_name), max_atoms=n_pad, spec=spec)
    if pot_name != "lj" or peer_calc == "jaxcsp":
        return _counted(ours), "jaxcsp ASE adapter"
    from ase.calculators.lj import LennardJones

    native = LennardJones(sigma=LJ["sigma"], epsilon=LJ["epsilon"], rc=LJ["cutoff"], smooth=False)
    a, b = first.copy(), first.copy()
    a.calc, b.calc = ours, native
    for get in ("get_potential_energy", "get_forces", "get_stress"):
        if not np.allclose(getattr(a, get)(), getattr(b, get)(), rtol=1e-8, atol=1e-8):
            raise RuntimeError(f"ASE LennardJones differs from jaxcsp's in {get}")
    return _counted(native), "ASE LennardJones"


def _ase_worker(args):
    """Relax a list of structures with ASE in this process.

    Returns ``(seconds excluding JAX compilation, energies per atom, calls, calculator name)``.
    """
    jax.config.update("jax_enable_x64", True)
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGSLineSearch

    pot_name, peer_calc, images, fmax, n_pad, spec = args
    calc, calc_name = _peer_calculator(pot_name, peer_calc, images[0], n_pad, spec)
    w = images[0].copy()  # compile / warm up once before timing
    w.calc = calc
    w.get_forces()
    w.get_stress()
    energies, calls = [], []
    compile0 = compile_clock()[0]
    t0 = time.perf_counter()
    for atoms in images:
        atoms = atoms.copy()
        atoms.calc = calc
        start = calc.n_calls
        opt = BFGSLineSearch(FrechetCellFilter(atoms), logfile=None)
        try:
            opt.run(fmax=fmax, steps=1000)
        except RuntimeError:
            pass
        energies.append(atoms.get_potential_energy() / len(atoms))
        calls.append(calc.n_calls - start)
    wall = time.perf_counter() - t0
    return wall - (compile_clock()[0] - compile0), energies, calls, calc_name


@contextlib.contextmanager
def _single_threaded_children():
    """One thread per worker process (BLAS, OpenMP, XLA), as a one-process-per-core baseline
    is run: with the default thread pools, two workers on two cores oversubscribe them and ASE
    runs 5-9x slower (3x3 ``logm``/``expm`` calls in ``FrechetCellFilter`` spin BLAS threads)."""
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys[:3]:
        os.environ[k] = "1"
    os.environ["XLA_FLAGS"] = (
        (saved["XLA_FLAGS"] or "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_case(name: str, n: int, ase_n: int, procs: int, fmax: float, peer_calc: str) -> None:
    comp, pot_name = CASES[name]
    pot = make_potential(pot_name)
    t = time.perf_counter()
    wc = random_crystals(jax.random.key(zlib.crc32(name.encode())), comp, n)
    c = jc.compact(reconstruct(wc))
    print(f"[{name}] generated {n} x {comp} in {time.perf_counter() - t:.1f} s", flush=True)

    compile0, compiles0 = compile_clock()
    t = time.perf_counter()
    res = relax(c, pot, fmax=fmax, cell_filter="frechet", max_steps=1000, progress=True)
    jax.block_until_ready(res.energy)
    wall = time.perf_counter() - t
    compile_s = compile_clock()[0] - compile0
    n_compiles = compile_clock()[1] - compiles0
    warm = wall - compile_s

    images = jc.io.to_ase(c)[:ase_n]
    chunks = [images[i::procs] for i in range(procs)]
    spec = jc.neighbors.neighbor_list_spec(
        c, float(pot.cutoff), capacity_headroom=1.0, cell_headroom=0.5
    )
    ctx = mp.get_context("spawn")
    t = time.perf_counter()
    with _single_threaded_children(), ctx.Pool(procs) as pool:
        out = pool.map(
            _ase_worker, [(pot_name, peer_calc, ch, fmax, c.max_atoms, spec) for ch in chunks]
        )
    wall_pool = time.perf_counter() - t
    ase_wall = max(o[0] for o in out)  # the timed part of the slowest worker
    ase_e = np.empty(len(images))
    ase_calls = np.empty(len(images))
    for k, (_, e, cl, _) in enumerate(out):
        ase_e[k::procs] = e
        ase_calls[k::procs] = cl
    scaled = ase_wall * n / len(images)
    ours_e = np.asarray(res.energy)[: len(images)] / np.asarray(c.num_atoms)[: len(images)]
    same = np.abs(ours_e - ase_e) < 1e-4
    lower = int(np.sum(ours_e < ase_e - 1e-4))
    conv = np.asarray(res.converged)
    calls_ours = np.asarray(res.force_calls)
    compare(
        "relax",
        f"{name}: {n} x {comp} frechet",
        Timing((warm,), warm, compile_s),
        Timing((scaled,), scaled, 0.0),
        peer_name=f"ASE BFGSLineSearch + {out[0][3]} x{procs} procs (scaled from {len(images)})",
        units=n,
        extra=dict(
            ours_wall_s=wall,
            ours_compile_s=compile_s,
            ours_compiles=n_compiles,
            ase_pool_wall_s=wall_pool,
            same_minimum=float(same.mean()),
            ours_lower=lower,
            converged=float(conv.mean()),
            median_calls_ours=float(np.median(calls_ours[: len(images)])),
            median_calls_ase=float(np.median(ase_calls)),
            max_calls_ours=int(calls_ours.max()),
        ),
    )
    print(
        f"    ours wall {wall:.1f} s = {warm:.1f} s relaxing + {compile_s:.1f} s compiling "
        f"({n_compiles} programs); converged {conv.mean():.1%}; same minimum as ASE (1e-4 "
        f"eV/atom) {same.sum()}/{len(images)} (ours lower in {lower}, higher in "
        f"{len(images) - same.sum() - lower}); median force calls ours "
        f"{np.median(calls_ours[: len(images)]):.0f} vs ASE {np.median(ase_calls):.0f} (ours "
        f"max over all {n}: {calls_ours.max()})",
        flush=True,
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--ase-n", type=int, default=40)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--fmax", type=float, default=0.01)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument(
        "--peer-calc",
        choices=("fastest", "jaxcsp"),
        default="fastest",
        help="ASE's own calculator where it is the same potential (LJ), else the adapter",
    )
    p.add_argument("--quick", action="store_true", help="n=40, ase-n=8, cases lj8,sw8")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.ase_n, args.cases = 40, 8, "lj8,sw8"
    for name in args.cases.split(","):
        run_case(name, args.n, min(args.ase_n, args.n), args.procs, args.fmax, args.peer_calc)


if __name__ == "__main__":
    main()
