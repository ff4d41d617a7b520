"""Element symbols, atomic numbers and covalent radii (from ASE's tables).

>>> atomic_numbers(["Si", "O"])
[14, 8]
>>> chemical_symbols([6, 14])
['C', 'Si']
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from ase.data import atomic_numbers as _Z
from ase.data import chemical_symbols as _SYMBOLS
from ase.data import covalent_radii as _COVALENT

from jaxcsp.errors import InvalidStructureError

__all__ = ["COVALENT_RADII", "atomic_numbers", "chemical_symbols"]

#: ``(119,)`` float64 covalent radii in Å indexed by atomic number (index 0 unused), from ASE.
COVALENT_RADII = np.asarray(_COVALENT, dtype=np.float64)


def atomic_numbers(symbols: Iterable[str]) -> list[int]:
    """Atomic numbers of element symbols (case-sensitive, e.g. ``"Si"``).

    Raises:
      InvalidStructureError: for an unknown symbol, with ``index`` = its position in ``symbols``.
    """
    out = []
    for i, s in enumerate(symbols):
        z = _Z.get(s)
        if z is None or z == 0:
            raise InvalidStructureError(f"unknown element symbol {s!r}", index=i, field="species")
        out.append(int(z))
    return out


def chemical_symbols(numbers: Iterable[int]) -> list[str]:
    """Element symbols of atomic numbers 1..118."""
    out = []
    for i, z in enumerate(numbers):
        z = int(z)
        if not 1 <= z < len(_SYMBOLS):
            raise InvalidStructureError(
                f"atomic number {z} is not an element", index=i, field="species"
            )
        out.append(_SYMBOLS[z])
    return out
