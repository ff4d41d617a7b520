"""Regenerate ``ase_reference.json``: the ASE relaxations the default test suite compares with.

Run from the repository root: ``python tests/data/make_ase_reference.py``. Each entry is the
outcome of an ASE optimizer (``BFGSLineSearch``, ``FIRE``, ``LBFGS``; ``FrechetCellFilter`` and
``FixSymmetry`` where the test uses them) driven by a jaxcsp potential through
``JaxcspCalculator``, keyed by a digest of the starting structure and the settings (see
``tests/relax_reference.py``). Shipping them saves the default suite the ASE runs; the slow test
``test_shipped_ase_references_are_reproduced`` re-runs them all and requires the same outcome.
"""

from __future__ import annotations

import json
import pathlib
import sys

# the same XLA flags as the test suite (tests/xla_flags.py): an ASE line search's path follows the
# last bits of the forces, so references are made with the arithmetic the tests run
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from xla_flags import apply

apply()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from relax_reference import REFERENCE_FILE, build_default_references  # noqa: E402

if __name__ == "__main__":
    record = build_default_references()
    REFERENCE_FILE.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"{len(record)} references written to {REFERENCE_FILE}")
