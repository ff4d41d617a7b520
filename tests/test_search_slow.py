"""Acceptance runs of the search layer (``pytest -m slow tests/test_search_slow.py``; minutes each).

* Si8 under Stillinger-Weber: ``jaxcsp search`` on its defaults finds diamond (pymatgen
  StructureMatcher against the shipped diamond CIF, -4.3366 eV/atom) in three of three seeds.
* Ar8 under Lennard-Jones (σ = 3.4 Å, ε = 0.0104 eV, truncated at 6σ with the mean-field tail):
  random search finds fcc or hcp, within 1e-3 ε per atom of the infinite-cutoff -8.610 ε.
* ``kill -9`` in the middle of a search, then a rerun: every candidate is in the database once
  and the final ranking equals that of an uninterrupted run with the same seed.
* CRYSIM on Si8 finds diamond in at least two of three seeds.
* Basin hopping from the CLI with a cheap tier, random and pool initial populations and the
  random baseline side by side, resumed to the same numbers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import jaxcsp as jc

pytestmark = [
    pytest.mark.slow,
    # hours of searches in one worker: the map-count guard releasing compiled programs is the
    # designed behaviour of a long process here, not a failure
    pytest.mark.filterwarnings("ignore::jaxcsp.runtime.CompiledProgramsReleased"),
]

DIAMOND = "jaxcsp/data/structures/si_diamond.cif"
LONSDALEITE = "jaxcsp/data/structures/si_lonsdaleite.cif"


def _metrics(out: str) -> dict:
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.xdist_group("diamond")
def test_default_search_finds_diamond(seed, tmp_path, capsys):
    from jaxcsp.cli import main

    db = tmp_path / "si8.db"
    argv = ["search", "--seed", str(seed), "--db", str(db), "--reference", DIAMOND]
    assert main([*argv, "--json", "--quiet"]) == 0
    m = _metrics(capsys.readouterr().out)
    assert m["i_m0"] is not None, m  # found within the default budget
    assert m["n_m"] >= 1
    assert m["reference_energy_per_atom"] == pytest.approx(-4.3366, abs=1e-4)
    assert m["best_enthalpy_per_atom"] == pytest.approx(-4.3366, abs=1e-4)
    assert m["oracle_calls"] >= 2000 and m["wall_s"] > 0
    rows = list(jc.io.connect_db(db).select(matches_reference=True))
    assert len(rows) == m["n_m"]
    for r in rows:
        assert r.energy_per_atom == pytest.approx(-4.3366, abs=1e-4)


def test_lennard_jones_ar8_finds_close_packing(tmp_path):
    from ase.build import bulk
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    sigma, epsilon = 3.4, 0.0104
    pot = jc.potentials.lennard_jones(
        sigma=sigma,
        epsilon=epsilon,
        cutoff=6 * sigma,
        cutoff_mode="truncate",
        tail_correction=True,
    )
    # LJ's equilibrium volume is ~36 Å^3/atom, 7x the covalent spheres of Ar
    method = jc.search.random_search(16, volume_factor=7.0, distance_factor=1.2)
    result = jc.search.run(
        method, "Ar8", pot, db=tmp_path / "ar8.db", seed=0, max_iterations=2, fmax=1e-4,
        progress=False,
    )  # fmt: skip
    best = result.ranking[0]
    assert best["enthalpy_per_atom"] / epsilon == pytest.approx(-8.610, abs=1e-3)
    archive = result.state.archive
    k = int(np.flatnonzero(np.asarray(archive.ids) == best["id"])[0])
    found = jc.io.to_pymatgen(archive.crystals.take(np.asarray([k])))[0]
    d = 1.0906 * sigma  # nearest-neighbour distance of the LJ close packings
    fcc = bulk("Ar", "fcc", a=d * np.sqrt(2))
    hcp = bulk("Ar", "hcp", a=d, c=d * np.sqrt(8 / 3))
    sm = StructureMatcher()
    assert any(sm.fit(found, AseAtomsAdaptor.get_structure(x)) for x in (fcc, hcp))


_SCRIPT = """
import sys, jax
jax.config.update("jax_enable_x64", True)
import jaxcsp as jc
m = jc.search.random_search(16)
r = jc.search.run(m, "Si8", jc.potentials.stillinger_weber(), db=sys.argv[1], seed=7,
                  max_iterations=3, max_atoms=64, progress=False)
