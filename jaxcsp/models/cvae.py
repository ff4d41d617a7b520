"""A symmetry-conditioned variational autoencoder of crystals' free variables (Flax linen).

Each crystal is a :class:`~jaxcsp.symmetry.WyckoffCrystals` row: its *condition*
``C = (space group, Wyckoff positions of up to 8 sites)`` and its continuous *columns*
``X = (a, b, c [Å], alpha, beta, gamma [degrees], x1, y1, z1, ..., x8, y8, z8 [fractional])``,
of which only the crystal's free variables count (``mask``; tied cell entries, coordinates
fixed by the Wyckoff position and empty site slots are masked out of every loss and ignored
when decoding, since :func:`~jaxcsp.symmetry.reconstruct` ignores them).

* Columns pass through a :class:`~jaxcsp.models.gmm.GMMTransform` (mode one-hot + residual);
  the condition is a one-hot ``U`` (230 space groups + 8 slots x 28 Wyckoff indices / empty).
* :class:`CVAE`: encoder ``(X~, U) -> (mu, log sigma^2)`` (Sohn et al.'s ``q(z | x, c)``);
  the condition through an MLP to a 128-d embedding ``e_c``; decoder ``(z, e_c) -> (mode
  logits, residuals)``. With ``conditional=False`` it is the plain VAE baseline: the same
  encoder, but the decoder has no condition input and reconstructs ``U`` as well.
* Loss per crystal: ``loss_factor * (cross-entropy of the modes + Gaussian NLL of the
  residuals [+ cross-entropy of U]) + kl_weight * KL(q(z|x) || N(0, 1))`` (TVAE's
  ``loss_factor=2`` and learned residual scales; ``kl_weight=0.1``, see :func:`train_cvae`).
* :func:`train_cvae` (optax AdamW, deterministic given ``seed``, best-on-validation parameters,
  resumable msgpack checkpoints) returns a :class:`CVAEModel`, whose :meth:`~CVAEModel.decode`
  maps latents back to crystals, exactly (argmax modes) or differentiably (``soft=True``, a
  softmax over modes, for latent-space refinement under ``jax.grad``).

Conditions are checked against those seen in training: a space group or a (space group,
Wyckoff position) pair the model never saw raises :class:`UnknownConditionError`, naming the
crystal and field.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcsp.errors import (
    InvalidArgumentError,
    InvalidStructureError,
    JaxcspError,
    StructureFileError,
    check_int,
    check_real,
)
from jaxcsp.models._checkpoint import restore_msgpack, write_msgpack
from jaxcsp.models.gmm import GMMTransform, fit_gmm_transform
from jaxcsp.symmetry import validate_free_variables

__all__ = [
    "CVAE",
    "MAX_SLOTS",
    "SHIPPED_CVAE",
    "CVAEHistory",
    "CVAEModel",
    "UnknownConditionError",
    "condition_vector",
    "crystal_columns",
    "load_cvae",
    "save_cvae",
    "shipped_cvae",
    "train_cvae",
]

Array = jax.Array

#: Wyckoff-site slots of the tabular representation (the seed's 8)
MAX_SLOTS = 8
#: one-hot width of a slot: 27 Wyckoff positions at most (Pmmm) + "empty"
SLOT_WIDTH = 28
#: continuous columns: 6 cell parameters + 3 coordinates per slot
NUM_COLUMNS = 6 + 3 * MAX_SLOTS
CONDITION_DIM = 230 + MAX_SLOTS * SLOT_WIDTH
#: decoded cells are clamped to PyXtal's box: lengths 1.5–50 Å, angles 30–150 degrees
CELL_LO = (1.5, 1.5, 1.5, 30.0, 30.0, 30.0)
CELL_HI = (50.0, 50.0, 50.0, 150.0, 150.0, 150.0)

_FORMAT = "jaxcsp-cvae"
_VERSION = 1


class UnknownConditionError(InvalidStructureError):
    """A crystal's condition (space group, Wyckoff position) was never seen in training."""


# ----------------------------------------------------------------------------- data


def _pad_slots(a: Any, fill: Any) -> np.ndarray:
    a = np.asarray(a)
    s = a.shape[1]
    if s > MAX_SLOTS:
        return a
    pad = [(0, 0), (0, MAX_SLOTS - s)] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad, constant_values=fill)


