"""The dual-level design loop (Fig. 3 of the CVAE seed): representation space, then latent space.

Round 1 optimises every candidate's Wyckoff free variables toward a target spectrum
(Algorithm 1, :func:`jaxcsp.optimize.descriptor.optimize_wyckoff`) and collects the CN-valid
ones. Each later round takes the still-invalid set, restarts its latents (the posterior mean of
each crystal, or prior draws), refines them through the decoder under each crystal's fixed
condition (Algorithm 2, :func:`jaxcsp.models.latent.refine_latents`) and runs Algorithm 1 again
on the decoded structures; newly valid ones join the valid set. The baseline runs the same
rounds of Algorithm 1 alone (same steps, no latent stage) on the same starting candidates.

The loop is a search method (:func:`dual_level_search`, a pure ``(init, step)`` pair): each
iteration is one round, and its proposal is the round's newly valid candidates, which the
search driver (:func:`jaxcsp.search.run`) relaxes on the oracle (variable cell, continuous
batching), writes to the database as they finish, deduplicates with pymatgen's
``StructureMatcher`` tolerances (0.3 Å, 20 %, 5°) and ranks against graphite relaxed on the
same potential — the seed's §3.5 screening: ``N_valid_env``, ``N_unique`` and ``N_low_E``
(unique structures within 0.55 eV/atom of graphite). A killed run resumes from its database
to the same result. :func:`dual_level` runs both arms (dual level, and Algorithm 1 alone on
the same starting candidates) and reports them side by side.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.descriptors import SO3Settings, reference_spectrum, valid_environment
from jaxcsp.elements import chemical_symbols
from jaxcsp.errors import InvalidArgumentError, check_int
from jaxcsp.io import connect_db, to_ase
from jaxcsp.models.latent import refine_latents
from jaxcsp.optimize.descriptor import optimize_wyckoff
from jaxcsp.potentials import tersoff_carbon
from jaxcsp.search._base import Evaluation, Method, Oracle, Proposal, SearchState, record
from jaxcsp.search._driver import _empty_evaluation, run
from jaxcsp.symmetry import reconstruct

__all__ = [
    "DualLevelPopulation",
    "DualLevelResult",
    "Screening",
    "dual_level",
    "dual_level_search",
    "plot_dual_level",
]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DualLevelPopulation:
    """The dual-level search's own state (``SearchState.population``), candidate order.

    Attributes:
      crystals: :class:`~jaxcsp.symmetry.WyckoffCrystals` ``(n,)``, each candidate's latest
        structure (its valid one once found).
      initial: the decoder samples the search started from.
      valid: ``(n,) bool``, CN-valid so far.
      round: ``(n,) int``, round (1-based) in which the candidate became valid, 0 if not yet.
      loss: ``(n,)`` descriptor loss of ``crystals``.
    """

    crystals: Any
    initial: Any
    valid: Any
    round: Any
    loss: Any

    def log(self, rounds: int) -> list[dict]:
        """Per round ``{"round", "attempted", "new_valid", "valid"}`` up to ``rounds``."""
        found = np.asarray(self.round)
        out, done = [], 0
        for r in range(1, rounds + 1):
            new = int(np.sum(found == r))
            out.append(
                {"round": r, "attempted": len(found) - done, "new_valid": new, "valid": done + new}
            )
            done += new
        return out

    def proposed(self, rounds: int) -> np.ndarray:
        """Candidate indices in the order their rounds proposed them (the archive's order)."""
        found = np.asarray(self.round)
        return np.concatenate(
            [np.flatnonzero(found == r) for r in range(1, rounds + 1)] + [np.zeros(0, int)]
        )


@dataclasses.dataclass(frozen=True)
class Screening:
    """The search driver's screening of one arm's valid set (§3.5), candidate-indexed.

    Attributes:
      indices: ``(V,)`` candidate indices of the valid set, in archive (proposal) order.
      energy_per_atom: ``(V,)`` relaxed energies, eV/atom (NaN where the relaxation failed).
      unique: ``(V,)`` bool, representative of its ``StructureMatcher`` group after relaxation.
      crystals: relaxed :class:`~jaxcsp.Crystals` ``(V, N)``.
      reference: graphite's relaxed energy on the same potential, eV/atom.
      window: the ``N_low_E`` window above ``reference``, eV/atom.
      metrics: the driver's :func:`~jaxcsp.search.search_metrics` (``n_valid`` relaxed without
        failure, ``n_unique``, ``n_low_e``, ``oracle_calls``, ``i_m0`` for graphite itself, ...).
      db: the database holding the arm's rows.
    """

    indices: np.ndarray
    energy_per_atom: np.ndarray
    unique: np.ndarray
    crystals: Any
    reference: float
    window: float
    metrics: dict
    db: str

    @property
    def n_valid_env(self) -> int:
        """Candidates in the valid set (``N_valid_env``)."""
        return len(self.indices)

    @property
    def n_unique(self) -> int:
        """Unique relaxed structures (``N_unique``)."""
        return int(self.metrics["n_unique"])

    @property
    def n_low_e(self) -> int:
        """Unique structures within ``window`` eV/atom of graphite (``N_low_E``)."""
        return int(self.metrics["n_low_e"])


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
      baseline_final: Algorithm 1's last structures, or ``None``.
      screening, baseline_screening: :class:`Screening` of each arm (or ``None``).
      seconds: wall time, s (rounds, and the screening when it ran).
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
                    f"{sc.reference:.4f} eV/atom), {sc.metrics['oracle_calls']} oracle calls"
                )
        lines.append(f"wall time: {self.seconds:.1f} s")
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


