"""Tests of ``jaxcsp.neighbors`` against ASE, vesin and matscipy.

One parameterized suite runs the dense jnp reference, the XLA path and the Pallas kernel in
interpret mode on the same hypothesis-generated batches. Shapes are fixed buckets
(``(B, N) = (2, 8)`` and ``(2, 64)`` with a fixed spec: image box ``7³`` covers cutoffs up to three
cell widths) so examples do not recompile.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.neighborlist import primitive_neighbor_list
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import pallas_kernels.neighbor_list as pk
from jaxcsp.crystal import Crystals
from jaxcsp.errors import InvalidArgumentError, InvalidStructureError
from jaxcsp.neighbors import (
    CAPACITY_QUANTUM,
    NeighborListSpec,
    Neighbors,
    cell_widths,
    distances,
    edge_vectors,
    neighbor_list,
    neighbor_list_spec,
    update,
)
from jaxcsp.testing import assert_all_finite

IMPLS = ["reference", "xla", "pallas"]
#: (B, N) -> capacity K of the fixed test spec.
BUCKETS = {(2, 8): 768, (2, 64): 3072}
MAX_X = 3.0  # cutoff / shortest width
BOX = (7, 7, 7)  # floor(2 * 3) + 1


# ---------------------------------------------------------------------- helpers


def lattice_from_params(lengths, angles_deg) -> np.ndarray | None:
    a, b, c = lengths
    al, be, ga = np.deg2rad(angles_deg)
    cx = np.cos(be)
    cy = (np.cos(al) - np.cos(be) * np.cos(ga)) / np.sin(ga)
    cz2 = 1.0 - cx * cx - cy * cy
    if cz2 < 0.02:  # nearly flat or impossible angle triple
        return None
    return np.array(
        [[a, 0, 0], [b * np.cos(ga), b * np.sin(ga), 0], [c * cx, c * cy, c * np.sqrt(cz2)]]
    )


@st.composite
def crystal_params(draw, max_atoms: int):
    lengths = [draw(st.floats(1.0, 3.0)) for _ in range(3)]
    angles = [draw(st.floats(40.0, 140.0)) for _ in range(3)]
    lat = lattice_from_params(lengths, angles)
    assume(lat is not None)
    n = draw(st.integers(1, max_atoms))
    vpa = draw(st.floats(8.0, 25.0))  # Å³ per atom
    lat = lat * (n * vpa / abs(np.linalg.det(lat))) ** (1 / 3)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    frac = rng.uniform(0.0, 1.0, (n, 3))
    # Some coordinates outside [0, 1): the convention must hold for the coordinates as given.
    frac += rng.integers(-1, 2, (n, 3)) * (rng.uniform(size=(n, 1)) < 0.3)
    return lat, frac


@st.composite
def batches(draw, bucket: tuple[int, int]):
    b, n = bucket
    crystals = [draw(crystal_params(n)) for _ in range(b)]
    wmin = min(float(cell_widths(lat).min()) for lat, _ in crystals)
    hi = MAX_X * wmin
    assume(hi > 1.5)
    u = draw(st.floats(0.0, 1.0))
    cutoff = 1.5 + u * u * (hi - 1.5)
    return crystals, cutoff


def make_batch(crystals, n_max: int) -> Crystals:
    b = len(crystals)
    lat = np.stack([c[0] for c in crystals])
    frac = np.zeros((b, n_max, 3))
    species = np.zeros((b, n_max), np.int32)
    for k, (_, f) in enumerate(crystals):
        frac[k, : len(f)] = f
        species[k, : len(f)] = 14
    return Crystals.create(lat, frac, species)


def ase_triples(crystals, cutoff):
    out, dist = set(), {}
    for b, (lat, frac) in enumerate(crystals):
        i, j, s, d = primitive_neighbor_list(
            "ijSd", [True] * 3, lat, frac @ lat, cutoff, self_interaction=False
        )
        for key, dd in zip(zip([b] * len(i), i, j, *s.T, strict=True), d, strict=True):
            key = tuple(int(v) for v in key)
            out.add(key)
            dist[key] = dd
    return out, dist


def our_triples(index, shift, mask, dist=None):
    index, shift, mask = np.asarray(index), np.asarray(shift), np.asarray(mask)
    b, i, k = np.nonzero(mask)
    keys = [
        (int(bb), int(ii), int(index[bb, ii, kk]), *(int(v) for v in shift[bb, ii, kk]))
        for bb, ii, kk in zip(b, i, k, strict=True)
    ]
    if dist is None:
        return set(keys), None
    d = np.asarray(dist)
    return set(keys), {key: d[bb, ii, kk] for key, bb, ii, kk in zip(keys, b, i, k, strict=True)}


def run_impl(impl: str, c: Crystals, cutoff: float, capacity: int) -> Neighbors:
    """Public-convention lists from one of the three implementations (fixed shapes)."""
    if impl == "reference":
        w = c.wrap()
        o = jnp.round(c.frac - w.frac).astype(jnp.int32)
        raw = pk.neighbor_list_reference(
            w.frac,
            c.lattice,
            c.mask,
            jnp.asarray(cutoff),
            max_shift=(3, 3, 3),
            max_neighbors=capacity,
        )
        o_j = jax.vmap(lambda ob, jb: ob[jb])(o, raw.index)
        shift = jnp.where(raw.mask[..., None], raw.shift + o[:, :, None] - o_j, 0)
        overflow = jnp.max(raw.count, axis=-1) > capacity
        return Neighbors(raw.index, shift, raw.mask, overflow, cutoff=cutoff)
    spec = NeighborListSpec(cutoff, capacity, BOX, impl, interpret=impl == "pallas")
    return update(spec, c)


# ---------------------------------------------------------------------- vs ASE (hypothesis)


def _check_against_ase(impl, bucket, data):
    crystals, cutoff = data
    ref, ref_d = ase_triples(crystals, cutoff)
    counts = {}
    for b, i, *_ in ref:
        counts[(b, i)] = counts.get((b, i), 0) + 1
    capacity = BUCKETS[bucket]
    assume(max(counts.values(), default=0) <= capacity)
    c = make_batch(crystals, bucket[1])
    nl = run_impl(impl, c, cutoff, capacity)
    assert nl.index.shape == (*bucket, capacity) and nl.index.dtype == jnp.int32
    assert nl.shift.shape == (*bucket, capacity, 3) and nl.shift.dtype == jnp.int32
    assert nl.mask.dtype == jnp.bool_ and nl.overflow.shape == (bucket[0],)
    assert not bool(np.any(np.asarray(nl.overflow)))
    ours, our_d = our_triples(nl.index, nl.shift, nl.mask, distances(c, nl))
    assert ours == ref, (len(ours), len(ref), sorted(ours ^ ref)[:5])
    for key, d in ref_d.items():
        assert abs(our_d[key] - d) < 1e-9
    # Padded atoms have no neighbors and are nobody's neighbor.
    pad = ~np.asarray(c.mask)
    assert not np.asarray(nl.mask)[pad].any()
    assert not (
        pad[np.arange(bucket[0])[:, None, None], np.asarray(nl.index)] & np.asarray(nl.mask)
    ).any()


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=25)
@given(data=batches((2, 8)))
def test_matches_ase_small(impl, data):
    _check_against_ase(impl, (2, 8), data)


# the Pallas kernel in interpret mode on 64-atom cells is slow on CPU: it runs with the slow
# suite (the small cells above and tests/test_pallas_neighbor_list.py cover it by default)
@pytest.mark.parametrize(
    "impl", ["reference", "xla", pytest.param("pallas", marks=pytest.mark.slow)]
)
@settings(max_examples=8)
@given(data=batches((2, 64)))
def test_matches_ase_large(impl, data):
    _check_against_ase(impl, (2, 64), data)


@settings(max_examples=60)
@given(data=batches((3, 16)))
def test_spec_capacity_is_the_largest_neighbor_count(data):
    """``neighbor_list_spec`` counts on the host (no compilation): its capacity with no head-room
    is the largest count of any atom in ASE's neighbor list."""
    crystals, cutoff = data
    ref, _ = ase_triples(crystals, cutoff)
    counts = {}
    for b, i, *_ in ref:
        counts[(b, i)] = counts.get((b, i), 0) + 1
    batch = make_batch(crystals, 16)
    spec = neighbor_list_spec(batch, cutoff, capacity_headroom=0.0, round_capacity=False)
    assert spec.max_neighbors == max(1, max(counts.values(), default=0))
    rounded = neighbor_list_spec(batch, cutoff, capacity_headroom=0.0).max_neighbors
    assert rounded % CAPACITY_QUANTUM == 0
    assert spec.max_neighbors <= rounded < spec.max_neighbors + CAPACITY_QUANTUM


