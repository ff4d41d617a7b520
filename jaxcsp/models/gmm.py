"""Mode-specific normalisation of continuous columns by 1-D Gaussian mixtures (the "GMM transform").

Crystallographic parameters are strongly multi-modal (lattice lengths cluster by structure type,
free coordinates at 0, 1/6, 1/4, 1/3, ...). Each column ``c`` gets its own mixture with ``K_c``
modes (means ``mu``, standard deviations ``sigma``, weights ``w``), and a value ``x`` is encoded
as the one-hot of its most probable mode ``k`` plus the standardised residual

    r = (x - mu_k) / (4 sigma_k),

the representation of CTGAN/TVAE's "mode-specific normalisation". The inverse
``x = mu_k + 4 sigma_k r`` is exact. A decoder that outputs mode *logits* instead of a one-hot is
decoded with the relaxed inverse :meth:`GMMTransform.soft_decode` (softmax over the modes), which
is differentiable in the logits and the residuals, so gradients flow from a crystal's descriptor
back to a latent vector.

The number of modes per column is chosen from the data by the Bayesian information criterion
over ``K = 1..max_modes`` (:func:`fit_gmm_transform`; plain EM in NumPy, deterministic).

>>> import numpy as np
>>> x = np.concatenate([np.full(50, 0.25), np.random.default_rng(0).normal(3.0, 0.1, 50)])
>>> t = fit_gmm_transform(x[:, None])
>>> modes, r = t.encode(x[:, None])
>>> bool(np.allclose(t.decode(modes, r), x[:, None], atol=1e-12))
True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.errors import InvalidArgumentError

__all__ = ["GMMTransform", "fit_gmm_1d", "fit_gmm_transform"]

Array = jax.Array

#: residual scale in standard deviations (CTGAN's 4 sigma)
RESIDUAL_SCALE = 4.0


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class GMMTransform:
    """Per-column Gaussian mixtures; a registered pytree (pass it through ``jit``).

    Attributes:
      means: ``(C, K)`` mode means in the column's unit (Å, degrees, fractional).
      stds: ``(C, K)`` mode standard deviations (same unit), > 0.
      log_weights: ``(C, K)`` log mixture weights; ``-inf`` for the padding modes of columns
        with fewer than ``K`` modes.
    """

    means: Array
    stds: Array
    log_weights: Array

    @property
    def num_columns(self) -> int:
        """``C``."""
        return int(self.means.shape[0])

    @property
    def num_modes(self) -> int:
        """``K``, the largest number of modes of any column (others are padded)."""
        return int(self.means.shape[1])

    @property
    def active(self) -> Array:
        """``(C, K) bool`` real (non-padding) modes."""
        return jnp.isfinite(self.log_weights)

    def log_posterior(self, x: Any) -> Array:
        """``(n, C, K)`` log posterior of each mode (unnormalised: log w + log N(x; mu, sigma))."""
        x = jnp.asarray(x)[..., None]
        z = (x - self.means) / self.stds
        return self.log_weights - 0.5 * z**2 - jnp.log(self.stds)

    def encode(self, x: Any, mask: Any = None) -> tuple[Array, Array]:
        """Most probable mode and residual of every entry.

        Args:
          x: ``(n, C)`` values.
          mask: optional ``(n, C)`` bool; masked-out entries get mode 0 and residual 0.

        Returns:
          ``(modes (n, C) int32, residual (n, C))`` with ``residual = (x - mu) / (4 sigma)``
          (unbounded: a value far outside its mode has ``|r| > 1``).
        """
        x = jnp.asarray(x, self.means.dtype)
        safe = x if mask is None else jnp.where(mask, x, self.means[:, 0])
        modes = jnp.argmax(self.log_posterior(safe), axis=-1).astype(jnp.int32)
        mu = jnp.take_along_axis(self.means[None], modes[..., None], axis=-1)[..., 0]
        sd = jnp.take_along_axis(self.stds[None], modes[..., None], axis=-1)[..., 0]
        r = (safe - mu) / (RESIDUAL_SCALE * sd)
        if mask is not None:
            modes = jnp.where(mask, modes, 0)
            r = jnp.where(mask, r, 0.0)
        return modes, r

    def decode(self, modes: Any, residual: Any) -> Array:
        """Exact inverse of :meth:`encode`: ``mu_k + 4 sigma_k r``, ``(n, C)``."""
        modes = jnp.asarray(modes, jnp.int32)[..., None]
        n = modes.shape[0]
        mu = jnp.take_along_axis(jnp.broadcast_to(self.means, (n, *self.means.shape)), modes, -1)
        sd = jnp.take_along_axis(jnp.broadcast_to(self.stds, (n, *self.stds.shape)), modes, -1)
        return mu[..., 0] + RESIDUAL_SCALE * sd[..., 0] * jnp.asarray(residual, self.means.dtype)

    def mode_probabilities(self, logits: Any) -> Array:
        """``(n, C, K)`` softmax of ``logits`` over each column's real modes."""
        logits = jnp.where(self.active, jnp.asarray(logits), -jnp.inf)
        return jax.nn.softmax(logits, axis=-1)

    def soft_decode(self, logits: Any, residual: Any) -> Array:
        """Relaxed, differentiable inverse: ``sum_k softmax(logits)_k (mu_k + 4 sigma_k r)``.

        Args:
          logits: ``(n, C, K)`` mode logits (padding modes are ignored).
          residual: ``(n, C)`` residuals.

        Returns:
          ``(n, C)`` values; equal to :meth:`decode` of the argmax when the softmax is one-hot.
        """
        p = self.mode_probabilities(logits)
        r = jnp.asarray(residual)[..., None]
        return jnp.sum(p * (self.means + RESIDUAL_SCALE * self.stds * r), axis=-1)

    def features(self, x: Any, mask: Any = None) -> Array:
        """Encoder input: per column the mode one-hot (``K``) then the residual, ``(n, C (K + 1))``.

        Masked-out entries are all zeros.
        """
        modes, r = self.encode(x, mask)
        onehot = jax.nn.one_hot(modes, self.num_modes, dtype=self.means.dtype)
        if mask is not None:
            onehot = onehot * jnp.asarray(mask, onehot.dtype)[..., None]
        return jnp.concatenate([onehot, r[..., None]], axis=-1).reshape(len(modes), -1)


