"""The dual-level design loop (Fig. 3 of the CVAE seed): representation space, then latent space.

Round 1 optimises every candidate's Wyckoff free variables toward a target spectrum
(Algorithm 1, :func:`jaxcsp.optimize.descriptor.optimize_wyckoff`) and collects the CN-valid
ones. Each later round takes the still-invalid set, restarts its latents (the posterior mean of
each crystal, or prior draws), refines them through the decoder under each crystal's fixed
condition (Algorithm 2, :func:`jaxcsp.models.latent.refine_latents`) and runs Algorithm 1 again
on the decoded structures; newly valid ones join the valid set. The baseline runs the same
rounds of Algorithm 1 alone (same steps, no latent stage) on the same starting candidates.

The valid sets are then screened as in the seed's §3.5: relaxed with a potential (variable
cell), deduplicated with pymatgen's ``StructureMatcher`` tolerances (0.3 Å, 20 %, 5°), ranked
by energy against graphite relaxed with the same potential: ``N_valid_env``, ``N_unique`` and
``N_low_E`` (unique structures within 0.55 eV/atom of graphite).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DualLevelResult", "Screening", "dual_level", "plot_dual_level", "screen_candidates"]


@dataclasses.dataclass(frozen=True)
class Screening:
    """Energy screening of a valid set (§3.5).

    Attributes:
      indices: ``(V,)`` candidate indices of the valid set.
      energy_per_atom: ``(V,)`` relaxed energies, eV/atom (NaN where the relaxation failed).
      unique: ``(V,)`` bool, first member of its ``StructureMatcher`` group after relaxation.
      crystals: relaxed :class:`~jaxcsp.Crystals` ``(V, N)``.
      energy, forces, stress: relaxed total energies (eV), forces (eV/Å), stresses (eV/Å³).
      reference: graphite's relaxed energy under the same potential, eV/atom.
      window: the ``N_low_E`` window above ``reference``, eV/atom.
    """

    indices: np.ndarray
    energy_per_atom: np.ndarray
    unique: np.ndarray
    crystals: Any
    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    reference: float
    window: float

    @property
    def n_valid_env(self) -> int:
        """Candidates in the valid set."""
        return len(self.indices)

    @property
    def n_unique(self) -> int:
        """Unique relaxed structures (``N_unique``)."""
        return int(np.sum(self.unique))

    @property
    def n_low_e(self) -> int:
        """Unique structures within ``window`` eV/atom of graphite (``N_low_E``)."""
        de = self.energy_per_atom - self.reference
        return int(np.sum(self.unique & np.isfinite(de) & (de <= self.window)))


@dataclasses.dataclass(frozen=True)
class DualLevelResult:
    """Outcome of :func:`dual_level` for ``n`` candidates (candidate order).

    Attributes:
      initial: starting :class:`~jaxcsp.symmetry.WyckoffCrystals` (decoder samples).
      final: last structure of every candidate (its valid one, or the last round's).
      valid: ``(n,)`` bool, CN-valid after the loop.
      round: ``(n,)`` int, round (1-based) in which the candidate became valid, 0 if never.
      loss: ``(n,)`` descriptor loss of ``final``.
      rounds: per round ``{"round", "attempted", "new_valid", "valid"}`` (dual level).
      baseline_rounds: the same for Algorithm 1 alone (``None`` without the baseline).
      baseline_valid: ``(n,)`` bool or ``None``.
      screening, baseline_screening: :class:`Screening` of each valid set (or ``None``).
      seconds: wall time of the rounds (without screening), s.
    """

    initial: Any
    final: Any
    valid: np.ndarray
    round: np.ndarray
    loss: np.ndarray
    rounds: list
    baseline_rounds: list | None
    baseline_valid: np.ndarray | None
    baseline_final: Any
    screening: Screening | None
    baseline_screening: Screening | None
    seconds: float

    def summary(self) -> str:
        """The report's lines: counts per round and the screening metrics of both arms."""
        lines = ["round  attempted  new valid  valid (dual level)"]
        base = {r["round"]: r for r in self.baseline_rounds or []}
        if base:
            lines[0] += "  |  new valid  valid (Algorithm 1 alone)"
        for r in self.rounds:
            s = f"{r['round']:>5}  {r['attempted']:>9}  {r['new_valid']:>9}  {r['valid']:>18}"
            if r["round"] in base:
                b = base[r["round"]]
                s += f"  |  {b['new_valid']:>9}  {b['valid']:>9}"
            lines.append(s)
        for name, sc in (("dual level", self.screening), ("Algorithm 1", self.baseline_screening)):
            if sc is not None:
                lines.append(
                    f"{name}: N_valid_env {sc.n_valid_env}, N_unique {sc.n_unique}, "
                    f"N_low_E {sc.n_low_e} (within {sc.window} eV/atom of graphite, "
                    f"{sc.reference:.4f} eV/atom)"
                )
        lines.append(f"rounds wall time: {self.seconds:.1f} s")
        return "\n".join(lines)


def _pad(idx: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([idx, np.full(size - len(idx), idx[0])])


def _scatter(wc: Any, idx: np.ndarray, part: Any) -> Any:
    """``wc`` with rows ``idx`` replaced by the first ``len(idx)`` rows of ``part``."""
    k = len(idx)

    def put(a, b):
        a = np.array(a)
        a[idx] = np.asarray(b)[:k]
        return jnp.asarray(a)

    return wc.replace(cell=put(wc.cell, part.cell), coords=put(wc.coords, part.coords))


def _rep_stage(wc, idx, ref, *, batch_size, steps, target_cn, kw, bar):
    """Algorithm 1 on rows ``idx`` of ``wc`` in padded batches; returns (wc, loss, valid)."""
    from jaxcsp.descriptors import valid_environment
    from jaxcsp.optimize.descriptor import optimize_wyckoff
    from jaxcsp.symmetry import reconstruct

    loss = np.full(len(idx), np.nan)
    valid = np.zeros(len(idx), bool)
    for start in range(0, len(idx), batch_size):
        part = idx[start : start + batch_size]
        batch = wc.take(_pad(part, batch_size))
        res = optimize_wyckoff(batch, ref, steps=steps, **kw)
        k = len(part)
        loss[start : start + k] = np.asarray(res.loss)[:k]
        valid[start : start + k] = np.asarray(valid_environment(reconstruct(res.wc), target_cn))[:k]
        wc = _scatter(wc, part, res.wc)
        if bar is not None:
            bar[0].update(bar[1], advance=k)
    return wc, loss, valid


def _latent_stage(model, wc, idx, ref, *, batch_size, steps, init, key, kw, bar):
    from jaxcsp.models.latent import refine_latents

    for start in range(0, len(idx), batch_size):
        part = idx[start : start + batch_size]
        batch = wc.take(_pad(part, batch_size))
        res = refine_latents(
            model, batch, ref, init=init, key=jax.random.fold_in(key, start), steps=steps, **kw
        )
        wc = _scatter(wc, part, res.wc)
        if bar is not None:
            bar[0].update(bar[1], advance=len(part))
    return wc


def _rounds(
    model,
    state,
    ref,
    *,
    first,
    rounds,
    latent,
    steps,
    latent_steps,
    batch_size,
    target_cn,
    rep_kw,
    lat_kw,
    init,
    key,
    bar,
):
    """Rounds ``first..rounds`` from ``state = (wc, valid, found, loss, log)``."""
    wc, valid, found, loss, log = state
    valid, found, loss, log = valid.copy(), found.copy(), loss.copy(), list(log)
    for r in range(first, rounds + 1):
        idx = np.flatnonzero(~valid)
        if len(idx) == 0:
            log.append({"round": r, "attempted": 0, "new_valid": 0, "valid": int(valid.sum())})
            continue
        if r > 1 and latent:
            wc = _latent_stage(
                model,
                wc,
                idx,
                ref,
                batch_size=batch_size,
                steps=latent_steps,
                init=init,
                key=jax.random.fold_in(key, r),
                kw=lat_kw,
                bar=bar,
            )
        wc, l_r, v_r = _rep_stage(
            wc,
            idx,
            ref,
            batch_size=batch_size,
            steps=steps,
            target_cn=target_cn,
            kw=rep_kw,
            bar=bar,
        )
        loss[idx] = l_r
        valid[idx] = v_r
        found[idx[v_r]] = r
        log.append(
            {
                "round": r,
                "attempted": len(idx),
                "new_valid": int(v_r.sum()),
                "valid": int(valid.sum()),
            }
        )
    return wc, valid, found, loss, log


def screen_candidates(
    wc: Any,
    indices: Any,
    potential: Any = None,
    *,
    window: float = 0.55,
    fmax: float = 0.05,
    max_steps: int = 200,
    ltol: float = 0.2,
    stol: float = 0.3,
    angle_tol: float = 5.0,
) -> Screening:
    """Relax, deduplicate and rank a valid set against graphite (§3.5).

    Args:
      wc: :class:`~jaxcsp.symmetry.WyckoffCrystals` of all candidates.
      indices: ``(V,)`` rows of the valid set.
      potential: :class:`~jaxcsp.potentials.Potential` (default Tersoff carbon).
      window: ``N_low_E`` window above graphite, eV/atom (the seed's 0.55).
      fmax, max_steps: relaxation (variable cell, FrechetCellFilter, BFGS + line search); the
        median CN = 3 candidate converges in about 16 steps, a few never do, and the batch
        should not wait 500 steps for them (their energies are ranked as they stand).
      ltol, stol, angle_tol: ``StructureMatcher`` tolerances after relaxation.

    Returns:
      :class:`Screening`.
    """
    from jaxcsp.io import read as read_structures
    from jaxcsp.optimize import relax
    from jaxcsp.potentials import tersoff_carbon
    from jaxcsp.search._dedup import deduplicate
    from jaxcsp.symmetry import reconstruct

    potential = tersoff_carbon() if potential is None else potential
    indices = np.asarray(indices, int)
    graphite = read_structures(
        os.path.join(
            os.path.dirname(os.path.dirname(__file__)), "data", "structures", "graphite.cif"
        )
    )
    g = relax(graphite, potential, fmax=fmax, cell_filter="frechet", max_steps=max_steps)
    reference = float(np.asarray(g.energy)[0]) / int(np.asarray(graphite.num_atoms)[0])
    if len(indices) == 0:
        z = np.zeros(0)
        return Screening(indices, z, z.astype(bool), None, z, z, z, reference, float(window))
    c = reconstruct(wc.take(indices))
    res = relax(c, potential, fmax=fmax, cell_filter="frechet", max_steps=max_steps)
    n_atoms = np.asarray(c.num_atoms)
    e = np.asarray(res.energy) / n_atoms
    ok = np.isfinite(e)
    e = np.where(ok, e, np.nan)
    unique = np.zeros(len(indices), bool)
    good = np.flatnonzero(ok)
    if len(good):
        labels = deduplicate(res.crystals.take(good), ltol=ltol, stol=stol, angle_tol=angle_tol)
        unique[good] = labels == np.arange(len(good))
    return Screening(
        indices,
        e,
        unique,
        res.crystals,
        np.asarray(res.energy),
        np.asarray(res.forces),
        np.asarray(res.stress),
        reference,
        float(window),
    )


def _conditions(n: int, seed: int, table: Any) -> Any:
    rng = np.random.default_rng([seed, 17])
    return table.take(rng.integers(0, table.batch_size, n))


def dual_level(
    model: Any,
    n: int = 1000,
    *,
    seed: int = 0,
    rounds: int = 3,
    steps: int = 300,
    latent_steps: int = 100,
    batch_size: int = 256,
    conditions: Any = None,
    latent_init: str = "encode",
    baseline: bool = True,
    screen: bool = True,
    potential: Any = None,
    window: float = 0.55,
    target_cn: int = 3,
    cn_weight: float = 1.0,
    db: str | os.PathLike | None = None,
    progress: bool = True,
) -> DualLevelResult:
    """Run the dual-level loop on ``n`` decoder samples (and Algorithm 1 alone on the same).

    Args:
      model: trained conditional :class:`~jaxcsp.models.cvae.CVAEModel`.
      n: candidates.
      seed: random seed: the conditions drawn, the decoder samples and the prior restarts.
      rounds: ``R_max`` (round 1 is Algorithm 1 on all candidates).
      steps: Algorithm 1 steps per round; latent_steps: Algorithm 2 steps per round.
      batch_size: candidates per jitted batch (the last one is padded: one program).
      conditions: :class:`~jaxcsp.symmetry.WyckoffCrystals` whose (space group, Wyckoff)
        conditions are drawn with replacement (default: the shipped training set's).
      latent_init: ``"encode"`` or ``"prior"`` (see :func:`~jaxcsp.models.latent.refine_latents`).
      baseline: also run Algorithm 1 alone for the same rounds.
      screen: relax, deduplicate and rank the valid sets (:func:`screen_candidates`).
      potential: screening potential (default Tersoff carbon).
      window: ``N_low_E`` window, eV/atom.
      target_cn, cn_weight: validity test and smooth-CN weight of the loss (as ``design``).
      db: ASE database receiving every final candidate (key-value pairs ``valid_env``,
        ``round``, ``loss``, ``unique``, ``energy_per_atom``, ``candidate``, ``seed``; relaxed
        energy, forces and stress as the row's calculator results for screened candidates).
      progress: show progress (rich).

    Returns:
      :class:`DualLevelResult`.
    """
    from jaxcsp.descriptors import reference_spectrum
    from jaxcsp.errors import InvalidArgumentError, check_int

    n = check_int("n", n)
    rounds = check_int("rounds", rounds)
    batch_size = min(check_int("batch_size", batch_size), n)
    if not model.conditional:
        raise InvalidArgumentError(
            "the dual-level loop needs the conditional model", argument="model"
        )
    if conditions is None:
        from jaxcsp.datasets import load_carbon_sp2

        conditions = load_carbon_sp2(dtype=model.transform.means.dtype)
    templates = _conditions(n, seed, conditions)
    key = jax.random.key(seed)
    wc0 = model.sample(jax.random.fold_in(key, 0), templates)
    ref = reference_spectrum("graphite", nmax=2, lmax=4, rcut=2.0, alpha=1.5)
    rep_kw = dict(cn_weight=float(cn_weight), cn_target=float(target_cn))
    lat_kw = dict(cn_weight=float(cn_weight), cn_target=float(target_cn))
    bar = _progress(progress, n * (2 * rounds - 1) + (n * (rounds - 1) if baseline else 0))
    t0 = time.perf_counter()
    try:
        common = dict(
            rounds=rounds,
            steps=steps,
            latent_steps=latent_steps,
            batch_size=batch_size,
            target_cn=target_cn,
            rep_kw=rep_kw,
            lat_kw=lat_kw,
            init=latent_init,
            key=jax.random.fold_in(key, 1),
            bar=bar,
        )
        start = (wc0, np.zeros(n, bool), np.zeros(n, int), np.full(n, np.nan), [])
        # round 1 (Algorithm 1 on everything) is shared by both arms
        first = _rounds(model, start, ref, first=1, latent=False, **{**common, "rounds": 1})
        final, valid, found, loss, log = _rounds(model, first, ref, first=2, latent=True, **common)
        b_final = b_valid = b_log = None
        if baseline:
            b_final, b_valid, _, _, b_log = _rounds(
                model, first, ref, first=2, latent=False, **common
            )
    finally:
        if bar is not None:
            bar[0].stop()
    seconds = time.perf_counter() - t0
    sc = b_sc = None
    if screen:
        sc = screen_candidates(final, np.flatnonzero(valid), potential, window=window)
        if baseline:
            b_sc = screen_candidates(b_final, np.flatnonzero(b_valid), potential, window=window)
    result = DualLevelResult(
        wc0, final, valid, found, loss, log, b_log, b_valid, b_final, sc, b_sc, seconds
    )
    if db is not None:
        _write(db, result, seed)
    return result


def _progress(progress: bool, total: int):
    if not progress:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    p = Progress(TextColumn("dual level"), BarColumn(), MofNCompleteColumn(), transient=True)
    p.start()
    return p, p.add_task("dual", total=total)


def _write(db, result: DualLevelResult, seed: int) -> None:
    from ase.calculators.singlepoint import SinglePointCalculator

    from jaxcsp.io import connect_db, to_ase
    from jaxcsp.symmetry import reconstruct

    images = to_ase(reconstruct(result.final))
    sc = result.screening
    where = {} if sc is None else {int(i): k for k, i in enumerate(sc.indices)}
    relaxed = [] if sc is None or sc.crystals is None else to_ase(sc.crystals)
    with connect_db(db) as con:
        for i, atoms in enumerate(images):
            kvp = dict(
                candidate=i,
                seed=int(seed),
                valid_env=bool(result.valid[i]),
                round=int(result.round[i]),
                loss=float(result.loss[i]),
                spg=int(np.asarray(result.final.spg)[i]),
            )
            k = where.get(i)
            if k is not None and np.isfinite(sc.energy_per_atom[k]):
                atoms = relaxed[k]
                m = len(atoms)
                s = sc.stress[k]
                atoms.calc = SinglePointCalculator(
                    atoms,
                    energy=float(sc.energy[k]),
                    forces=sc.forces[k][:m],
                    stress=s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]],
                )
                kvp.update(unique=bool(sc.unique[k]), energy_per_atom=float(sc.energy_per_atom[k]))
            con.write(atoms, key_value_pairs=kvp)


