"""The search layer's types: oracle, proposals, evaluations, the search state and methods.

A search method is a pure pair of functions over a registered pytree state::

    state, proposal = method.init(key, composition)        # first candidates
    evaluation = evaluate(proposal, oracle, db=..., ...)     # relax them on the oracle
    state, proposal = method.step(state, evaluation)        # learn, then propose again

``init`` and ``step`` never touch files or the oracle; the host driver
(:func:`jaxcsp.search.run`) owns relaxation, the database, budgets, progress and resuming,
so that a notebook can call the two functions by hand and custom code can jit parts of a
method (its proposal maths, its model updates).

Types:

* :class:`Oracle` — the energy model that stands in for DFT: a ``Potential`` plus an optional
  budget of evaluations and optional cheap tiers (FUSE2's tiered relaxation) run before it.
* :class:`Proposal` — candidates a method asks to have evaluated: ``Crystals (P, N)``.
* :class:`Evaluation` — what the oracle made of them, one entry per candidate (nothing is
  dropped: invalid and exploded candidates keep their row, with ``NaN`` energies).
* :class:`SearchState` — key, iteration, counters, the archive of every evaluation so far,
  and the method's own ``population`` pytree.
* :class:`Method` — ``(name, init, step)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.crystal import Crystals, concatenate
from jaxcsp.errors import JaxcspError
from jaxcsp.optimize import STATUS_NAMES

__all__ = [
    "Evaluation",
    "InvalidSearchError",
    "Method",
    "Oracle",
    "Proposal",
    "SearchState",
    "Tier",
    "record",
]

Array = jax.Array

#: Status code of every status name (``"converged"`` -> 1, ...), inverse of ``STATUS_NAMES``,
#: plus ``"single_point"``: a candidate labelled without relaxation (``Proposal(relax=False)``);
#: it has an energy but is not a relaxed prediction, so it is not deduplicated or ranked.
STATUS_CODES = {name: code for code, name in enumerate((*STATUS_NAMES, "single_point"))}


class InvalidSearchError(JaxcspError, ValueError):
    """A search was set up wrongly (composition, potential coverage, budget, arguments).

    Attributes:
      field: the offending argument (``"composition"``, ``"budget"``, ``"potential"``, ...).
    """

    def __init__(self, message: str, *, field: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def positive_int(name: str, value: Any) -> int:
    """``int(value)`` if it is an integer >= 1 (``bool`` refused); else an
    :class:`InvalidSearchError` naming ``name``."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise InvalidSearchError(f"must be a positive integer, got {value!r}", field=name)
    return int(value)


@dataclasses.dataclass(frozen=True)
class Tier:
    """A cheap pre-relaxation before the oracle (FUSE2's tiered relaxation).

    Attributes:
      potential: the cheap ``Potential``.
      fmax: force threshold of this tier, eV/Å (looser than the oracle's).
      max_steps: step cap of this tier.
      name: label used in counters and database keys (``"<name>_calls"``).
    """

    potential: Any
    fmax: float = 0.05
    max_steps: int = 300
    name: str = "cheap"


