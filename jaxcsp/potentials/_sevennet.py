"""SevenNet-0 in JAX: NequIP-style equivariant message passing on jaxcsp neighbor lists.

Contract:

* :func:`sevennet0` returns a :class:`~jaxcsp.potentials.Potential` (``cutoff`` 5 Å, the 89
  elements SevenNet-0 was trained on) whose energy is SevenNet-0's, evaluated by a Flax
  implementation of its architecture (:class:`SevenNet`); forces and stress come from autodiff
  like every other potential, so it jits, vmaps and differentiates end to end (with respect to
  positions, the cell, Wyckoff free variables through :func:`jaxcsp.symmetry.reconstruct`, and the
  weights).
* The weights are the ones the ``sevenn`` wheel installs, converted once by
  :mod:`jaxcsp.potentials._sevennet_convert` (torch is needed for that one step only) and cached
  as a msgpack file in the user's cache directory (:func:`cache_dir`); later runs read the cache
  and never import torch.
* Precision: the published weights are float32; the model computes in the crystal's float dtype.
  In float64 it reproduces the torch model run in float64 to ~1e-13 relative (energies, forces,
  stresses; ``tests/test_sevennet.py``); in float32 to float32 rounding.
* Batches: ``Potential.energies`` (used by :func:`jaxcsp.calculate` and the relaxers) processes
  the whole batch as one graph. Neighbor slots are flattened, live edges sorted first, and the
  per-edge work of each convolution (radial MLP + tensor product, ~90 % of the cost) runs in
  chunks of :attr:`SevenNet.chunk` slots under :func:`jax.lax.cond` (chunks with no live edge
  are skipped) and :func:`jax.checkpoint` (reverse mode keeps only each chunk's inputs). Padded
  slots, typically most of a list whose capacity the densest structure of the batch sets, then
  cost almost nothing. ``vmap`` of the single-crystal ``energy`` gives the same numbers.

Architecture (SevenNet's ``E3_equivariant_model`` with ``interaction_type='nequip'``; every
normalisation constant is written out where it is used):

* edges ``r_ij = r_j - r_i + shift @ lattice`` with ``0 < |r_ij| < cutoff``; radial features
  ``(2 / r_c) sin(c_n r) / r`` (8 trained Bessel frequencies ``c_n``) times the XPLOR envelope
  (1 below ``r_on`` = 4.5 Å, ``(r_c² - r²)² (r_c² + 2r² - 3r_on²) / (r_c² - r_on²)³`` above);
  spherical harmonics ``Y^l(r̂)`` for l ≤ lmax, component normalisation (e3nn-jax's, identical to
  e3nn's);
* a one-hot species embedding and an equivariant linear layer to the first node features;
* per interaction block: ``sc = Linear(x)``; ``x = Linear(x)``; the convolution
  ``x_i = (1/d) Σ_j TP_uvu(x_j, Y(r̂_ij); W(|r_ij|))`` with per-edge path weights ``W`` from a
  radial MLP (e3nn ``FullyConnectedNet``) and ``d = sqrt(avg. neighbors)``; ``x = Linear(x) + sc``;
  a gate (normalised SiLU on scalars, normalised SiLU gates on l > 0);
* readout ``Linear(128x0e → 64x0e) → Linear(64x0e → 1x0e)``, per-species scale and shift,
  summed over atoms.

e3nn's conventions, made explicit: an equivariant linear map sums its paths into each output
block and divides by ``sqrt(fan_in)`` (the summed multiplicities feeding that block; "element"
normalisation); the 'uvu' tensor product path into an irrep of dimension ``2l+1`` carries
``sqrt((2l+1) / Σ mul_in2)`` with normalised Wigner 3j symbols; each MLP layer divides by
``sqrt(h_in)``; activations are rescaled to unit second moment under a standard normal (the
constants e3nn estimated, stored with the weights).
"""

from __future__ import annotations

import functools
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.crystal import Crystals
from jaxcsp.potentials._base import Potential, edge_vectors_single
from jaxcsp.potentials._sevennet_arch import (
    SevenNetArch,
    SevenNetBlock,
    SevenNetCheckpointError,
    blocks,
    linear_instructions,
    linear_numel,
)

