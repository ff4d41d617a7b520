"""SO(3) power spectrum of the Gaussian-smeared neighbor density (Bartók et al. 2013).

Contract:

* A setting is one frozen, hashable :class:`SO3Settings` (``nmax``, ``lmax``, ``rcut`` Å,
  ``alpha`` Å⁻², ``weight_on``; validated on construction), passed as ``settings`` to the
  spectrum functions here and to the descriptor losses (a static argument of the jitted
  programs).
* :func:`so3_power_spectrum` maps a :class:`~jaxcsp.crystal.Crystals` batch to per-atom
  spectra ``(B, N, F)`` with ``F = nmax (nmax + 1) / 2 * (lmax + 1)``, in the conventions of
  PyXtal's ``pyxtal/lego/SO3.py`` (so reference spectra published with PyXtal carry over):

  - neighbor density: a Gaussian ``exp(-alpha |r - r_j|^2)`` on every neighbor ``j`` with
    ``|r_ij| < rcut`` (all periodic images, via :mod:`jaxcsp.neighbors`), times the cosine
    cutoff ``0.5 (cos(pi r / rcut) + 1)`` and the neighbor weight ``Z_j`` (``-Z_j`` for unlike
    species when ``weight_on``);
  - radial basis: the polynomials ``(rcut - r)^(a + 2)``, ``a = 1..nmax``, orthonormalised on
    ``[0, rcut]`` with the inverse square root of their overlap matrix; the radial projection
    is PyXtal's Gauss–Chebyshev quadrature with ``10 (nmax + lmax + 1)`` nodes;
  - expansion coefficients ``c_nlm = sum_j w_j 4 pi exp(-alpha r_j^2) f_c(r_j) Y_lm(r̂_j)
    I_nl(r_j) sqrt(2 sqrt(2) pi / sqrt(2l + 1))`` and ``p_nn'l = sum_m c_nlm conj(c_n'lm)``;
  - component order: pairs ``(n, n')`` with ``n' <= n`` in ``numpy.tril_indices`` order, then
    ``l = 0..lmax`` (index ``pair * (lmax + 1) + l``).

* Differences from PyXtal's ``compute_p`` (on purpose): every periodic image within
  ``rcut`` counts (PyXtal only looks at the 27 neighboring cells, so it misses images in cells
  thinner than ``rcut``); pairs closer than 0.01 Å are kept (PyXtal drops them; only ``l = 0``
  sees them since the other radial functions vanish at ``r = 0``).

* Implementation: the radial part ``R_nl(r)`` (everything except the weight and ``Y_lm``) is a
  smooth function of ``r`` on ``[0, rcut]``. It is computed on the host once per setting
  (:func:`so3_basis`, cached) in float64 with PyXtal's formula and interpolated by a
  Chebyshev series whose degree is raised until the tail is below 1e-16 of the largest value,
  so it agrees with the quadrature to round-off. On the device it is a Chebyshev basis times
  a coefficient matrix; ``Y_lm`` are real spherical harmonics (the power spectrum is the same
  for real and complex harmonics) computed by a polynomial recursion in the unit vector. The
  whole function is pure ``jnp``: jit, vmap and grad (w.r.t. ``frac`` and ``lattice``) work and
  the input dtype (float32 or float64) is followed. By default (``max_edges="auto"``) a
  concrete batch is first counted, and only its edges shorter than ``rcut`` are evaluated from
  one compacted batch-wide list (traced input evaluates every neighbor slot).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.crystal import Crystals
from jaxcsp.errors import InvalidArgumentError, InvalidStructureError
from jaxcsp.neighbors import _round_up, edge_list_vectors, neighbor_list

__all__ = [
    "SO3Basis",
    "SO3Settings",
    "num_so3_components",
    "so3_basis",
    "so3_power_spectrum",
    "so3_power_spectrum_edge_list",
    "so3_power_spectrum_from_edges",
]

Array = jax.Array

#: Squared distances below this (Å²) are treated as coincident atoms (direction undefined).
_TINY_R2 = 1e-20


# ----------------------------------------------------------------------------- host side


def num_so3_components(nmax: int, lmax: int) -> int:
    """Number of power-spectrum components ``nmax (nmax + 1) / 2 * (lmax + 1)``."""
    return nmax * (nmax + 1) // 2 * (lmax + 1)


def _positive_number(name: str, v: Any) -> float:
    if isinstance(v, jax.core.Tracer):
        raise InvalidArgumentError(
            f"{name} must be a concrete Python number (it defines the basis)",
            argument=name,
            value=v,
        )
    if isinstance(v, (bool, np.bool_, str, bytes)):
        raise InvalidArgumentError(f"{name} must be a number, got {v!r}", argument=name, value=v)
    try:
        fv = float(v)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(
            f"{name} must be a number, got {v!r}", argument=name, value=v
        ) from e
    if not math.isfinite(fv) or fv <= 0:
        raise InvalidArgumentError(
            f"{name} must be positive and finite, got {v!r}", argument=name, value=v
        )
    return fv


@dataclasses.dataclass(frozen=True)
class SO3Settings:
    """One SO(3) power-spectrum setting (frozen and hashable: a static argument of ``jit``).

    The defaults are the seed's carbon design setting. Fields are validated and normalised on
    construction (``nmax``/``lmax`` to ``int``, ``rcut``/``alpha`` to ``float``, ``weight_on``
    to ``bool``), so equal settings compare and hash equal (``SO3Settings(rcut=2)`` is
    ``SO3Settings(rcut=2.0)``) and share cached bases and compiled programs.

    Attributes:
      nmax: radial basis size, an ``int`` in 1..11.
      lmax: largest spherical-harmonic degree, an ``int`` in 0..32.
      rcut: cutoff radius in Å (positive, finite; concrete, not traced).
      alpha: exponent of the Gaussian smearing ``exp(-alpha r^2)`` in Å⁻² (positive, finite).
      weight_on: PyXtal's option: neighbors of a species other than the center's weigh
        ``-Z_j`` instead of ``Z_j``.

    Raises:
      InvalidArgumentError: a field outside its domain (``argument`` names the field).

    >>> s = SO3Settings(nmax=3, lmax=2, rcut=3)
    >>> s.rcut, s.num_components
    (3.0, 18)
    >>> s == SO3Settings(nmax=3, lmax=2, rcut=3.0) and hash(s) == hash(SO3Settings(3, 2, 3.0))
    True
    """

    nmax: int = 2
    lmax: int = 4
    rcut: float = 2.0
    alpha: float = 1.5
    weight_on: bool = False

    def __post_init__(self) -> None:
        nmax, lmax = self.nmax, self.lmax
        if isinstance(nmax, bool) or not isinstance(nmax, (int, np.integer)) or not 1 <= nmax <= 11:
            raise InvalidArgumentError(
                f"nmax must be an int in 1..11, got {nmax!r}", argument="nmax", value=nmax
            )
        if isinstance(lmax, bool) or not isinstance(lmax, (int, np.integer)) or not 0 <= lmax <= 32:
            raise InvalidArgumentError(
                f"lmax must be an int in 0..32, got {lmax!r}", argument="lmax", value=lmax
            )
        rcut = _positive_number("rcut", self.rcut)
        alpha = _positive_number("alpha", self.alpha)
        w = self.weight_on
        if not isinstance(w, (bool, np.bool_)) and not (
            isinstance(w, (int, np.integer)) and w in (0, 1)
        ):
            raise InvalidArgumentError(
                f"weight_on must be a bool, got {w!r}", argument="weight_on", value=w
            )
        object.__setattr__(self, "nmax", int(nmax))
        object.__setattr__(self, "lmax", int(lmax))
        object.__setattr__(self, "rcut", rcut)
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "weight_on", bool(w))

    @property
    def num_components(self) -> int:
        """Spectrum length ``F = nmax (nmax + 1) / 2 * (lmax + 1)`` (15 for the defaults)."""
        return num_so3_components(self.nmax, self.lmax)


def _as_settings(settings: Any) -> SO3Settings:
    if not isinstance(settings, SO3Settings):
        raise InvalidArgumentError(
            f"settings must be a jaxcsp.descriptors.SO3Settings, got {settings!r}",
            argument="settings",
            value=settings,
        )
    return settings


def _overlap_inv_sqrt(nmax: int) -> np.ndarray:
    """``S^(-1/2)`` of the overlap of the normalised ``(rc - r)^(a + 2)`` polynomials."""
    s = np.zeros((nmax, nmax))
    for a in range(1, nmax + 1):
        ta = (2 * a + 5) * (2 * a + 6) * (2 * a + 7)
        for b in range(1, nmax + 1):
            tb = (2 * b + 5) * (2 * b + 6) * (2 * b + 7)
            s[a - 1, b - 1] = np.sqrt(ta * tb) / ((5 + a + b) * (6 + a + b) * (7 + a + b))
    lam, v = np.linalg.eigh(s)
    return (v / np.sqrt(lam)) @ v.T


def _radial_exact(r: np.ndarray, nmax: int, lmax: int, rcut: float, alpha: float) -> np.ndarray:
    """PyXtal's radial part ``R_nl(r)`` in float64, ``(len(r), nmax, lmax + 1)``.

    ``R_nl(r) = norm_l 4 pi exp(-alpha r^2) f_c(r) sum_q G_n(x_q) i_l(2 alpha r x_q)`` with the
    Gauss–Chebyshev nodes ``x_q``; the exponentials are combined with the exponentially scaled
    Bessel function, ``exp(-alpha (r - x)^2) e^(-z) i_l(z)``, so nothing overflows.
    """
    from scipy.special import ive

    r = np.asarray(r, np.float64)
    w = _overlap_inv_sqrt(nmax)
    nq = (nmax + lmax + 1) * 10
    u = np.cos((2 * np.arange(1, nq + 1) - 1) * np.pi / (2 * nq))
    weight = np.pi / nq * rcut / 2
    x = rcut / 2 * (u + 1)
    a = np.arange(1, nmax + 1)[:, None]
    phi = (rcut - x[None]) ** (a + 2) / np.sqrt(
        2 * rcut ** (2 * a + 7) / ((2 * a + 5) * (2 * a + 6) * (2 * a + 7))
    )  # (nmax, nq)
    g = w @ phi  # (nmax, nq)
    gq = g * x**2 * np.sqrt(1 - u**2) * weight  # exp(-alpha x^2) is folded in below
    z = 2 * alpha * r[:, None] * x[None, :]  # (P, nq)
    ls = np.arange(lmax + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # e^{-z} i_l(z) = sqrt(pi / 2z) I_{l+1/2}(z) e^{-z}
        bes = np.sqrt(np.pi / (2 * z[..., None])) * ive(ls + 0.5, z[..., None])
    bes = np.where(z[..., None] == 0, (ls == 0).astype(np.float64), bes)  # (P, nq, L)
    gauss = np.exp(-alpha * (r[:, None] - x[None, :]) ** 2)  # (P, nq)
    integral = np.einsum("nq,pq,pql->pnl", gq, gauss, bes)
    fc = 0.5 * (np.cos(np.pi * r / rcut) + 1.0)
    norm = np.sqrt(2 * np.sqrt(2) * np.pi / np.sqrt(2 * ls + 1))
    return 4 * np.pi * fc[:, None, None] * integral * norm[None, None, :]


class SO3Basis(NamedTuple):
    """Host-built constants of one descriptor setting (float64 numpy).

    Attributes:
      nmax, lmax, rcut, alpha: the setting (``rcut`` in Å, ``alpha`` in Å⁻²).
      cheb: ``(D, nmax * (lmax + 1))`` Chebyshev coefficients of ``R_nl`` on ``[0, rcut]``
        (column ``n * (lmax + 1) + l``).
      ylm_norm: ``((lmax + 1)^2,)`` normalisation of the real spherical harmonics.
      l_of_q: ``((lmax + 1)^2,)`` degree ``l`` of each harmonic column.
      pairs: ``(nmax (nmax + 1) / 2, 2)`` the ``(n, n')`` pairs in ``tril_indices`` order.
    """

    nmax: int
    lmax: int
    rcut: float
    alpha: float
    cheb: np.ndarray
    ylm_norm: np.ndarray
    l_of_q: np.ndarray
    pairs: np.ndarray


def so3_basis(settings: SO3Settings = SO3Settings()) -> SO3Basis:
    """Build (and cache, per hashable setting) the host-side constants of a descriptor setting.

    Args:
      settings: the :class:`SO3Settings` (``weight_on`` does not enter the basis).

    Returns:
      :class:`SO3Basis` (float64 numpy arrays).

    Raises:
      InvalidArgumentError: ``settings`` is not an :class:`SO3Settings`.

    >>> so3_basis(SO3Settings(nmax=2, lmax=4)).pairs.tolist()
    [[0, 0], [1, 0], [1, 1]]
    """
    s = _as_settings(settings)
    # weight_on does not change the basis: one cache entry per (nmax, lmax, rcut, alpha)
    return _so3_basis(dataclasses.replace(s, weight_on=False))


@functools.lru_cache(maxsize=64)
def _so3_basis(settings: SO3Settings) -> SO3Basis:
    nmax, lmax, rcut, alpha = settings.nmax, settings.lmax, settings.rcut, settings.alpha
    f = nmax * (lmax + 1)
    scale = None
    coef = None
    for deg in (64, 128, 256, 512):
        k = np.arange(deg + 1)
        t = np.cos(np.pi * (k + 0.5) / (deg + 1))  # Chebyshev points of the first kind
        vals = _radial_exact(rcut / 2 * (t + 1), nmax, lmax, rcut, alpha).reshape(-1, f)
        coef = np.polynomial.chebyshev.chebfit(t, vals, deg)  # (deg + 1, f)
        scale = max(np.abs(vals).max(), 1e-300)
        if np.abs(coef[-8:]).max() < 1e-15 * scale:
            break
    assert coef is not None and scale is not None
    # drop the tail below 1e-13 of the largest value (error ~1e-12 relative, far below the 1e-8
    # agreement asked of the spectra; keeps the device-side series short: ~25 terms by default)
    keep = np.flatnonzero(np.abs(coef).max(axis=1) > 1e-13 * scale)
    coef = coef[: int(keep[-1]) + 1 if len(keep) else 1]
    l_of_q = np.concatenate([np.full(2 * l + 1, l) for l in range(lmax + 1)])
    m_of_q = np.concatenate([np.arange(-l, l + 1) for l in range(lmax + 1)])
    norm = np.array(
        [
            np.sqrt(
                (2 * l + 1)
                / (4 * np.pi)
                * math.factorial(l - abs(m))
                / math.factorial(l + abs(m))
                * (2.0 if m != 0 else 1.0)
            )
            for l, m in zip(l_of_q, m_of_q, strict=True)
        ]
    )
    pairs = np.stack(np.tril_indices(nmax), axis=-1)
    return SO3Basis(nmax, lmax, rcut, alpha, coef, norm, l_of_q, pairs)


# ----------------------------------------------------------------------------- device side


def _real_sph_harm(u: Array, lmax: int, norm: np.ndarray) -> Array:
    """Real orthonormal spherical harmonics of unit vectors ``u (..., 3)``: ``(..., (lmax+1)^2)``.

    Column order within degree ``l``: ``m = -l..l`` (sine terms for ``m < 0``).
    """
    x, y, z = u[..., 0], u[..., 1], u[..., 2]
    cos_m, sin_m = [jnp.ones_like(x)], [jnp.zeros_like(x)]
    for _ in range(lmax):
        c, s = cos_m[-1], sin_m[-1]
        cos_m.append(x * c - y * s)
        sin_m.append(x * s + y * c)
    # q[l][m]: associated Legendre P_l^m(z) / sin^m(theta), without the Condon–Shortley phase
    q: dict[tuple[int, int], Array] = {}
    for m in range(lmax + 1):
        dfact = float(np.prod(np.arange(2 * m - 1, 0, -2))) if m > 0 else 1.0
        q[m, m] = jnp.full_like(z, dfact)
        if m + 1 <= lmax:
            q[m + 1, m] = (2 * m + 1) * z * q[m, m]
        for l in range(m + 2, lmax + 1):
            q[l, m] = ((2 * l - 1) * z * q[l - 1, m] - (l + m - 1) * q[l - 2, m]) / (l - m)
    cols = []
    for l in range(lmax + 1):
        for m in range(-l, l + 1):
            am = abs(m)
            ang = cos_m[am] if m >= 0 else sin_m[am]
            cols.append(q[l, am] * ang)
    return jnp.stack(cols, axis=-1) * jnp.asarray(norm, u.dtype)


def _chebyshev_sum(t: Array, coef: Array) -> Array:
    """``sum_k coef[k] T_k(t)``: ``(..., F)``, the recurrence unrolled (``D`` is about 25)."""
    d = coef.shape[0]
    prev, cur = jnp.ones_like(t), t
    acc = prev[..., None] * coef[0]
    if d > 1:
        acc = acc + cur[..., None] * coef[1]
    for k in range(2, d):
        prev, cur = cur, 2 * t * cur - prev
        acc = acc + cur[..., None] * coef[k]
    return acc


@jax.custom_jvp
def _chebyshev_series_jvp(t: Array, coef: Array, dcoef: Array) -> Array:
    return _chebyshev_sum(t, coef)


@_chebyshev_series_jvp.defjvp
def _chebyshev_series_rule(primals, tangents):
    t, coef, dcoef = primals
    dt = tangents[0]
    return _chebyshev_sum(t, coef), _chebyshev_sum(t, dcoef) * dt[..., None]


def _chebyshev_series(t: Array, coef: Any) -> Array:
    """``sum_k coef[k] T_k(t)`` for ``t (...)``, host ``coef (D, F)``: ``(..., F)``.

    The derivative in ``t`` is the series of the differentiated coefficients (``chebder``),
    given as a custom JVP: XLA:CPU differentiates the unrolled recurrence (and a ``lax.scan``
    over ``k``) many times more slowly than it evaluates a second series.
    """
    coef = np.asarray(coef)
    dcoef = np.polynomial.chebyshev.chebder(coef, axis=0) if len(coef) > 1 else 0 * coef
    return _chebyshev_series_jvp(t, jnp.asarray(coef, t.dtype), jnp.asarray(dcoef, t.dtype))


def so3_power_spectrum_from_edges(
    vectors: Array,
    weights: Array,
    mask: Array,
    settings: SO3Settings = SO3Settings(),
) -> Array:
    """Power spectra of neighbor environments given as edge vectors (any leading shape).

    Args:
      vectors: ``(..., K, 3)`` float, vectors from the center to its neighbors in Å.
      weights: ``(..., K)`` float, neighbor weights (PyXtal: atomic number, signed); used as
        given (``settings.weight_on`` is not applied here).
      mask: ``(..., K)`` bool, real neighbors (those with ``|v| >= settings.rcut`` are ignored
        too).
      settings: descriptor setting (:class:`SO3Settings`, static).

    Returns:
      ``(..., F)`` spectra in the dtype of ``vectors``, ``F = settings.num_components``.

    Raises:
      InvalidArgumentError: ``settings`` is not an :class:`SO3Settings`.
    """
    basis = so3_basis(settings)
    c = _edge_coefficients(vectors, weights, mask, basis)  # (..., K, nmax, Q)
    return _power_spectrum(jnp.sum(c, axis=-3), basis)


def _edge_coefficients(vectors: Array, weights: Array, mask: Array, basis: SO3Basis) -> Array:
    """Contribution of each edge to ``c_nlm``: ``(..., nmax, (lmax+1)^2)`` per edge."""
    dtype = vectors.dtype
    r2 = jnp.sum(vectors * vectors, axis=-1)
    live = mask & (r2 < basis.rcut**2)
    ok = live & (r2 > _TINY_R2)
    r = jnp.sqrt(jnp.where(ok, r2, jnp.ones_like(r2)))
    unit = jnp.where(ok[..., None], vectors / r[..., None], jnp.asarray([0.0, 0.0, 1.0], dtype))
    r = jnp.where(ok, r, jnp.zeros_like(r))
    t = 2.0 * r / basis.rcut - 1.0
    w = jnp.where(live, weights.astype(dtype), jnp.zeros((), dtype))
    radial = _chebyshev_series(t, basis.cheb) * w[..., None]  # (..., nmax*(lmax+1))
    radial = radial.reshape(*radial.shape[:-1], basis.nmax, basis.lmax + 1)
    # each l repeated 2l+1 times (static slices: XLA:CPU gathers along the last axis are slow)
    radial = jnp.concatenate(
        [
            jnp.broadcast_to(radial[..., l : l + 1], (*radial.shape[:-1], 2 * l + 1))
            for l in range(basis.lmax + 1)
        ],
        axis=-1,
    )  # (..., nmax, Q)
    ylm = _real_sph_harm(unit, basis.lmax, basis.ylm_norm)  # (..., Q)
    return radial * ylm[..., None, :]


def _power_spectrum(c: Array, basis: SO3Basis) -> Array:
    """``p_nn'l = sum_m c_nlm c_n'lm`` from ``c (..., nmax, Q)``: ``(..., F)`` in PyXtal's order."""
    sel = jnp.asarray(basis.l_of_q[:, None] == np.arange(basis.lmax + 1)[None, :], c.dtype)
    a, b = basis.pairs[:, 0], basis.pairs[:, 1]
    p = jnp.einsum("...pq,...pq,ql->...pl", c[..., a, :], c[..., b, :], sel)
    return p.reshape(*p.shape[:-2], -1)


def _is_concrete(*trees: Any) -> bool:
    """No leaf of ``trees`` is a tracer (the values can be read on the host)."""
    return not any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(trees))