def _check_slots(wc: Any) -> None:
    n = np.asarray(wc.num_sites)
    if wc.max_sites > MAX_SLOTS and np.any(n > MAX_SLOTS):
        i = int(np.argmax(n > MAX_SLOTS))
        raise InvalidStructureError(
            f"{int(n[i])} Wyckoff sites do not fit the model's {MAX_SLOTS} slots",
            index=i,
            field="wyckoff",
        )


def _slots(a: Any, fill: Any) -> np.ndarray:
    a = _pad_slots(a, fill)
    return a[:, :MAX_SLOTS]


def crystal_columns(wc: Any) -> tuple[np.ndarray, np.ndarray]:
    """The model's continuous columns of a batch and which of them are free variables.

    Args:
      wc: :class:`~jaxcsp.symmetry.WyckoffCrystals` with at most 8 real sites per crystal.

    Returns:
      ``(values (B, 30) float64, mask (B, 30) bool)``: ``a, b, c`` (Å), ``alpha, beta, gamma``
      (degrees), then ``x, y, z`` of slots 1–8 (fractional, wrapped into [0, 1)).

    Raises:
      InvalidStructureError: a crystal with more than 8 sites (field ``"wyckoff"``) or
        non-finite free variables (fields ``"cell"`` / ``"coords"``).
    """
    _check_slots(wc)
    validate_free_variables(wc)
    cell = np.asarray(wc.cell, np.float64)
    xyz = _slots(np.asarray(wc.coords, np.float64), 0.0)
    xyz = xyz - np.floor(xyz)
    free = _slots(np.asarray(wc.coords_free) & np.asarray(wc.site_mask)[..., None], False)
    values = np.concatenate([cell, xyz.reshape(len(cell), -1)], axis=1)
    mask = np.concatenate([np.asarray(wc.cell_free), free.reshape(len(cell), -1)], axis=1)
    return values, mask


def condition_vector(spg: Any, wyckoff: Any) -> Array:
    """One-hot condition ``U`` of space groups and Wyckoff slots, ``(B, 454)``.

    Args:
      spg: ``(B,)`` space groups 1..230.
      wyckoff: ``(B, S)`` PyXtal Wyckoff indices, -1 for empty slots (``S <= 8``; padded).

    Returns:
      ``(B, 230 + 8 * 28)`` float array: the space group's one-hot, then per slot the one-hot of
      ``index + 1`` (0 = empty).
    """
    spg = jnp.asarray(spg, jnp.int32)
    wy = jnp.asarray(wyckoff, jnp.int32)
    if wy.shape[1] < MAX_SLOTS:
        wy = jnp.pad(wy, ((0, 0), (0, MAX_SLOTS - wy.shape[1])), constant_values=-1)
    wy = wy[:, :MAX_SLOTS]
    g = jax.nn.one_hot(spg - 1, 230)
    s = jax.nn.one_hot(jnp.maximum(wy + 1, 0), SLOT_WIDTH).reshape(len(spg), -1)
    return jnp.concatenate([g, s], axis=1)


# ----------------------------------------------------------------------------- modules


class _MLP(nn.Module):
    features: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for i, f in enumerate(self.features):
            x = nn.Dense(f)(x)
            if i < len(self.features) - 1:
                x = nn.relu(x)
        return x


