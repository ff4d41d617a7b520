"""Run every benchmark at one scale and print one table of ratios against the peers.

Each benchmark (a module of ``benchmarks/``) runs in its own process with the arguments of the
chosen profile; every comparison it records (:func:`benchmarks.harness.record`) is tagged with
this run's id and collected. Printed at the end: one row per comparison (ours with compilation
beside the warm time, the peer measured in the same run, the ratio ``peer / ours``). Written to
``--out`` (JSON, rewritten after every benchmark, so a killed run keeps what finished): the
profile, the machine and devices, the versions of jax and of every peer, each benchmark's
command line, seed, exit code, wall time and rows. A rerun with ``--resume`` skips the
benchmarks that file already holds as finished.

Profiles:

* ``quick``: small batches of every benchmark, under 10 minutes on a 2-core CPU;
* ``default``: each benchmark's own defaults (the numbers in ``docs/``; about an hour on
  2 cores, the active-learning comparison excluded: several hours, run it alone);
* ``gpu``: seed-scale work for a machine with an accelerator (hundreds to thousands of
  crystals, seed 000's Table S1 sizes where the benchmark has them).

Run from the repository root (or ``jaxcsp bench``)::

    python -m benchmarks.run_all --quick
    python -m benchmarks.run_all --profile default --only relax,neighbors
    python -m benchmarks.run_all --gpu --out gpu.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid

from benchmarks.harness import RESULTS_DIR, RUN_ENV, machine_info

ROOT = pathlib.Path(__file__).resolve().parents[1]

#: name -> (seed it uses, {profile: argv}); ``None`` leaves a benchmark out of a profile.
BENCHMARKS: dict[str, tuple[str, dict[str, list[str] | None]]] = {
    "crystal": (
        "numpy seed 0",
        {"quick": ["--batch", "1000"], "default": [], "gpu": ["--batch", "100000"]},
    ),
    "symmetry": (
        "numpy seed 0",
        {"quick": ["--quick"], "default": [], "gpu": ["--batch", "100000"]},
    ),
    "neighbors": (
        "numpy seed 0",
        {
            "quick": ["--quick"],
            "default": [],
            "gpu": ["--sizes", "46", "184", "736", "--cutoffs", "6.0"],
        },
    ),
    "potentials": (
        "numpy seed 0",
        {"quick": ["--quick"], "default": [], "gpu": ["--batch", "4096"]},
    ),
    "so3": ("jax key 0", {"quick": ["--quick"], "default": [], "gpu": ["--batch", "10000"]}),
    "relax": (
        "fixed per case (crc32 of its name)",
        {
            "quick": ["--quick"],
            "default": [],
            "gpu": ["--gpu"],
        },
    ),
    "design": ("--seed 0", {"quick": ["--quick"], "default": [], "gpu": ["--n", "10000"]}),
    "anneal": ("--seed 0", {"quick": ["--quick"], "default": [], "gpu": []}),
    "dedup": ("--seed 0", {"quick": ["--quick"], "default": [], "gpu": []}),
    "parallel": (
        "jax key 0, numpy seed 0",
        {"quick": ["--quick"], "default": [], "gpu": ["--gpu"]},
    ),
    "sevennet": ("--seed 0", {"quick": None, "default": [], "gpu": ["--gpu"]}),
    "active": ("--seeds 0 1 2", {"quick": None, "default": None, "gpu": ["--gpu"]}),
}

#: name -> (module its peer needs, the extra that installs it): checked before running it.
NEEDS = {
    "anneal": ("dwave.samplers", 'pip install -e ".[bench]"'),
    "sevennet": ("sevenn", 'pip install torch==2.13.0 && pip install -e ".[mlip]"'),
}

#: Packages whose versions go into the JSON (ours and the peers').
PACKAGES = ("jaxcsp", "jax", "jaxlib", "numpy", "scipy", "flax", "optax", "ase", "pymatgen",
            "pyxtal", "spglib", "jax-md", "vesin", "matscipy", "dwave-samplers", "sevenn",
            "torch", "torch-sim-atomistic")  # fmt: skip


def versions() -> dict[str, str | None]:
    """Installed version of each package of :data:`PACKAGES` (``None`` if absent)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def _rows(run_id: str, suites_before: dict[str, int]) -> list[dict]:
    """Rows this run appended to ``results/*.jsonl`` since ``suites_before`` (line counts)."""
    rows = []
    for path in sorted(RESULTS_DIR.glob("*.jsonl")):
        lines = path.read_text().splitlines()[suites_before.get(path.name, 0) :]
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("run") == run_id:
                rows.append(row)
    return rows


