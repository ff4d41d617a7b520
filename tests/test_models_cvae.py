"""GMM transform, the (C)VAE, latent refinement and the dual-level loop.

References: exact inverses, scikit-learn's GaussianMixture (BIC mode selection), finite
differences (gradients through decoder + inverse transform + reconstruction + SO(3) loss),
spglib (samples keep their requested space group), pymatgen's StructureMatcher (subgroup
augmentation re-expresses the same crystal).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxcsp.datasets import load_carbon_sp2, read_table, write_table
from jaxcsp.errors import InvalidStructureError
from jaxcsp.models.cvae import (
    MAX_SLOTS,
    UnknownConditionError,
    apply_columns,
    condition_vector,
    crystal_columns,
    decode_columns,
    load_cvae,
    shipped_cvae,
    train_cvae,
)
from jaxcsp.models.gmm import fit_gmm_1d, fit_gmm_transform

pytestmark = pytest.mark.xdist_group("cvae")


@pytest.fixture(scope="module")
def data():
    return load_carbon_sp2()


@pytest.fixture(scope="module")
def model():
    return shipped_cvae(dtype=jnp.float64)


# ----------------------------------------------------------------------------- GMM


@settings(max_examples=12)
@given(
    st.lists(st.floats(-5, 5), min_size=1, max_size=4),
    st.integers(0, 2**31 - 1),
)
def test_gmm_round_trip_is_exact(centres, seed):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(c, 0.05, 40) for c in centres] + [np.full(10, 0.25)])
    cols = np.stack([x, rng.permutation(x)], axis=1)
    mask = rng.uniform(size=cols.shape) < 0.8
    mask[0] = True
    t = fit_gmm_transform(cols, mask, dtype=jnp.float64)
    modes, r = t.encode(cols, mask)
    back = np.asarray(t.decode(modes, r))
    np.testing.assert_allclose(back[mask], cols[mask], rtol=0, atol=1e-12)
    assert np.all(np.asarray(r)[~mask] == 0)


@pytest.mark.parametrize("centres", [[3.0], [0.0, 4.0], [-6.0, 0.0, 5.0, 11.0]])
def test_gmm_mode_count_is_bic_selected_like_sklearn(centres):
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(c, 0.5 + 0.2 * i, 300) for i, c in enumerate(centres)])
    mu, sd, w = fit_gmm_1d(x, max_modes=6)
    bics = [
        GaussianMixture(k, n_init=3, random_state=0).fit(x[:, None]).bic(x[:, None])
        for k in range(1, 7)
    ]
    assert len(mu) == int(np.argmin(bics)) + 1 == len(centres)
    ref = GaussianMixture(len(centres), n_init=3, random_state=0).fit(x[:, None])
    order = np.argsort(ref.means_[:, 0])
    np.testing.assert_allclose(mu, ref.means_[order, 0], atol=0.02)
    np.testing.assert_allclose(sd, np.sqrt(ref.covariances_[order, 0, 0]), rtol=0.02)
    np.testing.assert_allclose(w, ref.weights_[order], atol=0.01)


def test_soft_decode_is_the_hard_inverse_at_one_hot_and_differentiable():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0.2, 0.02, 100), rng.normal(0.7, 0.05, 100)])
    t = fit_gmm_transform(x[:, None], dtype=jnp.float64)
    modes, r = t.encode(x[:5, None])
    big = 60.0 * jax.nn.one_hot(modes, t.num_modes)
    np.testing.assert_allclose(t.soft_decode(big, r), t.decode(modes, r), atol=1e-12)
    logits = jnp.asarray(rng.normal(size=(5, 1, t.num_modes)))

    def f(lg, res):
        return jnp.sum(jnp.sin(3.0 * t.soft_decode(lg, res)))

    g_l, g_r = jax.grad(f, argnums=(0, 1))(logits, r)
    v_l, v_r = rng.normal(size=logits.shape), rng.normal(size=r.shape)
    h = 1e-6
    fd = (f(logits + h * v_l, r + h * v_r) - f(logits - h * v_l, r - h * v_r)) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(g_l * v_l) + jnp.sum(g_r * v_r)), float(fd), rtol=1e-6)


# ----------------------------------------------------------------------------- data


def test_columns_mark_exactly_the_free_variables(data):
    wc = data.take(np.arange(64))
    values, mask = crystal_columns(wc)
    assert values.shape == mask.shape == (64, 6 + 3 * MAX_SLOTS)
    np.testing.assert_array_equal(mask[:, :6], np.asarray(wc.cell_free))
    free = np.asarray(wc.coords_free) & np.asarray(wc.site_mask)[..., None]
    np.testing.assert_array_equal(mask[:, 6:].reshape(64, MAX_SLOTS, 3), free)
    u = np.asarray(condition_vector(wc.spg, wc.wyckoff))
    assert u.shape == (64, 230 + MAX_SLOTS * 28)
    np.testing.assert_array_equal(u.sum(1), 1 + MAX_SLOTS)
    np.testing.assert_array_equal(np.argmax(u[:, :230], 1) + 1, np.asarray(wc.spg))


def test_shipped_dataset_is_cn3_carbon_without_duplicate_rows(data):
    from jaxcsp.descriptors import valid_environment
    from jaxcsp.symmetry import reconstruct, to_tabular

    assert data.batch_size >= 1000
    assert np.all(np.asarray(data.num_sites) <= MAX_SLOTS)
    assert set(np.unique(np.asarray(data.site_species)[np.asarray(data.site_mask)])) == {6}
    assert np.all(np.asarray(valid_environment(reconstruct(data), 3)))
    rows = np.round(to_tabular(data), 6)
    assert len(np.unique(rows, axis=0)) == len(rows)
    assert len(np.unique(np.asarray(data.spg))) >= 40


def test_subgroup_augmentation_keeps_the_crystal():
    """Each t-subgroup representation of graphite is graphite (StructureMatcher)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pyxtal import pyxtal

    from jaxcsp.datasets import _subgroup_family
    from jaxcsp.io import to_pymatgen
    from jaxcsp.symmetry import from_pyxtal, reconstruct

    x = pyxtal()
    with pytest.warns(UserWarning):
        x.from_seed(str(__import__("jaxcsp").__path__[0]) + "/data/structures/graphite.cif")
    family = _subgroup_family(x, 2, 8)
    wc = from_pyxtal(family)
    assert len(set(np.asarray(wc.spg).tolist())) >= 5
    structs = to_pymatgen(reconstruct(wc))
    sm = StructureMatcher()
    assert all(sm.fit(structs[0], s) for s in structs[1:])