__all__ = [
    "Convolution",
    "IrrepsLinear",
    "SevenNet",
    "SevenNetArch",
    "SevenNetBlock",
    "SevenNetCheckpointError",
    "cache_dir",
    "init_params",
    "load_sevennet",
    "save_sevennet",
    "sevennet0",
]

Array = jax.Array


class IrrepsLinear(nn.Module):
    """e3nn's equivariant linear map without bias, on flat features ``(..., dim_in)``.

    Weights: one flat vector ``weight (Σ mul_in·mul_out,)`` (the paths' ``(mul_in, mul_out)``
    matrices in e3nn's order), so the published tensors map one to one. Each output block is
    ``Σ_paths x_in W / sqrt(Σ mul_in)``.
    """

    irreps_in: str
    irreps_out: str

    @nn.compact
    def __call__(self, x: Array) -> Array:
        ins, outs = blocks(self.irreps_in), blocks(self.irreps_out)
        paths = linear_instructions(self.irreps_in, self.irreps_out)
        numel = linear_numel(self.irreps_in, self.irreps_out)
        w = self.param("weight", nn.initializers.normal(1.0), (numel,), x.dtype)
        fan_in = [sum(ins[i][0] for i, o2 in paths if o2 == o) for o in range(len(outs))]
        acc: list[Any] = [None] * len(outs)
        offset = 0
        lead = x.shape[:-1]
        for i, o in paths:
            mul_in, l, a, b = ins[i]
            mul_out = outs[o][0]
            W = w[offset : offset + mul_in * mul_out].reshape(mul_in, mul_out)
            offset += mul_in * mul_out
            xi = x[..., a:b].reshape(*lead, mul_in, 2 * l + 1)
            y = jnp.einsum("...ud,uw->...wd", xi, W) / math.sqrt(fan_in[o])
            acc[o] = y if acc[o] is None else acc[o] + y
        pieces = []
        for o, (mul, l, _, _) in enumerate(outs):
            y = acc[o] if acc[o] is not None else jnp.zeros((*lead, mul, 2 * l + 1), x.dtype)
            pieces.append(y.reshape(*lead, mul * (2 * l + 1)))
        return jnp.concatenate(pieces, axis=-1)


def _act(name: str, x: Array) -> Array:
    if name == "silu":
        return jax.nn.silu(x)
    if name == "tanh":
        return jnp.tanh(x)
    raise ValueError(f"unknown activation {name!r}")


def radial_mlp(weights: Sequence[Array], act_scale: float, h: Array) -> Array:
    """e3nn ``FullyConnectedNet``: ``h → act(h W / sqrt(h_in)) · scale``, last layer linear."""
    for k, W in enumerate(weights):
        h = h @ W / math.sqrt(W.shape[0])
        if k < len(weights) - 1:
            h = jax.nn.silu(h) * act_scale
    return h


def tp_messages(blk: SevenNetBlock, w: Array, xj: Array, sh: Array) -> Array:
    """'uvu' tensor product of neighbor features and edge harmonics, one row per edge.

    ``w (E, Σ mul)`` per-edge path weights, ``xj (E, dim_x)``, ``sh (E, dim_filter)``;
    returns ``(E, dim_mid)``. Path into an irrep of dimension ``2l+1``: ``sqrt((2l+1)/fan)``
    times e3nn's normalised Wigner 3j, ``fan`` = Σ mul_in2 over the paths into that block.
    """
    xb, fb, mb = blocks(blk.irreps_x), blocks(blk.irreps_filter), blocks(blk.irreps_mid)
    fan = [sum(fb[j][0] for _, j, o2 in blk.tp_paths if o2 == o) for o in range(len(mb))]
    e = xj.shape[0]
    out: list[Any] = [None] * len(mb)
    offset = 0
    for i, j, o in blk.tp_paths:
        mul, l1, a, b = xb[i]
        _, l2, c, d = fb[j]
        l3 = mb[o][1]
        cg = jnp.asarray(e3nn.clebsch_gordan(l1, l2, l3), xj.dtype)
        norm = math.sqrt((2 * l3 + 1) / fan[o])
        wu = w[:, offset : offset + mul] * norm
        offset += mul
        x1 = xj[:, a:b].reshape(e, mul, 2 * l1 + 1)
        t = jnp.einsum("ijk,ej->eik", cg, sh[:, c:d])  # (E, 2l1+1, 2l3+1)
        msg = wu[:, :, None] * jnp.einsum("eui,eik->euk", x1, t)
        out[o] = msg if out[o] is None else out[o] + msg
    pieces = [
        (out[o] if out[o] is not None else jnp.zeros((e, mul, 2 * l + 1), xj.dtype)).reshape(e, -1)
        for o, (mul, l, _, _) in enumerate(mb)
    ]
    return jnp.concatenate(pieces, axis=-1)


