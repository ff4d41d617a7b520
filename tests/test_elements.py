"""Tests for jaxcsp.elements against pymatgen's periodic table (an independent table)."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Element

import jaxcsp as jc
from jaxcsp.elements import COVALENT_RADII, atomic_numbers, chemical_symbols


def test_numbers_and_symbols_agree_with_pymatgen():
    symbols = [Element.from_Z(z).symbol for z in range(1, 104)]
    assert atomic_numbers(symbols) == list(range(1, 104))
    assert chemical_symbols(range(1, 104)) == symbols


def test_covalent_radii_table():
    assert COVALENT_RADII.shape == (119,)
    np.testing.assert_allclose(COVALENT_RADII[[6, 14]], [0.76, 1.11])


def test_unknown_symbol_and_number():
    with pytest.raises(jc.InvalidStructureError, match="unknown element symbol 'si'") as e:
        atomic_numbers(["Si", "si"])
    assert e.value.index == 1 and e.value.field == "species"
    with pytest.raises(jc.InvalidStructureError, match="atomic number 0"):
        chemical_symbols([1, 0])
    with pytest.raises(jc.InvalidStructureError, match="'X'"):
        atomic_numbers(["X"])  # ASE's dummy symbol is not an element
