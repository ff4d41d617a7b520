"""Batched optimizers: BFGS + line search, FIRE, L-BFGS, cell filters, relax, relax_stream.

An optimizer's math is an :class:`Algorithm` written for one structure (ask/tell);
:func:`batched` turns it into an ``(init_fn, step_fn)`` pair over a batch of independent
objectives whose :class:`RelaxState` keeps the bookkeeping every optimizer shares (see
:mod:`jaxcsp.optimize._base` for the row/DOF conventions); :func:`relax` drives them for a
``Crystals`` batch and any ``Potential``. What moves is a :class:`Dofs` value
(:class:`AtomPositions`, :class:`FrechetCell`, :class:`WyckoffFree`, or a new kind in a few
lines, see :mod:`jaxcsp.optimize._dofs`).
"""

from jaxcsp.optimize._base import (
    CONVERGED,
    EXPLODED,
    INVALID,
    MAX_STEPS,
    RUNNING,
    STATUS_NAMES,
    UNCERTAIN,
    Algorithm,
    Optimizer,
    RelaxState,
    batched,
    masked_fmax,
)
from jaxcsp.optimize._bfgs import (
    BFGSLineSearchState,
    bfgs_linesearch,
    bfgs_linesearch_algorithm,
)
from jaxcsp.optimize._dofs import AtomPositions, Dofs, FrechetCell, WyckoffFree
from jaxcsp.optimize._fire import FIREState, fire, fire_algorithm
from jaxcsp.optimize._lbfgs import LBFGSState, lbfgs, lbfgs_algorithm
from jaxcsp.optimize._relax import (
    METHODS,
    RelaxData,
    RelaxResult,
    crystals_from_dofs,
    initial_dofs,
    make_optimizer,
    relax,
    symmetry_operations,
)
from jaxcsp.optimize._stream import StreamSummary, relax_stream, size_class
from jaxcsp.optimize._symmetric import WyckoffData, relax_wyckoff, wyckoff_from_dofs
from jaxcsp.optimize.descriptor import (
    clip_by_per_sample_norm,
    descriptor_optimizer,
    optimize_wyckoff,
    project_box,
    scale_by_plateau_per_sample,
)

__all__ = [
    "CONVERGED",
    "EXPLODED",
    "INVALID",
    "MAX_STEPS",
    "METHODS",
    "RUNNING",
    "STATUS_NAMES",
    "UNCERTAIN",
    "Algorithm",
    "AtomPositions",
    "BFGSLineSearchState",
    "Dofs",
    "FIREState",
    "FrechetCell",
    "LBFGSState",
    "Optimizer",
    "RelaxData",
    "RelaxResult",
    "RelaxState",
    "StreamSummary",
    "WyckoffData",
    "WyckoffFree",
    "batched",
    "bfgs_linesearch",
    "bfgs_linesearch_algorithm",
    "clip_by_per_sample_norm",
    "crystals_from_dofs",
    "descriptor_optimizer",
    "fire",
    "fire_algorithm",
    "initial_dofs",
    "lbfgs",
    "lbfgs_algorithm",
    "make_optimizer",
    "masked_fmax",
    "optimize_wyckoff",
    "project_box",
    "relax",
    "relax_stream",
    "relax_wyckoff",
    "scale_by_plateau_per_sample",
    "size_class",
    "symmetry_operations",
    "wyckoff_from_dofs",
]
