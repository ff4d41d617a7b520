"""Regenerate ``mlff_si8_ensemble.msgpack``, the ensemble the MLFF tests share.

Run from the repository root: ``python tests/data/make_mlff_ensemble.py`` (see
``tests/mlff_reference.py``).
"""

from __future__ import annotations

import pathlib
import sys

# the test suite's XLA flags (tests/xla_flags.py): the ensemble is trained as the tests would
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from xla_flags import apply

apply()

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

from mlff_reference import ENSEMBLE_FILE, dataset, train  # noqa: E402

from jaxcsp.models import save_ensemble  # noqa: E402

if __name__ == "__main__":
    ens = train(dataset()[0])
    save_ensemble(ENSEMBLE_FILE, ens)
    print(f"epochs {ens.history.epochs.tolist()}; written to {ENSEMBLE_FILE}")
