"""CRYSIM as a search method: factorization machine on bit vectors, annealing, decode, relax.

The active-learning loop of Liang et al. (CRYSIM), with the Ising machine replaced by the JAX
annealer of :mod:`jaxcsp.models.anneal`:

1. **Initial data** (iteration 0): ``n_initial`` random symmetric crystals
   (:func:`jaxcsp.symmetry.random_crystals`), labelled by single-point oracle energies (no
   relaxation, as the paper's initial dataset). Their cell lengths fix the encoding's length
   range (:func:`crysim_length_range`), and they are encoded as bit vectors
   (:func:`crysim_encoding`, :func:`encode`).
2. **Each later iteration**: train the factorization machine (:func:`jaxcsp.models.train_fm`,
   loss ``α MSE − β |PCC|`` on standardised energies per atom, early stopping on a 10 %
   validation split, warm-started from the previous model); anneal its QUBO with the one-hot
   constraints as penalties (:func:`jaxcsp.models.anneal_fm`, ``O(K)`` per flip, many replicas);
   take the ``batch_size`` lowest distinct feasible states that are not in the data yet; decode
   each (:func:`decode`: the candidate of its WPC group with the largest minimum interatomic
   distance); the driver relaxes them on the oracle; the decoded candidates' bit vectors
   (re-encoded from the decoded crystals, so bits and structure agree) join the data with their
   relaxed energies per atom.
3. **MID processing**: a data point whose structure has a minimum interatomic distance below
   ``mid_threshold`` (0.5 Å) and a negative energy gets the highest energy of the data instead,
   and so does an invalid candidate (no energy).

Differences from the paper, on purpose: ``batch_size`` decoded candidates per iteration (the
paper relaxes one) so that relaxations batch on the accelerator; the relaxation's trajectory
frames (the paper adds 30) are not added, because the driver's relaxations keep no
trajectories: only the decoded start with its relaxed energy is. When the annealer returns fewer
new feasible states than ``batch_size``, random crystals fill the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from jaxcsp.models import FMModel, anneal_fm, train_fm
from jaxcsp.search._base import (
    Evaluation,
    Method,
    Proposal,
    SearchState,
    positive_int,
    record,
)
from jaxcsp.search._crysim_encoding import crysim_encoding, crysim_length_range, decode, encode
from jaxcsp.symmetry import random_crystals, reconstruct

__all__ = ["crysim_search"]


def crysim_search(
    n_initial: int = 1000,
    batch_size: int = 8,
    *,
    ldr: int = 8,
    rank: int = 8,
    num_replicas: int = 64,
    num_sweeps: int = 500,
    fm_epochs: int = 300,
    learning_rate: float = 1e-2,
    mid_threshold: float = 0.5,
    volume_factor: float = 1.1,
    distance_factor: float = 0.5,
) -> Method:
    """CRYSIM (factorization machine + annealing + MID-selected decoding) as a :class:`Method`.

    Args:
      n_initial: random structures labelled by single points in iteration 0 (the paper's 1000).
      batch_size: decoded candidates relaxed per later iteration.
      ldr: lattice discretisation resolution ``g`` (voxels per cell edge; ``g³`` bits per
        element).
      rank: factorization machine rank ``K``.
      num_replicas: annealing replicas per iteration.
      num_sweeps: annealing sweeps (each visits every bit once).
      fm_epochs: most training epochs per iteration (early stopping usually ends sooner).
      learning_rate: Adam step size of the FM.
      mid_threshold: MID processing threshold, Å.
      volume_factor, distance_factor: the random initial structures' rules (as
        :func:`jaxcsp.search.random_search`).

    Returns:
      ``Method("crysim", init, step)``. ``state.population`` holds the data (``bits (D, M)``
      uint8, ``energy (D,)`` eV/atom, ``mid (D,)`` Å), the decoded proposal's bits and MIDs
      awaiting their energies, and the FM (parameters, standardisation).

    >>> m = crysim_search(200, 4)
    >>> m.name, m.config["ldr"]
    ('crysim', 8)
    """
    n_initial = positive_int("n_initial", n_initial)
    batch_size = positive_int("batch_size", batch_size)
    options = dict(volume_factor=float(volume_factor), distance_factor=float(distance_factor))
    config = dict(
        n_initial=n_initial,
        batch_size=batch_size,
        ldr=positive_int("ldr", ldr),
        rank=positive_int("rank", rank),
        num_replicas=positive_int("num_replicas", num_replicas),
        num_sweeps=positive_int("num_sweeps", num_sweeps),
        fm_epochs=positive_int("fm_epochs", fm_epochs),
        learning_rate=float(learning_rate),
        mid_threshold=float(mid_threshold),
        **options,
    )
    encodings: dict[Any, Any] = {}  # host-side layouts, a pure function of (composition, range)

    def _encoding(comp, length_range):
        k = (comp, length_range)
        if k not in encodings:
            encodings[k] = crysim_encoding(dict(comp), length_range=length_range, ldr=ldr)
        return encodings[k]

    def _random(key, comp, n):
        n_atoms = sum(c for _, c in comp)
        return random_crystals(key, dict(comp), n, max_sites=n_atoms, max_atoms=n_atoms, **options)

    def init(key: jax.Array, composition: tuple[tuple[str, int], ...]):
        wc = _random(jax.random.fold_in(key, 0), composition, n_initial)
        lo, hi = crysim_length_range(wc)
        length_range = (round(float(lo), 6), round(float(hi), 6))
        enc = _encoding(composition, length_range)
        population = dict(
            length_range=np.asarray(length_range),
            bits=np.zeros((0, enc.num_bits), np.uint8),
            energy=np.zeros(0),
            mid=np.zeros(0),
            pending_bits=encode(enc, wc),
            pending_mid=np.full(n_initial, np.inf),  # the generator's distance rules hold
            fm=None,
        )
        state = SearchState.create(key, composition, "crysim", population)
        return state, Proposal(reconstruct(wc), relax=False)

    def step(state: SearchState, evaluation: Evaluation):
        state = record(state, evaluation)
        pop = dict(state.population)
        comp = state.composition
        enc = _encoding(comp, tuple(float(v) for v in pop["length_range"]))
        # the evaluated proposal joins the data (MID processing on its energies)
        bits = np.concatenate([pop["bits"], pop["pending_bits"]])
        energy = np.concatenate([pop["energy"], np.asarray(evaluation.enthalpy_per_atom)])
        mid = np.concatenate([pop["mid"], pop["pending_mid"]])
        pop.update(bits=bits, energy=energy, mid=mid)
        y = energy.copy()
        bad = ~np.isfinite(y)
        high = float(np.max(y[~bad])) if (~bad).any() else 1.0
        y[bad | ((mid < mid_threshold) & (y < 0))] = high

        key = jax.random.fold_in(state.key, int(state.iteration))
        k_fm, k_anneal, k_decode, k_fill = jax.random.split(key, 4)
        prev = pop["fm"]
        warm = (
            None
            if prev is None
            else FMModel(
                params=prev["params"],
                y_mean=float(prev["y_mean"]),
                y_std=float(prev["y_std"]),
                rank=rank,
                num_bits=enc.num_bits,
            )
        )
        model = train_fm(
            k_fm,
            bits,
            y,
            rank=rank,
            max_epochs=fm_epochs,
            learning_rate=learning_rate,
            params=warm,
        )
        pop["fm"] = dict(
            params=model.params, y_mean=np.asarray(model.y_mean), y_std=np.asarray(model.y_std)
        )
        res = anneal_fm(
            k_anneal,
            model,
            num_replicas=num_replicas,
            num_sweeps=num_sweeps,
            groups=list(enc.one_hot_groups),
        )
        states = np.asarray(res.states, np.uint8)
        order = np.argsort(np.asarray(res.energies), kind="stable")
        feasible = np.ones(len(states), bool) if res.feasible is None else np.asarray(res.feasible)
        seen = {row.tobytes() for row in bits}
        chosen = []
        for r in order:
            row = states[r]
            if feasible[r] and row.tobytes() not in seen:
                seen.add(row.tobytes())
                chosen.append(row)
            if len(chosen) == batch_size:
                break
        n_fill = batch_size - len(chosen)
        if n_fill:
            chosen.extend(encode(enc, _random(k_fill, comp, n_fill)))
        wc, info = decode(enc, np.stack(chosen), key=k_decode)
        pop["pending_bits"] = encode(enc, wc)
        pop["pending_mid"] = np.asarray(info["mid"], np.float64)
        state = dataclasses.replace(state, population=pop)
        return state, Proposal(reconstruct(wc))

    return Method("crysim", init, step, config)
