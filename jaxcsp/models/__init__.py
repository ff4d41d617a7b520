"""Surrogate models of energies over bit vectors and their annealers (CRYSIM-style search).

* :mod:`jaxcsp.models.fm`: the factorization machine regressor (:class:`FactorizationMachine`,
  :func:`train_fm`, :class:`FMModel`), its QUBO (:func:`fm_to_qubo`), one-hot penalties and
  checkpoints.
* :mod:`jaxcsp.models.anneal`: simulated annealing of QUBOs, dense (:func:`anneal_qubo`) and
  low-rank FM (:func:`anneal_fm`, ``O(K)`` per flip), many replicas at once.
"""

from jaxcsp.models.anneal import AnnealResult, anneal_fm, anneal_qubo, default_beta_range
from jaxcsp.models.fm import (
    FactorizationMachine,
    FMHistory,
    FMModel,
    fm_coefficients,
    fm_to_qubo,
    load_fm,
    one_hot_penalty,
    qubo_energy,
    save_fm,
    train_fm,
)

__all__ = [
    "AnnealResult",
    "FMHistory",
    "FMModel",
    "FactorizationMachine",
    "anneal_fm",
    "anneal_qubo",
    "default_beta_range",
    "fm_coefficients",
    "fm_to_qubo",
    "load_fm",
    "one_hot_penalty",
    "qubo_energy",
    "save_fm",
    "train_fm",
]
