"""Batched variable-cell relaxation of random starts vs one ASE process, as a search runs it.

Cases (``--cases``, all three by default), each ``--n`` random starts (128) with physical
parameters:

* ``ar8``: Ar8, Lennard-Jones σ 3.4 Å, ε 0.0104 eV, cutoff 10.2 Å, energy shifted to zero at
  the cutoff (``jc.potentials.lennard_jones``' default ``cutoff_mode="shift"``, which is ASE's
  ``LennardJones(sigma=3.4, epsilon=0.0104, rc=10.2, smooth=False)``; the two are checked
  equal to 1e-8 in energy, forces and stress on the first structure before timing);
* ``si8``: Si8, Stillinger-Weber (``jc.potentials.stillinger_weber()``);
* ``nacl8``: Na4Cl4, Tosi-Fumi Buckingham + DSF Coulomb (``jc.potentials.buckingham_nacl()``,
  cutoff 12 Å).

Starts are drawn as a search draws them: :func:`jaxcsp.symmetry.random_crystals` (fixed seed per
case, crc32 of its name), then ``reconstruct`` and ``jc.compact``. Half of them are compressed
and half expanded relative to the potential's equilibrium density: the two halves use the two
``volume_factor`` values of :data:`CASES`, chosen (from the relaxed volume of the ground state,
:data:`CASES`' ``v_eq``, and the volumes of trial starts) so that the compressed half starts
below and the expanded half above that volume per atom. The start and final volume-per-atom
ranges of each half are printed.

Both sides relax with a Fréchet variable cell to ``--fmax`` 0.01 eV/Å, at most 1000 steps:

* ours: :func:`jaxcsp.optimize.relax` (``cell_filter="frechet"``) on the whole batch in this
  process, called twice on the same starts: the first call is cold (a fresh process, no
  persistent compilation cache) and its wall time, compilation included, is the headline; the
  second call is the warm time, printed beside it with the compile seconds of the first
  (several cases in one process share some small compiled programs, so each case's cold time
  is measured alone with ``--cases <case>``);
* peer: ASE ``BFGSLineSearch(FrechetCellFilter(atoms))`` in ONE single-threaded process
  (``--procs`` 1; BLAS, OpenMP and XLA limited to one thread) on ``--ase-n`` of the starts
  (default all; taken from both halves, and the time scaled to ``--n`` when fewer), with one
  calculator reused for all of them: ASE's own ``LennardJones`` for ``ar8``, the
  :class:`~jaxcsp.potentials.ase_calculator.JaxcspCalculator` adapter for ``si8`` and ``nacl8``
  (its compile time excluded). Every calculator evaluation is counted; printed for
  information only (not in the criteria): how many of them repeat the previous point up to
  round-off (ASE's cache misses there because ``FrechetCellFilter``'s round trip through the
  cell logarithm changes the last bits) and the ratio against ASE's calls at new points.

Printed and recorded per case (``benchmarks/results/relax.jsonl`` through the harness): ours cold,
warm and compile seconds, ASE seconds, per-structure speed-ups cold and warm (ASE seconds per
structure / ours), force calls per structure (median, 90th percentile, max) of both, the
per-structure ratio ours / ASE (median, max, how many above 1.5), the fraction of structures
ending at or below ASE's energy (within 1e-4 eV/atom), how many end higher, and the issue's four
criteria as PASS/FAIL:

1. no structure uses more than 1.5x ASE's force calls;
2. our median force calls is no higher than ASE's;
3. at least 95% of structures end at or below ASE's energy (within 1e-4 eV/atom);
4. per structure, ours is at least 20x faster than one ASE process with compilation (cold) and
   at least 40x warm.

The noise floor (``--no-floor`` skips it): ASE relaxes the same starts a second time with every
coordinate moved by at most :data:`FLOOR_SHIFT` (1e-10 Å), and the same per-structure ratio and
energy share are printed for ASE against itself. Relaxations of random starts are chaotic;
arithmetic that differs in the last bits, as ours and ASE's does, sends some of them to other
minima, and the floor says how many that is on each case.

One figure per run, ``benchmarks/results/relax-<cases>.png``: the distribution of the
per-structure force-call ratio and ours vs ASE calls, per case. Run from the repository root::

    python -m benchmarks.relax                      # ar8, si8, nacl8; n 128, ASE on all 128
    python -m benchmarks.relax --cases ar8          # one case
    python -m benchmarks.relax --quick              # n 8 per case (smoke run)
    python -m benchmarks.relax --gpu                # n 1024 per case, ASE on 128 (scaled)
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import time
import zlib

import jax
import numpy as np

from benchmarks.harness import RESULTS_DIR, Timing, compare, compile_clock

jax.config.update("jax_enable_x64", True)
# "cold" means compiling: never read programs from a persistent cache a user may have set up
jax.config.update("jax_enable_compilation_cache", False)

import jaxcsp as jc  # noqa: E402
from jaxcsp import potentials  # noqa: E402
from jaxcsp.optimize import relax  # noqa: E402
from jaxcsp.symmetry import random_crystals, reconstruct  # noqa: E402

#: Physical Lennard-Jones argon (the ASE peer's parameters too).
AR_LJ = dict(sigma=3.4, epsilon=0.0104, cutoff=10.2)

#: name -> composition, potential, (compressed, expanded) volume_factor, v_eq.
#: ``v_eq`` is the relaxed volume per atom (Å³) of the ground state under the potential (fcc Ar
#: 36.33, diamond Si 20.02, rock-salt NaCl 22.73: relax(..., fmax=1e-4, cell_filter="frechet")).
#: random_crystals draws the cell volume as ``volume_factor`` x the atomic sphere volumes, one
#: radius per element uniform in r³ between the covalent and van der Waals (Alvarez) radii, and
#: rejects close contacts. The factors were chosen from 64 trial starts each so that the
#: compressed half lies below ``v_eq`` and the expanded half above it: Ar 6.0-30.6 / 42.7-190.6
#: Å³/atom, Si 3.2-19.6 / 17.3-108.8 (62 of 64 above), NaCl 7.1-22.4 / 32.5-90.0. For Si, 2.5
#: rather than the ~2.9 that would put every expanded start above ``v_eq``: beyond ~100 Å³/atom
#: most Si atoms are out of the 3.77 Å SW cutoff and their relaxation is trivial.
CASES = {
    "ar8": dict(comp="Ar8", pot="lj", vf=(1.2, 7.5), v_eq=36.33),
    "si8": dict(comp="Si8", pot="sw", vf=(0.45, 2.5), v_eq=20.02),
    "nacl8": dict(comp="Na4Cl4", pot="nacl", vf=(0.55, 2.0), v_eq=22.73),
}

CALLS_LIMIT = 1.5  # criterion 1: ours / ASE force calls, every structure
E_TOL = 1e-4  # criterion 3: eV/atom
E_FRACTION = 0.95
SPEEDUP_COLD, SPEEDUP_WARM = 20.0, 40.0  # criterion 4
FLOOR_SHIFT = 1e-10  # Å: the noise floor's move of every coordinate (uniform in ±)


def make_potential(name: str):
    if name == "lj":
        return potentials.lennard_jones(**AR_LJ)
    if name == "sw":
        return potentials.stillinger_weber()
    return potentials.buckingham_nacl()


def _counted(calc):
    """Count evaluations of any ASE calculator in ``calc.n_calls``, and in ``calc.n_repeats``
    those at the previous evaluation's point up to round-off (positions and cell within 1e-9 Å:
    ``FrechetCellFilter``'s round trip through the cell logarithm changes the last bits, so
    ASE's cache misses and the calculator runs again)."""
    calc.n_calls = calc.n_repeats = 0
    calc.last_point = None
    inner = calc.calculate

    def calculate(*args, **kwargs):
        calc.n_calls += 1
        out = inner(*args, **kwargs)
        point = np.concatenate([calc.atoms.positions.ravel(), calc.atoms.cell.array.ravel()])
        last = calc.last_point
        if last is not None and last.shape == point.shape and np.abs(point - last).max() < 1e-9:
            calc.n_repeats += 1
        calc.last_point = point
        return out

    calc.calculate = calculate
    return calc


