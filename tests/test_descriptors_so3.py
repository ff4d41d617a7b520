"""SO(3) power spectrum: PyXtal reference, invariances, periodic images, gradients, dtypes."""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.geometry import cellpar_to_cell
from ase.io import read
from scipy.spatial.transform import Rotation

import jaxcsp.io as jio
from jaxcsp.crystal import Crystals
from jaxcsp.descriptors import SO3Settings, num_so3_components, so3_basis, so3_power_spectrum
from jaxcsp.descriptors._so3 import _auto_max_edges, _radial_exact, _real_sph_harm
from jaxcsp.errors import InvalidArgumentError, InvalidStructureError
from jaxcsp.neighbors import neighbor_list, neighbor_list_spec, update
from jaxcsp.runtime import CompileCounter

DATA = pathlib.Path(__file__).resolve().parents[1] / "jaxcsp" / "data" / "structures"


def pyxtal_so3(settings=SO3Settings()):
    """PyXtal's SO3 calculator of ``settings``; shims ``scipy.special.sph_harm`` (removed in
    scipy 1.17)."""
    import scipy.special as sp

    if not hasattr(sp, "sph_harm"):
        # old signature sph_harm(m, l, azimuth, polar) -> new sph_harm_y(l, m, polar, azimuth)
        sp.sph_harm = lambda m, l, az, pol: sp.sph_harm_y(l, m, pol, az)
    from pyxtal.lego.SO3 import SO3

    return SO3(**dataclasses.asdict(settings))  # PyXtal's keywords are the same fields


def assert_spectra_close(ours, ref, rel=1e-8):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, rtol=rel, atol=rel * scale)


@pytest.mark.parametrize("name", ["graphite", "diamond"])
def test_shipped_structures_match_pyxtal(name):
    atoms = read(DATA / f"{name}.cif")
    # PyXtal looks only at the 27 neighboring cells: compare on a cell wider than rcut
    atoms = atoms.repeat((2, 2, 1)) if name == "graphite" else atoms
    ref = pyxtal_so3().compute_p(atoms)
    c = jio.from_ase([atoms])
    p = so3_power_spectrum(c)
    assert p.shape == (1, len(atoms), 15) and p.dtype == jnp.float64
    assert_spectra_close(p[0], ref)


def _random_structures(rng, n, rcut, elements, max_atoms):
    out = []
    while len(out) < n:
        lengths = rng.uniform(rcut * 1.15, rcut * 2.5, 3)
        angles = rng.uniform(60, 120, 3)
        lat = cellpar_to_cell(np.concatenate([lengths, angles]))
        vol = abs(np.linalg.det(lat))
        widths = vol / np.linalg.norm(np.cross(lat[[1, 2, 0]], lat[[2, 0, 1]]), axis=1)
        if widths.min() <= rcut * 1.01:  # PyXtal's 27-image search needs cells wider than rcut
            continue
        k = int(rng.integers(1, max_atoms + 1))
        frac = rng.uniform(0, 1, (k, 3))
        numbers = rng.choice(elements, k)
        rot = Rotation.random(random_state=int(rng.integers(2**31))).as_matrix()
        out.append(Atoms(numbers=numbers, scaled_positions=frac, cell=lat @ rot.T, pbc=True))
    return out


SETTINGS = [
    # (nmax, lmax, rcut, alpha, weight_on), count
    (SO3Settings(2, 4, 2.0, 1.5, False), 30),
    (SO3Settings(3, 3, 3.0, 2.0, True), 30),
    (SO3Settings(4, 6, 2.5, 1.0, True), 25),
    (SO3Settings(1, 2, 3.5, 0.7, False), 25),
]


def _setting_id(case):
    s = case[0]
    return f"n{s.nmax}l{s.lmax}rc{s.rcut}a{s.alpha}w{s.weight_on}"


