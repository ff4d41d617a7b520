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
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

from jaxcsp import neighbors as nb
from jaxcsp.calculator import _calculate_with_update
from jaxcsp.io import from_ase
from jaxcsp.potentials._base import Potential, check_species, species_tuple
from jaxcsp.potentials._bridge import host_potential

__all__ = ["JaxcspCalculator", "from_ase_calculator"]


class JaxcspCalculator(Calculator):
    """ASE calculator for a jaxcsp :class:`~jaxcsp.potentials.Potential`.

    Shapes are sticky: atoms are padded to a multiple of ``pad_to`` and the neighbor-list shape
    (capacity and image range, with head-room) is kept between calls, so an ASE optimizer or MD
    run compiles once instead of every time the neighbor count changes; the shape only grows
    (one recompilation) when a list would overflow, and is never truncated.

    Args:
      potential: any jaxcsp potential.
      pad_to: atom counts are padded up to a multiple of this.
      capacity_headroom, cell_headroom: head-room of the kept neighbor-list shape (see
        :func:`jaxcsp.neighbors.neighbor_list_spec`).
      max_atoms: initial padded atom count (default: the first structure's, rounded up).
      spec: initial :class:`~jaxcsp.neighbors.NeighborListSpec`; share one between calculators
        of many structures so they all reuse one compiled program.
      **kwargs: passed to :class:`ase.calculators.calculator.Calculator`.

    Attributes:
      potential: the wrapped potential.
      calls: number of evaluations so far.
    """

    # ASE's Calculator declares it an instance attribute (list[str]): not a ClassVar here
    implemented_properties: list[str] = ["energy", "free_energy", "forces", "stress"]  # noqa: RUF012

    def __init__(
        self,
        potential: Potential,
        *,
        pad_to: int = 8,
        capacity_headroom: float = 0.5,
        cell_headroom: float = 0.3,
        max_atoms: int = 0,
        spec: Any = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.potential = potential
        self.pad_to = max(1, int(pad_to))
        self.capacity_headroom = capacity_headroom
        self.cell_headroom = cell_headroom
        self.calls = 0
        self._spec = spec
        self._n_pad = int(max_atoms)

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        """Compute energy (eV), forces (eV/Å) and stress (Voigt, eV/Å³) for ``atoms``."""
        super().calculate(atoms, properties, system_changes)

        n = len(self.atoms)
        if n > self._n_pad:
            self._n_pad = -(-n // self.pad_to) * self.pad_to
            self._spec = None
        c = from_ase([self.atoms], max_atoms=self._n_pad)
        check_species(self.potential, c)
        self.calls += 1
        if self.potential.cutoff is None:
            r, overflow = _calculate_with_update(self.potential, c, None), False
        else:
            if self._spec is None:
                self._spec = nb.neighbor_list_spec(
                    c,
                    float(self.potential.cutoff),
                    capacity_headroom=self.capacity_headroom,
                    cell_headroom=self.cell_headroom,
                )
            r, overflow = _calculate_with_update(self.potential, c, self._spec)
            while bool(overflow):  # grow the kept shape (one recompilation), never truncate
                self._spec = nb.neighbor_list_spec(
                    c,
                    float(self.potential.cutoff),
                    capacity_headroom=2 * self.capacity_headroom,
                    cell_headroom=2 * self.cell_headroom,
                )
                r, overflow = _calculate_with_update(self.potential, c, self._spec)
        energy = float(r.energy[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.asarray(r.forces[0, :n], dtype=np.float64),
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