def _conditions(n: int, key: Any, table: Any) -> Any:
    bits = np.asarray(jax.random.key_data(jax.random.fold_in(key, 2))).ravel()
    rng = np.random.default_rng([int(b) for b in bits])
    return table.take(rng.integers(0, table.batch_size, n))


def _model_fingerprint(model: Any) -> str:
    import hashlib

    h = hashlib.sha1()
    for leaf in jax.tree.leaves((model.params, model.transform)):
        h.update(np.ascontiguousarray(np.asarray(leaf, np.float64)).tobytes())
    return h.hexdigest()[:16]


def dual_level_search(
    model: Any,
    n: int = 1000,
    *,
    conditions: Any,
    rounds: int = 3,
    steps: int = 300,
    latent_steps: int = 100,
    batch_size: int = 256,
    latent_init: str = "encode",
    latent: bool = True,
    target_cn: int = 3,
    cn_weight: float = 1.0,
    progress: Any = None,
) -> Method:
    """The dual-level loop (or Algorithm 1 alone) as a :class:`~jaxcsp.search.Method`.

    ``init`` draws ``n`` conditions (space group, Wyckoff sites) from ``conditions`` with
    replacement, samples the decoder under them and runs round 1 (Algorithm 1 on all);
    ``step`` runs the next round on the still-invalid candidates (latent refinement under
    their fixed condition, then Algorithm 1; Algorithm 1 alone with ``latent=False``). Each
    proposal is the round's newly CN-valid candidates (``Proposal.crystals (P, N)``, Å), with
    ``info`` ``candidate``, ``round``, ``loss`` and ``valid_env`` written into their rows.
    Run it with ``max_iterations=rounds``; given the key, every round is deterministic, so a
    resumed search proposes exactly what an uninterrupted one would.

    Args:
      model: trained conditional :class:`~jaxcsp.models.cvae.CVAEModel`.
      n: candidates.
      rounds: ``R_max`` (round 1 is Algorithm 1 on all candidates).
      steps: Algorithm 1 steps per round; latent_steps: Algorithm 2 steps per round.
      batch_size: candidates per jitted batch (the last one is padded: one program).
      conditions: :class:`~jaxcsp.symmetry.WyckoffCrystals` whose conditions are drawn,
        e.g. the model's training set (:func:`jaxcsp.datasets.load_carbon_sp2` for the
        shipped model).
      latent_init: ``"encode"`` or ``"prior"`` (see :func:`~jaxcsp.models.latent.refine_latents`).
      latent: the latent stage (``False``: the Algorithm 1 baseline, same rounds and steps).
      target_cn, cn_weight: validity test and smooth-CN weight of the loss (as ``design``).
      progress: ``(rich Progress, task)`` advanced per candidate-stage, or ``None``.

    Returns:
      ``Method("dual_level" | "algorithm1", init, step, config)``; the state's ``population``
      is a :class:`DualLevelPopulation`. ``init``'s composition must be the model's element
      (its count is ignored: cell sizes come from the conditions).

    Raises:
      InvalidArgumentError: bad settings, or a model that is not conditional.
    """
    n = check_int("n", n)
    rounds = check_int("rounds", rounds)
    steps = check_int("steps", steps, minimum=0)
    latent_steps = check_int("latent_steps", latent_steps, minimum=0)
    batch_size = min(check_int("batch_size", batch_size), n)
    if latent_init not in ("encode", "prior"):
        raise InvalidArgumentError(
            f"must be 'encode' or 'prior', got {latent_init!r}",
            argument="latent_init",
            value=latent_init,
        )
    if not model.conditional:
        raise InvalidArgumentError(
            "the dual-level loop needs the conditional model", argument="model"
        )
    element = chemical_symbols([int(model.species)])[0]
    ref = reference_spectrum("graphite", SO3Settings())  # the seed's setting
    kw = dict(cn_weight=float(cn_weight), cn_target=float(target_cn))
    common = dict(
        steps=steps,
        latent_steps=latent_steps,
        batch_size=batch_size,
        target_cn=target_cn,
        rep_kw=kw,
        lat_kw=kw,
        init=latent_init,
        bar=progress,
    )
    name = "dual_level" if latent else "algorithm1"

    def propose(pop: DualLevelPopulation, r: int) -> Proposal:
        new = np.flatnonzero(np.asarray(pop.round) == r)
        pick = new if len(new) else np.zeros(1, int)
        crystals = reconstruct(pop.crystals.take(pick))
        if not len(new):
            crystals = crystals.take(new)
        info = dict(
            candidate=new,
            round=np.full(len(new), r),
            loss=np.asarray(pop.loss, np.float64)[new],
            valid_env=np.ones(len(new), bool),
            spg=np.asarray(pop.crystals.spg)[new],
        )
        return Proposal(crystals, info=info)

    def advance(pop: DualLevelPopulation, r: int, key: Any) -> DualLevelPopulation:
        log: list[dict[str, int]] = []  # the rounds' log: not kept here
        carry = (
            pop.crystals,
            np.asarray(pop.valid),
            np.asarray(pop.round),
            np.asarray(pop.loss, np.float64),
            log,
        )
        wc, valid, found, loss, _ = _rounds(
            model, carry, ref, first=r, rounds=r, latent=latent, key=key, **common
        )
        return dataclasses.replace(pop, crystals=wc, valid=valid, round=found, loss=loss)

    def init(key: Any, composition: tuple[tuple[str, int], ...]):
        els = [e for e, _ in composition]
        if els != [element]:
            raise InvalidArgumentError(
                f"the model generates {element}; the search asked for {els}",
                argument="composition",
                value=els,
            )
        templates = _conditions(n, key, conditions)
        wc0 = model.sample(jax.random.fold_in(key, 0), templates)
        pop = DualLevelPopulation(
            wc0, wc0, np.zeros(n, bool), np.zeros(n, np.int64), np.full(n, np.nan)
        )
        pop = advance(pop, 1, jax.random.fold_in(key, 1))
        state = SearchState.create(key, composition, name, population=pop)
        return state, propose(pop, 1)

    def step(state: SearchState, evaluation: Evaluation):
        state = record(state, evaluation)
        r = int(state.iteration) + 1
        pop = state.population
        if r <= rounds:
            pop = advance(pop, r, jax.random.fold_in(state.key, 1))
        state = dataclasses.replace(state, population=pop)
        return state, propose(pop, r)

    config = dict(
        n=n,
        rounds=rounds,
        steps=steps,
        latent_steps=latent_steps if latent else 0,
        batch_size=batch_size,
        latent_init=latent_init if latent else None,
        target_cn=int(target_cn),
        cn_weight=float(cn_weight),
        model=_model_fingerprint(model),
        conditions=int(conditions.batch_size),
    )
    return Method(name, init, step, config)