# ---------------------------------------------------------------------- fixed cases


def _skewed_cases():
    rng = np.random.default_rng(7)
    cases = []
    # Strongly skewed cell (edge lengths hide a thin width), a tiny cell with many self images,
    # and an ordinary cell, in one mixed-size batch.
    cases.append(
        (np.array([[3.0, 0, 0], [2.9, 0.6, 0], [1.4, 0.3, 2.5]]), rng.uniform(0, 1, (3, 3)))
    )
    cases.append((np.eye(3) * 1.3, rng.uniform(-2, 3, (1, 3))))
    cases.append((lattice_from_params([5.0, 6.0, 7.0], [70, 100, 120]), rng.uniform(0, 1, (8, 3))))
    return cases


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_public_wrapper_mixed_batch(backend):
    cases = _skewed_cases()
    c = make_batch(cases, 8)
    cutoff = 4.0
    nl = neighbor_list(c, cutoff, backend=backend)
    ref, ref_d = ase_triples(cases, cutoff)
    ours, our_d = our_triples(nl.index, nl.shift, nl.mask, distances(c, nl))
    assert ours == ref
    assert max(abs(our_d[k] - d) for k, d in ref_d.items()) < 1e-9
    # The tiny cell's only atom is its own neighbor through images.
    assert any(key[0] == 1 and key[1] == key[2] == 0 for key in ours)