def test_table_round_trip_and_bad_rows(tmp_path, data):
    wc = data.take(np.arange(10))
    write_table(tmp_path / "t.csv", wc, header="test")
    back = read_table(tmp_path / "t.csv")
    np.testing.assert_array_equal(back.spg, wc.spg)
    np.testing.assert_allclose(crystal_columns(back)[0], crystal_columns(wc)[0], atol=1e-8)
    text = (tmp_path / "t.csv").read_text().splitlines()
    head = [t for t in text if t.startswith("#")]
    row = text[len(head)].split(",")
    row[2] = "nan"
    (tmp_path / "bad.csv").write_text("\n".join([*head, ",".join(row)]) + "\n")
    with pytest.raises(InvalidStructureError, match="structure 0, field 'cell'"):
        read_table(tmp_path / "bad.csv")


# ----------------------------------------------------------------------------- model


def test_unseen_conditions_raise_naming_the_crystal(model):
    from jaxcsp.symmetry import WyckoffCrystals

    g0, w0 = (int(v) for v in model.seen[len(model.seen) // 2])
    cell = [[5.0, 5.5, 6.0, 80.0, 95.0, 100.0]] * 2
    xyz = [[[0.1, 0.2, 0.3]]] * 2
    seen_g = set(model.seen[:, 0].tolist())
    unseen = next(g for g in range(230, 0, -1) if g not in seen_g)
    wc = WyckoffCrystals.create([g0, unseen], [[w0], [0]], [[6], [6]], cell, xyz)
    with pytest.raises(UnknownConditionError, match="structure 1, field 'spg'") as err:
        model.encode(wc)
    assert err.value.index == 1
    pairs = {tuple(p) for p in model.seen.tolist()}
    bad_w = next(i for i in range(12) if (g0, i) not in pairs)
    wc = WyckoffCrystals.create([g0, g0], [[w0], [bad_w]], [[6], [6]], cell, xyz)
    with pytest.raises(UnknownConditionError, match="structure 1, field 'wyckoff'"):
        model.decode(jnp.zeros((2, model.latent_dim)), wc)


def test_training_is_deterministic_and_resumes_exactly(tmp_path, data):
    wc = data.take(np.arange(200))
    kw = dict(epochs=3, batch_size=64, latent_dim=4, hidden=(32, 32), embed_dim=16, progress=False)
    a = train_cvae(wc, **kw)
    b = train_cvae(
        wc, **{**kw, "epochs": 1}, checkpoint=tmp_path / "ck.msgpack", checkpoint_every=1
    )
    c = train_cvae(wc, **kw, checkpoint=tmp_path / "ck.msgpack", checkpoint_every=1)
    assert len(b.history.train_loss) == 1 and len(c.history.train_loss) == 3
    assert a.history.train_loss[-1] < a.history.train_loss[0]
    np.testing.assert_array_equal(a.history.val_loss, c.history.val_loss)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    loaded = load_cvae(tmp_path / "ck.msgpack")
    z = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)))
    np.testing.assert_allclose(
        loaded.decode(z, wc.take(np.arange(5))).cell, c.decode(z, wc.take(np.arange(5))).cell
    )