def _check_max_edges(max_edges: Any) -> int | Literal["auto"] | None:
    if max_edges is None:
        return None
    if isinstance(max_edges, str) and max_edges == "auto":
        return "auto"
    if isinstance(max_edges, (bool, np.bool_)) or not isinstance(max_edges, (int, np.integer)):
        raise InvalidArgumentError(
            f"max_edges must be 'auto', None or an int >= 1, got {max_edges!r}",
            argument="max_edges",
            value=max_edges,
        )
    if max_edges < 1:
        raise InvalidArgumentError(
            f"max_edges must be >= 1, got {max_edges!r}", argument="max_edges", value=max_edges
        )
    return int(max_edges)


#: ``"auto"`` counts edges up to ``rcut (1 + _AUTO_SLACK)``: an upper bound of the count the
#: compacted program finds (its float32 round-off on borderline edges cannot overflow it).
_AUTO_SLACK = 1e-4


def _auto_max_edges(
    crystals: Crystals,
    neighbors: Any,
    settings: SO3Settings = SO3Settings(),
    *,
    centers: Array | None = None,
) -> int | None:
    """The edge capacity ``max_edges="auto"`` picks for a concrete batch (host side).

    The edges shorter than ``settings.rcut`` of the whole batch (of ``centers`` only when
    given) are counted on the device in one small jitted program, read back, and rounded up
    to a bucket (:func:`jaxcsp.neighbors.edge_list_spec`'s rounding: at least 512, then less
    than 1/8 extra), so batches with nearby edge counts share one compiled spectrum program.

    Args:
      crystals: batch (``lattice (B, 3, 3)`` Å, ``frac (B, N, 3)``, ``species``, ``mask``).
      neighbors: :class:`~jaxcsp.neighbors.Neighbors` of the batch (cutoff ``>= rcut``).
      settings: descriptor setting (only ``rcut`` is used).
      centers: optional ``(B, M)`` int atom indices.

    Returns:
      the capacity (``int``), or ``None`` (the dense path) when any input is traced.
    """
    settings = _as_settings(settings)
    arrays = (crystals, neighbors.index, neighbors.shift, neighbors.mask, centers)
    if not _is_concrete(*arrays):
        return None
    bound = settings.rcut * (1.0 + _AUTO_SLACK)
    count = int(_count_live_edges(*arrays, bound=bound))
    return _round_up(count)