@pytest.mark.parametrize("peer", ["vesin", "matscipy"])
def test_matches_vesin_and_matscipy(peer):
    cases = _skewed_cases()
    c = make_batch(cases, 8)
    cutoff = 3.5
    nl = neighbor_list(c, cutoff, backend="xla")
    ours, _ = our_triples(nl.index, nl.shift, nl.mask)
    ref = set()
    for b, (lat, frac) in enumerate(cases):
        pos = frac @ lat
        if peer == "vesin":
            vesin = pytest.importorskip("vesin")
            i, j, s = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(
                pos, lat, True, quantities="ijS"
            )
        else:
            ms = pytest.importorskip("matscipy.neighbours")
            i, j, s = ms.neighbour_list(
                "ijS", positions=pos, cell=lat, pbc=[True] * 3, cutoff=cutoff
            )
        ref |= {(b, int(a), int(bb), *map(int, ss)) for a, bb, ss in zip(i, j, s, strict=True)}
    assert ours == ref


def test_overflow_detected_and_recovered():
    cases = _skewed_cases()
    c = make_batch(cases, 8)
    cutoff = 4.0
    spec = neighbor_list_spec(c, cutoff, max_neighbors=3, backend="xla")
    small = update(spec, c)
    overflow = np.asarray(small.overflow)
    assert overflow.all()  # every crystal has an atom with more than 3 neighbors
    assert np.asarray(small.mask).sum(-1).max() == 3  # truncated, and flagged
    nl = neighbor_list(c, cutoff, max_neighbors=3, backend="xla")  # re-allocates
    assert nl.capacity > 3 and not np.asarray(nl.overflow).any()
    assert our_triples(nl.index, nl.shift, nl.mask)[0] == ase_triples(cases, cutoff)[0]
    # Only the crowded crystal overflows with a capacity that fits the others.
    counts = np.asarray(nl.num_neighbors).max(-1)
    spec = dataclass_replace(spec, max_neighbors=int(counts[2]))
    flags = np.asarray(update(spec, c).overflow)
    assert list(flags) == list(counts > counts[2])


