"""``jaxcsp dataset``: build the sp² carbon training set of the generative models."""

from __future__ import annotations

import argparse

from jaxcsp.cli._common import add_progress_flag
from jaxcsp.datasets import build_carbon_sp2
from jaxcsp.errors import check_int

NAME = "dataset"
HELP = "build the sp2 carbon training set (design, CN=3, dedup, subgroup augmentation)"
DESCRIPTION = """\
Make the training set of the CVAE from scratch, reproducibly: random symmetric carbon
candidates optimised toward graphite's SO(3) spectrum, the CN=3 ones kept, duplicates removed
(StructureMatcher 0.3 Å, 20%, 5°), each re-expressed in its t-subgroups (PyXtal, same cell) up
to --depth levels, rows with more than 8 sites and duplicate rows dropped. Writes the seed's
39-column tabular rows (angles in degrees) to a CSV file.

The dataset shipped with jaxcsp (jaxcsp.datasets.load_carbon_sp2) was made by
  jaxcsp --precision 32 dataset --candidates 12000 --seed 0 --out carbon_sp2.csv"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--candidates", type=int, default=12000, help="random candidates (12000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--steps", type=int, default=300, help="Algorithm 1 steps (300)")
    p.add_argument("--depth", type=int, default=2, help="subgroup levels of the augmentation (2)")
    p.add_argument("--out", required=True, help="CSV file to write")
    add_progress_flag(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    check_int("--candidates", args.candidates)
    check_int("--steps", args.steps, minimum=0)
    check_int("--depth", args.depth, minimum=0)
    wc = build_carbon_sp2(
        args.candidates,
        seed=args.seed,
        steps=args.steps,
        depth=args.depth,
        progress=not args.no_progress,
        out=args.out,
    )
    groups = np.unique(np.asarray(wc.spg))
    print(f"wrote {wc.batch_size} rows over {len(groups)} space groups to {args.out}")
    return 0
