"""ASE adapters in both directions.

* :class:`JaxcspCalculator` — an ASE ``Calculator`` backed by any jaxcsp
  :class:`~jaxcsp.potentials.Potential`, so ASE optimizers, filters and the ASE baselines in the
  benchmarks use *exactly* the same energy (energy eV, forces eV/Å, stress eV/Å³ in ASE's Voigt
  order and sign).
* :func:`from_ase_calculator` — the reverse: any ASE calculator as a (slow, host-side, looped)
  :class:`~jaxcsp.potentials.Potential` through ``jax.pure_callback``, for comparisons.

>>> from ase.build import bulk
>>> from jaxcsp import potentials
>>> atoms = bulk("Si", "diamond", a=5.431)
>>> atoms.calc = JaxcspCalculator(potentials.stillinger_weber())
>>> round(atoms.get_potential_energy() / len(atoms), 4)
-4.3366
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

from jaxcsp.potentials._base import Potential, species_tuple
from jaxcsp.potentials._bridge import host_potential

__all__ = ["JaxcspCalculator", "from_ase_calculator"]


class JaxcspCalculator(Calculator):
    """ASE calculator for a jaxcsp :class:`~jaxcsp.potentials.Potential`.

    Each call runs :func:`jaxcsp.calculator.calculate` on a batch of one (jitted; the first call
    for a new atom count or neighbor capacity compiles).

    Args:
      potential: any jaxcsp potential.
      **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.

    Attributes:
      potential: the wrapped potential.
    """

    implemented_properties: ClassVar[list[str]] = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, potential: Potential, **kwargs: Any):
        super().__init__(**kwargs)
        self.potential = potential

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        """Compute energy (eV), forces (eV/Å) and stress (Voigt, eV/Å³) for ``atoms``."""
        super().calculate(atoms, properties, system_changes)
        from jaxcsp.calculator import calculate
        from jaxcsp.io import from_ase

        r = calculate(self.potential, from_ase([self.atoms]))
        energy = float(r.energy[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.asarray(r.forces[0], dtype=np.float64),
            "stress": full_3x3_to_voigt_6_stress(np.asarray(r.stress[0], dtype=np.float64)),
        }


class _AseHostModel:
    """Loops an ASE calculator over a batch (host side)."""

    def __init__(self, calc: Calculator | Callable[[], Calculator]):
        self._calc = calc

    def _get_calc(self) -> Calculator:
        return (
            self._calc()
            if callable(self._calc) and not isinstance(self._calc, Calculator)
            else self._calc
        )

    def compute(self, lattice, frac, species, mask):
        b, n = species.shape
        energy = np.zeros(b)
        forces = np.zeros((b, n, 3))
        stress = np.zeros((b, 3, 3))
        calc = self._get_calc()
        for i in range(b):
            m = mask[i]
            atoms = Atoms(
                numbers=species[i][m], scaled_positions=frac[i][m], cell=lattice[i], pbc=True
            )
            atoms.calc = calc
            energy[i] = atoms.get_potential_energy()
            forces[i][m] = atoms.get_forces()
            s = np.asarray(atoms.get_stress(voigt=False))
            stress[i] = s if s.shape == (3, 3) else voigt_6_to_full_3x3_stress(s)
        return energy, forces, stress


def from_ase_calculator(
    calc: Calculator | Callable[[], Calculator],
    *,
    name: str | None = None,
    species: Any = None,
) -> Potential:
    """Wrap an ASE calculator as a host-side :class:`~jaxcsp.potentials.Potential`.

    The energy is a ``jax.pure_callback`` that loops the calculator over the batch; gradients
    (forces and stress in :func:`jaxcsp.calculate`, ``jax.grad`` w.r.t. lattice/fractional
    coordinates) come from the calculator's own forces and stress via ``custom_vjp``. Slow:
    meant for comparisons and tests.

    Args:
      calc: an ASE calculator (must implement energy, forces and stress), or a zero-argument
        factory returning one.
      name: name for error messages (default: the calculator's class name).
      species: supported elements (symbols or atomic numbers), ``None`` for any.

    Returns:
      A :class:`~jaxcsp.potentials.Potential` with ``cutoff=None``.
    """
    if name is None:
        name = f"ase:{type(calc).__name__}" if isinstance(calc, Calculator) else "ase"
    return host_potential(_AseHostModel(calc), name=name, species=species_tuple(species))