@pytest.mark.parametrize("case", SETTINGS, ids=_setting_id)
def test_random_structures_match_pyxtal(case):
    settings, count = case
    rng = np.random.default_rng(settings.nmax * 100 + settings.lmax)
    structures = _random_structures(rng, count, settings.rcut, [1, 6, 8, 14, 26], 8)
    c = jio.from_ase(structures, max_atoms=8)
    p = np.asarray(so3_power_spectrum(c, settings))
    assert p.shape == (count, 8, num_so3_components(settings.nmax, settings.lmax))
    assert p.shape[-1] == settings.num_components
    calc = pyxtal_so3(settings)
    for b, atoms in enumerate(structures):
        ref = calc.compute_p(atoms)
        assert_spectra_close(p[b, : len(atoms)], ref)
        assert np.all(p[b, len(atoms) :] == 0.0)


def test_radial_basis_matches_quadrature():
    for setting in [(2, 4, 2.0, 1.5), (5, 7, 4.0, 2.5)]:
        basis = so3_basis(SO3Settings(*setting))
        r = np.linspace(0, setting[2], 257)
        exact = _radial_exact(r, *setting).reshape(len(r), -1)
        approx = np.polynomial.chebyshev.chebval(2 * r / setting[2] - 1, basis.cheb).T
        assert np.abs(approx - exact).max() < 1e-11 * np.abs(exact).max()


def test_real_harmonics_addition_theorem():
    # sum_m Y_lm(a) Y_lm(b) = (2l + 1) / (4 pi) P_l(a . b) with orthonormal harmonics
    from scipy.special import eval_legendre

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 50, 3))
    a /= np.linalg.norm(a, axis=-1, keepdims=True)
    b /= np.linalg.norm(b, axis=-1, keepdims=True)
    lmax = 8
    basis = so3_basis(SO3Settings(1, lmax, 2.0, 1.0))
    ya = np.asarray(_real_sph_harm(jnp.asarray(a), lmax, basis.ylm_norm))
    yb = np.asarray(_real_sph_harm(jnp.asarray(b), lmax, basis.ylm_norm))
    for l in range(lmax + 1):
        q = basis.l_of_q == l
        lhs = np.sum(ya[:, q] * yb[:, q], axis=-1)
        rhs = (2 * l + 1) / (4 * np.pi) * eval_legendre(l, np.sum(a * b, axis=-1))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-12, atol=1e-13)


@functools.cache
def _small_batch():
    rng = np.random.default_rng(7)
    return _random_structures(rng, 3, 2.0, [6, 7], 6)


def test_rotation_translation_permutation_invariance():
    structures = _small_batch()
    c = jio.from_ase(structures, max_atoms=6)
    signed = SO3Settings(weight_on=True)
    p = np.asarray(so3_power_spectrum(c, signed))
    # rotation (and reflection) of the whole crystal: same spectra
    rot = Rotation.random(random_state=3).as_matrix()
    refl = np.diag([1.0, -1.0, 1.0])
    for m in (rot, rot @ refl):
        c2 = c.replace(lattice=c.lattice @ jnp.asarray(m.T))
        np.testing.assert_allclose(so3_power_spectrum(c2, signed), p, atol=1e-11)
    # rigid translation (also by non-lattice vectors, unwrapped coordinates): same spectra
    c3 = c.replace(frac=c.frac + jnp.asarray([0.37, -1.21, 2.5]))
    np.testing.assert_allclose(so3_power_spectrum(c3, signed), p, atol=1e-11)
    # permutation of atoms (inside the real atoms of each crystal): permuted spectra
    perm = np.arange(6)
    n0 = len(structures[0])
    perm[:n0] = np.random.default_rng(1).permutation(n0)
    c4 = c.replace(frac=c.frac[:, perm], species=c.species[:, perm], mask=c.mask[:, perm])
    p4 = np.asarray(so3_power_spectrum(c4, signed))
    np.testing.assert_allclose(p4[0], p[0, perm], atol=1e-11)