def _peer_calculator(pot_name: str, peer_calc: str, first, n_pad: int, spec):
    """The peer's calculator (one per worker process) and its name."""
    from jaxcsp.potentials.ase_calculator import JaxcspCalculator

    ours = JaxcspCalculator(make_potential(pot_name), max_atoms=n_pad, spec=spec)
    if pot_name != "lj" or peer_calc == "jaxcsp":
        return _counted(ours), "jaxcsp ASE adapter"
    from ase.calculators.lj import LennardJones

    native = LennardJones(
        sigma=AR_LJ["sigma"], epsilon=AR_LJ["epsilon"], rc=AR_LJ["cutoff"], smooth=False
    )
    a, b = first.copy(), first.copy()
    a.calc, b.calc = ours, native
    for get in ("get_potential_energy", "get_forces", "get_stress"):
        if not np.allclose(getattr(a, get)(), getattr(b, get)(), rtol=1e-8, atol=1e-8):
            raise RuntimeError(f"ASE LennardJones differs from jaxcsp's in {get}")
    return _counted(native), "ASE LennardJones"


def _ase_worker(args):
    """Relax a list of structures with ASE in this process.

    Returns ``(seconds excluding JAX compilation, energies per atom, calls, calls at a new
    point, converged, calculator name)``.
    """
    jax.config.update("jax_enable_x64", True)
    import warnings

    # scipy's logm in FrechetCellFilter warns at round-off error levels (~3e-13): one line each
    warnings.filterwarnings("ignore", message="logm result may be inaccurate")
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGSLineSearch

    pot_name, peer_calc, images, fmax, max_steps, n_pad, spec = args
    calc, calc_name = _peer_calculator(pot_name, peer_calc, images[0], n_pad, spec)
    w = images[0].copy()  # compile / warm up once before timing
    w.calc = calc
    w.get_forces()
    w.get_stress()
    energies, calls, distinct, conv = [], [], [], []
    compile0 = compile_clock()[0]
    t0 = time.perf_counter()
    for atoms in images:
        atoms = atoms.copy()
        atoms.calc = calc
        start, start_rep = calc.n_calls, calc.n_repeats
        calc.last_point = None
        opt = BFGSLineSearch(FrechetCellFilter(atoms), logfile=None)
        try:
            ok = bool(opt.run(fmax=fmax, steps=max_steps))
        except RuntimeError:
            ok = False
        energies.append(atoms.get_potential_energy() / len(atoms))
        calls.append(calc.n_calls - start)
        distinct.append(calls[-1] - (calc.n_repeats - start_rep))
        conv.append(ok)
    wall = time.perf_counter() - t0
    return wall - (compile_clock()[0] - compile0), energies, calls, distinct, conv, calc_name


