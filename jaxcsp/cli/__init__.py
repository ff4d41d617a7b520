"""The ``jaxcsp`` command line.

Each subcommand lives in its own module exposing ``NAME``, ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int``; adding one (``relax``, ``search``, ``design``, ``bench`` as their
issues land) is a new module plus one line in :data:`SUBCOMMANDS`.

>>> main(["--version"])  # doctest: +SKIP
jaxcsp 0.1.0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jaxcsp import __version__
from jaxcsp.cli import bench, convert, dataset, design, info, relax, search, train
from jaxcsp.errors import JaxcspError

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

#: Registered subcommand modules, in the order ``--help`` lists them.
SUBCOMMANDS = [info, convert, relax, search, design, dataset, train, bench]

_DESCRIPTION = """\
jaxcsp: differentiable crystal structure optimization and prediction in JAX.

Structures are read and written through ASE (CIF, extxyz, POSCAR, ASE db, ...).
Run `jaxcsp COMMAND --help` for a command's options."""

_EPILOG = """\
examples:
  jaxcsp info structures.cif              lattice, formula and space group of every structure
  jaxcsp info --json candidates.db        the same as JSON lines
  jaxcsp convert in.extxyz out.db         copy every structure to an ASE database
  jaxcsp search --composition Si8         random search for silicon's lowest structures (SW)
  jaxcsp bench --quick                    every benchmark against its peer, one table + JSON

environment:
  JAXCSP_JAX_CACHE=DIR                    keep compiled programs in DIR: later runs start faster
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="jaxcsp",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jaxcsp {__version__}")
    parser.add_argument(
        "--precision",
        choices=("64", "32"),
        default="64",
        help="floating-point precision of JAX computations (default 64: file conversions and "
        "reference-grade numbers; 32 is faster for large batches)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for mod in SUBCOMMANDS:
        p = sub.add_parser(
            mod.NAME,
            help=mod.HELP,
            description=mod.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxcsp`` console script; returns the process exit code.

    Exit codes: 0 success, 1 bad input (a jaxcsp error, printed on one line), 2 usage error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    import os

    import jax

    jax.config.update("jax_enable_x64", args.precision == "64")
    cache = os.environ.get("JAXCSP_JAX_CACHE")
    if cache:  # reuse compiled programs across runs (the second run skips most compilation)
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:
        return int(args._run(args) or 0)
    except JaxcspError as e:
        print(f"jaxcsp {args.command}: error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `jaxcsp info big.db | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