class Convolution(nn.Module):
    """The NequIP convolution of one block on a flat, chunked edge list.

    ``x (M, dim_x)`` node features; per edge slot (``S = chunks × chunk``, live slots first):
    ``sh (S, dim_filter)``, enveloped radial features ``radial (S, num_basis)``, ``center (S,)``
    and ``neighbor (S,)`` node indices, ``live (S,)`` bool; ``n_live`` the number of live slots.
    Returns ``x_i = (1/d) Σ_j TP(x_j, Y(r̂_ij); W(|r_ij|))``, ``(M, dim_mid)``.

    The per-edge work (the radial MLP dominates it) runs chunk by chunk under
    :func:`jax.lax.cond`, so chunks past ``n_live`` cost nothing when the batch is processed as
    one graph, and under :func:`jax.checkpoint`, so reverse mode stores only each chunk's inputs.
    """

    block: SevenNetBlock
    chunk: int

    @nn.compact
    def __call__(self, x, sh, radial, center, neighbor, live, n_live):
        blk = self.block
        xb = blocks(blk.irreps_x)
        numel = sum(xb[i][0] for i, _, _ in blk.tp_paths)
        sizes = (radial.shape[-1], *blk.radial_hidden, numel)

        def init_mlp(key):
            keys = jax.random.split(key, len(sizes) - 1)
            return {
                f"layer{k}": jax.random.normal(keys[k], (sizes[k], sizes[k + 1]), x.dtype)
                for k in range(len(sizes) - 1)
            }

        mlp = self.param("weight_nn", init_mlp)
        ws = [mlp[f"layer{k}"] for k in range(len(sizes) - 1)]
        denominator = self.param("denominator", nn.initializers.ones, (), x.dtype)
        dim_mid = e3nn.Irreps(blk.irreps_mid).dim
        c = self.chunk
        n_chunks = sh.shape[0] // c

        @jax.checkpoint
        def messages(args):
            _, nbr, shc, radc, livec = args
            w = radial_mlp(ws, blk.radial_act_scale, radc) * livec[:, None]
            return tp_messages(blk, w, x[nbr], shc)

        def add(acc, args):
            return acc.at[args[0]].add(messages(args))

        def body(acc, inp):
            k, args = inp
            # chunks past the live slots leave the sums untouched (no work, no scatter)
            return jax.lax.cond(k * c < n_live, add, lambda acc, _: acc, acc, args), None

        chunked = jax.tree_util.tree_map(
            lambda a: a.reshape(n_chunks, c, *a.shape[1:]), (center, neighbor, sh, radial, live)
        )
        acc0 = jnp.zeros((x.shape[0], dim_mid), x.dtype)
        acc, _ = jax.lax.scan(body, acc0, (jnp.arange(n_chunks), chunked))
        return acc / denominator


def gate(x: Array, blk: SevenNetBlock) -> Array:
    """e3nn ``Gate``: ``[scalars | gates | gated]`` → ``[act(scalars) | act(gates)·gated]``."""
    sb, gb, vb = blocks(blk.gate_scalars), blocks(blk.gate_gates), blocks(blk.gate_gated)
    n_s = sb[-1][3] if sb else 0
    n_g = gb[-1][3] if gb else 0
    pieces = []
    for (_, _, a, b), act, scale in zip(sb, blk.scalar_acts, blk.scalar_act_scales, strict=True):
        pieces.append(_act(act, x[..., a:b]) * scale)
    if vb:
        # gate scalar n multiplies the n-th gated irrep, counting copies across blocks
        g = jnp.concatenate(
            [
                _act(act, x[..., n_s + a : n_s + b]) * scale
                for (_, _, a, b), act, scale in zip(
                    gb, blk.gate_acts, blk.gate_act_scales, strict=True
                )
            ],
            axis=-1,
        )
        used = 0
        for mul, l, a, b in vb:
            v = x[..., n_s + n_g + a : n_s + n_g + b].reshape(*x.shape[:-1], mul, 2 * l + 1)
            pieces.append((g[..., used : used + mul, None] * v).reshape(*x.shape[:-1], -1))
            used += mul
    return jnp.concatenate(pieces, axis=-1)


