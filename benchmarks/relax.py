"""Batched BFGS + line search vs ASE ``BFGSLineSearch`` + ``FrechetCellFilter`` (same potential).

For each case, ``--n`` random symmetric structures (jaxcsp.symmetry.random_crystals) are relaxed
with variable cell to fmax 0.01 eV/Å:

* ours: :func:`jaxcsp.optimize.relax` on the whole batch (one fused evaluation per iteration),
  timed warm (compiled by a one-step probe run first; the compile time is printed separately);
* peer: ASE ``BFGSLineSearch(FrechetCellFilter(atoms))`` driven by the *same* potential through
  :class:`~jaxcsp.potentials.ase_calculator.JaxcspCalculator`, in ``--procs`` worker processes
  (the seed's baseline is one process per core). ASE is timed on ``--ase-n`` structures and
  scaled to ``--n`` (printed), after each worker has compiled its calculator.

Also printed: how many structures reach the same energy (1e-4 eV/atom) and the median force
calls of both. Run from the repository root::

    python -m benchmarks.relax [--n 400] [--ase-n 40] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import jax
import numpy as np

from benchmarks.harness import Timing, compare

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


def make_potential(name: str):
    if name == "lj":
        return potentials.lennard_jones(sigma=1.7, epsilon=0.1, cutoff=4.25)
    return potentials.stillinger_weber()


def _ase_worker(args):
    """Relax a list of structures with ASE in this process; returns (seconds, energies, calls)."""
    jax.config.update("jax_enable_x64", True)
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGSLineSearch

    from jaxcsp.potentials.ase_calculator import JaxcspCalculator

    pot_name, images, fmax, warm = args
    pot = make_potential(pot_name)
    c = jc.io.from_ase([warm, *images])
    spec = jc.neighbors.neighbor_list_spec(
        c, float(pot.cutoff), capacity_headroom=1.0, cell_headroom=0.5
    )
    n_pad = c.max_atoms
    # compile once before timing (the ASE baseline pays no JIT cost in the timed part)
    w = warm.copy()
    w.calc = JaxcspCalculator(pot, max_atoms=n_pad, spec=spec)
    w.get_forces()
    energies, calls = [], []
    t0 = time.perf_counter()
    for atoms in images:
        atoms = atoms.copy()
        atoms.calc = JaxcspCalculator(pot, max_atoms=n_pad, spec=spec)
        opt = BFGSLineSearch(FrechetCellFilter(atoms), logfile=None)
        try:
            opt.run(fmax=fmax, steps=1000)
        except RuntimeError:
            pass
        energies.append(atoms.get_potential_energy() / len(atoms))
        calls.append(atoms.calc.calls)
    return time.perf_counter() - t0, energies, calls


def run_case(name: str, n: int, ase_n: int, procs: int, fmax: float) -> None:
    comp, pot_name = CASES[name]
    pot = make_potential(pot_name)
    t = time.perf_counter()
    wc = random_crystals(jax.random.key(hash(name) % 2**31), comp, n)
    c = jc.compact(reconstruct(wc))
    print(f"[{name}] generated {n} x {comp} in {time.perf_counter() - t:.1f} s", flush=True)

    # Compile probe: max_steps is a traced argument, so a one-step run compiles exactly the
    # functions of the full run (same shapes) and then stops after one iteration; its wall time
    # is the compile cost (plus one step), reported apart from the warm timing.
    t = time.perf_counter()
    probe = relax(c, pot, fmax=fmax, cell_filter="frechet", max_steps=1)
    jax.block_until_ready(probe.energy)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    res = relax(c, pot, fmax=fmax, cell_filter="frechet", max_steps=1000, progress=True)
    jax.block_until_ready(res.energy)
    warm = time.perf_counter() - t
    cold = warm + compile_s

    images = jc.io.to_ase(c)[:ase_n]
    chunks = [images[i::procs] for i in range(procs)]
    ctx = mp.get_context("spawn")
    t = time.perf_counter()
    with ctx.Pool(procs) as pool:
        out = pool.map(_ase_worker, [(pot_name, ch, fmax, images[0]) for ch in chunks])
    wall_pool = time.perf_counter() - t
    ase_wall = max(o[0] for o in out)  # the timed part of the slowest worker
    ase_e = np.empty(len(images))
    ase_calls = np.empty(len(images))
    for k, (_, e, cl) in enumerate(out):
        ase_e[k::procs] = e
        ase_calls[k::procs] = cl
    scaled = ase_wall * n / len(images)
    ours_e = np.asarray(res.energy)[: len(images)] / np.asarray(c.num_atoms)[: len(images)]
    same = np.abs(ours_e - ase_e) < 1e-4
    conv = np.asarray(res.converged)
    compare(
        "relax",
        f"{name}: {n} x {comp} frechet",
        Timing((warm,), warm, cold - warm),
        Timing((scaled,), scaled, 0.0),
        peer_name=f"ASE BFGSLineSearch x{procs} procs (scaled from {len(images)})",
        units=n,
        extra=dict(
            ours_cold_s=cold,
            ase_pool_wall_s=wall_pool,
            same_minimum=float(same.mean()),
            converged=float(conv.mean()),
            median_calls_ours=float(np.median(np.asarray(res.force_calls)[: len(images)])),
            median_calls_ase=float(np.median(ase_calls)),
        ),
    )
    print(
        f"    ours cold (incl. compile) {cold:.1f} s, warm {warm:.1f} s; converged "
        f"{conv.mean():.1%}; same minimum as ASE (1e-4 eV/atom) {same.mean():.1%}; median "
        f"force calls ours {np.median(np.asarray(res.force_calls)[: len(images)]):.0f} vs ASE "
        f"{np.median(ase_calls):.0f}",
        flush=True,
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=400)
    p.add_argument("--ase-n", type=int, default=40)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--fmax", type=float, default=0.01)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--quick", action="store_true", help="n=40, ase-n=8, cases lj8,sw8")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.ase_n, args.cases = 40, 8, "lj8,sw8"
    for name in args.cases.split(","):
        run_case(name, args.n, min(args.ase_n, args.n), args.procs, args.fmax)


if __name__ == "__main__":
    main()
