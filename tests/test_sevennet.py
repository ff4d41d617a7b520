"""Native SevenNet-0 (``jaxcsp.potentials.sevennet0``) against the torch model it came from.

The reference is the torch model of the ``sevenn`` wheel run in float64
(``tests/sevennet_reference.py``); the native model runs in float64 too. Needs the ``mlip``
extra (torch, sevenn) for conversion and the reference, and skips cleanly without it. The
conversion runs once per session into a temporary cache directory.

The default suite compares 28 structures (20 distorted bulk phases with 1-9 atoms, 2-atom cells
among them, and 8 random symmetric crystals); the slow suite compares 112 structures over 30
elements with 2-64 atoms.
"""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

import jaxcsp as jc
from jaxcsp import neighbors as nb
from jaxcsp.calculator import calculate_with_neighbors
from jaxcsp.errors import InvalidStructureError
from jaxcsp.potentials import _sevennet as sn
from tests.sevennet_reference import torch_sevennet

# skipped without the ``mlip`` extra, decided without importing torch: collecting this file in a
# pytest-xdist worker that does not run it costs nothing (importing torch and sevenn took 3.5 s)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("sevenn") is None,
    reason="needs the mlip extra (torch, sevenn)",
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "jaxcsp" / "data" / "structures"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("jaxcsp-cache")
    old = os.environ.get("JAXCSP_CACHE_DIR")
    os.environ["JAXCSP_CACHE_DIR"] = str(d)
    sn._load_cached.cache_clear()
    yield d
    if old is None:
        os.environ.pop("JAXCSP_CACHE_DIR", None)
    else:
        os.environ["JAXCSP_CACHE_DIR"] = old
    sn._load_cached.cache_clear()


@pytest.fixture(scope="module")
def pot(cache):
    return sn.sevennet0()


def _distorted(atoms, rng, seed, strain=0.03, rattle=0.05):
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell @ (np.eye(3) + rng.uniform(-strain, strain, (3, 3))), True)
    atoms.rattle(rattle, seed=seed)
    return atoms


def bulk_phases(rng):
    """20 distorted bulk phases of 1-9 atoms (2-atom primitive cells among them)."""
    protos = [
        bulk("Si", "diamond", a=5.43),  # 2 atoms: cell widths < cutoff, many own images
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
        bulk("KBr", "rocksalt", a=6.6),
        bulk("Ge", "diamond", a=5.66),
        bulk("Ni", "fcc", a=3.52) * (2, 1, 1),
        jc.io.to_ase(jc.io.read(DATA / "rutile_TiO2.cif"))[0],
        jc.io.to_ase(jc.io.read(DATA / "alpha_quartz_SiO2.cif"))[0],
        jc.io.to_ase(jc.io.read(DATA / "graphite.cif"))[0],
    ]
    return [_distorted(a, rng, i) for i, a in enumerate(protos)]


def supercells(rng):
    """Distorted supercells of 8-64 atoms."""
    protos = [
        bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2),  # 64
        bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (2, 2, 2),  # 64
        bulk("Al", "fcc", a=4.05, cubic=True) * (2, 2, 2),  # 32
        bulk("GaN", "wurtzite", a=3.19, c=5.19) * (2, 2, 2),  # 32
        bulk("Fe", "bcc", a=2.87, cubic=True) * (2, 2, 2),  # 16
        bulk("MgO", "rocksalt", a=4.21, cubic=True) * (2, 1, 1),  # 16
        bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1),  # 8
        bulk("SrO", "rocksalt", a=5.16, cubic=True),  # 8
        bulk("CaF2", "fluorite", a=5.46, cubic=True),  # 12
        bulk("Mo", "bcc", a=3.15, cubic=True) * (3, 2, 2),  # 24
        bulk("Pt", "fcc", a=3.92, cubic=True) * (2, 2, 1),  # 16
        bulk("InP", "zincblende", a=5.87, cubic=True),  # 8
    ]
    return [_distorted(a, rng, 100 + i, strain=0.04, rattle=0.08) for i, a in enumerate(protos)]


def random_symmetric(compositions, n_each, seed=0):
    """Random symmetric crystals (``random_crystals``) of each composition, as ASE atoms."""
    out = []
    for k, comp in enumerate(compositions):
        key = jax.random.key(seed + 17 * k)
        wc = jc.symmetry.random_crystals(key, comp, n_each)
        out += jc.io.to_ase(jc.symmetry.reconstruct(wc))
    return out


