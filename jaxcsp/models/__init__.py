"""Flax models: surrogate energies over bit vectors with their annealers, and the generative CVAE.

* :mod:`jaxcsp.models.fm`: the factorization machine regressor (:class:`FactorizationMachine`,
  :func:`train_fm`, :class:`FMModel`), its QUBO (:func:`fm_to_qubo`), one-hot penalties and
  checkpoints.
* :mod:`jaxcsp.models.anneal`: simulated annealing of QUBOs, dense (:func:`anneal_qubo`) and
  low-rank FM (:func:`anneal_fm`, ``O(K)`` per flip), many replicas at once.
* :mod:`jaxcsp.models.gmm`: the GMM (mode-specific) transform of continuous columns
  (:func:`fit_gmm_transform`, :class:`GMMTransform`: exact inverse and a relaxed,
  differentiable one).
* :mod:`jaxcsp.models.cvae`: the symmetry-conditioned VAE (:class:`CVAE`, :func:`train_cvae`,
  :class:`CVAEModel`, :func:`shipped_cvae`) and the plain VAE baseline.
* :mod:`jaxcsp.models.latent`: latent-space refinement under fixed conditions
  (:func:`refine_latents`, the CVAE seed's Algorithm 2).
* :mod:`jaxcsp.models.mlff`: learned force fields: a PaiNN-style model (:class:`PaiNN`) and
  deep ensembles of it (:class:`MLFFEnsemble`, :func:`train_ensemble`) with the relative force
  uncertainty of the active-learning seed; checkpoints (:func:`save_ensemble`).
"""

from jaxcsp.models.anneal import AnnealResult, anneal_fm, anneal_qubo, default_beta_range
from jaxcsp.models.cvae import (
    CVAE,
    CVAEModel,
    UnknownConditionError,
    load_cvae,
    save_cvae,
    shipped_cvae,
    train_cvae,
)
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
from jaxcsp.models.gmm import GMMTransform, fit_gmm_transform
from jaxcsp.models.latent import LatentResult, refine_latents
from jaxcsp.models.mlff import (
    EnsembleHistory,
    EnsemblePrediction,
    LabelledData,
    MLFFConfig,
    MLFFEnsemble,
    PaiNN,
    init_ensemble,
    labelled_data,
    load_ensemble,
    save_ensemble,
    train_ensemble,
)

__all__ = [
    "CVAE",
    "AnnealResult",
    "CVAEModel",
    "EnsembleHistory",
    "EnsemblePrediction",
    "FMHistory",
    "FMModel",
    "FactorizationMachine",
    "GMMTransform",
    "LabelledData",
    "LatentResult",
    "MLFFConfig",
    "MLFFEnsemble",
    "PaiNN",
    "UnknownConditionError",
    "anneal_fm",
    "anneal_qubo",
    "default_beta_range",
    "fit_gmm_transform",
    "fm_coefficients",
    "fm_to_qubo",
    "init_ensemble",
    "labelled_data",
    "load_cvae",
    "load_ensemble",
    "load_fm",
    "one_hot_penalty",
    "qubo_energy",
    "refine_latents",
    "save_cvae",
    "save_ensemble",
    "save_fm",
    "shipped_cvae",
    "train_cvae",
    "train_ensemble",
    "train_fm",
]