def so3_power_spectrum(
    crystals: Crystals,
    settings: SO3Settings = SO3Settings(),
    *,
    neighbors: Any = None,
    centers: Array | None = None,
    max_edges: int | Literal["auto"] | None = "auto",
) -> Array:
    """SO(3) power spectra of every atom (or of ``centers``) in a batch of crystals.

    Args:
      crystals: batch, ``lattice (B, 3, 3)`` Å, ``frac (B, N, 3)``, ``species (B, N)``,
        ``mask (B, N)``.
      settings: descriptor setting (:class:`SO3Settings`: ``nmax``, ``lmax``, ``rcut`` Å,
        ``alpha`` Å⁻², ``weight_on``), static.
      neighbors: a :class:`~jaxcsp.neighbors.Neighbors` of this batch with cutoff
        ``>= settings.rcut``. Required inside ``jit`` (build the shapes with
        :func:`jaxcsp.neighbors.neighbor_list_spec` on the host and call
        :func:`jaxcsp.neighbors.update` inside); ``None`` builds one with
        :func:`jaxcsp.neighbors.neighbor_list` (concrete input only).
      centers: optional ``(B, M)`` int atom indices; only their spectra are computed.
      max_edges: how neighbor slots are evaluated. ``"auto"`` (default): for concrete input,
        the edges shorter than ``rcut`` are counted first (one small jitted count, read back to
        the host) and only those are evaluated, from one batch-wide list whose capacity is that
        count rounded up to a bucket (at least 512, then < 1/8 extra, as
        :func:`jaxcsp.neighbors.edge_list_spec` rounds), so batches with nearby counts share a
        compiled program; for traced input (inside ``jit``, ``grad``, ``vmap``) it is the dense
        path. An ``int``: that static capacity (for use inside ``jit``); crystals whose edges
        do not fit get NaN spectra (never silently wrong). ``None``: the dense path, every
        ``(B, N, K)`` neighbor slot is evaluated.

    Returns:
      ``(B, N, F)`` (or ``(B, M, F)``) spectra in the float dtype of ``crystals.frac``, with
      ``F = settings.num_components`` (15 for the defaults); padded atoms give zeros.

    Raises:
      InvalidArgumentError: ``settings`` is not an :class:`SO3Settings`, bad ``max_edges``.
      InvalidStructureError: no ``neighbors`` for traced input, or a neighbor list whose
        cutoff is below ``settings.rcut``.

    >>> import numpy as np
    >>> from jaxcsp.crystal import Crystals
    >>> c = Crystals.create(np.eye(3) * 3.0, [[0, 0, 0], [0.5, 0.5, 0.0]], [6, 6])
    >>> so3_power_spectrum(c).shape
    (1, 2, 15)
    >>> so3_power_spectrum(c, SO3Settings(nmax=3, rcut=2.5)).shape
    (1, 2, 30)
    """
    settings = _as_settings(settings)
    max_edges = _check_max_edges(max_edges)
    rcut = settings.rcut
    if neighbors is None:
        if not _is_concrete(crystals.frac, crystals.lattice):
            raise InvalidStructureError(
                "so3_power_spectrum needs `neighbors` inside jit (use jaxcsp.neighbors."
                "neighbor_list_spec outside and jaxcsp.neighbors.update inside)",
                field="neighbors",
            )

        neighbors = neighbor_list(crystals, rcut)
    elif neighbors.cutoff < rcut * (1 - 1e-12):
        raise InvalidStructureError(
            f"neighbor list cutoff {neighbors.cutoff} Å is smaller than rcut {rcut} Å",
            field="neighbors",
        )
    if max_edges == "auto":
        max_edges = _auto_max_edges(crystals, neighbors, settings, centers=centers)
    assert not isinstance(max_edges, str)
    p, overflow = _spectrum(
        crystals,
        neighbors.index,
        neighbors.shift,
        neighbors.mask,
        centers,
        settings=settings,
        max_edges=max_edges,
    )
    if max_edges is None:
        return p
    return jnp.where(overflow[:, None, None], jnp.asarray(jnp.nan, p.dtype), p)


