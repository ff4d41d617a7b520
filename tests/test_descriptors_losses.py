"""Coordination numbers (PyXtal's bond rule), CN validity, smooth CN, descriptor losses."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcsp.symmetry as sym
from jaxcsp.crystal import Crystals
from jaxcsp.descriptors import (
    SO3Settings,
    bond_cutoffs,
    coordination_numbers,
    descriptor_loss,
    reference_spectrum,
    site_centers,
    smooth_coordination_numbers,
    spectrum_loss,
    valid_environment,
)
from jaxcsp.errors import InvalidArgumentError, InvalidStructureError
from jaxcsp.neighbors import neighbor_list, neighbor_list_spec

LEGO_X = [11.111, 2.640, 0.290, 0.751, 0.421, 0.872]


def _pyxtal_so3(settings=SO3Settings()):
    import scipy.special as sp

    if not hasattr(sp, "sph_harm"):
        sp.sph_harm = lambda m, l, az, pol: sp.sph_harm_y(l, m, pol, az)
    from pyxtal.lego.SO3 import SO3

    return SO3(**dataclasses.asdict(settings))


@functools.cache
def _pyxtal_batch():
    """The lego test crystal plus a few random carbon crystals (PyXtal objects)."""
    from pyxtal import pyxtal

    out = []
    x = pyxtal()
    x.from_spg_wps_rep(179, ["6a"] * 4, LEGO_X, ["C"] * 4)
    out.append(x)
    for spg, n, seed in [(191, 6, 1), (166, 6, 2), (194, 8, 3), (141, 8, 4), (227, 8, 5)]:
        y = pyxtal()
        y.from_random(3, spg, ["C"], [n], random_state=seed)
        out.append(y)
    return out


def test_pyxtal_bond_cutoff_for_carbon():
    assert bond_cutoffs()[6, 6] == pytest.approx(1.872)


def test_coordination_matches_pyxtal():
    xtals = _pyxtal_batch()
    wc = sym.from_pyxtal(xtals)
    c = sym.reconstruct(wc)
    cn = np.asarray(coordination_numbers(c))
    centers, _ = site_centers(wc)
    for b, x in enumerate(xtals):
        x.set_site_coordination(None)
        ours = cn[b, np.asarray(centers[b, : len(x.atom_sites)])]
        assert ours.tolist() == [int(s.coordination) for s in x.atom_sites]
        assert bool(valid_environment(c.take([b]), {"C": [3]})[0]) == x.check_validity(
            {"CN": {"C": [3]}, "cutoff": None}
        )
    # the lego start: sites 6a with CN 3, 3, 1, 3 -> invalid; all atoms of a site agree
    assert cn[0, :24].reshape(4, 6).tolist() == [[3] * 6, [3] * 6, [1] * 6, [3] * 6]


def test_valid_environment_targets():
    # graphite: CN 3 everywhere
    ref = Crystals.create(
        [[2.464, 0, 0], [-1.232, 2.1339, 0], [0, 0, 6.711]],
        [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
        [6, 6, 6, 6],
    )
    assert bool(valid_environment(ref, 3)[0])
    assert bool(valid_environment(ref, [3, 4])[0])
    assert not bool(valid_environment(ref, 4)[0])
    assert bool(valid_environment(ref, {"Si": 4})[0])  # carbon unconstrained
    assert not bool(valid_environment(ref, {"C": 2})[0])
    with pytest.raises(InvalidStructureError):
        valid_environment(ref, -1)


def test_smooth_coordination_is_close_and_differentiable():
    wc = sym.from_pyxtal(_pyxtal_batch()[:3])
    c = sym.reconstruct(wc)
    cn = np.asarray(coordination_numbers(c))
    nl = neighbor_list(c, 1.872 + 0.3)
    s = smooth_coordination_numbers(c, neighbors=nl)
    assert s.dtype == c.frac.dtype
    # atoms with no neighbor near the bond cutoff: the smooth count rounds to the integer count
    from jaxcsp.neighbors import distances

    d = np.where(np.asarray(nl.mask), np.asarray(distances(c, nl)), 99.0)
    clear = np.all(np.abs(d - 1.872) > 0.25, axis=-1) & np.asarray(c.mask)
    assert clear.sum() > 10
    assert np.abs(np.asarray(s) - cn)[clear].max() < 0.1
    g = jax.grad(lambda f: jnp.sum(smooth_coordination_numbers(c.replace(frac=f), neighbors=nl)))(
        c.frac
    )
    assert bool(jnp.all(jnp.isfinite(g)))


def test_reference_spectrum_is_graphite():
    from pyxtal import pyxtal

    ref = reference_spectrum()
    assert ref.shape == (15,) and ref.dtype == np.float64
    g = pyxtal()
    g.from_spg_wps_rep(194, ["2c", "2b"], [2.464, 6.711], ["C", "C"])
    pyx = _pyxtal_so3().compute_p(g.to_ase())
    for row in pyx:  # all four atoms of graphite have the same environment within 2 Å
        np.testing.assert_allclose(ref, row, rtol=1e-8, atol=1e-8 * np.abs(ref).max())
    with pytest.raises(InvalidStructureError):
        reference_spectrum("unobtainium")
    assert reference_spectrum("graphite", SO3Settings(nmax=3, lmax=2)).shape == (18,)
    with pytest.raises(InvalidArgumentError, match="settings"):
        reference_spectrum("graphite", 2)


def test_descriptor_loss_matches_pyxtal_calculate_s():
    from pyxtal.lego.util import calculate_S

    xtals = _pyxtal_batch()
    wc = sym.from_pyxtal(xtals)
    c = sym.reconstruct(wc)
    spec = neighbor_list_spec(c, 2.0)
    ref = reference_spectrum()
    loss_fn = jax.jit(
        lambda w: descriptor_loss(w, ref, spec, per_component=False), donate_argnums=()
    )
    loss, aux = loss_fn(wc)
    assert loss.shape == (len(xtals),) and not bool(aux["overflow"].any())
    calc = _pyxtal_so3()
    for b, x in enumerate(xtals):
        refs = np.vstack([ref] * len(x.atom_sites))
        expected = calculate_S(x.get_1d_rep_x(), x, refs, calc)
        assert float(loss[b]) == pytest.approx(expected, rel=1e-8)
    # Eq. 1: each site once, divided by F
    eq1, _ = descriptor_loss(wc, ref, spec, weighting="site")
    p = np.asarray(aux["spectra"])
    mask = np.asarray(wc.site_mask)
    manual = [np.mean((p[b][mask[b]] - ref) ** 2) for b in range(len(xtals))]
    np.testing.assert_allclose(eq1, manual, rtol=1e-12)
    # gradient w.r.t. free variables is finite
    g = jax.grad(lambda cell: jnp.sum(descriptor_loss(wc.replace(cell=cell), ref, spec)[0]))(
        wc.cell
    )
    assert bool(jnp.all(jnp.isfinite(g)))
    with pytest.raises(InvalidStructureError):
        descriptor_loss(wc, ref, spec, weighting="bogus")
    with pytest.raises(InvalidArgumentError, match="settings"):
        descriptor_loss(wc, ref, spec, {"nmax": 2})
    # concrete input: max_edges="auto" counts the edges and evaluates only those; the same
    # losses and spectra as the traced (dense) call above and as the dense path forced
    eager, aux_eager = descriptor_loss(wc, ref, spec, per_component=False)
    dense, _ = descriptor_loss(wc, ref, spec, per_component=False, max_edges=None)
    np.testing.assert_allclose(eager, loss, rtol=1e-12)
    np.testing.assert_allclose(dense, loss, rtol=1e-12)
    np.testing.assert_allclose(aux_eager["spectra"], p, rtol=1e-12, atol=1e-12 * np.abs(p).max())
    assert not bool(aux_eager["overflow"].any())


def test_spectrum_loss_masking():
    p = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4)))
    ref = jnp.zeros(4)
    w = jnp.asarray([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    loss = spectrum_loss(p.at[0, 2].set(1e6), ref, w)
    expected = (2 * jnp.sum(p[0, 0] ** 2) + jnp.sum(p[0, 1] ** 2)) / (3 * 4)
    np.testing.assert_allclose(loss, [expected, 0.0], rtol=1e-12)
