"""Execute the notebooks top to bottom and check that every figure they show has data.

Usage (from the repository root, with the ``notebooks`` extra installed)::

    python notebooks/run.py                      # every notebooks/*.ipynb, in order
    python notebooks/run.py 01 04                # the notebooks whose names start with these
    python notebooks/run.py --out executed/      # also write the executed copies there

Each notebook runs in a fresh ``python3`` kernel (nbclient) with ``notebooks/`` as its working
directory; a cell that raises fails the notebook. The committed files are never written to (they
stay without outputs). Every ``image/png`` the notebook displays is then checked: it must decode,
be at least 100 x 100 pixels and have coloured pixels (the data: matplotlib draws axes, ticks and
text in black and grey, lines, markers and bars in colour), and a notebook must show at least
one figure. Prints one line per notebook with its wall time; exits non-zero if any fails.
"""

from __future__ import annotations

import argparse
import base64
import io
import pathlib
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent

#: the least fraction of an image's pixels that must be coloured (saturation above 0.25)
MIN_COLOURED = 5e-4


def figure_problem(png: bytes) -> str | None:
    """Why a displayed PNG is not a figure with data, or ``None`` if it is one."""
    import matplotlib.image
    import numpy as np

    try:
        img = matplotlib.image.imread(io.BytesIO(png), format="png")
    except Exception as e:  # not a decodable PNG
        return f"does not decode ({e})"
    if img.ndim != 3 or img.shape[0] < 100 or img.shape[1] < 100:
        return f"is {img.shape[1]} x {img.shape[0]} pixels"
    rgb = img[..., :3].astype(np.float64)
    if img.shape[2] == 4:  # transparent pixels show the page behind them: white
        alpha = img[..., 3:4].astype(np.float64)
        rgb = rgb * alpha + (1.0 - alpha)
    coloured = float(np.mean(rgb.max(-1) - rgb.min(-1) > 0.25))
    if coloured < MIN_COLOURED:
        return f"has no data drawn in colour ({coloured:.2e} of its pixels)"
    return None


def figures(notebook) -> list[bytes]:
    """The PNG images an executed notebook displays, in order."""
    out = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") in ("display_data", "execute_result"):
                data = output.get("data", {}).get("image/png")
                if data:
                    out.append(base64.b64decode(data))
    return out


def run(path: pathlib.Path, out_dir: pathlib.Path | None, timeout: int) -> tuple[float, list]:
    """Execute one notebook; return its wall time and its problems (empty when it passes)."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,  # executed copies (--out) clear back to the committed form
        resources={"metadata": {"path": str(path.parent)}},
    )
    problems = []
    t0 = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        problems.append(f"a cell failed:\n{e}")
    except Exception as e:  # timeout, dead kernel
        problems.append(f"execution stopped: {type(e).__name__}: {e}")
    seconds = time.perf_counter() - t0
    if not problems:
        pngs = figures(notebook)
        if not pngs:
            problems.append("shows no figure")
        for k, png in enumerate(pngs):
            why = figure_problem(png)
            if why:
                problems.append(f"figure {k + 1} {why}")
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, out_dir / path.name)
    return seconds, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="name prefixes (default: every notebook)")
    parser.add_argument("--out", type=pathlib.Path, help="write the executed notebooks here")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = sorted(HERE.glob("*.ipynb"))
    if args.names:
        paths = [p for p in paths if any(p.name.startswith(n) for n in args.names)]
    if not paths:
        print("notebooks: nothing to run", file=sys.stderr)
        return 2
    failed = 0
    total = time.perf_counter()
    for path in paths:
        seconds, problems = run(path, args.out, args.timeout)
        status = "ok" if not problems else "FAILED"
        print(f"notebooks: {path.name:<32} {seconds:6.1f} s  {status}", flush=True)
        for p in problems:
            print(f"  {p}", flush=True)
        failed += bool(problems)
    print(
        f"notebooks: {len(paths) - failed} of {len(paths)} passed in "
        f"{time.perf_counter() - total:.1f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
