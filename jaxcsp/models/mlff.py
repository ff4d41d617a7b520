"""Learned force fields: a PaiNN-style message-passing model and deep ensembles of it.

The model of the active-learning seed (Hessmann et al.): a roto-translation invariant
message-passing network on jaxcsp's neighbor lists computes an ``F``-dimensional feature
vector ``s_i`` of every atom's environment; a small MLP maps it to an atomic energy and the
crystal's energy is the sum

    E = Σ_i ( scale · MLP(s_i) + shift[Z_i] ),

with forces and stress by automatic differentiation (:mod:`jaxcsp.calculator`). ``shift`` (a
per-species energy, eV) and ``scale`` (eV) are fitted from the training labels, not learned.
The network is PaiNN (Schütt, Unke & Gastegger, ICML 2021): scalar features ``s_i (F,)`` and
vector features ``v_i (3, F)``, sine radial basis times a cosine cutoff, equivariant message
and update blocks; only the scalars reach the energy, so the energy is invariant and the
forces equivariant.

A deep ensemble (:class:`MLFFEnsemble`) is ``M`` independently initialised copies trained on
the same data, held as one parameter pytree with a leading member axis and trained by one
compiled program (``vmap`` over members of the whole training loop: no Python loop over
members). Its prediction is the members' mean; its uncertainty the spread of the members'
forces, the seed's relative force uncertainty

    U = max_i ‖σ_f,i‖ / max_i ‖f̄_i‖

(``σ_f,i`` the per-component standard deviation of atom ``i``'s force over members, ``f̄_i``
the mean force), which :func:`jaxcsp.optimize.relax` can stop on (``max_uncertainty=``). The
mean-pooled atomic features of every member, concatenated, describe a structure for
clustering (:meth:`MLFFEnsemble.features`).

Training (:func:`train_ensemble`) follows the seed: Adam (learning rate 5e-4, batch size 10),
a 20 % validation split (drawn per member) with the learning rate halved on plateaus and the
best validation epoch kept, structures whose largest force lies more than 3 standard
deviations above the mean excluded, and the loss

    L = ω_E (E − Ê)² + ω_f (1/n) Σ_i ‖f_i − f̂_i‖² + ω_s (1/9) Σ_ab (σ_ab − σ̂_ab)²

with ``(ω_E, ω_f, ω_s) = (1e-4, 0.9999, 300)`` (eV, eV/Å, eV/Å³).

>>> import jax, jaxcsp as jc
>>> from jaxcsp.models import init_ensemble
>>> ens = init_ensemble(jax.random.key(0), ["Si"], num_members=2, features=8)
>>> ens.num_members, ens.potential().cutoff
(2, 5.0)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from jaxcsp import neighbors as nb
from jaxcsp import parallel
from jaxcsp.calculator import calculate_with_neighbors
from jaxcsp.crystal import Crystals
from jaxcsp.errors import InvalidArgumentError, InvalidStructureError, check_int, check_real
from jaxcsp.models._checkpoint import restore_msgpack, write_msgpack
from jaxcsp.optimize._relax import _spec_for
from jaxcsp.potentials import Potential, check_species
from jaxcsp.potentials._base import edge_vectors_single, species_tuple

__all__ = [
    "EnsembleHistory",
    "EnsemblePrediction",
    "LabelledData",
    "MLFFConfig",
    "MLFFEnsemble",
    "PaiNN",
    "init_ensemble",
    "labelled_data",
    "load_ensemble",
    "save_ensemble",
    "train_ensemble",
]

Array = jax.Array

_FORMAT = "jaxcsp-mlff-ensemble"
_VERSION = 1
#: the seed's loss weights (energy, forces, stress)
SEED_WEIGHTS = (1e-4, 0.9999, 300.0)


class MLFFConfig(NamedTuple):
    """Static architecture of the model (hashable).

    Attributes:
      features: feature dimension ``F``.
      num_interactions: message + update blocks.
      num_rbf: sine radial basis functions.
      cutoff: radial cutoff, Å (also the neighbor-list cutoff of the potential).
    """

    features: int = 32
    num_interactions: int = 2
    num_rbf: int = 16
    cutoff: float = 5.0


class PaiNN(nn.Module):
    """PaiNN message passing on one crystal's neighbor list.

    Attributes:
      num_species: number of element types (inputs are type indices ``0..num_species-1``).
      config: :class:`MLFFConfig`.
    """

    num_species: int
    config: MLFFConfig = MLFFConfig()

    @nn.compact
    def __call__(
        self, types: Array, vectors: Array, edge_mask: Array, index: Array
    ) -> tuple[Array, Array]:
        """Atomic energies and features.

        Args:
          types: ``(N,)`` int32 type index of every atom slot.
          vectors: ``(N, K, 3)`` edge vectors i→j, Å.
          edge_mask: ``(N, K)`` bool, real edges.
          index: ``(N, K)`` int32 neighbor atom index ``j``.

        Returns:
          ``(N,)`` atomic energies (units of the network output, scaled outside) and the final
          scalar features ``(N, F)``.
        """
        cfg = self.config
        f = cfg.features
        dtype = vectors.dtype
        n = types.shape[0]
        s = nn.Embed(self.num_species, f, name="embed")(types).astype(dtype)
        v = jnp.zeros((n, 3, f), dtype)
        r2 = jnp.sum(vectors * vectors, axis=-1)
        live = edge_mask & (r2 > 1e-12) & (r2 < cfg.cutoff**2)
        r = jnp.sqrt(jnp.where(live, r2, 1.0))
        unit = jnp.where(live[..., None], vectors / r[..., None], 0.0)
        freq = jnp.arange(1, cfg.num_rbf + 1, dtype=dtype) * (jnp.pi / cfg.cutoff)
        rbf = jnp.sin(freq * r[..., None]) / r[..., None]  # (N, K, R)
        fcut = jnp.where(live, 0.5 * (jnp.cos(jnp.pi * r / cfg.cutoff) + 1.0), 0.0)
        for t in range(cfg.num_interactions):
            # message: filters of the radial basis gate neighbor scalars and vectors
            phi = nn.Dense(3 * f, name=f"phi_out_{t}")(nn.silu(nn.Dense(f, name=f"phi_in_{t}")(s)))
            w = nn.Dense(3 * f, name=f"filter_{t}")(rbf) * fcut[..., None]  # (N, K, 3F)
            x = phi[index] * w
            a, b, c = jnp.split(x, 3, axis=-1)  # (N, K, F) each
            s = s + jnp.sum(a, axis=1)
            dv = v[index] * b[:, :, None, :] + c[:, :, None, :] * unit[..., None]
            v = v + jnp.sum(dv, axis=1)
            # update: mix channels, couple scalars to vector norms and projections
            uv = nn.Dense(f, use_bias=False, name=f"U_{t}")(v)  # (N, 3, F)
            vv = nn.Dense(f, use_bias=False, name=f"V_{t}")(v)
            norm = jnp.sqrt(jnp.sum(vv * vv, axis=1) + 1e-8)
            a = nn.Dense(3 * f, name=f"update_out_{t}")(
                nn.silu(nn.Dense(f, name=f"update_in_{t}")(jnp.concatenate([s, norm], -1)))
            )
            a_vv, a_sv, a_ss = jnp.split(a, 3, axis=-1)
            v = v + a_vv[:, None, :] * uv
            s = s + a_sv * jnp.sum(uv * vv, axis=1) + a_ss
        e = nn.Dense(1, name="readout_out")(nn.silu(nn.Dense(max(f // 2, 1), name="readout_in")(s)))
        return e[:, 0], s


# ---------------------------------------------------------------------- energies


def _types(species_z: tuple[int, ...], atomic_numbers: Array) -> Array:
    table = np.zeros(119, np.int32)
    table[list(species_z)] = np.arange(len(species_z), dtype=np.int32)
    return jnp.asarray(table)[atomic_numbers]


def _member_atoms(net, stats, crystal: Crystals, neighbors, options) -> tuple[Array, Array]:
    """``(N,)`` atomic energies (eV, padding zero) and ``(N, F)`` features of one member."""
    species_z, cfg, compute = options
    dtype = crystal.frac.dtype
    vec = edge_vectors_single(crystal, neighbors)  # geometry in the input's precision
    net_dtype = dtype if compute is None else jnp.dtype(compute)
    types = _types(species_z, crystal.species)
    net = jax.tree.map(lambda a: a.astype(net_dtype), net)
    # flax types apply's result as output | (output, variables); without `mutable`: the output
    out: Any = PaiNN(len(species_z), cfg).apply(
        {"params": net}, types, vec.astype(net_dtype), neighbors.mask, neighbors.index
    )
    e, s = out
    shift = stats["shift"].astype(dtype)[types]
    e = stats["scale"].astype(dtype) * e.astype(dtype) + shift
    return jnp.where(crystal.mask, e, 0.0), s


def _member_energy(params, crystal, neighbors, options) -> Array:
    """Energy (eV) of ONE crystal by ONE member; ``params = {"net", "shift", "scale"}``."""
    e, _ = _member_atoms(params["net"], params, crystal, neighbors, options)
    return jnp.sum(e)


def _ensemble_energy(params, crystal, neighbors, options) -> Array:
    """Mean energy over the members (``params["net"]`` has a leading member axis), eV."""
    e = jax.vmap(lambda net: _member_energy(dict(params, net=net), crystal, neighbors, options))(
        params["net"]
    )
    return jnp.mean(e)


def _member_potential(params, options):
    species_z, cfg, _ = options
    return Potential(
        _member_energy, params, cutoff=float(cfg.cutoff), species=species_z,
        options=options, name="mlff_member",
    )  # fmt: skip


def _member_results(params, crystals: Crystals, neighbors, options):
    """Energies ``(M, B)``, forces ``(M, B, N, 3)`` and stresses ``(M, B, 3, 3)`` per member."""

    def one(net):
        r = calculate_with_neighbors(
            _member_potential(dict(params, net=net), options), crystals, neighbors
        )
        return r.energy, r.forces, r.stress

    return jax.vmap(one)(params["net"])


def _relative_uncertainty(forces: Array, mask: Array, floor: Any = 0.0) -> Array:
    """``U = max_i ‖σ_f,i‖ / max(max_i ‖f̄_i‖, floor)`` from member forces ``(M, B, N, 3)`` ->
    ``(B,)`` (``floor`` in eV/Å)."""
    mean = jnp.mean(forces, axis=0)
    sig = jnp.sqrt(jnp.sum(jnp.var(forces, axis=0), axis=-1))  # (B, N)
    fnorm = jnp.sqrt(jnp.sum(mean * mean, axis=-1))
    top_sig = jnp.max(jnp.where(mask, sig, 0.0), axis=-1)
    top_f = jnp.max(jnp.where(mask, fnorm, 0.0), axis=-1)
    tiny = jnp.finfo(forces.dtype).tiny
    return top_sig / jnp.maximum(jnp.maximum(top_f, jnp.asarray(floor, top_f.dtype)), tiny)


def _ensemble_uncertainty(params, crystals, neighbors, options) -> Array:
    """``(B,)`` relative force uncertainty ``U`` of a batch (the Potential hook); the force
    floor (eV/Å, traced) is ``params["force_floor"]`` when :meth:`MLFFEnsemble.potential` set
    one."""
    _, f, _ = _member_results(params, crystals, neighbors, options)
    return _relative_uncertainty(f, crystals.mask, params.get("force_floor", 0.0))


def _pooled_features(params, crystals, neighbors, options) -> Array:
    """``(B, M·F)``: every member's mean over real atoms of its final scalar features."""

    def one(net, c, nl):
        _, s = _member_atoms(net, params, c, nl, options)
        w = c.mask.astype(s.dtype)[:, None]
        return jnp.sum(s * w, axis=0) / jnp.maximum(jnp.sum(w), 1.0)

    per = jax.vmap(lambda net: jax.vmap(lambda c, nl: one(net, c, nl))(crystals, neighbors))(
        params["net"]
    )  # (M, B, F)
    return jnp.transpose(per, (1, 0, 2)).reshape(per.shape[1], -1)


