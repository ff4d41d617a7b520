"""Kernel-level tests of ``pallas_kernels/neighbor_list.py``.

One parameterized suite (shapes × dtypes × batch × block sizes) runs the Pallas kernel in
interpret mode against its jnp twin bit for bit, and the full kernel + compaction pipeline against
the dense reference (which knows nothing of the per-pair image pruning). The kernel output is
integer (no VJP); gradients flow through ``jaxcsp.neighbors.edge_vectors``, tested in
``test_neighbors.py``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels.neighbor_list as pk
from jaxcsp.neighbors import cell_widths

CASES = [
    # (B, N, cutoff, cell scale, dtype, block) — block None = sized by crystal size.
    pytest.param(3, 5, 3.0, 4.0, jnp.float64, None, id="B3-N5-minimg-f64-16crystals/tile"),
    pytest.param(2, 40, 4.5, 8.0, jnp.float32, None, id="B2-N40-8img-f32-2x2tiles"),
    pytest.param(1, 8, 6.0, 2.2, jnp.float64, None, id="B1-N8-thin-343img-11words"),
    pytest.param(5, 20, 3.5, 5.0, jnp.float64, (2, 8, 8), id="B5-N20-block2x8x8"),
]


def _batch(b, n, scale, dtype, seed=0):
    rng = np.random.default_rng(seed)
    lat = np.stack(
        [np.eye(3) * scale + rng.normal(scale=0.25 * scale, size=(3, 3)) for _ in range(b)]
    )
    lat[np.linalg.det(lat) < 0] *= -1
    frac = rng.uniform(0, 1, (b, n, 3))
    mask = np.ones((b, n), bool)
    for k in range(b):  # mixed sizes: crystal k has n - k atoms
        mask[k, n - k :] = False
        frac[k, n - k :] = 0.0
    return jnp.asarray(frac, dtype), jnp.asarray(lat, dtype), jnp.asarray(mask)


def _images(x):
    need = np.floor(2 * (np.asarray(x, np.float64) + pk.FRAC_EPS)).astype(int) + 1
    return tuple(int(v) for v in need.max(0))


def _triples(raw):
    index, shift, mask = (np.asarray(a) for a in (raw.index, raw.shift, raw.mask))
    b, i, k = np.nonzero(mask)
    return {
        (int(bb), int(ii), int(index[bb, ii, kk]), *map(int, shift[bb, ii, kk]))
        for bb, ii, kk in zip(b, i, k, strict=True)
    }


@pytest.mark.parametrize(("b", "n", "cutoff", "scale", "dtype", "block"), CASES)
def test_kernel_matches_jnp_twin_and_reference(b, n, cutoff, scale, dtype, block):
    w, lat, mask = _batch(b, n, scale, dtype)
    x = cutoff / cell_widths(lat)
    images = _images(x)
    words = pk.candidate_words(
        w, lat, mask, x, jnp.asarray(cutoff, dtype), images=images, block=block, interpret=True
    )
    twin = pk.candidate_words_reference(w, lat, mask, x, jnp.asarray(cutoff, dtype), images=images)
    assert words.shape == (b, n, pk.num_words(images), n) and words.dtype == jnp.uint32
    np.testing.assert_array_equal(np.asarray(words), np.asarray(twin))
    assert np.asarray(words).any()

    k = 2048
    raw = pk.compact_candidates(words, w, x, capacity=k)
    assert raw.index.shape == (b, n, k) and raw.index.dtype == jnp.int32
    assert raw.shift.shape == (b, n, k, 3) and raw.shift.dtype == jnp.int32
    assert raw.mask.dtype == jnp.bool_ and raw.count.shape == (b, n)
    assert int(raw.count.max()) <= k
    max_shift = tuple(int(v) for v in np.ceil(np.asarray(x, np.float64)).max(0))
    ref = pk.neighbor_list_reference(w, lat, mask, cutoff, max_shift=max_shift, max_neighbors=k)
    np.testing.assert_array_equal(np.asarray(raw.count), np.asarray(ref.count))
    assert _triples(raw) == _triples(ref)
    # Padded atoms never appear.
    assert not np.asarray(raw.mask)[~np.asarray(mask)].any()


def test_xla_path_matches_kernel_pipeline():
    w, lat, mask = _batch(2, 12, 5.0, jnp.float64, seed=4)
    x = 4.0 / cell_widths(lat)
    images = _images(x)
    a = pk.neighbor_list(w, lat, mask, x, 4.0, images=images, max_neighbors=256, interpret=True)
    b = pk.neighbor_list(w, lat, mask, x, 4.0, images=images, max_neighbors=256, use_kernel=False)
    # Same candidates; slot order differs (the XLA path packs 32 neighbors per word).
    np.testing.assert_array_equal(np.asarray(a.count), np.asarray(b.count))
    np.testing.assert_array_equal(np.asarray(a.mask), np.asarray(b.mask))
    assert _triples(a) == _triples(b)
    # The dense words hold exactly the bits of the per-pair words.
    dense = pk.candidate_words_dense(w, lat, mask, x, 4.0, images=images)
    pair = pk.candidate_words_reference(w, lat, mask, x, 4.0, images=images)
    m, n = math.prod(images), w.shape[1]
    bits_dense = (np.asarray(dense)[..., None] >> np.arange(32, dtype=np.uint32)) & 1
    bits_dense = bits_dense.reshape(*dense.shape[:3], -1)[..., :n]  # (B, N, M, N)
    bits_pair = (np.asarray(pair)[..., None] >> np.arange(32, dtype=np.uint32)) & 1  # B,N,W,N,32
    bits_pair = np.moveaxis(bits_pair, 3, 4).reshape(*pair.shape[:2], -1, n)[:, :, :m]
    np.testing.assert_array_equal(bits_dense, bits_pair)


def test_block_sizes_follow_crystal_size():
    assert pk.block_sizes(8) == (16, 8, 8)
    assert pk.block_sizes(5) == (16, 8, 8)
    assert pk.block_sizes(32) == (1, 32, 32)
    assert pk.block_sizes(128) == (1, 32, 32)
    assert pk.block_sizes(12) == (4, 16, 16)
    for n in range(1, 200, 7):
        g, ti, tj = pk.block_sizes(n)
        assert g * ti * tj == pk.TILE_PAIRS or ti == pk.MAX_TILE
        assert all(v & (v - 1) == 0 for v in (g, ti, tj))


def test_shape_and_block_errors_are_clear():
    w, lat, mask = _batch(2, 8, 4.0, jnp.float64)
    x = 3.0 / cell_widths(lat)
    with pytest.raises(ValueError, match="lattice must be"):
        pk.candidate_words(w, lat[:1], mask, x, 3.0, images=(1, 1, 1), interpret=True)
    with pytest.raises(ValueError, match="mask must be"):
        pk.candidate_words(w, lat, mask[:, :4], x, 3.0, images=(1, 1, 1), interpret=True)
    with pytest.raises(ValueError, match=r"w must be \(B, N, 3\)"):
        pk.candidate_words(w[..., :2], lat, mask, x, 3.0, images=(1, 1, 1), interpret=True)
    with pytest.raises(ValueError, match="power of two"):
        pk.candidate_words(w, lat, mask, x, 3.0, images=(1, 1, 1), block=(3, 8, 8), interpret=True)


def test_candidate_numbering_enumerates_the_image_box():
    """Candidate ``t`` is the row-major index of its offset in the ``m_1 × m_2 × m_3`` box (the
    kernel, the XLA twin, the compaction and the edge lists all decode with ``image_offset``),
    and a pair's candidates fill ``ceil(M / 32)`` words."""
    for images in [(1, 1, 1), (2, 2, 2), (3, 3, 3), (1, 2, 3), (7, 7, 7)]:
        t = np.arange(math.prod(images))
        got = np.stack(pk.image_offset(t, images[1], images[2]), -1)
        np.testing.assert_array_equal(got, np.array(list(np.ndindex(*images))))
        assert pk.num_words(images) == -(-len(t) // pk.BITS)
    # per-crystal boxes broadcast, and traced integers decode the same
    m2, m3 = np.array([2, 3]), np.array([3, 1])
    np.testing.assert_array_equal(np.stack(pk.image_offset(5, m2, m3), -1), [[0, 1, 2], [1, 2, 0]])
    traced = jax.jit(lambda t: jnp.stack(pk.image_offset(t, 3, 4), -1))(jnp.arange(24))
    np.testing.assert_array_equal(np.asarray(traced), np.array(list(np.ndindex(2, 3, 4))))
