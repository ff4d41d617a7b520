"""Degrees of freedom as values: a new kind in a few lines, relaxed by the unchanged drivers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.filters import StrainFilter
from ase.optimize import BFGS

import jaxcsp as jc
from jaxcsp.crystal import Crystals
from jaxcsp.errors import InvalidArgumentError


# ---- the new kind: a free cell with the fractional coordinates held fixed (13 lines) ----
@dataclasses.dataclass(frozen=True)
class FixedFractionalCell(jc.optimize.Dofs):
    has_cell = True

    def init(self, crystals):
        b = crystals.batch_size
        return jnp.zeros((b, 3, 3), crystals.lattice.dtype), jnp.ones((b, 3), bool)

    def to_crystals(self, x, data):
        f = jax.vmap(jax.scipy.linalg.expm)(x / data.cell_factor[:, None, None])
        lattice = jnp.einsum("bij,bkj->bik", data.lattice0, f)
        return Crystals(lattice, data.frac0, data.species, data.mask)


# ------------------------------------------------------------------------------------------

SIGMA, EPS, CUTOFF = 3.4, 0.0104, 8.5


def _starts():
    """Two sheared, rattled argon cells (4 and 2 atoms, padded into one batch)."""
    rng = np.random.default_rng(3)
    out = []
    for a, cubic in ((5.6, True), (3.9, False)):
        atoms = bulk("Ar", "fcc", a=a, cubic=cubic)
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.06 * rng.normal(size=(3, 3))), True)
        atoms.set_scaled_positions(
            atoms.get_scaled_positions() + 0.02 * rng.normal(size=(len(atoms), 3))
        )
        out.append(atoms)
    return out


def _ase_reference(atoms):
    """ASE's StrainFilter: the cell relaxes, scaled positions stay fixed."""
    from ase.calculators.lj import LennardJones

    atoms = atoms.copy()
    atoms.calc = LennardJones(sigma=SIGMA, epsilon=EPS, rc=CUTOFF, smooth=False)
    BFGS(StrainFilter(atoms), logfile=None).run(fmax=1e-5, steps=2000)
    return atoms.get_potential_energy() / len(atoms)


def test_new_dof_kind_relaxes_through_relax_and_relax_stream(tmp_path):
    pot = jc.potentials.lennard_jones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF)
    starts = _starts()
    c = jc.pad(jc.io.from_ase(starts), 8)  # the stream's shapes below: its programs are reused
    res = jc.optimize.relax(c, pot, dofs=FixedFractionalCell(), fmax=1e-4)
    assert bool(np.all(np.asarray(res.converged)))
    assert float(np.max(np.asarray(res.max_force))) < 1e-4
    np.testing.assert_array_equal(np.asarray(res.crystals.frac), np.asarray(c.frac))
    n = np.asarray(c.num_atoms)
    e = np.asarray(res.energy) / n
    for k, atoms in enumerate(starts):
        assert e[k] == pytest.approx(_ase_reference(atoms), abs=1e-6)
    # the cell really moved (by ~5 % of its lengths), to zero stress
    assert np.abs(np.asarray(res.crystals.lattice) - np.asarray(c.lattice)).max() > 0.1
    assert np.abs(np.asarray(res.stress)).max() < 1e-5

    db = tmp_path / "cells.db"
    summary = jc.optimize.relax_stream(
        starts, pot, db=db, dofs=FixedFractionalCell(), fmax=1e-4, max_atoms=16,
        refill_every=50, progress=False,
    )  # fmt: skip
    assert summary.statuses == {"converged": 2}
    rows = sorted(jc.io.connect_db(db).select(), key=lambda r: r.input_id)
    for k, row in enumerate(rows):
        assert row.energy_per_atom == pytest.approx(e[k], abs=1e-8)
        np.testing.assert_allclose(
            row.toatoms().get_scaled_positions(wrap=False),
            starts[k].get_scaled_positions(wrap=False),
            atol=1e-12,
        )


def test_dofs_argument_errors():
    pot = jc.potentials.lennard_jones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF)
    c = jc.io.from_ase(_starts())
    with pytest.raises(InvalidArgumentError, match="either cell_filter or dofs"):
        jc.optimize.relax(c, pot, cell_filter="frechet", dofs=FixedFractionalCell())
    with pytest.raises(InvalidArgumentError, match=r"must be a jaxcsp\.optimize\.Dofs"):
        jc.optimize.relax(c, pot, dofs="frechet")
    with pytest.raises(InvalidArgumentError, match="symmetric=True"):
        jc.optimize.relax(c, pot, dofs=FixedFractionalCell(), symmetric=True)
    assert jc.optimize.FrechetCell().has_cell and not jc.optimize.AtomPositions().has_cell
    assert jc.optimize.WyckoffFree(fixed_cell=True).has_cell is False


@pytest.mark.parametrize(
    "kind",
    [jc.optimize.AtomPositions(), jc.optimize.FrechetCell(), FixedFractionalCell()],
    ids=lambda k: type(k).__name__,
)
def test_round_trip_and_generalised_force_match_finite_differences(kind):
    from jaxcsp.optimize._relax import _objective, _spec_for, make_data

    pot = jc.potentials.lennard_jones(sigma=SIGMA, epsilon=EPS, cutoff=CUTOFF)
    c = jc.io.from_ase(_starts())
    data = make_data(c, pressure=0.002)  # eV/Å³: the cell kinds minimise the enthalpy E + pV
    x, row_mask = kind.init(c)
    back = kind.to_crystals(x, data)
    np.testing.assert_allclose(np.asarray(back.lattice), np.asarray(c.lattice), atol=1e-12)
    np.testing.assert_allclose(np.asarray(back.frac), np.asarray(c.frac), atol=1e-12)
    value_and_grad = jax.jit(_objective(pot, _spec_for(pot, c, backend="auto", growth=2.0), kind))
    _, g, overflow = value_and_grad(x, data)
    assert not bool(np.any(np.asarray(overflow)))
    rng = np.random.default_rng(0)
    live = np.argwhere(np.asarray(row_mask))
    h = 1e-5
    for b, r in live[rng.choice(len(live), size=min(6, len(live)), replace=False)]:
        d = int(rng.integers(3))
        e_plus = value_and_grad(x.at[b, r, d].add(h), data)[0][b]
        e_minus = value_and_grad(x.at[b, r, d].add(-h), data)[0][b]
        fd = float(e_plus - e_minus) / (2 * h)
        assert float(g[b, r, d]) == pytest.approx(fd, rel=1e-5, abs=1e-9), (b, r, d)