@functools.partial(jax.jit, static_argnames=("options",))
def _predict_jit(params, crystals, neighbors, options):
    e, f, s = _member_results(params, crystals, neighbors, options)
    feats = _pooled_features(params, crystals, neighbors, options)
    return e, f, s, feats


# ---------------------------------------------------------------------- the ensemble


class EnsembleHistory(NamedTuple):
    """Training record of an ensemble (host arrays).

    Attributes:
      train_loss: ``(M, E)`` mean training loss per epoch (NaN after a member stopped).
      val_loss: ``(M, E)`` validation loss per epoch.
      best_epoch: ``(M,)`` epoch whose parameters were kept.
      epochs: ``(M,)`` epochs run.
      n_train, n_val: structures in the training and validation splits (per member).
      excluded: structures left out as force outliers.
    """

    train_loss: np.ndarray
    val_loss: np.ndarray
    best_epoch: np.ndarray
    epochs: np.ndarray
    n_train: int
    n_val: int
    excluded: int


class EnsemblePrediction(NamedTuple):
    """What an ensemble predicts for a batch of ``B`` crystals of ``N`` atom slots.

    Attributes:
      energy: ``(B,)`` mean energy, eV.
      forces: ``(B, N, 3)`` mean forces, eV/Å (padding zero).
      stress: ``(B, 3, 3)`` mean stress, eV/Å³.
      energy_std: ``(B,)`` standard deviation of the members' energies, eV.
      force_std: ``(B, N)`` per-atom ‖σ_f,i‖ (norm of the per-component standard deviation),
        eV/Å.
      uncertainty: ``(B,)`` relative force uncertainty ``U`` (dimensionless).
      member_energy: ``(M, B)`` each member's energy, eV.
      features: ``(B, M·F)`` structure descriptors (:meth:`MLFFEnsemble.features`).
    """

    energy: Array
    forces: Array
    stress: Array
    energy_std: Array
    force_std: Array
    uncertainty: Array
    member_energy: Array
    features: Array


