"""Reconstruction throughput: jaxcsp.symmetry.reconstruct vs PyXtal building the same crystals.

Inputs: ``B = 10_000`` carbon crystals of random space groups (all 230 possible), 1-4 random
Wyckoff sites each (at most 8, so every crystal fits a 39-column tabular row), random free
coordinates and cells. Validity (distances) does not matter for the timing, so they are drawn
directly rather than with ``random_crystals``.

* ours, forward: ``jax.jit(reconstruct)`` on the whole batch (compile excluded).
* ours, grad: ``jax.jit(jax.grad(loss))`` of a smooth scalar of all Cartesian positions and
  lattices with respect to the free variables (cell, coords).
* peer: PyXtal rebuilding each crystal from the same tabular row
  (``pyxtal.from_tabular_representation``, the seed's CPU path) and producing its Cartesian
  coordinates (``_get_coords_and_species(absolute=True)``). PyXtal runs one structure at a time
  in Python, so it is timed on a subset of ``PEER_SUBSET`` rows and **extrapolated linearly** to
  ``B`` (stated in the printed case name). ``--batch`` sets ``B``, ``--quick`` 1,000.

Run from the repository root: ``python -m benchmarks.symmetry``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.harness import Timing, compare, time_fn  # noqa: E402
from jaxcsp.symmetry import (  # noqa: E402
    WyckoffCrystals,
    from_tabular,
    num_wyckoff_positions,
    reconstruct,
    to_tabular,
)
from jaxcsp.symmetry._generate import _random_cells  # noqa: E402

B = 10_000
PEER_SUBSET = 200


def make_batch(b: int, seed: int = 0) -> WyckoffCrystals:
    """``b`` random carbon crystals of mixed space groups (host-side)."""
    rng = np.random.default_rng(seed)
    spg = rng.integers(1, 231, size=b)
    wy, sp, xyz = [], [], []
    for g in spg:
        k = int(rng.integers(1, 5))
        wy.append(rng.integers(0, num_wyckoff_positions(int(g)), size=k).tolist())
        sp.append([6] * k)
        xyz.append(rng.random((k, 3)))
    cells = _random_cells(rng, spg, rng.uniform(100.0, 400.0, size=b), 3.0)
    return WyckoffCrystals.create(spg, wy, sp, cells, xyz)


def _loss(cell, coords, wc):
    c = reconstruct(wc.replace(cell=cell, coords=coords))
    pos = c.positions
    return jnp.sum(jnp.where(c.mask[..., None], jnp.sin(pos), 0.0)) + jnp.sum(c.lattice**2)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=B, help=f"crystals ({B:,})")
    p.add_argument("--quick", action="store_true", help="--batch 1000")
    args = p.parse_args(argv)
    b = 1000 if args.quick else args.batch
    t0 = time.perf_counter()
    wc = make_batch(b)
    print(
        f"batch: {b} crystals, {int(np.asarray(wc.num_atoms).sum())} atoms, "
        f"padded N={wc.max_atoms}, S={wc.max_sites}, "
        f"built on host in {time.perf_counter() - t0:.1f} s"
    )
    fwd = jax.jit(reconstruct)
    ours_fwd = time_fn(fwd, wc, repeats=5)
    grad = jax.jit(jax.grad(_loss, argnums=(0, 1)))
    ours_grad = time_fn(grad, wc.cell, wc.coords, wc, repeats=5)

    # Same crystals grouped by atom count into power-of-two size buckets, each padded to its own
    # N (what a pipeline does to avoid padding; the seed sorts by space group for the same reason).
    counts = np.asarray(wc.num_atoms)
    size = 1 << np.ceil(np.log2(np.maximum(counts, 1))).astype(int)
    buckets = []
    for n_max in np.unique(size):
        sub = wc.take(np.flatnonzero(size == n_max))
        n_max = int(n_max)
        buckets.append(
            sub.replace(
                atom_site=sub.atom_site[:, :n_max],
                atom_op=sub.atom_op[:, :n_max],
                atom_mask=sub.atom_mask[:, :n_max],
            )
        )
    ours_bucketed = time_fn(lambda bs: [fwd(b) for b in bs], buckets, repeats=5)
    ours_bucketed_grad = time_fn(
        lambda bs: [grad(b.cell, b.coords, b) for b in bs], buckets, repeats=5
    )
    print("bucket N: " + ", ".join(str(b.max_atoms) for b in buckets))

    peer_n = min(PEER_SUBSET, b)
    rows = to_tabular(wc.take(np.arange(peer_n)))
    back = from_tabular(rows, "C", max_atoms=wc.max_atoms)  # same crystals through the row format
    assert np.array_equal(np.asarray(back.num_atoms), np.asarray(wc.num_atoms[:peer_n]))

    from pyxtal import pyxtal

    def peer_run():
        n_atoms = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for row in rows:
                x = pyxtal()
                x.from_tabular_representation(row)
                coords, _ = x._get_coords_and_species(absolute=True)
                n_atoms += len(coords)
        return n_atoms

    t = time.perf_counter()
    n_atoms_peer = peer_run()
    sub = time.perf_counter() - t
    t = time.perf_counter()
    peer_run()
    sub = min(sub, time.perf_counter() - t)
    expected = int(np.asarray(wc.num_atoms[:peer_n]).sum())
    print(f"pyxtal rebuilt {n_atoms_peer} atoms on the subset (jaxcsp: {expected})")
    scale = b / peer_n
    peer = Timing((sub * scale,), sub * scale, 0.0)
    extra = {"peer_subset": peer_n, "peer_extrapolated_x": scale}
    cases = [
        (f"B={b} one batch N={wc.max_atoms}, fwd", ours_fwd),
        (f"B={b} one batch N={wc.max_atoms}, grad", ours_grad),
        (f"B={b} {len(buckets)} size buckets, fwd", ours_bucketed),
        (f"B={b} {len(buckets)} size buckets, grad", ours_bucketed_grad),
    ]
    print(f"peer: pyxtal timed on {peer_n} rows, x{scale:.0f} extrapolated to B={b}")
    for name, timing in cases:
        compare("symmetry", name, timing, peer, peer_name="pyxtal", units=b, extra=extra)


if __name__ == "__main__":
    main()
