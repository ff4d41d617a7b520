"""Data parallelism: throughput per device when the batch is split over 1, 2, 4, ... devices.

The same work runs on a one-axis mesh of ``D`` devices for each ``D`` in ``--devices``
(:mod:`jaxcsp.parallel`), each ``D`` in its own process: on a CPU-only machine the process gets
``D`` virtual devices (``XLA_FLAGS=--xla_force_host_platform_device_count=D``; they share the
machine's cores, so this measures the partitioning overhead, not a speed-up), on a machine with
accelerators it uses the first ``D`` of them. Work, as a search produces it:

* ``calculate``: energies, forces and stress of ``--n`` random symmetric Ar8 crystals
  (:func:`jaxcsp.symmetry.random_crystals`, volume factor 1.3: some start compressed) with
  physical argon Lennard-Jones (σ 3.4 Å, ε 10.4 meV, cutoff 8.5 Å);
* ``relax``: the same starts relaxed with BFGS + line search and the Fréchet cell filter to
  fmax 0.01 eV/Å (compaction on);
* ``anneal``: :func:`jaxcsp.models.anneal_fm` on a random rank-8 FM QUBO of ``--bits`` bits,
  ``--replicas`` replicas split over the devices (no communication between them).

Printed per ``D`` and task: wall time with compilation (first call) and warm (second call),
items per second in all and **per device**, and the warm speed-up over ``D = 1`` measured in the
same run (the peer here is our own one-device run; the relax and anneal benchmarks compare one
device against ASE and dwave-samplers). Results that differ from ``D = 1`` beyond round-off
are flagged. Run from the repository root::

    python -m benchmarks.parallel [--devices 1,2,4,8] [--n 64] [--quick] [--gpu]

``--gpu``: seed-scale work (``--n 1024``, 4,096 replicas of 8,000 bits) over every accelerator.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.harness import Timing, compare

SUITE = "parallel"


def _child(d: int, n: int, bits: int, replicas: int, sweeps: int) -> dict:
    """Run every task on a mesh of the first ``d`` devices; return timings and results."""
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import jaxcsp as jc
    from jaxcsp import parallel
    from jaxcsp.models import anneal_fm
    from jaxcsp.optimize import relax

    mesh = parallel.batch_mesh(d)
    c = jc.compact(
        jc.symmetry.reconstruct(
            jc.symmetry.random_crystals(jax.random.key(0), "Ar8", n, volume_factor=1.3)
        )
    )
    lj = jc.potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
    rng = np.random.default_rng(0)
    fm = (0.0, rng.normal(size=bits) / np.sqrt(bits), rng.normal(size=(8, bits)) / np.sqrt(bits))

    def twice(fn):
        out = []
        for _ in range(2):
            t = time.perf_counter()
            r = jax.block_until_ready(fn())
            out.append(time.perf_counter() - t)
        return out, r

    res: dict = {"devices": d, "platform": jax.devices()[0].platform}
    (t_first, t_warm), calc = twice(lambda: jc.calculate(lj, c, mesh=mesh))
    res["calculate"] = dict(first=t_first, warm=t_warm, items=n,
                            energy=np.asarray(calc.energy).tolist())  # fmt: skip
    (t_first, t_warm), rel = twice(
        lambda: relax(c, lj, cell_filter="frechet", fmax=0.01, max_steps=1000, mesh=mesh)
    )
    res["relax"] = dict(
        first=t_first, warm=t_warm, items=n,
        energy=np.asarray(rel.energy).tolist(), converged=int(np.sum(rel.converged)),
        force_calls=np.asarray(rel.force_calls).tolist(),
    )  # fmt: skip
    key = jax.random.key(1)
    (t_first, t_warm), ann = twice(
        lambda: anneal_fm(key, fm, num_replicas=replicas, num_sweeps=sweeps, mesh=mesh)
    )
    res["anneal"] = dict(first=t_first, warm=t_warm, items=replicas * sweeps,
                         energy=np.asarray(ann.energies).tolist())  # fmt: skip
    return res


def _run_child(d: int, args, accelerator: bool) -> dict:
    env = dict(os.environ)
    if not accelerator:
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={d}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    cmd = [sys.executable, "-m", "benchmarks.parallel", "--child", str(d), "--n", str(args.n),
           "--bits", str(args.bits), "--replicas", str(args.replicas),
           "--sweeps", str(args.sweeps)]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{d} devices failed:\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default=None, help="device counts, e.g. 1,2,4,8")
    p.add_argument("--n", type=int, default=64, help="structures (64)")
    p.add_argument("--bits", type=int, default=2000, help="FM QUBO bits (2000)")
    p.add_argument("--replicas", type=int, default=64, help="annealing replicas (64)")
    p.add_argument("--sweeps", type=int, default=200, help="annealing sweeps (200)")
    p.add_argument("--quick", action="store_true", help="--devices 1,2,8 --n 16, 600 bits")
    p.add_argument("--gpu", action="store_true", help="seed scale over every accelerator")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        res = _child(args.child, args.n, args.bits, args.replicas, args.sweeps)
        print("RESULT " + json.dumps(res), flush=True)
        return
    import jax

    accelerator = jax.default_backend() != "cpu"
    if args.quick:
        args.n, args.bits, args.replicas, args.sweeps = 16, 600, 16, 100
        args.devices = args.devices or "1,2,8"
    if args.gpu:
        args.n, args.bits, args.replicas, args.sweeps = 1024, 8000, 4096, 1000
    if args.devices:
        counts = [int(x) for x in args.devices.split(",")]
    elif accelerator:
        counts = sorted({1, *[2**k for k in range(8) if 2**k <= len(jax.devices())],
                         len(jax.devices())})  # fmt: skip
    else:
        counts = [1, 2, 4, 8]
    if 1 not in counts:
        counts = [1, *counts]
    runs = {}
    for d in counts:
        t = time.perf_counter()
        runs[d] = _run_child(d, args, accelerator)
        print(f"  {d} device(s) on {runs[d]['platform']}: {time.perf_counter() - t:.1f} s",
              flush=True)  # fmt: skip
    import numpy as np

    base = runs[1]
    units = {"calculate": "structures", "relax": "structures", "anneal": "replica-sweeps"}
    for d in counts:
        for task, unit in units.items():
            r, b = runs[d][task], base[task]
            diff = float(np.max(np.abs(np.asarray(r["energy"]) - np.asarray(b["energy"]))))
            per_dev = r["items"] / r["warm"] / d
            print(
                f"{task:>10} | {d} dev | first {r['first']:8.2f} s | warm {r['warm']:8.3f} s | "
                f"{r['items'] / r['warm']:12,.1f} {unit}/s | {per_dev:12,.1f} per device | "
                f"max |ΔE| vs 1 device {diff:.1e} eV"
                + ("" if task == "relax" or diff < 1e-6 else "  <-- DIFFERS"),
                flush=True,
            )
            extra = {"devices": d, "per_device_per_s": per_dev, "first_s": r["first"],
                     "max_energy_diff": diff, "platform": runs[d]["platform"]}  # fmt: skip
            if task == "relax":
                extra |= {"converged": r["converged"], "converged_1": b["converged"],
                          "median_force_calls": float(np.median(r["force_calls"])),
                          "max_force_calls": int(np.max(r["force_calls"]))}  # fmt: skip
            if d > 1:
                compare(
                    SUITE, f"{task} {d} devices", Timing((r["warm"],), r["warm"], r["first"]),
                    Timing((b["warm"],), b["warm"], b["first"]), peer_name="jaxcsp 1 device",
                    units=r["items"], unit_name=unit, extra=extra,
                )  # fmt: skip


if __name__ == "__main__":
    main()
