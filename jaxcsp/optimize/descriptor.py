"""Batched per-sample optimisation of descriptor losses (Algorithm 1 of the LEGO-xtal GPU seed).

Contract:

* Parameters are any pytree whose leaves carry the batch axis first (``B`` independent
  samples); the loss is a per-sample function ``loss_fn(params) -> (B,)``. Gradients of the
  summed loss are per-sample gradients (the samples do not interact).
* :func:`descriptor_optimizer` is an optax chain (a ``GradientTransformationExtraArgs``; the
  per-sample losses are passed as ``value=`` to ``update``, as for
  ``optax.contrib.reduce_on_plateau``):

  1. :func:`clip_by_per_sample_norm` — each sample's gradient (all leaves together) is scaled
     to norm ``<= max_norm``; non-finite gradients become zero;
  2. ``optax.adamw`` (element-wise, so samples stay independent);
  3. :func:`scale_by_plateau_per_sample` — each sample has its own best loss, plateau counter
     and step scale; after ``patience`` steps without relative improvement ``rtol`` its scale
     is multiplied by ``factor``. The scale multiplies the *update* (Adam normalises gradient
     scale away, so scaling gradients would do nothing). Samples whose loss is below ``tol``,
     whose scale fell below ``min_scale`` or whose loss is not finite stop (zero update);
  4. :func:`project_box` — the new parameters are clamped to ``[lower, upper]`` (normalised
     variables to [0, 1]), or wrapped into it for leaves marked ``periodic``.

* :func:`run` drives any such optimizer with one jitted step over the batch (chunks of steps
  in a ``lax.scan``), keeps each sample's best parameters, and stops when all samples stopped.
* :func:`optimize_wyckoff` is the seed's stage: free variables of a
  :class:`~jaxcsp.symmetry.WyckoffCrystals` batch (normalised cell, fractional coordinates),
  the descriptor loss of :func:`jaxcsp.descriptors.descriptor_loss` on a sparse edge list of
  the sites' representative atoms (:func:`site_edge_spec`: candidates chosen on the host per
  crystal, re-tested every step inside the jitted step, re-chosen and the chunk recomputed
  whenever a crystal overflows them).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxcsp import parallel
from jaxcsp.descriptors import bond_cutoffs, descriptor_loss, edge_list_spec_for_sites
from jaxcsp.descriptors._so3 import SO3Settings, _as_settings
from jaxcsp.neighbors import edge_list
from jaxcsp.runtime import release_compiled_programs
from jaxcsp.symmetry import (
    free_variables,
    normalize_cell,
    reconstruct,
    validate_free_variables,
    with_free_variables,
)

__all__ = [
    "DescriptorResult",
    "PlateauState",
    "RunResult",
    "clip_by_per_sample_norm",
    "descriptor_optimizer",
    "loss_cutoff",
    "optimize_wyckoff",
    "per_sample_norms",
    "project_box",
    "run",
    "scale_by_plateau_per_sample",
    "site_edge_spec",
]

Array = jax.Array


# ----------------------------------------------------------------------------- transforms


def _batch_size(tree: Any) -> int:
    leaves = jax.tree.leaves(tree)
    if not leaves or any(jnp.ndim(x) == 0 for x in leaves):
        raise ValueError("per-sample transforms need leaves with a leading batch axis")
    b = leaves[0].shape[0]
    if any(x.shape[0] != b for x in leaves):
        raise ValueError(f"leaves disagree on the batch axis: {[x.shape for x in leaves]}")
    return b


def _bcast(v: Array, x: Array) -> Array:
    return v.reshape(v.shape + (1,) * (x.ndim - 1)).astype(x.dtype)


def per_sample_norms(tree: Any) -> Array:
    """Global L2 norm of each sample over all leaves, ``(B,)`` (batch axis first in leaves)."""
    _batch_size(tree)
    sq = [jnp.sum(jnp.reshape(x * x, (x.shape[0], -1)), axis=-1) for x in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(sq))


def clip_by_per_sample_norm(max_norm: float) -> optax.GradientTransformation:
    """Scale each sample's gradient so its global norm is at most ``max_norm``.

    Non-finite gradients of a sample are replaced by zeros (the sample does not move).

    Args:
      max_norm: largest per-sample gradient norm (in the units of the parameters' gradients).

    Returns:
      A stateless ``optax.GradientTransformation``.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        finite = [
            jnp.all(jnp.isfinite(jnp.reshape(x, (x.shape[0], -1))), axis=-1)
            for x in jax.tree.leaves(updates)
        ]
        ok = functools.reduce(jnp.logical_and, finite)
        updates = jax.tree.map(lambda g: jnp.where(_bcast(ok, g) > 0, g, 0.0), updates)
        norm = per_sample_norms(updates)
        scale = jnp.where(norm > max_norm, max_norm / jnp.where(norm > 0, norm, 1.0), 1.0)
        return jax.tree.map(lambda g: g * _bcast(scale, g), updates), state

    return optax.GradientTransformation(init_fn, update_fn)


class PlateauState(NamedTuple):
    """Per-sample plateau state of :func:`scale_by_plateau_per_sample`.

    Attributes:
      best: ``(B,)`` best loss seen (loss units).
      count: ``(B,) int32`` steps since the last improvement.
      scale: ``(B,)`` current multiplier of the update (starts at 1).
      active: ``(B,) bool`` sample still moving (False once stopped).
      steps: ``(B,) int32`` steps taken while active.
    """

    best: Array
    count: Array  # type: ignore[assignment]  # public field name; shadows tuple.count by design
    scale: Array
    active: Array
    steps: Array


def scale_by_plateau_per_sample(
    *,
    patience: int = 10,
    factor: float = 0.5,
    rtol: float = 1e-4,
    atol: float = 0.0,
    min_scale: float = 1e-3,
    tol: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """Per-sample step reduction on loss plateaus and per-sample early stop.

    ``update(updates, state, params, value=losses (B,))``: a sample improves when
    ``value < best * (1 - rtol) - atol``; after ``patience`` steps without improvement its
    scale is multiplied by ``factor`` (and the counter restarts). The update of each sample is
    multiplied by its scale, or zeroed once the sample stopped: ``value <= tol``, ``scale <
    min_scale``, or a non-finite ``value``.

    Args:
      patience: steps without improvement before the scale is reduced.
      factor: multiplier applied to the scale on a plateau (0 < factor < 1).
      rtol, atol: relative and absolute improvement thresholds (loss units for ``atol``).
      min_scale: stop a sample when its scale falls below this.
      tol: stop a sample when its loss is at most this (early stop; 0 disables).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` with state :class:`PlateauState`.
    """

    def init_fn(params):
        b = _batch_size(params)
        dtype = jax.tree.leaves(params)[0].dtype
        return PlateauState(
            best=jnp.full((b,), jnp.inf, dtype),
            count=jnp.zeros((b,), jnp.int32),
            scale=jnp.ones((b,), dtype),
            active=jnp.ones((b,), bool),
            steps=jnp.zeros((b,), jnp.int32),
        )

    def update_fn(updates, state, params=None, *, value=None, **extra):
        del params, extra
        if value is None:
            raise ValueError("scale_by_plateau_per_sample needs the per-sample losses: value=")
        value = jnp.asarray(value, state.best.dtype)
        finite = jnp.isfinite(value)
        improved = finite & (value < state.best * (1 - rtol) - atol)
        best = jnp.where(improved, value, state.best)
        count = jnp.where(improved, 0, state.count + 1)
        plateau = count >= patience
        scale = jnp.where(plateau, state.scale * factor, state.scale)
        count = jnp.where(plateau, 0, count)
        active = state.active & finite & (value > tol) & (scale >= min_scale)
        # a sample that is still active moves with its scale; stopped samples keep their state
        scale = jnp.where(state.active, scale, state.scale)
        best = jnp.where(state.active, best, state.best)
        count = jnp.where(state.active, count, state.count)
        mult = jnp.where(active, scale, 0.0)
        updates = jax.tree.map(lambda u: u * _bcast(mult, u), updates)
        steps = state.steps + active.astype(jnp.int32)
        return updates, PlateauState(best, count, scale, active, steps)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def project_box(
    lower: Any = 0.0, upper: Any = 1.0, *, periodic: Any = False
) -> optax.GradientTransformation:
    """Keep parameters in ``[lower, upper]``: clamp, or wrap for ``periodic`` leaves/entries.

    The update is rewritten so that ``params + update`` is the projected point (requires
    ``params`` in ``update``).

    Args:
      lower, upper: scalars or pytrees (matching ``params``, leaves broadcastable) of bounds.
      periodic: bool or pytree of bools (leaves broadcastable): wrap ``lower + (x - lower) mod
        (upper - lower)`` instead of clamping (for fractional coordinates).

    Returns:
      A stateless ``optax.GradientTransformation``.
    """

    def init_fn(params):
        del params
        return optax.EmptyState()

    def _tree(v, like):
        if jax.tree.structure(v) == jax.tree.structure(like) and not jnp.isscalar(v):
            return v
        return jax.tree.map(lambda _: v, like)

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("project_box needs params")
        lo, hi, per = _tree(lower, params), _tree(upper, params), _tree(periodic, params)

        def one(u, x, l, h, p):
            new = x + u
            l = jnp.asarray(l, x.dtype)
            h = jnp.asarray(h, x.dtype)
            wrapped = l + jnp.mod(new - l, h - l)
            clamped = jnp.clip(new, l, h)
            return jnp.where(jnp.asarray(p), wrapped, clamped) - x

        return jax.tree.map(one, updates, params, lo, hi, per), state

    return optax.GradientTransformation(init_fn, update_fn)


def descriptor_optimizer(
    learning_rate: float = 1e-2,
    *,
    max_norm: float = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    weight_decay: float = 1e-4,
    patience: int = 10,
    factor: float = 0.5,
    rtol: float = 1e-4,
    min_scale: float = 1e-3,
    tol: float = 0.0,
    lower: Any = 0.0,
    upper: Any = 1.0,
    periodic: Any = False,
    mask: Any = None,
    update_scale: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Algorithm 1's optimizer: per-sample clip → AdamW → per-sample plateau scale → box.

    Args:
      learning_rate: AdamW learning rate (in units of the parameters per step).
      max_norm: per-sample gradient clipping norm.
      b1, b2, weight_decay: AdamW hyper-parameters (decoupled weight decay).
      patience, factor, rtol, min_scale, tol: see :func:`scale_by_plateau_per_sample`.
      lower, upper, periodic: see :func:`project_box` (normalised variables: [0, 1]).
      mask: optional pytree of bools (broadcastable to the leaves): entries that are not free
        variables get no update at all (not even weight decay).
      update_scale: optional pytree of per-leaf multipliers of the AdamW step (e.g. a smaller
        step for the cell than for the coordinates).

    Returns:
      ``optax.GradientTransformationExtraArgs``; call ``update(grads, state, params,
      value=losses)`` with the per-sample losses ``(B,)``.
    """
    parts = [
        clip_by_per_sample_norm(max_norm),
        optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay),
    ]
    if update_scale is not None:
        parts.append(_scale_leaves(update_scale))
    parts += [
        scale_by_plateau_per_sample(
            patience=patience, factor=factor, rtol=rtol, min_scale=min_scale, tol=tol
        ),
    ]
    parts.append(project_box(lower, upper, periodic=periodic))
    if mask is not None:
        parts.append(_zero_masked(mask))  # after the box: fixed entries are never projected
    return optax.chain(*parts)


def _scale_leaves(scale: Any) -> optax.GradientTransformation:
    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        sc = scale
        if jax.tree.structure(sc) != jax.tree.structure(updates):
            sc = jax.tree.map(lambda _: sc, updates)
        return jax.tree.map(lambda u, k: u * jnp.asarray(k, u.dtype), updates, sc), state

    return optax.GradientTransformation(init_fn, update_fn)


def _zero_masked(mask: Any) -> optax.GradientTransformation:
    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        m = mask
        if jax.tree.structure(m) != jax.tree.structure(updates):
            m = jax.tree.map(lambda _: m, updates)
        return jax.tree.map(lambda u, k: jnp.where(k, u, 0.0), updates, m), state

    return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------- driver


class RunResult(NamedTuple):
    """Result of :func:`run`.

    Attributes:
      params: best parameters of each sample (pytree, batch axis first).
      loss: ``(B,)`` best loss of each sample.
      final_params: parameters after the last step.
      steps: ``(B,) int32`` steps each sample was active.
      history: ``(T, B)`` loss at every step taken (numpy), ``T`` the steps run.
    """

    params: Any
    loss: Array
    final_params: Any
    steps: Array
    history: np.ndarray


def _plateau_state(opt_state: Any) -> PlateauState | None:
    for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, PlateauState)):
        if isinstance(s, PlateauState):
            return s
    return None


def _make_chunk(loss_fn: Callable, optimizer: Any, length: int):
    def step(carry, _):
        params, opt_state, best_params, best_loss = carry

        def total(p):
            losses, aux = loss_fn(p)
            return jnp.sum(jnp.where(jnp.isfinite(losses), losses, 0.0)), (losses, aux)

        (_, (losses, aux)), grads = jax.value_and_grad(total, has_aux=True)(params)
        better = jnp.isfinite(losses) & (losses < best_loss)
        best_params = jax.tree.map(
            lambda b, p: jnp.where(_bcast(better, p) > 0, p, b), best_params, params
        )
        best_loss = jnp.where(better, losses, best_loss)
        updates, opt_state = optimizer.update(grads, opt_state, params, value=losses)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, best_params, best_loss), (losses, aux)

    def chunk(params, opt_state, best_params, best_loss):
        carry, (losses, aux) = jax.lax.scan(
            step, (params, opt_state, best_params, best_loss), None, length=length
        )
        return carry, losses, aux

    return jax.jit(chunk)


def run(
    loss_fn: Callable[[Any], tuple[Array, Any]],
    params: Any,
    optimizer: Any,
    *,
    steps: int = 300,
    chunk: int = 25,
    callback: Callable[[int, Array], None] | None = None,
) -> RunResult:
    """Minimise per-sample losses with a per-sample optimizer (one jitted step per batch).

    Args:
      loss_fn: ``loss_fn(params) -> (losses (B,), aux)``, differentiable, jit-compatible.
      params: initial parameters (pytree, batch axis first).
      optimizer: e.g. :func:`descriptor_optimizer` (receives ``value=losses``).
      steps: maximum number of steps.
      chunk: steps per jitted ``lax.scan`` (the host checks for early stop between chunks).
      callback: called as ``callback(steps_done, losses (B,))`` after each chunk.

    Returns:
      :class:`RunResult` (best parameters per sample, best losses, ...).
    """
    opt_state = optimizer.init(params)
    b = _batch_size(params)
    dtype = jax.tree.leaves(params)[0].dtype
    best_params, best_loss = params, jnp.full((b,), jnp.inf, dtype)
    fns: dict[int, Any] = {}
    history = []
    done = 0
    while done < steps:
        release_compiled_programs()  # near the process's map cap: drop cached programs
        n = min(chunk, steps - done)
        if n not in fns:
            fns[n] = _make_chunk(loss_fn, optimizer, n)
        (params, opt_state, best_params, best_loss), losses, _ = fns[n](
            params, opt_state, best_params, best_loss
        )
        history.append(np.asarray(losses))
        done += n
        if callback is not None:
            callback(done, losses[-1])
        ps = _plateau_state(opt_state)
        if ps is not None and not bool(jnp.any(ps.active)):
            break
    ps = _plateau_state(opt_state)
    steps_taken = ps.steps if ps is not None else jnp.full((b,), done, jnp.int32)
    return RunResult(best_params, best_loss, params, steps_taken, np.concatenate(history))


# ----------------------------------------------------------------------------- Wyckoff stage


@dataclasses.dataclass(frozen=True)
class DescriptorResult:
    """Result of :func:`optimize_wyckoff`.

    Attributes:
      wc: optimised :class:`~jaxcsp.symmetry.WyckoffCrystals` (best parameters per sample).
      loss: ``(B,)`` final descriptor loss (recomputed at ``wc`` with a fresh neighbor list;
        without the optional smooth-CN term).
      initial_loss: ``(B,)`` loss of the input (same definition).
      spectra: ``(B, S, F)`` site spectra at ``wc``.
      initial_spectra: ``(B, S, F)`` site spectra of the input.
      steps: ``(B,) int32`` steps each sample was active.
      history: ``(T, B)`` loss per step (numpy).
      reallocations: how often the neighbor-list shapes were re-chosen.
    """

    wc: Any
    loss: Array
    initial_loss: Array
    spectra: Array
    initial_spectra: Array
    steps: Array
    history: np.ndarray
    reallocations: int


#: PyXtal's bounds in ``lego.builder.minimize_from_x``: lengths 1.5–50 Å, angles 30–150°.
PYXTAL_CELL_BOX = ((1.5, 1.5, 1.5, 30.0, 30.0, 30.0), (50.0, 50.0, 50.0, 150.0, 150.0, 150.0))


def site_edge_spec(
    wc: Any,
    cutoff: float,
    *,
    previous: Any = None,
    min_edges_per_site: int = 12,
    cell_headroom: float = 1.0,
) -> Any:
    """Edge-list candidates and capacity for optimising ``wc`` (host side).

    The sites' representative atoms of ``reconstruct(wc, wrap=False)`` are the query rows
    (:func:`jaxcsp.descriptors.edge_list_spec_for_sites`); each crystal's image box allows its
    cell widths to shrink by half (cells densify toward the target; re-testing candidates is
    cheap, recompiling for a new spec is not), and the capacity is twice the current edges and
    at least ``min_edges_per_site`` per site (structures densify on their way to CN = 3),
    rounded up so that few distinct shapes are compiled.

    Args:
      wc: :class:`~jaxcsp.symmetry.WyckoffCrystals` (concrete).
      cutoff: neighbor cutoff in Å (:func:`loss_cutoff`).
      previous: the :class:`~jaxcsp.neighbors.EdgeListSpec` that overflowed, if any: the new
        one keeps at least its image boxes and 1.5 times its capacity.
      min_edges_per_site: lower bound on the capacity per real site.
      cell_headroom: image boxes cover cell widths down to ``1 / (1 + cell_headroom)`` of now.

    Returns:
      :class:`~jaxcsp.neighbors.EdgeListSpec`.
    """
    kw: dict[str, Any] = dict(
        capacity_headroom=1.0, cell_headroom=cell_headroom, min_edges_per_row=min_edges_per_site
    )
    if previous is not None:
        kw["min_box"] = np.asarray(previous.box)
    spec = edge_list_spec_for_sites(wc, cutoff, **kw)
    if previous is not None and spec.max_edges < 1.5 * previous.max_edges:
        spec = dataclasses.replace(spec, max_edges=math.ceil(1.5 * previous.max_edges))
    return spec


def loss_cutoff(wc: Any, rcut: float, *, cn_weight: float = 0.0, cn_reach: float = 0.5) -> float:
    """Neighbor cutoff (Å) the loss of :func:`optimize_wyckoff` needs: ``rcut``, or the largest
    bond cutoff of the species present plus ``cn_reach`` when the smooth-CN term is on."""
    if not cn_weight:
        return float(rcut)
    z = np.unique(np.asarray(wc.site_species)[np.asarray(wc.site_mask)])
    return max(float(rcut), float(bond_cutoffs()[np.ix_(z, z)].max()) + cn_reach)


def _as_wc(wc: Any, p: dict) -> Any:
    return with_free_variables(wc, p["cell"], p["coords"])


def _wyckoff_optimizer(static: tuple, wc: Any) -> Any:
    opt_kw = dict(static[0])
    lo = _normalize_box(PYXTAL_CELL_BOX[0], wc.cell.dtype)
    hi = _normalize_box(PYXTAL_CELL_BOX[1], wc.cell.dtype)
    cell_step = opt_kw.pop("cell_step")
    wrap = opt_kw.pop("wrap_coords")
    lr = opt_kw.pop("learning_rate")
    return descriptor_optimizer(
        lr,
        lower={"cell": lo, "coords": 0.0},
        upper={"cell": hi, "coords": 1.0},
        periodic={"cell": False, "coords": bool(wrap)},
        mask={"cell": wc.cell_free, "coords": wc.coords_free & wc.site_mask[..., None]},
        update_scale={"cell": cell_step, "coords": 1.0},
        **opt_kw,
    )


def _normalize_box(values: Any, dtype: Any) -> Array:
    """Cell parameters (Å, degrees) ``(6,)`` normalised like the free variables."""
    return normalize_cell(jnp.asarray(values, dtype))


@functools.partial(jax.jit, static_argnames=("loss_kw",))
def _wyckoff_loss(wc, reference, spec, *, loss_kw):
    loss, aux = descriptor_loss(wc, reference, spec, **dict(loss_kw))
    return loss, aux["spectra"], aux["overflow"]


def _as_wc_aux(wc: Any, p: dict, aux: Any) -> Any:
    del aux
    return _as_wc(wc, p)


@functools.partial(jax.jit, static_argnames=("length", "static", "to_wc", "make_opt"))
def _descriptor_chunk(carry, wc, reference, spec, aux, *, length, static, to_wc, make_opt):
    """``length`` optimizer steps of the descriptor loss of ``to_wc(wc, params, aux)``.

    ``to_wc`` maps the optimised parameters (a pytree with a leading batch axis) to crystals:
    the Wyckoff free variables themselves, or a decoder's latents; ``make_opt(static, wc)``
    builds the optax transformation. Both are static (hashable) so the compiled chunk is
    shared by every call with the same shapes and settings.
    """
    opt = make_opt(static, wc)
    loss_kw = dict(static[1])

    def step(carry, _):
        params, opt_state, best_params, best_loss = carry
        # candidates are re-tested every step (cheap: only the site representatives' triples)
        c = reconstruct(to_wc(wc, jax.lax.stop_gradient(params), aux), wrap=False)
        edges = edge_list(spec, c)

        def total(p):
            losses, aux_ = descriptor_loss(
                to_wc(wc, p, aux), reference, None, edges=edges, **loss_kw
            )
            return jnp.sum(jnp.where(jnp.isfinite(losses), losses, 0.0)), (losses, aux_["overflow"])

        (_, (losses, overflow)), grads = jax.value_and_grad(total, has_aux=True)(params)
        better = jnp.isfinite(losses) & (losses < best_loss)
        best_params = jax.tree.map(
            lambda b, p: jnp.where(_bcast(better, p) > 0, p, b), best_params, params
        )
        best_loss = jnp.where(better, losses, best_loss)
        updates, opt_state = opt.update(grads, opt_state, params, value=losses)
        params = optax.apply_updates(params, updates)
        return (params, opt_state, best_params, best_loss), (losses, overflow)

    carry, (losses, overflow) = jax.lax.scan(step, carry, None, length=length)
    return carry, losses, jnp.any(overflow, axis=0)


def descriptor_loop(
    wc: Any,
    reference: Array,
    params: Any,
    *,
    to_wc: Callable,
    make_opt: Callable,
    static: tuple,
    cutoff: float,
    spec: Any,
    steps: int,
    chunk: int,
    aux: Any = None,
    callback: Callable[[int, Array], None] | None = None,
) -> tuple[tuple, np.ndarray, Any, int]:
    """Host loop of the descriptor optimisers: jitted chunks, overflow re-allocation, plateau stop.

    Shared by :func:`optimize_wyckoff` (parameters = Wyckoff free variables) and latent-space
    refinement (:func:`jaxcsp.models.latent.refine_latents`, parameters = decoder latents).

    Args:
      wc: template :class:`~jaxcsp.symmetry.WyckoffCrystals` (conditions, index maps).
      reference: ``(F,)`` target spectrum.
      params: initial parameters (pytree, leading batch axis ``B``).
      to_wc: static ``to_wc(wc, params, aux) -> WyckoffCrystals`` (pure ``jnp``).
      make_opt: static ``make_opt(static, wc) -> optax`` transformation (called with ``value=``).
      static: hashable ``(optimizer settings, loss settings)`` tuples.
      cutoff: neighbor cutoff of the loss (Å).
      spec: :class:`~jaxcsp.neighbors.EdgeListSpec` to start with.
      steps, chunk: maximum steps and steps per jitted chunk.
      aux: traced data ``to_wc`` needs (e.g. decoder parameters and conditions).
      callback: ``callback(steps_done, losses)`` after each chunk.

    Returns:
      ``(carry, history (T, B), spec, reallocations)`` with ``carry = (params, opt_state,
      best_params, best_loss)``.
    """
    opt = make_opt(static, wc)
    opt_state = opt.init(params)
    b = wc.batch_size
    dtype = wc.cell.dtype
    carry = (params, opt_state, params, jnp.full((b,), jnp.inf, dtype))
    history, done, reallocations = [], 0, 0
    while done < steps:
        release_compiled_programs()  # near the process's map cap: drop cached programs
        n = min(chunk, steps - done)
        new, losses, overflow = _descriptor_chunk(
            carry, wc, reference, spec, aux, length=n, static=static, to_wc=to_wc, make_opt=make_opt
        )
        if bool(jnp.any(overflow)):
            # a crystal outgrew its image box or the edge capacity during this chunk: re-choose
            # the spec (from the chunk's end state, keeping at least the old boxes and 1.5x the
            # capacity) and redo the chunk from its start
            reallocations += 1
            if reallocations > 20:
                raise RuntimeError("edge-list shapes keep overflowing during optimisation")
            spec = site_edge_spec(to_wc(wc, new[0], aux), cutoff, previous=spec)
            continue
        carry = new
        history.append(np.asarray(losses))
        done += n
        if callback is not None:
            callback(done, losses[-1])
        ps = _plateau_state(carry[1])
        if ps is not None and not bool(jnp.any(ps.active)):
            break
    hist = np.concatenate(history) if history else np.zeros((0, b))
    return carry, hist, spec, reallocations


def optimize_wyckoff(
    wc: Any,
    reference: Any,
    settings: SO3Settings = SO3Settings(),
    *,
    steps: int = 300,
    learning_rate: float = 5e-3,
    cell_step: float = 0.1,
    weighting: str = "multiplicity",
    per_component: bool = True,
    wrap_coords: bool = True,
    cn_weight: float = 0.0,
    cn_target: float = 3.0,
    cn_width: float = 0.1,
    cn_reach: float = 0.5,
    chunk: int = 25,
    spec: Any = None,
    callback: Callable[[int, Array], None] | None = None,
    mesh: Any = None,
    **optimizer_kwargs: Any,
) -> DescriptorResult:
    """Algorithm 1: optimise the free variables of a Wyckoff batch toward a reference spectrum.

    Free variables: the cell normalised with :data:`jaxcsp.symmetry.DEFAULT_BOUNDS` (a / 50 Å,
    angle / 180°), clamped to PyXtal's box (1.5–50 Å, 30–150°), and the fractional
    coordinates, wrapped into [0, 1) (``wrap_coords=False`` clamps them to [0, 1] as the seed
    does). Tied and fixed entries and padding sites never move. Chunks of ``chunk`` steps run
    as one jitted ``lax.scan``; the compiled chunk is reused by every call with the same shapes
    and settings. Every step re-tests the candidate (site representative, atom, image) triples
    of :func:`site_edge_spec` and evaluates only the real edges
    (:func:`jaxcsp.neighbors.edge_list`).

    Args:
      wc: :class:`~jaxcsp.symmetry.WyckoffCrystals` batch (float32 or float64).
      reference: ``(F,)`` target spectrum (e.g. :func:`jaxcsp.descriptors.reference_spectrum`
        with the same ``settings``).
      settings: descriptor setting (:class:`~jaxcsp.descriptors.SO3Settings`; part of the
        compiled chunk's static key).
      steps: maximum optimisation steps.
      learning_rate: AdamW learning rate in normalised units.
      cell_step: multiplier of the cell's step relative to the coordinates' (the normalised cell
        spans 50 Å, so equal steps would move lengths much faster than atoms).
      weighting, per_component: loss definition (see :func:`jaxcsp.descriptors.descriptor_loss`).
      wrap_coords: wrap (True) or clamp (False) the coordinates.
      cn_weight, cn_target, cn_width, cn_reach: optional smooth-CN term of the loss (see
        :func:`jaxcsp.descriptors.descriptor_loss`; off by default).
      chunk: steps per jitted scan; edge-list overflow (a cell that became too thin for its
        image box, or more edges than the capacity) is checked between chunks and the chunk is
        recomputed with a larger spec when needed.
      spec: :class:`~jaxcsp.neighbors.EdgeListSpec` to start with (default
        :func:`site_edge_spec` of ``wc`` at the loss cutoff).
      callback: ``callback(steps_done, losses)`` after each chunk.
      mesh: a :func:`jaxcsp.parallel.batch_mesh` to split the batch over several devices
        (padded to a multiple of the mesh size with copies of the first crystal, trimmed from
        the result); the same result as one device, up to the summation order of the loss.
      **optimizer_kwargs: more :func:`descriptor_optimizer` arguments (``patience``,
        ``factor``, ``max_norm``, ``tol``, ``weight_decay``, ``b1``, ``b2``, ...).

    Returns:
      :class:`DescriptorResult`.
    """
    settings = _as_settings(settings)
    validate_free_variables(wc)
    n_real = wc.batch_size
    if mesh is not None:
        wc = parallel.shard_batch(parallel.pad_batch(wc, parallel.padded_size(n_real, mesh)), mesh)
    dtype = wc.cell.dtype
    reference = jnp.asarray(reference, dtype)
    loss_kw = dict(
        settings=settings,
        weighting=weighting,
        per_component=bool(per_component),
        cn_weight=float(cn_weight),
        cn_target=float(cn_target),
        cn_width=float(cn_width),
        cn_reach=float(cn_reach),
    )
    report_kw = tuple(sorted({**loss_kw, "cn_weight": 0.0}.items()))
    static = (
        tuple(
            sorted(
                {
                    "learning_rate": float(learning_rate),
                    "cell_step": float(cell_step),
                    "wrap_coords": bool(wrap_coords),
                    **optimizer_kwargs,
                }.items()
            )
        ),
        tuple(sorted(loss_kw.items())),
    )
    cutoff = loss_cutoff(wc, settings.rcut, cn_weight=cn_weight, cn_reach=cn_reach)
    cell_u, coords = free_variables(wc)
    lo = _normalize_box(PYXTAL_CELL_BOX[0], dtype)
    hi = _normalize_box(PYXTAL_CELL_BOX[1], dtype)
    params = {"cell": jnp.clip(cell_u, lo, hi).astype(dtype), "coords": coords.astype(dtype)}
    if mesh is not None:
        params = parallel.shard_batch(params, mesh)
    if spec is None or spec.cutoff < cutoff:
        spec = site_edge_spec(_as_wc(wc, params), cutoff)
    loss0, spectra0, over0 = _wyckoff_loss(_as_wc(wc, params), reference, spec, loss_kw=report_kw)
    if bool(jnp.any(over0)):
        spec = site_edge_spec(_as_wc(wc, params), cutoff, previous=spec)
    carry, history, spec, reallocations = descriptor_loop(
        wc,
        reference,
        params,
        to_wc=_as_wc_aux,
        make_opt=_wyckoff_optimizer,
        static=static,
        cutoff=cutoff,
        spec=spec,
        steps=steps,
        chunk=chunk,
        callback=callback,
    )
    reallocations += int(bool(jnp.any(over0)))
    b = wc.batch_size
    best = carry[2]
    final = _as_wc(wc, best)
    final = final.replace(cell=jnp.where(wc.cell_free, final.cell, wc.cell))
    loss1, spectra1, over1 = _wyckoff_loss(final, reference, spec, loss_kw=report_kw)
    if bool(jnp.any(over1)):
        spec_f = site_edge_spec(final, cutoff)
        loss1, spectra1, _ = _wyckoff_loss(final, reference, spec_f, loss_kw=report_kw)
    ps = _plateau_state(carry[1])
    steps_done = ps.steps if ps is not None else jnp.full((b,), len(history), jnp.int32)
    if b != n_real:  # rows added to fill the mesh
        keep = np.arange(n_real)
        final = final.take(keep)
        loss0, loss1, steps_done, spectra0, spectra1 = (
            jnp.asarray(np.asarray(a)[keep]) for a in (loss0, loss1, steps_done, spectra0, spectra1)
        )
        history = history[:, keep]
    return DescriptorResult(
        wc=final,
        loss=loss1,
        initial_loss=loss0,
        spectra=spectra1,
        initial_spectra=spectra0,
        steps=steps_done,
        history=history,
        reallocations=reallocations,
    )