def _bucket(n: int) -> int:
    return max(8, 1 << math.ceil(math.log2(n)))


def native_efs(pot, atoms_list, *, batch: int = 8):
    """Native energies, forces, stress: one padded program per size bucket (fixed B, N, K)."""
    groups: dict[int, list[int]] = {}
    for i, a in enumerate(atoms_list):
        groups.setdefault(_bucket(len(a)), []).append(i)
    e = np.zeros(len(atoms_list))
    f = [None] * len(atoms_list)
    s = np.zeros((len(atoms_list), 3, 3))
    fn = jax.jit(calculate_with_neighbors)
    for n_pad, idx in sorted(groups.items()):
        c_all = jc.io.from_ase([atoms_list[i] for i in idx], max_atoms=n_pad)
        spec = nb.neighbor_list_spec(c_all, pot.cutoff, capacity_headroom=0.0)
        k = 32 * math.ceil(spec.max_neighbors / 32)  # coarse: tests share compiled programs
        b = batch
        for start in range(0, len(idx), b):
            sel = np.arange(start, start + b) % len(idx)  # pad by wrapping: one batch shape
            c = c_all.take(sel)
            nl = nb.neighbor_list(c, pot.cutoff, max_neighbors=k)
            assert not np.any(np.asarray(nl.overflow))
            r = fn(pot, c, nl)
            for row, j in enumerate(sel[: min(b, len(idx) - start)]):
                i = idx[j]
                e[i] = float(r.energy[row])
                f[i] = np.asarray(r.forces[row])[: len(atoms_list[i])]
                s[i] = np.asarray(r.stress[row])
    return e, f, s


def _compare(pot, atoms_list):
    e, f, s = native_efs(pot, atoms_list)
    e_ref, f_ref, s_ref = torch_sevennet(atoms_list)
    n = np.array([len(a) for a in atoms_list])
    de = np.abs(e - e_ref) / n
    df = np.array([np.abs(a - b).max() for a, b in zip(f, f_ref, strict=True)])
    ds = np.abs(s - s_ref).max(axis=(1, 2))
    worst = int(np.argmax(de))
    assert de.max() < 1e-5, (worst, atoms_list[worst].get_chemical_formula(), de.max())
    assert df.max() < 1e-4, (int(np.argmax(df)), df.max())
    assert ds.max() < 1e-5, (int(np.argmax(ds)), ds.max())
    # the reference is not trivially small: real energies, forces and stresses were compared
    assert np.median(np.abs(e_ref) / n) > 1.0
    assert max(np.abs(x).max() for x in f_ref) > 0.5
    return de, df, ds


def test_matches_torch_sevennet0_bulk_and_random(pot):
    """19 distorted bulk phases and 8 random symmetric crystals of 1-8 atoms (one padded size,
    one compiled program; the 9-atom quartz and the supercells up to 64 atoms are in the slow
    112-structure test)."""
    rng = np.random.default_rng(0)
    atoms = bulk_phases(rng) + random_symmetric(["Ga2N2", "Li2O", "Ba1Ti1O3", "Zn2S2"], 2)
    atoms = [a for a in atoms if len(a) <= 8]
    assert len(atoms) == 27
    assert any(len(a) == 2 for a in atoms)
    _compare(pot, atoms)


@pytest.mark.slow
def test_matches_torch_sevennet0_on_112_structures_30_elements(pot):
    rng = np.random.default_rng(1)
    comps = [
        "Si4O8", "Ga4N4", "Li2Fe2O4", "Mg2Al4O8", "Ca2C2O6", "Sr1Ti1O3", "K2S1",
        "Zn4O4", "Na4Cl4", "Cu2O1", "Ni2P2", "Mo1S2", "Ba2Cl4", "Si8", "C8",
        "B4N4", "Al4P4", "V2O5", "Y1Ba2Cu3O7", "Fe4Si4",
    ]  # fmt: skip
    atoms = bulk_phases(rng) + supercells(rng) + random_symmetric(comps, 4, seed=5)
    elements = {s for a in atoms for s in a.get_chemical_symbols()}
    assert len(atoms) >= 100 and len(elements) >= 20, (len(atoms), len(elements))
    assert min(len(a) for a in atoms) <= 2 and max(len(a) for a in atoms) == 64
    _compare(pot, atoms)


