"""Design stage (descriptor optimisation, Algorithm 1) vs PyXtal's CPU optimizer, same candidates.

Ours: :func:`jaxcsp.design.design` on ``--n`` random symmetric carbon candidates (batched
Algorithm 1, one jitted step per batch; timed on a second, warm run so compilation is reported
separately). PyXtal: ``pyxtal.lego.builder.optimize_xtal`` (Nelder–Mead + L-BFGS-B with
finite-difference gradients, one structure at a time, the LEGO-xtal CPU workflow) on an evenly
spaced ``--subset`` of the same candidates, extrapolated to 1,000. Also prints the fraction of
candidates that reach CN = 3 (``N_valid_env``) for both on the subset, and ours on all. Run
from the repository root::

    python -m benchmarks.design [--quick] [--n 1000] [--subset 64]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Timing, compare, record

jax.config.update("jax_enable_x64", True)

from jaxcsp.design import design, generate_candidates, pyxtal_baseline  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000, help="candidates (1000)")
    p.add_argument("--subset", type=int, default=64, help="candidates PyXtal optimises (64)")
    p.add_argument("--steps", type=int, default=300, help="Algorithm 1 steps (300)")
    p.add_argument("--batch-size", type=int, default=500, help="candidates per batch (500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--float64", action="store_true", help="optimise in float64 (default f32)")
    p.add_argument("--quick", action="store_true", help="small run (CI smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.subset, args.batch_size = 128, 8, 128
    dtype = jnp.float64 if args.float64 else jnp.float32
    kw = dict(seed=args.seed, steps=args.steps, batch_size=min(args.batch_size, args.n))

    t0 = time.perf_counter()
    cold = design(args.n, progress=False, dtype=dtype, **kw)
    cold_s = time.perf_counter() - t0
    warm = design(args.n, progress=False, dtype=dtype, **kw)
    ours = Timing((warm.seconds,), warm.seconds * 1000 / args.n, cold.seconds - warm.seconds)

    wc = generate_candidates(jax.random.key(args.seed), args.n, dtype=jnp.float64)
    subset = np.linspace(0, args.n - 1, args.subset).round().astype(int)
    base = pyxtal_baseline(wc, subset, progress=False)
    per = float(np.mean(base["seconds"]))
    peer = Timing(tuple(base["seconds"]), per * 1000, 0.0)
    name = "f64" if args.float64 else "f32"
    compare(
        "design",
        f"optimise per 1000 cand. ({args.steps} steps, {name})",
        ours,
        peer,
        peer_name=f"pyxtal optimize_xtal x1000 (measured on {args.subset})",
        extra={"n": args.n, "subset": args.subset, "cold_run_s": cold_s},
    )
    ours_sub = int(warm.valid[subset].sum())
    line = (
        f"      design | N_valid_env (CN=3)               | jaxcsp {ours_sub}/{args.subset} on the "
        f"subset ({warm.n_valid_env}/{args.n} = {warm.n_valid_env / args.n:.1%} on all) | "
        f"pyxtal {int(base['valid'].sum())}/{args.subset} on the subset "
        f"({base['valid'].mean():.1%}) | before optimisation {int(warm.valid_initial.sum())}"
        f"/{args.n}"
    )
    print(line, flush=True)
    print(
        f"      design | compile (first batch shapes)     | {ours.compile_s:.1f} s; "
        f"cold run {cold_s:.1f} s for {args.n} candidates incl. generation",
        flush=True,
    )
    record(
        "design",
        {
            "case": "N_valid_env",
            "ours_subset": ours_sub,
            "ours_all": warm.n_valid_env,
            "n": args.n,
            "pyxtal_subset": int(base["valid"].sum()),
            "subset": args.subset,
            "ours_loss_median": float(np.nanmedian(warm.loss)),
        },
    )


if __name__ == "__main__":
    main()