def test_periodic_images_thin_cells_and_supercells():
    # a cell thinner than rcut: images of an atom's own cell are neighbors. Its spectra must equal
    # those of the corresponding atoms of a supercell that is wider than rcut (where PyXtal's
    # 27-image search is exact).
    lat = cellpar_to_cell([1.3, 1.6, 3.1, 80, 95, 110])
    atoms = Atoms("CN", scaled_positions=[[0.1, 0.2, 0.3], [0.55, 0.6, 0.8]], cell=lat, pbc=True)
    sup = atoms.repeat((3, 3, 2))
    c = jio.from_ase([atoms])
    cs = jio.from_ase([sup])
    settings = SO3Settings(nmax=3, lmax=4, rcut=3.0, alpha=1.2, weight_on=True)
    p = np.asarray(so3_power_spectrum(c, settings))[0]
    ps = np.asarray(so3_power_spectrum(cs, settings))[0]
    ref = pyxtal_so3(settings).compute_p(sup)
    assert_spectra_close(ps, ref)
    np.testing.assert_allclose(
        ps.reshape(-1, 2, p.shape[-1]),
        np.broadcast_to(p, (18, 2, 30)),
        rtol=1e-10,
        atol=1e-10 * np.abs(p).max(),
    )
    # a single atom in a small cubic cell has only images as neighbors
    one = Crystals.create(np.eye(3) * 1.4, [[0.0, 0.0, 0.0]], [6])
    p1 = np.asarray(so3_power_spectrum(one))[0, 0]
    big = Atoms("C", positions=[[0, 0, 0]], cell=np.eye(3) * 1.4, pbc=True).repeat(2)
    ref1 = pyxtal_so3().compute_p(big)[0]
    assert_spectra_close(p1, ref1)


def test_gradients_match_finite_differences():
    structures = _small_batch()[:2]
    c = jio.from_ase(structures, max_atoms=6)
    nl = neighbor_list(c, 2.0 * 1.3)  # generous cutoff: fixed list while perturbing
    w = jnp.asarray(np.random.default_rng(2).normal(size=(2, 6, 15)))

    def f(frac, lattice):
        cc = c.replace(frac=frac, lattice=lattice)
        return jnp.sum(w * so3_power_spectrum(cc, SO3Settings(weight_on=True), neighbors=nl))

    g_frac, g_lat = jax.jit(jax.grad(f, argnums=(0, 1)))(c.frac, c.lattice)
    rng = np.random.default_rng(3)
    h = 1e-6
    for _ in range(4):
        df = jnp.asarray(rng.normal(size=c.frac.shape)) * c.mask[..., None]
        dl = jnp.asarray(rng.normal(size=c.lattice.shape)) * 0.1
        fd = (f(c.frac + h * df, c.lattice + h * dl) - f(c.frac - h * df, c.lattice - h * dl)) / (
            2 * h
        )
        an = jnp.sum(g_frac * df) + jnp.sum(g_lat * dl)
        np.testing.assert_allclose(float(an), float(fd), rtol=1e-6, atol=1e-7 * abs(float(fd)))


def test_jit_with_neighbor_update_and_centers():
    structures = _small_batch()
    c = jio.from_ase(structures, max_atoms=6)
    spec = neighbor_list_spec(c, 2.0)

    @jax.jit
    def spectra(cc, centers):
        nl = update(spec, cc)
        return so3_power_spectrum(cc, neighbors=nl, centers=centers), nl.overflow

    centers = jnp.asarray([[0, 2], [1, 0], [0, 0]])
    p, overflow = spectra(c, centers)
    assert not bool(overflow.any())
    full = np.asarray(so3_power_spectrum(c))
    np.testing.assert_allclose(
        p, np.take_along_axis(full, np.asarray(centers)[..., None], 1), atol=1e-12
    )
    # batch-wide compacted edge list: same spectra; crystals that do not fit get NaN
    nl = neighbor_list(c, 2.0)
    edges = int(np.asarray(nl.mask).sum())
    compact = jax.jit(
        lambda cc, k: so3_power_spectrum(cc, neighbors=nl, max_edges=k), static_argnums=1
    )
    np.testing.assert_allclose(compact(c, edges), full, atol=1e-12)
    short = np.asarray(compact(c, edges - 1))
    assert np.isnan(short[-1]).all() and np.allclose(short[:-1], full[:-1], atol=1e-12)
    with pytest.raises(InvalidStructureError):
        jax.jit(lambda cc: so3_power_spectrum(cc))(c)
    with pytest.raises(InvalidStructureError):
        so3_power_spectrum(c, neighbors=neighbor_list(c, 1.0))


