"""``jaxcsp relax``: relax every structure of a file into an ASE database (continuous batching)."""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

from jaxcsp import potentials
from jaxcsp.cli._common import add_progress_flag
from jaxcsp.errors import JaxcspError, check_real
from jaxcsp.io import connect_db
from jaxcsp.optimize import relax_stream
from jaxcsp.optimize._relax import _check_args

NAME = "relax"
HELP = "relax many structures with a potential (batched BFGS+line search / FIRE / L-BFGS)"
DESCRIPTION = """\
Relax every structure in INPUT and write one row per structure to an ASE database as it
finishes (status, steps, force_calls, max_force, energy_per_atom, input_id). Rerunning the same
command resumes: structures already in the database are skipped.

Potentials (--potential):
  lj[:sigma=S,epsilon=E,cutoff=R]   Lennard-Jones (Å, eV), any element; add
                                     cutoff_mode=truncate,tail_correction=1 for the
                                     long-range tail
  morse[:epsilon=E,alpha=A,r0=R0,cutoff=R]
  nacl[:cutoff=R,alpha=A]            NaCl: Tosi-Fumi Buckingham + DSF Coulomb
  sw                                 Stillinger-Weber silicon
  tersoff[:FILE]                     Tersoff from a LAMMPS file (default: PyXtal's Si.tersoff)
  sevennet | chgnet                  pretrained universal MLIPs (needs the `mlip` extra)

examples:
  jaxcsp relax candidates.extxyz -o relaxed.db --potential sw --fmax 0.01 --cell
  jaxcsp relax ar.cif -o ar.db --potential lj:sigma=3.4,epsilon=0.0104,cutoff=8.5 --method fire"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="INPUT", help="structure file (anything ASE reads)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.db", help="ASE database")
    p.add_argument("--potential", default="sw", help="energy model, see above (default: sw)")
    p.add_argument("--fmax", type=float, default=0.01, help="force threshold, eV/Å (0.01)")
    p.add_argument("--cell", action="store_true", help="relax the cell too (FrechetCellFilter)")
    p.add_argument("--pressure", type=float, default=0.0, help="pressure in GPa (with --cell)")
    p.add_argument(
        "--method",
        default="bfgs_linesearch",
        choices=("bfgs_linesearch", "fire", "lbfgs"),
        help="optimizer (default: bfgs_linesearch)",
    )
    p.add_argument("--max-steps", type=int, default=1000, help="steps per structure (1000)")
    p.add_argument("--max-atoms", type=int, default=2048, help="atom cap per batch, N_max (2048)")
    p.add_argument("--refill-every", type=int, default=10, help="steps between refills (10)")
    add_progress_flag(p)


def _kv(text: str) -> dict[str, Any]:
    """``"a=1,b=x"`` -> ``{"a": 1.0, "b": "x"}``: keyword arguments of a potential, numbers
    where they parse (each potential checks its own)."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:  # e.g. cutoff_mode=truncate
            out[key.strip()] = value.strip()
    return out


def make_potential(spec: str):
    """Build a potential from a CLI spec such as ``"lj:sigma=3.4,epsilon=0.0104"``."""
    name, _, rest = spec.partition(":")
    name = name.strip().lower()
    if name in ("lj", "lennard_jones"):
        return potentials.lennard_jones(**_kv(rest))
    if name == "morse":
        return potentials.morse(**_kv(rest))
    if name in ("nacl", "buckingham_nacl"):
        return potentials.buckingham_nacl(**_kv(rest))
    if name in ("sw", "stillinger_weber"):
        return potentials.stillinger_weber(**_kv(rest))
    if name == "tersoff":
        import pyxtal

        path = rest or str(pathlib.Path(pyxtal.__file__).parent / "potentials" / "Si.tersoff")
        return potentials.tersoff(path)
    if name in ("sevennet", "chgnet"):
        from jaxcsp.potentials import external  # the torch MLIPs (optional extra): lazily

        return getattr(external, name)()
    raise JaxcspError(
        f"unknown potential {spec!r} (lj, morse, nacl, sw, tersoff, sevennet, chgnet)"
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from ase.units import GPa

    # bad options and an unusable output fail on one line before a potential is even built
    _check_args(
        args.method,
        "frechet" if args.cell else None,
        fmax=args.fmax,
        max_steps=args.max_steps,
        max_atoms=args.max_atoms,
        refill_every=args.refill_every,
    )
    check_real("pressure", args.pressure, positive=False, unit="GPa")
    connect_db(args.output)
    pot = make_potential(args.potential)
    summary = relax_stream(
        args.input,
        pot,
        db=args.output,
        max_atoms=args.max_atoms,
        method=args.method,
        fmax=args.fmax,
        cell_filter="frechet" if args.cell else None,
        max_steps=args.max_steps,
        pressure=args.pressure * GPa,
        refill_every=args.refill_every,
        progress=not args.no_progress,
    )
    invalid = summary.statuses.get("invalid", 0)
    if invalid:
        print(
            f"jaxcsp relax: warning: {invalid} input(s) ended 'invalid' and were not relaxed "
            "(bad structure, e.g. overlapping atoms, or non-finite forces at the start); "
            f"see the 'error' key of their rows in {args.output}",
            file=sys.stderr,
        )
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(summary.statuses.items()))
    print(
        f"{summary.written} relaxed ({statuses or 'none'}), {summary.skipped} already in "
        f"{args.output}; {summary.wall_s:.1f} s"
    )
    return 0