def plot_dual_level(result: DualLevelResult, path: str | os.PathLike) -> None:
    """Save the report's figure: valid candidates per round for both arms (the seed's Fig. 6)
    and the histogram of relaxed energies above graphite of the unique structures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
    r = np.array([x["round"] for x in result.rounds])
    ax0.bar(r - 0.2, [x["valid"] for x in result.rounds], 0.4, label="dual level")
    if result.baseline_rounds:
        rb = np.array([x["round"] for x in result.baseline_rounds])
        ax0.bar(
            rb + 0.2, [x["valid"] for x in result.baseline_rounds], 0.4, label="Algorithm 1 alone"
        )
    ax0.set_xlabel("round")
    ax0.set_ylabel("valid candidates (CN = 3), cumulative")
    ax0.set_xticks(r)
    ax0.legend()
    bins = np.arange(0.0, 3.01, 0.1)
    for name, sc in (
        ("dual level", result.screening),
        ("Algorithm 1 alone", result.baseline_screening),
    ):
        if sc is not None and sc.n_unique:
            de = (sc.energy_per_atom - sc.reference)[sc.unique]
            ax1.hist(
                de[np.isfinite(de)], bins=bins, alpha=0.6, label=f"{name} ({sc.n_unique} unique)"
            )
    if result.screening is not None:
        ax1.axvline(result.screening.window, color="k", ls="--", lw=1, label="N_low_E window")
    ax1.set_xlabel("relaxed energy above graphite (eV/atom)")
    ax1.set_ylabel("unique structures")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
