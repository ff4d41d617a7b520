"""Active learning with ensembles of learned force fields as a search method (Hessmann et al.).

A pool of candidates is relaxed by a deep ensemble of cheap learned force fields
(:class:`jaxcsp.models.MLFFEnsemble`), each relaxation stopping where the ensemble becomes
unsure; a few well-chosen structures are labelled by the oracle, the ensemble is retrained, and
the cycle repeats until the lowest clusters of the pool stop improving. Then the lowest
clusters' representatives are relaxed on the oracle (validation). One search iteration is one
cycle:

1. **Pools** (``init``): a *training pool* of random cells (P1, ``n_train`` structures, the
   generator's distance and volume rules) supplies every label, and a *search pool* of random
   symmetric crystals (``n_search``, space groups uniform over the compatible ones) is where
   minima are looked for. The first proposal is ``n_initial`` training-pool structures (twice
   ``batch_size`` by default) drawn at random, with Gaussian position noise of ``noise`` Å,
   as single points (oracle energy, forces and stress; one oracle call each).
2. **Retrain** (``step``): the labels join the data set and the ensemble is retrained (one
   compiled program for all members; warm-started after the first cycle).
3. **Relax both pools with the ensemble** (:func:`jaxcsp.optimize.relax`, BFGS + line search,
   variable cell, ``fmax`` 0.05 eV/Å, at most ``relax_steps`` steps per cycle), each stopping
   when converged or when the relative force uncertainty
   ``U = max_i ‖σ_f,i‖ / max(max_i ‖f̄_i‖, relax_fmax)`` passes ``max_uncertainty`` (0.5).
   The floor at the relaxation's threshold is ours: with the seed's bare denominator a
   candidate whose forces all vanish by symmetry (an eighth of a random symmetric Si16 pool,
   only its cell still to relax) has ``U`` = round-off / round-off and never moves. The
   pools keep the relaxed structures (a relaxation that exploded keeps its start). Every
   accepted BFGS step lowers the energy (the line search's sufficient-decrease condition), so
   the seed's stop after 20 steps without an energy decrease, written for L-BFGS without a
   line search, cannot trigger here; ``relax_steps`` bounds a relaxation instead.
4. **Stopping criterion**: the search pool's structures are clustered (DBSCAN on standardised
   ensemble features, :meth:`MLFFEnsemble.features`); a cluster's energy is its lowest
   predicted energy per atom. The search stops when none of the ``k`` lowest cluster energies
   improved by more than ``stop_tol`` eV/atom over the pools of the last ``n_cycle`` cycles
   (re-clustered with the current ensemble), after at least ``min_cycles`` cycles, or after
   ``max_cycles``. Its last proposal relaxes on the oracle the lowest structure of each of the
   ``k`` lowest clusters and the ``n_lowest`` lowest structures of the pool not among them
   (``Proposal(final=True)``).
5. **Selection** otherwise: every training-pool structure gets the score
   ``L = −Ē/n + ω_f · max_i ‖f̄_i‖`` (eV/atom, eV/Å; low energy, large forces); the training
   pool is clustered the same way and only the best structure of a cluster may be chosen
   (noise points are clusters of one); the ``batch_size`` best get Gaussian position noise of
   ``noise · noise_damping^t`` Å (cycle ``t``) and are proposed as single points.

Every oracle evaluation is counted by the driver: one per label, every force call of the
validation relaxations. Resuming a killed search re-runs ``step`` on the stored labels, which is
deterministic: the same models, pools and proposals.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.crystal import Crystals, concatenate
from jaxcsp.models import LabelledData, MLFFConfig, train_ensemble
from jaxcsp.optimize import STATUS_NAMES, relax
from jaxcsp.search._base import (
    Evaluation,
    InvalidSearchError,
    Method,
    Proposal,
    SearchState,
    positive_int,
    record,
)
from jaxcsp.symmetry import random_crystals, reconstruct

__all__ = ["active_learning", "cluster_labels", "lowest_clusters"]


class _Config(TypedDict):
    """The checked settings of :func:`active_learning` (``Method.config``)."""

    n_initial: int
    n_search: int
    n_train: int
    batch_size: int
    num_members: int
    features: int
    num_interactions: int
    cutoff: float
    max_epochs: int
    patience: int
    learning_rate: float
    omega_f: float
    noise: float
    noise_damping: float
    max_uncertainty: float
    relax_fmax: float
    relax_steps: int
    k: int
    n_cycle: int
    stop_tol: float
    min_cycles: int
    max_cycles: int
    n_lowest: int
    cluster_eps: float | None
    min_samples: int
    volume_factor: float
    distance_factor: float
    compute_dtype: str | None


#: drawing rounds of the training pool: a P1 cell draws every atom at once and is rejected
#: whole if any pair is too close, so ionic cells of several elements are rarely accepted
#: (Na8Cl8 at the default factors: a pool of 64 not filled in the generator's 50 rounds; 128
#: after about 400 rounds, 36 s on 2 CPU cores). Rounds cost only while structures are missing.
_P1_ROUNDS = 1000


def _positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InvalidSearchError(f"must be a positive number, got {value!r}", field=name)
    return v


def cluster_labels(
    features: Any, *, eps: float | None = None, min_samples: int = 2, components: int = 8
) -> np.ndarray:
    """DBSCAN cluster labels of structure descriptors (host side, scikit-learn).

    The descriptors are standardised per dimension (zero mean, unit variance; constant
    dimensions dropped) and projected on their ``components`` leading principal components
    (distances in a space of hundreds of standardised dimensions are all alike, so DBSCAN
    would find no dense region). ``eps`` defaults to a tenth of the pool's spread in that space
    (the RMS distance of the structures to their centroid): structures that relaxed into the
    same minimum are far closer than that, structures still on their way are not.

    Args:
      features: ``(P, D)`` descriptors (e.g. :meth:`jaxcsp.models.MLFFEnsemble.features`).
      eps: DBSCAN neighbourhood radius in standardised units, or ``None`` (automatic).
      min_samples: DBSCAN's core-point count (the point included).
      components: principal components kept.

    Returns:
      ``(P,)`` int labels, ``-1`` for noise (structures in no cluster).
    """
    from sklearn.cluster import DBSCAN

    x = np.asarray(features, np.float64)
    p = x.shape[0]
    if p == 0:
        return np.zeros(0, np.int64)
    if p == 1:
        return np.full(1, -1, np.int64)
    std = x.std(axis=0)
    keep = std > 1e-12 * max(1.0, float(np.abs(x).max()))
    if not keep.any():  # every structure identical: one cluster
        return np.zeros(p, np.int64)
    z = (x[:, keep] - x[:, keep].mean(axis=0)) / std[keep]
    if z.shape[1] > components:
        _, _, vt = np.linalg.svd(z, full_matrices=False)
        z = z @ vt[:components].T
    if eps is None:  # a tenth of the pool's spread (RMS distance to its centroid)
        spread = float(np.sqrt(np.mean(np.sum((z - z.mean(axis=0)) ** 2, axis=1))))
        eps = max(0.1 * spread, 1e-9)
    return DBSCAN(eps=float(eps), min_samples=int(min_samples)).fit_predict(z).astype(np.int64)


def lowest_clusters(labels: np.ndarray, energy: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` clusters (noise excluded) of lowest energy: ``[(member index, energy), ...]``
    in ascending energy, the member being the cluster's lowest-energy structure."""
    out = []
    for lab in np.unique(labels):
        if lab < 0:
            continue
        members = np.nonzero((labels == lab) & np.isfinite(energy))[0]
        if len(members):
            best = members[np.argmin(energy[members])]
            out.append((int(best), float(energy[best])))
    out.sort(key=lambda t: t[1])
    return out[:k]


