"""Tests for benchmarks.harness (the timing rules every benchmark relies on)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp

from benchmarks import harness


def test_time_fn_excludes_warmup_and_blocks():
    calls = []

    def fn(x):
        calls.append(1)
        return jnp.sin(x) * 2

    t = harness.time_fn(jax.jit(fn), jnp.ones(1000), repeats=4, warmup=2)
    assert len(t.times) == 4 and t.median > 0 and t.compile_s > 0
    assert len(calls) == 1  # traced once: warm-up compiled, repeats reused it


def test_compare_prints_ratio_and_records(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(harness, "RESULTS_DIR", tmp_path)
    ours = harness.Timing((0.1,), 0.1, 1.0)
    peer = harness.Timing((0.4,), 0.4, 0.0)
    r = harness.compare("demo", "case A", ours, peer, peer_name="ase (loop)", units=10)
    assert r == 4.0
    out = capsys.readouterr().out
    assert "x   4.00" in out and "ase (loop)" in out
    row = json.loads((tmp_path / "demo.jsonl").read_text().splitlines()[0])
    assert row["speedup"] == 4.0 and row["case"] == "case A" and row["backend"] == "cpu"
