"""``jaxcsp convert``: copy structures between formats (CIF, extxyz, POSCAR, ASE db, ...)."""

from __future__ import annotations

import argparse

from jaxcsp.io import read, write, write_db

NAME = "convert"
HELP = "convert structure files between formats (anything ASE reads/writes)"
DESCRIPTION = """\
Read every structure from INPUT and write them to OUTPUT. An ASE database OUTPUT (.db) gets one
row per structure with the key-value pairs `source` (input path) and `source_index`. Formats that
hold one structure per file (POSCAR) need --index to pick one."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="INPUT", help="structure file to read")
    p.add_argument("output", metavar="OUTPUT", help="file to write")
    p.add_argument("--index", default=":", help="which images to read, ASE syntax (default: all)")
    p.add_argument("--in-format", default=None, help="ASE format of INPUT if not guessed")
    p.add_argument("--out-format", default=None, help="ASE format of OUTPUT if not guessed")
    p.add_argument("--wrap", action="store_true", help="wrap fractional coordinates into [0, 1)")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from ase.io.formats import filetype

    crystals = read(args.input, index=args.index, format=args.in_format)
    if args.wrap:
        crystals = crystals.wrap()
    fmt = args.out_format or filetype(args.output, read=False)
    if fmt == "db":
        idx = np.arange(crystals.batch_size)
        write_db(
            args.output,
            crystals,
            key_value_pairs={"source": args.input, "source_index": idx},
        )
    else:
        write(args.output, crystals, format=fmt)
    print(f"wrote {crystals.batch_size} structure(s) to {args.output} ({fmt})")
    return 0