def active_learning(
    n_search: int = 64,
    n_train: int = 128,
    batch_size: int = 32,
    *,
    n_initial: int | None = None,
    num_members: int = 5,
    features: int = 32,
    num_interactions: int = 2,
    cutoff: float = 5.0,
    max_epochs: int = 100,
    patience: int = 15,
    learning_rate: float = 5e-4,
    omega_f: float = 0.1,
    noise: float = 0.1,
    noise_damping: float = 0.8,
    max_uncertainty: float = 0.5,
    relax_fmax: float = 0.05,
    relax_steps: int = 100,
    k: int = 3,
    n_cycle: int = 1,
    stop_tol: float = 0.005,
    min_cycles: int = 3,
    max_cycles: int = 10,
    n_lowest: int = 3,
    cluster_eps: float | None = None,
    min_samples: int = 2,
    volume_factor: float = 1.1,
    distance_factor: float = 0.7,
    compute_dtype: str | None = "float32",
) -> Method:
    """Active learning with an ensemble of learned force fields (seed 003) as a :class:`Method`.

    Args:
      n_search: symmetric candidates in the search pool.
      n_train: random (P1) cells in the training pool; every label comes from it.
      batch_size: structures labelled per cycle (single points).
      n_initial: structures labelled in the first batch (random picks), default
        ``2 · batch_size``: an ensemble trained on fewer is unsure of every structure, and
        the first relaxations would all stop at once.
      num_members: ensemble members ``M`` (the seed's 5).
      features, num_interactions, cutoff: the PaiNN model (:class:`jaxcsp.models.MLFFConfig`;
        cutoff in Å).
      max_epochs, patience, learning_rate: training per cycle
        (:func:`jaxcsp.models.train_ensemble`).
      omega_f: weight ω_f of the largest force in the selection score, Å (eV/Å → eV).
      noise: standard deviation ε of the symmetry-breaking position noise, Å.
      noise_damping: ω_ε; cycle ``t`` uses ``noise · ω_ε^t``.
      max_uncertainty: U_max, where ensemble relaxations stop (the seed's 0.5).
      relax_fmax: force threshold of the ensemble relaxations, eV/Å (the seed's 0.05).
      relax_steps: step cap of one cycle's ensemble relaxations (the seed caps a relaxation at
        300; here a structure stopped by the cap goes on from where it stopped in the next
        cycle, so a smaller cap per cycle bounds a cycle's time without ending any relaxation).
      k: lowest clusters the stopping criterion watches and validation relaxes (the seed's 3).
      n_cycle: earlier cycles the stopping criterion compares with (the seed's 1).
      stop_tol: improvement below which a cluster energy counts as unchanged, eV/atom.
      min_cycles: cycles before the stopping criterion may fire.
      max_cycles: cycles after which the search validates whatever it has.
      n_lowest: extra lowest-energy pool structures validated besides the clusters'.
      cluster_eps, min_samples: DBSCAN (:func:`cluster_labels`).
      volume_factor, distance_factor: the pools' generation rules
        (:func:`jaxcsp.symmetry.random_crystals`); the closest pair is ``distance_factor``
        times the sum of covalent radii, 0.7 by default (1.55 Å for Si, the seed's 1.6 Å
        constraint), so that no label is dominated by atoms pressed together.
      compute_dtype: the ensemble's arithmetic in the pool relaxations and predictions
        (:meth:`jaxcsp.models.MLFFEnsemble.with_compute_dtype`): ``"float32"``, as it is
        trained, about twice as fast on CPU as ``None`` (the pools' float64).

    Returns:
      ``Method("active", init, step)``. ``state.population`` holds the labelled data, the
      ensemble (:class:`jaxcsp.models.MLFFEnsemble`), both pools, the earlier search pools and
      a per-cycle report (``population["report"]``: cycle, labels, lowest cluster energies,
      ensemble validation loss, relaxation statuses).

    >>> m = active_learning(16, 32, 8)
    >>> m.name, m.config["k"]
    ('active', 3)
    """
    n_initial = 2 * positive_int("batch_size", batch_size) if n_initial is None else n_initial
    config = _Config(
        n_initial=positive_int("n_initial", n_initial),
        n_search=positive_int("n_search", n_search),
        n_train=positive_int("n_train", n_train),
        batch_size=positive_int("batch_size", batch_size),
        num_members=positive_int("num_members", num_members),
        features=positive_int("features", features),
        num_interactions=positive_int("num_interactions", num_interactions),
        cutoff=_positive("cutoff", cutoff),
        max_epochs=positive_int("max_epochs", max_epochs),
        patience=positive_int("patience", patience),
        learning_rate=_positive("learning_rate", learning_rate),
        omega_f=_positive("omega_f", omega_f, allow_zero=True),
        noise=_positive("noise", noise, allow_zero=True),
        noise_damping=_positive("noise_damping", noise_damping),
        max_uncertainty=_positive("max_uncertainty", max_uncertainty),
        relax_fmax=_positive("relax_fmax", relax_fmax),
        relax_steps=positive_int("relax_steps", relax_steps),
        k=positive_int("k", k),
        n_cycle=positive_int("n_cycle", n_cycle),
        stop_tol=_positive("stop_tol", stop_tol, allow_zero=True),
        min_cycles=positive_int("min_cycles", min_cycles),
        max_cycles=positive_int("max_cycles", max_cycles),
        n_lowest=int(n_lowest),
        cluster_eps=None if cluster_eps is None else _positive("cluster_eps", cluster_eps),
        min_samples=positive_int("min_samples", min_samples),
        volume_factor=_positive("volume_factor", volume_factor),
        distance_factor=_positive("distance_factor", distance_factor),
        compute_dtype=compute_dtype,
    )
    if compute_dtype not in (None, "float32", "float64"):
        raise InvalidSearchError(
            f"must be None, 'float32' or 'float64', got {compute_dtype!r}", field="compute_dtype"
        )
    for name, value in (("batch_size", config["batch_size"]), ("n_initial", config["n_initial"])):
        if value > config["n_train"]:
            raise InvalidSearchError(
                f"{value} is larger than the training pool ({n_train})", field=name
            )
    if n_lowest < 0:
        raise InvalidSearchError(f"must be >= 0, got {n_lowest!r}", field="n_lowest")

    def _noisy(key, crystals, sigma):
        if sigma <= 0:
            return crystals

        lat = jnp.asarray(crystals.lattice)
        cart = jnp.einsum("bni,bij->bnj", crystals.frac, lat)
        cart = cart + sigma * jax.random.normal(key, cart.shape, cart.dtype)
        frac = jnp.einsum("bnj,bji->bni", cart, jnp.linalg.inv(lat))
        frac = jnp.where(crystals.mask[..., None], frac, crystals.frac)
        return Crystals(lattice=lat, frac=frac, species=crystals.species, mask=crystals.mask)

    def _clusters(features):
        return cluster_labels(features, eps=config["cluster_eps"], min_samples=min_samples)

    def init(key: jax.Array, composition: tuple[tuple[str, int], ...]):
        n_atoms = sum(c for _, c in composition)
        vf, df = config["volume_factor"], config["distance_factor"]
        train_pool = reconstruct(
            random_crystals(
                jax.random.fold_in(key, 1), dict(composition), config["n_train"], spg=1,
                check_symmetry=False, max_sites=n_atoms, max_atoms=n_atoms,
                volume_factor=vf, distance_factor=df, max_rounds=_P1_ROUNDS,
            )
        )  # fmt: skip
        search_pool = reconstruct(
            random_crystals(
                jax.random.fold_in(key, 2),
                dict(composition),
                config["n_search"],
                max_sites=n_atoms,
                max_atoms=n_atoms,
                volume_factor=vf,
                distance_factor=df,
            )
        )
        k0, k1 = jax.random.split(jax.random.fold_in(key, 3))
        n0 = config["n_initial"]
        pick = np.sort(np.asarray(jax.random.choice(k0, config["n_train"], (n0,), replace=False)))
        proposal = _noisy(k1, train_pool.take(pick), config["noise"])
        population: dict[str, Any] = dict(
            data=None,
            ensemble=None,
            train_pool=train_pool,
            search_pool=search_pool,
            earlier=[],
            report=[],
        )
        state = SearchState.create(key, composition, "active", population)
        info = {"cycle": np.zeros(n0, np.int64), "pool_index": pick.astype(np.int64)}
        return state, Proposal(proposal, relax=False, info=info)

    def _labels(pop, evaluation: Evaluation):
        e = np.asarray(evaluation.energy, np.float64)
        f = None if evaluation.forces is None else np.asarray(evaluation.forces, np.float64)
        s = None if evaluation.stress is None else np.asarray(evaluation.stress, np.float64)
        if f is None or s is None:
            raise InvalidSearchError(
                "the evaluation of a label proposal carries no forces/stress", field="evaluation"
            )
        ok = np.isfinite(e) & np.all(np.isfinite(s), axis=(1, 2))
        ok &= np.all(np.isfinite(np.where(np.asarray(evaluation.crystals.mask)[..., None], f, 0)),
                     axis=(1, 2))  # fmt: skip
        sel = np.nonzero(ok)[0]  # an exploded label (NaN) is kept in the archive, not trained on
        new = LabelledData(
            evaluation.crystals.take(sel),
            jnp.asarray(e[sel]),
            jnp.asarray(np.nan_to_num(f[sel])),
            jnp.asarray(s[sel]),
        )
        old = pop["data"]
        if old is None:
            return new
        return LabelledData(
            concatenate([old.crystals, new.crystals]),
            jnp.concatenate([old.energy, new.energy]),
            jnp.concatenate([old.forces, new.forces]),
            jnp.concatenate([old.stress, new.stress]),
        )

    def _relax_pool(pool, potential):
        res = relax(
            pool,
            potential,
            fmax=config["relax_fmax"],
            cell_filter="frechet",
            max_steps=config["relax_steps"],
            max_uncertainty=config["max_uncertainty"],
        )
        status = np.asarray(res.status)
        moved = ("converged", "max_steps", "uncertain")
        ok = np.isin(status, [STATUS_NAMES.index(s) for s in moved])
        c = jax.tree.map(
            lambda a, b: jnp.where(jnp.asarray(ok).reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
            res.crystals,
            pool,
        )
        return c, status

    def _energies(ensemble, pool):
        pred = ensemble.predict(pool)
        n = np.asarray(pool.num_atoms, np.float64)
        e = np.asarray(pred.energy, np.float64) / n
        fmax = np.asarray(jnp.max(jnp.linalg.norm(pred.forces, axis=-1), axis=-1), np.float64)
        return e, fmax, np.asarray(pred.features, np.float64)

    def step(state: SearchState, evaluation: Evaluation):
        state = record(state, evaluation)
        pop = dict(state.population)
        cycle = int(state.iteration)  # cycles completed, this one included
        key = jax.random.fold_in(state.key, 1000 + cycle)
        k_train, k_noise = jax.random.split(key)
        data = _labels(pop, evaluation)
        if data.size == 0:
            raise InvalidSearchError("no finite oracle label yet", field="evaluation")
        t0 = time.perf_counter()
        ensemble = train_ensemble(
            k_train,
            data,
            ensemble=pop["ensemble"],
            num_members=config["num_members"],
            config=MLFFConfig(
                features=config["features"],
                num_interactions=config["num_interactions"],
                cutoff=config["cutoff"],
            ),
            learning_rate=config["learning_rate"],
            max_epochs=config["max_epochs"],
            patience=config["patience"],
        ).with_compute_dtype(config["compute_dtype"])
        t1 = time.perf_counter()
        potential = ensemble.potential(force_floor=config["relax_fmax"])
        # both pools in one batch: one set of compiled relaxation programs
        n_t = config["n_train"]
        both, status = _relax_pool(concatenate([pop["train_pool"], pop["search_pool"]]), potential)
        train_pool = both.take(np.arange(n_t))
        search_pool = both.take(np.arange(n_t, n_t + config["n_search"]))
        t2 = time.perf_counter()
        e_s, _, feat_s = _energies(ensemble, search_pool)
        labels_s = _clusters(feat_s)
        lowest = lowest_clusters(labels_s, e_s, config["k"])
        # the stopping criterion: the k lowest clusters of the earlier pools, re-clustered
        # with the current ensemble, are not improved on by more than stop_tol
        earlier = [*pop["earlier"], pop["search_pool"]][-config["n_cycle"] :]
        unchanged = len(lowest) == config["k"] and len(earlier) >= config["n_cycle"]
        for old in earlier if unchanged else []:
            e_o, _, f_o = _energies(ensemble, old)
            low_o = lowest_clusters(_clusters(f_o), e_o, config["k"])
            if len(low_o) < config["k"] or any(
                eo - ec > config["stop_tol"]
                for (_, ec), (_, eo) in zip(lowest, low_o, strict=False)
            ):
                unchanged = False
        converged = unchanged and cycle >= config["min_cycles"]
        val = ensemble.history.val_loss if ensemble.history is not None else np.zeros((1, 1))
        pop["report"] = [
            *pop["report"],
            dict(
                cycle=cycle,
                labels=int(data.size),
                lowest_clusters=[e for _, e in lowest],
                val_loss=float(np.nanmean(np.nanmin(val, axis=1))),
                statuses={name: int((status == i).sum()) for i, name in enumerate(STATUS_NAMES)},
                stopped=bool(converged),
                train_s=t1 - t0,  # wall times: the only entries a resumed run may change
                relax_s=t2 - t1,
            ),
        ]
        pop.update(
            data=data,
            ensemble=ensemble,
            train_pool=train_pool,
            search_pool=search_pool,
            earlier=earlier,
        )
        if converged or cycle >= config["max_cycles"]:
            chosen = [i for i, _ in lowest]
            for i in np.argsort(np.where(np.isfinite(e_s), e_s, np.inf), kind="stable"):
                if len(chosen) >= len(lowest) + config["n_lowest"]:
                    break
                if int(i) not in chosen:
                    chosen.append(int(i))
            idx = np.asarray(chosen, np.int64)
            state = dataclasses.replace(state, population=pop)
            info = {
                "cycle": np.full(len(idx), cycle, np.int64),
                "pool_index": idx,
                "predicted_energy_per_atom": e_s[idx],
                "cluster": labels_s[idx],
            }
            return state, Proposal(search_pool.take(idx), relax=True, info=info, final=True)
        # selection: score, one per cluster, best first
        e_t, fmax_t, feat_t = _energies(ensemble, train_pool)
        score = -e_t + config["omega_f"] * fmax_t
        score = np.where(np.isfinite(score), score, -np.inf)
        labels_t = _clusters(feat_t)
        order = np.argsort(-score, kind="stable")
        seen: set[int] = set()
        pick = []
        for i in order:
            lab = int(labels_t[i])
            if lab >= 0 and lab in seen:
                continue
            seen.add(lab)
            pick.append(int(i))
            if len(pick) == batch_size:
                break
        if len(pick) < batch_size:  # fewer clusters than labels wanted: best of the rest
            rest = [int(i) for i in order if int(i) not in pick]
            pick.extend(rest[: batch_size - len(pick)])
        idx = np.asarray(pick, np.int64)
        sigma = config["noise"] * config["noise_damping"] ** cycle
        proposal = _noisy(k_noise, train_pool.take(idx), sigma)
        state = dataclasses.replace(state, population=pop)
        info = {
            "cycle": np.full(len(idx), cycle, np.int64),
            "pool_index": idx,
            "score": score[idx],
        }
        return state, Proposal(proposal, relax=False, info=info)

    return Method("active", init, step, config)
