"""Basin hopping (FUSE2): moves keep stoichiometry and valid cells, say when they cannot apply,
the Metropolis rule accepts at the rate it should, and a search runs, stores and resumes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ase.build import bulk

import jaxcsp as jc
from jaxcsp.search import basin_hopping
from jaxcsp.search._base import STATUS_CODES, Evaluation
from jaxcsp.search._moves import (
    MOVES,
    MoveContext,
    MoveNotApplicable,
    NewRandom,
    apply_move,
    check_structure,
    min_distance_ratio,
)


def _structure(atoms):
    return (atoms.cell.array.copy(), atoms.get_scaled_positions(), atoms.numbers.copy())


SI8 = _structure(bulk("Si", "diamond", a=5.43, cubic=True))
SI16 = _structure(bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 1, 1)))
NACL16 = _structure(bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((2, 1, 1)))
CASES = {
    "Si16": (SI16, MoveContext({14: 1}, max_units=16, min_units=4)),
    "Na8Cl8": (NACL16, MoveContext({11: 1, 17: 1}, max_units=8, min_units=2)),
    "Si8-24": (SI8, MoveContext({14: 1}, max_units=24, min_units=8)),  # triples and thirds
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_thousands_of_random_moves_keep_stoichiometry_and_valid_cells(case):
    """A random walk of 3,000 moves (every move, in turn): each result has whole formula units
    within the size limits, no pair closer than the distance rule, a non-degenerate cell; a
    move that cannot apply says why instead of failing."""
    start, ctx = CASES[case]
    rng = np.random.default_rng(7)
    s = start
    applied = dict.fromkeys(MOVES, 0)
    reasons = set()
    for k in range(3000):
        name = list(MOVES)[k % len(MOVES)]
        if k % 40 == 0:
            s = start  # restart the walk now and then, so every size is met often
        try:
            out = apply_move(name, rng, s, ctx)
        except MoveNotApplicable as e:
            assert e.move == name and e.reason
            reasons.add(e.reason)
            continue
        if isinstance(out, NewRandom):
            assert ctx.min_units <= out.units <= ctx.max_units
            applied[name] += 1
            continue
        lat, frac, z = out
        assert check_structure(lat, frac, z, ctx) is None
        # independent checks: stoichiometry by counting, distances by ASE's all-pairs MIC
        units = ctx.units(z)
        assert ctx.min_units <= units <= ctx.max_units
        for el, c in ctx.formula.items():
            assert int(np.sum(z == el)) == c * units
        from ase import Atoms
        from ase.data import covalent_radii

        a = Atoms(numbers=z, cell=lat, scaled_positions=frac, pbc=True)
        d = a.get_all_distances(mic=True)
        np.fill_diagonal(d, np.inf)
        r = covalent_radii[z]
        if len(z) > 1 and min(a.cell.lengths()) > 2 * 2 * r.max():  # MIC exact here
            assert (d >= ctx.distance_factor * (r[:, None] + r[None, :]) - 1e-9).all()
        assert abs(np.linalg.det(lat)) > 0.3**3 * len(z) * 1.0
        applied[name] += 1
        if k % 5 == 0:
            s = out  # walk on, so moves meet doubled, halved, strained, shuffled cells
    # every move applied many times, except the ones the composition/size rules exclude
    excluded = {"swap_two", "swap_some", "swap_all"} if case.startswith("Si") else set()
    if case != "Si8-24":
        excluded |= {"triple", "third"}  # the size limits rarely allow them on this walk
    for name, n in applied.items():
        if name not in excluded:
            assert n >= 10, (name, applied)
    assert ("the composition is elemental" in reasons) == case.startswith("Si")


def test_moves_that_cannot_apply_name_the_reason():
    ctx = CASES["Si16"][1]
    rng = np.random.default_rng(0)
    with pytest.raises(MoveNotApplicable, match="elemental"):
        apply_move("swap_two", rng, SI16, ctx)
    with pytest.raises(MoveNotApplicable, match="cannot double"):
        apply_move("double", rng, SI16, ctx)  # 16 units at max_units 16
    with pytest.raises(MoveNotApplicable, match="1/3"):
        apply_move("third", rng, SI16, ctx)
    with pytest.raises(KeyError, match="unknown move"):
        apply_move("teleport", rng, SI16, ctx)


def test_halve_undoes_double():
    """``halve`` is ``double``'s reverse: of the doubled diamonds that are still diamond (the
    "repeat" copies), halving gives diamond back whenever it cuts along the doubled axis, so
    some of them do; every halved cell is a valid stoichiometric half."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    def pm(s):
        return Structure(Lattice(s[0]), s[2].tolist(), s[1])

    ctx = MoveContext({14: 1}, max_units=16, min_units=8)
    rng = np.random.default_rng(3)
    sm = StructureMatcher()
    restored = tried = 0
    for _ in range(40):
        doubled = apply_move("double", rng, SI8, ctx)
        assert len(doubled[2]) == 16
        back = apply_move("halve", rng, doubled, ctx)
        assert len(back[2]) == 8 and check_structure(*back, ctx) is None
        if sm.fit(pm(doubled), pm(SI8)):
            tried += 1
            restored += bool(sm.fit(pm(back), pm(SI8)))
    assert tried >= 5 and restored >= 2, (tried, restored)


def test_distance_ratio_matches_ase_on_a_dense_cell():
    atoms = bulk("Si", "diamond", a=5.43)
    d = atoms.get_all_distances(mic=True)
    np.fill_diagonal(d, np.inf)
    lat, frac, z = _structure(atoms)
    from jaxcsp.elements import COVALENT_RADII

    expect = min(d.min(), min(atoms.cell.lengths())) / (0.5 * 2 * COVALENT_RADII[14])
    assert min_distance_ratio(lat, frac, z, 0.5) == pytest.approx(expect, rel=1e-12)