def _baseline_db(db: str | os.PathLike) -> str:
    """``runs/c.db`` -> ``runs/c.algorithm1.db`` (the baseline arm's database)."""
    root, ext = os.path.splitext(os.fspath(db))
    return f"{root}.algorithm1{ext or '.db'}"


def _by_hand(method: Method, element: str, seed: int, rounds: int) -> DualLevelPopulation:
    """The rounds without an oracle: ``init`` and ``step`` stepped with empty evaluations."""
    state, proposal = method.init(jax.random.key(int(seed)), ((element, 1),))
    for it in range(rounds - 1):
        empty = _empty_evaluation(Proposal(proposal.crystals.take(np.zeros(0, int))), it, 0)
        state, proposal = method.step(state, empty)
    return state.population


def _screening(res: Any, pop: DualLevelPopulation, rounds: int, window: float) -> Screening:
    idx = pop.proposed(rounds)
    archive = res.state.archive
    labels = np.asarray(res.labels)
    ok = archive.ok
    return Screening(
        indices=idx,
        energy_per_atom=np.where(ok, np.asarray(archive.enthalpy_per_atom, np.float64), np.nan),
        unique=ok & (labels == np.arange(len(labels))),
        crystals=archive.crystals,
        reference=float(res.reference_energy),
        window=float(window),
        metrics=dict(res.metrics),
        db=res.db,
    )