def test_float32_smoke():
    structures = _small_batch()
    c64 = jio.from_ase(structures, max_atoms=6)
    c32 = jio.from_ase(structures, max_atoms=6, dtype=jnp.float32)
    p32 = so3_power_spectrum(c32)
    assert p32.dtype == jnp.float32
    p64 = np.asarray(so3_power_spectrum(c64))
    np.testing.assert_allclose(np.asarray(p32), p64, rtol=1e-4, atol=1e-4 * np.abs(p64).max())
    g = jax.grad(
        lambda f: jnp.sum(
            so3_power_spectrum(c32.replace(frac=f), neighbors=neighbor_list(c32, 2.0))
        )
    )(c32.frac)
    assert g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g)))


def test_coincident_atoms_are_finite():
    # two atoms on top of each other: spectrum and gradient stay finite (l = 0 sees the pair)
    c = Crystals.create(np.eye(3) * 3.0, [[0.1, 0.1, 0.1], [0.1, 0.1, 0.1]], [6, 6])
    nl = neighbor_list(c, 2.0)
    p = so3_power_spectrum(c, neighbors=nl)
    g = jax.grad(lambda f: jnp.sum(so3_power_spectrum(c.replace(frac=f), neighbors=nl)))(c.frac)
    assert bool(jnp.all(jnp.isfinite(p))) and bool(jnp.all(jnp.isfinite(g)))


# ---------------------------------------------------------------------- settings, "auto" path


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("nmax", 0),
        ("nmax", 12),
        ("nmax", 2.0),
        ("nmax", True),
        ("lmax", -1),
        ("lmax", 33),
        ("lmax", 1.5),
        ("rcut", 0.0),
        ("rcut", -2.0),
        ("rcut", math.inf),
        ("rcut", math.nan),
        ("rcut", "2.0"),
        ("rcut", None),
        ("alpha", 0),
        ("alpha", math.nan),
        ("alpha", True),
        ("weight_on", "yes"),
        ("weight_on", 2),
    ],
)
def test_settings_validation(field, value):
    with pytest.raises(InvalidArgumentError) as err:
        SO3Settings(**{field: value})
    assert isinstance(err.value, ValueError)
    assert err.value.argument == field and field in str(err.value)


def test_settings_reject_traced_numbers():
    with pytest.raises(InvalidArgumentError, match="rcut"):
        jax.jit(lambda r: SO3Settings(rcut=r).num_components)(2.0)


def test_settings_are_hashable_values():
    s = SO3Settings()
    same = SO3Settings(nmax=np.int64(2), rcut=2, alpha=np.float32(1.5), weight_on=np.bool_(False))
    assert s == same == SO3Settings(2, 4, 2.0, 1.5, False) and hash(s) == hash(same)
    assert (type(same.nmax), type(same.rcut), type(same.alpha)) == (int, float, float)
    assert same.weight_on is False and SO3Settings(weight_on=1).weight_on is True
    assert s != SO3Settings(weight_on=True) and s != SO3Settings(lmax=3)
    assert len({s, same, SO3Settings(weight_on=True), SO3Settings(lmax=3)}) == 3
    assert (s.num_components, SO3Settings(3, 2).num_components) == (15, 18)
    assert s.num_components == num_so3_components(s.nmax, s.lmax)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.nmax = 3  # type: ignore[misc]
    # one cached basis per setting (weight_on does not enter it)
    assert so3_basis(s) is so3_basis(same) is so3_basis(SO3Settings(weight_on=True))
    # anything but an SO3Settings is refused by name, as is a bad capacity
    c = jio.from_ase(_small_batch(), max_atoms=6)
    with pytest.raises(InvalidArgumentError, match="settings"):
        so3_power_spectrum(c, 3)
    with pytest.raises(InvalidArgumentError, match="settings"):
        so3_basis({"nmax": 2})
    for bad in (0, "fast", 2.5, True):
        with pytest.raises(InvalidArgumentError, match="max_edges"):
            so3_power_spectrum(c, max_edges=bad)


