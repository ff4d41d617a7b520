"""Deduplication: :func:`jaxcsp.search.deduplicate` vs pymatgen ``StructureMatcher``.

Input: ``--n`` relaxed structures as a search produces them: random Si8
(:func:`jaxcsp.symmetry.random_crystals`, seed ``--seed``) relaxed with Stillinger-Weber and the
Frechet cell filter to fmax 0.01 eV/Å in float64. The relaxed set is cached in
``benchmarks/results/dedup_<composition>_n<n>_seed<seed>.extxyz`` (git-ignored), so reruns skip
the relaxation. Same tolerances everywhere (``--ltol/--stol/--angle-tol``, pymatgen's defaults).

Measured in the same run:

* ours, cold (first call in the process: JAX compilation included) and warm (second call;
  pymatgen's reductions are redone, nothing is cached between calls);
* ``StructureMatcher.group_structures`` (what a user would call) on the first ``--peer-n``
  structures (300 by default: it makes O(n x groups) fit calls, hours at n = 2000), with ours
  timed on the same subset;
* all-pairs ``StructureMatcher.fit(s_i, s_j)`` on the original structures: too slow for all
  ``n (n - 1) / 2`` pairs, so ``--pairs`` random pairs are timed and the mean is
  **extrapolated** to all pairs (printed as such).

Printed: groups found by each method and whether ours equals ``group_structures``' grouping,
pairs kept by each prefilter stage, ``fit`` calls, times and speed-ups; JSON lines go to
``benchmarks/results/dedup.jsonl``. Run from the repository root::

    python -m benchmarks.dedup [--n 2000] [--pairs 2000] [--peer-n 300] [--quick]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import numpy as np

from benchmarks.harness import Timing, compare, compile_clock, record

jax.config.update("jax_enable_x64", True)

import jaxcsp as jc  # noqa: E402

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def relaxed_set(n: int, seed: int = 0, *, composition: str = "Si8"):
    """``n`` relaxed random crystals and their energies (eV), cached under ``results/``.

    Returns:
      ``(Crystals, energies (n,))``.
    """
    import ase.io

    path = RESULTS / f"dedup_{composition}_n{n}_seed{seed}.extxyz"
    if path.exists():
        images = ase.io.read(path, index=":")
        print(f"read {len(images)} relaxed structures from {path}", flush=True)
        return jc.io.from_ase(images), np.array([a.get_potential_energy() for a in images])
    t = time.perf_counter()
    wc = jc.symmetry.random_crystals(jax.random.key(seed), composition, n)
    c = jc.compact(jc.symmetry.reconstruct(wc))
    print(f"generated {n} x {composition} in {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    res = jc.optimize.relax(
        c, jc.potentials.stillinger_weber(), cell_filter="frechet", fmax=0.01, progress=True
    )
    energy = np.asarray(res.energy)
    converged = np.asarray(res.converged)
    print(
        f"relaxed in {time.perf_counter() - t:.1f} s; converged {converged.mean():.1%}",
        flush=True,
    )
    images = jc.io.to_ase(res.crystals.wrap())
    for a, e, ok in zip(images, energy, converged, strict=True):
        a.info["energy"] = float(e)
        a.info["converged"] = bool(ok)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.extxyz")
    ase.io.write(tmp, images, format="extxyz")
    tmp.rename(path)
    return jc.io.from_ase(images), energy


def labels_from_groups(groups, structures) -> np.ndarray:
    """``group_structures`` output as labels: the smallest index of each structure's group."""
    where = {id(s): i for i, s in enumerate(structures)}
    labels = np.full(len(structures), -1, dtype=np.int64)
    for g in groups:
        idx = sorted(where[id(s)] for s in g)
        labels[idx] = idx[0]
    return labels


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs", type=int, default=2000, help="sampled pairs for all-pairs fit")
    p.add_argument("--ltol", type=float, default=0.2)
    p.add_argument("--stol", type=float, default=0.3)
    p.add_argument("--angle-tol", type=float, default=5.0)
    p.add_argument(
        "--peer-n",
        type=int,
        default=300,
        help="group_structures runs on the first PEER_N structures only (it makes O(n x groups) "
        "fit calls: hours at n=2000); ours is timed on the same subset beside it",
    )
    p.add_argument("--quick", action="store_true", help="n=200, pairs=200")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.pairs = 200, 200
    from pymatgen.analysis.structure_matcher import StructureMatcher

    tols = dict(ltol=args.ltol, stol=args.stol, angle_tol=args.angle_tol)
    c, _ = relaxed_set(args.n, args.seed)
    b = c.batch_size
    total = b * (b - 1) // 2
    case = f"{b} relaxed Si8 (seed {args.seed}) ltol={args.ltol} stol={args.stol}"

    # ours: cold, then warm
    compile0 = compile_clock()[0]
    t = time.perf_counter()
    labels, info = jc.search.deduplicate(c, **tols, return_info=True)
    cold = time.perf_counter() - t
    cold_compile = compile_clock()[0] - compile0
    t = time.perf_counter()
    labels2, info2 = jc.search.deduplicate(c, **tols, return_info=True)
    warm = time.perf_counter() - t
    assert np.array_equal(labels, labels2)
    print(
        f"ours: {info.groups} groups; cold {cold:.1f} s (JAX compiling {cold_compile:.1f} s), "
        f"warm {warm:.1f} s = fingerprints {info2.seconds['fingerprints']:.2f} s + pairs "
        f"{info2.seconds['pairs']:.2f} s + matching {info2.seconds['matching']:.1f} s "
        f"({info2.reduced} reductions, {info2.fits} fit calls)",
        flush=True,
    )

    # the prefilter over all pairs (reduces every structure in a fingerprint-kept pair)
    t = time.perf_counter()
    kept = jc.search.prefilter_pairs(c, **tols)
    prefilter_s = time.perf_counter() - t

    # peer (a): group_structures on the first peer_n structures, counting its fit calls
    structures = jc.io.to_pymatgen(c)
    peer_n = min(args.peer_n, b)
    sub = c.take(np.arange(peer_n))
    t = time.perf_counter()
    sub_labels = jc.search.deduplicate(sub, **tols)
    sub_s = time.perf_counter() - t
    sm = StructureMatcher(**tols)
    calls = {"n": 0}
    fit = sm.fit

    def counted_fit(*a, **k):
        calls["n"] += 1
        return fit(*a, **k)

    sm.fit = counted_fit
    t = time.perf_counter()
    groups = sm.group_structures(structures[:peer_n])
    gs_s = time.perf_counter() - t
    ref = labels_from_groups(groups, structures[:peer_n])
    agree = bool(np.array_equal(ref, sub_labels)) and bool(
        np.array_equal(sub_labels, labels[:peer_n])
    )
    print(
        f"group_structures on the first {peer_n}: {len(groups)} groups in {gs_s:.1f} s "
        f"({calls['n']} fit calls); ours on the same {peer_n}: {sub_s:.1f} s; ours equal to its "
        f"grouping (and to the first {peer_n} labels of the full run): {agree}"
        + ("" if agree else f" ({int(np.sum(ref != sub_labels))} labels differ)"),
        flush=True,
    )

    # peer (b): all-pairs fit on the originals, sampled and extrapolated
    rng = np.random.default_rng(args.seed)
    sample = rng.choice(total, size=min(args.pairs, total), replace=False)
    iu = np.triu_indices(b, 1)
    pm = StructureMatcher(**tols)
    t = time.perf_counter()
    matched = sum(pm.fit(structures[iu[0][k]], structures[iu[1][k]]) for k in sample)
    per_pair = (time.perf_counter() - t) / len(sample)
    allpairs_s = per_pair * total
    print(
        f"all-pairs fit: {per_pair * 1e3:.2f} ms per pair over {len(sample)} random pairs "
        f"({matched} matched) -> EXTRAPOLATED to all {total:,} pairs: {allpairs_s:,.0f} s",
        flush=True,
    )

    rows = [
        ("pairs, total", total),
        ("same reduced composition", info.same_composition),
        (f"fingerprint distance <= {info.fingerprint_tol:g}", info.fingerprint_kept),
        ("+ same primitive size and lattice minima (all pairs)", len(kept)),
        ("examined by the greedy grouping (after 1-2)", info.examined),
        ("fit calls, ours", info.fits),
        (f"fit calls, group_structures (first {peer_n})", calls["n"]),
    ]
    print("\nprefilter (pairs i < j)")
    for name, count in rows:
        print(f"  {name:<52} {count:>12,} {count / max(total, 1):8.2%}")
    print("\nmethod                                       groups    seconds   ours faster by")
    table = [  # name, groups, seconds, ours on the same structures (s)
        ("jaxcsp deduplicate, cold", info.groups, cold, cold),
        ("jaxcsp deduplicate, warm", info2.groups, warm, warm),
        ("pymatgen fit, all pairs (EXTRAPOLATED)", None, allpairs_s, warm),
        (f"jaxcsp deduplicate, first {peer_n}", None, sub_s, sub_s),
        (f"pymatgen group_structures, first {peer_n}", len(groups), gs_s, sub_s),
    ]
    for name, g, sec, ours_s in table:
        gtxt = f"{g:>6}" if g is not None else "     -"
        print(f"  {name:<42} {gtxt} {sec:10.1f}   x{sec / ours_s:8.1f}")
    print(f"  prefilter_pairs over all pairs: {prefilter_s:.1f} s (not part of deduplicate)\n")

    extra = dict(
        n=b,
        groups_ours=info.groups,
        groups_group_structures=len(groups),
        peer_n=peer_n,
        agree_with_group_structures=agree,
        pairs_total=total,
        pairs_same_composition=info.same_composition,
        pairs_fingerprint_kept=info.fingerprint_kept,
        pairs_prefilter_kept=len(kept),
        pairs_examined=info.examined,
        fits_ours=info.fits,
        fits_group_structures=calls["n"],
        fingerprint_tol=info.fingerprint_tol,
        ours_cold_s=cold,
        ours_cold_compile_s=cold_compile,
        seconds_warm=info2.seconds,
        **tols,
    )
    ours = Timing((warm,), warm, cold - warm)
    compare(
        "dedup",
        f"first {peer_n} of {case}",
        Timing((sub_s,), sub_s, 0.0),
        Timing((gs_s,), gs_s, 0.0),
        peer_name="pymatgen group_structures",
        units=peer_n,
        extra=dict(extra, peer_n=peer_n),
    )
    compare(
        "dedup",
        case,
        ours,
        Timing((allpairs_s,), allpairs_s, 0.0),
        peer_name=f"pymatgen fit all pairs (extrapolated from {len(sample)} pairs)",
        units=b,
        extra=dict(extra, allpairs_per_pair_s=per_pair, allpairs_sampled=len(sample)),
    )
    record("dedup", dict(case=case, kind="summary", **extra))


if __name__ == "__main__":
    main()
