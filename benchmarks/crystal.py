"""Batched geometry on ``Crystals`` vs ASE looped over the same structures.

Times, for a batch of random crystals: Cartesian positions, volumes and wrapped fractional
coordinates (jitted, one call for the whole batch) against ``ase.Atoms`` doing the same per
structure in a Python loop. Run from the repository root::

    python -m benchmarks.crystal [--batch 10000] [--atoms 32]
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from ase import Atoms

from benchmarks.harness import compare, time_fn

jax.config.update("jax_enable_x64", True)

import jaxcsp as jc  # noqa: E402


def _random_batch(b: int, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lat = np.eye(3) * 8.0 + rng.uniform(-1.5, 1.5, size=(b, 3, 3))
    frac = rng.uniform(-1, 2, size=(b, n, 3))
    species = rng.integers(1, 90, size=(b, n))
    return jc.Crystals.create(lat, frac, species)


@jax.jit
def _geometry(c: jc.Crystals):
    return c.positions, c.volume, c.wrap().frac


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=10_000)
    p.add_argument("--atoms", type=int, default=32)
    args = p.parse_args(argv)

    c = _random_batch(args.batch, args.atoms)
    images = [
        Atoms(numbers=z, positions=f @ lat, cell=lat, pbc=True)
        for lat, f, z in zip(
            np.asarray(c.lattice), np.asarray(c.frac), np.asarray(c.species), strict=True
        )
    ]

    def ase_loop():
        return [(a.positions, a.get_volume(), a.get_scaled_positions(wrap=True)) for a in images]

    ours = time_fn(_geometry, c, repeats=5)
    peer = time_fn(ase_loop, repeats=3)
    # same numbers
    pos, vol, wrapped = _geometry(c)
    ref = ase_loop()
    np.testing.assert_allclose(vol, [r[1] for r in ref], rtol=1e-12)
    np.testing.assert_allclose(pos, np.stack([r[0] for r in ref]), atol=1e-9)
    diff = np.asarray(wrapped) - np.stack([r[2] for r in ref])
    np.testing.assert_allclose(diff, np.round(diff), atol=1e-9)

    compare(
        "crystal",
        f"positions+volume+wrap B={args.batch} N={args.atoms}",
        ours,
        peer,
        peer_name="ase (loop)",
        units=args.batch,
    )
    conv = time_fn(lambda: jc.io.from_ase(images[:1000]), repeats=3, warmup=1)
    conv_peer = time_fn(
        lambda: [(a.cell.array, a.get_scaled_positions(), a.numbers) for a in images[:1000]],
        repeats=3,
    )
    compare(
        "crystal",
        f"from_ase B=1000 N={args.atoms}",
        conv,
        conv_peer,
        peer_name="ase arrays (loop)",
        units=1000,
    )


if __name__ == "__main__":
    main()
