"""Neighbor-list throughput: jaxcsp (XLA path, jitted) vs vesin, matscipy and ASE in a loop.

Batches of random triclinic crystals (8, 32 and 128 atoms, 10–20 Å³ per atom, cell angles
60–120°) at cutoffs 3 and 6 Å. Ours: :func:`jaxcsp.neighbors.update` with a spec built outside
the timed region (compile excluded), on the whole padded batch at once. Peers: called once per
structure in a Python loop, full lists with ``i, j, S, d`` (what we return: indices, shifts and,
through :func:`jaxcsp.neighbors.distances`, distances). ASE is slow, so it is timed on a subset
(at most ~10 s) and scaled to the batch (said so in its name).

Run from the repository root::

    python -m benchmarks.neighbors            # B = 1000
    python -m benchmarks.neighbors --quick    # B = 100, fewer repeats
    python -m benchmarks.neighbors --x64      # float64 on our side too (peers are float64)
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def random_cells(rng: np.random.Generator, b: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``b`` random triclinic cells of ``n`` atoms: ``lattice (b, 3, 3)`` Å, ``frac (b, n, 3)``."""
    lats = np.empty((b, 3, 3))
    k = 0
    while k < b:
        a = rng.uniform(0.8, 1.25, 3)
        al, be, ga = np.deg2rad(rng.uniform(60.0, 120.0, 3))
        cx = np.cos(be)
        cy = (np.cos(al) - np.cos(be) * np.cos(ga)) / np.sin(ga)
        cz2 = 1.0 - cx * cx - cy * cy
        if cz2 < 0.05:
            continue
        lat = np.array(
            [
                [a[0], 0.0, 0.0],
                [a[1] * np.cos(ga), a[1] * np.sin(ga), 0.0],
                [a[2] * cx, a[2] * cy, a[2] * np.sqrt(cz2)],
            ]
        )
        vol = n * rng.uniform(10.0, 20.0)
        lats[k] = lat * (vol / np.linalg.det(lat)) ** (1.0 / 3.0)
        k += 1
    return lats, rng.uniform(0.0, 1.0, (b, n, 3))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="B = 100 and fewer repeats")
    parser.add_argument("--x64", action="store_true", help="float64 on our side")
    parser.add_argument("--sizes", type=int, nargs="*", default=[8, 32, 128])
    parser.add_argument("--cutoffs", type=float, nargs="*", default=[3.0, 6.0])
    parser.add_argument("--peers", nargs="*", default=["vesin", "matscipy", "ase"])
    args = parser.parse_args(argv)

    import jax

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from benchmarks.harness import Timing, compare, time_fn
    from jaxcsp.crystal import Crystals
    from jaxcsp.neighbors import distances, neighbor_list_spec, update

    batch = 100 if args.quick else 1000
    repeats = 3 if args.quick else 5
    ase_subset = 20 if args.quick else 50
    dtype = jnp.float64 if args.x64 else jnp.float32
    rng = np.random.default_rng(0)
    print(
        f"neighbor lists: B={batch}, jaxcsp dtype={np.dtype(dtype).name}, "
        f"backend={jax.default_backend()}, devices={jax.devices()}",
        flush=True,
    )

    @jax.jit
    def ours(spec, c):
        nl = update(spec, c)
        return nl, distances(c, nl)

    for n in args.sizes:
        lats, fracs = random_cells(rng, batch, n)
        pos = np.einsum("bni,bij->bnj", fracs, lats)
        c = Crystals(
            lattice=jnp.asarray(lats, dtype),
            frac=jnp.asarray(fracs, dtype),
            species=jnp.full((batch, n), 14, jnp.int32),
            mask=jnp.ones((batch, n), bool),
        )
        for rc in args.cutoffs:
            spec = neighbor_list_spec(c, rc, backend="xla")
            t_ours = time_fn(ours, spec, c, repeats=repeats, warmup=1)
            nl, _ = ours(spec, c)
            pairs = int(np.asarray(nl.mask).sum())
            assert not np.asarray(nl.overflow).any()
            case = f"B={batch} N={n} rc={rc:g}"
            peers: dict[str, Timing] = {}
            if "vesin" in args.peers:
                import vesin

                calc = vesin.NeighborList(cutoff=rc, full_list=True)

                def run_vesin(calc=calc, pos=pos, lats=lats):
                    tot = 0
                    for k in range(batch):
                        i, *_ = calc.compute(pos[k], lats[k], True, quantities="ijSd")
                        tot += len(i)
                    return tot

                got = run_vesin()
                if got != pairs:
                    print(f"  !! vesin found {got} pairs, jaxcsp {pairs}")
                peers["vesin (loop)"] = time_fn(run_vesin, repeats=repeats, warmup=1)
            if "matscipy" in args.peers:
                from matscipy.neighbours import neighbour_list

                def run_matscipy(rc=rc, pos=pos, lats=lats):
                    for k in range(batch):
                        neighbour_list(
                            "ijSd", positions=pos[k], cell=lats[k], pbc=[True] * 3, cutoff=rc
                        )

                peers["matscipy (loop)"] = time_fn(run_matscipy, repeats=repeats, warmup=1)
            if "ase" in args.peers:
                from ase.neighborlist import primitive_neighbor_list

                # ASE is slow: time up to ``ase_subset`` structures (at most ~10 s) and scale.
                t0 = time.perf_counter()
                m = 0
                while m < min(ase_subset, batch) and (m == 0 or time.perf_counter() - t0 < 10.0):
                    primitive_neighbor_list(
                        "ijSd", [True] * 3, lats[m], pos[m], rc, self_interaction=False
                    )
                    m += 1
                dt = (time.perf_counter() - t0) * batch / m
                peers[f"ase (loop, {m} scaled)"] = Timing((dt,), dt, 0.0)
            best = min(peers, key=lambda k: peers[k].median)
            for name, t in peers.items():
                if name != best:
                    print(f"  {case}: {name} {t.median * 1e3:.1f} ms")
            compare(
                "neighbors",
                case,
                t_ours,
                peers[best],
                peer_name=f"best peer = {best}",
                units=batch,
                extra={
                    "pairs": pairs,
                    "capacity": spec.max_neighbors,
                    "images": list(spec.images),
                    "dtype": np.dtype(dtype).name,
                    "all_peers_s": {k: v.median for k, v in peers.items()},
                },
            )


if __name__ == "__main__":
    main()
