"""Tiny benchmark harness shared by every script in ``benchmarks/``.

Rules: compile/warm up first and exclude it; ``block_until_ready`` on every
output; report the median of repeats; print our time, the peer's time (measured in the same run)
and the ratio; append one JSON line per comparison to ``benchmarks/results/<suite>.jsonl`` with the
machine description so numbers from different machines are never mixed up. Never assert a time.

>>> from benchmarks.harness import Timing, time_fn
>>> t = time_fn(lambda: sum(range(1000)), repeats=3, warmup=1)
>>> t.median > 0
True
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["Timing", "compare", "machine_info", "record", "time_fn"]

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
#: Environment variable holding the id of a ``run_all`` run (tags every recorded row).
RUN_ENV = "JAXCSP_BENCH_RUN"


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock timings of one callable.

    Attributes:
      times: seconds per repeat (after warm-up).
      median: median seconds per repeat.
      compile_s: seconds spent in warm-up calls (compilation for jitted code).
    """

    times: tuple[float, ...]
    median: float
    compile_s: float


_COMPILE = {"seconds": 0.0, "count": 0}


def _on_duration_event(event: str, duration: float, **_: Any) -> None:
    if event.startswith("/jax/core/compile/"):
        _COMPILE["seconds"] += duration
        if event.endswith("backend_compile_duration"):
            _COMPILE["count"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_duration_event)


def compile_clock() -> tuple[float, int]:
    """Seconds JAX has spent tracing, lowering and compiling in this process, and the number of
    backend compilations (from JAX's own ``/jax/core/compile/*`` duration events).

    Take the difference of two readings to subtract compilation from a wall-clock measurement
    whose shapes are only known while it runs (e.g. neighbor-list shapes that grow).
    """
    return _COMPILE["seconds"], _COMPILE["count"]


def _block(x: Any) -> Any:
    return jax.block_until_ready(x)


def time_fn(
    fn: Callable[..., Any],
    *args: Any,
    repeats: int = 5,
    warmup: int = 1,
    min_time: float = 0.0,
    **kwargs: Any,
) -> Timing:
    """Time ``fn(*args, **kwargs)``: ``warmup`` untimed calls, then ``repeats`` timed calls.

    Args:
      fn: callable; its outputs are passed to ``jax.block_until_ready`` (no-op for non-JAX).
      repeats: timed calls (at least 1).
      warmup: untimed calls first (compilation happens here).
      min_time: keep repeating until the timed calls add up to at least this many seconds.

    Returns:
      :class:`Timing` in seconds.
    """
    t0 = time.perf_counter()
    for _ in range(warmup):
        _block(fn(*args, **kwargs))
    compile_s = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < max(repeats, 1) or sum(times) < min_time:
        t = time.perf_counter()
        _block(fn(*args, **kwargs))
        times.append(time.perf_counter() - t)
    return Timing(tuple(times), statistics.median(times), compile_s)


def machine_info() -> dict[str, Any]:
    """Describe the machine and software the numbers come from."""
    return {
        "host": platform.node(),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
    }


def record(suite: str, row: dict[str, Any]) -> None:
    """Append ``row`` + timestamp + machine as one JSON line to ``results/<suite>.jsonl``.

    Under ``benchmarks/run_all.py`` the line also carries the run's id (environment variable
    ``JAXCSP_BENCH_RUN``), which is how the driver collects the rows of its run.
    """
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    full = {"suite": suite, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **row, **machine_info()}
    if os.environ.get(RUN_ENV):
        full["run"] = os.environ[RUN_ENV]
    with open(RESULTS_DIR / f"{suite}.jsonl", "a") as f:
        f.write(json.dumps(full) + "\n")


def compare(
    suite: str,
    case: str,
    ours: Timing,
    peer: Timing,
    *,
    peer_name: str,
    units: int | None = None,
    unit_name: str = "structures",
    extra: dict[str, Any] | None = None,
) -> float:
    """Print ours vs peer for one case, record it, and return the speed-up ``peer / ours``.

    Args:
      suite: benchmark suite (file stem of the results file).
      case: human-readable case name (e.g. ``"B=1000 N=32 rc=6"``).
      ours, peer: timings of the same work measured in this run.
      peer_name: what the peer is (e.g. ``"vesin (loop)"``).
      units: work items per call, to also print throughput.
      unit_name: what the items are.
      extra: more fields for the JSON line.
    """
    ratio = peer.median / ours.median if ours.median > 0 else float("inf")
    line = (
        f"{suite:>12} | {case:<32} | jaxcsp {ours.median * 1e3:10.2f} ms | "
        f"{peer_name} {peer.median * 1e3:10.2f} ms | speed-up x{ratio:7.2f}"
    )
    if units:
        line += f" | {units / ours.median:,.0f} {unit_name}/s"
    print(line, flush=True)
    record(
        suite,
        {
            "case": case,
            "ours_s": ours.median,
            "peer": peer_name,
            "peer_s": peer.median,
            "speedup": ratio,
            "ours_compile_s": ours.compile_s,
            "units": units,
            "unit_name": unit_name,
            **(extra or {}),
        },
    )
    return ratio
