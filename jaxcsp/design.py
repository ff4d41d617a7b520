"""The descriptor-driven design stage: random symmetric carbon → Algorithm 1 → CN = 3 screening.

Contract (seed ``001``, §3.3–3.4 and the ``N_valid_env`` metric):

1. :func:`generate_candidates` draws ``n`` random symmetric crystals of one element (carbon by
   default) over mixed space groups and cell sizes (:func:`jaxcsp.symmetry.random_crystals`),
   deterministic given the seed.
2. :func:`design` optimises them in fixed-size batches with
   :func:`jaxcsp.optimize.descriptor.optimize_wyckoff` toward the spectrum of graphite
   (space group 194), screens them with the CN validity test (PyXtal's bond rule, CN = 3 for
   every atom), writes every candidate to an ASE database as soon as its batch finishes (with
   key-value pairs ``valid_env``, ``loss``, ``spg``, ``candidate``, ``seed``, ``loss_initial``,
   ``valid_env_initial``) and resumes from that database: candidates already written for the
   same seed are not recomputed.
3. :func:`plot_design` draws the seed's Fig. 2 (site spectra before and after against the
   graphite reference) and the loss histograms.

:func:`pyxtal_baseline` runs PyXtal's own CPU optimizer (``pyxtal.lego.builder.optimize_xtal``:
Nelder–Mead then L-BFGS-B with finite differences, one structure at a time) on the same
candidates, for the comparison of ``N_valid_env`` and wall time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.descriptors import SO3Settings, reference_spectrum, valid_environment
from jaxcsp.io import connect_db, write_db
from jaxcsp.optimize.descriptor import loss_cutoff, optimize_wyckoff, site_edge_spec
from jaxcsp.symmetry import random_crystals, reconstruct, to_pyxtal

__all__ = [
    "DesignResult",
    "design",
    "generate_candidates",
    "loss_histogram",
    "plot_design",
    "pyxtal_baseline",
]

Array = jax.Array

#: Default cell sizes (atoms per cell) of the random candidates.
DEFAULT_SIZES = (4, 6, 8, 12)


def generate_candidates(
    key: Any,
    n: int,
    *,
    element: str = "C",
    sizes: Sequence[int] = DEFAULT_SIZES,
    dtype: Any = None,
    **random_kwargs: Any,
) -> Any:
    """Random symmetric crystals of one element over mixed space groups and cell sizes.

    Candidate ``i`` has ``sizes[i % len(sizes)]`` atoms; its space group is uniform over the
    groups compatible with that composition (see :func:`jaxcsp.symmetry.random_crystals`).

    Args:
      key: ``jax.random`` key.
      n: number of candidates.
      element: chemical symbol.
      sizes: atoms per cell to cycle through.
      dtype: float dtype of the free variables.
      **random_kwargs: more :func:`jaxcsp.symmetry.random_crystals` arguments.

    Returns:
      :class:`~jaxcsp.symmetry.WyckoffCrystals` with ``n`` crystals, padded to
      ``S = N = max(sizes)``.
    """
    sizes = [int(s) for s in sizes]
    top = max(sizes)
    order = np.arange(n)
    parts, where = [], []
    for k, size in enumerate(sizes):
        idx = order[order % len(sizes) == k]
        if len(idx) == 0:
            continue
        parts.append(
            random_crystals(
                jax.random.fold_in(key, size),
                f"{element}{size}",
                len(idx),
                max_sites=top,
                max_atoms=top,
                dtype=dtype,
                **random_kwargs,
            )
        )
        where.append(idx)
    cat = jax.tree.map(lambda *x: jnp.concatenate(x), *parts)
    inverse = np.argsort(np.concatenate(where))
    return cat.take(inverse)


@dataclasses.dataclass(frozen=True)
class DesignResult:
    """Outcome of :func:`design` for ``n`` candidates (numpy arrays, candidate order).

    Attributes:
      initial: input :class:`~jaxcsp.symmetry.WyckoffCrystals`.
      final: optimised :class:`~jaxcsp.symmetry.WyckoffCrystals`.
      spg: ``(n,)`` space groups.
      num_atoms: ``(n,)`` atoms per cell.
      loss_initial, loss: ``(n,)`` descriptor loss before and after (per component, Eq. 1
        scale with PyXtal's multiplicity weighting).
      valid_initial, valid: ``(n,)`` bool, CN = 3 for every atom before and after.
      spectra_initial, spectra: ``(n, S, F)`` site spectra before and after (NaN for
        candidates loaded from the database on resume and for padding sites).
      site_mask: ``(n, S)`` real sites.
      reference: ``(F,)`` target spectrum.
      seconds: wall time of the optimisation (excluding generation and I/O), s.
      resumed: candidates read back from the database instead of recomputed.
    """

    initial: Any
    final: Any
    spg: np.ndarray
    num_atoms: np.ndarray
    loss_initial: np.ndarray
    loss: np.ndarray
    valid_initial: np.ndarray
    valid: np.ndarray
    spectra_initial: np.ndarray
    spectra: np.ndarray
    site_mask: np.ndarray
    reference: np.ndarray
    seconds: float
    resumed: int

    @property
    def n_valid_env(self) -> int:
        """``N_valid_env``: candidates with CN = 3 after optimisation."""
        return int(np.sum(self.valid))

    def summary(self) -> str:
        """A few lines for the terminal: N_valid_env, loss quantiles, wall time."""
        n = len(self.valid)
        q = np.nanquantile(self.loss, [0.1, 0.5, 0.9]) if n else [np.nan] * 3
        q0 = np.nanquantile(self.loss_initial, [0.1, 0.5, 0.9]) if n else [np.nan] * 3
        lines = [
            f"candidates: {n}  (resumed from db: {self.resumed})",
            f"N_valid_env (CN=3): {self.n_valid_env} / {n} after optimisation "
            f"({int(np.sum(self.valid_initial))} before)",
            f"loss quantiles 10/50/90%: before {q0[0]:.3g} / {q0[1]:.3g} / {q0[2]:.3g}, "
            f"after {q[0]:.3g} / {q[1]:.3g} / {q[2]:.3g}",
            f"optimisation wall time: {self.seconds:.1f} s "
            f"({1000 * self.seconds / max(n - self.resumed, 1):.1f} s per 1,000 candidates)",
        ]
        return "\n".join(lines)


def loss_histogram(
    loss: Any, *, bins: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Histogram of losses on log-spaced bins.

    Args:
      loss: ``(n,)`` losses.
      bins: bin edges (default ``10^-6 .. 10^3``, one per decade, plus the extremes).

    Returns:
      ``(counts, edges)``.
    """
    edges = np.asarray(bins if bins is not None else [0.0, *10.0 ** np.arange(-6, 4), np.inf])
    counts, _ = np.histogram(np.asarray(loss, np.float64), bins=edges)
    return counts, edges


def _trim(wc: Any) -> Any:
    """Drop the padding sites and atom slots no crystal of the batch uses (smaller shapes)."""
    s = max(int(np.asarray(wc.num_sites).max()), 1)
    n = max(int(np.asarray(wc.num_atoms).max()), 1)
    return wc.replace(
        wyckoff=wc.wyckoff[:, :s],
        site_species=wc.site_species[:, :s],
        site_mask=wc.site_mask[:, :s],
        coords=wc.coords[:, :s],
        coords_free=wc.coords_free[:, :s],
        atom_site=wc.atom_site[:, :n],
        atom_op=wc.atom_op[:, :n],
        atom_mask=wc.atom_mask[:, :n],
    )


def _site_mask(wc: Any) -> np.ndarray:
    return np.asarray(wc.site_mask)


def _resume_rows(db: str | os.PathLike | None, seed: int, n: int) -> dict[int, dict]:
    if db is None or not os.path.exists(os.fspath(db)):
        return {}

    out = {}
    with connect_db(db) as con:
        for row in con.select(seed=seed):
            i = int(row.get("candidate", -1))
            if 0 <= i < n and int(row.get("n_candidates", n)) == n:
                out[i] = {"row": row}
    return out


def design(
    n: int = 1000,
    *,
    seed: int = 0,
    db: str | os.PathLike | None = None,
    plot: str | os.PathLike | None = None,
    steps: int = 300,
    batch_size: int = 256,
    element: str = "C",
    sizes: Sequence[int] = DEFAULT_SIZES,
    reference: Any = "graphite",
    target_cn: int = 3,
    settings: SO3Settings = SO3Settings(),
    cn_weight: float = 1.0,
    progress: bool = True,
    dtype: Any = None,
    **optimize_kwargs: Any,
) -> DesignResult:
    """Run the whole design stage: generate, optimise, screen (CN), write, plot.

    Args:
      n: number of candidates.
      seed: random seed (candidates are a deterministic function of it).
      db: ASE database to write every candidate to (appended batch by batch; a rerun with the
        same ``seed`` and ``n`` skips the candidates already there).
      plot: path of a figure (PNG/PDF) with spectra before/after vs the reference and the loss
        histograms; ``None`` for none.
      steps: Algorithm 1 steps per batch.
      batch_size: candidates optimised together (the last batch is padded to this size, so one
        compilation serves every batch).
      element, sizes: candidates' element and cell sizes (see :func:`generate_candidates`).
      reference: target environment for :func:`jaxcsp.descriptors.reference_spectrum`.
      target_cn: coordination number of the validity test (and of the smooth-CN term).
      settings: descriptor setting of the reference and the loss
        (:class:`~jaxcsp.descriptors.SO3Settings`; the default is the seed's: nmax 2, lmax 4,
        rcut 2.0 Å, alpha 1.5 Å⁻²).
      cn_weight: weight of the smooth-CN term of the loss (0 for the pure spectrum loss).
      progress: show a progress bar (tqdm).
      dtype: float dtype of the optimisation (default: JAX's default float).
      **optimize_kwargs: more :func:`jaxcsp.optimize.descriptor.optimize_wyckoff` arguments.

    Returns:
      :class:`DesignResult`.
    """
    ref = reference_spectrum(reference, settings)
    wc = generate_candidates(jax.random.key(seed), n, element=element, sizes=sizes, dtype=dtype)
    done = _resume_rows(db, seed, n)
    todo = np.asarray([i for i in range(n) if i not in done], dtype=int)
    s_max = wc.max_sites
    f = ref.shape[0]
    out = {
        "loss_initial": np.full(n, np.nan),
        "loss": np.full(n, np.nan),
        "valid_initial": np.zeros(n, bool),
        "valid": np.zeros(n, bool),
        "spectra_initial": np.full((n, s_max, f), np.nan),
        "spectra": np.full((n, s_max, f), np.nan),
    }
    final = wc
    for i, d in done.items():
        row = d["row"]
        out["loss"][i] = row.get("loss", np.nan)
        out["loss_initial"][i] = row.get("loss_initial", np.nan)
        out["valid"][i] = bool(row.get("valid_env", False))
        out["valid_initial"][i] = bool(row.get("valid_env_initial", False))
    kw = dict(
        steps=steps,
        settings=settings,
        cn_weight=cn_weight,
        cn_target=float(target_cn),
        **optimize_kwargs,
    )
    # batches of candidates of similar size (less padding); image ranges are per crystal
    cutoff = loss_cutoff(
        wc, settings.rcut, cn_weight=cn_weight, cn_reach=optimize_kwargs.get("cn_reach", 0.5)
    )
    if len(todo):
        natoms = np.asarray(wc.num_atoms)[todo]
        nsites = np.asarray(wc.num_sites)[todo]
        todo = todo[np.lexsort((nsites, natoms))]
    bar = None
    if progress and len(todo):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="design", unit="cand")
    seconds = 0.0
    final_parts: dict[int, Any] = {}
    for start in range(0, len(todo), batch_size):
        idx = todo[start : start + batch_size]
        padded = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
        batch = _trim(wc.take(padded))
        t0 = time.perf_counter()
        spec = site_edge_spec(batch, cutoff)
        res = optimize_wyckoff(batch, ref, spec=spec, **kw)
        jax.block_until_ready(res.loss)
        seconds += time.perf_counter() - t0
        k = len(idx)
        c0, c1 = reconstruct(batch), reconstruct(res.wc)
        v0 = np.asarray(valid_environment(c0, target_cn))[:k]
        v1 = np.asarray(valid_environment(c1, target_cn))[:k]
        out["loss_initial"][idx] = np.asarray(res.initial_loss)[:k]
        out["loss"][idx] = np.asarray(res.loss)[:k]
        out["valid_initial"][idx] = v0
        out["valid"][idx] = v1
        s_b = res.spectra.shape[1]
        out["spectra_initial"][idx, :s_b] = np.asarray(res.initial_spectra)[:k]
        out["spectra"][idx, :s_b] = np.asarray(res.spectra)[:k]
        final_parts[start] = (idx, res.wc.take(np.arange(k)))
        if db is not None:
            spg = np.asarray(batch.spg)[:k]
            write_db(
                db,
                c1.take(np.arange(k)),
                key_value_pairs={
                    "valid_env": v1.tolist(),
                    "loss": out["loss"][idx].tolist(),
                    "spg": spg.tolist(),
                    "candidate": idx.tolist(),
                    "seed": int(seed),
                    "n_candidates": int(n),
                    "loss_initial": out["loss_initial"][idx].tolist(),
                    "valid_env_initial": v0.tolist(),
                },
            )
        if bar is not None:
            bar.update(k)
            bar.set_postfix(valid=int(out["valid"].sum()))
    if bar is not None:
        bar.close()
    if final_parts:
        upd = {}
        for idx, part in final_parts.values():
            for j, i in enumerate(idx):
                upd[int(i)] = (part, j)
        cells = np.asarray(wc.cell).copy()
        coords = np.asarray(wc.coords).copy()
        for i, (part, j) in upd.items():
            cells[i] = np.asarray(part.cell[j])
            coords[i, : part.coords.shape[1]] = np.asarray(part.coords[j])
        final = wc.replace(cell=jnp.asarray(cells, wc.cell.dtype), coords=jnp.asarray(coords))
    result = DesignResult(
        initial=wc,
        final=final,
        spg=np.asarray(wc.spg),
        num_atoms=np.asarray(wc.num_atoms),
        site_mask=_site_mask(wc),
        reference=np.asarray(ref),
        seconds=seconds,
        resumed=len(done),
        **out,
    )
    if plot is not None:
        plot_design(result, plot)
    return result


