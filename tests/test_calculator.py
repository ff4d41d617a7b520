"""The calculator: shapes, dtypes, mixed-size batches, padding, jit-safe path, errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

import jaxcsp.io as jio
from jaxcsp import neighbors as nb
from jaxcsp import potentials as P
from jaxcsp.calculator import (
    Results,
    build_neighbors,
    calculate,
    calculate_energy,
    calculate_with_neighbors,
)
from jaxcsp.errors import InvalidStructureError
from jaxcsp.testing import assert_all_finite, assert_trees_all_close


def _mixed_batch():
    cells = [
        bulk("Si", "diamond", a=5.431, cubic=True),
        bulk("Si", "diamond", a=5.431),
        bulk("Si", "diamond", a=5.6) * (1, 1, 2),
    ]
    for i, at in enumerate(cells):
        at.rattle(0.05, seed=i)
    return cells


@pytest.fixture(scope="module")
def sw():
    return P.stillinger_weber()


def test_results_shapes_dtypes_and_padding(sw):
    atoms = _mixed_batch()
    c = jio.from_ase(atoms)  # N = 8, sizes 8, 2, 4
    r = calculate(sw, c)
    assert isinstance(r, Results)
    assert r.energy.shape == (3,) and r.forces.shape == (3, 8, 3) and r.stress.shape == (3, 3, 3)
    assert r.energy.dtype == r.forces.dtype == r.stress.dtype == jnp.float64
    assert_all_finite(r)
    assert np.all(np.asarray(r.forces)[~np.asarray(c.mask)] == 0.0)
    # each crystal alone gives the same result as in the padded batch
    for i in (1,):
        at = atoms[i]
        ri = calculate(sw, jio.from_ase([at]))
        n = len(at)
        np.testing.assert_allclose(r.energy[i], ri.energy[0], rtol=1e-12)
        np.testing.assert_allclose(r.forces[i, :n], ri.forces[0], atol=1e-12)
        np.testing.assert_allclose(r.stress[i], ri.stress[0], atol=1e-12)


def test_forces_sum_to_zero_and_stress_is_symmetric(sw):
    r = calculate(sw, jio.from_ase(_mixed_batch()))
    np.testing.assert_allclose(np.asarray(r.forces).sum(axis=1), 0.0, atol=1e-10)
    np.testing.assert_allclose(r.stress, np.swapaxes(r.stress, 1, 2), atol=1e-14)


def test_jit_safe_path_with_skin_and_update(sw):
    """Relaxer-style use: a spec with a skin, ``update`` and ``calculate_with_neighbors`` in jit."""
    c = jio.from_ase(_mixed_batch())
    spec = nb.neighbor_list_spec(c, sw.cutoff + 1.0)

    @jax.jit
    def step(crystals):
        nl = nb.update(spec, crystals)
        return calculate_with_neighbors(sw, crystals, nl), nl.overflow

    r, overflow = step(c)
    assert not np.any(np.asarray(overflow))
    assert_trees_all_close(r, calculate(sw, c), rtol=1e-12, atol=1e-12)
    # the potential is a pytree argument: new parameter values reuse the compiled program
    sw2 = sw.replace(params={**sw.params, "epsilon": sw.params["epsilon"] * 2})
    calc = jax.jit(calculate_with_neighbors)
    nl = build_neighbors(sw, c)
    r1 = calc(sw, c, nl)
    before = calc._cache_size()
    r2 = calc(sw2, c, nl)
    assert calc._cache_size() == before  # no recompilation for new parameter values
    np.testing.assert_allclose(r2.energy, 2 * np.asarray(r1.energy), rtol=1e-12)


def test_grad_of_params_and_vmap_over_potentials(sw):
    """Potentials compose with grad (w.r.t. params) and vmap (over params)."""
    c = jio.from_ase(_mixed_batch()[:1])
    nl = build_neighbors(sw, c)
    c0, n0 = jax.tree.map(lambda x: x[0], (c, nl))

    def e(eps):
        return sw.replace(params={**sw.params, "epsilon": eps}).energy(c0, n0)

    g = jax.grad(e)(sw.params["epsilon"])
    np.testing.assert_allclose(g, e(sw.params["epsilon"]) / sw.params["epsilon"], rtol=1e-12)
    es = jax.vmap(e)(jnp.array([1.0, 2.0]))
    np.testing.assert_allclose(es[1], 2 * es[0], rtol=1e-12)


def test_calculate_energy_matches(sw):
    c = jio.from_ase(_mixed_batch())
    np.testing.assert_allclose(calculate_energy(sw, c), calculate(sw, c).energy, rtol=1e-12)


def test_overflowed_neighbors_are_rejected(sw):
    c = jio.from_ase(_mixed_batch())
    nl = build_neighbors(sw, c)
    bad = nl.__class__(
        index=nl.index,
        shift=nl.shift,
        mask=nl.mask,
        overflow=nl.overflow.at[2].set(True),
        cutoff=nl.cutoff,
    )
    with pytest.raises(InvalidStructureError) as info:
        calculate(sw, c, neighbors=bad)
    assert info.value.index == 2


def test_unsupported_species_error_names_structure_and_element(sw):
    atoms = _mixed_batch()
    atoms[1].numbers[0] = 32
    with pytest.raises(InvalidStructureError, match=r"Ge \(Z=32\)") as info:
        calculate(sw, jio.from_ase(atoms), source="batch.extxyz")
    assert info.value.index == 1 and info.value.field == "species"
    assert "batch.extxyz" in str(info.value)
