"""Many-body potentials against published values and jax-md; parameter-file errors.

jax-md's Stillinger-Weber and Tersoff use minimum-image lists, so they are compared on rattled,
sheared 2x2x2 diamond supercells (10.9 Å wide, more than twice either cutoff); our multi-image
lists make the 2- and 8-atom cells exact as well (the diamond values below).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import pyxtal
from ase.build import bulk

import jaxcsp.io as jio
from jaxcsp import potentials as P
from jaxcsp.calculator import calculate, calculate_energy
from jaxcsp.potentials._manybody import ParameterFileError

TERSOFF_SI = os.path.join(os.path.dirname(pyxtal.__file__), "potentials", "Si.tersoff")
A_SI = 5.431


@pytest.fixture(scope="module")
def jax_md():
    return pytest.importorskip("jax_md")


def _diamond_cells():
    return [bulk("Si", "diamond", a=A_SI, cubic=True), bulk("Si", "diamond", a=A_SI)]


@pytest.mark.parametrize(
    "make, per_atom",
    [(P.stillinger_weber, -4.3366), (lambda: P.tersoff(TERSOFF_SI), -4.6304)],
    ids=["stillinger_weber", "tersoff"],
)
def test_diamond_silicon_energy_on_8_and_2_atom_cells(make, per_atom):
    """SW: -2ε = -4.3366 eV/atom (issue quotes -4.3365); Tersoff Si(C) 1988: -4.6304 eV/atom."""
    pot = make()
    cells = _diamond_cells()
    c = jio.from_ase(cells)  # padded batch of mixed sizes (8 and 2 atoms)
    r = calculate(pot, c)
    e = np.asarray(r.energy) / np.array([8, 2])
    np.testing.assert_allclose(e, per_atom, atol=1.5e-4)
    np.testing.assert_allclose(e[0], e[1], rtol=1e-12)
    assert np.abs(np.asarray(r.forces)).max() < 1e-10
    # cubic symmetry: isotropic stress, no shear
    s = np.asarray(r.stress[0])
    np.testing.assert_allclose(s, np.eye(3) * s[0, 0], atol=1e-10)


def _rattled_supercell(seed):
    at = bulk("Si", "diamond", a=A_SI, cubic=True) * (2, 2, 2)
    shear = np.eye(3)
    shear[0, 1] = 0.06
    shear[2, 0] = -0.04
    at.set_cell(at.cell @ shear, scale_atoms=True)
    at.rattle(0.08, seed=seed)
    return at


@pytest.mark.parametrize("which", ["stillinger_weber", "tersoff"])
def test_matches_jax_md_on_supercell(jax_md, which):
    from jax_md import energy, space

    atoms = _rattled_supercell(seed=7)
    lattice = np.asarray(atoms.cell)
    displacement, _ = space.periodic_general(jnp.asarray(lattice.T), fractional_coordinates=False)
    if which == "stillinger_weber":
        ref_fn = energy.stillinger_weber(displacement, epsilon=2.1683)  # LAMMPS Si.sw ε
        ours = P.stillinger_weber()
    else:
        with open(TERSOFF_SI) as fh:
            params = energy.load_lammps_tersoff_parameters(fh)
        ref_fn = energy.tersoff(displacement, params)
        ours = P.tersoff(TERSOFF_SI)
    pos = jnp.asarray(atoms.positions)
    e_ref = float(ref_fn(pos))
    f_ref = -np.asarray(jax.grad(ref_fn)(pos))
    r = calculate(ours, jio.from_ase([atoms]))
    # jax-md regularises angle cosines with ``r + 1e-7``
    # (quantity.cosine_angle_between_two_vectors),
    # a ~2e-8 relative effect on the energy; a wrong image or term would be ~1e-2.
    np.testing.assert_allclose(float(r.energy[0]), e_ref, rtol=1e-7)
    np.testing.assert_allclose(np.asarray(r.forces[0]), f_ref, atol=1e-5)


def test_pair_functions_match_jax_md(jax_md):
    """Same formulas as jax-md's pair functions (which return float32 here: rtol 1e-6)."""
    from jax_md import energy

    r = jnp.linspace(0.8, 4.0, 50)
    lj = P.lennard_jones(1.1, 0.7, 10.0, cutoff_mode="truncate")
    mo = P.morse(0.4, 1.3, 2.1, 10.0, cutoff_mode="truncate")
    from jaxcsp.potentials._pair import _PAIR_FNS

    np.testing.assert_allclose(
        _PAIR_FNS["lennard_jones"](r, {k: v[0, 0] for k, v in lj.params["pair"].items()}),
        energy.lennard_jones(r, jnp.asarray(1.1), jnp.asarray(0.7)),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        _PAIR_FNS["morse"](r, {k: v[0, 0] for k, v in mo.params["pair"].items()}),
        energy.morse(r, jnp.asarray(2.1), jnp.asarray(0.4), jnp.asarray(1.3)),
        rtol=1e-6,
    )