@dataclasses.dataclass(frozen=True)
class Oracle:
    """The energy model a search is charged for, with an optional budget and cheap tiers.

    Every energy/force evaluation of ``potential`` is an oracle call. Relaxations report their
    force calls per structure (``Evaluation.oracle_calls``); the search state sums them
    (``SearchState.oracle_calls``) and the driver stops once ``budget`` is reached. The final
    energy of a relaxed structure is the one of its last step (no extra call). Tier
    evaluations are counted apart, per tier.

    Attributes:
      potential: any :class:`~jaxcsp.potentials.Potential` (eV, eV/Å, eV/Å³).
      budget: total oracle calls allowed (``None``: unlimited); a search stops after the
        iteration during which it is reached.
      tiers: cheap :class:`Tier` pre-relaxations run before the oracle, in order.
    """

    potential: Any
    budget: int | None = None
    tiers: tuple[Tier, ...] = ()

    def __post_init__(self):
        if self.budget is not None:
            b = self.budget
            if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
                raise InvalidSearchError(
                    f"the budget must be a positive number of oracle calls, got {b!r}",
                    field="budget",
                )
        object.__setattr__(self, "tiers", tuple(self.tiers))

    @property
    def name(self) -> str:
        """The oracle potential's name."""
        return str(getattr(self.potential, "name", "potential"))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Proposal:
    """Candidates a method asks the driver to evaluate.

    Attributes:
      crystals: ``Crystals`` batch ``(P, N)`` of candidates (Å).
      relax: static; ``True`` to relax each candidate on the oracle (every method so far),
        ``False`` for single-point labels (active learning).
      info: optional method-specific facts about each candidate, ``{name: (P,) array}`` of
        bools, integers or floats, written into each candidate's database row as key-value
        pairs (e.g. the dual-level loop's ``round``, ``loss``, ``candidate``). Names must not
        clash with the driver's own keys (``iteration``, ``method``, ``status``, ...).
      final: static; ``True`` when the method has finished (its own stopping criterion, e.g.
        active learning's validation of its lowest clusters): the driver evaluates this
        proposal and stops.
    """

    crystals: Crystals
    relax: bool = dataclasses.field(default=True, metadata=dict(static=True))
    info: Mapping[str, Any] | None = None
    final: bool = dataclasses.field(default=False, metadata=dict(static=True))

    @property
    def size(self) -> int:
        """Number of candidates ``P``."""
        return int(self.crystals.lattice.shape[0])


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The oracle's verdict on a proposal (or an archive of several), one entry per candidate.

    Attributes:
      ids: ``(P,) int64`` global candidate ids (the database's ``input_id``), in order.
      iteration: ``(P,) int32`` search iteration that proposed each candidate.
      crystals: relaxed ``Crystals (P, N)`` (the input where the relaxation did not run).
      energy: ``(P,)`` total energy in eV (``NaN`` for invalid/exploded candidates).
      enthalpy_per_atom: ``(P,)`` (E + p·V) / n_atoms in eV/atom (``NaN`` likewise).
      status: ``(P,) int32`` status codes (:data:`jaxcsp.optimize.STATUS_NAMES`).
      oracle_calls: ``(P,) int64`` oracle energy/force evaluations spent on each candidate.
      tier_calls: ``(P, T) int64`` evaluations of each cheap tier.
      forces: ``(P, N, 3)`` oracle forces in eV/Å of each entry's structure (``NaN`` where the
        database row holds none, zero on padding), or ``None`` when no entry has any; single
        points (``Proposal(relax=False)``) always have them (the labels of active learning).
      stress: ``(P, 3, 3)`` oracle stress in eV/Å³ (``NaN`` where unknown), or ``None``.
    """

    ids: Array
    iteration: Array
    crystals: Crystals
    energy: Array
    enthalpy_per_atom: Array
    status: Array
    oracle_calls: Array
    tier_calls: Array
    forces: Array | None = None
    stress: Array | None = None

    @property
    def size(self) -> int:
        """Number of entries ``P``."""
        return int(np.shape(self.ids)[0])

    @property
    def ok(self) -> np.ndarray:
        """``(P,) bool``: relaxed entries with a finite energy (host side); single points
        (status ``"single_point"``) are not."""
        return np.isfinite(np.asarray(self.enthalpy_per_atom)) & (
            np.asarray(self.status) != STATUS_CODES["single_point"]
        )

    @staticmethod
    def concatenate(parts: Sequence[Evaluation]) -> Evaluation:
        """Join evaluations along the candidate axis (host side; atom slots padded to the max)."""
        if not parts:
            raise JaxcspError("cannot concatenate an empty sequence of evaluations")
        first = parts[0]
        parts = [p for p in parts if p.size]
        if not parts:  # every part empty (a method proposed nothing this iteration)
            return first
        if len(parts) == 1:
            return parts[0]
        n_tiers = max(np.shape(p.tier_calls)[1] for p in parts)
        cat = {
            f: jnp.concatenate([jnp.asarray(getattr(p, f)) for p in parts])
            for f in ("ids", "iteration", "energy", "enthalpy_per_atom", "status", "oracle_calls")
        }
        tier_calls = jnp.concatenate(
            [
                jnp.pad(jnp.asarray(p.tier_calls), ((0, 0), (0, n_tiers - p.tier_calls.shape[1])))
                for p in parts
            ]
        )
        crystals = concatenate([p.crystals for p in parts])
        forces: Array | None = None
        stress: Array | None = None
        if any(p.forces is not None for p in parts):
            n = int(crystals.frac.shape[1])
            f_parts: list[np.ndarray] = []
            s_parts: list[np.ndarray | Array] = []
            for p in parts:
                k, m = p.size, int(p.crystals.frac.shape[1])
                f = np.full((k, m, 3), np.nan) if p.forces is None else np.asarray(p.forces)
                f_parts.append(np.pad(f, ((0, 0), (0, n - m), (0, 0))))
                s_parts.append(np.full((k, 3, 3), np.nan) if p.stress is None else p.stress)
            forces = jnp.asarray(np.concatenate(f_parts))
            stress = jnp.asarray(np.concatenate([np.asarray(x) for x in s_parts]))
        return Evaluation(
            ids=cat["ids"],
            iteration=cat["iteration"],
            crystals=crystals,
            energy=cat["energy"],
            enthalpy_per_atom=cat["enthalpy_per_atom"],
            status=cat["status"],
            oracle_calls=cat["oracle_calls"],
            tier_calls=tier_calls,
            forces=forces,
            stress=stress,
        )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SearchState:
    """Everything a search carries from one iteration to the next (a registered pytree).

    Attributes:
      key: ``jax.random`` key of the next iteration.
      iteration: ``() int32``, iterations completed (proposals evaluated).
      next_id: ``() int64``, the global id the next proposal's first candidate gets.
      oracle_calls: ``() int64``, oracle evaluations so far.
      tier_calls: ``(T,) int64``, evaluations of each cheap tier so far.
      archive: :class:`Evaluation` of every candidate so far, or ``None`` before the first.
      population: the method's own pytree (``None`` for random search).
      composition: static, the unit-cell composition ``(("Si", 8),)``.
      method: static, the method's name.
    """

    key: Array
    iteration: Array
    next_id: Array | np.ndarray  # int64 counters stay on the host (numpy)
    oracle_calls: Array | np.ndarray
    tier_calls: Array | np.ndarray
    archive: Evaluation | None
    population: Any
    composition: tuple[tuple[str, int], ...] = dataclasses.field(metadata=dict(static=True))
    method: str = dataclasses.field(metadata=dict(static=True))

    @staticmethod
    def create(
        key: Array,
        composition: Sequence[tuple[str, int]],
        method: str,
        population: Any = None,
        n_tiers: int = 0,
    ) -> SearchState:
        """A fresh state at iteration 0."""
        return SearchState(
            key=key,
            iteration=jnp.asarray(0, jnp.int32),
            next_id=np.asarray(0, np.int64),
            oracle_calls=np.asarray(0, np.int64),
            tier_calls=np.zeros(n_tiers, np.int64),
            archive=None,
            population=population,
            composition=tuple((str(e), int(n)) for e, n in composition),
            method=str(method),
        )


def record(state: SearchState, evaluation: Evaluation) -> SearchState:
    """Add an evaluation to the archive and the counters, and advance the iteration (host side).

    Every method's ``step`` starts with this, so that stepping a method by hand keeps the same
    books as the driver.

    Args:
      state: the current state.
      evaluation: the evaluation of the state's last proposal.

    Returns:
      The new state: ``archive`` extended, ``oracle_calls``/``tier_calls`` increased by the
      evaluation's sums, ``iteration`` + 1, ``next_id`` past the evaluation's ids.
    """
    archive = (
        evaluation if state.archive is None else Evaluation.concatenate([state.archive, evaluation])
    )
    tier = np.asarray(evaluation.tier_calls).sum(axis=0)
    tiers = np.asarray(state.tier_calls)
    if tier.shape != tiers.shape:
        tiers = np.zeros(tier.shape, np.int64) if tiers.size == 0 else tiers
    next_id = int(state.next_id) + evaluation.size
    if evaluation.size:
        next_id = max(next_id, int(np.asarray(evaluation.ids).max()) + 1)
    return dataclasses.replace(
        state,
        archive=archive,
        oracle_calls=np.asarray(
            int(state.oracle_calls) + int(np.asarray(evaluation.oracle_calls).sum()), np.int64
        ),
        tier_calls=(tiers + tier).astype(np.int64),
        iteration=jnp.asarray(int(state.iteration) + 1, jnp.int32),
        next_id=np.asarray(next_id, np.int64),
    )


class Method(NamedTuple):
    """A search method: a name and a pure ``(init, step)`` pair.

    Attributes:
      name: short name written into every database row (``"random"``, ``"crysim"``, ...).
      init: ``init(key, composition) -> (SearchState, Proposal)``; ``composition`` as
        ``(("Si", 8),)`` (the driver parses and checks user input first).
      step: ``step(state, evaluation) -> (SearchState, Proposal)``: records the evaluation of
        the last proposal (:func:`record`), updates the method's population/models, proposes.
      config: the method's settings, for reports and the database (plain values).
    """

    name: str
    init: Callable[[Array, tuple[tuple[str, int], ...]], tuple[SearchState, Proposal]]
    step: Callable[[SearchState, Evaluation], tuple[SearchState, Proposal]]
    config: Mapping[str, Any] = {}