def dataclass_replace(spec, **kw):
    return dataclasses.replace(spec, **kw)


def test_image_range_overflow_when_cell_shrinks():
    c = make_batch([(np.eye(3) * 6.0, np.array([[0.1, 0.2, 0.3], [0.6, 0.5, 0.4]]))], 2)
    spec = neighbor_list_spec(c, 2.5, backend="xla")
    assert spec.images == (1, 1, 1)
    assert not bool(update(spec, c).overflow[0])
    squeezed = c.replace(lattice=c.lattice * 0.6)  # widths 3.6 < 2 * 2.5: needs 2 images per axis
    assert bool(jax.jit(update)(spec, squeezed).overflow[0])


def test_update_under_jit_tracks_motion():
    cases = _skewed_cases()[2:]
    c = make_batch(cases, 8)
    spec = neighbor_list_spec(c, 3.0, backend="xla")
    step = jax.jit(update)
    moved = c.replace(frac=c.frac + 0.013 * jnp.sin(jnp.arange(24.0)).reshape(1, 8, 3))
    nl = step(spec, moved)
    lat, frac = np.asarray(moved.lattice[0]), np.asarray(moved.frac[0])
    assert our_triples(nl.index, nl.shift, nl.mask)[0] == ase_triples([(lat, frac)], 3.0)[0]
    # The same compiled function handles another cutoff-free spec without retracing shapes.
    assert nl.index.shape == (1, 8, spec.max_neighbors)


# ---------------------------------------------------------------------- gradients and invariance


def pair_energy(c: Crystals, nl: Neighbors) -> jax.Array:
    d = distances(c, nl)
    rc = nl.cutoff
    phi = jnp.exp(-d) * (1.0 - d / rc) ** 3  # smooth, vanishes at the cutoff
    return 0.5 * jnp.sum(jnp.where(nl.mask, phi, 0.0))


@pytest.mark.parametrize("backend", ["xla", "pallas"])
def test_gradients_match_finite_differences(backend):
    cases = _skewed_cases()
    c = make_batch(cases, 8)
    nl = neighbor_list(c, 3.0, backend=backend)

    def energy(frac, lattice):
        return pair_energy(c.replace(frac=frac, lattice=lattice), nl)

    gf, gl = jax.grad(energy, argnums=(0, 1))(c.frac, c.lattice)
    assert_all_finite((gf, gl))
    h = 1e-6
    rng = np.random.default_rng(3)
    for _ in range(6):
        df = jnp.asarray(rng.normal(size=c.frac.shape)) * c.mask[..., None]
        dl = jnp.asarray(rng.normal(size=c.lattice.shape))
        fd = (
            energy(c.frac + h * df, c.lattice + h * dl)
            - energy(c.frac - h * df, c.lattice - h * dl)
        ) / (2 * h)
        an = jnp.sum(gf * df) + jnp.sum(gl * dl)
        np.testing.assert_allclose(float(an), float(fd), rtol=1e-6, atol=1e-8)


def test_masked_slots_have_zero_safe_gradients():
    cases = _skewed_cases()
    c = make_batch(cases, 8)
    nl = neighbor_list(c, 3.0, backend="xla")
    g = jax.grad(lambda f: jnp.sum(distances(c.replace(frac=f), nl)))(c.frac)
    assert_all_finite(g)
    v = edge_vectors(c, nl)
    assert np.all(np.asarray(v)[~np.asarray(nl.mask)] == 0.0)


def _sorted_distances(c: Crystals, cutoff: float) -> np.ndarray:
    nl = neighbor_list(c, cutoff, backend="xla")
    d = np.asarray(distances(c, nl))[np.asarray(nl.mask)]
    return np.sort(d)


