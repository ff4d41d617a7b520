"""Regenerate ``relax_set.extxyz``: random symmetric structures for the relaxation tests.

Run from the repository root: ``python tests/data/make_relax_set.py``. The structures come from
:func:`jaxcsp.symmetry.random_crystals` (PyXtal-like volume and distance rules, spglib-checked
space groups) with fixed keys, so the file is reproducible; it is shipped so the tests do not
pay for generation. ``info["set"]`` names the potential a structure is meant for.
"""

from __future__ import annotations

import pathlib

import jax

jax.config.update("jax_enable_x64", True)

import ase.io  # noqa: E402

import jaxcsp as jc  # noqa: E402
from jaxcsp.symmetry import random_crystals, reconstruct, spglib_space_groups  # noqa: E402

#: (set name, element, [(atoms per cell, count), ...]); 2–64 atoms, 70 structures per set.
PLAN = [
    (
        "lj",
        "Ar",
        [(2, 8), (4, 10), (6, 8), (8, 10), (12, 8), (16, 8), (24, 6), (32, 6), (48, 3), (64, 3)],
    ),
    (
        "sw",
        "Si",
        [(2, 8), (4, 10), (6, 8), (8, 10), (12, 8), (16, 8), (24, 6), (32, 6), (48, 3), (64, 3)],
    ),
    (
        "tersoff",
        "Si",
        [(2, 8), (4, 10), (6, 8), (8, 10), (12, 8), (16, 8), (24, 6), (32, 6), (48, 3), (64, 3)],
    ),
]


def main() -> None:
    images = []
    for s, (name, element, sizes) in enumerate(PLAN):
        for k, (natoms, count) in enumerate(sizes):
            wc = random_crystals(jax.random.key(1000 * s + k), f"{element}{natoms}", count)
            spg = spglib_space_groups(wc)
            for i, atoms in enumerate(jc.io.to_ase(jc.compact(reconstruct(wc)))):
                atoms.info["set"] = name
                atoms.info["spg"] = int(wc.spg[i])
                atoms.info["spglib_spg"] = int(spg[i])
                images.append(atoms)
    out = pathlib.Path(__file__).with_name("relax_set.extxyz")
    ase.io.write(out, images)
    print(f"wrote {len(images)} structures to {out}")


if __name__ == "__main__":
    main()