class CVAE(nn.Module):
    """Conditional VAE over GMM-transformed columns (or the plain VAE with ``conditional=False``).

    Attributes:
      num_columns, num_modes: ``C`` and ``K`` of the :class:`~jaxcsp.models.gmm.GMMTransform`.
      condition_dim: width of the condition one-hot ``U``.
      latent_dim: ``z`` dimension.
      hidden: encoder widths (the decoder uses them reversed).
      embed_dim: condition embedding width (the seed's 128).
      conditional: CVAE (True) or plain VAE (False).
    """

    num_columns: int
    num_modes: int
    condition_dim: int = CONDITION_DIM
    latent_dim: int = 32
    hidden: tuple[int, ...] = (256, 256)
    embed_dim: int = 128
    conditional: bool = True

    def setup(self):
        self.encoder = _MLP((*self.hidden, 2 * self.latent_dim))
        if self.conditional:
            self.embed = _MLP((self.embed_dim, self.embed_dim))
        out = self.num_columns * (self.num_modes + 1)
        if not self.conditional:
            out += self.condition_dim
        self.decoder = _MLP((*reversed(self.hidden), out))
        self.log_sigma = self.param(
            "log_sigma", nn.initializers.constant(np.log(0.1)), (self.num_columns,)
        )

    def encode(self, features: Array, condition: Array) -> tuple[Array, Array]:
        """``(B, C (K + 1))``, ``(B, D)`` → ``mu, log sigma^2``, each ``(B, L)``."""
        out = self.encoder(jnp.concatenate([features, condition], -1))
        mu, logvar = jnp.split(out, 2, axis=-1)
        return mu, jnp.clip(logvar, -12.0, 8.0)

    def decode(self, z: Array, condition: Array) -> tuple[Array, Array, Array | None]:
        """``z (B, L)`` → ``(mode logits (B, C, K), residuals (B, C) in (-1, 1), U logits)``.

        The last item is ``None`` for the CVAE and ``(B, D)`` logits of the condition for the
        plain VAE.
        """
        h = jnp.concatenate([z, self.embed(condition)], -1) if self.conditional else z
        out = self.decoder(h)
        c, k = self.num_columns, self.num_modes
        cols = out[..., : c * (k + 1)].reshape(*out.shape[:-1], c, k + 1)
        cond = None if self.conditional else out[..., c * (k + 1) :]
        return cols[..., :k], jnp.tanh(cols[..., k]), cond

    def __call__(self, features: Array, condition: Array, key: Array):
        """Encode, sample ``z`` by reparameterisation, decode; returns ``(decoded, mu, logvar)``."""
        mu, logvar = self.encode(features, condition)
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
        return self.decode(z, condition), mu, logvar


def _cond_ce(logits: Array, condition: Array) -> Array:
    g = jax.nn.log_softmax(logits[..., :230])
    ce = -jnp.sum(g * condition[..., :230], -1)
    s = logits[..., 230:].reshape(*logits.shape[:-1], MAX_SLOTS, SLOT_WIDTH)
    t = condition[..., 230:].reshape(s.shape)
    return ce - jnp.sum(jax.nn.log_softmax(s) * t, axis=(-1, -2))


def _loss_terms(module, params, transform, batch, key, kl_weight, loss_factor):
    """Per-crystal (loss, reconstruction, KL), each ``(B,)``."""
    feats, cond, modes, resid, mask = batch
    (logits, r_hat, c_logits), mu, logvar = module.apply(params, feats, cond, key)
    logits = jnp.where(transform.active, logits, -1e9)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, modes[..., None], axis=-1)[..., 0]
    log_sigma = params["params"]["log_sigma"]
    nll = 0.5 * ((resid - r_hat) * jnp.exp(-log_sigma)) ** 2 + log_sigma
    rec = jnp.sum(jnp.where(mask, ce + nll, 0.0), axis=-1)
    if c_logits is not None:
        rec = rec + _cond_ce(c_logits, cond)
    kl = -0.5 * jnp.sum(1.0 + logvar - mu**2 - jnp.exp(logvar), axis=-1)
    return loss_factor * rec + kl_weight * kl, rec, kl


# ----------------------------------------------------------------------------- model


@dataclasses.dataclass(frozen=True)
class CVAEHistory:
    """Training curves: ``train_loss``, ``val_loss`` ``(epochs,)`` per-crystal mean losses;
    ``validation``: the held-out row indices of the training data (empty if none)."""

    train_loss: np.ndarray
    val_loss: np.ndarray
    best_epoch: int
    seconds: float
    validation: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, int))