@dataclasses.dataclass(frozen=True)
class MLFFEnsemble:
    """A deep ensemble of :class:`PaiNN` force fields.

    Attributes:
      params: ``{"net": member-stacked Flax parameters (leading axis M), "shift": (S,) eV per
        species, "scale": () eV}``.
      species: atomic numbers the ensemble covers, sorted (its ``S`` types).
      config: :class:`MLFFConfig`.
      history: the last training run's :class:`EnsembleHistory`, or ``None``.
      compute_dtype: ``None`` (the network runs in the input's precision: float64 inputs give
        float64 energies whose derivatives match finite differences) or ``"float32"`` (the
        network's arithmetic in float32, as it was trained; geometry, the per-species shifts
        and the sums stay in the input's precision; about twice as fast on CPU, forces
        within 1e-4 eV/Å of float64, enough for relaxations to 0.05 eV/Å). Set it with
        :meth:`with_compute_dtype`.
    """

    params: dict
    species: tuple[int, ...]
    config: MLFFConfig
    history: EnsembleHistory | None = None
    compute_dtype: str | None = None

    @property
    def num_members(self) -> int:
        """Members ``M``."""
        return int(jax.tree.leaves(self.params["net"])[0].shape[0])

    @property
    def options(self) -> tuple:
        return (self.species, self.config, self.compute_dtype)

    def with_compute_dtype(self, dtype: Any) -> MLFFEnsemble:
        """The same ensemble evaluated with the network's arithmetic in ``dtype`` (``None``: the
        input's precision; ``"float32"``); see :attr:`compute_dtype`."""
        try:
            name = None if dtype is None else jnp.dtype(dtype).name
        except TypeError:  # not a dtype at all
            name = "invalid"
        if name not in (None, "float32", "float64"):
            raise InvalidArgumentError(
                f"compute_dtype must be None, float32 or float64, got {dtype!r}",
                argument="compute_dtype",
                value=dtype,
            )
        return dataclasses.replace(self, compute_dtype=name)

    def potential(self, force_floor: float = 0.0):
        """The ensemble's mean as a :class:`~jaxcsp.potentials.Potential` (eV, eV/Å, eV/Å³),
        with the relative force uncertainty as its ``uncertainty_fn`` (so
        ``relax(..., max_uncertainty=0.5)`` stops where the members disagree).

        Args:
          force_floor: eV/Å, the smallest denominator of ``U = max‖σ_f‖ / max(max‖f̄‖,
            force_floor)``. With ``0`` (the seed's ``U``) a structure whose forces vanish by
            symmetry (every atom on a special position, only the cell still to relax) has
            ``U`` = round-off / round-off and stops at once; a floor at the relaxation's force
            threshold measures the spread against the forces that still matter. A traced
            value: one nonzero floor after another compiles nothing. Negative or non-finite
            values raise :class:`~jaxcsp.errors.InvalidArgumentError`.
        """
        params = self.params
        if force_floor:
            check_real("force_floor", force_floor, unit="eV/Å")
            params = dict(params, force_floor=jnp.asarray(float(force_floor)))
        return Potential(
            _ensemble_energy,
            params,
            cutoff=float(self.config.cutoff),
            species=self.species,
            options=self.options,
            name="mlff_ensemble",
            uncertainty_fn=_ensemble_uncertainty,
        )

    def _neighbors(self, crystals: Crystals):
        pot = self.potential()
        check_species(pot, crystals, source="mlff ensemble input")
        # the relaxation driver's shape choice: quantized capacity, and an earlier spec of this
        # process reused when it covers the batch (few compiled neighbor and model programs)
        nl = nb.update(_spec_for(pot, crystals, backend="auto"), crystals)
        if bool(np.any(np.asarray(nl.overflow))):
            nl = nb.neighbor_list(crystals, self.config.cutoff)
        return _pad_capacity(nl, _quantize(nl.capacity))

    def predict(self, crystals: Crystals) -> EnsemblePrediction:
        """Mean energy, forces, stress and the members' spread for a concrete batch.

        Args:
          crystals: ``(B, N)`` batch (Å) of elements in :attr:`species`.

        Raises:
          InvalidStructureError: an element the ensemble was never trained on (naming the
            structure and the covered elements).
        """
        nl = self._neighbors(crystals)
        e, f, s, feats = _predict_jit(self.params, crystals, nl, self.options)
        sig = jnp.sqrt(jnp.sum(jnp.var(f, axis=0), axis=-1))
        sig = jnp.where(crystals.mask, sig, 0.0)
        return EnsemblePrediction(
            energy=jnp.mean(e, axis=0),
            forces=jnp.mean(f, axis=0),
            stress=jnp.mean(s, axis=0),
            energy_std=jnp.std(e, axis=0),
            force_std=sig,
            uncertainty=_relative_uncertainty(f, crystals.mask),
            member_energy=e,
            features=feats,
        )

    def features(self, crystals: Crystals) -> Array:
        """``(B, M·F)`` structure descriptors: each member's mean-pooled atomic features,
        concatenated (invariant to rotation, translation, permutation and cell choice of the
        same periodic structure up to the atoms' environments)."""
        nl = self._neighbors(crystals)
        return _predict_jit(self.params, crystals, nl, self.options)[3]


