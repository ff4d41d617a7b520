"""``jaxcsp design``: descriptor-driven design of sp² carbon candidates (Algorithm 1)."""

from __future__ import annotations

import argparse

NAME = "design"
HELP = "optimise random symmetric carbon toward graphite's SO(3) spectrum; count CN=3 hits"
DESCRIPTION = """\
Generate N random symmetric carbon crystals (mixed space groups, 4-12 atoms per cell), optimise
their Wyckoff free variables in batches toward the SO(3) power spectrum of graphite (nmax 2,
lmax 4, rcut 2 Å; Algorithm 1: per-sample clipping and plateau step reduction, AdamW), and
screen them with PyXtal's coordination rule (CN = 3 for every atom: N_valid_env).

Every candidate is written to the ASE database --db as its batch finishes (key-value pairs
valid_env, loss, spg, candidate, seed, loss_initial, valid_env_initial); rerunning the same
command resumes where it stopped.

examples:
  jaxcsp design --n 1000 --seed 0 --db carbon.db --plot carbon.png
  jaxcsp --precision 32 design --n 10000 --db big.db --batch-size 1024"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=1000, help="number of candidates (1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--db", default=None, help="ASE database to write every candidate to")
    p.add_argument("--plot", default=None, help="figure: spectra before/after, loss histograms")
    p.add_argument("--steps", type=int, default=300, help="optimisation steps per batch (300)")
    p.add_argument("--batch-size", type=int, default=256, help="candidates per batch (256)")
    p.add_argument(
        "--sizes",
        default="4,6,8,12",
        help="atoms per cell of the candidates, comma-separated (4,6,8,12)",
    )
    p.add_argument(
        "--cn-weight",
        type=float,
        default=1.0,
        help="weight of the smooth coordination term of the loss (1.0; 0 = spectrum only)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from jaxcsp.design import design, loss_histogram
    from jaxcsp.errors import InvalidStructureError

    if args.n < 1 or args.batch_size < 1 or args.steps < 0:
        raise InvalidStructureError("--n, --batch-size must be >= 1 and --steps >= 0", field="n")
    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    except ValueError as e:
        raise InvalidStructureError(f"bad --sizes {args.sizes!r}", field="sizes") from e
    result = design(
        args.n,
        seed=args.seed,
        db=args.db,
        plot=args.plot,
        steps=args.steps,
        batch_size=min(args.batch_size, args.n),
        sizes=sizes,
        cn_weight=args.cn_weight,
        progress=not args.no_progress,
    )
    print(result.summary())
    for name, loss in (("before", result.loss_initial), ("after", result.loss)):
        counts, edges = loss_histogram(loss)
        cells = " ".join(f"<{e:.0e}:{c}" for e, c in zip(edges[1:], counts, strict=True) if c)
        print(f"loss histogram {name}: {cells}")
    if args.db:
        print(f"wrote {args.db}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0