@dataclasses.dataclass(frozen=True)
class CVAEModel:
    """A trained (C)VAE with its GMM transform and the conditions it has seen.

    Attributes:
      module: the :class:`CVAE` (configuration).
      params: Flax parameters.
      transform: :class:`~jaxcsp.models.gmm.GMMTransform` of the columns.
      seen: ``(P, 2) int32`` (space group, Wyckoff index) pairs present in training.
      species: atomic number of the sites the model generates (the training data's element).
      history: :class:`CVAEHistory` or ``None``.
    """

    module: CVAE
    params: Any
    transform: GMMTransform
    seen: np.ndarray
    species: int
    history: CVAEHistory | None = None

    @property
    def conditional(self) -> bool:
        """True for the CVAE, False for the plain VAE baseline."""
        return bool(self.module.conditional)

    @property
    def latent_dim(self) -> int:
        """``L``."""
        return int(self.module.latent_dim)

    def check_conditions(self, wc: Any) -> None:
        """Raise :class:`UnknownConditionError` for a space group or (space group, Wyckoff)
        pair absent from training (naming the crystal, field ``"spg"`` or ``"wyckoff"``)."""
        _check_slots(wc)
        spg = np.asarray(wc.spg)
        wy = np.asarray(wc.wyckoff)
        mask = np.asarray(wc.site_mask)
        seen_g = set(self.seen[:, 0].tolist())
        seen = {(int(g), int(w)) for g, w in self.seen}
        for i in range(len(spg)):
            if int(spg[i]) not in seen_g:
                raise UnknownConditionError(
                    f"space group {int(spg[i])} never appeared in the model's training data",
                    index=i,
                    field="spg",
                )
            for j in np.flatnonzero(mask[i]):
                if (int(spg[i]), int(wy[i, j])) not in seen:
                    raise UnknownConditionError(
                        f"Wyckoff position {int(wy[i, j])} of space group {int(spg[i])} "
                        "never appeared in the model's training data",
                        index=i,
                        field="wyckoff",
                    )

    def inputs(self, wc: Any) -> tuple[Array, Array]:
        """Encoder inputs of a batch: ``(features (B, C (K + 1)), condition (B, 454))``."""
        values, mask = crystal_columns(wc)
        feats = self.transform.features(values, mask)
        return feats, condition_vector(wc.spg, _slots(np.asarray(wc.wyckoff), -1))

    def encode(self, wc: Any) -> tuple[Array, Array]:
        """Posterior ``mu, log sigma^2`` ``(B, L)`` of each crystal (conditions checked)."""
        self.check_conditions(wc)
        feats, cond = self.inputs(wc)
        return _encode(self.module, self.params, feats, cond)

    def decode(self, z: Any, wc: Any, *, soft: bool = False) -> Any:
        """Crystals decoded from latents under the conditions (and site species) of ``wc``.

        Pure ``jnp`` apart from the host condition check, so ``soft=True`` is differentiable
        in ``z`` (use :func:`decode_columns` inside ``jit``).

        Args:
          z: ``(B, L)`` latents.
          wc: :class:`~jaxcsp.symmetry.WyckoffCrystals` templates (their free variables are
            replaced).
          soft: relaxed decoding (softmax over modes) instead of the argmax mode.

        Returns:
          :class:`~jaxcsp.symmetry.WyckoffCrystals`; cells clamped to 1.5–50 Å, 30–150°.
        """
        if not isinstance(z, jax.core.Tracer):
            self.check_conditions(wc)
        cond = condition_vector(wc.spg, _slots(np.asarray(wc.wyckoff), -1))
        return apply_columns(
            wc, decode_columns(self.module, self.params, self.transform, z, cond, soft=soft)
        )

    def reconstruction(self, wc: Any) -> dict[str, np.ndarray]:
        """How well the model reconstructs crystals through ``z = mu(x, c)`` (no sampling).

        Returns:
          dict of ``(B,)`` arrays: ``nll`` (negative log-likelihood of the continuous columns:
          mode cross-entropy + Gaussian NLL of the residuals over the free variables, nats;
          the plain VAE's reconstruction of ``U`` is not included, so both models compare),
          ``cell_mae`` (mean |error| of the free lengths, Å), ``angle_mae`` (free angles,
          degrees; NaN where none is free) and ``coord_mae`` (free fractional coordinates,
          periodic distance; NaN where none is free).
        """
        values, mask = crystal_columns(wc)
        feats, cond = self.inputs(wc)
        self.check_conditions(wc)
        modes, resid = self.transform.encode(values, mask)
        nll, dec = _reconstruction(
            self.module, self.params, self.transform, feats, cond, modes, resid, jnp.asarray(mask)
        )
        dec = np.asarray(dec, np.float64)
        err = np.abs(dec - values)
        err[:, 6:] = np.minimum(err[:, 6:] % 1.0, 1.0 - err[:, 6:] % 1.0)

        def mae(cols):
            m = mask[:, cols]
            with np.errstate(invalid="ignore"):
                return np.where(m.any(1), (err[:, cols] * m).sum(1) / m.sum(1), np.nan)

        return {
            "nll": np.asarray(nll),
            "cell_mae": mae(slice(0, 3)),
            "angle_mae": mae(slice(3, 6)),
            "coord_mae": mae(slice(6, None)),
        }

    def sample(self, key: Any, wc: Any, *, temperature: float = 1.0) -> Any:
        """New crystals under the conditions of ``wc``: ``z ~ N(0, temperature^2 I)``, decoded."""
        z = temperature * jax.random.normal(key, (wc.batch_size, self.latent_dim))
        return self.decode(z.astype(self.transform.means.dtype), wc)


