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
