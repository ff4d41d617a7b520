"""Interatomic potentials: a small ``Potential`` protocol and classical models on multi-image lists.

* :class:`Potential` — pure energy of one crystal and its neighbors (see :mod:`._base`).
* Pair potentials: :func:`lennard_jones`, :func:`morse`, :func:`buckingham` (+ DSF Coulomb;
  :func:`buckingham_nacl`, Tosi–Fumi NaCl).
* Many-body: :func:`stillinger_weber` (Si defaults), :func:`tersoff` (LAMMPS parameter files).
* :func:`sevennet0` — the pretrained universal potential SevenNet-0 evaluated natively in JAX
  (Flax + e3nn-jax; weights converted once from the ``sevenn`` wheel, then cached).
* :mod:`jaxcsp.potentials.external` — pretrained MLIPs (SevenNet-0, CHGNet) bridged into JAX
  (optional extra ``mlip``); :func:`host_potential` — the same bridge for any batched host model;
  :mod:`jaxcsp.potentials.ase_calculator` — ASE adapters in both directions.

Energies, forces and stresses of batches come from :func:`jaxcsp.calculator.calculate`.
"""

import importlib

from jaxcsp.potentials._base import Potential, check_elements, check_species
from jaxcsp.potentials._bridge import host_potential
from jaxcsp.potentials._manybody import (
    ParameterFileError,
    read_tersoff_file,
    stillinger_weber,
    tersoff,
    tersoff_carbon,
)
from jaxcsp.potentials._pair import (
    COULOMB_CONSTANT,
    buckingham,
    buckingham_nacl,
    lennard_jones,
    morse,
)

__all__ = [
    "COULOMB_CONSTANT",
    "ParameterFileError",
    "Potential",
    "SevenNetCheckpointError",
    "buckingham",
    "buckingham_nacl",
    "check_elements",
    "check_species",
    "host_potential",
    "lennard_jones",
    "morse",
    "read_tersoff_file",
    "sevennet0",
    "stillinger_weber",
    "tersoff",
    "tersoff_carbon",
]

#: names served by :func:`__getattr__` from modules that are imported on first use (the native
#: SevenNet-0 pulls in e3nn-jax, about 1.5 s of imports that most programs never need)
_LAZY = {"sevennet0": "_sevennet", "SevenNetCheckpointError": "_sevennet"}
#: public submodules imported on first attribute access, so that ``jc.potentials.external``
#: works after ``import jaxcsp as jc`` without importing the submodule by hand
_SUBMODULES = ("external", "ase_calculator")


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"jaxcsp.potentials.{_LAZY[name]}")
        return getattr(module, name)
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxcsp.potentials.{name}")
    raise AttributeError(f"module 'jaxcsp.potentials' has no attribute {name!r}")
