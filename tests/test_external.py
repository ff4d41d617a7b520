"""Pretrained MLIPs through the JAX bridge vs their own ASE calculators; gradients; ASE adapters.

The MLIP tests need the ``mlip`` extra (torch CPU, sevenn, chgnet) and skip cleanly without it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from ase.stress import full_3x3_to_voigt_6_stress

import jaxcsp.io as jio
from jaxcsp import potentials as P
from jaxcsp.calculator import build_neighbors, calculate
from jaxcsp.crystal import Crystals
from jaxcsp.potentials.ase_calculator import JaxcspCalculator, from_ase_calculator
from jaxcsp.testing import assert_trees_all_close


def _twenty_structures():
    rng = np.random.default_rng(0)
    protos = [
        bulk("Si", "diamond", a=5.43),
        bulk("Si", "diamond", a=5.43, cubic=True),
        bulk("C", "diamond", a=3.57),
        bulk("NaCl", "rocksalt", a=5.64),
        bulk("MgO", "rocksalt", a=4.21),
        bulk("GaAs", "zincblende", a=5.65),
        bulk("Cu", "fcc", a=3.61),
        bulk("Al", "fcc", a=4.05, cubic=True),
        bulk("Fe", "bcc", a=2.87),
        bulk("W", "bcc", a=3.16, cubic=True),
        bulk("Mg", "hcp", a=3.21, c=5.21),
        bulk("Ti", "hcp", a=2.95, c=4.68),
        bulk("LiF", "rocksalt", a=4.03),
        bulk("ZnS", "zincblende", a=5.41),
        bulk("CsCl", "cesiumchloride", a=4.12),
        bulk("Ni", "fcc", a=3.52) * (2, 1, 1),
        jio.to_ase(jio.read(_data("rutile_TiO2.cif")))[0],
        jio.to_ase(jio.read(_data("alpha_quartz_SiO2.cif")))[0],
        jio.to_ase(jio.read(_data("graphite.cif")))[0],
        bulk("Ge", "diamond", a=5.66),
    ]
    out = []
    for i, at in enumerate(protos):
        at = at.copy()
        strain = np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))
        at.set_cell(at.cell @ strain, scale_atoms=True)
        at.rattle(0.03, seed=i)
        out.append(at)
    return out


def _data(name):
    import pathlib

    import jaxcsp

    return pathlib.Path(jaxcsp.__file__).parent / "data" / "structures" / name


MODELS = ["sevennet", "chgnet"]


@pytest.fixture(scope="module", params=MODELS)
def model(request):
    pytest.importorskip("torch")
    if request.param == "sevennet":
        pytest.importorskip("sevenn")
        from sevenn.calculator import SevenNetCalculator

        from jaxcsp.potentials.external import sevennet

        return sevennet(), SevenNetCalculator("7net-0", device="cpu")
    pytest.importorskip("chgnet")
    from chgnet.model.dynamics import CHGNetCalculator

    from jaxcsp.potentials.external import _chgnet_model, chgnet

    pot = chgnet()
    return pot, CHGNetCalculator(model=_chgnet_model("0.3.0", "cpu").net, use_device="cpu")


def test_bridge_matches_own_ase_calculator_on_20_structures(model):
    pot, calc = model
    atoms = _twenty_structures()
    c = jio.from_ase(atoms)  # one padded batch: one batched inference
    host = pot.options
    orig, calls = host.compute, []

    def spy(lattice, frac, species, mask):
        calls.append(lattice.shape[0])
        return orig(lattice, frac, species, mask)

    host.compute = spy
    try:
        r = calculate(pot, c)
    finally:
        host.compute = orig
    assert calls == [20]  # the whole batch in one host call
    assert r.energy.shape == (20,) and r.forces.shape == c.frac.shape
    for i, at in enumerate(atoms):
        at.calc = calc
        n = len(at)
        e_ref = at.get_potential_energy()
        np.testing.assert_allclose(float(r.energy[i]), e_ref, rtol=1e-5, err_msg=f"energy {i}")
        # rtol 1e-5 with a floor at float32 resolution (the models run in float32, and batched
        # inference sums in a different order than the calculator's batch of one).
        np.testing.assert_allclose(
            r.forces[i, :n], at.get_forces(), rtol=1e-5, atol=1e-5, err_msg=f"forces {i}"
        )
        np.testing.assert_allclose(
            full_3x3_to_voigt_6_stress(np.asarray(r.stress[i])),
            at.get_stress(),
            rtol=1e-5,
            # stress is a float32 strain derivative summed over every edge, so its error scales
            # with the largest component: 1e-4 of it (0.07 eV/Å³ -> 7e-6 eV/Å³ = 1.1 MPa), plus
            # 1e-6 eV/Å³ = 0.16 MPa. CHGNet's batched sum came out 2.4e-6 eV/Å³ off in one CI run.
            atol=1e-4 * np.abs(at.get_stress()).max() + 1e-6,
            err_msg=f"stress {i}",
        )
        assert np.all(np.asarray(r.forces[i, n:]) == 0)


def test_bridge_grad_wrt_wyckoff_free_variables(model):
    """jax.grad through reconstruct (rutile: a, c and the O x) vs central differences."""
    from jaxcsp.symmetry import WyckoffCrystals, reconstruct, wyckoff_index

    pot, _ = model
    wc = WyckoffCrystals.create(
        [136],
        [[wyckoff_index(136, "2a"), wyckoff_index(136, "4f")]],
        [["Ti", "O"]],
        [[4.65, 4.65, 2.97, 90.0, 90.0, 90.0]],
        [[[0.0, 0.0, 0.0], [0.31, 0.31, 0.0]]],
    )

    def energy(cell, coords):
        c = reconstruct(dataclasses.replace(wc, cell=cell, coords=coords))
        return jnp.sum(jax.vmap(lambda x: pot.energy(x, None))(c))

    g_cell, g_coords = jax.grad(energy, argnums=(0, 1))(wc.cell, wc.coords)

    # The models run in float32 and the energy is strongly anharmonic in the O coordinate, so
    # use the 5-point stencil (error O(h^4)): h = 1e-2 Å for the cell, 5e-4 for x (steep wall).
    # All 12 displaced structures go through one jitted, batched call.
    stencil = np.array([-2.0, -1.0, 1.0, 2.0])
    weights = np.array([1.0, -8.0, 8.0, -1.0]) / 12.0
    cells, coords = [], []
    for idx in [(0, 0), (0, 2)]:  # a (b is tied to it: tetragonal) and c
        for k in stencil:
            cells.append(wc.cell.at[idx].add(k * 1e-2))
            coords.append(wc.coords)
    for k in stencil:  # O on 4f (x, x, 0)
        cells.append(wc.cell)
        coords.append(wc.coords.at[0, 1, 0].add(k * 5e-4))
    e = np.asarray(jax.jit(jax.vmap(energy))(jnp.stack(cells), jnp.stack(coords))).reshape(3, 4)
    fd = (e @ weights) / np.array([1e-2, 1e-2, 5e-4])
    got = np.array([g_cell[0, 0], g_cell[0, 2], g_coords[0, 1, 0]])
    np.testing.assert_allclose(got, fd, rtol=1e-2, atol=1e-2)
    assert abs(fd[2]) > 0.1


# ---------------------------------------------------------------------- ASE adapters (no extra)


def test_optional_submodules_load_on_attribute_access():
    """``jc.potentials.external`` and ``jc.potentials.ase_calculator`` work after ``import jaxcsp
    as jc`` alone (checked in a fresh interpreter: this one has imported both already), without
    importing torch."""
    code = (
        "import sys; import jaxcsp as jc; "
        "print(jc.potentials.external.sevennet.__name__, "
        "jc.potentials.ase_calculator.JaxcspCalculator.__name__, 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.split() == ["sevennet", "JaxcspCalculator", "False"], out.stderr[-2000:]
    with pytest.raises(AttributeError, match="no_such_thing"):
        P.no_such_thing


def test_jaxcsp_calculator_drives_ase():
    from ase.optimize import BFGS

    at = bulk("Si", "diamond", a=5.431, cubic=True)
    at.rattle(0.05, seed=1)
    pot = P.stillinger_weber()
    at.calc = JaxcspCalculator(pot)
    r = calculate(pot, jio.from_ase([at]))
    np.testing.assert_allclose(at.get_potential_energy(), float(r.energy[0]), rtol=1e-12)
    np.testing.assert_allclose(at.get_forces(), np.asarray(r.forces[0]), atol=1e-12)
    np.testing.assert_allclose(
        at.get_stress(), full_3x3_to_voigt_6_stress(np.asarray(r.stress[0])), atol=1e-12
    )
    BFGS(at, logfile=None).run(fmax=1e-3, steps=50)
    assert np.abs(at.get_forces()).max() < 1e-3


def test_from_ase_calculator_round_trip():
    """ASE LJ wrapped as a Potential reproduces the native potential, forces and stress."""
    from ase.calculators.lj import LennardJones

    rng = np.random.default_rng(4)
    lat = np.stack([np.eye(3) * 3.3 + rng.uniform(-0.2, 0.2, (3, 3)) for _ in range(2)])
    frac = rng.uniform(0, 1, (2, 3, 3))
    c = Crystals.create(lat, frac, [[18, 18, 18], [18, 18, 0]])
    wrapped = from_ase_calculator(LennardJones(sigma=1.0, epsilon=1.0, rc=2.5), species=["Ar"])
    native = P.lennard_jones(1.0, 1.0, 2.5)
    r_w = calculate(wrapped, c)
    r_n = calculate(native, c)
    np.testing.assert_allclose(r_w.energy, r_n.energy, rtol=1e-10)
    np.testing.assert_allclose(r_w.forces, r_n.forces, atol=1e-9)
    np.testing.assert_allclose(r_w.stress, r_n.stress, atol=1e-9)
    # jax.grad w.r.t. lattice and fractional coordinates through the custom_vjp
    nl = build_neighbors(native, c)
    c0, n0 = jax.tree.map(lambda x: x[0], (c, nl))

    def grads(pot, nbrs):
        fn = lambda L, f: pot.energy(c0.replace(lattice=L, frac=f), nbrs)  # noqa: E731
        return jax.grad(fn, argnums=(0, 1))(c0.lattice, c0.frac)

    assert_trees_all_close(grads(wrapped, None), grads(native, n0), rtol=1e-8, atol=1e-9)