def test_gradients_through_wyckoff_reconstruction_match_finite_differences(pot):
    wc = jc.symmetry.random_crystals(jax.random.key(3), "Ti2O4", 1, spg=136)  # rutile type
    c0 = jc.symmetry.reconstruct(wc)
    spec = nb.neighbor_list_spec(c0, pot.cutoff + 0.5, capacity_headroom=1.0, cell_headroom=0.3)

    def energy(coords, cell):
        c = jc.symmetry.reconstruct(wc.replace(coords=coords, cell=cell))
        return jc.calculator.energies(pot, c, nb.update(spec, c)).sum()

    # one compiled program for the gradient and the finite differences' energies
    vg = jax.jit(jax.value_and_grad(energy, argnums=(0, 1)))
    _, (g_coords, g_cell) = vg(wc.coords, wc.cell)

    def f(coords, cell):
        return vg(coords, cell)[0]

    free = {"coords": np.asarray(wc.coords_free), "cell": np.asarray(wc.cell_free)}
    grads = {"coords": np.asarray(g_coords), "cell": np.asarray(g_cell)}
    checked = 0
    for name, x in (("coords", wc.coords), ("cell", wc.cell)):
        for k in np.flatnonzero(free[name].ravel()):
            h = 1e-5 if name == "coords" else 1e-4
            step = np.zeros(x.size)
            step[k] = h
            xp = x + jnp.asarray(step.reshape(x.shape))
            xm = x - jnp.asarray(step.reshape(x.shape))
            args = (
                ((xp, wc.cell), (xm, wc.cell))
                if name == "coords"
                else ((wc.coords, xp), (wc.coords, xm))
            )
            fd = (float(f(*args[0])) - float(f(*args[1]))) / (2 * h)
            g = float(grads[name].ravel()[k])
            assert abs(fd - g) < 1e-5 * max(1.0, abs(fd)), (name, k, fd, g)
            checked += 1
    assert checked >= 3  # rutile: x of O, a and c
    assert np.abs(grads["cell"]).max() > 1e-3  # a real gradient, not a vanishing one


@pytest.mark.slow  # the float32 model compiles on its own: about 12 s
def test_rotation_and_permutation_invariance_and_float32(pot):
    rng = np.random.default_rng(4)
    at = _distorted(bulk("GaAs", "zincblende", a=5.65, cubic=True), rng, 0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rot = at.copy()
    rot.set_cell(at.cell @ q.T, scale_atoms=True)
    perm = at[rng.permutation(len(at))]
    e, f, s = native_efs(pot, [at, rot, perm])
    assert abs(e[1] - e[0]) < 1e-9 and abs(e[2] - e[0]) < 1e-9
    np.testing.assert_allclose(f[1], f[0] @ q.T, atol=1e-9)
    np.testing.assert_allclose(s[1], q @ s[0] @ q.T, atol=1e-10)
    c32 = jc.io.from_ase([at])
    c32 = c32.replace(lattice=c32.lattice.astype(jnp.float32), frac=c32.frac.astype(jnp.float32))
    r32 = jc.calculate(pot, c32)
    assert r32.energy.dtype == jnp.float32 and r32.forces.dtype == jnp.float32
    assert abs(float(r32.energy[0]) - e[0]) / len(at) < 1e-4


@pytest.mark.slow  # compiling the vmapped single-crystal path takes ~1 min
def test_batched_graph_equals_vmap_of_one_crystal(pot):
    rng = np.random.default_rng(7)
    atoms = [
        _distorted(bulk("Si", "diamond", a=5.43), rng, 0),  # 2 atoms, many own images
        _distorted(bulk("NaCl", "rocksalt", a=5.64, cubic=True), rng, 1),
        _distorted(bulk("Fe", "bcc", a=2.87, cubic=True) * (2, 2, 1), rng, 2),
    ]
    c = jc.io.from_ase(atoms)
    nl = jc.calculator.build_neighbors(pot, c, skin=1.0)  # slots beyond the cutoff too
    batched = jax.jit(pot.energies)(c, nl)
    single = jax.jit(jax.vmap(pot.energy))(c, nl)
    np.testing.assert_allclose(np.asarray(batched), np.asarray(single), rtol=1e-12)
    e_ref, _, _ = torch_sevennet(atoms)
    np.testing.assert_allclose(np.asarray(batched), e_ref, rtol=1e-10)


def test_checkpoint_round_trip_and_errors(pot, cache, tmp_path):
    path = tmp_path / "model.msgpack"
    sn.save_sevennet(path, pot.options, pot.params)
    arch, params = sn.load_sevennet(path)
    assert arch == pot.options
    same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), params, pot.params)
    assert all(jax.tree_util.tree_leaves(same))
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(sn.SevenNetCheckpointError, match=r"bad\.msgpack"):
        sn.load_sevennet(bad)
    with pytest.raises(sn.SevenNetCheckpointError, match="no such"):
        sn.sevennet0(checkpoint=tmp_path / "missing.msgpack")
    # an element SevenNet-0 never saw (polonium) is refused before anything is traced
    po = jc.Crystals.create(np.eye(3) * 3.4, [[0.0, 0.0, 0.0]], [84])
    with pytest.raises(InvalidStructureError, match="Po"):
        jc.calculate(pot, po)
    assert len(pot.species) == 89


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=300
    )