def test_latent_gradient_through_decoder_and_spectrum_matches_finite_differences(model, data):
    """d loss / d z through decoder → soft inverse GMM → reconstruct → SO(3) loss (Eq. 1)."""
    from jaxcsp.descriptors import SO3Settings, descriptor_loss, reference_spectrum
    from jaxcsp.optimize.descriptor import site_edge_spec

    wc = data.take(np.arange(0, 400, 100))
    settings = SO3Settings(nmax=2, lmax=4, rcut=2.0, alpha=1.5)
    ref = reference_spectrum("graphite", settings)
    cond = condition_vector(wc.spg, wc.wyckoff)
    z0 = jnp.asarray(np.random.default_rng(3).normal(size=(wc.batch_size, model.latent_dim)) * 0.5)

    def crystals(z):
        return apply_columns(
            wc, decode_columns(model.module, model.params, model.transform, z, cond, soft=True)
        )

    spec = site_edge_spec(crystals(z0), 2.0, cell_headroom=3.0)

    def loss(z):
        losses, aux = descriptor_loss(crystals(z), ref, spec, settings)
        return jnp.sum(losses), aux["overflow"]

    (val, over), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(z0)
    assert not bool(jnp.any(over)) and np.isfinite(float(val))
    v = jnp.asarray(np.random.default_rng(4).normal(size=z0.shape))
    h = 1e-6
    both = jax.jit(jax.vmap(loss))(jnp.stack([z0 + h * v, z0 - h * v]))[0]
    fd = (both[0] - both[1]) / (2 * h)
    np.testing.assert_allclose(float(jnp.sum(g * v)), float(fd), rtol=1e-5)


def _keeps_operations(wc, symprec=1e-3):
    """Whether every operation of each crystal's requested group (its general position, in
    the conventional cell) is a symmetry of the reconstructed structure (spglib, ``symprec``
    Å): the structure has the requested group or a supergroup of it."""
    import spglib

    from jaxcsp.io import to_ase
    from jaxcsp.symmetry import reconstruct
    from jaxcsp.symmetry._tables import _tables

    t = _tables()
    out = []
    for g, atoms in zip(np.asarray(wc.spg), to_ase(reconstruct(wc)), strict=True):
        cell = (atoms.cell[:], atoms.get_scaled_positions(), atoms.numbers)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            sym = spglib.get_symmetry(cell, symprec=symprec)
        if sym is None:  # spglib gives up, e.g. on two atoms at one point
            out.append(False)
            continue
        w = int(t.wp_offset[g - 1])
        ok = True
        for o in range(int(t.wp_op_offset[w]), int(t.wp_op_offset[w + 1])):
            same = np.all(sym["rotations"] == t.op_rot[o].round().astype(int), axis=(1, 2))
            d = sym["translations"][same] - t.op_trans[o]
            ok &= bool(np.any(np.all(np.abs(d - np.round(d)) < 1e-3, axis=1)))
        out.append(ok)
    return np.asarray(out)


