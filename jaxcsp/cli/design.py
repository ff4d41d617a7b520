"""``jaxcsp design``: descriptor-driven design of sp² carbon candidates (Algorithm 1)."""

from __future__ import annotations

import argparse

import numpy as np

from jaxcsp.cli._common import add_progress_flag
from jaxcsp.datasets import load_carbon_sp2, read_table
from jaxcsp.design import design, loss_histogram
from jaxcsp.errors import InvalidStructureError, check_int
from jaxcsp.models.cvae import load_cvae, shipped_cvae
from jaxcsp.search._dual import dual_level, plot_dual_level

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

--workflow dual-level runs the CVAE seed's iterative loop instead: N candidates sampled from
the conditional VAE (--model, default the one shipped with jaxcsp, trained on the shipped
sp2 carbon set) under conditions drawn from its training set; round 1 optimises all of them
(Algorithm 1), rounds 2..R refine the still-invalid ones in latent space (Algorithm 2) and
optimise again. The same rounds of Algorithm 1 alone run on the same candidates as the
baseline. Valid sets are relaxed (Tersoff carbon, variable cell), deduplicated
(StructureMatcher 0.3 Å, 20%, 5°) and ranked against graphite: N_valid_env, N_unique, N_low_E
(within 0.55 eV/atom). Each arm is a search run by the search driver: valid candidates
are relaxed and written to --db as each round finds them (the baseline to
<db>.algorithm1.db), the never-valid ones at the end (valid_env, round, loss, unique,
energy_per_atom; relaxed energy, forces and stress as the row's results); rerunning the same
command resumes from the databases to the same report.

examples:
  jaxcsp design --n 1000 --seed 0 --db carbon.db --plot carbon.png
  jaxcsp --precision 32 design --n 10000 --db big.db --batch-size 1024
  jaxcsp design --workflow dual-level --n 1000 --rounds 3 --seed 0 --db dual.db --plot dual.png"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workflow",
        choices=("representation", "dual-level"),
        default="representation",
        help="Algorithm 1 on random candidates (representation, default) or the CVAE "
        "dual-level loop (dual-level)",
    )
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
    g = p.add_argument_group("dual-level workflow")
    g.add_argument("--rounds", type=int, default=3, help="R_max, rounds of the loop (3)")
    g.add_argument(
        "--latent-steps", type=int, default=100, help="Algorithm 2 steps per round (100)"
    )
    g.add_argument(
        "--latent-init",
        choices=("encode", "prior"),
        default="encode",
        help="latent restart of each round: the crystal's posterior mean (encode) or N(0, I)",
    )
    g.add_argument("--model", default=None, help="CVAE checkpoint (default: the shipped one)")
    g.add_argument(
        "--data",
        default=None,
        help="CSV table whose conditions are drawn, e.g. the one --model was trained on "
        "(default: the shipped sp2 carbon set)",
    )
    g.add_argument("--no-baseline", action="store_true", help="skip Algorithm 1 alone")
    g.add_argument("--no-screen", action="store_true", help="skip relaxation and ranking")
    add_progress_flag(p)


def _dual(args: argparse.Namespace) -> int:
    check_int("--n", args.n)
    check_int("--rounds", args.rounds)
    check_int("--steps", args.steps, minimum=0)
    check_int("--latent-steps", args.latent_steps, minimum=0)
    check_int("--batch-size", args.batch_size)
    model = shipped_cvae() if args.model is None else load_cvae(args.model)
    dtype = model.transform.means.dtype
    data = args.data
    conditions = load_carbon_sp2(dtype=dtype) if data is None else read_table(data, dtype=dtype)
    result = dual_level(
        model,
        args.n,
        conditions=conditions,
        seed=args.seed,
        rounds=args.rounds,
        steps=args.steps,
        latent_steps=args.latent_steps,
        batch_size=args.batch_size,
        latent_init=args.latent_init,
        baseline=not args.no_baseline,
        screen=not args.no_screen,
        cn_weight=args.cn_weight,
        db=args.db,
        progress=not args.no_progress,
    )
    print(result.summary())
    sc = result.screening
    if sc is not None and sc.n_unique:
        de = (sc.energy_per_atom - sc.reference)[sc.unique]
        counts, edges = np.histogram(de[np.isfinite(de)], bins=np.arange(0.0, 3.01, 0.25))
        cells = " ".join(
            f"{a:.2f}-{b:.2f}:{c}" for a, b, c in zip(edges, edges[1:], counts, strict=False) if c
        )
        print(f"energy above graphite (eV/atom) of the unique structures: {cells}")
    if args.db:
        print(f"wrote {args.db}")
        if result.baseline_screening is not None:
            print(f"wrote {result.baseline_screening.db} (Algorithm 1 alone)")
    if args.plot:
        plot_dual_level(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.workflow == "dual-level":
        return _dual(args)
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