@functools.partial(jax.jit, static_argnums=(0,))
def _encode(module, params, feats, cond):
    return module.apply(params, feats, cond, method=CVAE.encode)


@functools.partial(jax.jit, static_argnums=(0,))
def _reconstruction(module, params, transform, feats, cond, modes, resid, mask):
    mu, _ = module.apply(params, feats, cond, method=CVAE.encode)
    logits, r_hat, _ = module.apply(params, mu, cond, method=CVAE.decode)
    logits = jnp.where(transform.active, logits, -1e9)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), modes[..., None], axis=-1)[..., 0]
    log_sigma = params["params"]["log_sigma"]
    nll = 0.5 * ((resid - r_hat) * jnp.exp(-log_sigma)) ** 2 + log_sigma + 0.5 * np.log(2 * np.pi)
    dec = transform.decode(jnp.argmax(logits, axis=-1), r_hat)
    return jnp.sum(jnp.where(mask, ce + nll, 0.0), axis=-1), dec


def decode_columns(
    module: CVAE, params: Any, transform: GMMTransform, z: Array, cond: Array, *, soft: bool
) -> Array:
    """Decoder → column values ``(B, 30)`` (Å, degrees, fractional); pure, differentiable."""
    # flax types apply's result as output | (output, variables); without `mutable`: the output
    out: Any = module.apply(params, z, cond, method=CVAE.decode)
    logits, r, _ = out
    if soft:
        return transform.soft_decode(logits, r)
    modes = jnp.argmax(jnp.where(transform.active, logits, -jnp.inf), axis=-1)
    return transform.decode(modes, r)


def apply_columns(wc: Any, values: Array) -> Any:
    """Put column values ``(B, 30)`` into ``wc``'s free variables (cell clamped to the box)."""
    dt = wc.cell.dtype
    cell = jnp.clip(values[:, :6].astype(dt), jnp.asarray(CELL_LO, dt), jnp.asarray(CELL_HI, dt))
    xyz = values[:, 6:].reshape(len(values), MAX_SLOTS, 3).astype(dt)
    s = wc.max_sites
    if s <= MAX_SLOTS:
        xyz = xyz[:, :s]
    else:
        xyz = jnp.concatenate([xyz, wc.coords[:, MAX_SLOTS:]], axis=1)
    return wc.replace(cell=cell, coords=xyz)


# ----------------------------------------------------------------------------- training


def _epoch_fn(module, optimizer, kl_weight, loss_factor):
    def step(carry, batch_idx):
        params, opt_state, key, data, transform = carry
        key, sub = jax.random.split(key)
        batch = jax.tree.map(lambda a: a[batch_idx], data)

        def total(p):
            loss, _, _ = _loss_terms(module, p, transform, batch, sub, kl_weight, loss_factor)
            return jnp.mean(loss)

        loss, grads = jax.value_and_grad(total)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, key, data, transform), loss

    @jax.jit
    def epoch(params, opt_state, key, data, transform, order):
        (params, opt_state, key, _, _), losses = jax.lax.scan(
            step, (params, opt_state, key, data, transform), order
        )
        return params, opt_state, key, jnp.mean(losses)

    @jax.jit
    def evaluate(params, data, transform, key):
        loss, _, _ = _loss_terms(module, params, transform, data, key, kl_weight, loss_factor)
        return jnp.mean(loss)

    return epoch, evaluate


def _prepare(wc: Any, transform: GMMTransform, dtype) -> tuple:
    values, mask = crystal_columns(wc)
    modes, resid = transform.encode(values, mask)
    feats = transform.features(values, mask)
    cond = condition_vector(wc.spg, _slots(np.asarray(wc.wyckoff), -1)).astype(dtype)
    return (feats.astype(dtype), cond, modes, resid.astype(dtype), jnp.asarray(mask))


