"""SO(3) power spectrum (and its gradient) for a batch of carbon crystals vs PyXtal's ``SO3``.

Ours: one jitted call for the whole batch (neighbor search + spectra of every atom; for the
gradient, ``value_and_grad`` of a weighted sum of all spectra w.r.t. fractional coordinates
and lattice), with two neighbor paths: ``dense`` (:func:`jaxcsp.neighbors.update`, one
``(B, N, K)`` list, then a batch-wide compaction of the edges within ``rcut``) and ``edges``
(:func:`jaxcsp.neighbors.edge_list`: per-crystal candidate triples re-tested and compacted into
one edge list, :func:`jaxcsp.descriptors.so3_power_spectrum_edge_list`). PyXtal:
``SO3.compute_p`` (spectra) and ``SO3.compute_dpdr`` (spectra + dP/dr) looped over the same
structures (its module needs a ``scipy.special.sph_harm`` shim on scipy
>= 1.17). Setting of the seed: ``SO3Settings()`` (nmax 2, lmax 4, rcut 2 Å, alpha 1.5 Å⁻²).

The ``default call`` rows time the eager API, ``so3_power_spectrum(c)``, with its default
``max_edges="auto"`` (edges within ``rcut`` counted first, only those evaluated) against the
dense path it used to default to (``max_edges=None``: every neighbor slot), both with the
neighbor list prebuilt (``nl``) and with it built inside the call (``full``). Run from the
repository root::

    python -m benchmarks.so3 [--quick] [--batch 1000]
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import compare, time_fn

jax.config.update("jax_enable_x64", True)

from jaxcsp.descriptors import (  # noqa: E402
    SO3Settings,
    so3_power_spectrum,
    so3_power_spectrum_edge_list,
)
from jaxcsp.neighbors import edge_list, edge_list_spec, neighbor_list_spec, update  # noqa: E402

SETTINGS = SO3Settings()  # the seed's: nmax 2, lmax 4, rcut 2 Å, alpha 1.5 Å⁻²


def _pyxtal_so3():
    import scipy.special as sp

    if not hasattr(sp, "sph_harm"):
        sp.sph_harm = lambda m, l, az, pol: sp.sph_harm_y(l, m, pol, az)
    from pyxtal.lego.SO3 import SO3

    return SO3(**dataclasses.asdict(SETTINGS))


def _batch(b: int, seed: int = 0, dtype=jnp.float64):
    from jaxcsp.design import generate_candidates
    from jaxcsp.symmetry import reconstruct

    wc = generate_candidates(jax.random.key(seed), b, sizes=(8, 12, 16), dtype=dtype)
    return reconstruct(wc)


def _peer(c, spectra, peer_batch: int):
    """Time PyXtal on the first ``peer_batch`` crystals and scale to the batch (a Python loop)."""
    from benchmarks.harness import Timing
    from jaxcsp.io import to_ase

    images = to_ase(c.take(np.arange(min(peer_batch, c.batch_size))))
    calc = _pyxtal_so3()
    ours = np.asarray(spectra(c))
    for k, a in enumerate(images):  # same numbers where PyXtal's 27-image search is exact
        widths = a.cell.volume / np.linalg.norm(
            np.cross(a.cell[[1, 2, 0]], a.cell[[2, 0, 1]]), axis=1
        )
        if widths.min() > SETTINGS.rcut:
            ref = calc.compute_p(a)
            np.testing.assert_allclose(
                ours[k, : len(a)], ref, rtol=1e-6, atol=1e-6 * np.abs(ref).max()
            )
    p = time_fn(lambda: [calc.compute_p(a) for a in images], repeats=3, warmup=0)
    g = time_fn(lambda: [calc.compute_dpdr(a) for a in images], repeats=3, warmup=0)
    scale = c.batch_size / len(images)
    return Timing(p.times, p.median * scale, 0.0), Timing(g.times, g.median * scale, 0.0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000, help="crystals (1000)")
    p.add_argument("--peer-batch", type=int, default=200, help="crystals PyXtal is timed on")
    p.add_argument("--quick", action="store_true", help="small batch (CI smoke run)")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.peer_batch = 64, 16

    for dtype in (jnp.float64, jnp.float32):
        c = _batch(args.batch, dtype=dtype)
        spec = neighbor_list_spec(c, SETTINGS.rcut)
        nl = update(spec, c)
        # capacity of the batch-wide edge list: the edges of this batch plus 25 % head-room
        edges = int(np.asarray(nl.mask).sum())
        cap = int(1.25 * edges) + 64
        w = jnp.asarray(
            np.random.default_rng(0).normal(size=(c.batch_size, c.max_atoms, 15)), dtype
        )

        @jax.jit
        def dense_p(cc, spec=spec, cap=cap):
            return so3_power_spectrum(cc, SETTINGS, neighbors=update(spec, cc), max_edges=cap)

        @jax.jit
        def dense_g(cc, spec=spec, w=w, cap=cap):
            def f(frac, lattice):
                x = cc.replace(frac=frac, lattice=lattice)
                p = so3_power_spectrum(x, SETTINGS, neighbors=update(spec, x), max_edges=cap)
                return jnp.sum(w * p)

            return jax.value_and_grad(f, argnums=(0, 1))(cc.frac, cc.lattice)

        es = edge_list_spec(c, SETTINGS.rcut, capacity_headroom=0.25, cell_headroom=0.05)

        @jax.jit
        def edges_p(cc, es=es):
            return so3_power_spectrum_edge_list(cc, edge_list(es, cc), SETTINGS)

        @jax.jit
        def edges_g(cc, es=es, w=w):
            def f(frac, lattice):
                x = cc.replace(frac=frac, lattice=lattice)
                p = so3_power_spectrum_edge_list(x, edge_list(es, x), SETTINGS)
                return jnp.sum(w * p)

            return jax.value_and_grad(f, argnums=(0, 1))(cc.frac, cc.lattice)

        assert not bool(jnp.any(edge_list(es, c).overflow))
        ref_p = np.asarray(dense_p(c))
        np.testing.assert_allclose(edges_p(c), ref_p, rtol=1e-4, atol=2e-6 * np.abs(ref_p).max())
        name = "f64" if dtype == jnp.float64 else "f32"
        if dtype == jnp.float64:
            peer_p, peer_g = _peer(c, dense_p, args.peer_batch)
        atoms = int(np.asarray(c.num_atoms).sum())
        for path, fp, fg in (("dense", dense_p, dense_g), ("edges", edges_p, edges_g)):
            ours_p = time_fn(fp, c, repeats=5)
            ours_g = time_fn(fg, c, repeats=5)
            case = f"B={c.batch_size} atoms={atoms} {name} {path}"
            extra = {"peer_measured_on": args.peer_batch, "path": path}
            for label, ours, peer, peer_name in (
                ("spectrum", ours_p, peer_p, "pyxtal compute_p"),
                ("spectrum+grad", ours_g, peer_p, "pyxtal compute_p"),
                ("spectrum+grad", ours_g, peer_g, "pyxtal compute_dpdr"),
            ):
                compare(
                    "so3",
                    f"{label} {case}",
                    ours,
                    peer,
                    peer_name=peer_name,
                    units=c.batch_size,
                    unit_name="crystals",
                    extra=extra,
                )
        # the eager API's default (max_edges="auto") against its former default (dense)
        default = {"auto": "auto", "dense": None}
        auto_p = np.asarray(so3_power_spectrum(c, SETTINGS, neighbors=nl))
        np.testing.assert_allclose(
            auto_p, ref_p, rtol=1e-4 if name == "f32" else 1e-10, atol=2e-6 * np.abs(ref_p).max()
        )
        for variant, kw in (("nl", {"neighbors": nl}), ("full", {})):
            t = {
                k: time_fn(so3_power_spectrum, c, SETTINGS, max_edges=v, **kw)
                for k, v in default.items()
            }
            compare(
                "so3",
                f"default call ({variant}) B={c.batch_size} atoms={atoms} {name}",
                t["auto"],
                t["dense"],
                peer_name="max_edges=None",
                units=c.batch_size,
                unit_name="crystals",
                extra={"path": f"default-{variant}"},
            )


if __name__ == "__main__":
    main()
