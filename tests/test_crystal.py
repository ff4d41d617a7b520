"""Tests for jaxcsp.crystal: the Crystals pytree, its transforms and batching helpers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import atoms_objects, lattices

import jaxcsp as jc
from jaxcsp.crystal import validate
from jaxcsp.testing import assert_trees_all_equal

RNG = np.random.default_rng(0)


def _batch(b=3, n=4, dtype=jnp.float64):
    lat = np.stack(
        [np.diag([3.0 + i, 4.0, 5.0]) + 0.3 * np.triu(np.ones((3, 3)), 1) for i in range(b)]
    )
    frac = RNG.uniform(size=(b, n, 3))
    species = np.full((b, n), 14)
    species[0, -1] = 0  # one padded slot in the first crystal
    frac[0, -1] = 0.0
    return jc.Crystals.create(lat, frac, species, dtype=dtype)


def test_fields_shapes_dtypes():
    c = _batch()
    assert c.lattice.shape == (3, 3, 3) and c.lattice.dtype == jnp.float64
    assert c.frac.shape == (3, 4, 3)
    assert c.species.dtype == jnp.int32 and c.mask.dtype == jnp.bool_
    np.testing.assert_array_equal(c.num_atoms, [3, 4, 4])
    assert c.batch_size == 3 and c.max_atoms == 4 and len(c) == 3
    assert "batch_size=3" in repr(c)


def test_positions_and_volume_match_numpy():
    c = _batch()
    np.testing.assert_allclose(
        c.positions, np.einsum("bni,bij->bnj", np.asarray(c.frac), np.asarray(c.lattice))
    )
    np.testing.assert_allclose(c.volume, np.linalg.det(np.asarray(c.lattice)))


def test_unbatched_input_becomes_batch_of_one():
    c = jc.Crystals.create(np.eye(3) * 2.0, [[0.1, 0.2, 0.3]], ["Si"])
    assert c.lattice.shape == (1, 3, 3) and c.species.tolist() == [[14]]


def test_jit_vmap_roundtrip_and_per_crystal_properties():
    c = _batch()

    @jax.jit
    def f(c):
        return jax.vmap(lambda x: (x.volume, x.num_atoms, x.positions, x))(c)

    vol, nat, pos, c2 = f(c)
    np.testing.assert_allclose(vol, np.linalg.det(np.asarray(c.lattice)))
    np.testing.assert_array_equal(nat, [3, 4, 4])
    np.testing.assert_allclose(pos, c.positions)
    assert isinstance(c2, jc.Crystals)
    assert_trees_all_equal(c2, c)


def test_grad_volume_is_v_inv_lattice_transpose():
    # d det(L) / dL = det(L) inv(L)^T; fails if Crystals breaks autodiff or volume is wrong.
    c = _batch()
    g = jax.jit(jax.grad(lambda lat: jnp.sum(c.replace(lattice=lat).volume)))(c.lattice)
    lat = np.asarray(c.lattice)
    expected = np.linalg.det(lat)[:, None, None] * np.transpose(np.linalg.inv(lat), (0, 2, 1))
    np.testing.assert_allclose(g, expected, rtol=1e-12)

    # grad with respect to the whole pytree (integer leaves get float0 cotangents)
    gc = jax.grad(lambda x: jnp.sum(x.volume), allow_int=True)(c)
    assert isinstance(gc, jc.Crystals)
    np.testing.assert_allclose(gc.lattice, expected, rtol=1e-12)
    np.testing.assert_array_equal(gc.frac, 0.0)


def test_grad_positions_wrt_frac_and_lattice():
    c = _batch()
    w = jnp.asarray(RNG.normal(size=c.frac.shape))

    def f(frac, lat):
        return jnp.sum(w * c.replace(frac=frac, lattice=lat).positions)

    gf, gl = jax.grad(f, argnums=(0, 1))(c.frac, c.lattice)
    np.testing.assert_allclose(gf, np.einsum("bnj,bij->bni", w, c.lattice))
    np.testing.assert_allclose(gl, np.einsum("bni,bnj->bij", c.frac, w))


def test_tree_map_and_flatten_unchanged():
    c = _batch()
    leaves, treedef = jax.tree.flatten(c)
    assert len(leaves) == 4
    assert_trees_all_equal(jax.tree.unflatten(treedef, leaves), c)
    assert_trees_all_equal(jax.tree.map(lambda x: x, c), c)
    shapes = jax.tree.map(lambda x: x.shape, c)
    assert shapes.frac == (3, 4, 3)
    assert "Crystals(" in repr(shapes)  # repr survives non-array leaves


def test_frozen():
    c = _batch()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.frac = c.frac  # type: ignore[misc]


def test_float32_follows_input():
    c = _batch(dtype=jnp.float32)
    assert c.frac.dtype == jnp.float32
    vol = jax.jit(lambda x: x.volume)(c)
    assert vol.dtype == jnp.float32
    np.testing.assert_allclose(vol, np.linalg.det(np.asarray(c.lattice, np.float64)), rtol=1e-5)


@settings(max_examples=50)
@given(lattices(), st.integers(0, 2**31))
def test_wrap_keeps_positions_modulo_lattice(lat, seed):
    rng = np.random.default_rng(seed)
    frac = rng.uniform(-3, 3, size=(6, 3))
    frac[0] = [-1e-17, 1.0, -0.0]  # rounding edge cases
    c = jc.Crystals.create(lat, frac, np.full(6, 8))
    w = jax.jit(jc.Crystals.wrap)(c)
    f = np.asarray(w.frac)
    assert np.all(f >= 0.0) and np.all(f < 1.0)
    shift = np.asarray(c.frac) - f
    np.testing.assert_allclose(shift, np.round(shift), atol=1e-12)
    # gradient of wrap is the identity
    g = jax.grad(lambda fr: jnp.sum(c.replace(frac=fr).wrap().frac * 2.0))(c.frac)
    np.testing.assert_allclose(g, 2.0)


def test_wrap_leaves_padding_at_zero():
    c = _batch()
    c = c.replace(frac=c.frac - 2.5)
    w = c.wrap()
    np.testing.assert_array_equal(w.frac[0, -1], 0.0)


def test_take_pad_concatenate_unstack_compact():
    c = _batch()
    sub = jax.jit(lambda x: x.take(jnp.array([2, 0])))(c)
    assert_trees_all_equal(sub.frac, c.frac[jnp.array([2, 0])])
    # a host boolean mask selects its True rows (as numpy does), eagerly
    picked = c.take(np.array([True, False, True]))
    assert_trees_all_equal(picked, c.take(np.array([0, 2])))
    assert picked.batch_size == 2
    assert_trees_all_equal(c.take([2, 0]), sub)
    with pytest.raises(TypeError, match="boolean mask"):
        jax.jit(lambda x, m: x.take(m))(c, jnp.ones(3, bool))
    padded = jc.pad(c, 7)
    assert padded.max_atoms == 7 and not bool(padded.mask[:, 4:].any())
    assert_trees_all_equal(jc.pad(padded, 4), c)
    with pytest.raises(jc.InvalidStructureError, match="field 'mask'"):
        jc.pad(c, 3)  # would drop real atoms of structures 1 and 2

    parts = jc.unstack(c)
    assert [p.max_atoms for p in parts] == [3, 4, 4]
    again = jc.concatenate(parts)
    assert_trees_all_equal(again, jc.compact(c))
    mixed = jc.stack([parts[0], parts[1].take(jnp.array([0])), _batch(2, 6)])
    assert mixed.batch_size == 4 and mixed.max_atoms == 6
    np.testing.assert_array_equal(mixed.num_atoms, [3, 4, 5, 6])
    validate(mixed)


def test_compact_moves_atoms_forward():
    c = _batch()
    species = np.asarray(c.species).copy()
    species[1, 1] = 0
    frac = np.asarray(c.frac).copy()
    frac[1, 1] = 0
    holes = jc.Crystals.create(c.lattice, frac, species)
    comp = jc.compact(holes)
    np.testing.assert_array_equal(comp.num_atoms, holes.num_atoms)
    np.testing.assert_array_equal(comp.species[1], [14, 14, 14, 0])
    np.testing.assert_allclose(comp.frac[1, :3], frac[1, [0, 2, 3]])


@settings(max_examples=30)
@given(st.lists(atoms_objects(max_atoms=8), min_size=1, max_size=5))
def test_concatenate_preserves_every_structure(images):
    parts = [jc.io.from_ase(a) for a in images]
    batch = jc.concatenate(parts)
    assert batch.batch_size == len(images)
    for i, a in enumerate(jc.io.to_ase(batch)):
        np.testing.assert_array_equal(a.numbers, images[i].numbers)
        np.testing.assert_allclose(a.positions, images[i].positions, atol=1e-10)


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "field", "index", "match"),
    [
        (dict(lattice=np.ones((2, 3, 2))), "lattice", None, "shape"),
        (dict(frac=np.zeros((2, 3, 3))), "species", None, "shape"),
        (dict(species=np.full((2, 3), 6)), "species", None, "match frac"),
        (dict(frac=[[[0, 0, 0]], [[0, 0]]]), "frac", None, "ragged"),
        (dict(species=[["C", "C"], ["C", "Qq"]]), "species", 1, "unknown element symbol 'Qq'"),
        (dict(species=[[6, 6], [6, 200]]), "species", 1, "outside"),
        (
            dict(frac=[[[0, 0, 0], [0.5, 0.5, 0.5]], [[0, np.nan, 0], [0, 0, 0]]]),
            "frac",
            1,
            "non-finite",
        ),
        (
            dict(lattice=np.stack([np.eye(3), np.diag([np.inf, 1.0, 1.0])])),
            "lattice",
            1,
            "non-finite",
        ),
        (dict(lattice=np.stack([np.eye(3), np.diag([1.0, 1.0, 0.0])])), "lattice", 1, "singular"),
        (
            dict(lattice=np.stack([np.eye(3), np.diag([1.0, -1.0, 1.0])])),
            "lattice",
            1,
            "left-handed",
        ),
        (dict(species=[[6, 6], [0, 0]]), "species", 1, "no atoms"),
        (dict(mask=np.array([[True, True], [True, False]])), "mask", 1, "exactly where"),
        (dict(species=[[6.5, 6], [6, 6]]), "species", None, "integers"),
    ],
)
def test_bad_input_names_structure_and_field(kwargs, field, index, match):
    base = dict(
        lattice=np.stack([np.eye(3) * 3] * 2),
        frac=np.broadcast_to([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], (2, 2, 3)).copy(),
        species=np.full((2, 2), 6),
        mask=None,
    )
    base.update(kwargs)
    with pytest.raises(jc.InvalidStructureError, match=match) as info:
        jc.Crystals.create(base["lattice"], base["frac"], base["species"], base["mask"])
    assert info.value.field == field
    assert info.value.index == index
    assert f"field {field!r}" in str(info.value)
    if index is not None:
        assert f"structure {index}" in str(info.value)


def test_validate_on_device_batch_names_source():
    c = _batch()
    bad = c.replace(frac=c.frac.at[2, 1, 0].set(jnp.nan))
    with pytest.raises(jc.InvalidStructureError, match=r"cands\.db, structure 2, field 'frac'"):
        bad.validate(source="cands.db")


def test_concatenate_rejects_mixed_dtypes_and_empty():
    with pytest.raises(jc.InvalidStructureError, match="mixed float dtypes"):
        jc.concatenate([_batch(dtype=jnp.float32), _batch()])
    with pytest.raises(jc.InvalidStructureError, match="empty"):
        jc.concatenate([])


def test_find_overlaps_minimum_image_self_images_and_padding():
    from jaxcsp.crystal import check_overlaps, find_overlaps

    cubic = np.eye(3) * 3.0
    # batch of 3, padded to 3 slots: fine, overlap through the periodic boundary, self-image
    c = jc.Crystals.create(
        np.stack([cubic, cubic, np.diag([0.05, 3.0, 3.0])]),
        [
            [[0, 0, 0], [0.5, 0.5, 0.5], [0, 0, 0]],
            [[0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [0.1 + 1 - 1e-3, 0.2, 0.3]],  # 0.003 Å across
            [[0, 0, 0], [0, 0, 0], [0, 0, 0]],
        ],
        [[14, 14, 0], [14, 14, 14], [14, 0, 0]],
    )
    errors = find_overlaps(c)
    assert errors[0] is None
    assert errors[1].index == 1 and errors[1].field == "frac"
    assert "atoms 0 and 2 are 0.003 Å apart (closer than 0.1 Å)" in str(errors[1])
    assert "atom 0 and its periodic image are 0.050 Å apart" in str(errors[2])
    assert find_overlaps(c, min_distance=0.002)[1] is None
    with pytest.raises(jc.InvalidStructureError, match="structure 1, field 'frac'"):
        check_overlaps(c, source="x")
    assert check_overlaps(c.take(jnp.asarray([0]))) is not None
    with pytest.raises(jc.errors.InvalidArgumentError) as e:
        find_overlaps(c, min_distance=0.0)
    assert e.value.argument == "min_distance"
