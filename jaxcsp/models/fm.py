"""Factorization machine (FM) regressor on bit vectors, its QUBO, and one-hot penalties.

A second-order factorization machine over ``M`` bits with ``K`` factors predicts

    y(x) = b + Σ_i h_i x_i + Σ_{i<j} <w_i, w_j> x_i x_j
         = b + h·x + ½ Σ_k [(Σ_i w_ki x_i)² − Σ_i w_ki² x_i²],

the second form costing ``O(K M)`` instead of ``O(K M²)``. ``w_i`` is column ``i`` of the factor
matrix ``W`` of shape ``(K, M)``. Because the prediction is quadratic in ``x``, a trained FM *is*
a QUBO (:func:`fm_to_qubo`), which an annealer minimises (:mod:`jaxcsp.models.anneal`) to
propose the next bit vector of a crystal-structure search.

QUBO convention used throughout :mod:`jaxcsp.models` (``x`` binary, ``x_i ∈ {0, 1}``)::

    E(x) = offset + h·x + xᵀ J x = offset + Σ_i h_i x_i + Σ_{i,j} J_ij x_i x_j

``J`` may be any square matrix: a pair ``i ≠ j`` contributes ``J_ij + J_ji`` and, since
``x_i² = x_i``, the diagonal ``J_ii`` acts as a linear term. :func:`fm_to_qubo` and
:func:`one_hot_penalty` return ``J`` strictly upper triangular (zero diagonal), so
``E = offset + h·x + Σ_{i<j} J_ij x_i x_j`` there; :func:`qubo_energy` evaluates the general form.

Training (:func:`train_fm`) follows the usual recipe for FM surrogates of crystal energies:
energies are standardised to zero mean and unit variance, 10% of the data is held out for
validation, the loss is ``alpha·MSE − beta·PCC`` (Pearson correlation) on each minibatch, Adam
updates the parameters, and training stops early once the validation loss has not improved for
``patience`` epochs, keeping the parameters of the best validation epoch. The whole epoch loop
is one compiled program (``lax.while_loop`` over epochs, ``lax.scan`` over minibatches) whose
hyperparameters are traced values: a second call with the same data shapes compiles nothing.

>>> import jax, numpy as np
>>> x = np.random.default_rng(0).integers(0, 2, (64, 6)).astype(float)
>>> y = x @ np.arange(6.0) + x[:, 0] * x[:, 1]
>>> model = train_fm(jax.random.key(0), x, y, rank=2, max_epochs=20, batch_size=16)
>>> offset, h, J = fm_to_qubo(model)
>>> bool(np.allclose(qubo_energy(offset, h, J, x), model.predict(x), atol=1e-6))
True
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

from jaxcsp.errors import InvalidArgumentError, check_int, check_real
from jaxcsp.models._checkpoint import restore_msgpack, write_msgpack

__all__ = [
    "FMHistory",
    "FMModel",
    "FactorizationMachine",
    "fm_coefficients",
    "fm_to_qubo",
    "load_fm",
    "one_hot_penalty",
    "qubo_energy",
    "save_fm",
    "train_fm",
]

Array = jax.Array

#: standard deviation of the normal initialisation of the factors ``w``
DEFAULT_INIT_SCALE = 0.01
#: per-epoch history buffer length at least (``max_epochs`` up to it share one program)
_MIN_HISTORY = 1024
_FORMAT = "jaxcsp.models.fm"
_VERSION = 1


def _fm_energy(b: Array, h: Array, w: Array, x: Array) -> Array:
    """``b + h·x + ½ Σ_k [(w_k·x)² − (w_k²)·x²]`` for ``x (..., M)``, ``w (K, M)``: ``(...,)``."""
    v = x @ w.T  # (..., K)
    quad = 0.5 * (jnp.sum(v * v, axis=-1) - (x * x) @ jnp.sum(w * w, axis=0))
    return b + x @ h + quad


class FactorizationMachine(nn.Module):
    """Second-order factorization machine ``y(x) = b + h·x + Σ_{i<j} <w_i, w_j> x_i x_j``.

    Evaluated in the ``O(K M)`` form ``b + h·x + ½ Σ_k [(Σ_i w_ki x_i)² − Σ_i w_ki² x_i²]``.

    Parameters (``params`` collection): ``b`` (), ``h`` (M,) and ``w`` (K, M); ``b`` and ``h``
    start at zero, ``w`` from a normal distribution of standard deviation ``init_scale``.

    Attributes:
      num_bits: ``M``, the length of the bit vectors.
      rank: ``K``, the number of factors per bit.
      init_scale: standard deviation of the initial ``w``.
      param_dtype: dtype of the parameters (``None``: JAX's default float dtype).

    Call with ``x`` of shape ``(..., M)`` (float; bits are 0.0 / 1.0, real values are allowed)
    to get ``(...,)`` predictions in the units the parameters were trained in.

    >>> fm = FactorizationMachine(num_bits=5, rank=3)
    >>> variables = fm.init(jax.random.key(0), jnp.zeros((5,)))
    >>> variables["params"]["w"].shape
    (3, 5)
    """

    num_bits: int
    rank: int = 8
    init_scale: float = DEFAULT_INIT_SCALE
    param_dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dtype = self.param_dtype or jnp.zeros(()).dtype
        b = self.param("b", nn.initializers.zeros, (), dtype)
        h = self.param("h", nn.initializers.zeros, (self.num_bits,), dtype)
        w = self.param(
            "w", nn.initializers.normal(self.init_scale), (self.rank, self.num_bits), dtype
        )
        return _fm_energy(b, h, w, jnp.asarray(x, dtype))


@jax.jit
def _apply(params: dict, x: Array) -> Array:
    return _fm_energy(params["b"], params["h"], params["w"], x.astype(params["h"].dtype))


class FMHistory(NamedTuple):
    """Per-epoch record of a :func:`train_fm` run (numpy arrays of length ``epochs``).

    Losses and RMSE are in *standardised* energy units (multiply RMSE by ``FMModel.y_std``
    for original units).

    Attributes:
      train_loss: mean minibatch loss ``alpha·MSE − beta·PCC`` of each epoch.
      val_loss: validation loss after each epoch.
      val_pcc: validation Pearson correlation after each epoch.
      val_rmse: validation RMSE after each epoch (standardised units).
      best_epoch: index of the epoch whose parameters were kept (lowest ``val_loss``).
      epochs: epochs run (early stopping may end before ``max_epochs``).
    """

    train_loss: np.ndarray
    val_loss: np.ndarray
    val_pcc: np.ndarray
    val_rmse: np.ndarray
    best_epoch: int
    epochs: int


@dataclasses.dataclass(frozen=True)
class FMModel:
    """A trained factorization machine and the standardisation of its targets.

    The network predicts standardised energies ``z``; energies in the original units are
    ``y = y_mean + y_std · z``.

    Attributes:
      params: ``{"b": (), "h": (M,), "w": (K, M)}`` JAX arrays, standardised units.
      y_mean: mean of the training energies (original units, e.g. eV).
      y_std: standard deviation of the training energies (original units, > 0).
      rank: ``K``.
      num_bits: ``M``.
      history: the :class:`FMHistory` of the training run, or ``None``.
    """

    params: dict
    y_mean: float
    y_std: float
    rank: int
    num_bits: int
    history: FMHistory | None = None

    def predict(self, x: Any) -> Array:
        """Predicted energies of bit vectors ``x (..., M)`` (0/1, any dtype): ``(...,)`` float,
        in the original units of the training energies."""
        z = _apply(self.params, jnp.asarray(x))
        return self.y_mean + self.y_std * z


def fm_coefficients(model: FMModel) -> tuple[Array, Array, Array]:
    """The FM of ``model`` in original energy units, in factored form.

    Returns:
      ``(offset (), h (M,), W (K, M))`` such that
      ``model.predict(x) = offset + h·x + ½ Σ_k [(W_k·x)² − (W_k²)·x]`` for binary ``x``
      (``W = sqrt(y_std) · w``, ``h = y_std · h``, ``offset = y_mean + y_std · b``). This is
      the input of :func:`jaxcsp.models.anneal.anneal_fm`.
    """
    p = model.params
    s = model.y_std
    return model.y_mean + s * p["b"], s * p["h"], math.sqrt(s) * p["w"]


def fm_to_qubo(model: FMModel | tuple) -> tuple[Array, Array, Array]:
    """Dense QUBO of a factorization machine, in original energy units.

    Args:
      model: an :class:`FMModel`, or its ``(offset, h (M,), W (K, M))`` from
        :func:`fm_coefficients`.

    Returns:
      ``(offset (), h (M,), J (M, M))`` with ``J = triu(WᵀW, 1)`` strictly upper triangular,
      such that ``offset + h·x + xᵀ J x = offset + h·x + Σ_{i<j} J_ij x_i x_j`` equals
      ``model.predict(x)`` for every binary ``x`` (the FM has no ``x_i²`` terms, so nothing
      needs folding into ``h``). Memory: ``M²`` floats.
    """
    offset, h, w = model if isinstance(model, tuple) else fm_coefficients(model)
    w = jnp.asarray(w)
    return jnp.asarray(offset), jnp.asarray(h), jnp.triu(w.T @ w, k=1)


def qubo_energy(offset: Any, h: Any, J: Any, x: Any) -> Array:
    """QUBO energy ``offset + h·x + xᵀ J x`` of bit vectors ``x (..., M)``: ``(...,)`` float.

    ``J (M, M)`` is used as given (no symmetrisation): pairs count ``J_ij + J_ji`` and the
    diagonal counts as linear since ``x_i² = x_i``. Units: those of the coefficients.
    """
    h = jnp.asarray(h)
    x = jnp.asarray(x).astype(h.dtype)
    J = jnp.asarray(J, h.dtype)
    return offset + x @ h + jnp.sum((x @ J) * x, axis=-1)


def _group_arrays(groups: Sequence[Any], num_bits: int | None, *, disjoint: bool):
    """Validate one-hot groups; return ``(list of int arrays, num_bits)``."""
    out = []
    for g, idx in enumerate(groups):
        a = np.asarray(idx)
        if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iu":
            raise InvalidArgumentError(
                f"group {g} must be a non-empty 1-d array of bit indices, got {idx!r}",
                argument="groups",
                value=idx,
            )
        a = a.astype(np.int64)
        if np.unique(a).size != a.size:
            raise InvalidArgumentError(
                f"group {g} repeats a bit index", argument="groups", value=idx
            )
        out.append(a)
    top = max((int(a.max()) for a in out), default=-1) + 1
    if num_bits is None:
        num_bits = top
    lo = min((int(a.min()) for a in out), default=0)
    if lo < 0 or top > num_bits:
        raise InvalidArgumentError(
            f"group bit indices must lie in [0, {num_bits}), got [{lo}, {top - 1}]",
            argument="groups",
            value=None,
        )
    if disjoint and out:
        allidx = np.concatenate(out)
        if np.unique(allidx).size != allidx.size:
            raise InvalidArgumentError(
                "one-hot groups must be disjoint (a bit in at most one group)",
                argument="groups",
                value=None,
            )
    return out, num_bits


def one_hot_penalty(
    groups: Sequence[Any], strength: Any, *, num_bits: int | None = None, dtype: Any = None
) -> tuple[Array, Array, Array]:
    """QUBO of the one-hot penalty ``Σ_g λ_g (Σ_{i∈g} x_i − 1)²``.

    Expanded with ``x_i² = x_i``: ``λ_g (1 − Σ_{i∈g} x_i + 2 Σ_{i<j ∈ g} x_i x_j)``, so exactly
    one bit set in every group costs 0 and any other count ``c`` costs ``λ_g (c − 1)² ≥ λ_g``.

    Args:
      groups: sequence of 1-d integer index arrays (bits of each group; groups may overlap,
        terms add up).
      strength: ``λ``, a scalar or one value per group (energy units; may be traced).
      num_bits: ``M`` (default: the largest index + 1).
      dtype: float dtype of the result (default: JAX's default float dtype).

    Returns:
      ``(offset (), h (M,), J (M, M))`` in the convention of :func:`qubo_energy`, ``J``
      strictly upper triangular.

    >>> off, h, J = one_hot_penalty([[0, 1, 2]], 2.0)
    >>> [float(qubo_energy(off, h, J, jnp.array(x))) for x in ([1, 0, 0], [0, 0, 0], [1, 1, 0])]
    [0.0, 2.0, 2.0]
    """
    arrays, m = _group_arrays(groups, num_bits, disjoint=False)
    dtype = dtype or jnp.zeros(()).dtype
    lam = jnp.broadcast_to(jnp.asarray(strength, dtype), (len(arrays),))
    h = jnp.zeros((m,), dtype)
    J = jnp.zeros((m, m), dtype)
    for g, a in enumerate(arrays):
        h = h.at[a].add(-lam[g])
        i, j = np.triu_indices(a.size, k=1)
        lo, hi = np.minimum(a[i], a[j]), np.maximum(a[i], a[j])
        J = J.at[lo, hi].add(2.0 * lam[g])
    return jnp.sum(lam), h, J


# ----------------------------------------------------------------------------- training


def _weighted_metrics(pred: Array, z: Array, m: Array) -> tuple[Array, Array]:
    """Weighted MSE and Pearson correlation of ``pred`` vs ``z`` with weights ``m`` (0/1)."""
    n = jnp.maximum(jnp.sum(m), 1.0)
    mse = jnp.sum(m * (pred - z) ** 2) / n
    dp = pred - jnp.sum(m * pred) / n
    dz = z - jnp.sum(m * z) / n
    cov = jnp.sum(m * dp * dz)
    var = jnp.sum(m * dp * dp) * jnp.sum(m * dz * dz)
    pcc = cov / jnp.sqrt(var + 1e-30)
    return mse, pcc


def _bucket(n: int) -> int:
    """Padded sample count for ``n`` samples: 128, 192, 256, 384, 512, 768, 1024, ... (≤ 1.5×).

    Training data that grows by a few samples per search iteration keeps one compiled program
    per bucket instead of one per size.
    """
    size = 128
    while size < n:
        size = size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3
    return size


def _row_uniform(key: Array, idx: Array) -> Array:
    """One uniform number per row index, independent of how many rows there are (padding)."""
    return jax.vmap(lambda i: jax.random.uniform(jax.random.fold_in(key, i)))(idx)


@functools.partial(jax.jit, static_argnames=("batch_size", "history_len"))
def _fit(key, x, z, n, n_val, params, hyper, *, batch_size, history_len):
    """The whole training run as one program; see :func:`train_fm`.

    ``x (P, M)`` and ``z (P,)`` are padded to ``P`` rows; the first ``n`` (traced) are data, of
    which a random ``n_val`` (traced; 0: validate on the training set) are held out.
    """
    alpha, beta, lr, wd, max_epochs, patience = hyper
    n_pad = x.shape[0]
    dtype = params["h"].dtype
    idx = jnp.arange(n_pad)
    valid = idx < n
    key, kperm = jax.random.split(key)
    # a random order of the data rows, padding last; its first n_val rows are the validation set
    perm = jnp.argsort(jnp.where(valid, _row_uniform(kperm, idx), 2.0))
    pos = jnp.zeros((n_pad,), jnp.int32).at[perm].set(idx.astype(jnp.int32))
    held = n_val > 0
    train_w = valid & jnp.where(held, pos >= n_val, True)
    val_w = jnp.where(held, valid & (pos < n_val), valid).astype(dtype)
    n_tr = jnp.where(held, n - n_val, n)
    n_batches = -(-n_pad // batch_size)
    slots = jnp.arange(n_batches * batch_size).reshape(n_batches, batch_size)
    mask = (slots < n_tr).astype(dtype)

    opt = optax.chain(optax.add_decayed_weights(wd), optax.adam(lr))

    def loss_fn(p, xb, zb, mb):
        mse, pcc = _weighted_metrics(_fm_energy(p["b"], p["h"], p["w"], xb), zb, mb)
        return alpha * mse - beta * pcc

    def update(carry, batch):
        p, s = carry
        idx_b, mb = batch
        loss, g = jax.value_and_grad(loss_fn)(p, x[idx_b], z[idx_b], mb)
        updates, s = opt.update(g, s, p)
        return (optax.apply_updates(p, updates), s), loss * jnp.sum(mb)

    def step(carry, batch):
        # batches past the data (padding only) leave parameters and Adam's moments untouched
        return jax.lax.cond(
            jnp.any(batch[1] > 0),
            update,
            lambda c, _: (c, jnp.zeros((), dtype)),
            carry,
            batch,
        )

    def epoch(carry):
        p, s, k, e, best_p, best_loss, best_e, hist = carry
        k, ke = jax.random.split(k)
        # the training rows in a random order, then the rest (masked out)
        order = jnp.argsort(jnp.where(train_w, _row_uniform(ke, idx), 2.0))
        order = jnp.concatenate([order, jnp.zeros((n_batches * batch_size - n_pad,), int)])
        (p, s), losses = jax.lax.scan(step, (p, s), (order.reshape(n_batches, -1), mask))
        mse, pcc = _weighted_metrics(_fm_energy(p["b"], p["h"], p["w"], x), z, val_w)
        vloss = alpha * mse - beta * pcc
        better = vloss < best_loss
        best_p = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best_p)
        row = jnp.stack([jnp.sum(losses) / n_tr, vloss, pcc, jnp.sqrt(mse)])
        hist = hist.at[e].set(row.astype(dtype))
        return (
            p,
            s,
            k,
            e + 1,
            best_p,
            jnp.where(better, vloss, best_loss),
            jnp.where(better, e, best_e),
            hist,
        )

    def cond(carry):
        e, best_e = carry[3], carry[6]
        return (e < max_epochs) & (e - best_e <= patience)

    hist = jnp.full((history_len, 4), jnp.nan, dtype)
    init = (params, opt.init(params), key, 0, params, jnp.asarray(jnp.inf, dtype), -1, hist)
    # an epoch with no improvement yet counts from epoch -1
    out = jax.lax.while_loop(cond, epoch, init)
    return out[4], out[3], out[6], out[7]


def _rescaled(model: FMModel, mean: float, std: float, dtype) -> dict:
    """``model``'s parameters re-expressed for targets standardised with ``mean``/``std``."""
    p = model.params
    r = model.y_std / std
    return {
        "b": jnp.asarray((model.y_mean + model.y_std * np.asarray(p["b"]) - mean) / std, dtype),
        "h": jnp.asarray(np.asarray(p["h"]) * r, dtype),
        "w": jnp.asarray(np.asarray(p["w"]) * math.sqrt(r), dtype),
    }


def train_fm(
    key: Any,
    x: Any,
    y: Any,
    *,
    rank: int = 8,
    alpha: float = 10.0,
    beta: float = 1.0,
    learning_rate: float = 1e-2,
    weight_decay: float = 0.0,
    max_epochs: int = 500,
    batch_size: int = 100,
    patience: int | None = None,
    val_fraction: float = 0.1,
    params: FMModel | dict | None = None,
    init_scale: float = DEFAULT_INIT_SCALE,
    dtype: Any = None,
) -> FMModel:
    """Fit a factorization machine to energies of bit vectors.

    Energies are standardised (``z = (y − mean) / std``), a random ``val_fraction`` of the
    samples is held out, and Adam minimises ``alpha·MSE(z_pred, z) − beta·PCC(z_pred, z)`` on
    shuffled minibatches (the last one of an epoch may be partial: weighted, not dropped). PCC is
    the signed Pearson correlation of the minibatch (rewarding ``|PCC|`` would also reward
    anti-correlated fits). After every epoch the validation loss is computed; training stops
    after ``max_epochs`` or once ``patience`` epochs in a row brought no improvement, and the
    parameters of the best validation epoch are returned.

    One compiled program runs the whole fit; ``alpha``, ``beta``, ``learning_rate``,
    ``weight_decay``, ``max_epochs`` and ``patience`` are traced and the samples are padded to
    a size bucket (128, 192, 256, 384, 512, ..., at most 1.5× the data; padding is masked out of
    every loss, split and minibatch), so calling again with as many bits ``M``, ``batch_size``
    unchanged, ``N`` in the same bucket and ``max_epochs`` at most 1024 (or in the same
    power-of-two bucket above) compiles nothing: a search whose data grows every iteration
    compiles once per bucket.

    Args:
      key: ``jax.random`` key (initialisation, split and minibatch order).
      x: ``(N, M)`` bit vectors (0/1; any real dtype).
      y: ``(N,)`` energies (any units, e.g. eV or eV/atom).
      rank: ``K`` (ignored when ``params`` is given: taken from it).
      alpha: weight of the MSE term.
      beta: weight of the PCC term.
      learning_rate: Adam's step size (constant).
      weight_decay: L2 coefficient added to the gradient (PyTorch-Adam style), ``>= 0``.
      max_epochs: upper bound on epochs.
      batch_size: minibatch size (a training set smaller than it is one weighted partial batch).
      patience: epochs without validation improvement before stopping (default:
        ``max_epochs // 2``).
      val_fraction: fraction of samples held out for validation and early stopping, in
        ``[0, 1)``; with ``0`` the training set itself is used.
      params: warm start: an :class:`FMModel` (its parameters are re-expressed exactly for the
        new standardisation, so it predicts the same energies before training) or a raw
        ``{"b", "h", "w"}`` dict in standardised units of *this* data.
      init_scale: standard deviation of the initial ``w`` when not warm-starting.
      dtype: parameter dtype (default: JAX's default float dtype).

    Returns:
      :class:`FMModel` with the best-validation parameters, the standardisation and the
      :class:`FMHistory`.
    """
    x = np.asarray(x)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] < 2:
        raise InvalidArgumentError(
            f"x must be (N, M) and y (N,) with N >= 2, got {x.shape} and {y.shape}",
            argument="x",
            value=None,
        )
    n, m = x.shape
    max_epochs = check_int("max_epochs", max_epochs)
    batch_size = check_int("batch_size", batch_size)
    patience = max(1, max_epochs // 2) if patience is None else check_int("patience", patience)
    check_real("learning_rate", learning_rate)
    for name, v in (("alpha", alpha), ("beta", beta), ("weight_decay", weight_decay)):
        check_real(name, v, positive=False)
        if v < 0:
            raise InvalidArgumentError(f"{name} must be >= 0, got {v}", argument=name, value=v)
    if not 0.0 <= val_fraction < 1.0:
        raise InvalidArgumentError(
            f"val_fraction must be in [0, 1), got {val_fraction}",
            argument="val_fraction",
            value=val_fraction,
        )
    n_val = min(round(val_fraction * n), n - 1) if val_fraction > 0 else 0
    n_val = max(n_val, 1) if val_fraction > 0 else 0
    dtype = jnp.dtype(dtype or jnp.zeros(()).dtype)
    mean = float(y.mean())
    std = float(y.std())
    std = std if std > 0 else 1.0
    z = (y - mean) / std

    if params is None:
        rank = check_int("rank", rank)
        kinit, key = jax.random.split(key)
        fm = FactorizationMachine(m, rank, init_scale, dtype)
        p0 = fm.init(kinit, jnp.zeros((m,), dtype))["params"]
    else:
        p0 = _rescaled(params, mean, std, dtype) if isinstance(params, FMModel) else params
        p0 = {k: jnp.asarray(p0[k], dtype) for k in ("b", "h", "w")}
        if p0["h"].shape != (m,) or p0["w"].ndim != 2 or p0["w"].shape[1] != m:
            raise InvalidArgumentError(
                f"warm-start parameters do not fit {m} bits: h {p0['h'].shape}, w {p0['w'].shape}",
                argument="params",
                value=None,
            )
        rank = p0["w"].shape[0]
    p0 = dict(p0)
    history_len = max(_MIN_HISTORY, 1 << (max_epochs - 1).bit_length())
    floats = (alpha, beta, learning_rate, weight_decay)
    ints = (max_epochs, patience)
    hyper = (*(jnp.asarray(v, dtype) for v in floats), *(jnp.asarray(v, jnp.int32) for v in ints))
    n_pad = _bucket(n)
    x_pad = np.zeros((n_pad, m), dtype)
    x_pad[:n] = x
    z_pad = np.zeros(n_pad, dtype)
    z_pad[:n] = z
    best, epochs, best_epoch, hist = _fit(
        key,
        jnp.asarray(x_pad),
        jnp.asarray(z_pad),
        jnp.asarray(n, jnp.int32),
        jnp.asarray(n_val, jnp.int32),
        p0,
        hyper,
        batch_size=min(batch_size, n_pad),
        history_len=history_len,
    )
    epochs = int(epochs)
    hist = np.asarray(hist)[:epochs]
    history = FMHistory(hist[:, 0], hist[:, 1], hist[:, 2], hist[:, 3], int(best_epoch), epochs)
    return FMModel(dict(best), mean, std, int(rank), int(m), history)


# -------------------------------------------------------------------------- checkpoints


def save_fm(path: str | os.PathLike, model: FMModel) -> None:
    """Write ``model`` (parameters, standardisation, history) to ``path`` as msgpack.

    Uses :func:`flax.serialization.msgpack_serialize`; the file is written to a temporary
    name and renamed, so a crash never leaves half a checkpoint. Read with :func:`load_fm`.
    """
    state: dict[str, Any] = {
        "format": _FORMAT,
        "version": _VERSION,
        "num_bits": int(model.num_bits),
        "rank": int(model.rank),
        "y_mean": float(model.y_mean),
        "y_std": float(model.y_std),
        "params": {k: np.asarray(v) for k, v in model.params.items()},
    }
    if model.history is not None:
        hist = model.history._asdict()
        state["history"] = {
            k: (np.asarray(v) if isinstance(v, np.ndarray) else int(v)) for k, v in hist.items()
        }
    write_msgpack(path, state)


def load_fm(path: str | os.PathLike) -> FMModel:
    """Read a model written by :func:`save_fm`.

    Raises:
      OSError: the file cannot be read.
      JaxcspError: the file is not an FM checkpoint of a known version.
    """
    with open(path, "rb") as f:
        data = f.read()
    state = restore_msgpack(data, path, fmt=_FORMAT, version=_VERSION, what="FM")
    params = {k: jnp.asarray(v) for k, v in state["params"].items()}
    history = None
    if "history" in state:
        hd = state["history"]
        history = FMHistory(
            train_loss=np.asarray(hd["train_loss"]),
            val_loss=np.asarray(hd["val_loss"]),
            val_pcc=np.asarray(hd["val_pcc"]),
            val_rmse=np.asarray(hd["val_rmse"]),
            best_epoch=int(hd["best_epoch"]),
            epochs=int(hd["epochs"]),
        )
    return FMModel(
        params,
        float(state["y_mean"]),
        float(state["y_std"]),
        int(state["rank"]),
        int(state["num_bits"]),
        history,
    )