def test_shipped_cvae_samples_keep_their_space_group(model, data):
    """Decoder samples under 400 conditions of the training set (spglib, 1e-3 Å): >= 95% have
    the requested group's symmetry, and >= 90% have exactly the requested group. Samples can
    have more symmetry, as the training rows do: subgroup augmentation writes high-symmetry
    crystals in their subgroups, so only about 1 in 6 training rows has exactly its row's
    group."""
    from jaxcsp.symmetry import spglib_space_groups

    idx = np.random.default_rng(7).integers(0, data.batch_size, 400)
    s = model.sample(jax.random.key(0), data.take(idx))
    exact = spglib_space_groups(s) == np.asarray(s.spg)
    kept = _keeps_operations(s)
    assert np.all(kept[exact])
    assert np.mean(kept) >= 0.95
    assert np.mean(exact) >= 0.90


def test_shipped_cvae_reconstructs_held_out_rows(model, data):
    rec = model.reconstruction(data.take(np.arange(0, data.batch_size, 7)))
    assert np.all(np.isfinite(rec["nll"]))
    assert np.nanmedian(rec["coord_mae"]) < 0.25 and np.nanmedian(rec["cell_mae"]) < 1.5


def test_latent_refinement_lowers_the_loss(model, data):
    from jaxcsp.descriptors import SO3Settings, reference_spectrum
    from jaxcsp.models.latent import refine_latents

    ref = reference_spectrum("graphite", SO3Settings())
    wc = model.sample(jax.random.key(1), data.take(np.arange(32) * (data.batch_size // 32)))
    r = refine_latents(model, wc, ref, steps=50)
    l0, l1 = np.asarray(r.initial_loss), np.asarray(r.loss)
    assert np.all(l1 <= l0 * (1 + 1e-6) + 1e-9)
    assert np.median(l1) < 0.5 * np.median(l0)
    assert r.history.shape == (50, 32)


def test_dual_level_rounds_without_the_oracle(model, data):
    """Both arms' rounds on the driver without screening (the slow suite adds the Tersoff
    screening, the database and the resume; the CLI test runs it end to end): round 1 tries
    every candidate, each later round the ones not yet valid, a candidate's round is set
    exactly when it is valid, and Algorithm 1's first round is the dual level's."""
    from jaxcsp.search import dual_level

    kw = dict(seed=1, rounds=2, steps=25, latent_steps=25, batch_size=16, conditions=data)
    res = dual_level(model, 16, screen=False, progress=False, **kw)
    assert [r["round"] for r in res.rounds] == [1, 2]
    assert res.rounds[0]["attempted"] == 16
    assert res.rounds[1]["attempted"] == 16 - res.rounds[0]["valid"]
    assert res.rounds[-1]["valid"] == int(res.valid.sum()) > 0
    assert res.baseline_rounds[0] == res.rounds[0]
    np.testing.assert_array_equal(res.round > 0, res.valid)
    assert res.screening is None
    assert np.all(np.diff([r["valid"] for r in res.rounds]) >= 0)


@pytest.mark.slow  # the Tersoff screening of both arms: about 40 s
def test_cli_dual_level_report(tmp_path, capsys):
    """The command end to end (shipped model, shipped conditions): the report's table, the
    screening line, the database and the figure."""
    from ase.db import connect

    from jaxcsp.cli import main

    args = ["design", "--workflow", "dual-level", "--n", "16", "--rounds", "2", "--seed", "1"]
    args += ["--steps", "25", "--latent-steps", "25", "--batch-size", "16", "--no-baseline"]
    db, png = tmp_path / "c.db", tmp_path / "c.png"
    assert main([*args, "--db", str(db), "--plot", str(png), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "valid (dual level)" in out and "dual level: N_valid_env" in out
    assert len(list(connect(db).select())) == 16
    assert png.stat().st_size > 0 and not (tmp_path / "c.algorithm1.db").exists()


def test_cli_rejects_bad_dual_level_and_training_options(tmp_path, capsys):
    from jaxcsp.cli import main

    assert main(["design", "--workflow", "dual-level", "--n", "0"]) == 1
    assert "n" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing.csv"), "--out", "m.msgpack"]) == 1
    assert "missing.csv" in capsys.readouterr().err
    assert (
        main(["design", "--workflow", "dual-level", "--model", str(tmp_path / "no.msgpack")]) == 1
    )
    assert "no.msgpack" in capsys.readouterr().err
    bad = ["design", "--workflow", "dual-level", "--data", str(tmp_path / "none.csv")]
    assert main([*bad, "--no-progress"]) == 1
    assert "none.csv" in capsys.readouterr().err