def dual_level(
    model: Any,
    n: int = 1000,
    *,
    conditions: Any,
    seed: int = 0,
    rounds: int = 3,
    steps: int = 300,
    latent_steps: int = 100,
    batch_size: int = 256,
    latent_init: str = "encode",
    baseline: bool = True,
    screen: bool = True,
    potential: Any = None,
    window: float = 0.55,
    fmax: float = 0.05,
    max_steps: int = 500,
    target_cn: int = 3,
    cn_weight: float = 1.0,
    db: str | os.PathLike | None = None,
    progress: bool = True,
) -> DualLevelResult:
    """Run the dual-level loop on ``n`` decoder samples, and Algorithm 1 alone on the same.

    With ``screen`` each arm is a search (:func:`dual_level_search` run by
    :func:`jaxcsp.search.run`, ``max_iterations=rounds``, graphite as the reference): its
    valid candidates are relaxed on ``potential`` as they are found and written to ``db``
    (the baseline to ``<db>.algorithm1.db``); rerunning the same call resumes both from their
    databases to the same result. Candidates that never became valid are added to the
    database at the end (no energies, ``valid_env=False``).

    Args:
      model: trained conditional :class:`~jaxcsp.models.cvae.CVAEModel`.
      n: candidates.
      seed: random seed: the conditions drawn, the decoder samples and the prior restarts.
      rounds, steps, latent_steps, batch_size, conditions, latent_init, target_cn, cn_weight:
        as :func:`dual_level_search`.
      baseline: also run Algorithm 1 alone for the same rounds.
      screen: relax, deduplicate and rank the valid sets on the oracle.
      potential: the oracle (default Tersoff carbon, :func:`jaxcsp.potentials.tersoff_carbon`).
      window: ``N_low_E`` window above graphite, eV/atom (the seed's 0.55).
      fmax, max_steps: relaxation (variable cell, FrechetCellFilter, BFGS + line search,
        continuous batching), eV/Å and steps.
      db: ASE database receiving every final candidate (key-value pairs ``valid_env``,
        ``round``, ``loss``, ``candidate``; screened rows also ``unique``,
        ``energy_per_atom``, ``enthalpy_per_atom``, ``status``, and relaxed energy, forces
        and stress as the row's calculator results). ``None`` with ``screen``: a temporary
        directory.
      progress: show progress (rich).

    Returns:
      :class:`DualLevelResult`.
    """
    import tempfile

    n = check_int("n", n)
    rounds = check_int("rounds", rounds)
    element = chemical_symbols([int(model.species)])[0]
    arms = [True] + ([False] if baseline else [])
    bar = _progress(progress, n * (2 * rounds - 1) + (n * rounds if baseline else 0))
    settings = dict(
        rounds=rounds,
        steps=steps,
        latent_steps=latent_steps,
        batch_size=batch_size,
        conditions=conditions,
        latent_init=latent_init,
        target_cn=target_cn,
        cn_weight=cn_weight,
        progress=bar,
    )
    t0 = time.perf_counter()
    pops: list[DualLevelPopulation] = []
    screens: list[Screening | None] = []
    tmp = None
    try:
        if screen and db is None:
            tmp = tempfile.TemporaryDirectory(prefix="jaxcsp-dual-")
            db = os.path.join(tmp.name, "dual.db")
        for latent in arms:
            method = dual_level_search(model, n, latent=latent, **settings)
            if not screen:
                pops.append(_by_hand(method, element, seed, rounds))
                screens.append(None)
                continue

            assert db is not None  # a temporary one was made above when none was given
            arm_db = db if latent else _baseline_db(db)
            res = run(
                method,
                element,
                Oracle(tersoff_carbon() if potential is None else potential),
                db=arm_db,
                seed=seed,
                max_iterations=rounds,
                fmax=fmax,
                max_steps=max_steps,
                reference=_GRAPHITE,
                window=window,
                progress=False,
            )
            pop = res.state.population
            pops.append(pop)
            screens.append(_screening(res, pop, rounds, window))
            _write_invalid(arm_db, pop, seed, method.name)
    finally:
        if bar is not None:
            bar[0].stop()
    if not screen and db is not None:
        _write(db, pops[0], seed)
    if tmp is not None:
        screens = [
            None if sc is None else dataclasses.replace(sc, db="") for sc in screens
        ]  # the temporary databases are gone
        tmp.cleanup()
    seconds = time.perf_counter() - t0
    pop, b = pops[0], (pops[1] if baseline else None)
    return DualLevelResult(
        initial=pop.initial,
        final=pop.crystals,
        valid=np.asarray(pop.valid),
        round=np.asarray(pop.round),
        loss=np.asarray(pop.loss),
        rounds=pop.log(rounds),
        baseline_rounds=None if b is None else b.log(rounds),
        baseline_valid=None if b is None else np.asarray(b.valid),
        baseline_final=None if b is None else b.crystals,
        screening=screens[0],
        baseline_screening=screens[1] if baseline else None,
        seconds=seconds,
    )


