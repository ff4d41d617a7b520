"""Reference relaxations with ASE optimizers driven by a jaxcsp potential (shared by tests).

The ASE side uses :class:`~jaxcsp.potentials.ase_calculator.JaxcspCalculator` with one shared
padding and neighbor-list shape per set, so all reference runs reuse one compiled program.
"""

from __future__ import annotations

import pathlib

import ase.io
from ase.calculators.calculator import all_changes

from jaxcsp import neighbors as nb
from jaxcsp.potentials.ase_calculator import JaxcspCalculator

DATA = pathlib.Path(__file__).parent / "data"


def relax_set(name: str) -> list:
    """Structures of ``tests/data/relax_set.extxyz`` meant for potential set ``name``."""
    images = ase.io.read(DATA / "relax_set.extxyz", index=":")
    return [a for a in images if a.info["set"] == name]


class TooManyCalls(RuntimeError):
    """The ASE run exceeded its evaluation budget."""


def shared_spec(potential, crystals):
    """One generous neighbor-list shape for a whole set of structures (one compilation)."""
    return nb.neighbor_list_spec(
        crystals, float(potential.cutoff), capacity_headroom=1.0, cell_headroom=0.5
    )


class FastCalculator(JaxcspCalculator):
    """:class:`JaxcspCalculator` that stops after ``limit`` evaluations (ASE's line search has
    no iteration cap and can cycle)."""

    def __init__(self, potential, n_pad: int, spec=None, limit: int = 4000):
        super().__init__(potential, max_atoms=n_pad, spec=spec)
        self.limit = limit

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        if self.calls >= self.limit:
            raise TooManyCalls(f"more than {self.limit} evaluations")
        super().calculate(atoms, properties, system_changes)


def ase_relax(
    atoms,
    potential,
    *,
    optimizer: str,
    cell: bool,
    fmax: float,
    steps: int,
    n_pad: int = 64,
    spec=None,
    fix_symmetry: bool = False,
):
    """Relax a copy of ``atoms`` with an ASE optimizer; returns ``(atoms, calls, ok)``."""
    from ase.constraints import FixSymmetry
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE, LBFGS, BFGSLineSearch

    atoms = atoms.copy()
    calc = FastCalculator(potential, n_pad, spec)
    atoms.calc = calc
    if fix_symmetry:
        atoms.set_constraint(FixSymmetry(atoms, symprec=1e-4))
    obj = FrechetCellFilter(atoms) if cell else atoms
    opt_cls = {"bfgs_linesearch": BFGSLineSearch, "fire": FIRE, "lbfgs": LBFGS}[optimizer]
    opt = opt_cls(obj, logfile=None)
    try:
        ok = bool(opt.run(fmax=fmax, steps=steps))
    except (RuntimeError, TooManyCalls):  # ASE's "LineSearch failed!" or the call budget
        ok = False
    return atoms, calc.calls, ok
