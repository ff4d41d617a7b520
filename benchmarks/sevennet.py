"""SevenNet-0 in JAX (``jaxcsp.potentials.sevennet0``) vs the same model through the torch bridge.

The same random starts (``--n`` structures: half Si8, half Si4O8, random symmetric crystals from
:func:`jaxcsp.symmetry.random_crystals`, as a search produces them) are relaxed twice with
:func:`jaxcsp.optimize.relax` (BFGS + line search, ``FrechetCellFilter`` cell DOFs, ``--fmax``):

* ours: the native model (the converted weights, float64 or ``--precision 32``), jitted into
  the relaxation; its wall time includes compilation (printed apart);
* peer: ``jaxcsp.potentials.external.sevennet()``, the torch model (float32, as the ``sevenn``
  calculator runs it) called from the same relaxer through ``jax.pure_callback`` with torch
  using every core.

Printed: wall time of each (with compilation), the ratio, force calls, how many structures reach
the same minimum (energy per atom within ``--tol``), and a single-point check of the two models on
the starts. ``--control`` adds the native relaxations at the other precision: how many minima
round-off alone changes (line searches from random starts are chaotic; 64 starts on 2 cores:
native float64 vs bridge float32 47/59, native float64 vs native float32 40/59).
The benchmark runs in a fresh process so that the native side never imports torch
before the peer does (checked). Run from the repository root::

    python -m benchmarks.sevennet [--n 64] [--fmax 0.05] [--precision 64] [--gpu]

``--gpu`` runs seed-scale batches (``--n 512``) on an accelerator when JAX sees one.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from benchmarks.harness import Timing, compare, compile_clock


def _starts(n: int, seed: int):
    import jaxcsp as jc
    from jaxcsp.symmetry import random_crystals, reconstruct

    k1, k2 = jax.random.split(jax.random.key(seed))
    si = reconstruct(random_crystals(k1, "Si8", n - n // 2))
    sio2 = reconstruct(random_crystals(k2, "Si4O8", n // 2))
    return jc.concatenate([jc.compact(si), jc.compact(sio2)])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--fmax", type=float, default=0.05)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument(
        "--min-batch", type=int, default=8, help="relax's compaction floor (the slow tail)"
    )
    p.add_argument("--precision", choices=("32", "64"), default="64")
    p.add_argument("--tol", type=float, default=1e-3, help="same minimum: |ΔE| per atom, eV")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu", action="store_true", help="seed-scale batch (--n 512)")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--dump", help="write the native run's energies per atom (npz)")
    p.add_argument(
        "--control",
        action="store_true",
        help="also relax natively at the other precision (a subprocess) and count the same "
        "minima: what round-off alone changes on these starts",
    )
    args = p.parse_args(argv)
    if args.gpu:
        args.n = max(args.n, 512)
    jax.config.update("jax_enable_x64", args.precision == "64")

    import jaxcsp as jc
    from jaxcsp.optimize import relax
    from jaxcsp.potentials import sevennet0

    c = _starts(args.n, args.seed)
    print(f"[sevennet] {args.n} starts (Si8 + Si4O8), device {jax.devices()[0].device_kind}")

    t = time.perf_counter()
    native = sevennet0()  # converts once (torch) or reads the cache (no torch)
    load_s = time.perf_counter() - t
    torch_before = "torch" in sys.modules
    compile0, n0 = compile_clock()
    t = time.perf_counter()
    kw = dict(
        fmax=args.fmax,
        cell_filter="frechet",
        max_steps=args.max_steps,
        min_batch=args.min_batch,
        progress=True,
    )
    ours = relax(c, native, **kw)
    jax.block_until_ready(ours.energy)
    wall = time.perf_counter() - t
    compile_s, n_comp = compile_clock()[0] - compile0, compile_clock()[1] - n0
    print(
        f"    native: {wall:.1f} s ({compile_s:.1f} s compiling, {n_comp} programs; weights "
        f"loaded in {load_s:.1f} s; torch imported: {torch_before})",
        flush=True,
    )
    n_at = np.asarray(c.num_atoms)
    e_n = np.asarray(ours.energy) / n_at
    if args.dump:
        np.savez(args.dump, energy=e_n, converged=np.asarray(ours.converged))
    if args.skip_peer:
        return

    from jaxcsp.potentials import external

    bridge = external.sevennet()
    single_n = jc.calculate(native, c)
    single_b = jc.calculate(bridge, c)
    de = np.abs(np.asarray(single_n.energy) - np.asarray(single_b.energy)) / np.asarray(c.num_atoms)
    df = np.abs(np.asarray(single_n.forces) - np.asarray(single_b.forces)).max(axis=(1, 2))
    # random starts reach 1e5 eV/atom (atoms pressed together), where float32 keeps ~6 digits
    rel = de / np.maximum(np.abs(np.asarray(single_b.energy)) / np.asarray(c.num_atoms), 1.0)
    fscale = np.abs(np.asarray(single_b.forces)).max(axis=(1, 2))
    print(
        f"    starts, native vs torch (float32): |ΔE| per atom median {np.median(de):.2e} "
        f"max {de.max():.2e} eV (relative to |E| max {rel.max():.1e}); |ΔF| median "
        f"{np.median(df):.2e} max {df.max():.2e} eV/Å (relative to max|F| "
        f"{(df / np.maximum(fscale, 1.0)).max():.1e})"
    )
    compile0, _ = compile_clock()
    t = time.perf_counter()
    peer = relax(c, bridge, **kw)
    jax.block_until_ready(peer.energy)
    peer_wall = time.perf_counter() - t
    peer_compile = compile_clock()[0] - compile0

    e_b = np.asarray(peer.energy) / n_at
    both = np.asarray(ours.converged) & np.asarray(peer.converged)
    same = (np.abs(e_n - e_b) < args.tol) & both
    calls_n, calls_b = np.asarray(ours.force_calls), np.asarray(peer.force_calls)
    compare(
        "sevennet",
        f"relax {args.n} Si8+Si4O8 fmax {args.fmax} x{args.precision}",
        Timing((wall,), wall, compile_s),
        Timing((peer_wall,), peer_wall, peer_compile),
        peer_name="torch SevenNet-0 bridge",
        units=args.n,
        extra=dict(
            ours_compile_s=compile_s,
            peer_compile_s=peer_compile,
            same_minimum=int(same.sum()),
            both_converged=int(both.sum()),
            converged_ours=float(np.mean(ours.converged)),
            converged_peer=float(np.mean(peer.converged)),
            median_calls_ours=float(np.median(calls_n)),
            median_calls_peer=float(np.median(calls_b)),
            max_calls_ours=int(calls_n.max()),
            max_calls_peer=int(calls_b.max()),
            precision=args.precision,
        ),
    )
    print(
        f"    torch bridge: {peer_wall:.1f} s ({peer_compile:.1f} s compiling the relaxer); "
        f"native {wall:.1f} s incl. compilation -> x{peer_wall / wall:.2f} "
        f"(x{peer_wall / max(wall - compile_s, 1e-9):.2f} warm)\n"
        f"    converged: native {np.mean(ours.converged):.0%}, bridge "
        f"{np.mean(peer.converged):.0%}; same minimum (|ΔE| < {args.tol} eV/atom) "
        f"{same.sum()}/{both.sum()} of those both converged; |ΔE| per atom median "
        f"{np.median(np.abs(e_n - e_b)[both]) if both.any() else float('nan'):.2e}; force calls "
        f"median {np.median(calls_n):.0f} vs {np.median(calls_b):.0f}, max {calls_n.max()} vs "
        f"{calls_b.max()}",
        flush=True,
    )
    if args.control:
        _control(args, e_n, np.asarray(ours.converged))


def _control(args, e_n, conv_n) -> None:
    """The same native relaxations at the other precision, in a fresh process."""
    import subprocess
    import tempfile

    other = "32" if args.precision == "64" else "64"
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/control.npz"
        cmd = [sys.executable, "-m", "benchmarks.sevennet", "--precision", other, "--skip-peer"]
        cmd += ["--n", str(args.n), "--fmax", str(args.fmax), "--max-steps", str(args.max_steps)]
        cmd += ["--min-batch", str(args.min_batch), "--seed", str(args.seed), "--dump", path]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        z = np.load(path)
        e_o, conv_o = z["energy"], z["converged"]
    both = conv_n & conv_o
    same = (np.abs(e_n - e_o) < args.tol) & both
    print(
        f"    control, native float{args.precision} vs native float{other} (round-off alone): "
        f"same minimum {same.sum()}/{both.sum()} of those both converged",
        flush=True,
    )


if __name__ == "__main__":
    main()