print("DONE", len(r.ranking))
"""


def _search(db, env, **kw):
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(db)], env=env, **kw)


def _rows(db) -> dict[int, dict]:
    return {r.input_id: r for r in jc.io.connect_db(db).select()}


def test_kill_minus_nine_and_resume_equals_uninterrupted(tmp_path):
    env = dict(os.environ, JAXCSP_JAX_CACHE=str(tmp_path / "jax_cache"))
    full = tmp_path / "full.db"
    assert _search(full, env).wait(timeout=1800) == 0
    killed = tmp_path / "killed.db"
    proc = _search(killed, env)
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:  # kill in the middle of iteration 1 (rows 16..31)
        if killed.exists():
            try:
                n = len(jc.io.connect_db(killed))
            except Exception:  # the database is being written
                n = 0
            if n >= 20:
                break
        assert proc.poll() is None, "the search finished before it could be killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _rows(killed)
    assert 20 <= len(before) < 48
    out = _search(killed, env, stdout=subprocess.PIPE, text=True).communicate(timeout=1800)[0]
    assert "DONE" in out
    ids = [r.input_id for r in jc.io.connect_db(killed).select()]
    assert sorted(ids) == list(range(48))  # every candidate exactly once
    got, want = _rows(killed), _rows(full)
    for i in range(48):
        assert (got[i].get("unique"), got[i].get("duplicate_of")) == (
            want[i].get("unique"), want[i].get("duplicate_of")
        ), i  # fmt: skip
        if i in before:  # written before the kill: the same batches, bit for bit
            assert got[i].enthalpy_per_atom == want[i].enthalpy_per_atom, i
        else:  # in flight or queued: relaxed again in other batches, equal up to rounding
            assert got[i].enthalpy_per_atom == pytest.approx(want[i].enthalpy_per_atom, abs=1e-5)


def test_crysim_finds_diamond_in_two_of_three_seeds(tmp_path, capsys):
    """CRYSIM on its CLI defaults (1000 random single points, then 8 annealed and decoded
    candidates per iteration) finds SW's ground state (diamond, or lonsdaleite, degenerate with
    it) within 12 iterations in at least 2 of 3 seeds (on this machine: seed 1 diamond at
    iteration 4, seed 2 lonsdaleite at 1, seed 0 lonsdaleite only at 18)."""
    from jaxcsp.cli import main

    found = []
    for seed in (0, 1, 2):
        argv = ["search", "--method", "crysim", "--iterations", "12", "--seed", str(seed)]
        argv += ["--db", str(tmp_path / f"crysim{seed}.db"), "--reference", DIAMOND, LONSDALEITE]
        assert main([*argv, "--until-found", "--json", "--quiet"]) == 0
        m = _metrics(capsys.readouterr().out)
        found.append(m["i_m0"] is not None)
        if sum(found) >= 2:
            break
    assert sum(found) >= 2, found


STRUCTURES = "jaxcsp/data/structures"
LJ_AR = "lj:sigma=3.4,epsilon=0.0104,cutoff=20.4,cutoff_mode=truncate,tail_correction=1"
CRYSIM_SYSTEMS = {
    # composition, potential, references, extra options, energy tolerance (eV/atom)
    "NaCl": ("Na4Cl4", "nacl", [f"{STRUCTURES}/rocksalt_NaCl.cif"], [], 1e-4),
    "Ar8": (
        "Ar8",
        LJ_AR,
        [f"{STRUCTURES}/ar_fcc.cif", f"{STRUCTURES}/ar_hcp.cif"],
        ["--volume-factor", "7", "--distance-factor", "1.2", "--fmax", "1e-4"],
        1e-3 * 0.0104,  # 1e-3 ε
    ),
}


@pytest.mark.parametrize("system", sorted(CRYSIM_SYSTEMS))
def test_crysim_finds_the_ground_state_with_random_beside_it(system, tmp_path, capsys):
    """CRYSIM finds rock salt (Tosi-Fumi Buckingham + Coulomb Na4Cl4, within 0.1 meV/atom of
    the reference at fmax 0.01 eV/Å) and close packing (LJ Ar8: fcc or hcp, within 1e-3 ε per
    atom) within 300 iterations in at least
    2 of 3 seeds, and ``--compare random`` reports the random baseline on the same budget from
    the same command (on this machine CRYSIM needs 1,400-3,300 oracle calls to the reference,
    1,000 of them its initial single points; random search finds both in its first batch)."""
    from jaxcsp.cli import main

    comp, pot, refs, extra, tol = CRYSIM_SYSTEMS[system]
    found = []
    for seed in (0, 1, 2):
        argv = ["search", "--method", "crysim", "--composition", comp, "--potential", pot]
        argv += ["--iterations", "300", "--seed", str(seed), *extra, "--compare", "random"]
        argv += ["--db", str(tmp_path / f"{system}{seed}.db"), "--reference", *refs]
        assert main([*argv, "--until-found", "--json", "--quiet"]) == 0
        both = _metrics(capsys.readouterr().out)
        assert set(both) == {"crysim", "random"}
        m = both["crysim"]
        assert both["random"]["oracle_calls"] >= 1
        ok = m["i_m0"] is not None
        if ok:
            assert m["best_enthalpy_per_atom"] <= m["reference_energy_per_atom"] + tol
        found.append(ok)
        if sum(found) >= 2:
            break
    assert sum(found) >= 2, found


BASIN_SYSTEMS = {
    # Stillinger-Weber's ground state is degenerate: every perfectly tetrahedral stacking has
    # the same energy (diamond and lonsdaleite to 1e-11 eV/atom), so both are the ground truth
    "Si16": (
        "Si16",
        "sw",
        [f"{STRUCTURES}/si_diamond.cif", f"{STRUCTURES}/si_lonsdaleite.cif"],
    ),
    "Na8Cl8": ("Na8Cl8", "nacl", [f"{STRUCTURES}/rocksalt_NaCl.cif"]),
}


@pytest.mark.parametrize("system", sorted(BASIN_SYSTEMS))
def test_basin_hopping_finds_the_ground_state_with_random_beside_it(system, tmp_path, capsys):
    """Basin hopping on its CLI defaults (population 25, every FUSE2 move at the same rate)
    finds diamond or lonsdaleite (Stillinger-Weber Si16) and rock salt (Tosi-Fumi Na8Cl8)
    within its default budget in at least 2 of 3 seeds; the random baseline on the same budget
    is reported by the same command."""
    from jaxcsp.cli import main

    comp, pot, refs = BASIN_SYSTEMS[system]
    found = []
    for seed in (0, 1, 2):
        argv = ["search", "--method", "basin", "--composition", comp, "--potential", pot]
        argv += ["--seed", str(seed), "--compare", "random", "--until-found"]
        argv += ["--db", str(tmp_path / f"{system}{seed}.db"), "--reference", *refs]
        assert main([*argv, "--json", "--quiet"]) == 0
        both = _metrics(capsys.readouterr().out)
        assert set(both) == {"basin", "random"}
        found.append(both["basin"]["i_m0"] is not None)
        if sum(found) >= 2:
            break
    assert sum(found) >= 2, found


def test_basin_hopping_from_unsymmetric_starts_beats_random_search(tmp_path, capsys):
    """The hard regime: Si16 from P1 starts (``--spg 1``) on 30,000 oracle calls. Basin hopping
    reaches diamond/lonsdaleite through its moves (iterations 7-11 in three seeds on this
    machine) where P1 random search on the same budget does not (best -4.13 to -4.16 eV/atom
    against -4.3366): at least 2 of 3 seeds, each found by moves after the first iteration."""
    from jaxcsp.cli import main

    comp, pot, refs = BASIN_SYSTEMS["Si16"]
    found = []
    for seed in (0, 1, 2):
        argv = ["search", "--method", "basin", "--composition", comp, "--potential", pot]
        argv += ["--seed", str(seed), "--spg", "1", "--budget", "30000", "--until-found"]
        argv += ["--compare", "random", "--db", str(tmp_path / f"p1{seed}.db")]
        assert main([*argv, "--reference", *refs, "--json", "--quiet"]) == 0
        both = _metrics(capsys.readouterr().out)
        ok = both["basin"]["i_m0"] is not None
        if ok:
            assert both["basin"]["i_m0"] > 0  # found by moves, not in the P1 starts
        found.append(ok)
        if sum(found) >= 2:
            break
    assert sum(found) >= 2, found


def test_cli_basin_with_a_cheap_tier_and_two_initial_populations(tmp_path, capsys):
    """Si8 on Stillinger-Weber with a Tersoff pre-relaxation: random and pool initial
    populations on the same budget, side by side with random search; every candidate a row
    with its tier calls; rerunning resumes to the same metrics."""
    import json

    from ase.build import bulk
    from ase.io import write

    from jaxcsp.cli import main

    pool = tmp_path / "pool.extxyz"
    write(pool, [bulk("Si", "diamond", a=5.5, cubic=True)] * 2)
    db = tmp_path / "b.db"
    argv = ["search", "--method", "basin", "--composition", "Si8", "--population", "3"]
    argv += ["--iterations", "2", "--tier", "tersoff", "--db", str(db), "--quiet"]
    argv += ["--init", "random", f"pool:{pool}", "--compare", "random", "--json"]
    argv += ["--reference", DIAMOND]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[0])
    assert set(out) == {"basin (random)", f"basin (pool:{pool})", "random"}
    pooled = out[f"basin (pool:{pool})"]
    assert pooled["i_m0"] == 0  # the pool's diamonds are in the initial population
    assert pooled["n_evaluated"] == 6 and out["basin (random)"]["n_evaluated"] == 6
    assert all(v["tier_calls"][0] > 0 for v in out.values())
    rows = list(jc.io.connect_db(db).select())
    assert len(rows) == 6 and all(r.tier_calls > 0 for r in rows)
    assert main(argv) == 0  # resumed from the three databases: same numbers
    again = json.loads(capsys.readouterr().out.splitlines()[0])
    for k in out:
        for f in ("oracle_calls", "best_enthalpy_per_atom", "i_m0", "n_unique"):
            assert again[k][f] == out[k][f], (k, f)
