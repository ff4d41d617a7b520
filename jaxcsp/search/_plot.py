"""The search's figure: lowest enthalpy per atom found against oracle calls spent."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from jaxcsp.search._metrics import best_vs_calls

__all__ = ["plot_search"]


def plot_search(
    result, path: str | os.PathLike, *, title: str | None = None, compare: Sequence = ()
) -> str:
    """Save the energy-vs-oracle-calls plot of a search (matplotlib, Agg backend).

    Every candidate is a dot (its relaxed enthalpy per atom, eV/atom, at the cumulative oracle
    calls after it); the line is the running best; a dashed line marks the reference energy.

    Args:
      result: a :class:`~jaxcsp.search.SearchResult`.
      path: output image path (PNG, PDF, ...).
      title: figure title (default: method and composition).
      compare: other searches of the same composition (e.g. the random baseline of
        ``jaxcsp search --compare random``), drawn as their running best only.

    Returns:
      the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archive = result.state.archive
    calls, best = best_vs_calls(archive)
    order = np.argsort(np.asarray(archive.ids), kind="stable")
    h = np.asarray(archive.enthalpy_per_atom, np.float64)[order]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    ok = np.isfinite(h)
    ax.scatter(calls[ok], h[ok], s=8, alpha=0.4, color="tab:gray", label="relaxed candidates")
    ax.step(
        calls,
        np.where(np.isfinite(best), best, np.nan),
        where="post",
        color="tab:blue",
        label=f"lowest found ({result.state.method})",
    )
    for other, color in zip(compare, ("tab:orange", "tab:green", "tab:purple"), strict=False):
        c_calls, c_best = best_vs_calls(other.state.archive)
        ax.step(
            c_calls,
            np.where(np.isfinite(c_best), c_best, np.nan),
            where="post",
            color=color,
            label=f"lowest found ({other.state.method})",
        )
    if result.reference_energy is not None:
        ax.axhline(result.reference_energy, ls="--", color="tab:red", label="reference")
    if ok.any():
        lo = np.nanmin(h[ok])
        ax.set_ylim(lo - 0.05, min(np.nanpercentile(h[ok], 95), lo + 1.5) + 0.05)
    ax.set_xlabel("oracle calls (energy + force evaluations)")
    ax.set_ylabel("enthalpy per atom (eV/atom)")
    comp = "".join(f"{e}{n}" for e, n in result.state.composition)
    ax.set_title(title or f"{result.state.method} search, {comp}")
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return os.fspath(path)
