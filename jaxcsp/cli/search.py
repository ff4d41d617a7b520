"""``jaxcsp search``: crystal structure search from a composition to ranked, distinct structures."""

from __future__ import annotations

import argparse
import json

from jaxcsp import search
from jaxcsp.cli._common import add_progress_flag
from jaxcsp.cli.relax import make_potential
from jaxcsp.errors import check_int, check_real
from jaxcsp.io import connect_db

NAME = "search"
HELP = "search for the lowest-energy crystal structures of a composition"
DESCRIPTION = """\
Search for the crystal structures of COMPOSITION with the lowest enthalpy per atom under a
potential: a method proposes candidates, each is relaxed (variable cell, continuous batching),
written to the ASE database as it finishes, deduplicated (pymatgen StructureMatcher) and
ranked. The search stops once the oracle budget (energy/force evaluations) is spent, at the end
of an iteration. Rerunning the same command resumes a killed search and ends with the same
result; rows carry method, iteration, energy_per_atom, enthalpy_per_atom, oracle_calls, unique,
duplicate_of and matches_reference (with --reference).

Methods (--method):
  random        random symmetric structures, uniform over the compatible space groups
  crysim        CRYSIM: a factorization machine on symmetry-informed bit vectors, annealed
                in JAX, decoded (largest minimum distance), relaxed; --n-initial random
                single points first, then --batch-size candidates per iteration
  basin         basin hopping (FUSE2): a population (--population 25) of relaxed structures,
                each moved every iteration by one of FUSE2's moves (swaps, voids, blocks,
                layers, cell shapes, strains, doubling/halving, new structures), relaxed
                together (--tier POTENTIAL first), accepted by Metropolis at --temperature;
                --init random pool:FILE compares initial populations on the same budget
  active        active learning with an ensemble of learned force fields (Hessmann et al.):
                a PaiNN ensemble relaxes a pool of --n-search symmetric candidates and
                --n-train random cells until it is unsure (U > 0.5), --batch-size (32)
                training-pool structures per cycle are labelled by single oracle points, the
                ensemble is retrained, until the lowest clusters stop improving; then their
                representatives are relaxed on the oracle. --compare random runs random
                search until it finds --reference (or spends --baseline-budget)

Potentials (--potential) as for `jaxcsp relax`: sw, tersoff, lj:sigma=S,epsilon=E,cutoff=R,
morse:..., nacl (Tosi-Fumi Buckingham + DSF Coulomb), sevennet, chgnet.

examples:
  jaxcsp search --composition Si8 --reference jaxcsp/data/structures/si_diamond.cif --plot si8.png
  jaxcsp search --reference jaxcsp/data/structures/si_diamond.cif --until-found --seed 4
  jaxcsp search --composition Ar8 --potential lj:sigma=3.4,epsilon=0.0104,cutoff=12 --db ar8.db
  jaxcsp search --method crysim --iterations 300 --reference jaxcsp/data/structures/si_diamond.cif \
      --until-found --compare random --plot crysim.png
  jaxcsp search --method basin --composition Si16 --init random pool:generated.extxyz \
      --reference jaxcsp/data/structures/si_diamond.cif --compare random
  jaxcsp search --method active --composition Si16 --potential sw --seed 0 --db si16.db \
      --reference jaxcsp/data/structures/si_diamond.cif --compare random"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--method",
        default="random",
        choices=("random", "crysim", "basin", "active"),
        help="search method",
    )
    p.add_argument(
        "--composition", default="Si8", help="unit-cell composition, e.g. Si8 or Na4Cl4 (Si8)"
    )
    p.add_argument("--potential", default="sw", help="energy model (default: sw)")
    p.add_argument(
        "--budget",
        type=int,
        help="oracle budget in energy/force evaluations; the search stops at the end of the "
        "iteration that spends it (random: 2000, one iteration of 64 Si8 candidates at ~36 "
        "calls each; crysim: none when --iterations is given, else 6000; basin: 100000)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--db", default="search.db", metavar="OUT.db", help="ASE database (search.db)")
    p.add_argument(
        "--reference",
        metavar="KNOWN.cif",
        nargs="+",
        help="known ground truth: reports I_M,0, N_E, N_M and marks matching rows; several "
        "files are one degenerate ground truth (e.g. fcc.cif hcp.cif), any one matches",
    )
    p.add_argument(
        "--until-found",
        action="store_true",
        help="with --reference: also stop after the first iteration that finds it",
    )
    p.add_argument("--pressure", type=float, default=0.0, help="pressure in GPa (0)")
    p.add_argument("--plot", metavar="OUT.png", help="save best enthalpy vs oracle calls")
    p.add_argument(
        "--batch-size",
        type=int,
        help="candidates per iteration (random 64, crysim 8, basin: --population, active: "
        "labels per cycle, 32)",
    )
    p.add_argument("--n-search", type=int, default=64, help="active: search pool (64)")
    p.add_argument("--n-train", type=int, default=128, help="active: training pool (128)")
    p.add_argument("--members", type=int, default=5, help="active: ensemble members (5)")
    p.add_argument(
        "--max-cycles", type=int, default=10, help="active: cycles before validation (10)"
    )
    p.add_argument(
        "--baseline-budget",
        type=int,
        help="active --compare random: oracle calls the baseline may spend looking for the "
        "reference (default: 20x the method's calls)",
    )
    p.add_argument(
        "--max-iterations", "--iterations", type=int, help="stop after this many iterations"
    )
    p.add_argument(
        "--n-initial", type=int, default=1000, help="crysim: random initial single points (1000)"
    )
    p.add_argument("--ldr", type=int, default=8, help="crysim: voxels per cell edge (8)")
    p.add_argument(
        "--volume-factor",
        type=float,
        default=1.1,
        help="random structures' volume over the covalent spheres' (1.1; ~7 for LJ argon)",
    )
    p.add_argument(
        "--distance-factor",
        type=float,
        default=0.5,
        help="random structures' closest pair over the covalent radii sum (0.5)",
    )
    p.add_argument("--population", type=int, default=25, help="basin: members (25)")
    p.add_argument(
        "--temperature", type=float, default=0.01, help="basin: Metropolis kT, eV/atom (0.01)"
    )
    p.add_argument(
        "--reset-after",
        type=int,
        default=20,
        help="basin: iterations without improving before a member restarts (20)",
    )
    p.add_argument(
        "--min-atoms",
        type=int,
        help="basin: smallest cell in atoms (default: the composition's; lower it to let "
        "doubling/halving change the cell size)",
    )
    p.add_argument(
        "--symmetrize", action="store_true", help="basin: spglib-symmetrise moved structures"
    )
    p.add_argument(
        "--init",
        nargs="+",
        default=["random"],
        metavar="INIT",
        help="basin: initial population, 'random' or 'pool:FILE' (structures a generator made; "
        "random ones fill in); several run one after another on the same budget and are "
        "reported side by side (the first into OUT.db, the others into OUT.init<k>.db)",
    )
    p.add_argument(
        "--tier",
        metavar="POTENTIAL",
        help="a cheap potential that pre-relaxes every candidate before the oracle (counted "
        "apart, fmax 0.05 eV/Å)",
    )
    p.add_argument(
        "--spg",
        type=int,
        help="random and basin: draw random structures in this space group only (1: "
        "unsymmetric starts; default: uniform over the compatible groups)",
    )
    p.add_argument("--fmax", type=float, default=0.01, help="force threshold, eV/Å (0.01)")
    p.add_argument("--max-steps", type=int, default=1000, help="steps per relaxation (1000)")
    p.add_argument("--fixed-cell", action="store_true", help="relax positions only")
    p.add_argument("--window", type=float, default=0.1, help="N_low_E window, eV/atom (0.1)")
    p.add_argument("--top", type=int, default=10, help="rows of the ranked table (10)")
    p.add_argument(
        "--compare",
        choices=("random",),
        help="also run random search (same seed, potential, relaxation, reference and batch "
        "size) on as many oracle calls as the method spent, into OUT.random.db, and print "
        "both side by side",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    add_progress_flag(p)


def _table(result, top: int) -> str:
    from rich.console import Console
    from rich.table import Table

    ref = result.reference_energy is not None
    t = Table(title=f"lowest of {len(result.ranking)} distinct structures")
    for col in ("rank", "eV/atom", "ΔE meV/atom", "space group", "count", "found at", "id"):
        t.add_column(col, justify="right")
    if ref:
        t.add_column("= reference", justify="center")
    rows = result.ranking[:top]
    best = rows[0]["enthalpy_per_atom"] if rows else 0.0
    for r in rows:
        cells = [
            str(r["rank"]),
            f"{r['enthalpy_per_atom']:.5f}",
            f"{1000 * (r['enthalpy_per_atom'] - best):.1f}",
            f"{r['symbol']} ({r['spg']})",
            str(r["count"]),
            f"it {r['iteration']}",
            str(r["id"]),
        ]
        if ref:
            cells.append("yes" if r["matches_reference"] else "")
        t.add_row(*cells)
    console = Console(record=True, width=100)
    with console.capture() as cap:
        console.print(t)
    return cap.get()


def _metrics_text(m: dict, window: float) -> str:
    lines = [
        f"oracle calls {m['oracle_calls']}, {m['n_evaluated']} structures "
        f"({m['n_valid']} valid) in {m['iterations']} iterations, wall time {m['wall_s']:.1f} s",
        f"N_unique {m['n_unique']}, N_low_E {m['n_low_e']} (within {window} eV/atom of "
        f"{'the reference' if 'reference_energy_per_atom' in m else 'the best'}), "
        f"best {m['best_enthalpy_per_atom']:.5f} eV/atom",
    ]
    if "reference_energy_per_atom" in m:
        i_m0 = "not found" if m.get("i_m0") is None else f"iteration {m['i_m0']}"
        lines.append(
            f"reference {m['reference_energy_per_atom']:.5f} eV/atom: I_M,0 {i_m0}, "
            f"N_M {m.get('n_m', 0)}, N_E {m['n_e']}"
        )
    return "\n".join(lines)


_COMPARED = (
    ("oracle calls", "oracle_calls", "{}"),
    ("structures evaluated", "n_evaluated", "{}"),
    ("distinct (N_unique)", "n_unique", "{}"),
    ("best eV/atom", "best_enthalpy_per_atom", "{:.5f}"),
    ("N_low_E", "n_low_e", "{}"),
    ("I_M,0 (iteration)", "i_m0", "{}"),
    ("calls to reference", "calls_to_reference", "{}"),
    ("N_M", "n_m", "{}"),
    ("N_E", "n_e", "{}"),
    ("wall time s", "wall_s", "{:.1f}"),
    ("time per structure s", "s_per_structure", "{:.3f}"),
)


def _comparison(named: list[tuple[str, dict]]) -> str:
    """Side-by-side metrics of several searches (rich table as text)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="same oracle, same budget")
    t.add_column("metric")
    for name, _ in named:
        t.add_column(name, justify="right")
    for label, key, fmt in _COMPARED:
        if not any(key in m for _, m in named):
            continue
        t.add_row(
            label,
            *("not found" if m.get(key) is None else fmt.format(m[key]) for _, m in named),
        )
    console = Console(record=True, width=100)
    with console.capture() as cap:
        console.print(t)
    return cap.get()


