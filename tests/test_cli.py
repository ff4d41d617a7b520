"""Tests for the ``jaxcsp`` command line (in-process and as the installed console script)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import jaxcsp as jc
from jaxcsp.cli import main

DATA = pathlib.Path(jc.__file__).parent / "data" / "structures"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "info" in out and "convert" in out and "examples:" in out


@pytest.mark.parametrize(
    "cmd",
    [["search"], ["relax", "in.cif", "-o", "o.db"], ["design"], ["dataset", "--out", "t.csv"],
     ["train", "--data", "x.csv", "--out", "m.msgpack"]],
)  # fmt: skip
def test_every_long_running_command_takes_quiet_and_no_progress(cmd):
    from jaxcsp.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(cmd).no_progress is False
    for flag in ("--quiet", "--no-progress"):
        assert parser.parse_args([*cmd, flag]).no_progress is True


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "usage: jaxcsp" in capsys.readouterr().out


def test_info_json_space_groups_match_spglib_reference(capsys):
    assert main(["info", "--json", str(DATA / "examples.extxyz")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["spacegroup"] for r in rows] == [
        "P6_3/mmc (194)",
        "Fd-3m (227)",
        "Fd-3m (227)",
        "Fm-3m (225)",
        "P4_2/mnm (136)",
        "P3_121 (152)",
    ]
    graphite = rows[0]
    assert graphite["natoms"] == 4
    # V = a^2 c sin(120°)
    np.testing.assert_allclose(graphite["volume"], 2.464**2 * 6.711 * np.sin(np.radians(120)))


def test_info_table(capsys):
    assert main(["info", str(DATA / "graphite.cif")]) == 0
    out = capsys.readouterr().out
    assert "P6_3/mmc (194)" in out and "C4" in out


def test_convert_to_db_and_back(tmp_path, capsys):
    db = tmp_path / "out.db"
    assert main(["convert", str(DATA / "examples.extxyz"), str(db)]) == 0
    c, rows = jc.io.read_db(db)
    assert c.batch_size == 6 and [r["source_index"] for r in rows] == list(range(6))
    ref = jc.io.read(DATA / "examples.extxyz")
    np.testing.assert_allclose(c.positions, ref.positions, atol=1e-12)
    assert main(["convert", str(db), str(tmp_path / "out.cif")]) == 0
    assert jc.io.read(tmp_path / "out.cif").batch_size == 6


def test_bad_input_exit_code_and_message(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.cif")]) == 1
    assert "nope.cif: no such file" in capsys.readouterr().err
    assert main(["convert", str(DATA / "examples.extxyz"), str(tmp_path / "POSCAR")]) == 1
    assert "one structure per file" in capsys.readouterr().err


def _silicon(tmp_path, *extra):
    """An extxyz file: diamond Si (input 0), then ``extra``."""
    import ase.io
    from ase.build import bulk

    path = tmp_path / "in.extxyz"
    ase.io.write(path, [bulk("Si", "diamond", a=5.43), *extra])
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    "option, match",
    [
        (["--fmax", "-1"], "fmax must be a positive finite number (eV/Å), got -1.0"),
        (["--fmax", "nan"], "fmax must be a positive finite number (eV/Å), got nan"),
        (["--max-steps", "0"], "max_steps must be an integer >= 1, got 0"),
        (["--max-atoms", "0"], "max_atoms must be an integer >= 1, got 0"),
        (["--refill-every", "0"], "refill_every must be an integer >= 1, got 0"),
        (["--pressure", "inf"], "pressure must be a finite number (GPa), got inf"),
    ],
)
def test_relax_bad_numbers_fail_on_one_line_before_compute(tmp_path, capsys, option, match):
    db = tmp_path / "out.db"
    assert main(["relax", str(_silicon(tmp_path)), "-o", str(db), "--quiet", *option]) == 1
    assert _one_line_error(capsys) == f"jaxcsp relax: error: {match}\n"
    assert not db.exists()


def test_relax_uncovered_element_fails_up_front(tmp_path, capsys):
    from ase.build import bulk

    src = _silicon(tmp_path, bulk("NaCl", "rocksalt", a=5.64))
    db = tmp_path / "out.db"
    assert main(["relax", str(src), "-o", str(db), "--potential", "sw", "--quiet"]) == 1
    err = _one_line_error(capsys)
    assert "structure 1, field 'species': element Na (Z=11) at atom 0" in err
    assert "not covered by potential 'stillinger_weber' (covers Si)" in err
    assert not db.exists() or len(jc.io.connect_db(db)) == 0  # Si (input 0) was not relaxed


def test_relax_overlapping_atoms_become_an_invalid_row(tmp_path, capsys):
    from ase.build import bulk

    si = bulk("Si", "diamond", a=5.43)
    si.positions[1] = si.positions[0]
    db = tmp_path / "out.db"
    src = tmp_path / "overlap.extxyz"
    si.write(src)
    assert main(["relax", str(src), "-o", str(db), "--quiet"]) == 0
    out = capsys.readouterr()
    assert out.err.count("\n") == 1 and "1 input(s) ended 'invalid'" in out.err
    assert "1 relaxed (invalid 1)" in out.out
    (row,) = jc.io.connect_db(db).select()
    assert row.status == "invalid" and row.steps == 0 and row.force_calls == 0
    assert "field 'frac': atoms 0 and 1 are 0.000 Å apart (closer than 0.1 Å)" in row.error


def test_relax_unusable_output_fails_on_one_line(tmp_path, capsys):
    src = str(_silicon(tmp_path))
    missing = tmp_path / "nonexistent" / "dir" / "out.db"
    assert main(["relax", src, "-o", str(missing), "--quiet"]) == 1
    assert "out.db: directory " in _one_line_error(capsys)
    assert not (tmp_path / "nonexistent").exists()
    assert main(["relax", src, "-o", str(tmp_path), "--quiet"]) == 1
    assert "is a directory, not a database file" in _one_line_error(capsys)
    assert main(["relax", src, "-o", src, "--quiet"]) == 1  # the input itself: not a database
    assert "cannot open as a database" in _one_line_error(capsys)


SCRIPT = pathlib.Path(sys.executable).parent / "jaxcsp"


@pytest.mark.skipif(not SCRIPT.exists(), reason="console script not installed next to python")
def test_console_script():
    out = subprocess.run(
        [str(SCRIPT), "info", "--json", str(DATA / "graphite.cif")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out)["spacegroup"] == "P6_3/mmc (194)"
