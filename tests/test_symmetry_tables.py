"""Tests of jaxcsp.symmetry._tables against PyXtal's Group/Wyckoff_position objects."""

from __future__ import annotations

import numpy as np
import pytest

from jaxcsp.errors import InvalidStructureError
from jaxcsp.symmetry import (
    crystal_system,
    num_wyckoff_positions,
    space_group_symbol,
    wyckoff_index,
    wyckoff_positions,
)

pytest.importorskip("pyxtal")


def test_tables_match_pyxtal_metadata_all_groups():
    from pyxtal.symmetry import Group

    total = 0
    for g in range(1, 231):
        group = Group(g)
        wps = wyckoff_positions(g)
        assert len(wps) == len(group) == num_wyckoff_positions(g)
        assert space_group_symbol(g) == group.symbol
        for wp, ref in zip(wps, group, strict=True):
            assert (wp.index, wp.letter, wp.multiplicity) == (
                ref.index,
                ref.letter,
                ref.multiplicity,
            )
            assert wp.rotations.shape == (wp.multiplicity, 3, 3)
            assert wp.dof == ref.get_dof()
            # free mask = the complement of PyXtal's frozen axes
            frozen = ref.get_frozen_axis()
            if frozen is not None:
                assert sorted(np.flatnonzero(~wp.free).tolist()) == sorted(frozen)
            total += 1
        # the general position is the group itself: identity first, site symmetry 1
        gen = wps[0]
        assert gen.free.all() and gen.site_symmetry == "1"
        np.testing.assert_array_equal(gen.rotations[0], np.eye(3))
    assert total == 1731


def test_coupled_special_positions():
    wp = wyckoff_positions(191)[wyckoff_index(191, "12o")]
    assert wp.free.tolist() == [True, False, True]
    o = wp.orbit([0.1, 0.0, 0.3])
    np.testing.assert_allclose(o[0], [0.1, 0.2, 0.3])
    wp = wyckoff_positions(166)[wyckoff_index(166, "h")]
    np.testing.assert_allclose(wp.orbit([0.1, 0.5, 0.3])[0], [0.1, -0.1, 0.3])
    assert wyckoff_positions(166)[-1].multiplicity == 3  # R groups in hexagonal axes
    assert wyckoff_positions(227)[wyckoff_index(227, "32e")].free.tolist() == [True, False, False]


def test_crystal_systems():
    assert [crystal_system(g) for g in (1, 3, 16, 75, 143, 168, 195)] == [
        "triclinic",
        "monoclinic",
        "orthorhombic",
        "tetragonal",
        "trigonal",
        "hexagonal",
        "cubic",
    ]


@pytest.mark.parametrize("bad", [0, 231, -1, 2.5, "x", None])
def test_bad_space_group(bad):
    with pytest.raises(InvalidStructureError) as e:
        wyckoff_positions(bad)
    assert e.value.field == "spg"


def test_bad_label():
    with pytest.raises(InvalidStructureError) as e:
        wyckoff_index(225, "7z")
    assert e.value.field == "wyckoff"


@pytest.mark.parametrize("module", ["_tables", "_wpc", "_wyckoff", "_lattice", "_generate"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"jaxcsp.symmetry.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