def fit_gmm_1d(
    x: Any, *, max_modes: int = 10, max_iter: int = 300, tol: float = 1e-9, min_std: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit a 1-D Gaussian mixture by EM, choosing the number of modes by BIC.

    Every ``K`` in ``1..max_modes`` (at most the number of distinct values) is fitted from
    quantile-spaced initial means; the fit with the smallest ``-2 log L + (3K - 1) log n`` wins.
    Standard deviations are floored at ``min_std`` times the data's spread (at least 1), so
    columns of repeated values (fixed-looking coordinates) get sharp but finite modes.

    Args:
      x: ``(n,)`` finite values.
      max_modes: the largest ``K`` tried.
      max_iter, tol: EM iterations and the log-likelihood change that stops them.
      min_std: relative floor of the standard deviations.

    Returns:
      ``(means (K,), stds (K,), weights (K,))`` sorted by mean.

    Raises:
      InvalidArgumentError: empty or non-finite ``x``, or ``max_modes`` below 1.
    """
    x = np.asarray(x, np.float64).ravel()
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise InvalidArgumentError(
            "a GMM column needs at least one finite value", argument="x", value=x.size
        )
    n = x.size
    floor = min_std * max(float(np.ptp(x)), 1.0)
    distinct = np.unique(x)
    best: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
    for k in range(1, min(max_modes, len(distinct)) + 1):
        mu = np.quantile(x, (np.arange(k) + 0.5) / k)
        sd = np.full(k, max(float(np.std(x)) / k, floor))
        w = np.full(k, 1.0 / k)
        prev = -np.inf
        for _ in range(max_iter):
            lp = (
                np.log(w)
                - 0.5 * ((x[:, None] - mu) / sd) ** 2
                - np.log(sd)
                - 0.5 * np.log(2 * np.pi)
            )
            top = lp.max(axis=1, keepdims=True)
            norm = top[:, 0] + np.log(np.exp(lp - top).sum(axis=1))
            ll = float(norm.sum())
            resp = np.exp(lp - norm[:, None])
            nk = resp.sum(axis=0) + 1e-12
            w = nk / n
            mu = (resp * x[:, None]).sum(axis=0) / nk
            sd = np.sqrt((resp * (x[:, None] - mu) ** 2).sum(axis=0) / nk)
            sd = np.maximum(sd, floor)
            if abs(ll - prev) <= tol * max(abs(ll), 1.0):
                break
            prev = ll
        keep = w > 1e-3  # modes EM emptied count as absent
        bic = -2.0 * ll + (3 * int(keep.sum()) - 1) * np.log(n)
        if best is None or bic < best[0] - 1e-9:
            w_k = w[keep] / w[keep].sum()
            best = (bic, mu[keep], sd[keep], w_k)
    if best is None:  # no K tried
        raise InvalidArgumentError(
            f"max_modes must be >= 1, got {max_modes!r}", argument="max_modes", value=max_modes
        )
    _, mu, sd, w = best
    order = np.argsort(mu)
    return mu[order], sd[order], w[order]


def fit_gmm_transform(
    x: Any, mask: Any = None, *, max_modes: int = 10, min_std: float = 1e-3, dtype: Any = None
) -> GMMTransform:
    """Fit one mixture per column of ``x`` (host side, NumPy).

    Args:
      x: ``(n, C)`` values (Å, degrees, fractional coordinates, ...).
      mask: optional ``(n, C)`` bool; only ``True`` entries are fitted (e.g. the free
        variables of each crystal). A column with no entry gets one standard-normal mode.
      max_modes: the largest number of modes per column.
      min_std: relative floor of the standard deviations (see :func:`fit_gmm_1d`).
      dtype: float dtype of the arrays (default JAX's default float).

    Returns:
      :class:`GMMTransform` padded to the largest mode count.

    Raises:
      InvalidArgumentError: ``x`` not 2-D, ``mask`` of another shape, or non-finite entries
        that are not masked out (naming the column).
    """
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise InvalidArgumentError(f"x must be (n, C), got {x.shape}", argument="x", value=x.shape)
    m = np.ones(x.shape, bool) if mask is None else np.asarray(mask, bool)
    if m.shape != x.shape:
        raise InvalidArgumentError(
            f"mask {m.shape} does not match x {x.shape}", argument="mask", value=m.shape
        )
    fits = []
    for c in range(x.shape[1]):
        col = x[m[:, c], c]
        if col.size and not np.all(np.isfinite(col)):
            raise InvalidArgumentError(f"column {c} has non-finite values", argument="x", value=c)
        if col.size == 0:
            fits.append((np.zeros(1), np.ones(1), np.ones(1)))
        else:
            fits.append(fit_gmm_1d(col, max_modes=max_modes, min_std=min_std))
    k = max(len(f[0]) for f in fits)
    means = np.zeros((len(fits), k))
    stds = np.ones((len(fits), k))
    logw = np.full((len(fits), k), -np.inf)
    for c, (mu, sd, w) in enumerate(fits):
        means[c, : len(mu)] = mu
        stds[c, : len(mu)] = sd
        logw[c, : len(mu)] = np.log(w)
    dt = dtype or jnp.zeros(()).dtype
    return GMMTransform(jnp.asarray(means, dt), jnp.asarray(stds, dt), jnp.asarray(logw, dt))
