"""Algorithm 1: per-sample transforms, batch independence, generic driver, PyXtal's lego case."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcsp.optimize.descriptor import (
    PlateauState,
    clip_by_per_sample_norm,
    descriptor_optimizer,
    per_sample_norms,
    project_box,
    run,
    scale_by_plateau_per_sample,
)


def test_clip_by_per_sample_norm():
    g = {
        "a": jnp.asarray([[3.0, 0.0], [0.1, 0.0], [jnp.nan, 1.0]]),
        "b": jnp.asarray([[4.0], [0.0], [1.0]]),
    }
    t = clip_by_per_sample_norm(1.0)
    out, _ = t.update(g, t.init(g))
    norms = per_sample_norms(out)
    np.testing.assert_allclose(norms, [1.0, 0.1, 0.0], rtol=1e-12)
    np.testing.assert_allclose(out["a"][0], [0.6, 0.0])
    assert bool(jnp.all(jnp.isfinite(out["a"])))


def test_plateau_scales_updates_per_sample_and_stops():
    t = scale_by_plateau_per_sample(patience=2, factor=0.5, rtol=0.0, min_scale=0.3, tol=1e-3)
    p = jnp.zeros((3, 2))
    s = t.init(p)
    assert isinstance(s, PlateauState)
    u = jnp.ones((3, 2))
    # sample 0 improves every step, sample 1 is stuck, sample 2 reaches tol at step 2
    losses = [[5.0, 1.0, 1.0], [4.0, 1.0, 1e-4], [3.0, 1.0, 1.0], [2.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    scales = []
    for v in losses:
        out, s = t.update(u, s, p, value=jnp.asarray(v))
        scales.append(np.asarray(out[:, 0]))
    scales = np.asarray(scales)
    np.testing.assert_allclose(scales[:, 0], 1.0)  # always improving: full step
    # stuck sample: first loss is an improvement over inf; then counter 1, 2 -> halve (0.5),
    # 1, 2 -> halve (0.25 < min_scale: stop)
    np.testing.assert_allclose(scales[:, 1], [1.0, 1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(scales[:, 2], [1.0, 0.0, 0.0, 0.0, 0.0])  # early stop, for good
    assert s.active.tolist() == [True, False, False]
    assert s.steps.tolist() == [5, 4, 1]
    with pytest.raises(ValueError):
        t.update(u, s, p)


def test_project_box_clamps_and_wraps():
    t = project_box({"x": 0.0, "y": -1.0}, {"x": 1.0, "y": 1.0}, periodic={"x": False, "y": True})
    p = {"x": jnp.asarray([[0.5, 0.9]]), "y": jnp.asarray([[0.5, 0.9]])}
    u = {"x": jnp.asarray([[-0.7, 0.3]]), "y": jnp.asarray([[-1.7, 0.3]])}
    out, _ = t.update(u, t.init(p), p)
    new = optax.apply_updates(p, out)
    np.testing.assert_allclose(new["x"], [[0.0, 1.0]], atol=1e-12)
    np.testing.assert_allclose(new["y"], [[0.8, -0.8]], atol=1e-12)


def _rosenbrock(p):
    x, y = p["x"][:, 0], p["x"][:, 1]
    scale = p["s"][:, 0]
    return scale * ((1 - x) ** 2 + 5 * (y - x**2) ** 2), None


def test_samples_are_independent_in_a_batch():
    # the same sample optimised alone or inside a batch with very different samples: same path
    opt = descriptor_optimizer(
        1e-2, lower=-5.0, upper=5.0, patience=3, mask={"x": True, "s": False}
    )
    batch = {
        "x": jnp.asarray([[-1.0, 2.0], [3.0, -4.0], [0.2, 0.1]]),
        "s": jnp.asarray([[1.0], [1e6], [1e-6]]),
    }
    res = run(_rosenbrock, batch, opt, steps=60, chunk=30)
    alone = run(_rosenbrock, jax.tree.map(lambda v: v[:1], batch), opt, steps=60, chunk=30)
    np.testing.assert_allclose(res.final_params["x"][0], alone.final_params["x"][0], rtol=1e-12)
    np.testing.assert_allclose(res.history[:, 0], alone.history[:, 0], rtol=1e-12)
    np.testing.assert_allclose(res.final_params["s"], batch["s"])  # masked: never moves
    assert res.history.shape == (60, 3)


def test_run_converges_with_heterogeneous_scales():
    opt = descriptor_optimizer(
        5e-2,
        lower=-5.0,
        upper=5.0,
        patience=5,
        tol=1e-10,
        weight_decay=0.0,
        mask={"x": True, "s": False},
    )
    batch = {
        "x": jnp.asarray([[-1.0, 2.0], [2.0, 3.0], [0.2, 0.1], [1.5, 1.0]]),
        "s": jnp.asarray([[1.0], [1e4], [1e-4], [10.0]]),
    }
    res = run(_rosenbrock, batch, opt, steps=1500, chunk=250)
    loss = np.asarray(res.loss) / np.asarray(batch["s"][:, 0])
    assert np.all(loss < 1e-3), loss
    assert bool(jnp.all(res.loss <= res.history.min(axis=0) + 1e-15))


def test_pyxtal_lego_case_converges_to_graphite():
    """PyXtal's lego example: P6_522 (179) with four 6a sites reaches graphite's environment."""
    from pyxtal import pyxtal

    import jaxcsp.symmetry as sym
    from jaxcsp.descriptors import reference_spectrum, valid_environment
    from jaxcsp.optimize.descriptor import optimize_wyckoff

    x = pyxtal()
    x.from_spg_wps_rep(179, ["6a"] * 4, [11.111, 2.640, 0.290, 0.751, 0.421, 0.872], ["C"] * 4)
    wc = sym.from_pyxtal([x])
    res = optimize_wyckoff(wc, reference_spectrum(), steps=600, per_component=False)
    assert float(res.initial_loss[0]) == pytest.approx(27.2979, rel=1e-4)  # PyXtal's calculate_S
    assert float(res.loss[0]) < 1e-2  # PyXtal's scale (sum over the 15 components)
    assert bool(valid_environment(sym.reconstruct(res.wc), 3)[0])
    assert res.spectra.shape == (1, 4, 15)
