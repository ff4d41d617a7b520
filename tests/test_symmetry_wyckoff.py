"""Tests of jaxcsp.symmetry._wyckoff: reconstruction vs PyXtal, gradients, tabular rows, errors."""

from __future__ import annotations

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcsp.crystal import Crystals
from jaxcsp.elements import atomic_numbers, chemical_symbols
from jaxcsp.errors import InvalidStructureError
from jaxcsp.symmetry import (
    WyckoffCrystals,
    crystal_system,
    denormalize_cell,
    free_variables,
    from_pyxtal,
    from_tabular,
    normalize_cell,
    reconstruct,
    to_pyxtal,
    to_tabular,
    validate_free_variables,
    with_free_variables,
    wyckoff_index,
    wyckoff_positions,
)
from jaxcsp.testing import assert_trees_all_close

pyxtal_mod = pytest.importorskip("pyxtal")

_reconstruct = jax.jit(reconstruct)


@functools.cache
def _all_groups_pyxtal():
    """One PyXtal structure per space group with every Wyckoff position occupied once.

    Built by PyXtal itself (``pyxtal.build``) from a random point on each position (the point is
    PyXtal's own first operation applied to a random vector); each position gets its own element.
    """
    from pyxtal import pyxtal
    from pyxtal.lattice import Lattice
    from pyxtal.symmetry import Group

    rng = np.random.default_rng(0)
    xtals = []
    for g in range(1, 231):
        group = Group(g)
        lat = Lattice(group.lattice_type, volume=1000.0, random_state=rng)
        names, nums, sites = [], [], []
        for i, wp in enumerate(group):
            pt = wp.ops[0].operate(rng.random(3))
            names.append(chemical_symbols([1 + i])[0])
            nums.append(wp.multiplicity)
            sites.append([(wp.get_label(), *pt)])
        x = pyxtal()
        x.build(g, names, nums, lat, sites)
        assert len(x.atom_sites) == len(group)
        xtals.append(x)
    return xtals


def _match_atoms(frac, species, ref_frac, ref_species, tol):
    """Bijection between two atom lists: same species, same fractional coords mod 1 within tol."""
    assert len(frac) == len(ref_frac)
    d = frac[:, None, :] - ref_frac[None, :, :]
    d -= np.round(d)
    dist = np.abs(d).max(-1)
    dist = np.where(species[:, None] == ref_species[None, :], dist, np.inf)
    close = dist < tol
    # every atom matches exactly one reference atom and vice versa
    assert np.all(close.sum(1) == 1), np.min(dist, 1).max()
    assert np.all(close.sum(0) == 1)


def test_all_230_groups_every_wyckoff_position_matches_pyxtal():
    xtals = _all_groups_pyxtal()
    wc = from_pyxtal(xtals)
    assert wc.batch_size == 230
    c = _reconstruct(wc)
    assert isinstance(c, Crystals)
    assert c.frac.dtype == jnp.float64 and c.species.dtype == jnp.int32
    frac, sp, mask, lat = (np.asarray(a) for a in (c.frac, c.species, c.mask, c.lattice))
    n_wp = 0
    for i, x in enumerate(xtals):
        ref, ref_sp = x._get_coords_and_species(absolute=False)
        n = int(mask[i].sum())
        assert n == len(ref) and not mask[i, n:].any()
        _match_atoms(
            frac[i, :n], sp[i, :n], np.asarray(ref), np.asarray(atomic_numbers(ref_sp)), 1e-8
        )
        np.testing.assert_allclose(lat[i], x.lattice.matrix, atol=1e-8)
        n_wp += len(x.atom_sites)
    assert n_wp == 1731


def test_orbits_match_pyxtal_apply_ops_per_position():
    """Every Wyckoff position's table orbit equals PyXtal's ``apply_ops`` of its generator."""
    from pyxtal.symmetry import Group

    rng = np.random.default_rng(1)
    for g in range(1, 231, 7):
        for wp_ref, wp in zip(Group(g), wyckoff_positions(g), strict=True):
            v = rng.random(3)
            ours = wp.orbit(v)
            ref = wp_ref.apply_ops(wp_ref.ops[0].operate(v))
            d = ours - ref
            assert np.abs(d - np.round(d)).max() < 1e-12
            assert wp.label == wp_ref.get_label()


