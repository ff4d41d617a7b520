"""``jaxcsp bench``: every benchmark against its peer at one scale (``benchmarks/run_all.py``)."""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys

from jaxcsp.errors import JaxcspError

NAME = "bench"
HELP = "run the benchmarks against their peers and write one table and a JSON record"
DESCRIPTION = """\
Run every benchmark of the source checkout's benchmarks/ directory in its own process, each
against the peer a user would pick instead (ASE, PyXtal, vesin, matscipy, jax-md, pymatgen,
dwave-samplers, the torch SevenNet-0) measured in the same run, and print one table of ratios
(ours with compilation beside the warm time). The JSON record (--out) holds the machine, the
devices, the versions of jax and of every peer, each benchmark's command line, seed and rows;
it is rewritten after every benchmark, and --resume skips those already finished.

profiles: --quick (small batches, under 10 minutes on a 2-core CPU), default (each benchmark's
own defaults, about an hour on 2 cores), --gpu (seed scale: hundreds to thousands of crystals,
for a machine with an accelerator).

Needs a source checkout (benchmarks/ next to jaxcsp/) with the dev extra installed (the peers)."""


def _root() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parents[2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="small batches (< 10 min on 2 cores)")
    g.add_argument("--gpu", action="store_true", help="seed-scale settings for an accelerator")
    p.add_argument("--only", default=None, help="comma-separated benchmarks, e.g. relax,neighbors")
    p.add_argument("--skip", default=None, help="comma-separated benchmarks to leave out")
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/...)")
    p.add_argument("--resume", action="store_true", help="skip benchmarks --out already holds")
    p.add_argument("--list", action="store_true", help="print the commands and exit")


def run(args: argparse.Namespace) -> int:
    root = _root()
    if not (root / "benchmarks" / "run_all.py").is_file():
        raise JaxcspError(
            "jaxcsp bench needs a source checkout: no benchmarks/run_all.py next to "
            f"{root / 'jaxcsp'} (clone the repository and `pip install -e .[dev]`)"
        )
    argv = [sys.executable, "-m", "benchmarks.run_all"]
    if args.quick:
        argv.append("--quick")
    elif args.gpu:
        argv.append("--gpu")
    for flag in ("only", "skip", "out"):
        value = getattr(args, flag)
        if value:
            argv += [f"--{flag}", str(pathlib.Path(value).resolve()) if flag == "out" else value]
    if args.resume:
        argv.append("--resume")
    if args.list:
        argv.append("--list")
    return subprocess.run(argv, cwd=root, check=False).returncode
