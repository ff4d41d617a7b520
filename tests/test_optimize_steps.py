"""Each optimizer on one structure, step by step, against ASE's optimizer on the same potential.

ASE's optimizer runs through :class:`~jaxcsp.potentials.ase_calculator.JaxcspCalculator` (the
same energies and forces), and an observer records the positions and the evaluation count
after every step. Our side is :func:`jaxcsp.optimize.relax` (jitted inside) stopped after
``k`` steps: ``max_steps`` is a traced value, so the ``K`` calls share one compiled program.
After every step the positions agree to round-off and so does the number of evaluations (for
FIRE and L-BFGS one per step; for ``BFGSLineSearch`` what its line search needed).
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from relax_reference import POTENTIALS, FastCalculator, relax_set

import jaxcsp as jc
from jaxcsp.optimize import relax

STEPS = 8
FMAX = 1e-6  # eV/Å: tight, so every step is taken (or both converge at the same one)


def _ase_trajectory(atoms, potential, method: str, steps: int):
    from ase.optimize import FIRE, LBFGS, BFGSLineSearch

    atoms = atoms.copy()
    calc = FastCalculator(potential, len(atoms))
    atoms.calc = calc
    opt = {"bfgs_linesearch": BFGSLineSearch, "fire": FIRE, "lbfgs": LBFGS}[method](
        atoms, logfile=None
    )
    record = []

    def observe():
        fmax = np.linalg.norm(atoms.get_forces(), axis=1).max()
        record.append((atoms.get_positions().copy(), calc.calls, fmax))

    opt.attach(observe, interval=1)
    opt.run(fmax=FMAX, steps=steps)
    return record  # step 0 (the start), then one entry per step


@pytest.mark.parametrize("method", ["bfgs_linesearch", "fire", "lbfgs"])
def test_each_step_matches_ase(method):
    pot = POTENTIALS["sw"]()
    atoms = next(a for a in relax_set("sw")[::2] if len(a) == 8)  # a fixed-cell start
    record = _ase_trajectory(atoms, pot, method, STEPS)
    assert len(record) == STEPS + 1  # ASE took every step (nothing failed)
    c = jc.io.from_ase([atoms])
    lattice = np.asarray(c.lattice[0])
    for k in range(1, STEPS + 1):
        res = relax(c, pot, method=method, fmax=FMAX, max_steps=k)
        theirs, calls, ase_fmax = record[k]
        assert int(res.steps[0]) == k
        assert res.status_names == ["converged" if ase_fmax < FMAX else "max_steps"]
        ours = np.asarray(res.crystals.frac[0]) @ lattice
        # the same point up to a lattice translation of each atom
        d = (ours - theirs) @ np.linalg.inv(lattice)
        d = (d - np.round(d)) @ lattice
        assert np.abs(d).max() < 1e-8, (method, k, np.abs(d).max())
        # ASE's count includes the evaluation at the start; so does ours
        assert int(res.force_calls[0]) == calls, (method, k, int(res.force_calls[0]), calls)


@pytest.mark.parametrize(
    "batched, single",
    [
        ("fire", "fire_algorithm"),
        ("lbfgs", "lbfgs_algorithm"),
        ("bfgs_linesearch", "bfgs_linesearch_algorithm"),
    ],
)
def test_batched_and_single_structure_defaults_agree(batched, single):
    """Each optimizer's defaults are written twice, in the batched constructor (whose signature
    ``relax`` reads) and in its one-structure algorithm: they must stay the same."""

    def defaults(fn):
        return {
            k: p.default
            for k, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and k != "f_upper"
        }

    a, b = defaults(getattr(jc.optimize, batched)), defaults(getattr(jc.optimize, single))
    assert a == b and len(a) >= 3
