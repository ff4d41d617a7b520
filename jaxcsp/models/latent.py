"""Conditional latent-space refinement (the seed's Algorithm 2).

For crystals whose local updates in free-variable space stalled, optimise the CVAE latent ``z``
under each crystal's fixed condition ``C = (spg, Wyckoff sites)``::

    min_z  loss(reconstruct(inverse_gmm(decoder(z, C))))

with the same descriptor loss and the same per-sample conditioning (per-sample gradient
clipping, AdamW, per-sample plateau step reduction) as the representation-space optimiser
(:func:`jaxcsp.optimize.descriptor.optimize_wyckoff`), through the same host loop
(:func:`jaxcsp.optimize.descriptor.descriptor_loop`). Decoding is the relaxed inverse GMM
transform (softmax over modes), so ``jax.grad`` flows from the SO(3) spectrum to ``z``.
Because the decoder models correlations between the cell and the coordinates, a step in ``z``
moves them together, which can carry a crystal between structural modes that coordinate-wise
steps do not reach.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.descriptors._so3 import SO3Settings, _as_settings
from jaxcsp.errors import InvalidArgumentError
from jaxcsp.models.cvae import (
    CVAE,
    MAX_SLOTS,
    CVAEModel,
    apply_columns,
    condition_vector,
    decode_columns,
)
from jaxcsp.optimize.descriptor import (
    _wyckoff_loss,
    descriptor_loop,
    descriptor_optimizer,
    loss_cutoff,
    site_edge_spec,
)

__all__ = ["LatentResult", "refine_latents"]

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class _Decoder:
    """Static ``to_wc`` of :func:`~jaxcsp.optimize.descriptor.descriptor_loop`: z → crystals."""

    module: CVAE

    def __call__(self, wc: Any, p: dict, aux: tuple) -> Any:
        params, transform, cond = aux
        values = decode_columns(self.module, params, transform, p["z"], cond, soft=True)
        return apply_columns(wc, values)


def _latent_optimizer(static: tuple, wc: Any) -> Any:
    kw = dict(static[0])
    lr = kw.pop("learning_rate")
    bound = kw.pop("bound")
    return descriptor_optimizer(lr, lower={"z": -bound}, upper={"z": bound}, **kw)


@dataclasses.dataclass(frozen=True)
class LatentResult:
    """Result of :func:`refine_latents`.

    Attributes:
      wc: decoded :class:`~jaxcsp.symmetry.WyckoffCrystals` at the best latent of each crystal
        (relaxed decoding, the structure the loss was evaluated on).
      z: ``(B, L)`` best latents.
      z0: ``(B, L)`` initial latents.
      loss: ``(B,)`` descriptor loss of ``wc`` (without the smooth-CN term).
      initial_loss: ``(B,)`` loss of the structures decoded from ``z0``.
      history: ``(T, B)`` loss per step.
    """

    wc: Any
    z: Array
    z0: Array
    loss: Array
    initial_loss: Array
    history: np.ndarray


def refine_latents(
    model: CVAEModel,
    wc: Any,
    reference: Any,
    settings: SO3Settings = SO3Settings(),
    *,
    init: str = "encode",
    key: Any = None,
    steps: int = 100,
    learning_rate: float = 0.05,
    bound: float = 5.0,
    weighting: str = "multiplicity",
    per_component: bool = True,
    cn_weight: float = 1.0,
    cn_target: float = 3.0,
    cn_width: float = 0.1,
    cn_reach: float = 0.5,
    chunk: int = 25,
    **optimizer_kwargs: Any,
) -> LatentResult:
    """Algorithm 2: optimise CVAE latents of ``wc`` (conditions fixed) toward ``reference``.

    Args:
      model: a trained conditional :class:`~jaxcsp.models.cvae.CVAEModel`.
      wc: :class:`~jaxcsp.symmetry.WyckoffCrystals` (the invalid set): their conditions and
        species are kept; their free variables seed ``z`` when ``init="encode"``.
      reference: ``(F,)`` target spectrum (e.g. graphite's, from
        :func:`jaxcsp.descriptors.reference_spectrum` with the same ``settings``).
      settings: descriptor setting (:class:`~jaxcsp.descriptors.SO3Settings`).
      init: ``"encode"`` (posterior mean of each crystal) or ``"prior"`` (``z ~ N(0, I)``,
        needs ``key``): the latent restart of each round.
      key: ``jax.random`` key for ``init="prior"``.
      steps, learning_rate: optimisation steps and AdamW learning rate (latent units).
      bound: ``z`` is kept in ``[-bound, bound]`` (the prior's support, practically).
      weighting, per_component: descriptor loss definition (see
        :func:`jaxcsp.descriptors.descriptor_loss`).
      cn_weight, cn_target, cn_width, cn_reach: smooth-CN term of the loss (on by default, as
        in :func:`jaxcsp.design.design`).
      chunk: steps per jitted scan.
      **optimizer_kwargs: more :func:`~jaxcsp.optimize.descriptor.descriptor_optimizer`
        arguments (``patience``, ``factor``, ``max_norm``, ...).

    Returns:
      :class:`LatentResult`.

    Raises:
      UnknownConditionError: a condition the model never saw.
      InvalidArgumentError: ``model`` is the unconditional VAE, bad ``init``, ``settings``
        not an :class:`~jaxcsp.descriptors.SO3Settings`.
    """
    settings = _as_settings(settings)
    if not model.conditional:
        raise InvalidArgumentError(
            "latent refinement keeps the condition fixed: it needs the conditional model",
            argument="model",
        )
    model.check_conditions(wc)
    dtype = wc.cell.dtype
    reference = jnp.asarray(reference, dtype)
    if init == "encode":
        z0, _ = model.encode(wc)
    elif init == "prior":
        if key is None:
            raise InvalidArgumentError("init='prior' needs a key", argument="key")
        z0 = jax.random.normal(key, (wc.batch_size, model.latent_dim))
    else:
        raise InvalidArgumentError(
            f"init must be 'encode' or 'prior', got {init!r}", argument="init", value=init
        )
    z0 = jnp.asarray(z0, dtype)
    params = jax.tree.map(lambda a: a.astype(dtype), model.params)
    transform = jax.tree.map(lambda a: a.astype(dtype), model.transform)
    cond = condition_vector(wc.spg, np.asarray(wc.wyckoff)[:, :MAX_SLOTS]).astype(dtype)
    aux = (params, transform, cond)
    to_wc = _Decoder(model.module)
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
                    "bound": float(bound),
                    **optimizer_kwargs,
                }.items()
            )
        ),
        tuple(sorted(loss_kw.items())),
    )
    cutoff = loss_cutoff(wc, settings.rcut, cn_weight=cn_weight, cn_reach=cn_reach)
    p0 = {"z": jnp.clip(z0, -bound, bound)}
    start = to_wc(wc, p0, aux)
    spec = site_edge_spec(start, cutoff)
    loss0, _, over0 = _wyckoff_loss(start, reference, spec, loss_kw=report_kw)
    if bool(jnp.any(over0)):
        spec = site_edge_spec(start, cutoff, previous=spec)
        loss0, _, _ = _wyckoff_loss(start, reference, spec, loss_kw=report_kw)
    carry, history, spec, _ = descriptor_loop(
        wc,
        reference,
        p0,
        to_wc=to_wc,
        make_opt=_latent_optimizer,
        static=static,
        cutoff=cutoff,
        spec=spec,
        steps=int(steps),
        chunk=int(chunk),
        aux=aux,
    )
    best = carry[2]
    final = to_wc(wc, best, aux)
    loss1, _, over1 = _wyckoff_loss(final, reference, spec, loss_kw=report_kw)
    if bool(jnp.any(over1)):
        loss1, _, _ = _wyckoff_loss(
            final, reference, site_edge_spec(final, cutoff), loss_kw=report_kw
        )
    return LatentResult(final, best["z"], p0["z"], loss1, loss0, history)