class SevenNet(nn.Module):
    """SevenNet's atomic energies on a padded neighbor list (one crystal or a whole batch).

    Call with ``types (M,)`` int species type index (any value on padding), ``mask (M,)`` bool,
    ``vectors (M, K, 3)`` edge vectors i→j in Å, ``index (M, K)`` int node index of neighbor j,
    ``edge_mask (M, K)`` bool. ``M`` nodes may be one crystal's atoms or a flattened batch (with
    ``index`` offset per crystal). Returns atomic energies ``(M,)`` in eV (zero on padding).

    Attributes:
      arch: the static architecture.
      chunk: edge slots per chunk of the convolutions (see :class:`Convolution`).
    """

    arch: SevenNetArch
    chunk: int = 512

    @nn.compact
    def __call__(
        self, types: Array, mask: Array, vectors: Array, index: Array, edge_mask: Array
    ) -> Array:
        arch = self.arch
        dtype = vectors.dtype
        m, k = index.shape
        # flat edge slots, live ones first (stable), padded to whole chunks
        vec = vectors.reshape(m * k, 3)
        d2 = jnp.sum(vec * vec, axis=-1)
        live = edge_mask.reshape(-1) & (d2 > 0) & (d2 < arch.cutoff**2)
        order = jnp.argsort(~live, stable=True)
        chunk = max(1, min(self.chunk, m * k))
        n_slots = -(-(m * k) // chunk) * chunk
        order = jnp.concatenate([order, jnp.zeros((n_slots - m * k,), order.dtype)])
        live = jnp.concatenate([live[order[: m * k]], jnp.zeros((n_slots - m * k,), bool)])
        n_live = jnp.sum(live)
        vec = vec[order]
        center = order // k
        neighbor = jnp.clip(index.reshape(-1)[order], 0, m - 1)

        safe = jnp.where(live[:, None], vec, jnp.array([0.0, 0.0, 1.0], dtype))
        r = jnp.sqrt(jnp.sum(safe * safe, axis=-1))
        n_basis = arch.num_basis
        coeffs = self.param("bessel", lambda k: jnp.pi / arch.cutoff * jnp.arange(1, n_basis + 1.0))
        bessel = (2.0 / arch.cutoff) * jnp.sin(coeffs.astype(dtype) * r[:, None]) / r[:, None]
        rc2, ron2, r2 = arch.cutoff**2, arch.cutoff_on**2, r * r
        env = jnp.where(
            r < arch.cutoff_on, 1.0, (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ron2) / (rc2 - ron2) ** 3
        )
        radial = jnp.where(live[:, None], bessel * env[:, None], 0.0)
        sh_irreps = e3nn.Irreps.spherical_harmonics(arch.lmax, p=1)
        sh = e3nn.spherical_harmonics(sh_irreps, safe, normalize=True, normalization="component")
        sh = jnp.where(live[:, None], sh.array, 0.0)

        onehot = jax.nn.one_hot(types, arch.num_types, dtype=dtype)
        x = IrrepsLinear(f"{arch.num_types}x0e", arch.irreps_embed, name="embedding")(onehot)
        for b, blk in enumerate(arch.blocks):
            sc = IrrepsLinear(blk.irreps_x, blk.irreps_sc, name=f"{b}_self_connection")(x)
            x = IrrepsLinear(blk.irreps_x, blk.irreps_x, name=f"{b}_self_interaction_1")(x)
            x = Convolution(blk, chunk, name=f"{b}_convolution")(
                x, sh, radial, center, neighbor, live, n_live
            )
            # the tensor product's consecutive blocks of one irrep are read as one (same memory)
            mid = str(e3nn.Irreps(blk.irreps_mid).simplify())
            x = IrrepsLinear(mid, blk.irreps_sc, name=f"{b}_self_interaction_2")(x)
            x = gate(x + sc, blk)
        h = IrrepsLinear(arch.blocks[-1].irreps_out, arch.irreps_readout_hidden, name="readout_1")(
            x
        )
        e = IrrepsLinear(arch.irreps_readout_hidden, "1x0e", name="readout_2")(h)[..., 0]
        scale = self.param("scale", nn.initializers.ones, (arch.num_types,), dtype)
        shift = self.param("shift", nn.initializers.zeros, (arch.num_types,), dtype)
        e = e * scale[types] + shift[types]
        return jnp.where(mask, e, 0.0)


# ---------------------------------------------------------------------- the Potential


@functools.cache
def _type_table(type_map: tuple[tuple[int, int], ...]) -> np.ndarray:
    table = np.zeros(119, dtype=np.int32)
    for z, t in type_map:
        table[z] = t
    return table


def _cast(params: Any, dtype: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)


def _energy(params: Any, crystal: Crystals, neighbors: Any, arch: SevenNetArch) -> Array:
    """Energy (eV) of ONE crystal."""
    dtype = crystal.frac.dtype
    vec = edge_vectors_single(crystal, neighbors)
    types = jnp.asarray(_type_table(arch.type_map))[jnp.clip(crystal.species, 0, 118)]
    # flax types apply's result as output | (output, variables); without `mutable`: the output
    atomic: Any = SevenNet(arch).apply(
        {"params": _cast(params, dtype)}, types, crystal.mask, vec, neighbors.index, neighbors.mask
    )
    return jnp.sum(atomic)


def _energies(params: Any, crystals: Crystals, neighbors: Any, arch: SevenNetArch) -> Array:
    """Energies ``(B,)`` eV of a batch, processed as one graph (chunks of dead edge slots skip
    the convolutions' per-edge work). Equal to ``vmap(_energy)`` up to summation order."""
    dtype = crystals.frac.dtype
    b, n = crystals.species.shape
    vec = jax.vmap(edge_vectors_single)(crystals, neighbors)  # (B, N, K, 3)
    offset = (jnp.arange(b, dtype=neighbors.index.dtype) * n)[:, None, None]
    index = (neighbors.index + offset).reshape(b * n, -1)
    types = jnp.asarray(_type_table(arch.type_map))[jnp.clip(crystals.species, 0, 118)]
    # flax types apply's result as output | (output, variables); without `mutable`: the output
    atomic: Any = SevenNet(arch).apply(
        {"params": _cast(params, dtype)},
        types.reshape(-1),
        crystals.mask.reshape(-1),
        vec.reshape(b * n, -1, 3),
        index,
        neighbors.mask.reshape(b * n, -1),
    )
    return jnp.sum(atomic.reshape(b, n), axis=1)


def cache_dir() -> pathlib.Path:
    """Where converted weights are cached: ``$JAXCSP_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxcsp``,
    else ``~/.cache/jaxcsp``."""
    env = os.environ.get("JAXCSP_CACHE_DIR")
    if env:
        return pathlib.Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache"
    return base / "jaxcsp"


def save_sevennet(path: str | os.PathLike, arch: SevenNetArch, params: Any) -> None:
    """Write a converted model (architecture + float32 weights) as one msgpack file."""
    import json

    from flax import serialization

    state = {
        "format": "jaxcsp-sevennet-1",
        "arch": json.dumps(arch.to_dict()),
        "params": jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params),
    }
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(state))
    tmp.replace(path)  # atomic: a killed conversion never leaves a half-written cache


