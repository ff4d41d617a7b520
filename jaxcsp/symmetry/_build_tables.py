"""Regenerate ``jaxcsp/data/symmetry/wyckoff_tables.npz`` from PyXtal's Wyckoff database.

Run from the repository root (needs ``pyxtal``; the shipped package does not)::

    python -m jaxcsp.symmetry._build_tables

What is stored (all groups in PyXtal's standard settings, hexagonal axes for the R groups;
Wyckoff positions in PyXtal's order, so index 0 of every group is the general position):

* ``wp_offset (231,) int32``: the Wyckoff positions of group ``g`` are global rows
  ``wp_offset[g-1]:wp_offset[g]``.
* ``wp_mult (W,) int32``, ``wp_letter (W,) <U1``, ``wp_site_symm (W,) <U16``.
* ``wp_free (W,3) bool``: which of x, y, z the position's first operation reads (nonzero
  columns of its rotation part). Coupled positions such as (x,2x,z) have x and z free.
* ``wp_op_offset (W+1,) int32``: operations of Wyckoff row ``w`` are op rows
  ``wp_op_offset[w]:wp_op_offset[w+1]`` (``wp_mult[w]`` of them).
* ``op_rot (T,3,3) int8`` and ``op_trans24 (T,3) int16``: the affine operation
  ``x -> op_rot @ x + op_trans24 / 24`` (translations in [0, 1)), already composed with the
  position's first operation, so applying every row to the free vector (x, y, z) gives PyXtal's
  ``wp.apply_ops(wp.ops[0].operate(xyz))`` orbit exactly (PyXtal's first operations are
  projections, which this script checks).
* ``spg_symbol (230,) <U16``, ``spg_lattice_type (230,) <U16``.
"""

from __future__ import annotations

import pathlib

import numpy as np

OUT = pathlib.Path(__file__).resolve().parents[1] / "data" / "symmetry" / "wyckoff_tables.npz"


def build() -> dict[str, np.ndarray]:
    """Read PyXtal's tables and return the arrays described in the module docstring."""
    from pyxtal.symmetry import Group

    wp_offset = [0]
    mult, letter, site_symm, free, op_offset = [], [], [], [], [0]
    rots, trans = [], []
    symbols, ltypes = [], []
    for g in range(1, 231):
        group = Group(g)
        symbols.append(group.symbol)
        ltypes.append(group.lattice_type)
        for i, wp in enumerate(group):
            assert wp.index == i
            wp.get_site_symmetry()
            r0 = np.asarray(wp.ops[0].rotation_matrix, float)
            t0 = np.asarray(wp.ops[0].translation_vector, float)
            # op0 must be a projection: op0(op0(v)) == op0(v) (mod 1).
            assert np.allclose(r0 @ r0, r0)
            d = r0 @ t0
            assert np.allclose(d - np.round(d), 0)
            mult.append(wp.multiplicity)
            letter.append(wp.letter)
            site_symm.append(wp.site_symm)
            free.append(np.any(np.abs(r0) > 1e-9, axis=0))
            assert len(wp.ops) == wp.multiplicity
            for op in wp.ops:
                r = np.asarray(op.rotation_matrix, float)
                t = np.asarray(op.translation_vector, float)
                rc = r @ r0
                tc = r @ t0 + t
                t24 = tc * 24.0
                assert np.allclose(t24, np.round(t24), atol=1e-6)
                assert np.allclose(rc, np.round(rc))
                rots.append(np.round(rc).astype(np.int8))
                trans.append(np.mod(np.round(t24).astype(np.int64), 24).astype(np.int16))
            op_offset.append(op_offset[-1] + wp.multiplicity)
        wp_offset.append(len(mult))
    return {
        "wp_offset": np.asarray(wp_offset, np.int32),
        "wp_mult": np.asarray(mult, np.int32),
        "wp_letter": np.asarray(letter, dtype="<U1"),
        "wp_site_symm": np.asarray(site_symm, dtype="<U16"),
        "wp_free": np.asarray(free, bool),
        "wp_op_offset": np.asarray(op_offset, np.int32),
        "op_rot": np.asarray(rots, np.int8),
        "op_trans24": np.asarray(trans, np.int16),
        "spg_symbol": np.asarray(symbols, dtype="<U16"),
        "spg_lattice_type": np.asarray(ltypes, dtype="<U16"),
    }


def main() -> None:
    tables = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # allow_pickle (the default) named, so that no table can be taken for it
    np.savez_compressed(OUT, allow_pickle=True, **tables)
    print(f"wrote {OUT}: {len(tables['wp_mult'])} Wyckoff positions, {len(tables['op_rot'])} ops")


if __name__ == "__main__":
    main()