def train_cvae(
    wc: Any,
    *,
    conditional: bool = True,
    epochs: int = 300,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-5,
    latent_dim: int = 32,
    hidden: Sequence[int] = (256, 256),
    embed_dim: int = 128,
    kl_weight: float = 0.1,
    loss_factor: float = 2.0,
    max_modes: int = 10,
    validation: float = 0.1,
    seed: int = 0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 25,
    progress: bool = True,
) -> CVAEModel:
    """Fit the GMM transform and train a (C)VAE on a batch of crystals of one element.

    Deterministic given ``seed`` (the split, the initialisation, the minibatch order and the
    reparameterisation noise). Minibatches have a fixed size (one compiled epoch program;
    each epoch drops the ``n mod batch_size`` rows its shuffle puts last). The returned
    parameters are those of the epoch with the lowest validation loss.

    Args:
      wc: training :class:`~jaxcsp.symmetry.WyckoffCrystals` (at most 8 sites each, one
        species; e.g. :func:`jaxcsp.datasets.load_carbon_sp2`).
      conditional: CVAE (True) or the plain VAE baseline (False).
      epochs, batch_size, learning_rate, weight_decay: optimisation (optax AdamW).
      latent_dim, hidden, embed_dim: architecture (see :class:`CVAE`).
      kl_weight, loss_factor: loss weights (see the module docstring). ``kl_weight`` 0.1 (a
        beta-VAE) rather than TVAE's 1: at 1 the conditional decoder explains the data from
        the condition and its posterior collapses (held-out NLL on the shipped set: CVAE 14.0
        vs VAE 11.0 nats at 1; 8.1 vs 8.6 at 0.1).
      max_modes: the largest number of GMM modes per column.
      validation: fraction of rows held out for model selection.
      seed: random seed.
      checkpoint: msgpack file written every ``checkpoint_every`` epochs and at the end (the
        training state, so a killed run resumes from it with the same result, and a finished
        one continues when called with more ``epochs``); read back as a model by
        :func:`load_cvae`.
      checkpoint_every: epochs between checkpoint writes.
      progress: show a progress bar (rich).

    Returns:
      :class:`CVAEModel`.

    Raises:
      InvalidArgumentError: bad settings, fewer than 2 training rows, or several species.
      InvalidStructureError: crystals with more than 8 sites or non-finite free variables.
    """
    epochs = check_int("epochs", epochs, minimum=1)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    check_real("learning_rate", learning_rate)
    check_real("validation", validation, positive=False)
    if not 0.0 <= validation < 1.0:
        raise InvalidArgumentError(
            f"validation must be a fraction below 1, got {validation}",
            argument="validation",
            value=validation,
        )
    species = np.unique(np.asarray(wc.site_species)[np.asarray(wc.site_mask)])
    if len(species) != 1:
        raise InvalidArgumentError(
            f"the model generates one element; training data has {species.tolist()}",
            argument="wc",
            value=species.tolist(),
        )
    n = wc.batch_size
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_val = round(validation * n) if validation else 0
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    if len(train_idx) < 2:
        raise InvalidArgumentError(
            f"need at least 2 training rows, got {len(train_idx)}", argument="wc", value=n
        )
    bs = min(batch_size, len(train_idx))
    dtype = wc.cell.dtype
    values, mask = crystal_columns(wc)
    transform = fit_gmm_transform(
        values[train_idx], mask[train_idx], max_modes=max_modes, dtype=dtype
    )
    train = _prepare(wc.take(train_idx), transform, dtype)
    val = _prepare(wc.take(val_idx), transform, dtype) if n_val else None
    module = CVAE(
        num_columns=transform.num_columns,
        num_modes=transform.num_modes,
        latent_dim=int(latent_dim),
        hidden=tuple(int(h) for h in hidden),
        embed_dim=int(embed_dim),
        conditional=bool(conditional),
    )
    key = jax.random.key(seed)
    key, k_init, k_eval = jax.random.split(key, 3)
    params = module.init(k_init, train[0][:1], train[1][:1], k_init)
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)
    opt_state = optimizer.init(params)
    epoch_fn, evaluate = _epoch_fn(module, optimizer, float(kl_weight), float(loss_factor))
    config = dict(  # what a resumed run must share (``epochs`` may grow)
        conditional=bool(conditional),
        batch_size=bs,
        learning_rate=float(learning_rate),
        weight_decay=float(weight_decay),
        latent_dim=int(latent_dim),
        hidden=list(module.hidden),
        embed_dim=int(embed_dim),
        kl_weight=float(kl_weight),
        loss_factor=float(loss_factor),
        max_modes=int(max_modes),
        validation=float(validation),
        seed=int(seed),
        rows=int(n),
        data=_digest(values, mask, np.asarray(wc.spg), np.asarray(wc.wyckoff)),
    )
    state = {
        "params": params,
        "opt_state": opt_state,
        "best": params,
        "best_val": np.inf,
        "best_epoch": -1,
        "epoch": 0,
        "train_loss": np.zeros(0),
        "val_loss": np.zeros(0),
        "key": jax.random.key_data(key),
    }
    if checkpoint is not None and os.path.exists(os.fspath(checkpoint)):
        state = _resume(checkpoint, state, config)
    seen = np.unique(
        np.stack(
            [
                np.repeat(np.asarray(wc.spg)[:, None], wc.max_sites, 1)[np.asarray(wc.site_mask)],
                np.asarray(wc.wyckoff)[np.asarray(wc.site_mask)],
            ],
            axis=1,
        ),
        axis=0,
    ).astype(np.int32)
    t0 = time.perf_counter()
    params, opt_state = state["params"], state["opt_state"]
    best, best_val, best_epoch = state["best"], float(state["best_val"]), int(state["best_epoch"])
    key = jax.random.wrap_key_data(jnp.asarray(state["key"]))
    tl, vl = list(state["train_loss"]), list(state["val_loss"])
    steps = len(train_idx) // bs
    bar = _progress(progress, epochs, int(state["epoch"]))
    try:
        for ep in range(int(state["epoch"]), epochs):
            perm = np.random.default_rng([seed, ep]).permutation(len(train_idx))
            idx = jnp.asarray(perm[: steps * bs].reshape(steps, bs))
            params, opt_state, key, loss = epoch_fn(params, opt_state, key, train, transform, idx)
            tl.append(float(loss))
            v = float(evaluate(params, val, transform, k_eval)) if val is not None else tl[-1]
            if not np.isfinite(v) or not np.isfinite(tl[-1]):
                raise JaxcspError(f"training diverged at epoch {ep} (loss {tl[-1]}, val {v})")
            vl.append(v)
            if v < best_val:
                best, best_val, best_epoch = params, v, ep
            if bar is not None:
                bar[0].update(bar[1], completed=ep + 1, loss=tl[-1], val=v)
            done = ep + 1
            if checkpoint is not None and (done % checkpoint_every == 0 or done == epochs):
                _write_state(
                    checkpoint,
                    config,
                    dict(
                        params=params,
                        opt_state=opt_state,
                        best=best,
                        best_val=best_val,
                        best_epoch=best_epoch,
                        epoch=done,
                        train_loss=np.asarray(tl),
                        val_loss=np.asarray(vl),
                        key=jax.random.key_data(key),
                        validation=val_idx,
                    ),
                    transform,
                    seen,
                    int(species[0]),
                    module,
                )
    finally:
        if bar is not None:
            bar[0].stop()
    history = CVAEHistory(
        np.asarray(tl), np.asarray(vl), best_epoch, time.perf_counter() - t0, val_idx
    )
    return CVAEModel(module, best, transform, seen, int(species[0]), history)