def _ase_pool(images, procs: int, worker_args: tuple):
    """Relax ``images`` with ASE in ``procs`` single-threaded worker processes.

    ``worker_args`` is ``(pot_name, peer_calc, fmax, max_steps, n_pad, spec)``. Returns
    ``(seconds of the slowest worker, energies per atom, calls, calls at a new point,
    converged, calculator name)``, the arrays ``(len(images),)`` in the order of ``images``.
    """
    pot_name, peer_calc, *rest = worker_args
    ctx = mp.get_context("spawn")
    with _single_threaded_children(), ctx.Pool(procs) as pool:
        out = pool.map(
            _ase_worker, [(pot_name, peer_calc, images[i::procs], *rest) for i in range(procs)]
        )
    e, calls, distinct, conv = (np.empty(len(images)) for _ in range(4))
    for k, (_, ek, ck, dk, vk, _) in enumerate(out):
        e[k::procs], calls[k::procs], distinct[k::procs], conv[k::procs] = ek, ck, dk, vk
    return max(o[0] for o in out), e, calls, distinct, conv, out[0][5]


@contextlib.contextmanager
def _single_threaded_children():
    """One thread per worker process (BLAS, OpenMP, XLA), as a one-process-per-core baseline
    is run: with the default thread pools, two workers on two cores oversubscribe them and ASE
    runs 5-9x slower (3x3 ``logm``/``expm`` calls in ``FrechetCellFilter`` spin BLAS threads)."""
    keys = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")
    saved = {k: os.environ.get(k) for k in keys}
    for k in keys[:3]:
        os.environ[k] = "1"
    os.environ["XLA_FLAGS"] = (
        (saved["XLA_FLAGS"] or "")
        + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    ).strip()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def starts(name: str, n: int):
    """``n`` random starts of case ``name``: ``n // 2`` compressed, then the rest expanded."""
    case = CASES[name]
    k_lo, k_hi = jax.random.split(jax.random.key(zlib.crc32(name.encode())))
    n_lo = n // 2
    halves = [
        jc.compact(reconstruct(random_crystals(k, case["comp"], m, volume_factor=vf)))
        for k, m, vf in ((k_lo, n_lo, case["vf"][0]), (k_hi, n - n_lo, case["vf"][1]))
        if m > 0
    ]
    return jc.compact(jc.concatenate(halves)), n_lo