def init_ensemble(
    key: Any,
    species: Sequence[int | str],
    *,
    num_members: int = 5,
    features: int = 32,
    num_interactions: int = 2,
    num_rbf: int = 16,
    cutoff: float = 5.0,
) -> MLFFEnsemble:
    """An untrained ensemble (``shift`` 0, ``scale`` 1) of ``num_members`` members.

    Args:
      key: ``jax.random`` key; member ``m`` is initialised from ``fold_in(key, m)``.
      species: elements (symbols or atomic numbers).
      num_members: ``M`` (the seed uses 5).
      features, num_interactions, num_rbf, cutoff: :class:`MLFFConfig` (cutoff in Å).
    """
    num_members = check_int("num_members", num_members, minimum=1)
    check_real("cutoff", cutoff, unit="Å")
    cfg = MLFFConfig(
        features=check_int("features", features),
        num_interactions=check_int("num_interactions", num_interactions),
        num_rbf=check_int("num_rbf", num_rbf),
        cutoff=float(cutoff),
    )
    sp = tuple(sorted(species_tuple(species) or ()))
    if not sp:
        raise InvalidStructureError("an ensemble needs at least one element", field="species")
    module = PaiNN(len(sp), cfg)
    k = 4
    dummy = (
        jnp.zeros((2,), jnp.int32),
        jnp.ones((2, k, 3), jnp.float32),
        jnp.ones((2, k), bool),
        jnp.zeros((2, k), jnp.int32),
    )
    keys = jax.vmap(lambda m: jax.random.fold_in(jnp.asarray(key), m))(jnp.arange(num_members))
    net = jax.vmap(lambda kk: module.init(kk, *dummy)["params"])(keys)
    params = {
        "net": net,
        "shift": jnp.zeros(len(sp), jnp.float32),
        "scale": jnp.ones((), jnp.float32),
    }
    return MLFFEnsemble(params, sp, cfg)