def _digest(*arrays: np.ndarray) -> str:
    import hashlib

    h = hashlib.sha1()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return "sha1:" + h.hexdigest()


def _progress(progress: bool, total: int, start: int):
    if not progress:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    p = Progress(
        TextColumn("train"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs"),
        TextColumn("loss {task.fields[loss]:.3f} val {task.fields[val]:.3f}"),
        TimeRemainingColumn(),
        transient=True,
    )
    p.start()
    task = p.add_task("train", total=total, completed=start, loss=np.nan, val=np.nan)
    return p, task


# ----------------------------------------------------------------------------- checkpoints


def _module_config(module: CVAE) -> dict:
    return dict(
        num_columns=int(module.num_columns),
        num_modes=int(module.num_modes),
        condition_dim=int(module.condition_dim),
        latent_dim=int(module.latent_dim),
        hidden=list(module.hidden),
        embed_dim=int(module.embed_dim),
        conditional=bool(module.conditional),
    )


def _np_tree(tree):
    return jax.tree.map(np.asarray, flax.serialization.to_state_dict(tree))


def _write_state(path, config, train_state, transform, seen, species, module) -> None:
    st = dict(train_state)
    st["params"] = _np_tree(st["params"])
    st["best"] = _np_tree(st["best"])
    st["opt_state"] = _np_tree(st["opt_state"])
    st["key"] = np.asarray(st["key"])
    write_msgpack(
        path,
        {
            "format": _FORMAT,
            "version": _VERSION,
            "config": config,
            "module": _module_config(module),
            "transform": _np_tree(dataclasses.asdict(transform)),
            "seen": np.asarray(seen),
            "species": int(species),
            "train": st,
        },
    )


def _read(path) -> dict:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise StructureFileError(
            f"cannot read CVAE checkpoint ({exc.strerror or exc})", path=os.fspath(path)
        ) from exc
    state = restore_msgpack(data, path, fmt=_FORMAT, version=_VERSION, what="CVAE")
    return state


def _resume(path, state: dict, config: dict) -> dict:
    saved = _read(path)
    if saved["config"] != {k: config[k] for k in saved["config"]} or set(saved["config"]) != set(
        config
    ):
        raise JaxcspError(
            f"{os.fspath(path)}: checkpoint was written by a run with other settings "
            f"({saved['config']}); remove it or pass the same settings"
        )
    tr = saved["train"]
    out = dict(state)
    out["params"] = flax.serialization.from_state_dict(state["params"], tr["params"])
    out["best"] = flax.serialization.from_state_dict(state["params"], tr["best"])
    out["opt_state"] = flax.serialization.from_state_dict(state["opt_state"], tr["opt_state"])
    for k in ("best_val", "best_epoch", "epoch", "train_loss", "val_loss", "key"):
        out[k] = tr[k]
    out["params"] = jax.tree.map(jnp.asarray, out["params"])
    out["best"] = jax.tree.map(jnp.asarray, out["best"])
    out["opt_state"] = jax.tree.map(jnp.asarray, out["opt_state"])
    return out


def save_cvae(path: str | os.PathLike, model: CVAEModel) -> None:
    """Write a trained model (parameters, transform, seen conditions) to ``path`` (msgpack,
    atomically). Read with :func:`load_cvae`."""
    h = model.history
    train = {
        "best": _np_tree(model.params),
        "best_epoch": -1 if h is None else int(h.best_epoch),
        "train_loss": np.zeros(0) if h is None else np.asarray(h.train_loss),
        "val_loss": np.zeros(0) if h is None else np.asarray(h.val_loss),
        "seconds": 0.0 if h is None else float(h.seconds),
        "validation": np.zeros(0, int) if h is None else np.asarray(h.validation),
    }
    write_msgpack(
        path,
        {
            "format": _FORMAT,
            "version": _VERSION,
            "config": {},
            "module": _module_config(model.module),
            "transform": _np_tree(dataclasses.asdict(model.transform)),
            "seen": np.asarray(model.seen),
            "species": int(model.species),
            "train": train,
        },
    )


#: the CVAE shipped with jaxcsp: trained on :func:`jaxcsp.datasets.load_carbon_sp2` by
#: ``jaxcsp train --out carbon_sp2_cvae.msgpack`` (defaults, seed 0, float32)
SHIPPED_CVAE = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "data", "models", "carbon_sp2_cvae.msgpack"
)


