"""Training data for the generative models, made by jaxcsp itself, reproducibly.

The seed's training set (SACADA's sp² carbon allotropes, subgroup-augmented to 63,115 rows) is
not redistributable, so :func:`build_carbon_sp2` makes an analogue from scratch:

1. random symmetric carbon candidates (:func:`jaxcsp.design.generate_candidates`), optimised
   toward graphite's SO(3) spectrum (:func:`jaxcsp.design.design`, Algorithm 1);
2. keep the CN = 3 ones (PyXtal's bond rule for every atom);
3. drop duplicate parents (:func:`jaxcsp.search.deduplicate`, pymatgen ``StructureMatcher``
   at 0.3 Å, 20 %, 5°);
4. subgroup augmentation: each parent is re-expressed in its translationengleiche subgroups
   (PyXtal ``pyxtal.subgroup(eps=0, group_type="t")``, same cell), recursively up to
   ``depth`` levels: the same crystal under other (space group, Wyckoff) conditions;
5. drop parents and representations with more than 8 sites (the model's slots) and duplicate
   rows (same space group, Wyckoff sites and free variables to 1e-4).

The rows are written as the seed's tabular representation (:func:`jaxcsp.symmetry.to_tabular`,
angles in degrees) to a CSV whose header records the command. ``jaxcsp dataset`` runs it;
:func:`load_carbon_sp2` reads the copy shipped with the package (made by
``jaxcsp --precision 32 dataset --candidates 12000 --seed 0``).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from jaxcsp.design import design
from jaxcsp.elements import chemical_symbols
from jaxcsp.errors import StructureFileError
from jaxcsp.models.cvae import crystal_columns
from jaxcsp.search._dedup import deduplicate
from jaxcsp.symmetry import from_pyxtal, from_tabular, reconstruct, to_pyxtal, to_tabular

__all__ = ["SHIPPED_CARBON_SP2", "build_carbon_sp2", "load_carbon_sp2", "read_table", "write_table"]

#: the dataset shipped with the package
SHIPPED_CARBON_SP2 = os.path.join(os.path.dirname(__file__), "data", "models", "carbon_sp2.csv")

_COLUMNS = ["spg", "a", "b", "c", "alpha", "beta", "gamma"] + [
    f"{f}{k}" for k in range(1, 9) for f in ("wp", "x", "y", "z")
]


def _subgroup_family(x: Any, depth: int, max_sites: int) -> list[Any]:
    """``x`` and its t-subgroup representations down to ``depth`` levels (same cell)."""
    natoms = sum(int(site.wp.multiplicity) for site in x.atom_sites)
    if not 0 < len(x.atom_sites) <= max_sites:  # e.g. a P1 parent with 12 sites
        return []
    out, frontier = [x], [x]
    for _ in range(depth):
        nxt = []
        for s in frontier:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    subs = s.subgroup(eps=0.0, group_type="t", max_cell=1)
            except Exception:  # PyXtal raises many kinds for groups without such subgroups
                continue
            for t in subs or []:
                # PyXtal can return a representation that lost its sites: keep only those
                # with every atom of the parent, in at most max_sites sites
                atoms = sum(int(site.wp.multiplicity) for site in t.atom_sites)
                if 0 < len(t.atom_sites) <= max_sites and atoms == natoms:
                    nxt.append(t)
        out += nxt
        frontier = nxt
    return out


def _row_keys(rows: np.ndarray, mask: np.ndarray) -> list[tuple]:
    keys = []
    for r, m in zip(rows, mask, strict=True):
        vals = np.where(m, np.round(r, 4), 0.0)
        keys.append(tuple(vals.tolist()))
    return keys


def build_carbon_sp2(
    candidates: int = 12000,
    *,
    seed: int = 0,
    steps: int = 300,
    depth: int = 2,
    progress: bool = True,
    out: str | os.PathLike | None = None,
    dtype: Any = None,
) -> Any:
    """Build the sp² carbon training set (see the module docstring).

    Args:
      candidates: random candidates optimised in step 1.
      seed: random seed (the result is a deterministic function of it).
      steps: Algorithm 1 steps.
      depth: subgroup levels of the augmentation.
      progress: show progress bars.
      out: CSV file to write (:func:`write_table`); ``None`` for none.
      dtype: float dtype of the result.

    Returns:
      :class:`~jaxcsp.symmetry.WyckoffCrystals` of the rows (8 site slots).
    """
    res = design(candidates, seed=seed, steps=steps, progress=progress, dtype=dtype)
    idx = np.flatnonzero(res.valid)
    parents = res.final.take(idx)
    labels = deduplicate(reconstruct(parents))
    parents = parents.take(np.flatnonzero(labels == np.arange(len(labels))))
    family = []
    for x in to_pyxtal(parents):
        family += _subgroup_family(x, depth, 8)
    wc = from_pyxtal(family, max_sites=8, dtype=dtype)

    rows = to_tabular(wc, angles="degrees")
    _, mask = crystal_columns(wc)
    full = np.concatenate([np.ones((len(rows), 1), bool), mask[:, :6]], axis=1)
    site = np.asarray(wc.site_mask)[:, :8]
    slot = np.concatenate([site[:, :, None], mask[:, 6:].reshape(-1, 8, 3)], axis=2)
    keys = _row_keys(rows, np.concatenate([full, slot.reshape(len(rows), -1)], axis=1))
    seen: dict[tuple, int] = {}
    keep = [seen.setdefault(k, i) == i for i, k in enumerate(keys)]
    wc = wc.take(np.flatnonzero(keep))
    if out is not None:
        write_table(
            out,
            wc,
            header=(
                f"jaxcsp dataset --candidates {candidates} --seed {seed} --steps {steps} "
                f"--depth {depth}: {len(parents)} unique CN=3 parents of {len(idx)} valid"
            ),
        )
    return wc


def write_table(path: str | os.PathLike, wc: Any, *, header: str = "") -> None:
    """Write crystals as tabular rows (39 columns, angles in degrees) to a CSV file.

    Args:
      path: output file (written to a temporary name, then renamed).
      wc: :class:`~jaxcsp.symmetry.WyckoffCrystals` of one element with at most 8 sites.
      header: a comment line recorded at the top (e.g. the command that made the rows).
    """
    rows = to_tabular(wc, angles="degrees")
    species = np.unique(np.asarray(wc.site_species)[np.asarray(wc.site_mask)])
    element = chemical_symbols([int(species[0])])[0] if len(species) == 1 else "X"
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.partial"
    comments = [f"element: {element}"] + ([header] if header else [])
    np.savetxt(
        tmp,
        rows,
        delimiter=",",
        fmt="%.10g",
        header="\n".join([*comments, ",".join(_COLUMNS)]),
    )
    os.replace(tmp, path)


def read_table(path: str | os.PathLike, *, dtype: Any = None) -> Any:
    """Read a CSV written by :func:`write_table` into a :class:`~jaxcsp.symmetry.WyckoffCrystals`.

    Raises:
      StructureFileError: the file cannot be read.
      InvalidStructureError: a bad row (naming the row and field).
    """
    element = "C"
    try:
        with open(path) as f:
            for line in f:
                if not line.startswith("#"):
                    break
                if line.startswith("# element:"):
                    element = line.split(":", 1)[1].strip()
        rows = np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError) as exc:
        raise StructureFileError(f"cannot read table ({exc})", path=os.fspath(path)) from exc
    return from_tabular(rows, element, angles="degrees", dtype=dtype)


def load_carbon_sp2(*, dtype: Any = None) -> Any:
    """The sp² carbon training set shipped with jaxcsp (:data:`SHIPPED_CARBON_SP2`)."""
    return read_table(SHIPPED_CARBON_SP2, dtype=dtype)
