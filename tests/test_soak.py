"""Soak: a long relaxation/search process keeps its memory flat and stops compiling (slow).

Runs :mod:`benchmarks.soak` in this process for ``JAXCSP_SOAK_MINUTES`` (default 30): random
Si8 generations relaxed in batches and streamed through continuous batching. After warm-up
(the first half of the run) there must be no compilation at all, and neither resident memory
nor the number of memory mappings may grow beyond noise. The per-iteration records are written
to ``benchmarks/results/soak.json`` with a plot beside it.
"""

from __future__ import annotations

import json
import os
import pathlib

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.manual]

RESULTS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_soak_memory_flat_and_no_recompilation():
    from benchmarks import soak

    minutes = float(os.environ.get("JAXCSP_SOAK_MINUTES", "30"))
    records = soak.soak(minutes)
    summary = soak.summarise(records, warmup=0.5)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(dict(summary=summary, records=records)))
    soak.plot(records, str(RESULTS / "soak.png"))
    print(json.dumps(summary))
    assert summary["iterations_after_warmup"] >= 3, summary
    assert summary["compiles_after_warmup"] == 0, summary
    # flat: growth after warm-up within noise (allocator slack), not a leak per iteration
    assert summary["rss_growth_mb"] < 0.05 * summary["rss_mb_at_warmup"] + 64, summary
    assert summary["maps_growth"] < 200, summary