def test_roundtrip_to_pyxtal():
    xtals = _all_groups_pyxtal()[::23]
    wc = from_pyxtal(xtals)
    back = from_pyxtal(to_pyxtal(wc), max_sites=wc.max_sites, max_atoms=wc.max_atoms)
    np.testing.assert_array_equal(back.wyckoff, wc.wyckoff)
    np.testing.assert_array_equal(back.site_species, wc.site_species)
    np.testing.assert_allclose(back.cell, wc.cell, atol=1e-10)
    d = np.asarray(back.coords - wc.coords)
    assert np.abs(d - np.round(d)).max() < 1e-10


def _wc_sample(max_sites=None):
    """Coupled special positions in every crystal system, mixed in one batch."""
    spec = [
        (2, ["2i", "1a"], [4.5, 7.0, 6.0, 80.0, 100.0, 110.0]),  # triclinic
        (12, ["8j", "4i"], [6.0, 5.0, 7.0, 90, 103.0, 90]),  # monoclinic (x,0,z)
        (62, ["8d", "4c"], [6.0, 5.0, 7.0, 90, 90, 90]),  # orthorhombic (x,1/4,z)
        (136, ["4f", "8j", "4g"], [6.0, 6.0, 4.0, 90, 90, 90]),  # tetragonal (x,x,0), (x,x,z)
        (166, ["18h", "6c"], [5.0, 5.0, 12.0, 90, 90, 120]),  # trigonal, R hex axes, (x,-x,z)
        (191, ["12o", "12n", "6l"], [5.0, 5.0, 4.0, 90, 90, 120]),  # hexagonal (x,2x,z)
        (227, ["96g", "32e", "48f"], [11.0, 11.0, 11.0, 90, 90, 90]),  # cubic (x,x,z), (x,x,x)
    ]
    rng = np.random.default_rng(3)
    spg = [s for s, _, _ in spec]
    wy = [[wyckoff_index(s, lab) for lab in labs] for s, labs, _ in spec]
    sp = [["Si"] * len(labs) for _, labs, _ in spec]
    xyz = [rng.random((len(labs), 3)) for _, labs, _ in spec]
    cell = np.array([c for _, _, c in spec], float)
    return WyckoffCrystals.create(spg, wy, sp, cell, xyz, max_sites=max_sites)


def _scalar(c: Crystals):
    pos = c.positions
    w = jnp.array([0.3, -0.7, 0.5])
    m = c.mask[..., None]
    return jnp.sum(jnp.where(m, jnp.sin(pos * w) + 0.01 * pos**2, 0.0)) + jnp.sum(
        jnp.cos(c.lattice)
    )


@pytest.mark.parametrize("max_sites", [None, 12])  # one-hot (S <= 8) and gather code paths
def test_gradients_match_central_differences(max_sites):
    wc = _wc_sample(max_sites)
    assert {crystal_system(int(s)) for s in wc.spg} == {
        "triclinic",
        "monoclinic",
        "orthorhombic",
        "tetragonal",
        "trigonal",
        "hexagonal",
        "cubic",
    }
    cell_free = np.asarray(wc.cell_free)
    xyz_free = np.asarray(wc.coords_free & wc.site_mask[..., None])
    idx_cell, idx_xyz = np.nonzero(cell_free), np.nonzero(xyz_free)
    n_c, n_x = len(idx_cell[0]), len(idx_xyz[0])

    def f(flat):
        cell = wc.cell.at[idx_cell].set(flat[:n_c])
        xyz = wc.coords.at[idx_xyz].set(flat[n_c:])
        return _scalar(reconstruct(wc.replace(cell=cell, coords=xyz), wrap=False))

    x0 = jnp.concatenate([wc.cell[idx_cell], wc.coords[idx_xyz]])
    g = jax.jit(jax.grad(f))(x0)
    h = 1e-5
    eye = jnp.eye(n_c + n_x) * h
    fd = (jax.jit(jax.vmap(f))(x0 + eye) - jax.jit(jax.vmap(f))(x0 - eye)) / (2 * h)
    rel = np.abs(np.asarray(g - fd)) / np.maximum(np.abs(np.asarray(fd)), 1.0)
    assert rel.max() < 1e-6, rel.max()
    # Non-free entries get exactly zero gradient.
    gc = jax.grad(lambda w: _scalar(reconstruct(w)), allow_int=True)(wc)
    assert np.all(np.asarray(gc.cell)[~cell_free] == 0)
    assert np.all(np.asarray(gc.coords)[~xyz_free] == 0)


