"""Tests of jaxcsp.symmetry._wpc against CRYSIM's worked examples (Appendix C)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcsp.errors import InvalidStructureError
from jaxcsp.symmetry import (
    compatible_space_groups,
    crystal_system,
    parse_composition,
    wyckoff_combinations,
    wyckoff_positions,
)


def test_a4b6_in_p321_has_121_wpcs():
    wpcs = wyckoff_combinations(150, {"A": 4, "B": 6})
    assert len(wpcs) == 121
    assert len(set(wpcs)) == 121
    # general positions first: the first WPC puts B on the general position 6g
    assert wpcs[0][1] == (0,)
    # both WPCs written out in CRYSIM eq. (23) and (24) are in the list
    p321 = {w.label: w.index for w in wyckoff_positions(150)}
    eq23 = ((p321["2d"], p321["2d"]), (p321["6g"],))
    eq24 = (tuple(sorted((p321["1b"], p321["3f"]))), tuple(sorted((p321["3f"], p321["3e"]))))
    assert eq23 in wpcs and eq24 in wpcs


def test_no_cubic_a3b3c3():
    groups = compatible_space_groups({"A": 3, "B": 3, "C": 3})
    assert groups and all(crystal_system(g) != "cubic" for g in groups)


def test_a4b4_incompatible_with_f4132():
    assert wyckoff_combinations(210, "A4B4") == []
    groups = compatible_space_groups("A4B4")
    assert 210 not in groups
    counts = Counter(crystal_system(g) for g in groups)
    # CRYSIM's Method section lists 2, 12, 56, 66, 12, 19, 17. We find every one of the 13
    # monoclinic groups compatible (each has a position of multiplicity 2 or 4 with free
    # coordinates, e.g. 4i (x,0,z) twice in C2/m); the other six counts agree.
    assert counts == {
        "triclinic": 2,
        "monoclinic": 13,
        "orthorhombic": 56,
        "tetragonal": 66,
        "trigonal": 12,
        "hexagonal": 19,
        "cubic": 17,
    }


@settings(max_examples=40)
@given(st.integers(1, 230), st.integers(1, 8), st.integers(1, 8))
def test_wpcs_fill_composition_and_use_fixed_sites_once(spg, na, nb):
    wps = wyckoff_positions(spg)
    wpcs = wyckoff_combinations(spg, {"A": na, "B": nb}, max_combinations=2000)
    assert len(set(wpcs)) == len(wpcs)
    for wpc in wpcs:
        assert [sum(wps[i].multiplicity for i in part) for part in wpc] == [na, nb]
        fixed = [i for part in wpc for i in part if wps[i].dof == 0]
        assert len(fixed) == len(set(fixed))
    assert bool(wpcs) == (spg in compatible_space_groups({"A": na, "B": nb}))


def test_caps_keep_large_systems_tractable():
    wpcs = wyckoff_combinations(47, "Si32O64", max_per_element=50, max_combinations=300)
    assert 0 < len(wpcs) <= 300


def test_parse_composition():
    assert parse_composition("Si4O8") == [("Si", 4), ("O", 8)]
    assert parse_composition({"C": 8}) == [("C", 8)]
    assert parse_composition("CO2") == [("C", 1), ("O", 2)]
    for bad in ("", "si4", {"C": 0}, {"C": 1.5}, {}):
        with pytest.raises(InvalidStructureError) as e:
            parse_composition(bad)
        assert e.value.field == "composition"