def _agreement(calls, ref_calls, e, ref_e) -> dict:
    """Per-structure force-call ratio ``calls / ref_calls`` and energies (eV/atom) at or below
    the reference's within :data:`E_TOL`; counts of those lower and higher."""
    at_or_below = e <= ref_e + E_TOL
    return dict(
        ratio=calls / np.maximum(ref_calls, 1),
        at_or_below=at_or_below,
        higher=int(np.sum(~at_or_below)),
        lower=int(np.sum(e < ref_e - E_TOL)),
    )


def volume_per_atom(c) -> np.ndarray:
    return np.abs(np.linalg.det(np.asarray(c.lattice))) / np.asarray(c.num_atoms)


def _dist(x) -> str:
    x = np.asarray(x)
    return f"median {np.median(x):.0f}, p90 {np.percentile(x, 90):.0f}, max {x.max():.0f}"


def _relax(c, pot, fmax: float, max_steps: int, progress: bool):
    """One timed call of ours: (result, wall s, compile s, compilations)."""
    s0, n0 = compile_clock()
    t = time.perf_counter()
    res = relax(c, pot, fmax=fmax, cell_filter="frechet", max_steps=max_steps, progress=progress)
    jax.block_until_ready(res)
    wall = time.perf_counter() - t
    s1, n1 = compile_clock()
    return res, wall, s1 - s0, n1 - n0