def test_vmap_and_float32():
    wc = _wc_sample()
    c = _reconstruct(wc)
    cv = jax.jit(jax.vmap(reconstruct))(wc)
    assert_trees_all_close(cv, c, atol=1e-12)
    wc32 = wc.replace(
        cell=wc.cell.astype(jnp.float32),
        coords=wc.coords.astype(jnp.float32),
        cell_fixed=wc.cell_fixed.astype(jnp.float32),
    )
    c32 = _reconstruct(wc32)
    assert c32.frac.dtype == jnp.float32 and c32.lattice.dtype == jnp.float32
    np.testing.assert_allclose(c32.lattice, c.lattice, atol=1e-4)


def test_free_variables_normalised_roundtrip():
    wc = _wc_sample()
    cu, xu = free_variables(wc)
    assert float(cu.min()) >= 0 and float(cu.max()) <= 1
    back = with_free_variables(wc, cu, xu)
    assert_trees_all_close(_reconstruct(back), _reconstruct(wc), atol=1e-10)


@settings(max_examples=30)
@given(hnp.arrays(np.float64, (5, 6), elements=st.floats(0.0, 1.0)))
def test_normalize_cell_roundtrip(u):
    np.testing.assert_allclose(normalize_cell(denormalize_cell(u)), u, atol=1e-12)


_TAB_WC = None


def _tab_wc():
    global _TAB_WC
    if _TAB_WC is None:
        _TAB_WC = _wc_sample()
    return _TAB_WC


@settings(max_examples=25)
@given(
    st.data(),
    st.sampled_from(["radians", "degrees"]),
    st.booleans(),
)
def test_tabular_roundtrip(data, angles, normalized):
    wc = _tab_wc()
    coords = data.draw(hnp.arrays(np.float64, wc.coords.shape, elements=st.floats(0.0, 0.999)))
    wc = wc.replace(coords=jnp.asarray(coords))
    wc = WyckoffCrystals.create(wc.spg, wc.wyckoff, wc.site_species, wc.cell, wc.coords)
    rows = to_tabular(wc, angles=angles, normalized=normalized)
    assert rows.shape == (7, 39)
    assert np.all(rows[:, 7 + 4 * 3 :] == -1)
    back = from_tabular(rows, "Si", angles=angles, normalized=normalized, max_atoms=wc.max_atoms)
    np.testing.assert_array_equal(back.wyckoff[:, : wc.max_sites], wc.wyckoff)
    assert_trees_all_close(
        _reconstruct(back.take(np.arange(7))).lattice, _reconstruct(wc).lattice, atol=1e-9
    )
    fa, fb = _reconstruct(back).frac, _reconstruct(wc).frac
    d = np.asarray(fa - fb)
    assert np.abs(d - np.round(d)).max() < 1e-9
    np.testing.assert_allclose(
        to_tabular(back, angles=angles, normalized=normalized), rows, atol=1e-9
    )


def test_tabular_matches_pyxtal_representation():
    """Rows agree with PyXtal's own ``get_tabular_representation`` (radians, index 0 = general)."""
    xtals = [x for x in _all_groups_pyxtal()[::11] if len(x.atom_sites) <= 8]
    wc = from_pyxtal(xtals)
    ours = to_tabular(wc)
    for x, row in zip(xtals, ours, strict=True):
        ref = x.get_tabular_representation(N_wp=8)
        np.testing.assert_allclose(row, ref, atol=1e-8)
        refn = x.get_tabular_representation(N_wp=8, normalize=True)
    ours_n = to_tabular(from_pyxtal(xtals[-1:]), normalized=True)
    np.testing.assert_allclose(ours_n[0], refn, atol=1e-8)