def plot_design(result: DesignResult, path: str | os.PathLike, *, examples: int = 2) -> None:
    """Save the seed's Fig. 2 analogue plus loss histograms.

    Top row: for ``examples`` candidates (the first valid ones, else the lowest losses), the
    site spectra before (thin, light) and after (solid) optimisation against the reference
    (grey dashed). Bottom: histograms of the loss before and after.

    Args:
      result: output of :func:`design`.
      path: image path (format from the suffix).
      examples: number of example candidates.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have = ~np.isnan(result.spectra).all(axis=(1, 2))
    order = np.argsort(np.where(have, result.loss, np.inf))
    valid_first = [i for i in order if have[i] and result.valid[i]]
    picks = (valid_first + [i for i in order if have[i] and i not in valid_first])[:examples]
    fig, axes = plt.subplots(2, max(examples, 1), figsize=(5 * max(examples, 1), 7), squeeze=False)
    comps = np.arange(result.reference.shape[0])
    for ax, i in zip(axes[0], picks, strict=False):
        sites = np.flatnonzero(result.site_mask[i])
        for j in sites:
            ax.plot(comps, result.spectra_initial[i, j], color="tab:orange", lw=0.8, alpha=0.6)
            ax.plot(comps, result.spectra[i, j], color="tab:blue", lw=1.5)
        ax.plot(comps, result.reference, "--", color="grey", lw=2, label="graphite reference")
        ax.plot([], [], color="tab:orange", label="initial")
        ax.plot([], [], color="tab:blue", label="after SO(3) optimisation")
        ax.set_title(
            f"#{i}: spg {result.spg[i]}, {result.num_atoms[i]} atoms, "
            f"loss {result.loss_initial[i]:.3g} → {result.loss[i]:.3g}"
            + (" (CN=3)" if result.valid[i] else "")
        )
        ax.set_xlabel("power-spectrum component")
        ax.set_ylabel("p")
        ax.legend(fontsize=8)
    gs = axes[1, 0].get_gridspec()
    for ax in axes[1]:
        ax.remove()
    hax = fig.add_subplot(gs[1, :])
    c0, edges = loss_histogram(result.loss_initial)
    c1, _ = loss_histogram(result.loss)
    x = np.arange(len(c0))
    hax.bar(x - 0.2, c0, width=0.4, label="initial", color="tab:orange")
    hax.bar(x + 0.2, c1, width=0.4, label="optimised", color="tab:blue")
    labels = [f"<{e:.0e}" if np.isfinite(e) else f">{edges[-2]:.0e}" for e in edges[1:]]
    hax.set_xticks(x, labels, rotation=45, fontsize=8)
    hax.set_ylabel("candidates")
    hax.set_title(
        f"descriptor loss; N_valid_env (CN=3): {int(result.valid_initial.sum())} → "
        f"{result.n_valid_env} of {len(result.valid)}"
    )
    hax.legend()
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)


def pyxtal_baseline(
    wc: Any,
    indices: Sequence[int] | None = None,
    *,
    reference_cell: Sequence[float] = (2.464, 6.711),
    rcut: float = 2.0,
    target_cn: int = 3,
    workdir: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """PyXtal's CPU optimizer (``lego.builder.optimize_xtal``) on some of the candidates.

    One structure at a time, as PyXtal does: Nelder–Mead (100 iterations) then L-BFGS-B (100,
    finite-difference gradients) on PyXtal's objective ``calculate_S`` against graphite
    (``from_spg_wps_rep(194, ['2c', '2b'], reference_cell)``), SO(3) with nmax 2, lmax 4,
    alpha 1.5 Å⁻² (as ``SO3Settings()``) and ``rcut``; validity by PyXtal's CN check. Shims
    ``scipy.special.sph_harm`` (removed in scipy 1.17) for PyXtal's SO3 module.

    Args:
      wc: candidates (:class:`~jaxcsp.symmetry.WyckoffCrystals`).
      indices: which candidates (default all).
      reference_cell: graphite a, c in Å.
      rcut: descriptor cutoff in Å.
      target_cn: CN of the validity test.
      workdir: where PyXtal's builder writes its database and log (default a temp dir).
      progress: show a progress bar.

    Returns:
      ``{"index", "loss" (PyXtal's calculate_S scale, NaN on failure), "valid", "seconds"}``.
    """
    import logging
    import tempfile

    import scipy.special as sp

    if not hasattr(sp, "sph_harm"):
        sp.sph_harm = lambda m, l, az, pol: sp.sph_harm_y(l, m, pol, az)
    from pyxtal import pyxtal
    from pyxtal.lego.builder import builder

    idx = np.arange(wc.batch_size) if indices is None else np.asarray(indices, int)
    tmp = tempfile.mkdtemp(prefix="pyxtal_lego_") if workdir is None else os.fspath(workdir)
    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        bu = builder(
            ["C"], [1], db_file=os.path.join(tmp, "lego.db"), log_file=os.path.join(tmp, "lego.log")
        )
        bu.set_descriptor_calculator(mykwargs={"rcut": rcut})
        g = pyxtal()
        g.from_spg_wps_rep(194, ["2c", "2b"], list(reference_cell))
        bu.set_reference_enviroments(g.to_pymatgen())
        bu.set_criteria(CN={"C": [target_cn]})
        loss = np.full(len(idx), np.nan)
        valid = np.zeros(len(idx), bool)
        secs = np.zeros(len(idx))
        it = enumerate(idx)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(list(it), desc="pyxtal", unit="cand")
        for k, i in it:
            x = to_pyxtal(wc.take([int(i)]))[0]
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)  # spglib via PyXtal
                    xtal, sim, _ = bu.optimize_xtal(x, add_db=False)
                valid[k] = xtal is not None
                loss[k] = np.nan if sim is None else float(sim)
            except Exception:  # PyXtal returns None on failed rebuilds and then crashes
                pass
            secs[k] = time.perf_counter() - t0
    finally:
        for h in root.handlers:
            if h not in handlers:
                h.close()
        root.handlers[:] = handlers
    return {"index": idx, "loss": loss, "valid": valid, "seconds": secs}