# ---------------------------------------------------------------------- data


class LabelledData(NamedTuple):
    """Oracle labels of ``D`` crystals (the training set of an ensemble).

    Attributes:
      crystals: ``(D, N)`` :class:`~jaxcsp.crystal.Crystals`, Å.
      energy: ``(D,)`` eV.
      forces: ``(D, N, 3)`` eV/Å (padding rows ignored).
      stress: ``(D, 3, 3)`` eV/Å³.
    """

    crystals: Crystals
    energy: Array
    forces: Array
    stress: Array

    @property
    def size(self) -> int:
        return int(np.shape(self.energy)[0])


def labelled_data(
    crystals: Crystals, energy: Any, forces: Any, stress: Any, *, source: str = "training data"
) -> LabelledData:
    """Check and bundle labels (host side).

    Raises:
      InvalidStructureError: an empty set, mismatched shapes, or a non-finite label (naming
        the structure and the field: ``"energy"``, ``"forces"`` or ``"stress"``).
    """
    e = np.asarray(energy, np.float64)
    f = np.asarray(forces, np.float64)
    s = np.asarray(stress, np.float64)
    d = int(crystals.batch_size)
    if d == 0:
        raise InvalidStructureError("no labelled structures", field="energy", source=source)
    n = int(crystals.max_atoms)
    for name, a, shape in (("energy", e, (d,)), ("forces", f, (d, n, 3)), ("stress", s, (d, 3, 3))):
        if a.shape != shape:
            raise InvalidStructureError(
                f"shape {a.shape}, expected {shape}", field=name, source=source
            )
    mask = np.asarray(crystals.mask)
    bad = {
        "energy": ~np.isfinite(e),
        "forces": ~np.all(np.isfinite(np.where(mask[..., None], f, 0.0)), axis=(1, 2)),
        "stress": ~np.all(np.isfinite(s), axis=(1, 2)),
    }
    for name, b in bad.items():
        if b.any():
            k = int(np.nonzero(b)[0][0])
            raise InvalidStructureError(
                f"label is not finite ({int(b.sum())} structure(s) affected)",
                index=k,
                field=name,
                source=source,
            )
    f = np.where(mask[..., None], f, 0.0)
    return LabelledData(crystals, jnp.asarray(e), jnp.asarray(f), jnp.asarray(s))


def _quantize(k: int) -> int:
    """Neighbor capacity on the grid 8, 12, 16, 24, 32, 48, ... (few compiled shapes)."""
    k = max(int(k), 8)
    p = 1 << (k - 1).bit_length()
    return p * 3 // 4 if k <= p * 3 // 4 else p


def _bucket(n: int) -> int:
    """Padded dataset size: 32, 64, 128, 256, ... (a data set that grows by a batch per
    active-learning cycle crosses few of them: one compiled training program per bucket)."""
    return max(32, 1 << max(0, int(n) - 1).bit_length())


def _pad_capacity(nl, k: int):
    pad = k - nl.capacity
    if pad <= 0:
        return nl
    n = nl.index.shape[-2]
    lead = nl.index.shape[:-1]
    self_index = jnp.broadcast_to(jnp.arange(n, dtype=nl.index.dtype)[:, None], (*lead, pad))
    zero_shift = jnp.zeros((*lead, pad, 3), nl.shift.dtype)
    return dataclasses.replace(
        nl,
        index=jnp.concatenate([nl.index, self_index], axis=-1),
        shift=jnp.concatenate([nl.shift, zero_shift], axis=-2),
        mask=jnp.concatenate([nl.mask, jnp.zeros((*lead, pad), bool)], axis=-1),
    )


