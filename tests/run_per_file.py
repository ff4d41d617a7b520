"""Run the test suite with one pytest process per test file, then print one summary line.

Why: in a single long-lived process, after a few hundred XLA:CPU compilations jaxlib 0.10.1
crashed twice inside the compiler (a segfault in ``backend_compile_and_load`` and an abort in
``put_executable_and_time``), each time in a different test, while every file passes on its own
and in halves of the suite. A process per file also frees each module's compiled programs.

Usage: ``python tests/run_per_file.py [extra pytest args]``; the exit code is non-zero if any
file fails or crashes. The last line reads ``N passed, N failed, N skipped``.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    here = pathlib.Path(__file__).resolve().parent
    files = sorted(here.glob("test_*.py"))
    totals = {"passed": 0, "failed": 0, "skipped": 0, "error": 0}
    status = 0
    t0 = time.perf_counter()
    for f in files:
        t = time.perf_counter()
        r = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(f), *argv],
            capture_output=True,
            text=True,
            cwd=here.parent,
        )
        lines = [ln for ln in r.stdout.splitlines() if re.search(r"\d+ (passed|failed|error)", ln)]
        summary = lines[-1] if lines else "no summary"
        for key in totals:
            m = re.search(rf"(\d+) {key}", summary)
            if m:
                totals[key] += int(m.group(1))
        if r.returncode not in (0, 5):  # 5: every test of the file deselected
            status = 1
            if not lines or r.returncode < 0:
                totals["failed"] += 1  # a crash without a summary still counts
            print(r.stdout[-8000:], r.stderr[-4000:], sep="\n", flush=True)
        print(
            f"{f.name}: {summary} [{time.perf_counter() - t:.0f} s, rc {r.returncode}]", flush=True
        )
    print(f"total {time.perf_counter() - t0:.0f} s")
    failed = totals["failed"] + totals["error"]
    print(f"{totals['passed']} passed, {failed} failed, {totals['skipped']} skipped")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