def _init_db(db: str, k: int) -> str:
    stem = db[: -len(".db")] if db.endswith(".db") else db
    return f"{stem}.init{k}.db"


def _generator(init: str, rules: dict):
    """The basin-hopping generator of an ``--init`` value (``random`` or ``pool:FILE``)."""
    if init == "random":
        return None
    kind, _, path = init.partition(":")
    if kind == "pool" and path:
        import pathlib

        if not pathlib.Path(path).exists():
            raise search.InvalidSearchError(f"no such file {path!r}", field="init")
        gen = search.pool_generator(path, fallback=search.random_generator(**rules))
        gen.__name__ = init
        return gen
    if init == "cvae":
        raise search.InvalidSearchError(
            "this jaxcsp has no trained CVAE generator; write the structures a generator made "
            "to a file and pass pool:FILE",
            field="init",
        )
    raise search.InvalidSearchError(
        f"must be 'random' or 'pool:FILE' (a file of generated structures), got {init!r}",
        field="init",
    )


def _moves_text(pop: dict) -> str:
    """One line per move: proposed, accepted, skipped (basin hopping)."""
    rows = [
        f"{name} {int(p)}/{int(a)}/{int(k)}"
        for name, p, a, k in zip(
            pop["moves"], pop["proposed"], pop["accepted"], pop["skipped"], strict=True
        )
    ]
    return f"moves proposed/accepted/skipped ({int(pop['resets'])} resets): " + ", ".join(rows)


