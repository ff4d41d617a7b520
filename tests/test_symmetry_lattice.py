"""Tests of jaxcsp.symmetry._lattice: PyXtal's cell matrices, rules, gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcsp.symmetry import (
    cell_parameters,
    cell_rule,
    expand_cell,
    lattice_matrix,
    num_lattice_free,
)

pytest.importorskip("pyxtal")


def test_matches_pyxtal_lattice_matrices():
    from pyxtal.lattice import Lattice
    from pyxtal.symmetry import Group

    rng = np.random.default_rng(0)
    cells, refs = [], []
    for g in range(1, 231, 3):
        lat = Lattice(Group(g).lattice_type, volume=300.0, random_state=rng)
        p = np.asarray(lat.get_para(degree=True))
        cells.append(p)
        refs.append(Lattice.from_para(*p, ltype=Group(g).lattice_type).matrix)
    ours = jax.jit(lattice_matrix)(jnp.asarray(np.array(cells)))
    np.testing.assert_allclose(ours, np.array(refs), atol=1e-10)
    np.testing.assert_allclose(cell_parameters(ours), np.array(cells), atol=1e-8)


def test_rules_free_counts():
    assert [num_lattice_free(g) for g in (1, 5, 20, 100, 160, 180, 220)] == [6, 4, 3, 2, 2, 2, 1]
    src, fixed = cell_rule(166)
    full = expand_cell(jnp.array([4.0, 9.0, 12.0, 1.0, 2.0, 3.0]), src, fixed)
    np.testing.assert_allclose(full, [4, 4, 12, 90, 90, 120])


def test_grad_through_rule_reaches_free_only():
    src, fixed = cell_rule(221)
    g = jax.grad(lambda c: jnp.linalg.det(lattice_matrix(expand_cell(c, src, fixed))))(
        jnp.array([3.0, 5.0, 7.0, 80.0, 80.0, 80.0])
    )
    np.testing.assert_allclose(g, [27.0, 0, 0, 0, 0, 0], rtol=1e-10)
