"""Search layer: set-up errors come before any compute, and name the field."""

import pytest

import jaxcsp as jc
from jaxcsp.search import InvalidSearchError, Oracle, check_setup


@pytest.mark.parametrize(
    ("composition", "field", "text"),
    [
        ("Xx8", "composition", "unknown element"),
        ({"Si": 0}, "composition", "positive integer"),
        ("Na4Cl4", "potential", "does not cover Na, Cl"),
    ],
)
def test_bad_setup_is_one_clear_error(composition, field, text):
    with pytest.raises(InvalidSearchError) as e:
        check_setup(composition, jc.potentials.stillinger_weber())
    assert e.value.field == field
    assert text in str(e.value)


@pytest.mark.parametrize("budget", [0, -5, 1.5, True])
def test_budget_below_one_is_refused(budget):
    with pytest.raises(InvalidSearchError, match="budget"):
        Oracle(jc.potentials.stillinger_weber(), budget=budget)


def test_run_refuses_before_compute(tmp_path):
    db = tmp_path / "s.db"
    with pytest.raises(InvalidSearchError, match="never stop"):
        jc.search.run(jc.search.random_search(4), "Si8", jc.potentials.stillinger_weber(), db=db)
    assert not db.exists()


@pytest.mark.parametrize(
    ("option", "match"),
    [
        (["--budget", "0"], "budget"),
        (["--budget", "-3"], "budget"),
        (["--composition", "Xx8"], "unknown element"),
        (["--composition", "Si0"], "positive integer"),
        (["--composition", "Na4Cl4"], "does not cover Na, Cl"),
        (["--fmax", "-1"], "fmax must be a positive finite number"),
        (["--batch-size", "0"], "batch_size"),
        (["--method", "basin", "--init", "cvae"], "pool:FILE"),
        (["--method", "basin", "--init", "pool:/no/such.extxyz"], "no such file"),
        (["--method", "crysim", "--spg", "1"], "spg"),
        (["--method", "active", "--spg", "1"], "spg"),
        (["--method", "active", "--n-search", "0"], "n_search"),
        (["--method", "active", "--batch-size", "200"], "batch_size"),
        (["--method", "active", "--baseline-budget", "0"], "baseline_budget"),
    ],
)
def test_cli_search_bad_input_is_one_line_before_compute(tmp_path, capsys, option, match):
    from jaxcsp.cli import main

    db = tmp_path / "s.db"
    assert main(["search", "--db", str(db), "--quiet", *option]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jaxcsp search: error: ") and err.count("\n") == 1
    assert match in err
    assert not db.exists()


def test_cli_search_unwritable_db_is_one_line(tmp_path, capsys):
    from jaxcsp.cli import main

    db = tmp_path / "no" / "such" / "dir" / "s.db"
    assert main(["search", "--db", str(db), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("jaxcsp search: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


def test_a_collapsed_relaxed_cell_is_an_invalid_candidate(tmp_path):
    """A row whose relaxed cell is flat (0.05 Å between faces) is not deduplicated or ranked."""
    import numpy as np
    from ase import Atoms

    from jaxcsp.search import _driver

    good = Atoms(
        "Si2", scaled_positions=[[0, 0, 0], [0.25, 0.25, 0.25]], cell=np.eye(3) * 4.0, pbc=True
    )
    flat = Atoms(
        "Si2", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.diag([900, 4, 0.05]), pbc=True
    )
    from ase.calculators.singlepoint import SinglePointCalculator

    con = jc.io.connect_db(tmp_path / "rows.db")
    for k, a in enumerate([good, flat]):
        a.calc = SinglePointCalculator(a, energy=-1.0)
        con.write(a, input_id=k, status="converged", force_calls=3)
    rows = _driver._read_rows(con, np.arange(2))
    proposal = jc.search.Proposal(jc.io.from_ase([good, good]))
    ev = _driver._evaluation_from_rows(rows, np.arange(2), proposal, 0, 0.0, [])
    assert ev.ok.tolist() == [True, False]
    assert int(ev.status[1]) == jc.search._base.STATUS_CODES["invalid"]


def test_fused_atoms_make_a_relaxed_candidate_invalid(tmp_path):
    """A Buckingham catastrophe (Cl on top of Cl, 0.3 Å) is invalid, not the best structure."""
    import numpy as np
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    from jaxcsp.search import _driver

    good = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    fused = good.copy()
    fused.positions[7] = fused.positions[6] + [0.3, 0.0, 0.0]  # two Cl 0.3 Å apart
    assert not _driver._fused(good) and _driver._fused(fused)
    con = jc.io.connect_db(tmp_path / "rows.db")
    for k, (a, e) in enumerate([(good, -32.0), (fused, -1e6)]):
        a.calc = SinglePointCalculator(a, energy=e)
        con.write(a, input_id=k, status="converged", force_calls=3)
    rows = _driver._read_rows(con, np.arange(2))
    proposal = jc.search.Proposal(jc.io.from_ase([good, good]))
    ev = _driver._evaluation_from_rows(rows, np.arange(2), proposal, 0, 0.0, [])
    assert ev.ok.tolist() == [True, False]
    assert np.isnan(float(ev.enthalpy_per_atom[1]))


def test_several_references_are_one_degenerate_ground_truth():
    """hcp matches [fcc, hcp] but not [fcc] alone (the LJ close packings)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from jaxcsp.search._driver import _match

    base = jc.io.read("jaxcsp/data/structures/ar_hcp.cif")
    fcc, hcp = (
        AseAtomsAdaptor.get_structure(jc.io.to_ase(jc.io.read(f"jaxcsp/data/structures/{f}"))[0])
        for f in ("ar_fcc.cif", "ar_hcp.cif")
    )
    assert _match([fcc, hcp], base, 0.2, 0.3, 5.0)
    assert not _match([fcc], base, 0.2, 0.3, 5.0)


def test_stillinger_weber_diamond_and_lonsdaleite_are_degenerate():
    """The shipped diamond and lonsdaleite (same bond length) have the same SW energy per atom
    (to 1e-9 eV/atom, the reason both are Si16's ground truth), while StructureMatcher tells
    them apart."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from jaxcsp.calculator import calculate

    pot = jc.potentials.stillinger_weber()
    e = []
    structures = []
    for f in ("si_diamond.cif", "si_lonsdaleite.cif"):
        c = jc.io.read(f"jaxcsp/data/structures/{f}")
        e.append(float(calculate(pot, c).energy[0]) / int(c.mask.sum()))
        structures.append(jc.io.to_pymatgen(c)[0])
    assert e[0] == pytest.approx(e[1], abs=1e-9) and e[0] < -4.3
    assert not StructureMatcher().fit(*structures)


def test_compare_table_prints_both_methods():
    from jaxcsp.cli.search import _baseline_db, _comparison

    a = dict(oracle_calls=1200, best_enthalpy_per_atom=-4.3366, i_m0=3, calls_to_reference=900)
    b = dict(oracle_calls=1260, best_enthalpy_per_atom=-4.2, i_m0=None, calls_to_reference=None)
    text = _comparison([("crysim", a), ("random", b)])
    assert "crysim" in text and "random" in text and "not found" in text
    assert "-4.33660" in text and "1260" in text
    assert _baseline_db("runs/si16.db") == "runs/si16.random.db"
    assert _baseline_db("search") == "search.random.db"


def test_empty_proposals_and_clashing_info(tmp_path):
    """A method may propose nothing in an iteration (an empty evaluation, the database
    untouched, and archives of empty evaluations concatenate); a proposal's ``info`` that
    would overwrite a key the driver writes is refused before any relaxation."""
    import numpy as np

    from jaxcsp.io import read
    from jaxcsp.search import Evaluation, Proposal, evaluate

    c = read("jaxcsp/data/structures/si_diamond.cif")
    oracle = Oracle(jc.potentials.stillinger_weber())
    empty = evaluate(Proposal(c.take(np.zeros(0, int))), oracle, db=tmp_path / "e.db", first_id=0)
    assert empty.size == 0 and not (tmp_path / "e.db").exists()
    assert Evaluation.concatenate([empty, empty]).size == 0
    with pytest.raises(InvalidSearchError, match="status") as e:
        evaluate(
            Proposal(c, info={"status": np.zeros(1)}), oracle, db=tmp_path / "x.db", first_id=0
        )
    assert e.value.field == "info"
    with pytest.raises(InvalidSearchError, match=r"shape \(2,\)"):
        evaluate(Proposal(c, info={"tag": np.zeros(2)}), oracle, db=tmp_path / "x.db", first_id=0)