def test_rotation_translation_permutation_invariance():
    cases = _skewed_cases()
    c = make_batch(cases, 8)
    ref = _sorted_distances(c, 3.5)
    rng = np.random.default_rng(11)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.linalg.det(q))  # proper rotation
    rotated = c.replace(lattice=c.lattice @ jnp.asarray(q))
    np.testing.assert_allclose(_sorted_distances(rotated, 3.5), ref, atol=1e-10)
    shifted = c.replace(
        frac=jnp.where(c.mask[..., None], c.frac + jnp.asarray([0.37, -1.2, 2.5]), 0.0)
    )
    np.testing.assert_allclose(_sorted_distances(shifted, 3.5), ref, atol=1e-10)
    permuted = make_batch([(lat, f[rng.permutation(len(f))]) for lat, f in cases], 8)
    np.testing.assert_allclose(_sorted_distances(permuted, 3.5), ref, atol=1e-10)


# ---------------------------------------------------------------------- API details


def test_float32_dtypes_and_shapes():
    cases = _skewed_cases()
    c = make_batch(cases, 8)
    c32 = c.replace(lattice=c.lattice.astype(jnp.float32), frac=c.frac.astype(jnp.float32))
    nl = neighbor_list(c32, 3.0)
    assert nl.index.dtype == jnp.int32 and nl.shift.dtype == jnp.int32
    d = distances(c32, nl)
    assert d.dtype == jnp.float32 and d.shape == nl.mask.shape
    assert edge_vectors(c32, nl).shape == (*nl.mask.shape, 3)
    ours = our_triples(nl.index, nl.shift, nl.mask)[0]
    ref = ase_triples(cases, 3.0)[0]
    assert len(ours ^ ref) <= 2  # float32 may flip pairs within ~1e-6 Å of the cutoff


def test_auto_backend_is_xla_on_cpu():
    c = make_batch(_skewed_cases()[2:], 8)
    spec = neighbor_list_spec(c, 3.0)
    assert spec.backend == ("pallas" if jax.default_backend() == "gpu" else "xla")
    assert hash(spec) == hash(neighbor_list_spec(c, 3.0))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(cutoff=0.0),
        dict(cutoff=-1.0),
        dict(cutoff=math.nan),
        dict(cutoff=math.inf),
        dict(cutoff=None),
        dict(cutoff=3.0, max_neighbors=0),
        dict(cutoff=3.0, max_neighbors=2.5),
        dict(cutoff=3.0, backend="cuda"),
    ],
)
def test_bad_input_raises_typed_errors(kwargs):
    c = make_batch(_skewed_cases()[2:], 8)
    cutoff = kwargs.pop("cutoff")
    with pytest.raises(InvalidArgumentError) as err:  # a ValueError naming the argument
        neighbor_list(c, cutoff, **kwargs)
    assert isinstance(err.value, ValueError)
    assert err.value.argument in ("cutoff", "max_neighbors", "backend")


def test_traced_input_is_rejected_with_a_clear_error():
    c = make_batch(_skewed_cases()[2:], 8)
    with pytest.raises(InvalidStructureError, match="outside jit"):
        jax.jit(lambda c: neighbor_list(c, 3.0).index)(c)


def test_update_inside_grad_and_vmap():
    """The list can be rebuilt inside a differentiated (and jitted) energy function."""
    c = make_batch(_skewed_cases(), 8)
    spec = neighbor_list_spec(c, 3.0, backend="xla")

    @jax.jit
    def energy(frac, lattice):
        moved = c.replace(frac=frac, lattice=lattice)
        return pair_energy(moved, update(spec, moved))

    gf, gl = jax.grad(energy, argnums=(0, 1))(c.frac, c.lattice)
    nl = neighbor_list(c, 3.0, backend="xla")
    ref_f, ref_l = jax.grad(
        lambda f, l: pair_energy(c.replace(frac=f, lattice=l), nl), argnums=(0, 1)
    )(c.frac, c.lattice)
    np.testing.assert_allclose(np.asarray(gf), np.asarray(ref_f), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(gl), np.asarray(ref_l), rtol=1e-10, atol=1e-12)