_GRAPHITE = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "data", "structures", "graphite.cif"
)


def _progress(progress: bool, total: int):
    if not progress:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    p = Progress(TextColumn("dual level"), BarColumn(), MofNCompleteColumn(), transient=True)
    p.start()
    return p, p.add_task("dual", total=total)


def _rows(pop: DualLevelPopulation, which: np.ndarray, seed: int, method: str) -> list:
    if not len(which):
        return []
    images = to_ase(reconstruct(pop.crystals.take(which)))
    spg = np.asarray(pop.crystals.spg)
    out = []
    for i, atoms in zip(which, images, strict=True):
        kvp = dict(
            candidate=int(i),
            seed=int(seed),
            method=method,
            valid_env=bool(np.asarray(pop.valid)[i]),
            round=int(np.asarray(pop.round)[i]),
            loss=float(np.asarray(pop.loss)[i]),
            spg=int(spg[i]),
        )
        out.append((atoms, kvp))
    return out


def _write_invalid(db, pop: DualLevelPopulation, seed: int, method: str) -> None:
    """Rows of the candidates that never became valid (idempotent: a rerun adds none twice)."""
    with connect_db(db) as con:
        have = {int(r.candidate) for r in con.select(valid_env=False)}
        todo = np.asarray(
            [i for i in np.flatnonzero(~np.asarray(pop.valid)) if int(i) not in have], int
        )
        for atoms, kvp in _rows(pop, todo, seed, method):
            con.write(atoms, key_value_pairs=kvp)


def _write(db, pop: DualLevelPopulation, seed: int) -> None:
    """Every candidate's final structure, unscreened (no energies)."""
    with connect_db(db) as con:
        have = {int(r.candidate) for r in con.select("candidate>=0")}
        todo = np.asarray([i for i in range(len(pop.valid)) if i not in have], int)
        for atoms, kvp in _rows(pop, todo, seed, "dual_level"):
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
    ax0.set_ylim(0, 1.3 * max(max(x["valid"] for x in result.rounds), 1))  # room for the legend
    ax0.legend(loc="upper left")
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