# ----------------------------------------------------------------------------- bad input


def _one(spg=225, wy=(0,), sp=("Cu",), cell=(4.0, 4, 4, 90, 90, 90), xyz=((0.1, 0.2, 0.3),)):
    return WyckoffCrystals.create(
        [229, spg],
        [[1], list(wy)],
        [["Cu"], list(sp)],
        [[5.0, 5, 5, 90, 90, 90], list(cell)],
        [[(0.1, 0.1, 0.1)], [list(v) for v in xyz]],
    )


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"spg": 231}, "spg"),
        ({"spg": 0}, "spg"),
        ({"wy": (12,)}, "wyckoff"),
        ({"wy": (1.5,)}, "wyckoff"),
        ({"wy": (np.nan,)}, "wyckoff"),
        ({"wy": ("b",)}, "wyckoff"),
        ({"sp": ("Xx",)}, "species"),
        ({"sp": (0,)}, "species"),
        ({"cell": (np.nan, 4, 4, 90, 90, 90)}, "cell"),
        ({"spg": 1, "cell": (4.0, 4, 4, 10, 10, 170)}, "cell"),
        ({"xyz": ((np.inf, 0.2, 0.3),)}, "coords"),
    ],
)
def test_bad_input_names_structure_and_field(kwargs, field):
    with pytest.raises(InvalidStructureError) as e:
        _one(**kwargs)
    assert e.value.index == 1 and e.value.field == field
    assert "structure 1" in str(e.value)


def test_bad_tabular_rows_and_limits():
    rows = to_tabular(_wc_sample())
    bad = rows.copy()
    bad[4, 0] = 300
    with pytest.raises(InvalidStructureError, match="structure 4") as e:
        from_tabular(bad, "C")
    assert e.value.field == "spg"
    bad = rows.copy()
    bad[2, 9] = np.nan
    with pytest.raises(InvalidStructureError, match="structure 2") as e:
        from_tabular(bad, "C")
    assert e.value.field == "coords"
    bad = rows.copy()
    bad[5, 7] = 40
    with pytest.raises(InvalidStructureError, match="structure 5") as e:
        from_tabular(bad, "C")
    assert e.value.field == "wyckoff"
    with pytest.raises(InvalidStructureError) as e:
        from_tabular(rows[:, :20], "C")
    assert e.value.field == "rows"
    with pytest.raises(InvalidStructureError) as e:
        from_tabular(rows, "C", max_atoms=10)
    assert e.value.field == "max_atoms"
    with pytest.raises(InvalidStructureError) as e:
        to_tabular(_wc_sample(), num_sites=2)
    assert e.value.field == "wyckoff" and e.value.index == 3


def test_non_finite_free_variables_detected():
    wc = _wc_sample()
    wc = wc.replace(coords=wc.coords.at[3, 1, 0].set(jnp.nan))
    with pytest.raises(InvalidStructureError) as e:
        validate_free_variables(wc)
    assert e.value.index == 3 and e.value.field == "coords"
    with pytest.raises(InvalidStructureError) as e:
        reconstruct(wc)  # eager calls check; traced calls cannot
    assert e.value.index == 3 and e.value.field == "coords"
    assert np.isnan(np.asarray(_reconstruct(wc).frac[3])).any()
    wc = _wc_sample()
    wc = wc.replace(cell=wc.cell.at[6, 0].set(jnp.inf))
    with pytest.raises(InvalidStructureError) as e:
        validate_free_variables(wc)
    assert e.value.index == 6 and e.value.field == "cell"


