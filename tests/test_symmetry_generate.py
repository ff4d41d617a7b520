"""Tests of jaxcsp.symmetry._generate: validity, intended space group (spglib), errors."""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest

from jaxcsp.errors import InvalidStructureError
from jaxcsp.symmetry import (
    compatible_space_groups,
    min_distance_margin,
    random_crystals,
    reconstruct,
    spglib_space_groups,
    wyckoff_positions,
)

spglib = pytest.importorskip("spglib")

_reconstruct = jax.jit(reconstruct)


def _dataset(lattice, frac, numbers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # spglib's OLD_ERROR_HANDLING notice
        return spglib.get_symmetry_dataset((lattice, frac, numbers), symprec=1e-3)


def _invariant_under_group(lattice, frac, species, spg, tol=1e-6):
    """Every operation of the group (its general position) maps the atom set onto itself."""
    gen = wyckoff_positions(spg)[0]
    for r, t in zip(gen.rotations, gen.translations, strict=True):
        img = frac @ r.T + t
        d = img[:, None, :] - frac[None, :, :]
        d -= np.round(d)
        dist = np.linalg.norm(d @ lattice, axis=-1)
        dist = np.where(species[:, None] == species[None, :], dist, np.inf)
        if not np.all(dist.min(1) < tol):
            return False
    return True


def _check_groups_by_multiplicity(max_multiplicity: int) -> int:
    """Groups whose general multiplicity ``m`` is at most ``max_multiplicity``, compositions
    C_m Si_m: each structure has its own group (spglib, symprec 1e-3), carries every operation
    of it, and keeps the distance rule. Returns the number of groups checked."""
    key = jax.random.key(0)
    by_m: dict[int, list[int]] = {}
    for g in range(1, 231):
        by_m.setdefault(wyckoff_positions(g)[0].multiplicity, []).append(g)
    checked = 0
    for m, groups in sorted(by_m.items()):
        key, sub = jax.random.split(key)
        if m > max_multiplicity:
            continue
        wc = random_crystals(sub, {"C": m, "Si": m}, len(groups), spg=groups)
        np.testing.assert_array_equal(wc.spg, groups)
        assert np.all(np.asarray(wc.num_atoms) == 2 * m)
        c = _reconstruct(wc)
        lat, frac, sp, mask = (np.asarray(a) for a in (c.lattice, c.frac, c.species, c.mask))
        for i, g in enumerate(groups):
            ds = _dataset(lat[i], frac[i][mask[i]], sp[i][mask[i]])
            assert ds.number == g
            assert _invariant_under_group(lat[i], frac[i][mask[i]], sp[i][mask[i]], g)
        assert np.all(min_distance_margin(wc) >= 0)
        checked += len(groups)
    return checked


def test_groups_up_to_multiplicity_8_get_their_own_space_group_from_spglib():
    """The 116 groups whose general position (conventional cell) has at most 8 points: six
    multiplicities, every crystal system but cubic (whose groups start at 12); all 230 in the
    slow test below. Accidental supergroups are avoided by construction in
    ``random_crystals`` (candidates whose spglib group differs are redrawn); this re-checks
    the returned structures independently, and the distance rule."""
    assert _check_groups_by_multiplicity(8) == 116


@pytest.mark.slow
def test_every_group_gets_its_own_space_group_from_spglib():
    """All 230 groups (general multiplicities up to 192 atoms of each element)."""
    assert _check_groups_by_multiplicity(192) == 230


def test_unchecked_generation_is_symmetric_and_at_least_the_group():
    """Without the spglib filter, structures still carry every operation of their group."""
    wc = random_crystals(jax.random.key(1), "Si4O8", 48, check_symmetry=False)
    c = _reconstruct(wc)
    lat, frac, sp, mask = (np.asarray(a) for a in (c.lattice, c.frac, c.species, c.mask))
    same = 0
    for i, g in enumerate(np.asarray(wc.spg)):
        g = int(g)
        assert _invariant_under_group(lat[i], frac[i][mask[i]], sp[i][mask[i]], g)
        ds = _dataset(lat[i], frac[i][mask[i]], sp[i][mask[i]])
        # a supergroup in the same cell has at least as many operations
        assert len(ds.rotations) >= wyckoff_positions(g)[0].multiplicity
        same += ds.number == g
    assert same >= 1


def test_composition_volume_and_determinism():
    wc = random_crystals(jax.random.key(2), {"Si": 4, "O": 8}, 16)
    assert wc.batch_size == 16
    assert set(np.asarray(wc.spg).tolist()) <= set(compatible_space_groups("Si4O8"))
    c = _reconstruct(wc)
    sp = np.asarray(c.species)
    assert np.all((sp == 14).sum(1) == 4) and np.all((sp == 8).sum(1) == 8)
    vol = np.asarray(c.volume)
    assert np.all(vol > 12 * 4.0) and np.all(vol < 12 * 60.0)
    np.testing.assert_array_equal(spglib_space_groups(wc), wc.spg)
    wc2 = random_crystals(jax.random.key(2), {"Si": 4, "O": 8}, 16)
    np.testing.assert_array_equal(wc2.cell, wc.cell)
    np.testing.assert_array_equal(wc2.coords, wc.coords)


def test_bad_generation_input():
    with pytest.raises(InvalidStructureError) as e:
        random_crystals(jax.random.key(0), "C4N4", 3, spg=210)
    assert e.value.field == "composition" and e.value.index == 0
    with pytest.raises(InvalidStructureError) as e:
        random_crystals(jax.random.key(0), "C4", 2, spg=[1, 231])
    assert e.value.field == "spg" and e.value.index == 1
    with pytest.raises(InvalidStructureError) as e:
        random_crystals(jax.random.key(0), "Xq4", 2)
    assert e.value.field in ("species", "composition")
