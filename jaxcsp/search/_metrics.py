"""The field's metrics and the ranked table of a search, computed from its archive.

Definitions (every function takes the archive in candidate-id order):

* **best vs oracle calls** — the lowest enthalpy per atom found after each candidate, against
  the cumulative oracle calls spent up to and including it (the curve every seed plots).
* **N_unique** — number of distinct structures among the valid candidates
  (:func:`jaxcsp.search.deduplicate` labels).
* **N_low_E** — distinct structures within ``window`` eV/atom of the reference energy (the
  ground truth's, when given; else the lowest found), as Ridwan et al. define it.
* With a known ground truth (the metrics of CRYSIM, Liang et al.): **I_M,0** — the first iteration
  whose candidates include a match (``None`` if none); **N_E** — candidates whose enthalpy per
  atom is within ``energy_tol`` of the ground truth's (or below it); **N_M** — candidates
  that match it (``StructureMatcher`` on the group representative).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxcsp.io import to_ase
from jaxcsp.search._base import Evaluation

__all__ = ["best_vs_calls", "rank", "search_metrics"]


def best_vs_calls(archive: Evaluation) -> tuple[np.ndarray, np.ndarray]:
    """Lowest enthalpy per atom found against oracle calls spent.

    Args:
      archive: evaluations in candidate-id order, ``P`` entries.

    Returns:
      ``(calls, best)``: ``(P,) int64`` cumulative oracle calls (tiers excluded) after each
      candidate, and ``(P,) float64`` running minimum of enthalpy per atom in eV/atom
      over relaxed candidates (``inf`` until the first; single points do not count).
    """
    order = np.argsort(np.asarray(archive.ids), kind="stable")
    calls = np.cumsum(np.asarray(archive.oracle_calls, np.int64)[order])
    h = np.asarray(archive.enthalpy_per_atom, np.float64)[order]
    best = np.minimum.accumulate(np.where(archive.ok[order], h, np.inf))
    return calls, best


def search_metrics(
    archive: Evaluation,
    labels: np.ndarray,
    *,
    matches_reference: np.ndarray | None = None,
    reference_energy: float | None = None,
    window: float = 0.1,
    energy_tol: float = 1e-3,
) -> dict[str, Any]:
    """The search's metrics as plain Python values.

    Args:
      archive: every evaluation, ``P`` entries.
      labels: ``(P,) int`` deduplication labels into ``0..P-1`` (a candidate's group
        representative; invalid candidates are their own label and are not counted).
      matches_reference: ``(P,) bool``, candidates that match the ground truth, or ``None``.
      reference_energy: ground truth's enthalpy per atom (eV/atom), or ``None``.
      window: N_low_E window, eV/atom.
      energy_tol: N_E tolerance, eV/atom.

    Returns:
      dict with ``n_evaluated``, ``n_valid``, ``n_unique``, ``n_low_e``, ``best_enthalpy_per_atom``
      (eV/atom), ``oracle_calls``, ``tier_calls`` (list), and with a reference ``i_m0``,
      ``calls_to_reference`` (oracle calls spent when the first match finished, or ``None``),
      ``n_e``, ``n_m``, ``reference_energy_per_atom``.
    """
    labels = np.asarray(labels)
    ok = archive.ok
    h = np.asarray(archive.enthalpy_per_atom, np.float64)
    reps = np.flatnonzero(ok & (labels == np.arange(len(labels))))
    best = float(h[ok].min()) if ok.any() else float("nan")
    base = reference_energy if reference_energy is not None else best
    group_best = {int(r): float(h[ok & (labels == r)].min()) for r in reps}
    out: dict[str, Any] = dict(
        n_evaluated=int(archive.size),
        n_valid=int(ok.sum()),
        n_unique=len(reps),
        n_low_e=int(sum(e <= base + window for e in group_best.values())),
        best_enthalpy_per_atom=best,
        oracle_calls=int(np.asarray(archive.oracle_calls).sum()),
        tier_calls=[int(v) for v in np.asarray(archive.tier_calls).sum(axis=0)],
    )
    if matches_reference is not None:
        m = np.asarray(matches_reference, bool) & ok
        it = np.asarray(archive.iteration)
        out["i_m0"] = int(it[m].min()) if m.any() else None
        out["n_m"] = int(m.sum())
        # oracle calls spent up to and including the first match, in candidate-id order: a
        # budget measure that compares methods whose iterations differ in size
        order = np.argsort(np.asarray(archive.ids), kind="stable")
        calls = np.cumsum(np.asarray(archive.oracle_calls, np.int64)[order])
        first = np.flatnonzero(m[order])
        out["calls_to_reference"] = int(calls[first[0]]) if first.size else None
    if reference_energy is not None:
        out["reference_energy_per_atom"] = float(reference_energy)
        out["n_e"] = int((ok & (h <= reference_energy + energy_tol)).sum())
    return out


def rank(
    archive: Evaluation,
    labels: np.ndarray,
    *,
    matches_reference: np.ndarray | None = None,
    symprec: float = 0.1,
    top: int | None = None,
) -> list[dict[str, Any]]:
    """Distinct structures ranked by enthalpy per atom (lowest first).

    Each group of duplicates is represented by its lowest-enthalpy member; ties are broken by
    candidate id, so the ranking is a deterministic function of the archive.

    Args:
      archive: every evaluation.
      labels: ``(P,)`` deduplication labels.
      matches_reference: optional ``(P,) bool``.
      symprec: spglib tolerance (Å) for the reported space group.
      top: keep only the first ``top`` rows.

    Returns:
      list of dicts: ``rank``, ``id`` (candidate id of the best member), ``enthalpy_per_atom``
      (eV/atom), ``energy_per_atom`` (eV/atom), ``spg`` (spglib number), ``symbol``
      (international symbol), ``count`` (group size), ``iteration`` (first found),
      ``matches_reference`` (or ``None``).
    """
    import spglib

    labels = np.asarray(labels)
    ok = archive.ok
    h = np.asarray(archive.enthalpy_per_atom, np.float64)
    e = np.asarray(archive.energy, np.float64)
    ids = np.asarray(archive.ids)
    it = np.asarray(archive.iteration)
    n_atoms = np.asarray(archive.crystals.mask).sum(axis=1)
    rows = []
    for r in np.flatnonzero(ok & (labels == np.arange(len(labels)))):
        members = np.flatnonzero(ok & (labels == r))
        best = members[np.lexsort((ids[members], h[members]))[0]]
        rows.append((h[best], int(ids[best]), int(best), members))
    rows.sort(key=lambda t: (t[0], t[1]))
    if top is not None:
        rows = rows[:top]
    out = []
    for k, (hb, cid, b, members) in enumerate(rows):
        atoms = to_ase(archive.crystals.take(np.asarray([b])))[0]
        ds = spglib.get_symmetry_dataset(
            (atoms.cell.array, atoms.get_scaled_positions(), atoms.numbers), symprec=symprec
        )
        out.append(
            dict(
                rank=k + 1,
                id=cid,
                enthalpy_per_atom=float(hb),
                energy_per_atom=float(e[b] / n_atoms[b]),
                spg=int(ds.number) if ds is not None else 1,
                symbol=str(ds.international) if ds is not None else "P1",
                count=len(members),
                iteration=int(it[members].min()),
                matches_reference=(
                    bool(np.asarray(matches_reference)[members].any())
                    if matches_reference is not None
                    else None
                ),
            )
        )
    return out
