"""Convert the SevenNet checkpoint installed by the ``sevenn`` wheel into jaxcsp's Flax parameters.

This is the only place that imports torch (optional extra ``mlip``). It reads the checkpoint with
``sevenn.util.load_checkpoint``, builds the torch model, and maps every tensor onto
:class:`jaxcsp.potentials._sevennet.SevenNet`'s parameters. It does not trust that the two
implementations agree on conventions: for every layer it recomputes e3nn's path lists and
normalisation coefficients from the irreps (as :mod:`._sevennet` does) and raises
:class:`~jaxcsp.potentials._sevennet.SevenNetCheckpointError` if torch's differ, so a future
``sevenn``/``e3nn`` release that changes a convention fails loudly instead of giving other
energies. Constants that cannot be recomputed without torch (e3nn's Monte-Carlo estimate of each
activation's second moment) are copied into the architecture.
"""

from __future__ import annotations

import math
from typing import Any

import e3nn_jax as e3nn
import numpy as np

from jaxcsp.potentials._sevennet_arch import (
    SevenNetArch,
    SevenNetBlock,
    SevenNetCheckpointError,
    linear_instructions,
    linear_numel,
    tp_paths,
)
from jaxcsp.potentials.external import _require

__all__ = ["convert_sevennet"]


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _fail(model: str, what: str) -> SevenNetCheckpointError:
    return SevenNetCheckpointError(f"SevenNet {model!r}: {what}")


def _act_name(act: Any) -> str:
    f = getattr(act, "f", act)
    name = getattr(f, "__name__", type(f).__name__).lower()
    if "silu" in name:
        return "silu"
    if "tanh" in name:
        return "tanh"
    raise ValueError(f"unsupported activation {name}")


def _act_scale(act: Any) -> float:
    if getattr(act, "_is_id", False):
        return 1.0
    return float(act.cst)


def _linear(model: str, where: str, lin: Any) -> tuple[str, str, np.ndarray]:
    """Irreps and flat weights of an e3nn ``Linear``, checked against our path convention."""
    irreps_in, irreps_out = str(lin.irreps_in), str(lin.irreps_out)
    ours = linear_instructions(irreps_in, irreps_out)
    theirs = [(ins.i_in, ins.i_out) for ins in lin.instructions]
    if ours != theirs:
        raise _fail(model, f"{where}: linear paths {theirs} differ from e3nn's default {ours}")
    ins_irreps = e3nn.Irreps(irreps_in)
    for ins in lin.instructions:
        fan = sum(ins_irreps[i].mul for i, o in ours if o == ins.i_out)
        if not math.isclose(ins.path_weight, 1.0 / math.sqrt(fan), rel_tol=1e-12):
            raise _fail(model, f"{where}: linear path weight {ins.path_weight} != 1/sqrt({fan})")
    if getattr(lin, "bias", None) is not None and lin.bias.numel() > 0:
        raise _fail(model, f"{where}: biased linear layers are not supported")
    w = _np(lin.weight)
    if w.size != linear_numel(irreps_in, irreps_out):
        raise _fail(
            model, f"{where}: {w.size} weights, expected {linear_numel(irreps_in, irreps_out)}"
        )
    return irreps_in, irreps_out, w


