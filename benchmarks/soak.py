"""Soak run: hours of relaxation and search iterations in one process, memory and compiles logged.

Each iteration is what a search does with a new generation: draw random symmetric candidates
(:func:`jaxcsp.symmetry.random_crystals`, a fresh key per iteration), relax them in a batch with
the cell free (:func:`jaxcsp.optimize.relax`, compaction on), stream them through continuous
batching into an ASE database (:func:`jaxcsp.optimize.relax_stream`), and keep the lowest
energy. After every iteration one line is printed and appended to the JSON log: elapsed time,
resident memory, memory mappings, backend compilations (total and in that iteration).

A long-lived process is healthy when, after warm-up (the first ``--warmup`` fraction of the
run, in which every shape class the workload reaches gets compiled once), compilations stop and
memory is flat. :func:`summarise` states both; ``tests/test_soak.py`` (marked slow) asserts them.

    python -m benchmarks.soak --minutes 30 --out benchmarks/results/soak.json --plot soak.png
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
from typing import Any

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import jaxcsp as jc  # noqa: E402
from jaxcsp import runtime  # noqa: E402
from jaxcsp.optimize import relax, relax_stream  # noqa: E402
from jaxcsp.symmetry import random_crystals, reconstruct  # noqa: E402


def iteration(k: int, workdir: pathlib.Path, *, composition: str, n: int) -> float:
    """One search generation: propose ``n`` candidates, relax (batched, then streamed)."""
    pot = jc.potentials.stillinger_weber()
    wc = random_crystals(jax.random.PRNGKey(k), composition, n)
    c = reconstruct(wc)
    res = relax(c, pot, cell_filter="frechet", fmax=0.05, max_steps=150)
    db = workdir / f"gen{k}.db"
    relax_stream(
        c,
        pot,
        db=db,
        cell_filter="frechet",
        fmax=0.05,
        max_steps=150,
        max_atoms=64,
        progress=False,
    )
    db.unlink()
    e = np.asarray(res.energy) / np.asarray(c.num_atoms)
    return float(np.min(np.where(np.isfinite(e), e, np.inf)))


def soak(minutes: float, *, composition: str = "Si8", n: int = 16, log: Any = None) -> list[dict]:
    """Run iterations for ``minutes``; returns one record per iteration."""
    records: list[dict] = []
    t0 = time.perf_counter()
    with runtime.CompileCounter() as total, tempfile.TemporaryDirectory() as tmp:
        k = 0
        while time.perf_counter() - t0 < 60.0 * minutes:
            before = total.count
            best = iteration(k, pathlib.Path(tmp), composition=composition, n=n)
            rec = dict(
                iteration=k,
                elapsed_s=round(time.perf_counter() - t0, 2),
                rss_mb=round((runtime.resident_bytes() or 0) / 2**20, 1),
                maps=runtime.memory_maps(),
                compiles=total.count,
                new_compiles=total.count - before,
                best_ev_per_atom=round(best, 6),
            )
            records.append(rec)
            if log is not None:
                print(json.dumps(rec), file=log, flush=True)
            k += 1
    return records


def summarise(records: list[dict], warmup: float = 0.5) -> dict:
    """Compiles and memory after warm-up (records whose elapsed time passes ``warmup`` of the run).

    Returns ``compiles_after_warmup``, ``rss_growth_mb`` and ``maps_growth`` (last minus first
    record after warm-up), and their maxima over the records after warm-up.
    """
    end = records[-1]["elapsed_s"]
    after = [r for r in records if r["elapsed_s"] >= warmup * end]
    first = after[0]
    return dict(
        iterations=len(records),
        iterations_after_warmup=len(after),
        compiles_total=records[-1]["compiles"],
        compiles_after_warmup=records[-1]["compiles"] - first["compiles"] + first["new_compiles"],
        rss_mb_at_warmup=first["rss_mb"],
        rss_growth_mb=round(max(r["rss_mb"] for r in after) - first["rss_mb"], 1),
        maps_at_warmup=first["maps"],
        maps_growth=max(r["maps"] or 0 for r in after) - (first["maps"] or 0),
    )


def plot(records: list[dict], path: str) -> None:
    """Memory, mappings and compilations against time (matplotlib, one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["elapsed_s"] / 60 for r in records]
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    for ax, key, label in zip(
        axes,
        ("rss_mb", "maps", "compiles"),
        ("resident memory (MiB)", "memory mappings", "compilations (total)"),
        strict=True,
    ):
        ax.plot(t, [r[key] for r in records], marker=".")
        ax.set_ylabel(label)
    axes[-1].set_xlabel("minutes")
    fig.suptitle("jaxcsp soak: relax + relax_stream of random Si8 generations")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--composition", default="Si8")
    p.add_argument("--n", type=int, default=16, help="candidates per generation")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--out", default=None, help="JSON file for the records and the summary")
    p.add_argument("--plot", default=None, help="PNG file for the plot")
    args = p.parse_args(argv)
    records = soak(args.minutes, composition=args.composition, n=args.n, log=sys.stdout)
    summary = summarise(records, args.warmup)
    print(json.dumps(summary, indent=1))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(dict(summary=summary, records=records)))
    if args.plot:
        plot(records, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