def load_sevennet(path: str | os.PathLike) -> tuple[SevenNetArch, Any]:
    """Read a file written by :func:`save_sevennet`: ``(arch, params)`` (params float32 numpy).

    Raises:
      SevenNetCheckpointError: the file is missing, unreadable or not a converted SevenNet.
    """
    import json

    from flax import serialization

    path = pathlib.Path(path)
    try:
        state = serialization.msgpack_restore(path.read_bytes())
        if state.get("format") != "jaxcsp-sevennet-1":
            raise ValueError(f"unknown format {state.get('format')!r}")
        arch = SevenNetArch.from_dict(json.loads(state["arch"]))
        params = state["params"]
    except FileNotFoundError:
        raise SevenNetCheckpointError(f"{path}: no such converted SevenNet checkpoint") from None
    except Exception as e:
        raise SevenNetCheckpointError(f"{path}: not a converted SevenNet checkpoint ({e})") from e
    return arch, params


def _sevenn_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("sevenn")
    except metadata.PackageNotFoundError:
        return None


def _cache_file(model: str, version: str) -> pathlib.Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model)
    return cache_dir() / "sevennet" / f"{safe}-sevenn{version}.msgpack"


@functools.cache
def _load_cached(path: str) -> tuple[SevenNetArch, Any]:
    return load_sevennet(path)


