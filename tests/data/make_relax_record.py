"""Record what jaxcsp's own optimizers reach on the 210-structure relax set (our side only).

Writes ``tests/data/relax_record.json``: for every potential set (LJ, Stillinger-Weber,
Tersoff), optimizer (BFGS + line search, FIRE, L-BFGS) and structure of
``relax_set.extxyz`` (fixed cell for even indices, Frechet cell for odd ones, as the ASE
comparison does), the final energy per atom (eV/atom), the steps, the force calls and the
status. ``tests/test_optimize_record.py`` (``-m slow``) relaxes the set again and requires the
same outcome: it pins the optimizers' results across rebuilds of the relaxation engine.

Run from the repository root: ``python tests/data/make_relax_record.py [--only NAME]
[--first N]``; with ``--first 16`` the entries ``<set>/<method>/first16`` hold the first 16
structures relaxed as their own batches (what the slow suite checks: a batch's neighbor-list
shapes depend on its members, and a long L-BFGS path follows the last bits of its sums).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import jax

jax.config.update("jax_enable_x64", True)

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from relax_reference import FMAX, POTENTIALS, relax_set  # noqa: E402

import jaxcsp as jc  # noqa: E402

OUT = HERE / "relax_record.json"
METHODS = ("bfgs_linesearch", "fire", "lbfgs")


def record(name: str, method: str, n: int | None = None) -> list[dict]:
    """Our outcome on the first ``n`` (default: every) structures of set ``name`` with
    ``method``, in set order."""
    pot = POTENTIALS[name]()
    images = relax_set(name)[:n]
    rows: dict[int, dict] = {}
    for cell in (False, True):
        idx = list(range(int(cell), len(images), 2))
        res = jc.optimize.relax(
            jc.io.from_ase([images[i] for i in idx]),
            pot,
            method=method,
            fmax=FMAX,
            cell_filter="frechet" if cell else None,
            max_steps=1000,
        )
        n = jax.device_get(res.crystals.num_atoms)
        for k, i in enumerate(idx):
            rows[i] = dict(
                index=i,
                cell=cell,
                energy_per_atom=float(res.energy[k]) / int(n[k]),
                steps=int(res.steps[k]),
                force_calls=int(res.force_calls[k]),
                status=res.status_names[k],
            )
    return [rows[i] for i in sorted(rows)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", choices=sorted(POTENTIALS))
    ap.add_argument("--first", type=int, help="only the first N structures of each set")
    args = ap.parse_args()
    out = json.loads(OUT.read_text()) if OUT.exists() else {}
    suffix = f"/first{args.first}" if args.first else ""
    for name in [args.only] if args.only else sorted(POTENTIALS):
        for method in METHODS:
            out[f"{name}/{method}{suffix}"] = record(name, method, args.first)
            print(name, method, "done", flush=True)
            OUT.write_text(json.dumps(out, indent=0, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