def _fake_evaluation(proposal, enthalpy, ids0=0):
    """An evaluation of a proposal with chosen enthalpies (as if relaxed in place)."""
    import jax.numpy as jnp

    p = proposal.size
    h = np.asarray(enthalpy, np.float64)
    n = np.asarray(proposal.crystals.mask).sum(axis=1)
    return Evaluation(
        ids=jnp.arange(ids0, ids0 + p),
        iteration=jnp.zeros(p, jnp.int32),
        crystals=proposal.crystals,
        energy=jnp.asarray(h * n),
        enthalpy_per_atom=jnp.asarray(h),
        status=jnp.full(p, STATUS_CODES["converged"], jnp.int32),
        oracle_calls=jnp.ones(p, jnp.int32),
        tier_calls=jnp.zeros((p, 0), jnp.int32),
    )


def test_metropolis_accepts_uphill_moves_at_exp_minus_dh_over_kt():
    """A population of 400 with every candidate kT ln 2 uphill accepts about half; downhill
    candidates are always accepted; invalid ones never."""
    import jax

    kt = 0.02
    m = basin_hopping(400, temperature=kt, moves={"rattle": 1.0})
    state, prop = m.init(jax.random.key(0), (("Si", 8),))
    state, prop = m.step(state, _fake_evaluation(prop, np.full(400, -4.0)))
    assert np.all(state.population["enthalpy"] == -4.0)  # the initial population is taken
    up = -4.0 + kt * math.log(2.0)
    h = np.where(np.arange(400) < 300, up, -4.1)
    state2, _ = m.step(state, _fake_evaluation(prop, h, 400))
    pop = state2.population
    took_up = pop["enthalpy"][:300] == up
    assert 0.4 < took_up.mean() < 0.6, took_up.mean()  # binomial(300, 1/2): sd 0.03
    assert np.all(pop["enthalpy"][300:] == -4.1)
    took = np.concatenate([took_up, np.ones(100, bool)])
    moved = state.population["pending"] >= 0  # the rest got fresh structures (rattle skipped)
    assert moved.mean() > 0.9
    assert pop["accepted"][pop["moves"].index("rattle")] == took[moved].sum()
    bad = _fake_evaluation(prop, np.full(400, np.nan), 800)
    state3, _ = m.step(state2, bad)
    np.testing.assert_array_equal(state3.population["enthalpy"], pop["enthalpy"])


def test_stuck_members_reset_and_inapplicable_moves_fall_back():
    """Only ``swap_two`` on an elemental composition: every draw is skipped with its reason and
    the member gets a fresh structure instead; a member that never improves resets."""
    import jax

    m = basin_hopping(6, moves={"swap_two": 1.0}, reset_after=2)
    state, prop = m.init(jax.random.key(1), (("Si", 8),))
    for it in range(4):
        state, prop = m.step(state, _fake_evaluation(prop, np.full(6, -4.0), 6 * it))
        assert prop.size == 6 and int(np.asarray(prop.crystals.mask).sum()) == 48
    pop = state.population
    assert pop["skipped"][0] > 0 and pop["proposed"][0] == 0
    assert pop["skip_reasons"]["the composition is elemental"] > 0
    assert int(pop["resets"]) > 0


def test_symmetrize_restores_a_rattled_diamond():
    from jaxcsp.search._basin import _symmetrize

    ctx = MoveContext({14: 1}, max_units=8, min_units=8, rattle=0.02)
    si8 = _structure(bulk("Si", "diamond", a=5.43, cubic=True))
    moved = apply_move("rattle", np.random.default_rng(0), si8, ctx)
    import spglib

    assert spglib.get_symmetry_dataset(moved, symprec=1e-3).number != 227
    sym = _symmetrize(moved, ctx, 0.1)
    assert sym is not None and len(sym[2]) == 8
    assert spglib.get_symmetry_dataset(sym, symprec=1e-5).number == 227


def test_bad_settings_are_named():
    from jaxcsp.search import InvalidSearchError

    with pytest.raises(InvalidSearchError, match="moves"):
        basin_hopping(4, moves={"teleport": 1.0})
    with pytest.raises(InvalidSearchError, match="temperature"):
        basin_hopping(4, temperature=0.0)
    with pytest.raises(InvalidSearchError, match="population"):
        basin_hopping(0)


@pytest.mark.slow  # the driver's storage and resume run on the random search by default
def test_a_basin_search_stores_every_member_and_resumes(tmp_path):
    """Two iterations of four members on Si8 (Stillinger-Weber) through the one driver: eight
    rows, each member's current structure is a relaxed candidate, and a rerun reads the
    database back to the same result."""
    pot = jc.potentials.stillinger_weber()
    db = tmp_path / "b.db"
    m = basin_hopping(4)
    kw = dict(db=db, max_iterations=2, progress=False)
    res = jc.search.run(m, "Si8", pot, **kw)
    rows = list(jc.io.connect_db(db).select())
    assert len(rows) == 8 and {r.method for r in rows} == {"basin"}
    pop = res.state.population
    h = np.asarray(res.state.archive.enthalpy_per_atom)
    assert np.all(np.isin(pop["enthalpy"][np.isfinite(pop["enthalpy"])], h))
    assert pop["proposed"].sum() + pop["skipped"].sum() >= 4
    again = jc.search.run(basin_hopping(4), "Si8", pot, **kw)
    assert again.metrics["oracle_calls"] == res.metrics["oracle_calls"]
    np.testing.assert_array_equal(again.state.population["enthalpy"], pop["enthalpy"])