def run_case(name: str, args) -> dict:
    case = CASES[name]
    n, fmax = args.n, args.fmax
    pot = make_potential(case["pot"])
    t = time.perf_counter()
    c, n_lo = starts(name, n)
    v0 = volume_per_atom(c)
    print(
        f"[{name}] {n} x {case['comp']} starts in {time.perf_counter() - t:.1f} s "
        f"(volume_factor {case['vf'][0]} x {n_lo}, {case['vf'][1]} x {n - n_lo}); "
        f"equilibrium {case['v_eq']} A^3/atom",
        flush=True,
    )

    # ours: cold (headline, compilation included), then the same call warm
    res, cold, compile_s, n_compiles = _relax(c, pot, fmax, args.max_steps, args.progress)
    res_w, warm, compile_w, n_compiles_w = _relax(c, pot, fmax, args.max_steps, args.progress)
    same_rerun = bool(np.array_equal(np.asarray(res.force_calls), np.asarray(res_w.force_calls)))
    v1 = volume_per_atom(res.crystals)
    for label, sl in (("compressed", slice(0, n_lo)), ("expanded", slice(n_lo, n))):
        if sl.start == sl.stop:
            continue
        below = int(np.sum(v0[sl] < case["v_eq"]))
        print(
            f"    {label:>10} starts: V/atom {v0[sl].min():6.1f} .. {v0[sl].max():6.1f} A^3 "
            f"({below}/{sl.stop - sl.start} below equilibrium) -> final {v1[sl].min():6.1f} .. "
            f"{v1[sl].max():7.1f} (median {np.median(v1[sl]):.1f})",
            flush=True,
        )

    # peer: one ASE process on ase_n starts taken from both halves
    ase_n = min(args.ase_n or n, n)
    a_lo = min(ase_n // 2, n_lo)
    idx = np.r_[0:a_lo, n_lo : n_lo + ase_n - a_lo]
    all_images = jc.io.to_ase(c)
    images = [all_images[i] for i in idx]
    procs = max(1, args.procs)
    spec = jc.neighbors.neighbor_list_spec(
        c, float(pot.cutoff), capacity_headroom=1.0, cell_headroom=0.5
    )
    worker_args = (case["pot"], args.peer_calc, fmax, args.max_steps, c.max_atoms, spec)
    t = time.perf_counter()
    ase_wall, ase_e, ase_calls, ase_distinct, ase_conv, calc_name = _ase_pool(
        images, procs, worker_args
    )
    wall_pool = time.perf_counter() - t
    ase_scaled = ase_wall * n / len(images)

    # noise floor: ASE against itself, every start moved by FLOOR_SHIFT Å (far below anything
    # physical, about 1e5 ulps of a coordinate of a few Å): how far two runs of the same algorithm
    # drift apart on these starts when their arithmetic differs in the last bits, as ours and
    # ASE's do. Same criteria as ours against ASE.
    floor = None
    if not args.no_floor:
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        moved = []
        for atoms in images:
            atoms = atoms.copy()
            atoms.positions += rng.uniform(-FLOOR_SHIFT, FLOOR_SHIFT, atoms.positions.shape)
            moved.append(atoms)
        _, floor_e, floor_calls, _, _, _ = _ase_pool(moved, procs, worker_args)
        floor = _agreement(floor_calls, ase_calls, floor_e, ase_e)

    # per-structure comparison on the starts both relaxed
    natoms = np.asarray(c.num_atoms)
    ours_e_all = np.asarray(res.energy) / natoms
    calls_all = np.asarray(res.force_calls)
    ours_e, ours_calls = ours_e_all[idx], calls_all[idx]
    agree = _agreement(ours_calls, ase_calls, ours_e, ase_e)
    ratio = agree["ratio"]
    ratio_distinct = ours_calls / np.maximum(ase_distinct, 1)  # information, not a criterion
    at_or_below = agree["at_or_below"]
    higher, lower = agree["higher"], agree["lower"]
    speed_cold = (ase_wall / len(images)) / (cold / n)
    speed_warm = (ase_wall / len(images)) / (warm / n)
    criteria = {
        "calls_worst": bool(np.sum(ratio > CALLS_LIMIT) == 0),
        "calls_median": bool(np.median(ours_calls) <= np.median(ase_calls)),
        "energy": bool(at_or_below.mean() >= E_FRACTION),
        "speed": bool(speed_cold >= SPEEDUP_COLD and speed_warm >= SPEEDUP_WARM),
    }
    conv = np.asarray(res.converged)
    statuses = {}
    for s in res.status_names:
        statuses[s] = statuses.get(s, 0) + 1

    compare(
        "relax",
        f"{name}: {n} x {case['comp']} frechet, cold",
        Timing((cold,), cold, compile_s),
        Timing((ase_scaled,), ase_scaled, 0.0),
        peer_name=f"ASE BFGSLineSearch + {calc_name} x{procs} proc (scaled from {len(images)})",
        units=n,
        extra=dict(
            potential=case["pot"],
            volume_factors=list(case["vf"]),
            v_eq=case["v_eq"],
            fmax=fmax,
            ours_cold_s=cold,
            ours_warm_s=warm,
            ours_compiles=n_compiles,
            ours_warm_compile_s=compile_w,
            ours_warm_compiles=n_compiles_w,
            warm_same_calls=same_rerun,
            ase_s=ase_wall,
            ase_n=len(images),
            ase_scaled_s=ase_scaled,
            ase_pool_wall_s=wall_pool,
            ase_procs=procs,
            speedup_cold=speed_cold,
            speedup_warm=speed_warm,
            calls_ours_median=float(np.median(ours_calls)),
            calls_ours_p90=float(np.percentile(ours_calls, 90)),
            calls_ours_max=int(ours_calls.max()),
            calls_ours_all_max=int(calls_all.max()),
            calls_ase_median=float(np.median(ase_calls)),
            calls_ase_p90=float(np.percentile(ase_calls, 90)),
            calls_ase_max=int(ase_calls.max()),
            ratio_median=float(np.median(ratio)),
            ratio_max=float(ratio.max()),
            ratio_above_limit=int(np.sum(ratio > CALLS_LIMIT)),
            calls_ase_distinct_median=float(np.median(ase_distinct)),
            calls_ase_repeats=int(np.sum(ase_calls - ase_distinct)),
            ratio_distinct_median=float(np.median(ratio_distinct)),
            ratio_distinct_max=float(ratio_distinct.max()),
            ratio_distinct_above_limit=int(np.sum(ratio_distinct > CALLS_LIMIT)),
            energy_at_or_below=float(at_or_below.mean()),
            energy_higher=higher,
            energy_lower=lower,
            converged=float(conv.mean()),
            ase_converged=float(ase_conv.mean()),
            statuses=statuses,
            start_v_per_atom=[float(v0.min()), float(v0.max())],
            final_v_per_atom=[float(v1.min()), float(v1.max())],
            criteria={k: "PASS" if v else "FAIL" for k, v in criteria.items()},
            noise_floor=None
            if floor is None
            else dict(
                shift_A=FLOOR_SHIFT,
                ratio_median=float(np.median(floor["ratio"])),
                ratio_max=float(floor["ratio"].max()),
                ratio_above_limit=int(np.sum(floor["ratio"] > CALLS_LIMIT)),
                energy_at_or_below=float(floor["at_or_below"].mean()),
                energy_higher=floor["higher"],
                energy_lower=floor["lower"],
            ),
            per_structure=dict(
                index=idx.tolist(),
                ours_calls=ours_calls.tolist(),
                ase_calls=ase_calls.astype(int).tolist(),
                ase_distinct_calls=ase_distinct.astype(int).tolist(),
                ours_e_per_atom=ours_e.round(8).tolist(),
                ase_e_per_atom=ase_e.round(8).tolist(),
            ),
        ),
    )
    pf = {k: "PASS" if v else "FAIL" for k, v in criteria.items()}
    print(
        f"    ours: cold {cold:.1f} s (compiling {compile_s:.1f} s, {n_compiles} programs), "
        f"warm {warm:.1f} s ({n_compiles_w} programs compiled again, {compile_w:.1f} s; same "
        f"force calls as cold: {same_rerun}); "
        f"converged {conv.mean():.1%} {statuses}\n"
        f"    ASE ({calc_name}, {procs} single-threaded process): {ase_wall:.1f} s for "
        f"{len(images)} -> {ase_scaled:.1f} s for {n}; converged {ase_conv.mean():.1%}\n"
        f"    per structure: ours {cold / n * 1e3:.1f} ms cold, {warm / n * 1e3:.1f} ms warm, "
        f"ASE {ase_wall / len(images) * 1e3:.1f} ms: speed-up x{speed_cold:.1f} cold, "
        f"x{speed_warm:.1f} warm\n"
        f"    force calls ours {_dist(ours_calls)} | ASE {_dist(ase_calls)}\n"
        f"    ratio ours/ASE per structure: median {np.median(ratio):.2f}, max {ratio.max():.2f}, "
        f"{int(np.sum(ratio > CALLS_LIMIT))} above {CALLS_LIMIT}\n"
        f"    (information: {int(np.sum(ase_calls - ase_distinct))} of ASE's "
        f"{int(ase_calls.sum())} calls repeat the previous point up to round-off; against "
        f"ASE's calls at new points, median {np.median(ase_distinct):.0f}: ratio median "
        f"{np.median(ratio_distinct):.2f}, max {ratio_distinct.max():.2f}, "
        f"{int(np.sum(ratio_distinct > CALLS_LIMIT))} above {CALLS_LIMIT})\n"
        f"    energy: {at_or_below.sum()}/{len(images)} ({at_or_below.mean():.1%}) at or below "
        f"ASE's (within {E_TOL} eV/atom), {lower} lower, {higher} higher\n"
        + (
            ""
            if floor is None
            else f"    noise floor, ASE against ASE with every start moved by {FLOOR_SHIFT:g} A: "
            f"calls ratio median {np.median(floor['ratio']):.2f}, max {floor['ratio'].max():.2f}, "
            f"{int(np.sum(floor['ratio'] > CALLS_LIMIT))} above {CALLS_LIMIT}; energy "
            f"{floor['at_or_below'].sum()}/{len(images)} ({floor['at_or_below'].mean():.1%}) at "
            f"or below, {floor['lower']} lower, {floor['higher']} higher\n"
        )
        + f"    criteria: worst calls <= {CALLS_LIMIT}x {pf['calls_worst']} | median calls <= ASE "
        f"{pf['calls_median']} | >= {E_FRACTION:.0%} at or below ASE energy {pf['energy']} | "
        f">= {SPEEDUP_COLD:.0f}x cold and {SPEEDUP_WARM:.0f}x warm {pf['speed']}",
        flush=True,
    )
    return dict(
        name=name,
        comp=case["comp"],
        ours=ours_calls,
        ase=ase_calls,
        ratio=ratio,
        floor_ratio=None if floor is None else floor["ratio"],
    )


def plot(results: list[dict], path) -> None:
    """Per case: histogram of the force-call ratio ours / ASE (and of the noise floor, ASE
    from starts moved by :data:`FLOOR_SHIFT` / ASE), and ours vs ASE calls."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4.2 * len(results), 7), squeeze=False)
    for j, r in enumerate(results):
        ax = axes[0, j]
        floor = r["floor_ratio"]
        worst = max(float(r["ratio"].max()), 0.0 if floor is None else float(floor.max()))
        top = max(2.0, worst * 1.05)
        bins = np.linspace(0, top, 41)
        ax.hist(r["ratio"], bins=bins, color="C0", label="ours / ASE")
        if floor is not None:
            ax.hist(
                floor,
                bins=bins,
                histtype="step",
                color="C1",
                lw=1.5,
                label=f"ASE moved {FLOOR_SHIFT:g} A / ASE (noise floor)",
            )
        ax.axvline(1.0, color="k", lw=1, label="1 (as many as ASE)")
        ax.axvline(CALLS_LIMIT, color="C3", ls="--", lw=1, label=f"{CALLS_LIMIT} (limit)")
        ax.axvline(np.median(r["ratio"]), color="C2", lw=1.5, label="median")
        ax.set_xlabel("force calls, ours / ASE (per structure)")
        ax.set_ylabel("structures")
        ax.set_title(f"{r['name']}: {len(r['ratio'])} x {r['comp']}")
        ax.legend(fontsize=7)
        ax = axes[1, j]
        ax.scatter(r["ase"], r["ours"], s=8)
        hi = float(max(r["ase"].max(), r["ours"].max())) * 1.2
        ax.plot([1, hi], [1, hi], "k", lw=1)
        ax.plot([1, hi], [CALLS_LIMIT, CALLS_LIMIT * hi], "C3--", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ASE BFGSLineSearch force calls")
        ax.set_ylabel("jaxcsp relax force calls")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=128, help="starts per case (half compressed)")
    p.add_argument("--ase-n", type=int, default=0, help="starts ASE relaxes (default: all)")
    p.add_argument("--procs", type=int, default=1, help="ASE worker processes")
    p.add_argument("--fmax", type=float, default=0.01)
    p.add_argument("--max-steps", type=int, default=1000)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument(
        "--peer-calc",
        choices=("fastest", "jaxcsp"),
        default="fastest",
        help="ASE's own calculator where it is the same potential (LJ), else the adapter",
    )
    p.add_argument("--progress", action="store_true", help="progress bars of ours")
    p.add_argument(
        "--no-floor", action="store_true", help="skip the noise floor (ASE against itself)"
    )
    p.add_argument("--plot", default=None, help="figure path (default results/relax-<cases>.png)")
    p.add_argument("--quick", action="store_true", help="n 8 per case (smoke run)")
    p.add_argument("--gpu", action="store_true", help="n 1024 per case, ASE on 128 (scaled)")
    args = p.parse_args(argv)
    if args.quick:
        args.n = 8
    if args.gpu:
        args.n, args.ase_n = max(args.n, 1024), args.ase_n or 128
    names = args.cases.split(",")
    for name in names:
        if name not in CASES:
            p.error(f"unknown case {name!r}; choose from {', '.join(CASES)}")
    print(f"[relax] device {jax.devices()[0].device_kind}, {os.cpu_count()} cores", flush=True)
    results = [run_case(name, args) for name in names]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(results, args.plot or RESULTS_DIR / f"relax-{'-'.join(names)}.png")


if __name__ == "__main__":
    main()