def shipped_cvae(*, dtype: Any = None) -> CVAEModel:
    """The conditional VAE shipped with jaxcsp (:data:`SHIPPED_CVAE`), arrays cast to ``dtype``
    (default JAX's default float)."""
    m = load_cvae(SHIPPED_CVAE)
    dt = dtype or jnp.zeros(()).dtype
    cast = functools.partial(jax.tree.map, lambda a: jnp.asarray(a, dt))
    return dataclasses.replace(m, params=cast(m.params), transform=cast(m.transform))


def load_cvae(path: str | os.PathLike) -> CVAEModel:
    """Read a model written by :func:`save_cvae` or a :func:`train_cvae` checkpoint (its best
    parameters so far).

    Raises:
      StructureFileError: the file cannot be read (also an ``OSError``).
      JaxcspError: not a CVAE checkpoint of a known version.
    """
    state = _read(path)
    m = dict(state["module"])
    m["hidden"] = tuple(
        int(h) for h in (m["hidden"].values() if isinstance(m["hidden"], dict) else m["hidden"])
    )
    module = CVAE(**m)
    t = state["transform"]
    transform = GMMTransform(*(jnp.asarray(t[k]) for k in ("means", "stds", "log_weights")))
    tr = state["train"]
    params = jax.tree.map(jnp.asarray, tr["best"])
    history = CVAEHistory(
        np.asarray(tr["train_loss"]),
        np.asarray(tr["val_loss"]),
        int(tr["best_epoch"]),
        float(tr.get("seconds", 0.0)),
        np.asarray(tr.get("validation", np.zeros(0, int))),
    )
    return CVAEModel(
        module, params, transform, np.asarray(state["seen"]), int(state["species"]), history
    )
