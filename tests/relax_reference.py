"""Reference relaxations with ASE optimizers driven by a jaxcsp potential (shared by tests).

The ASE side uses :class:`~jaxcsp.potentials.ase_calculator.JaxcspCalculator` with one shared
padding and neighbor-list shape per set, so all reference runs reuse one compiled program.

The default suite reads the outcomes of its ASE runs (final energy, evaluations, converged) from
``tests/data/ase_reference.json`` (written by ``tests/data/make_ase_reference.py``), keyed by a
digest of the starting structure, the potential and the optimizer settings; an input whose key
is missing is relaxed with ASE on the spot. ``pytest -m slow`` re-runs every shipped entry with
ASE and requires the same outcome (``test_shipped_ase_references_are_reproduced``).
"""

from __future__ import annotations

import hashlib
import json
import pathlib

import ase.io
import numpy as np
from ase.calculators.calculator import all_changes

from jaxcsp import neighbors as nb
from jaxcsp import potentials
from jaxcsp.potentials.ase_calculator import JaxcspCalculator

DATA = pathlib.Path(__file__).parent / "data"
TERSOFF = pathlib.Path(__import__("pyxtal").__file__).parent / "potentials" / "Si.tersoff"
#: the potential of each set of ``relax_set.extxyz``, by name
POTENTIALS = {
    "lj": lambda: potentials.lennard_jones(sigma=1.7, epsilon=0.1, cutoff=4.25),
    "sw": potentials.stillinger_weber,
    "tersoff": lambda: potentials.tersoff(TERSOFF),
}
FMAX = 0.01


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


REFERENCE_FILE = DATA / "ase_reference.json"
_SHIPPED: dict | None = None


def reference_key(atoms, potential_name: str, **settings) -> str:
    """Digest of a starting structure (to 1e-9 Å), the potential's name and the ASE settings."""
    h = hashlib.sha256()
    h.update(np.asarray(atoms.numbers, np.int64).tobytes())
    h.update(np.round(np.asarray(atoms.cell.array), 9).tobytes())
    h.update(np.round(np.asarray(atoms.positions), 9).tobytes())
    h.update(json.dumps([potential_name, sorted(settings.items())]).encode())
    return h.hexdigest()[:24]


def shipped_references() -> dict:
    """``{key: {"energy": eV, "calls": int, "ok": bool, ...}}`` from the shipped JSON file."""
    global _SHIPPED
    if _SHIPPED is None:
        _SHIPPED = json.loads(REFERENCE_FILE.read_text()) if REFERENCE_FILE.exists() else {}
    return _SHIPPED


def ase_reference(
    atoms,
    potential,
    potential_name: str,
    *,
    optimizer: str,
    cell: bool,
    fmax: float,
    steps: int,
    n_pad: int,
    spec=None,
    fix_symmetry: bool = False,
    record: dict | None = None,
):
    """``(energy (eV), calls, ok)`` of :func:`ase_relax` for ``atoms``: shipped or computed.

    ``record``: a dict to which the computed outcome is added under its key (used by
    ``make_ase_reference.py``); a given ``record`` forces the ASE run.
    """
    settings = dict(optimizer=optimizer, cell=cell, fmax=fmax, steps=steps, fix=fix_symmetry)
    key = reference_key(atoms, potential_name, **settings)
    hit = shipped_references().get(key)
    if hit is not None and record is None:
        return hit["energy"], hit["calls"], hit["ok"]
    ref, calls, ok = ase_relax(
        atoms,
        potential,
        optimizer=optimizer,
        cell=cell,
        fmax=fmax,
        steps=steps,
        n_pad=n_pad,
        spec=spec,
        fix_symmetry=fix_symmetry,
    )
    energy = float(ref.get_potential_energy())
    if record is not None:
        record[key] = dict(
            energy=energy, calls=int(calls), ok=bool(ok), potential=potential_name, **settings
        )
    return energy, calls, ok


#: the ASE runs of the default suite: (set, optimizer, first n structures of the set)
DEFAULT_RUNS = [
    ("lj", "bfgs_linesearch", 12),
    ("sw", "bfgs_linesearch", 12),
    ("tersoff", "bfgs_linesearch", 12),
    ("lj", "fire", 12),
    ("sw", "fire", 12),
    ("sw", "lbfgs", 8),
]


def symmetric_starts():
    """The eight Si8 starting structures of ``test_optimize_symmetric`` (ase.Atoms)."""
    import jax

    import jaxcsp as jc
    from jaxcsp.symmetry import random_crystals, reconstruct

    wc = random_crystals(jax.random.key(11), "Si8", 8)
    return wc, jc.compact(reconstruct(wc))


def build_default_references() -> dict:
    """Run every ASE reference of the default suite; ``{key: outcome}``."""
    import jaxcsp as jc

    record: dict = {}
    for name, method, n in DEFAULT_RUNS:
        pot = POTENTIALS[name]()
        images = relax_set(name)[:n]
        spec = shared_spec(pot, jc.io.from_ase(images))
        for i, atoms in enumerate(images):
            ase_reference(
                atoms,
                pot,
                name,
                optimizer=method,
                cell=bool(i % 2),
                fmax=FMAX,
                steps=1000,
                n_pad=max(len(a) for a in images),
                spec=spec,
                record=record,
            )
    pot = POTENTIALS["sw"]()
    _, c0 = symmetric_starts()
    spec = shared_spec(pot, c0)
    for atoms in jc.io.to_ase(c0):
        symmetric_reference(atoms, pot, spec, record=record)
    return record


def symmetric_reference(atoms, potential, spec, record: dict | None = None):
    """ASE ``FixSymmetry`` + ``FrechetCellFilter`` + ``BFGSLineSearch`` of one Si8 start (SW)."""
    return ase_reference(
        atoms,
        potential,
        "sw",
        optimizer="bfgs_linesearch",
        cell=True,
        fmax=0.01,
        steps=500,
        n_pad=8,
        spec=spec,
        fix_symmetry=True,
        record=record,
    )