def _cycles_text(pop: dict) -> str:
    """The active-learning report: one row per cycle (rich table as text)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title="active learning cycles")
    for col in ("cycle", "labels", "lowest clusters eV/atom", "val loss", "uncertain",
                "converged", "train s", "relax s", "stop"):  # fmt: skip
        t.add_column(col, justify="right")
    for r in pop.get("report", []):
        st = r["statuses"]
        t.add_row(
            str(r["cycle"]),
            str(r["labels"]),
            " ".join(f"{e:.4f}" for e in r["lowest_clusters"]) or "-",
            f"{r['val_loss']:.3g}",
            str(st.get("uncertain", 0)),
            str(st.get("converged", 0)),
            f"{r['train_s']:.1f}",
            f"{r['relax_s']:.1f}",
            "yes" if r["stopped"] else "",
        )
    console = Console(record=True, width=110)
    with console.capture() as cap:
        console.print(t)
    return cap.get()


def _savings_text(m: dict, bm: dict) -> str:
    """Oracle calls of active learning (all, validation included) against random search's
    calls to the reference."""
    found = m.get("calls_to_reference") is not None
    ours = m["oracle_calls"]
    if bm.get("calls_to_reference") is None:
        theirs = f"not found in {bm['oracle_calls']} calls"
        ratio = f">= {bm['oracle_calls'] / max(ours, 1):.1f}x" if found else "n/a"
    else:
        theirs = str(bm["calls_to_reference"])
        ratio = f"{bm['calls_to_reference'] / max(ours, 1):.1f}x" if found else "n/a"
    return (
        f"reference found by active learning: {'yes' if found else 'no'}; oracle calls: active "
        f"{ours} (all, validation included), random search to the reference {theirs}; "
        f"random/active {ratio}"
    )


def _baseline_db(db: str) -> str:
    stem = db[: -len(".db")] if db.endswith(".db") else db
    return f"{stem}.random.db"


def run(args: argparse.Namespace) -> int:
    from ase.units import GPa

    # every option and the output path are checked before a potential is built
    budget = args.budget
    if budget is None and args.method == "crysim":
        budget = None if args.max_iterations else 6000
    elif budget is None and args.method == "active":
        budget = None  # the method stops itself (max_iterations caps it below)
    elif budget is None:
        budget = 100_000 if args.method == "basin" else 2000
    elif isinstance(budget, bool) or budget < 1:
        raise search.InvalidSearchError(
            f"must be a positive number of oracle calls, got {budget!r}", field="budget"
        )
    check_real("pressure", args.pressure, positive=False, unit="GPa")
    check_real("fmax", args.fmax, unit="eV/Å")
    check_real("window", args.window, unit="eV/atom")
    check_int("max_steps", args.max_steps)
    check_int("top", args.top)
    check_real("volume_factor", args.volume_factor)
    check_real("distance_factor", args.distance_factor)
    rules = dict(volume_factor=args.volume_factor, distance_factor=args.distance_factor)
    if args.spg is not None:
        if args.method == "crysim":
            raise search.InvalidSearchError(
                "crysim draws its space groups from its bit vectors", field="spg"
            )
        check_int("spg", args.spg)
        rules["spg"] = args.spg
    tiers: tuple[search.Tier, ...] = ()
    inits = [(str(x), x) for x in args.init] if args.method == "basin" else [("", None)]
    max_iterations = args.max_iterations
    if args.method == "active":
        batch = 32 if args.batch_size is None else args.batch_size
        if args.baseline_budget is not None:
            check_int("baseline_budget", args.baseline_budget)
        if "spg" in rules:
            raise search.InvalidSearchError(
                "active learning draws its own pools (P1 training cells, symmetric candidates)",
                field="spg",
            )
        methods = [
            search.active_learning(
                args.n_search,
                args.n_train,
                batch,
                num_members=args.members,
                max_cycles=args.max_cycles,
                **rules,
            )
        ]
        if max_iterations is None:
            max_iterations = args.max_cycles + 1
    elif args.method == "crysim":
        batch = 8 if args.batch_size is None else args.batch_size
        methods = [search.crysim_search(args.n_initial, batch, ldr=args.ldr, **rules)]
    elif args.method == "basin":
        batch = args.population if args.batch_size is None else args.batch_size
        methods = [
            search.basin_hopping(
                batch,
                temperature=args.temperature,
                reset_after=args.reset_after,
                min_atoms=args.min_atoms,
                symmetrize=args.symmetrize,
                generator=_generator(init, rules),
                **rules,
            )
            for init in args.init  # one method per --init (the labels of `inits`)
        ]
    else:
        batch = 64 if args.batch_size is None else args.batch_size
        methods = [search.random_search(batch, **rules)]
    dbs = [args.db] + [_init_db(args.db, k) for k in range(1, len(methods))]
    compare = args.compare if args.compare != args.method else None
    for db in dbs:
        connect_db(db)
    if compare:
        connect_db(_baseline_db(args.db))
    pot = make_potential(args.potential)
    if args.tier:
        tiers = (search.Tier(make_potential(args.tier), name="tier"),)
    search.check_setup(args.composition, pot)
    common = dict(
        seed=args.seed,
        fmax=args.fmax,
        cell_filter=None if args.fixed_cell else "frechet",
        pressure=args.pressure * GPa,
        max_steps=args.max_steps,
        reference=args.reference,
        window=args.window,
        stop_at_reference=args.until_found,
        progress=not args.no_progress,
    )
    results = []
    for method, db in zip(methods, dbs, strict=True):
        r = search.run(
            method,
            args.composition,
            search.Oracle(pot, budget=budget, tiers=tiers),
            db=db,
            max_iterations=max_iterations,
            **common,
        )
        r.metrics["s_per_structure"] = r.metrics["wall_s"] / max(1, r.metrics["n_evaluated"])
        results.append(r)
    result = results[0]
    m = result.metrics
    named = [
        (args.method if len(results) == 1 else f"{args.method} ({label})", r.metrics)
        for (label, _), r in zip(inits, results, strict=True)
    ]
    baseline = None
    if compare and args.method == "active":
        # the method stops itself; the baseline relaxes random structures on the oracle until
        # it finds the reference (or spends its budget): the calls a user would pay instead
        b_budget = args.baseline_budget or 20 * max(1, m["oracle_calls"])
        baseline = search.run(
            search.random_search(64 if args.batch_size is None else batch, **rules),
            args.composition,
            search.Oracle(pot, budget=b_budget, tiers=tiers),
            db=_baseline_db(args.db),
            **dict(common, stop_at_reference=args.reference is not None),
        )
        bm = baseline.metrics
        bm["s_per_structure"] = bm["wall_s"] / max(1, bm["n_evaluated"])
        named.append((compare, bm))
    elif compare:
        # the baseline gets the calls the method spent, in batches of the method's size; it
        # may overshoot by its last batch, which is why "calls to reference" is printed too
        baseline = search.run(
            search.random_search(batch, **rules),
            args.composition,
            search.Oracle(pot, budget=max(1, m["oracle_calls"]), tiers=tiers),
            db=_baseline_db(args.db),
            **common,
        )
        bm = baseline.metrics
        bm["s_per_structure"] = bm["wall_s"] / max(1, bm["n_evaluated"])
        named.append((compare, bm))
    if args.json:
        out = dict(m) if len(named) == 1 else dict(named)
        print(json.dumps(out, default=float))
    else:
        print(_table(result, args.top), end="")
        print(_metrics_text(m, args.window))
        if args.method == "basin":
            print(_moves_text(result.state.population))
        if args.method == "active":
            print(_cycles_text(result.state.population), end="")
        if len(named) > 1:
            print(_comparison(named), end="")
        if args.method == "active" and baseline is not None and args.reference:
            print(_savings_text(m, baseline.metrics))
    if args.plot:
        others = tuple(results[1:]) + (() if baseline is None else (baseline,))
        search.plot_search(result, args.plot, compare=others)
        print(f"plot: {args.plot}")
    print(f"database: {', '.join(dbs)}")
    if baseline is not None:
        print(f"baseline database: {_baseline_db(args.db)}")
    return 0