def sevennet0(
    model: str = "7net-0", *, checkpoint: str | os.PathLike | None = None, convert: bool = True
) -> Potential:
    """SevenNet-0 as a native JAX :class:`~jaxcsp.potentials.Potential` (cutoff 5 Å).

    The first call converts the weights installed by the ``sevenn`` wheel (needs the ``mlip``
    extra: torch and sevenn) and caches them in :func:`cache_dir`; later calls load the cache
    without importing torch.

    Args:
      model: pretrained SevenNet name (``"7net-0"``); single-fidelity NequIP-type models only.
      checkpoint: a file written by :func:`save_sevennet` to use instead of the cache.
      convert: convert (and cache) when no cached file exists; ``False`` raises instead.

    Returns:
      A :class:`~jaxcsp.potentials.Potential` whose ``energy(crystal, neighbors)`` is the total
      energy in eV; forces (eV/Å) and stress (eV/Å³) follow by autodiff in
      :func:`jaxcsp.calculate` and the relaxers. ``species`` are the 89 covered elements.

    Raises:
      MissingExtraError: no cached conversion and ``sevenn``/``torch`` are not installed.
      SevenNetCheckpointError: an unreadable checkpoint, or a model of another architecture.

    >>> pot = sevennet0()  # doctest: +SKIP
    >>> jc.calculate(pot, crystals).forces  # doctest: +SKIP
    """
    if checkpoint is not None:
        arch, params = _load_cached(str(pathlib.Path(checkpoint).resolve()))
    else:
        version = _sevenn_version()
        path = None
        if version is not None:
            path = _cache_file(model, version)
        else:  # sevenn gone after conversion: any cached conversion of this model will do
            found = sorted((cache_dir() / "sevennet").glob(f"{model}-sevenn*.msgpack"))
            path = found[-1] if found else None
        if path is None or not path.exists():
            if not convert:
                raise SevenNetCheckpointError(
                    f"no converted {model!r} in {cache_dir() / 'sevennet'}; call "
                    "sevennet0(convert=True) once with the 'mlip' extra installed"
                )
            # the torch-checkpoint converter needs the optional 'mlip' extra: imported lazily
            from jaxcsp.potentials._sevennet_convert import convert_sevennet

            arch, params = convert_sevennet(model)
            if path is None:  # pragma: no cover - convert_sevennet needs sevenn
                path = _cache_file(model, _sevenn_version() or "unknown")
            save_sevennet(path, arch, params)
            _load_cached.cache_clear()
        arch, params = _load_cached(str(path))
    return Potential(
        energy_fn=_energy,
        batch_energy_fn=_energies,
        params=jax.tree_util.tree_map(jnp.asarray, params),
        cutoff=float(arch.cutoff),
        species=arch.species,
        options=arch,
        name=f"sevennet0({arch.name})",
    )


def init_params(arch: SevenNetArch, key: Array, *, dtype: Any = jnp.float32) -> Any:
    """Randomly initialised parameters of ``arch`` (e3nn's N(0, 1) weights), e.g. for training.

    Returns the same tree as the converted weights (``sevennet0().params``), arrays of ``dtype``.
    """
    n = 2
    types = jnp.zeros((n,), jnp.int32)
    vec = jnp.ones((n, 1, 3), dtype)
    index = jnp.zeros((n, 1), jnp.int32)
    init = jax.jit(SevenNet(arch).init)
    return init(key, types, jnp.ones((n,), bool), vec, index, jnp.ones((n, 1), bool))["params"]