def _float_dtype(crystals: Crystals) -> Any:
    dtype = jnp.result_type(crystals.frac.dtype, crystals.lattice.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.asarray(0.0).dtype
    return dtype


def _gather_edges(
    crystals: Crystals,
    index: Array,
    shift: Array,
    nmask: Array,
    centers: Array | None,
    weight_on: bool,
) -> tuple[Array, Array, Array, Array]:
    """Edge vectors ``(B, M, K, 3)`` Å, weights ``(B, M, K)``, edge mask ``(B, M, K)`` and center
    mask ``(B, M)`` of the neighbor slots of every atom (or of ``centers``)."""
    dtype = _float_dtype(crystals)

    def edges(lattice, frac, species, amask, index, shift, nmask, ctr):
        lattice = lattice.astype(dtype)
        frac = frac.astype(dtype)
        if ctr is not None:
            index, shift, nmask = index[ctr], shift[ctr], nmask[ctr]
            fi, zi, ci = frac[ctr], species[ctr], amask[ctr]
        else:
            fi, zi, ci = frac, species, amask
        v = (frac[index] - fi[:, None, :] + shift.astype(dtype)) @ lattice
        zj = species[index]
        w = jnp.where((zj != zi[:, None]) & weight_on, -zj, zj).astype(dtype)
        return v, w, nmask & ci[:, None], ci

    return jax.vmap(edges)(
        crystals.lattice,
        crystals.frac,
        crystals.species,
        crystals.mask,
        index,
        shift,
        nmask,
        centers,
    )


@functools.partial(jax.jit, static_argnames=("bound",))
def _count_live_edges(
    crystals: Crystals,
    index: Array,
    shift: Array,
    nmask: Array,
    centers: Array | None,
    *,
    bound: float,
) -> Array:
    """Number ``()`` of real edges shorter than ``bound`` Å (as :func:`_spectrum` tests them)."""
    v, _, m, _ = _gather_edges(crystals, index, shift, nmask, centers, False)
    return jnp.sum(m & (jnp.sum(v * v, axis=-1) < bound**2), dtype=jnp.int32)


@functools.partial(jax.jit, static_argnames=("settings", "max_edges"))
def _spectrum(
    crystals: Crystals,
    index: Array,
    shift: Array,
    nmask: Array,
    centers: Array | None,
    *,
    settings: SO3Settings,
    max_edges: int | None = None,
) -> tuple[Array, Array]:
    """Spectra ``(B, M, F)`` and an overflow flag ``(B,)``.

    With ``max_edges`` the edges within ``rcut`` of the whole batch are compacted into one list
    of that capacity before the (costly) radial and angular functions are evaluated; crystals
    whose edges did not fit are flagged (their spectra are then incomplete).
    """
    basis = so3_basis(settings)
    dtype = _float_dtype(crystals)
    v, w, m, ci = _gather_edges(crystals, index, shift, nmask, centers, settings.weight_on)
    b, mm, k = m.shape
    if max_edges is None:
        c = jnp.sum(_edge_coefficients(v, w, m, basis), axis=-3)  # (B, M, nmax, Q)
        overflow = jnp.zeros((b,), bool)
    else:
        live = m & (jnp.sum(v * v, axis=-1) < basis.rcut**2)
        per_crystal = jnp.sum(live, axis=(1, 2))
        overflow = jnp.cumsum(per_crystal) > max_edges
        flat = live.reshape(-1)
        (sel,) = jnp.nonzero(flat, size=max_edges, fill_value=0)
        valid = jnp.arange(max_edges) < jnp.sum(flat)
        ce = _edge_coefficients(v.reshape(-1, 3)[sel], w.reshape(-1)[sel], valid, basis)
        c = jax.ops.segment_sum(ce, sel // k, num_segments=b * mm).reshape(b, mm, *ce.shape[1:])
    p = _power_spectrum(c, basis)
    return jnp.where(ci[..., None], p, jnp.zeros((), dtype)), overflow


def so3_power_spectrum_edge_list(
    crystals: Crystals,
    edges: Any,
    settings: SO3Settings = SO3Settings(),
) -> Array:
    """Spectra of the query rows of a :class:`~jaxcsp.neighbors.EdgeList` (jit/grad-safe).

    The same quantity as :func:`so3_power_spectrum` for the rows' center atoms, computed from one
    batch-wide edge list (only real edges are evaluated): the fast path for a few centers per
    crystal, e.g. the representatives of Wyckoff sites.

    Args:
      crystals: batch (``B`` crystals of ``N`` slots) the edges were built for.
      edges: :class:`~jaxcsp.neighbors.EdgeList` with cutoff ``>= settings.rcut`` (edges past
        ``rcut`` are ignored).
      settings: descriptor setting (:class:`SO3Settings`, static).

    Returns:
      ``(B, R, F)`` spectra (dtype of ``crystals.frac``; zero for rows without real edges),
      ``F = settings.num_components``.

    Raises:
      InvalidArgumentError: ``settings`` is not an :class:`SO3Settings`.
      InvalidStructureError: an edge list whose cutoff is below ``settings.rcut``.
    """
    settings = _as_settings(settings)
    if edges.cutoff < settings.rcut * (1 - 1e-12):
        raise InvalidStructureError(
            f"edge list cutoff {edges.cutoff} Å is smaller than rcut {settings.rcut} Å",
            field="edges",
        )
    basis = so3_basis(settings)
    b = crystals.mask.shape[0]
    v = edge_list_vectors(crystals, edges)
    z = crystals.species.reshape(-1)
    zi, zj = z[edges.center], z[edges.neighbor]
    w = jnp.where((zj != zi) & settings.weight_on, -zj, zj).astype(v.dtype)
    ce = _edge_coefficients(v, w, edges.mask, basis)  # (E, nmax, Q)
    rows = b * edges.num_rows
    c = jax.ops.segment_sum(ce, edges.row, num_segments=rows, indices_are_sorted=True)
    return _power_spectrum(c, basis).reshape(b, edges.num_rows, -1)