@pytest.mark.slow  # two fresh processes, each compiling SevenNet-0 from nothing
def test_later_runs_need_no_torch_and_missing_sevenn_is_one_line(pot, cache, tmp_path):
    env = {**os.environ, "JAXCSP_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}
    code = (
        "import sys, numpy as np\n"
        "import jaxcsp as jc\n"
        "pot = jc.potentials.sevennet0(convert=False)\n"
        "c = jc.Crystals.create(np.eye(3) * 2.8, [[0, 0, 0], [0.5, 0.5, 0.5]], [26, 26])\n"
        "e = float(jc.calculate(pot, c).energy[0])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(e)\n"
    )
    out = _run(code, env)
    assert out.returncode == 0, out.stderr
    ref, _, _ = torch_sevennet([bulk("Fe", "bcc", a=2.8, cubic=True)])
    assert abs(float(out.stdout.split()[-1]) - ref[0]) < 1e-4  # float32 in that process
    # no cache and no sevenn: one clear line, naming the missing package and the fix
    env2 = {**env, "JAXCSP_CACHE_DIR": str(tmp_path / "empty")}
    code2 = (
        "import sys; sys.modules['sevenn'] = None\n"
        "import jaxcsp as jc\n"
        "try:\n"
        "    jc.potentials.sevennet0()\n"
        "except Exception as e:\n"
        "    print(type(e).__name__); print(str(e))\n"
    )
    out2 = _run(code2, env2)
    lines = out2.stdout.strip().splitlines()
    assert lines[0] == "MissingExtraError", out2.stdout + out2.stderr
    assert len(lines) == 2 and "sevenn" in lines[1] and "pip install" in lines[1]


def _param_gradient(pot, keys):
    c = jc.io.from_ase([bulk("Si", "diamond", a=5.43)])
    nl = jc.calculator.build_neighbors(pot, c)

    def loss(sub):
        return jc.calculator.energies(pot.replace(params={**pot.params, **sub}), c, nl).sum()

    return jax.jit(jax.grad(loss))({k: pot.params[k] for k in keys})


def test_flax_module_initialises_and_its_energy_is_differentiable_in_the_readout(pot):
    shapes = jax.eval_shape(lambda k: sn.init_params(pot.options, k), jax.random.key(0))
    same = jax.tree_util.tree_map(lambda a, b: a.shape == b.shape, shapes, pot.params)
    assert all(jax.tree_util.tree_leaves(same))  # the converted tree is the module's own
    g = _param_gradient(pot, ["shift", "scale"])
    si = dict(pot.options.type_map)[14]
    assert float(g["shift"][si]) == pytest.approx(2.0)  # dE/dshift_Si = number of Si atoms
    assert float(jnp.abs(g["shift"]).sum()) == pytest.approx(2.0)
    assert float(jnp.abs(g["scale"]).sum()) > 0


def test_energy_is_differentiable_in_every_weight(pot):
    g = _param_gradient(pot, list(pot.params))
    leaves = jax.tree_util.tree_leaves(g)
    assert all(np.isfinite(np.asarray(x)).all() for x in leaves)
    assert float(jnp.abs(g["0_convolution"]["weight_nn"]["layer2"]).max()) > 0
    assert float(jnp.abs(g["bessel"]).max()) > 0