@functools.cache
def _from_random_sample():
    """Full PyXtal ``from_random`` structures (PyXtal picks sites, coordinates, lattice)."""
    from pyxtal import pyxtal

    out = []
    for k, (g, species, counts) in enumerate(
        [
            (14, ["Si", "O"], [4, 8]),
            (62, ["C"], [8]),
            (141, ["Si"], [8]),
            (166, ["C"], [6]),
            (194, ["C"], [4]),
            (225, ["Na", "Cl"], [4, 4]),
            (227, ["C"], [8]),
            (2, ["Ti", "O"], [2, 4]),
        ]
    ):
        x = pyxtal()
        x.from_random(3, g, species, counts, random_state=k)
        assert x.valid
        out.append(x)
    return out


def test_pyxtal_from_random_structures_match():
    xtals = _from_random_sample()
    wc = from_pyxtal(xtals)
    c = _reconstruct(wc)
    for i, x in enumerate(xtals):
        ref, ref_sp = x._get_coords_and_species(absolute=False)
        n = int(c.num_atoms[i])
        _match_atoms(
            np.asarray(c.frac[i, :n]),
            np.asarray(c.species[i, :n]),
            np.asarray(ref),
            np.asarray(atomic_numbers(ref_sp)),
            1e-8,
        )
        # same metric (the lattice may be rotated relative to PyXtal's matrix)
        m_ref = x.lattice.matrix @ x.lattice.matrix.T
        m_ours = np.asarray(c.lattice[i] @ c.lattice[i].T)
        np.testing.assert_allclose(m_ours, m_ref, atol=1e-8)


_INVARIANCE_GROUPS = (1, 2, 5, 15, 38, 62, 88, 122, 148, 160, 176, 191, 205, 216, 227, 230)


@settings(max_examples=20)
@given(st.sampled_from(_INVARIANCE_GROUPS), st.data())
def test_reconstructed_sites_are_invariant_under_the_group(spg, data):
    """Property: every site's orbit is mapped onto itself by every operation of the group."""
    wps = wyckoff_positions(spg)
    idx = data.draw(st.lists(st.integers(0, len(wps) - 1), min_size=1, max_size=3))
    xyz = data.draw(hnp.arrays(np.float64, (len(idx), 3), elements=st.floats(0.0, 1.0)))
    wc = WyckoffCrystals.create(
        [spg],
        [idx],
        [[6 + k for k in range(len(idx))]],
        [[5.0, 6.0, 7.0, 80, 95, 100]],
        [xyz],
        max_sites=3,
        max_atoms=3 * 192,
    )
    c = _reconstruct(wc)
    n = int(c.num_atoms[0])
    frac = np.asarray(c.frac[0, :n])
    sp = np.asarray(c.species[0, :n])
    assert n == sum(wps[i].multiplicity for i in idx)
    for r, t in zip(wps[0].rotations, wps[0].translations, strict=True):
        img = frac @ r.T + t
        d = img[:, None, :] - frac[None, :, :]
        d -= np.round(d)
        dist = np.where(sp[:, None] == sp[None, :], np.abs(d).max(-1), np.inf)
        assert dist.min(1).max() < 1e-9


def test_to_pyxtal_and_tabular_project_stale_tied_coordinates():
    """An optimiser moves only the free components: the tied or fixed ones it leaves behind are
    ignored by ``reconstruct``, and PyXtal and the tabular rows must see the projected site."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.io.ase import AseAtomsAdaptor

    from jaxcsp.io import to_pymatgen
    from jaxcsp.symmetry import site_generators, to_tabular

    wc = _wc_sample()
    free = np.asarray(wc.coords_free) & np.asarray(wc.site_mask)[..., None]
    noise = np.random.default_rng(0).uniform(0, 1, free.shape)
    stale = wc.replace(coords=jnp.where(free, wc.coords, jnp.asarray(noise)))
    ours = to_pymatgen(reconstruct(stale))
    gen = site_generators(stale)
    rows = to_tabular(stale)
    for i, x in enumerate(to_pyxtal(stale)):
        n = int(np.asarray(stale.num_sites)[i])
        assert len(x.atom_sites) == n
        theirs = AseAtomsAdaptor.get_structure(x.to_ase())
        assert StructureMatcher().fit(ours[i], theirs), i
        np.testing.assert_allclose(rows[i, 7:].reshape(-1, 4)[:n, 1:], gen[i, :n], atol=1e-12)