def test_tersoff_multielement_file(tmp_path):
    """A 2-element file (Si and a copy named Ge) gives the Si energy for a Si/Ge-labelled cell."""
    with open(TERSOFF_SI) as fh:
        entry = [ln for ln in fh.read().split("\n") if ln.strip() and not ln.startswith("#")]
    numbers = " ".join(entry).split()[3:]
    lines = []
    for a in ("Si", "Ge"):
        for b in ("Si", "Ge"):
            for c in ("Si", "Ge"):
                lines.append(f"{a} {b} {c} " + " ".join(numbers))
    path = tmp_path / "SiGe.tersoff"
    path.write_text("# test\n" + "\n".join(lines) + "\n")
    pot = P.tersoff(path)
    assert pot.species == (14, 32)
    at = bulk("Si", "diamond", a=A_SI, cubic=True)
    at.numbers[::2] = 32
    e = float(calculate_energy(pot, jio.from_ase([at]))[0]) / 8
    np.testing.assert_allclose(e, -4.6304, atol=1.5e-4)


@pytest.mark.parametrize(
    "text, match",
    [
        ("Si Si Si 3.0 1.0 1.3258\n", "not a multiple of 17"),
        ("Si Si Xx " + " ".join(["1.0"] * 14) + "\n", "unknown element"),
        ("Si Si Si 3.0 1.0 abc" + " 1.0" * 11 + "\n", "non-numeric"),
        ("Si Si Si 2.0" + " 1.0" * 13 + "\n", "must be 1 or 3"),
        ("Si Si Si 3.0 1.0 1.0 1.0 1.0 0.0 1.0 1.0 1.0 1.0 -3.0 0.2 1.0 1.0\n", "'R'"),
        ("", "no Tersoff entries"),
        ("Si Ge Si " + " ".join(["3.0"] * 14) + "\n", "missing entry"),
    ],
)
def test_malformed_tersoff_file_raises(tmp_path, text, match):
    path = tmp_path / "bad.tersoff"
    path.write_text(text)
    with pytest.raises(ParameterFileError, match=match) as info:
        P.tersoff(path)
    assert str(path) in str(info.value)


def test_missing_tersoff_file_raises(tmp_path):
    with pytest.raises(ParameterFileError, match="cannot read"):
        P.tersoff(tmp_path / "nope.tersoff")


def test_tersoff_matches_ase_tersoff_calculator():
    """ASE's pure-Python Tersoff (same LAMMPS file) on a rattled, sheared 8-atom cell."""
    from ase.calculators.tersoff import Tersoff
    from ase.stress import full_3x3_to_voigt_6_stress

    at = bulk("Si", "diamond", a=A_SI, cubic=True)
    shear = np.array([[1.0, 0.05, 0], [0, 1.0, 0], [-0.03, 0, 1.02]])
    at.set_cell(at.cell @ shear, scale_atoms=True)
    at.rattle(0.1, seed=3)
    at.calc = Tersoff.from_lammps(TERSOFF_SI)
    r = calculate(P.tersoff(TERSOFF_SI), jio.from_ase([at]))
    np.testing.assert_allclose(float(r.energy[0]), at.get_potential_energy(), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(r.forces[0]), at.get_forces(), atol=1e-8)
    np.testing.assert_allclose(
        full_3x3_to_voigt_6_stress(np.asarray(r.stress[0])), at.get_stress(), atol=1e-9
    )


def test_shipped_carbon_tersoff_matches_ase_and_literature():
    """The shipped C.tersoff: ASE's Tersoff on rattled diamond and graphite-like cells, and
    diamond's energy at a = 3.566 Å (Tersoff 1988: -7.37 eV/atom)."""
    from ase.calculators.tersoff import Tersoff
    from ase.io import read

    from jaxcsp.potentials._manybody import CARBON_TERSOFF_FILE

    pot = P.tersoff_carbon()
    dia = bulk("C", "diamond", a=3.566, cubic=True)
    e = calculate(pot, jio.from_ase([dia]))
    np.testing.assert_allclose(float(e.energy[0]) / len(dia), -7.3705, atol=5e-4)
    gr = read(os.path.join(os.path.dirname(jio.__file__), "data", "structures", "graphite.cif"))
    for at in (dia.copy(), gr.repeat((2, 2, 1))):
        at.rattle(0.05, seed=1)
        at.calc = Tersoff.from_lammps(CARBON_TERSOFF_FILE)
        r = calculate(pot, jio.from_ase([at]))
        np.testing.assert_allclose(float(r.energy[0]), at.get_potential_energy(), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(r.forces[0]), at.get_forces(), atol=1e-8)
