"""``jaxcsp info``: summarise every structure in one or more files."""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np

from jaxcsp.io import read, to_ase

NAME = "info"
HELP = "summarise structures: formula, cell, volume, density, space group"
DESCRIPTION = """\
Print one row per structure: formula, atom count, cell lengths (Å) and angles (°), volume (Å³),
density (g/cm³) and the space group found by spglib at --symprec (Å)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="structure files (anything ASE reads)")
    p.add_argument("--index", default=":", help="which images to read, ASE syntax (default: all)")
    p.add_argument("--format", default=None, help="ASE format name if not guessed from the name")
    p.add_argument("--symprec", type=float, default=1e-3, help="spglib tolerance in Å (1e-3)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of a table")


def summarize(crystals, symprec: float = 1e-3) -> list[dict]:
    """Per-structure summary dicts (formula, natoms, cell parameters, volume, density, spg).

    Args:
      crystals: a ``Crystals`` batch.
      symprec: spglib distance tolerance in Å.

    Returns:
      ``B`` dicts with keys ``formula``, ``natoms``, ``a``, ``b``, ``c`` (Å), ``alpha``,
      ``beta``, ``gamma`` (degrees), ``volume`` (Å³), ``density`` (g/cm³), ``spacegroup``
      (international symbol and number, or ``None`` if spglib finds none).
    """
    import spglib

    rows = []
    for atoms in to_ase(crystals):
        cellpar = atoms.cell.cellpar()
        vol = float(atoms.get_volume())
        density = float(atoms.get_masses().sum() / vol * 1.66053906660)
        with warnings.catch_warnings():  # spglib 2.5+ deprecates its None-on-failure return
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = spglib.get_symmetry_dataset(
                (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers), symprec=symprec
            )
        spg = f"{ds.international} ({ds.number})" if ds is not None else None
        rows.append(
            {
                "formula": atoms.get_chemical_formula(mode="metal"),
                "natoms": len(atoms),
                **{
                    k: float(v)
                    for k, v in zip(("a", "b", "c", "alpha", "beta", "gamma"), cellpar, strict=True)
                },
                "volume": vol,
                "density": density,
                "spacegroup": spg,
            }
        )
    return rows


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 140))
    for path in args.files:
        crystals = read(path, index=args.index, format=args.format)
        rows = summarize(crystals, args.symprec)
        if args.json:
            for i, r in enumerate(rows):
                print(json.dumps({"file": path, "index": i, **r}))
            continue
        table = Table(title=f"{path}: {len(rows)} structure(s)", title_justify="left")
        for col in (
            "#",
            "formula",
            "atoms",
            "a Å",
            "b Å",
            "c Å",
            "α°",
            "β°",
            "γ°",
            "V Å³",
            "ρ g/cm³",
        ):
            table.add_column(col, justify="right")
        table.add_column("space group", justify="left")
        for i, r in enumerate(rows):
            table.add_row(
                str(i),
                r["formula"],
                str(r["natoms"]),
                *(f"{r[k]:.4f}" for k in ("a", "b", "c")),
                *(f"{r[k]:.2f}" for k in ("alpha", "beta", "gamma")),
                f"{r['volume']:.3f}",
                f"{r['density']:.3f}",
                r["spacegroup"] or "—",
            )
        console.print(table)
        sizes = np.array([r["natoms"] for r in rows])
        console.print(
            f"  atoms per structure: min {sizes.min()}, median {int(np.median(sizes))}, "
            f"max {sizes.max()}; padded batch shape (B, N) = ({crystals.batch_size}, "
            f"{crystals.max_atoms})"
        )
    return 0
