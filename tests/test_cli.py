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
