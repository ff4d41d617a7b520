"""``jaxcsp bench`` (``benchmarks/run_all.py``): profiles, the run's rows, JSON record, skips."""

from __future__ import annotations

import json

import pytest

from benchmarks import run_all
from jaxcsp.cli import bench as bench_cli
from jaxcsp.cli import main
from jaxcsp.errors import JaxcspError


def test_every_benchmark_module_exists_and_takes_its_profile_arguments():
    import importlib

    for name, (seed, profiles) in run_all.BENCHMARKS.items():
        mod = importlib.import_module(f"benchmarks.{name}")
        assert callable(mod.main) and seed
        assert set(profiles) == {"quick", "default", "gpu"}
    quick = [n for n, (_, p) in run_all.BENCHMARKS.items() if p["quick"] is not None]
    assert {"relax", "neighbors", "potentials", "symmetry", "so3", "parallel"} <= set(quick)


def test_one_benchmark_end_to_end(tmp_path, monkeypatch, capsys):
    """A real (small) benchmark in its own process: its comparisons come back tagged with the
    run, the JSON holds machine, versions, command line and seed, and the table the ratio."""
    monkeypatch.setitem(
        run_all.BENCHMARKS,
        "crystal",
        ("numpy seed 0", {"quick": ["--batch", "20", "--atoms", "4"], "default": [], "gpu": []}),
    )
    out = tmp_path / "bench.json"
    assert run_all.main(["--quick", "--only", "crystal", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["profile"] == "quick" and rep["versions"]["jax"] == "0.10.1"
    assert rep["machine"]["backend"] == "cpu" and rep["machine"]["devices"]
    (b,) = rep["benchmarks"]
    assert b["name"] == "crystal" and b["rc"] == 0 and b["seed"] == "numpy seed 0"
    assert b["argv"][-4:] == ["--batch", "20", "--atoms", "4"]
    assert len(b["rows"]) == 2 and all(r["run"] == rep["run"] for r in b["rows"])
    assert all(r["peer"] and r["speedup"] > 0 for r in b["rows"])
    table = capsys.readouterr().out
    assert "crystal" in table and "ase" in table.lower() and " x" in table

    # --resume keeps what finished and runs nothing again
    assert run_all.main(["--quick", "--only", "crystal", "--out", str(out), "--resume"]) == 0
    again = json.loads(out.read_text())
    assert again["benchmarks"] == rep["benchmarks"]


def test_a_missing_peer_is_a_named_skip(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(run_all.NEEDS, "anneal", ("no_such_peer.samplers", "pip install it"))
    out = tmp_path / "skip.json"
    assert run_all.main(["--quick", "--only", "anneal", "--out", str(out)]) == 0
    (b,) = json.loads(out.read_text())["benchmarks"]
    assert "no_such_peer.samplers" in b["skipped"] and b["rows"] == []
    assert "SKIPPED" in capsys.readouterr().out


def test_unknown_benchmark_is_a_usage_error():
    with pytest.raises(SystemExit) as e:
        run_all.main(["--only", "nope"])
    assert e.value.code == 2


def test_cli_lists_the_profile_and_needs_a_checkout(monkeypatch, capfd, tmp_path):
    assert main(["bench", "--quick", "--list"]) == 0
    lines = capfd.readouterr().out.splitlines()
    assert "python -m benchmarks.relax --quick" in lines
    assert not any("active" in x or "sevennet" in x for x in lines)  # hours: not in quick
    monkeypatch.setattr(bench_cli, "_root", lambda: tmp_path)
    with pytest.raises(JaxcspError, match="source checkout"):
        bench_cli.run(main.__globals__["build_parser"]().parse_args(["bench", "--quick"]))