def _fit_stats(
    z: np.ndarray, m: np.ndarray, energy: np.ndarray, forces: np.ndarray, species: tuple[int, ...]
) -> tuple[np.ndarray, float]:
    """Per-species energies by least squares on the composition, and the force RMS (eV/Å) as
    the network's energy scale (eV), from host arrays: atomic numbers ``z (B, N)``, ``m (B, N)``
    mask, ``energy (B,)`` and ``forces (B, N, 3)``."""
    counts = np.stack([((z == s) & m).sum(axis=1) for s in species], axis=1).astype(np.float64)
    shift, *_ = np.linalg.lstsq(counts, np.asarray(energy, np.float64), rcond=None)
    f = np.asarray(forces, np.float64)[m]
    rms = float(np.sqrt(np.mean(f**2))) if f.size else 1.0
    return shift, max(rms, 1e-3)


def _row_uniform(key: Array, idx: Array) -> Array:
    return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(idx)


@functools.partial(jax.jit, static_argnames=("options", "batch_size", "history_len", "mesh"))
def _fit(keys, net, stats, crystals, neighbors, energy, forces, stress, n, hyper, *, options,
         batch_size, history_len, mesh=None):  # fmt: skip
    """Train every member (leading axis of ``keys``/``net``) in one program; see
    :func:`train_ensemble`. Rows ``>= n`` (traced) are padding. Under ``mesh`` the members are
    split over its devices (:func:`jax.shard_map`; each device trains its own members on the
    whole, replicated dataset, with no communication)."""
    lr0, w_e, w_f, w_s, max_epochs, patience, val_fraction = hyper
    n_pad = energy.shape[0]
    dtype = energy.dtype
    idx = jnp.arange(n_pad)
    valid = idx < n
    n_val = jnp.where(n >= 5, jnp.maximum(1, jnp.floor(val_fraction * n)), 0).astype(jnp.int32)
    n_atoms = jnp.maximum(jnp.sum(crystals.mask, axis=-1), 1).astype(dtype)
    n_batches = -(-n_pad // batch_size)
    slots = jnp.arange(n_batches * batch_size).reshape(n_batches, batch_size)
    plateau = jnp.maximum(patience // 4, 1)
    # the same training-set size for every member (each draws its own split), computed outside
    # the vmap: the minibatch mask stays unbatched, so the padding minibatches are skipped by
    # a real branch instead of computed and discarded by a select
    n_tr = n - n_val
    mask = (slots < n_tr).astype(dtype)

    def losses(p, rows):
        c = crystals.take(rows)
        nl = jax.tree.map(lambda a: a[rows], neighbors)
        e, f, s = _member_results(dict(stats, net=jax.tree.map(lambda a: a[None], p)), c, nl,
                                  options)  # fmt: skip
        e, f, s = e[0], f[0], s[0]
        de = (e - energy[rows]) ** 2
        df = jnp.sum((f - forces[rows]) ** 2, axis=(-2, -1)) / n_atoms[rows]
        ds = jnp.sum((s - stress[rows]) ** 2, axis=(-2, -1)) / 9.0
        return w_e * de + w_f * df + w_s * ds

    def one(key, p):
        key, kperm = jax.random.split(key)
        perm = jnp.argsort(jnp.where(valid, _row_uniform(kperm, idx), 2.0))
        pos = jnp.zeros((n_pad,), jnp.int32).at[perm].set(idx.astype(jnp.int32))
        train_w = valid & (pos >= n_val)
        val_w = jnp.where(n_val > 0, valid & (pos < n_val), valid).astype(dtype)
        opt = optax.inject_hyperparams(optax.adam)(learning_rate=lr0)

        def batch_loss(p, rows, mb):
            return jnp.sum(losses(p, rows) * mb) / jnp.maximum(jnp.sum(mb), 1.0)

        def update(carry, batch):
            p, s = carry
            rows, mb = batch
            loss, g = jax.value_and_grad(batch_loss)(p, rows, mb)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss * jnp.sum(mb)

        def step(carry, batch):
            return jax.lax.cond(
                jnp.any(batch[1] > 0), update, lambda c, _: (c, jnp.zeros((), dtype)), carry, batch
            )

        def epoch(carry):
            p, s, k, e, best_p, best_loss, best_e, h_tr, h_val = carry
            k, ke = jax.random.split(k)
            since = e - best_e
            lr = lr0 * 0.5 ** jnp.floor_divide(since, plateau)
            s.hyperparams["learning_rate"] = lr.astype(s.hyperparams["learning_rate"].dtype)
            order = jnp.argsort(jnp.where(train_w, _row_uniform(ke, idx), 2.0))
            order = jnp.concatenate([order, jnp.zeros((n_batches * batch_size - n_pad,), int)])
            (p, s), tl = jax.lax.scan(step, (p, s), (order.reshape(n_batches, -1), mask))
            vl = jnp.sum(losses(p, idx) * val_w) / jnp.maximum(jnp.sum(val_w), 1.0)
            better = vl < best_loss
            best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best_p)
            h_tr = h_tr.at[e].set(jnp.sum(tl) / jnp.maximum(n_tr, 1))
            h_val = h_val.at[e].set(vl)
            return (p, s, k, e + 1, best_p, jnp.where(better, vl, best_loss),
                    jnp.where(better, e, best_e), h_tr, h_val)  # fmt: skip

        def cond(carry):
            e, best_e = carry[3], carry[6]
            return (e < max_epochs) & (e - best_e <= patience)

        hist = jnp.full((history_len,), jnp.nan, dtype)
        init = (p, opt.init(p), key, 0, p, jnp.asarray(jnp.inf, dtype), -1, hist, hist)
        out = jax.lax.while_loop(cond, epoch, init)
        return out[4], out[3], out[6], out[7], out[8]

    split = P(parallel.BATCH_AXIS)
    return parallel.per_device(jax.vmap(one), mesh, split, split)(keys, net)


def train_ensemble(
    key: Any,
    data: LabelledData,
    *,
    ensemble: MLFFEnsemble | None = None,
    species: Sequence[int | str] | None = None,
    num_members: int = 5,
    config: MLFFConfig | None = None,
    learning_rate: float = 5e-4,
    batch_size: int = 10,
    max_epochs: int = 200,
    patience: int = 20,
    val_fraction: float = 0.2,
    weights: tuple[float, float, float] = SEED_WEIGHTS,
    outlier_sigma: float = 3.0,
    dtype: Any = jnp.float32,
    mesh: Any = None,
) -> MLFFEnsemble:
    """Train a deep ensemble on oracle labels (one compiled program for all members).

    Every member draws its own validation split (``val_fraction`` of the structures, none
    below 5 structures), initialisation (``fold_in(key, m)``) and minibatch order; each runs
    Adam until ``max_epochs`` or ``patience`` epochs without a better validation loss (the
    learning rate halves every ``patience // 4`` of them) and keeps its best epoch. The loss
    weights ``weights = (ω_E, ω_f, ω_s)`` apply to the squared energy error (eV²), the mean
    squared force error per atom ((eV/Å)²) and the mean squared stress error ((eV/Å³)²).
    Structures whose largest force norm exceeds the mean of the largest force norms by more
    than ``outlier_sigma`` standard deviations are left out (as in the seed).

    The dataset is padded to a power of two (at least 32) and the neighbor capacity to the
    grid 8, 12, 16, 24, 32, 48, ..., and the hyperparameters are traced, so a dataset that grows
    by a few structures per active-learning cycle recompiles only when it crosses a bucket.

    Args:
      key: ``jax.random`` key.
      data: :class:`LabelledData` (:func:`labelled_data`).
      ensemble: warm start: continue from these parameters, keep their ``shift``/``scale``,
        species and architecture (``species``, ``num_members``, ``config`` are then ignored).
      species: elements the ensemble covers (default: those in ``data``).
      num_members: ``M`` for a fresh ensemble.
      config: :class:`MLFFConfig` for a fresh ensemble (default ``MLFFConfig()``).
      learning_rate: Adam's initial step size.
      batch_size: structures per minibatch (the seed's 10).
      max_epochs, patience: epoch limits (early stopping on the validation loss).
      val_fraction: held-out fraction per member.
      weights: ``(ω_E, ω_f, ω_s)``.
      outlier_sigma: force-outlier threshold in standard deviations.
      dtype: float dtype of the training arithmetic (float32: fast; parameters are stored
        in it).
      mesh: a :func:`jaxcsp.parallel.batch_mesh`: the members are split over its devices
        (``M`` a multiple of its size; each device trains its members on the whole dataset,
        with no communication). The same parameters as on one device.

    Returns:
      A trained :class:`MLFFEnsemble` with its :class:`EnsembleHistory`.

    Raises:
      InvalidStructureError: an element outside ``species`` or the warm-start ensemble.
      InvalidArgumentError: a bad hyperparameter, or ``M`` not a multiple of the mesh size.
    """
    check_real("learning_rate", learning_rate)
    batch_size = check_int("batch_size", batch_size)
    max_epochs = check_int("max_epochs", max_epochs)
    patience = check_int("patience", patience, minimum=0)
    check_real("outlier_sigma", outlier_sigma)
    if not 0.0 <= float(val_fraction) < 1.0:
        raise InvalidArgumentError(
            f"val_fraction must be in [0, 1), got {val_fraction!r}",
            argument="val_fraction",
            value=val_fraction,
        )
    for w in weights:
        check_real("weights", w, positive=False)
    present = sorted({int(z) for z in np.unique(np.asarray(data.crystals.species)) if z > 0})
    if ensemble is None:
        config = MLFFConfig() if config is None else config
        sp = tuple(sorted(species_tuple(species) or ())) if species is not None else tuple(present)
        ensemble = init_ensemble(
            jax.random.fold_in(jnp.asarray(key), 7919), sp, num_members=num_members,
            features=config.features, num_interactions=config.num_interactions,
            num_rbf=config.num_rbf, cutoff=config.cutoff,
        )  # fmt: skip
        warm = False
    else:
        warm = True

    check_species(ensemble.potential(), data.crystals, source="training data")

    # host side in numpy from here on: no eager JAX op compiles for a new data size
    cr = data.crystals
    lat, frac = np.asarray(cr.lattice), np.asarray(cr.frac)
    species_a, mask = np.asarray(cr.species), np.asarray(cr.mask)
    energy, forces, stress = (np.asarray(a) for a in (data.energy, data.forces, data.stress))
    # force outliers (largest force per structure) are left out
    fmax = np.sqrt((forces**2).sum(-1)).max(axis=-1, where=mask, initial=0.0)
    keep = np.ones(data.size, bool)
    if data.size >= 5:
        keep = fmax <= fmax.mean() + float(outlier_sigma) * fmax.std()
    sel = np.nonzero(keep)[0]
    n = len(sel)
    size = _bucket(n)
    rows = np.concatenate([sel, np.full(size - n, sel[0])])  # padding repeats a real row
    np_dtype = np.dtype(jnp.dtype(dtype).name)
    c = Crystals(
        lattice=jnp.asarray(lat[rows].astype(np_dtype)),
        frac=jnp.asarray(frac[rows].astype(np_dtype)),
        species=jnp.asarray(species_a[rows]),
        mask=jnp.asarray(mask[rows]),
    )
    e = jnp.asarray(energy[rows].astype(np_dtype))
    f = jnp.asarray(forces[rows].astype(np_dtype))
    s = jnp.asarray(stress[rows].astype(np_dtype))
    params = ensemble.params
    if not warm:
        shift, scale = _fit_stats(
            species_a[sel], mask[sel], energy[sel], forces[sel], ensemble.species
        )
        params = dict(params, shift=jnp.asarray(shift, jnp.float32),
                      scale=jnp.asarray(scale, jnp.float32))  # fmt: skip
    nl = ensemble._neighbors(c)
    stats = {"shift": params["shift"], "scale": params["scale"]}
    net = jax.tree.map(lambda a: a.astype(dtype), params["net"])
    mm = ensemble.num_members
    parallel.check_divisible(mm, mesh, argument="mesh", what="the ensemble's members")
    keys = jax.vmap(lambda i: jax.random.fold_in(jnp.asarray(key), i))(jnp.arange(mm))
    hyper = (
        jnp.asarray(learning_rate, dtype), jnp.asarray(weights[0], dtype),
        jnp.asarray(weights[1], dtype), jnp.asarray(weights[2], dtype),
        jnp.asarray(max_epochs, jnp.int32), jnp.asarray(patience, jnp.int32),
        jnp.asarray(val_fraction, dtype),
    )  # fmt: skip
    history_len = max(256, 1 << max(0, max_epochs - 1).bit_length())
    best, epochs, best_e, h_tr, h_val = _fit(
        keys, net, stats, c, nl, e, f, s, jnp.asarray(n, jnp.int32), hyper,
        options=ensemble.options, batch_size=batch_size, history_len=history_len, mesh=mesh,
    )  # fmt: skip
    n_val = int(max(1, math.floor(val_fraction * n))) if n >= 5 and val_fraction > 0 else 0
    hist = EnsembleHistory(
        train_loss=np.asarray(h_tr)[:, :max_epochs],
        val_loss=np.asarray(h_val)[:, :max_epochs],
        best_epoch=np.asarray(best_e),
        epochs=np.asarray(epochs),
        n_train=n - n_val,
        n_val=n_val,
        excluded=int((~keep).sum()),
    )
    return MLFFEnsemble(
        dict(params, net=best), ensemble.species, ensemble.config, hist, ensemble.compute_dtype
    )


# ---------------------------------------------------------------------- checkpoints


def save_ensemble(path: str | os.PathLike, ensemble: MLFFEnsemble) -> None:
    """Write an ensemble (parameters, species, architecture) to ``path`` as msgpack, atomically
    (temporary file, then rename). Read with :func:`load_ensemble`."""
    state = {
        "format": _FORMAT,
        "version": _VERSION,
        "species": list(ensemble.species),
        "config": dict(ensemble.config._asdict()),
        "params": jax.tree.map(np.asarray, ensemble.params),
    }
    write_msgpack(path, state)


def load_ensemble(path: str | os.PathLike) -> MLFFEnsemble:
    """Read an ensemble written by :func:`save_ensemble`.

    Raises:
      OSError: the file cannot be read.
      JaxcspError: not an ensemble checkpoint of a known version.
    """
    with open(path, "rb") as f:
        raw = f.read()
    state = restore_msgpack(raw, path, fmt=_FORMAT, version=_VERSION, what="ensemble")
    cfg = state["config"]
    config = MLFFConfig(
        int(cfg["features"]), int(cfg["num_interactions"]), int(cfg["num_rbf"]),
        float(cfg["cutoff"]),
    )  # fmt: skip
    params = jax.tree.map(jnp.asarray, state["params"])
    return MLFFEnsemble(params, tuple(int(z) for z in state["species"]), config)
