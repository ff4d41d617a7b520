"""Random symmetric search: the baseline every CSP method is compared with.

Each iteration draws ``batch_size`` candidates with :func:`jaxcsp.symmetry.random_crystals`
(space group uniform over the groups compatible with the composition, then a Wyckoff-position
combination, PyXtal-like volume and distance rules) from the key ``fold_in(key, iteration)``,
so iteration ``t``'s candidates depend only on the seed and ``t``: a resumed search proposes
exactly what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from jaxcsp.search._base import (
    Evaluation,
    Method,
    Proposal,
    SearchState,
    positive_int,
    record,
)
from jaxcsp.symmetry import random_crystals, reconstruct

__all__ = ["random_search"]


def _draw(state: SearchState, batch_size: int, options: dict) -> Proposal:
    n_atoms = sum(n for _, n in state.composition)
    key = jax.random.fold_in(state.key, int(state.iteration))
    wc = random_crystals(
        key,
        dict(state.composition),
        batch_size,
        max_sites=n_atoms,  # fixed padding: one compiled reconstruction for every draw
        max_atoms=n_atoms,
        **options,
    )
    return Proposal(crystals=reconstruct(wc))


def random_search(
    batch_size: int = 64,
    *,
    spg: int | Sequence[int] | None = None,
    volume_factor: float = 1.1,
    distance_factor: float = 0.5,
    max_ratio: float = 3.0,
) -> Method:
    """Random symmetric search as a :class:`~jaxcsp.search.Method`.

    Args:
      batch_size: candidates per iteration (one relaxation batch).
      spg: restrict to one space group or a list of groups (``None``: uniform over every
        compatible group).
      volume_factor: cell volume / sum of covalent sphere volumes (PyXtal's 1.1).
      distance_factor: minimum distance is ``distance_factor * (r_cov,i + r_cov,j)`` (Å).
      max_ratio: largest ratio of two cell lengths.

    Returns:
      ``Method("random", init, step)``; ``init(key, composition)`` and ``step(state,
      evaluation)`` return ``(SearchState, Proposal)`` with ``Proposal.crystals`` of shape
      ``(batch_size, n_atoms)``.

    >>> m = random_search(8)
    >>> m.name, m.config["batch_size"]
    ('random', 8)
    """
    batch_size = positive_int("batch_size", batch_size)
    options: dict[str, Any] = dict(
        volume_factor=float(volume_factor),
        distance_factor=float(distance_factor),
        max_ratio=float(max_ratio),
    )
    if spg is not None:
        groups = [int(spg)] if isinstance(spg, int) else [int(g) for g in spg]
    else:
        groups = None

    def draw(state: SearchState) -> Proposal:
        if groups is None:
            return _draw(state, batch_size, options)
        rng = jax.random.fold_in(jax.random.fold_in(state.key, int(state.iteration)), 1)
        pick = jax.random.randint(rng, (batch_size,), 0, len(groups))
        return _draw(state, batch_size, dict(options, spg=[groups[int(i)] for i in pick]))

    def init(key: jax.Array, composition: tuple[tuple[str, int], ...]):
        state = SearchState.create(key, composition, "random")
        return state, draw(state)

    def step(state: SearchState, evaluation: Evaluation):
        state = record(state, evaluation)
        return state, draw(state)

    config = dict(batch_size=batch_size, spg=groups, **options)
    return Method("random", init, step, config)
