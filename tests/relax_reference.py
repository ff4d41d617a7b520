"""Reference relaxations with ASE optimizers driven by a jaxcsp potential (shared by tests).

``FastCalculator`` is an ASE calculator for a jaxcsp potential with fixed padding and a fixed
neighbor-list shape, so a whole ASE run compiles once; it refuses to go on after ``limit``
evaluations (ASE's line search has no iteration cap and can cycle).
"""

from __future__ import annotations

import functools
import pathlib

import ase.io
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from jaxcsp import neighbors as nb
from jaxcsp.calculator import calculate_with_neighbors
from jaxcsp.crystal import Crystals

DATA = pathlib.Path(__file__).parent / "data"


def relax_set(name: str) -> list:
    """Structures of ``tests/data/relax_set.extxyz`` meant for potential set ``name``."""
    images = ase.io.read(DATA / "relax_set.extxyz", index=":")
    return [a for a in images if a.info["set"] == name]


class TooManyCalls(RuntimeError):
    """The ASE run exceeded its evaluation budget."""


@functools.partial(jax.jit, static_argnames=("spec",))
def _efs(potential, crystals, spec):
    nl = nb.update(spec, crystals)
    return calculate_with_neighbors(potential, crystals, nl), nl


def shared_spec(potential, crystals: Crystals):
    """One generous neighbor-list shape for a whole set of structures (one compilation)."""
    return nb.neighbor_list_spec(
        crystals, float(potential.cutoff), capacity_headroom=1.0, cell_headroom=0.5
    )


class FastCalculator(Calculator):
    """ASE calculator for ``potential`` with fixed padding ``n_pad`` and a shared list shape."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]  # noqa: RUF012

    def __init__(self, potential, n_pad: int, spec=None, limit: int = 4000):
        super().__init__()
        self.potential, self.n_pad, self.limit, self.calls = potential, n_pad, limit, 0
        self.spec = spec

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        if self.calls > self.limit:
            raise TooManyCalls(f"more than {self.limit} evaluations")
        n = len(self.atoms)
        lat = self.atoms.cell.array
        frac = np.zeros((1, self.n_pad, 3))
        frac[0, :n] = np.linalg.solve(lat.T, self.atoms.positions.T).T
        species = np.zeros((1, self.n_pad), np.int32)
        species[0, :n] = self.atoms.numbers
        c = Crystals(
            jnp.asarray(lat[None]),
            jnp.asarray(frac),
            jnp.asarray(species),
            jnp.asarray(species > 0),
        )
        if self.spec is None:
            self.spec = shared_spec(self.potential, c)
        r, nl = _efs(self.potential, c, self.spec)
        while bool(nl.overflow[0]):  # grow the shapes (recompiles), never truncate
            self.spec = nb.neighbor_list_spec(
                c, float(self.potential.cutoff), capacity_headroom=1.0, cell_headroom=0.5
            )
            r, nl = _efs(self.potential, c, self.spec)
        e = float(r.energy[0])
        self.results = {
            "energy": e,
            "free_energy": e,
            "forces": np.asarray(r.forces[0, :n]),
            "stress": full_3x3_to_voigt_6_stress(np.asarray(r.stress[0])),
        }


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