def convert_sevennet(model: str = "7net-0") -> tuple[SevenNetArch, dict]:
    """Read a pretrained SevenNet from the installed ``sevenn`` wheel: ``(arch, params)``.

    Args:
      model: pretrained name or checkpoint path understood by ``sevenn.util.load_checkpoint``.

    Returns:
      The static :class:`~jaxcsp.potentials._sevennet.SevenNetArch` and the parameter tree of
      :class:`~jaxcsp.potentials._sevennet.SevenNet` (float32 numpy arrays, the published values).

    Raises:
      MissingExtraError: ``torch`` or ``sevenn`` is not installed.
      SevenNetCheckpointError: a model this implementation does not cover (multi-fidelity,
        another interaction type, other conventions).
    """
    _require("torch")
    util = _require("sevenn.util")
    try:
        cp = util.load_checkpoint(model)
    except Exception as e:  # sevenn raises assorted errors for unknown names
        raise _fail(model, f"sevenn cannot load it ({e})") from e
    cfg = cp.config
    if cfg.get("interaction_type", "nequip") != "nequip":
        raise _fail(model, f"interaction type {cfg.get('interaction_type')!r} is not supported")
    if (
        cfg.get("use_modal_node_embedding")
        or cfg.get("use_modal_wise_shift")
        or cfg.get("use_modality")
    ):
        raise _fail(model, "multi-fidelity (modal) models are not supported")
    if cfg.get("self_connection_type", "linear") != "linear":
        raise _fail(model, f"self connection {cfg.get('self_connection_type')!r} is not supported")
    if cfg["radial_basis"].get("radial_basis_name") != "bessel":
        raise _fail(model, "only the Bessel radial basis is supported")
    if cfg["cutoff_function"].get("cutoff_function_name") != "XPLOR":
        raise _fail(model, "only the XPLOR cutoff function is supported")
    if cfg.get("readout_as_fcn"):
        raise _fail(model, "an MLP readout is not supported")

    net = cp.build_model()
    net.eval()
    mods = dict(net.named_children())
    params: dict[str, Any] = {}

    emb = mods["edge_embedding"]
    cutoff = float(emb.cutoff_function.r_cut)
    cutoff_on = float(emb.cutoff_function.r_on)
    if not math.isclose(emb.basis_function.prefactor, 2.0 / cutoff, rel_tol=1e-12):
        raise _fail(model, "Bessel prefactor is not 2 / cutoff")
    params["bessel"] = _np(emb.basis_function.coeffs)
    sph = emb.spherical
    if not (sph.sph.normalize and sph.sph.normalization == "component"):
        raise _fail(model, "spherical harmonics must be normalised with component normalisation")
    lmax = int(sph.lmax)
    filter_irreps = str(sph.irreps_out)
    if filter_irreps != str(e3nn.Irreps.spherical_harmonics(lmax, p=1)):
        raise _fail(model, f"edge irreps {filter_irreps} (parity models are not supported)")

    type_map = tuple(sorted((int(z), int(t)) for z, t in cfg["_type_map"].items()))
    _, irreps_embed, w = _linear(model, "embedding", mods["onehot_to_feature_x"].linear)
    params["embedding"] = {"weight": w}

    blocks = []
    k = 0
    while f"{k}_convolution" in mods:
        where = f"block {k}"
        sc_in, sc_out, w_sc = _linear(model, where, mods[f"{k}_self_connection_intro"].linear)
        si1_in, si1_out, w_si1 = _linear(model, where, mods[f"{k}_self_interaction_1"].linear)
        conv = mods[f"{k}_convolution"]
        tp = conv.convolution
        x_irreps, f_irreps, mid_irreps = str(tp.irreps_in1), str(tp.irreps_in2), str(tp.irreps_out)
        if not (sc_in == si1_in == si1_out == x_irreps) or f_irreps != filter_irreps:
            raise _fail(model, f"{where}: irreps do not chain ({sc_in}, {si1_out}, {x_irreps})")
        si2_in, si2_out, w_si2 = _linear(model, where, mods[f"{k}_self_interaction_2"].linear)
        mid_ours, paths = tp_paths(x_irreps, f_irreps, si2_out)
        theirs = tuple((i.i_in1, i.i_in2, i.i_out) for i in tp.instructions)
        # the layer after the tensor product reads its output as simplified irreps (same memory)
        simple_mid = str(e3nn.Irreps(mid_irreps).simplify())
        if mid_ours != mid_irreps or paths != theirs or si2_in != simple_mid:
            raise _fail(model, f"{where}: tensor-product paths differ from SevenNet's convention")
        mid = e3nn.Irreps(mid_irreps)
        fil = e3nn.Irreps(f_irreps)
        for ins in tp.instructions:
            if ins.connection_mode != "uvu" or not ins.has_weight:
                raise _fail(model, f"{where}: only weighted 'uvu' paths are supported")
            fan = sum(fil[j].mul for _, j, o in paths if o == ins.i_out)
            expect = math.sqrt(mid[ins.i_out].ir.dim / fan)
            if not math.isclose(ins.path_weight, expect, rel_tol=1e-12):
                raise _fail(model, f"{where}: path weight {ins.path_weight} != {expect}")
        layers = [conv.weight_nn._modules[name] for name in sorted(conv.weight_nn._modules)]
        hidden, act_scale = [], None
        radial: dict[str, np.ndarray] = {}
        for n, layer in enumerate(layers):
            if layer.var_in != 1 or layer.var_out != 1:
                raise _fail(model, f"{where}: radial MLP variances must be 1")
            radial[f"layer{n}"] = _np(layer.weight)
            if n < len(layers) - 1:
                hidden.append(int(layer.h_out))
                if _act_name(layer.act) != "silu":
                    raise _fail(model, f"{where}: radial activation must be SiLU")
                scale = _act_scale(layer.act)
                if act_scale is not None and scale != act_scale:
                    raise _fail(model, f"{where}: radial activations differ between layers")
                act_scale = scale
        gate = mods[f"{k}_equivariant_gate"].gate
        # the activations' own irreps (one activation per block, before e3nn simplifies them)
        scalars = str(gate.act_scalars.irreps_in)
        gates = str(gate.act_gates.irreps_in) if gate.irreps_gates.dim else ""
        gated = str(gate.irreps_gated)
        cat = e3nn.Irreps(scalars) + e3nn.Irreps(gates) + e3nn.Irreps(gated)
        if str(cat.simplify()) != str(e3nn.Irreps(si2_out)) or str(cat.sort().irreps) != str(cat):
            raise _fail(model, f"{where}: gate input {si2_out} is not scalars|gates|gated in order")
        if sc_out != si2_out:
            raise _fail(model, f"{where}: self connection {sc_out} != {si2_out}")
        blk = SevenNetBlock(
            irreps_x=x_irreps,
            irreps_sc=sc_out,
            irreps_filter=f_irreps,
            irreps_mid=mid_irreps,
            tp_paths=paths,
            radial_hidden=tuple(hidden),
            radial_act_scale=float(act_scale if act_scale is not None else 1.0),
            gate_scalars=scalars,
            gate_gates=gates,
            gate_gated=gated,
            scalar_acts=tuple(_act_name(a) for a in gate.act_scalars.acts),
            scalar_act_scales=tuple(_act_scale(a) for a in gate.act_scalars.acts),
            gate_acts=tuple(_act_name(a) for a in gate.act_gates.acts) if gates else (),
            gate_act_scales=tuple(_act_scale(a) for a in gate.act_gates.acts) if gates else (),
        )
        params[f"{k}_self_connection"] = {"weight": w_sc}
        params[f"{k}_self_interaction_1"] = {"weight": w_si1}
        params[f"{k}_convolution"] = {
            "weight_nn": radial,
            "denominator": _np(conv.denominator).reshape(()),
        }
        params[f"{k}_self_interaction_2"] = {"weight": w_si2}
        blocks.append(blk)
        k += 1
    if not blocks:
        raise _fail(model, "no interaction blocks found")

    r1_in, hidden_irreps, w_r1 = _linear(model, "readout", mods["reduce_input_to_hidden"].linear)
    r2_in, r2_out, w_r2 = _linear(model, "readout", mods["reduce_hidden_to_energy"].linear)
    if r1_in != blocks[-1].irreps_out or r2_in != hidden_irreps or r2_out != "1x0e":
        raise _fail(model, "readout irreps do not chain")
    params["readout_1"] = {"weight": w_r1}
    params["readout_2"] = {"weight": w_r2}
    rescale = mods["rescale_atomic_energy"]
    params["scale"] = _np(rescale.scale).reshape(-1)
    params["shift"] = _np(rescale.shift).reshape(-1)
    if params["scale"].shape != (len(type_map),) or params["shift"].shape != (len(type_map),):
        raise _fail(model, "per-species scale/shift do not match the type map")

    arch = SevenNetArch(
        name=str(model),
        cutoff=cutoff,
        cutoff_on=cutoff_on,
        lmax=lmax,
        num_basis=int(params["bessel"].shape[0]),
        type_map=type_map,
        irreps_embed=irreps_embed,
        blocks=tuple(blocks),
        irreps_readout_hidden=hidden_irreps,
    )
    return arch, params
