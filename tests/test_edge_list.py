"""Sparse edge lists for chosen centers (:func:`jaxcsp.neighbors.edge_list`) against ASE,
and the spectra / descriptor losses built on them against the dense neighbor-list path."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_neighbors import ase_triples, batches, make_batch

from jaxcsp.crystal import Crystals
from jaxcsp.descriptors import SO3Settings
from jaxcsp.errors import InvalidArgumentError, InvalidStructureError
from jaxcsp.neighbors import edge_list, edge_list_spec, edge_list_vectors

jax.config.update("jax_enable_x64", True)

_edges = jax.jit(edge_list)


@settings(max_examples=20, deadline=None)
@given(data=batches((3, 8)), pick=st.integers(0, 2**31 - 1))
def test_edge_list_matches_ase_for_chosen_centers(data, pick):
    crystals, cutoff = data
    c = make_batch(crystals, 8)
    rng = np.random.default_rng(pick)
    centers = rng.integers(0, 8, (3, 3))
    cmask = rng.uniform(size=(3, 3)) < 0.8
    spec = edge_list_spec(c, cutoff, centers=centers, center_mask=cmask)
    el = _edges(spec, c)
    assert not bool(np.any(np.asarray(el.overflow)))
    ref, ref_d = ase_triples(crystals, cutoff)
    real = np.asarray(c.mask)
    want = set()
    for b in range(3):
        for r in range(3):
            i = int(centers[b, r])
            if cmask[b, r] and real[b, i]:
                want |= {(b, r, *k[2:]) for k in ref if k[0] == b and k[1] == i}
    m = np.asarray(el.mask)
    got = {}
    v = np.asarray(edge_list_vectors(c, el))
    for e in np.flatnonzero(m):
        b, r = divmod(int(el.row[e]), 3)
        key = (b, r, int(el.neighbor[e]) - 8 * b, *(int(x) for x in el.shift[e]))
        assert int(el.center[e]) == 8 * b + int(centers[b, r])
        got[key] = float(np.linalg.norm(v[e]))
    assert set(got) == want, (len(got), len(want), sorted(set(got) ^ want)[:4])
    for (b, r, j, *s), d in got.items():
        assert abs(d - ref_d[(b, int(centers[b, r]), j, *s)]) < 1e-9
    assert np.all(v[~m] == 0)
    # edges are grouped by crystal, then row (segment sums may assume sorted rows)
    assert np.all(np.diff(np.asarray(el.row)[m]) >= 0)


def test_all_atoms_by_default_and_padding_ignored():
    lat = np.diag([2.5, 3.0, 3.5])
    c = Crystals.create(
        np.stack([lat, lat * 1.1]),
        np.array([[[0, 0, 0], [0.5, 0.5, 0.5]], [[0.1, 0.2, 0.3], [0, 0, 0]]]),
        np.array([[6, 6], [6, 0]]),
    )
    el = edge_list(edge_list_spec(c, 3.2), c)
    crystals = [
        (np.asarray(c.lattice[0]), np.asarray(c.frac[0])),
        (lat * 1.1, np.asarray(c.frac[1, :1])),
    ]
    ref, _ = ase_triples(crystals, 3.2)
    m = np.asarray(el.mask)
    got = set()
    for e in np.flatnonzero(m):
        b, i = divmod(int(el.row[e]), 2)
        got.add((b, i, int(el.neighbor[e]) - 2 * b, *(int(x) for x in el.shift[e])))
    assert got == ref


def _shrunk(c: Crystals, factor: float) -> Crystals:
    return c.replace(lattice=c.lattice * factor)


def test_overflow_of_capacity_and_image_box():
    c = Crystals.create(np.eye(3) * 3.0, [[0, 0, 0], [0.5, 0.5, 0.5]], [14, 14])
    spec = edge_list_spec(c, 3.1, max_edges=4)
    el = edge_list(spec, c)
    assert bool(el.overflow[0]) and int(el.count[0]) > 4
    spec = edge_list_spec(c, 3.1, cell_headroom=0.05)
    assert not bool(edge_list(spec, c).overflow[0])
    # the cell shrinks by 40 %: its image box no longer covers the cutoff
    assert bool(edge_list(spec, _shrunk(c, 0.6)).overflow[0])
    # a larger box (min_box) covers it again, with enough capacity
    big = edge_list_spec(_shrunk(c, 0.6), 3.1, min_box=np.asarray(spec.box))
    assert not bool(edge_list(big, _shrunk(c, 0.6)).overflow[0])


def test_pair_energy_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    lat = np.array([[3.1, 0.2, 0.0], [0.4, 2.9, 0.1], [0.3, -0.2, 3.3]])
    frac = rng.uniform(size=(5, 3))
    c = Crystals.create(lat, frac, [14] * 5)
    spec = edge_list_spec(c, 3.0, centers=np.array([[0, 3]]), cell_headroom=0.2)

    def energy(frac, lattice):
        x = c.replace(frac=frac, lattice=lattice)
        el = edge_list(spec, x)
        d2 = jnp.sum(edge_list_vectors(x, el) ** 2, axis=-1)
        return jnp.sum(jnp.where(el.mask, jnp.exp(-d2), 0.0))

    g_f, g_l = jax.grad(energy, argnums=(0, 1))(c.frac, c.lattice)
    h = 1e-6
    for arr, g, argn in ((c.frac, g_f, 0), (c.lattice, g_l, 1)):
        flat = np.asarray(arr).ravel()
        for k in rng.choice(flat.size, 6, replace=False):
            e = np.zeros_like(flat)
            e[k] = h
            args = [c.frac, c.lattice]
            args[argn] = jnp.asarray((flat + e).reshape(arr.shape))
            up = energy(*args)
            args[argn] = jnp.asarray((flat - e).reshape(arr.shape))
            fd = (up - energy(*args)) / (2 * h)
            assert abs(float(fd) - float(np.asarray(g).ravel()[k])) < 1e-6 * (1 + abs(float(fd)))


def test_bad_input_raises_typed_errors():
    c = Crystals.create(np.eye(3) * 3.0, [[0, 0, 0]], [14])
    with pytest.raises(InvalidArgumentError, match="centers"):
        edge_list_spec(c, 2.0, centers=np.array([[3]]))
    with pytest.raises(InvalidArgumentError, match="centers"):
        edge_list_spec(c, 2.0, centers=np.array([0]))
    with pytest.raises(InvalidArgumentError, match="cutoff"):
        edge_list_spec(c, -1.0)
    with pytest.raises(InvalidArgumentError, match="max_edges"):
        edge_list_spec(c, 2.0, max_edges=0)
    thin = Crystals.create(np.diag([3.0, 3.0, 1e-4]), [[0, 0, 0]], [14])
    with pytest.raises(InvalidStructureError, match="too thin"):
        edge_list_spec(thin, 6.0)


# ---------------------------------------------------------------------- descriptors on edges


@pytest.mark.parametrize(
    "opts",
    [
        dict(cn_weight=1.0),
        # a second loss: two more compiled value-and-grad programs
        pytest.param(
            dict(weighting="site", settings=SO3Settings(weight_on=True)), marks=pytest.mark.slow
        ),
    ],
    ids=["cn", "site"],
)
def test_spectra_and_losses_match_the_dense_path(opts):
    from jaxcsp.descriptors import (
        descriptor_loss,
        edge_list_spec_for_sites,
        reference_spectrum,
        so3_power_spectrum,
        so3_power_spectrum_edge_list,
    )
    from jaxcsp.design import _trim, generate_candidates
    from jaxcsp.neighbors import neighbor_list_spec
    from jaxcsp.optimize.descriptor import loss_cutoff
    from jaxcsp.symmetry import reconstruct

    wc = _trim(generate_candidates(jax.random.key(5), 12, dtype=jnp.float64))
    c = reconstruct(wc, wrap=False)
    so3 = SO3Settings(nmax=3, lmax=3, rcut=2.4, alpha=2.0)
    dense = so3_power_spectrum(c, so3, max_edges=None)
    el = edge_list(edge_list_spec(c, 2.4), c)
    np.testing.assert_allclose(
        so3_power_spectrum_edge_list(c, el, so3), dense, rtol=1e-10, atol=1e-10
    )

    ref = reference_spectrum("graphite")
    cut = loss_cutoff(wc, 2.0, cn_weight=1.0)
    dense_spec = neighbor_list_spec(reconstruct(wc), cut, capacity_headroom=1.0)
    sparse_spec = edge_list_spec_for_sites(wc, cut)

    def loss(cell, coords, spec):
        x = wc.replace(cell=cell, coords=coords)
        return jnp.sum(descriptor_loss(x, ref, spec, **opts)[0])

    vg = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), static_argnums=2)
    a = vg(wc.cell, wc.coords, dense_spec)
    b = vg(wc.cell, wc.coords, sparse_spec)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-10)
    for ga, gb in zip(a[1], b[1], strict=True):
        np.testing.assert_allclose(ga, gb, rtol=1e-8, atol=1e-8 * float(jnp.abs(ga).max()))
