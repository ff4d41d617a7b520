"""The small Si8 ensemble the MLFF tests share, and the data it learns.

The ensemble (3 members, 16 features, 2 interactions, trained for up to 60 epochs on 16 random
Si8 cells labelled by Stillinger-Weber) is shipped in ``tests/data/mlff_si8_ensemble.msgpack``:
training it is the most expensive fixture of the default suite (about a minute at the suite's
XLA flags). ``python tests/data/make_mlff_ensemble.py`` rebuilds it; the slow test
``test_fresh_training_matches_the_shipped_ensemble`` trains it again and checks the result.
"""

from __future__ import annotations

import pathlib

import jax
import numpy as np

import jaxcsp as jc
from jaxcsp.crystal import Crystals
from jaxcsp.models import MLFFConfig, labelled_data, train_ensemble
from jaxcsp.symmetry import random_crystals, reconstruct

ENSEMBLE_FILE = pathlib.Path(__file__).parent / "data" / "mlff_si8_ensemble.msgpack"
CONFIG = MLFFConfig(features=16, num_interactions=2, num_rbf=12, cutoff=4.5)
TRAIN = dict(num_members=3, config=CONFIG, max_epochs=60, patience=20, learning_rate=3e-3)
N_TRAIN = 16  # with the 16 squeezed cells labelled later: one size bucket (32), one program


def random_si8(seed: int, n: int) -> Crystals:
    """``n`` random P1 Si8 cells (distance factor 0.7)."""
    wc = random_crystals(
        jax.random.key(seed), "Si8", n, spg=1, check_symmetry=False, max_sites=8, max_atoms=8,
        distance_factor=0.7,
    )  # fmt: skip
    return reconstruct(wc)


def labels(c: Crystals):
    """Stillinger-Weber labels of ``c``: ``(LabelledData, CalcResults)``."""
    r = jc.calculate(jc.potentials.stillinger_weber(), c)
    return labelled_data(c, r.energy, r.forces, r.stress), r


def dataset():
    """``(train, held, held_labels)``: 16 labelled training cells and 16 held-out cells."""
    c = random_si8(0, 2 * N_TRAIN)
    _, ref = labels(c)
    n = N_TRAIN
    data = labelled_data(c.take(np.arange(n)), ref.energy[:n], ref.forces[:n], ref.stress[:n])
    return data, c.take(np.arange(n, 2 * n)), jax.tree.map(lambda a: a[n:], ref)


def train(train_data):
    """The ensemble as shipped: :data:`TRAIN` on ``train_data``, key 1."""
    return train_ensemble(jax.random.key(1), train_data, **TRAIN)