def _counts() -> dict[str, int]:
    if not RESULTS_DIR.exists():
        return {}
    return {p.name: len(p.read_text().splitlines()) for p in RESULTS_DIR.glob("*.jsonl")}


def _ratio(row: dict) -> float | None:
    for key in ("speedup", "ratio"):
        v = row.get(key)
        if isinstance(v, int | float):
            return float(v)
    return None


def table(results: list[dict]) -> str:
    """One text table of every comparison of ``results`` (the JSON's ``benchmarks`` list)."""
    head = (f"{'benchmark':<10} {'case':<48} {'ours s':>9} {'compile s':>9} {'peer':<30} "
            f"{'peer s':>9} {'ratio':>8}")  # fmt: skip
    lines = [head, "-" * len(head)]
    for b in results:
        if b.get("skipped"):
            lines.append(f"{b['name']:<10} SKIPPED: {b['skipped']}")
            continue
        if b["rc"] != 0:
            lines.append(f"{b['name']:<10} FAILED (exit {b['rc']}), see {b['log']}")
            continue
        shown = [r for r in b["rows"] if _ratio(r) is not None]
        if not shown:
            lines.append(f"{b['name']:<10} (no comparison recorded)")
        for r in shown:
            ours = r.get("ours_s", r.get("active_wall_s"))
            first = r.get("first_s", r.get("ours_compile_s"))
            peer = r.get("peer", "random search" if b["name"] == "active" else "")
            peer_s = r.get("peer_s", r.get("random_wall_s"))

            def num(v, fmt):
                return format(v, fmt) if isinstance(v, int | float) else "-"

            case = str(r.get("case", r.get("system", "")))
            if r.get("solver"):
                case += f" [{r['solver']}]"
            if len(case) > 48:  # keep both ends: the distinguishing part is often last
                case = case[:22] + "~" + case[-25:]
            lines.append(
                f"{b['name']:<10} {case:<48} {num(ours, '9.4g')} {num(first, '9.3g')} "
                f"{str(peer)[:30]:<30} {num(peer_s, '9.4g')} x{num(_ratio(r), '7.2f')}"
            )
    ratios = sorted(
        (_ratio(r), f"{b['name']}: {r.get('case', r.get('system', ''))}")
        for b in results
        for r in b.get("rows", [])
        if _ratio(r) is not None
    )
    if ratios:
        mid = ratios[len(ratios) // 2][0]
        lines.append("-" * len(head))
        lines.append(
            f"{len(ratios)} comparisons: median ratio x{mid:.2f}, worst x{ratios[0][0]:.2f} "
            f"({ratios[0][1]}), best x{ratios[-1][0]:.2f}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=("quick", "default", "gpu"), default="default")
    p.add_argument("--quick", action="store_true", help="--profile quick (< 10 min on 2 cores)")
    p.add_argument("--gpu", action="store_true", help="--profile gpu (seed scale)")
    p.add_argument("--only", default=None, help="comma-separated benchmarks to run")
    p.add_argument("--skip", default=None, help="comma-separated benchmarks to leave out")
    p.add_argument("--out", default=None, help="JSON file (default results/bench-<profile>.json)")
    p.add_argument("--resume", action="store_true", help="skip benchmarks --out already holds")
    p.add_argument("--list", action="store_true", help="print the profile's commands and exit")
    args = p.parse_args(argv)
    profile = "quick" if args.quick else "gpu" if args.gpu else args.profile
    names = [n for n, (_, prof) in BENCHMARKS.items() if prof.get(profile) is not None]
    if args.only:
        wanted = [x.strip() for x in args.only.split(",") if x.strip()]
        unknown = sorted(set(wanted) - set(BENCHMARKS))
        if unknown:
            p.error(f"unknown benchmark(s) {unknown}; choose from {sorted(BENCHMARKS)}")
        names = [n for n in BENCHMARKS if n in wanted]
    if args.skip:
        names = [n for n in names if n not in {x.strip() for x in args.skip.split(",")}]
    commands = {
        n: [sys.executable, "-m", f"benchmarks.{n}", *(BENCHMARKS[n][1].get(profile) or [])]
        for n in names
    }
    if args.list:
        for cmd in commands.values():
            print(" ".join(["python", *cmd[1:]]))
        return 0

    out = pathlib.Path(args.out or RESULTS_DIR / f"bench-{profile}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    done: list[dict] = []
    if args.resume and out.exists():
        prior = json.loads(out.read_text())
        if prior.get("profile") == profile:
            done = [b for b in prior.get("benchmarks", []) if b["rc"] == 0 and not b.get("skipped")]
    finished = {b["name"] for b in done}
    run_id = uuid.uuid4().hex[:12]
    report = {
        "profile": profile,
        "run": run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine_info(),
        "versions": versions(),
        "benchmarks": done,
    }
    env = {**os.environ, RUN_ENV: run_id}
    t_all = time.perf_counter()
    from rich.progress import Progress

    todo = [n for n in names if n not in finished]
    with Progress(transient=True) as bar:
        task = bar.add_task(f"jaxcsp bench ({profile})", total=len(todo))
        for n in todo:
            bar.update(task, description=f"{profile}: {n}")
            need = NEEDS.get(n)
            if need and not _importable(need[0]):
                report["benchmarks"].append({
                    "name": n, "argv": commands[n][1:], "seed": BENCHMARKS[n][0], "rc": 0,
                    "wall_s": 0.0, "rows": [],
                    "skipped": f"its peer needs {need[0]}: {need[1]}",
                })  # fmt: skip
                bar.console.print(f"{n}: skipped, its peer needs {need[0]} ({need[1]})")
                bar.advance(task)
                continue
            log = RESULTS_DIR / f"bench-{profile}-{n}.log"
            before = _counts()
            t = time.perf_counter()
            with open(log, "w") as fh:
                rc = subprocess.run(commands[n], cwd=ROOT, env=env, stdout=fh,
                                    stderr=subprocess.STDOUT, check=False).returncode  # fmt: skip
            wall = time.perf_counter() - t
            entry = {
                "name": n,
                "argv": commands[n][1:],
                "seed": BENCHMARKS[n][0],
                "rc": rc,
                "wall_s": wall,
                "log": str(log.relative_to(ROOT)) if log.is_relative_to(ROOT) else str(log),
                "rows": _rows(run_id, before),
            }
            report["benchmarks"].append(entry)
            report["wall_s"] = time.perf_counter() - t_all
            out.write_text(json.dumps(report, indent=1))
            bar.console.print(f"{n}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {wall:.0f} s, "
                              f"{len(entry['rows'])} comparison(s)")  # fmt: skip
            bar.advance(task)
    report["wall_s"] = time.perf_counter() - t_all
    out.write_text(json.dumps(report, indent=1))
    print(table(report["benchmarks"]))
    print(f"\n{len(report['benchmarks'])} benchmarks, {report['wall_s']:.0f} s; written to {out}")
    return 0 if all(b["rc"] == 0 for b in report["benchmarks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