def _real_batch():
    """Shipped structures of different sizes in one padded batch (8, 4 and 16 atoms)."""
    graphite = read(DATA / "graphite.cif")
    return jio.from_ase([read(DATA / "diamond.cif"), graphite, graphite.repeat((2, 2, 1))])


@pytest.mark.parametrize(
    "settings", [SO3Settings(), SO3Settings(3, 3, 3.0, 2.0, True)], ids=["default", "n3l3rc3"]
)
def test_auto_capacity_equals_the_dense_path(settings):
    c = _real_batch()
    dense = np.asarray(so3_power_spectrum(c, settings, max_edges=None))
    scale = np.abs(dense).max()
    auto = np.asarray(so3_power_spectrum(c, settings))  # the default: max_edges="auto"
    np.testing.assert_allclose(auto, dense, rtol=1e-12, atol=1e-12 * scale)
    centers = jnp.asarray([[0, 7], [3, 0], [15, 2]])
    np.testing.assert_allclose(
        so3_power_spectrum(c, settings, centers=centers),
        np.take_along_axis(dense, np.asarray(centers)[..., None], 1),
        rtol=1e-12,
        atol=1e-12 * scale,
    )
    # mixed species, signed weights
    cm = jio.from_ase(_small_batch(), max_atoms=6)
    signed = dataclasses.replace(settings, weight_on=True)
    dm = np.asarray(so3_power_spectrum(cm, signed, max_edges=None))
    np.testing.assert_allclose(
        so3_power_spectrum(cm, signed), dm, rtol=1e-12, atol=1e-12 * np.abs(dm).max()
    )


def test_auto_capacity_buckets_share_one_program():
    # rcut between diamond's second shell (2.52 Å) and its 4 % expansion (2.62 Å): the two
    # batches have the same shapes but different edge counts, in the same capacity bucket
    settings = SO3Settings(nmax=2, lmax=3, rcut=2.6)
    c1 = _real_batch()
    c2 = c1.replace(lattice=c1.lattice * 1.04)
    spec = neighbor_list_spec(c1, settings.rcut)
    nl1, nl2 = update(spec, c1), update(spec, c2)
    assert not bool(nl1.overflow.any() | nl2.overflow.any())

    def count(c, nl):
        from jaxcsp.neighbors import edge_vectors

        v = np.asarray(edge_vectors(c, nl))
        return int(np.sum(np.asarray(nl.mask) & (np.sum(v * v, -1) < settings.rcut**2)))

    n1, n2 = count(c1, nl1), count(c2, nl2)
    assert n1 != n2 and n1 < 512 and n2 < 512, (n1, n2)
    # both are compacted into the smallest bucket (the dense path would be None)
    assert _auto_max_edges(c1, nl1, settings) == _auto_max_edges(c2, nl2, settings) == 512
    with CompileCounter() as first:
        p1 = so3_power_spectrum(c1, settings, neighbors=nl1)
    with CompileCounter() as second:
        p2 = so3_power_spectrum(c2, settings, neighbors=nl2)
    assert first.count >= 1 and second.count == 0, (first.count, second.count)
    for c, nl, p in ((c1, nl1, p1), (c2, nl2, p2)):
        dense = np.asarray(so3_power_spectrum(c, settings, neighbors=nl, max_edges=None))
        np.testing.assert_allclose(p, dense, rtol=1e-12, atol=1e-12 * np.abs(dense).max())
