"""The optimizers reach what they reached before the engine was rebuilt.

``tests/data/relax_record.json`` (written by ``tests/data/make_relax_record.py`` before the
relaxation engine became per-structure algorithms under one driver loop) holds, for every
structure of the 210-structure relax set and each optimizer, the final energy per atom, the
steps, the force calls and the status. These tests relax the structures again and require
the same outcome: the slow suite checks the first 16 structures of each potential with each
optimizer (recorded as their own batches); ``-m manual`` all 210.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from relax_reference import DATA, POTENTIALS

sys.path.insert(0, str(DATA))
from make_relax_record import METHODS, record

RECORD = json.loads((DATA / "relax_record.json").read_text())


def _check(name: str, method: str, n: int | None) -> None:
    ours = record(name, method, n)
    then = RECORD[f"{name}/{method}" + (f"/first{n}" if n else "")]
    assert [r["index"] for r in ours] == [r["index"] for r in then]
    pairs = list(zip(ours, then, strict=True))
    d_e = np.array([a["energy_per_atom"] - b["energy_per_atom"] for a, b in pairs])
    same_path = [
        (a["status"], a["steps"], a["force_calls"]) == (b["status"], b["steps"], b["force_calls"])
        for a, b in pairs
    ]
    differing = [
        (a["index"], a["force_calls"], b["force_calls"], round(float(d), 8))
        for a, b, d, s in zip(ours, then, d_e, same_path, strict=True)
        if not s or abs(d) > 1e-6
    ]
    print(f"{name} {method}: {sum(same_path)}/{len(ours)} same path; differing {differing}")
    # a long path (hundreds of L-BFGS steps, a line search's choices) follows the last bits of
    # the sums, which XLA may order differently in a rebuilt program: one structure in 50 (at
    # least one) may take another path; every other must end where it ended, as it did
    allowed = max(1, len(ours) // 50)
    assert np.sum(np.abs(d_e) >= 1e-6) <= allowed, differing
    assert len(ours) - sum(same_path) <= allowed, differing


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(POTENTIALS))
def test_same_outcome_as_recorded(name, method):
    _check(name, method, 16)


@pytest.mark.slow
@pytest.mark.manual
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", sorted(POTENTIALS))
def test_same_outcome_as_recorded_all_210(name, method):
    _check(name, method, None)
