"""Symmetry-preserving relaxation: Wyckoff free variables and the FixSymmetry-style mode.

References: spglib (space groups of the results) and ASE's ``FixSymmetry`` +
``FrechetCellFilter`` + ``BFGSLineSearch`` driven by the same potential.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import spglib
from relax_reference import shared_spec, symmetric_reference, symmetric_starts

import jaxcsp as jc
from jaxcsp import potentials
from jaxcsp.optimize import relax, relax_wyckoff
from jaxcsp.symmetry import reconstruct


@pytest.fixture(scope="module")
def start():
    return symmetric_starts()


def _keeps_group(start_atoms, final_atoms, tol=1e-5) -> bool:
    """Every operation of the starting structure's group maps the final structure onto itself."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ops = spglib.get_symmetry(
            (start_atoms.cell.array, start_atoms.get_scaled_positions(), start_atoms.numbers),
            symprec=1e-4,
        )
    f = final_atoms.get_scaled_positions()
    lat = final_atoms.cell.array
    for r, t in zip(ops["rotations"], ops["translations"], strict=True):
        img = f @ r.T + t
        d = img[:, None, :] - f[None, :, :]
        d -= np.round(d)
        if np.linalg.norm(d @ lat, axis=-1).min(axis=1).max() > tol:
            return False
    return True


def _spg(atoms, symprec=1e-3) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return spglib.get_symmetry_dataset(
            (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers), symprec=symprec
        ).number


def test_wyckoff_and_fixsymmetry_keep_the_group_and_match_ase(start):
    wc, c0 = start
    pot = potentials.stillinger_weber()
    _, res_w = relax_wyckoff(wc, pot, fmax=0.01, max_steps=500)
    res_f = relax(c0, pot, cell_filter="frechet", symmetric=True, fmax=0.01, max_steps=500)
    assert bool(np.all(res_w.converged)) and bool(np.all(res_f.converged))
    starts = jc.io.to_ase(c0)
    spec = shared_spec(pot, c0)
    lower_or_equal = []
    for i, atoms in enumerate(starts):
        assert _spg(atoms) == int(wc.spg[i])  # the starting group, by spglib
        w = jc.io.to_ase(jc.compact(res_w.crystals.take(np.array([i]))))[0]
        f = jc.io.to_ase(jc.compact(res_f.crystals.take(np.array([i]))))[0]
        # the final structures still have every operation of the starting group (spglib may
        # find a supergroup when the minimum is more symmetric, never a subgroup)
        assert _keeps_group(atoms, w), i
        assert _keeps_group(atoms, f, tol=1e-4), i
        e_ref, _, _ = symmetric_reference(atoms, pot, spec)
        e_ref /= len(atoms)
        lower_or_equal.append(float(res_w.energy[i]) / 8 <= e_ref + 1e-4)
        np.testing.assert_allclose(float(res_f.energy[i]) / 8, e_ref, atol=1e-4)
        # a Wyckoff-space minimum is a real stationary point: the Cartesian forces vanish too
        assert np.abs(np.asarray(res_w.forces[i])).max() < 0.05, i
    # Wyckoff and Cartesian paths can end in different local minima of the same symmetric
    # subspace; most end in the same one or a lower one
    assert np.mean(lower_or_equal) >= 0.75, lower_or_equal


def test_relax_wyckoff_fixed_cell_keeps_cell(start):
    from jaxcsp.errors import InvalidArgumentError
    from jaxcsp.optimize import FrechetCell, WyckoffFree

    wc = start[0].take(np.arange(3))
    sw = potentials.stillinger_weber()
    _, res = relax_wyckoff(wc, sw, cell=False, fmax=0.01, max_steps=300)
    assert bool(np.all(res.converged))
    np.testing.assert_allclose(
        np.asarray(res.crystals.lattice), np.asarray(reconstruct(wc).lattice), atol=1e-12
    )
    # the same as a value (the same compiled programs)
    _, same = relax_wyckoff(wc, sw, dofs=WyckoffFree(fixed_cell=True), fmax=0.01, max_steps=300)
    np.testing.assert_array_equal(np.asarray(same.energy), np.asarray(res.energy))
    with pytest.raises(InvalidArgumentError, match="WyckoffFree"):
        relax_wyckoff(wc, sw, dofs=FrechetCell())
