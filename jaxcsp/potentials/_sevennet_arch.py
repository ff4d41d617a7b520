"""SevenNet's static architecture: irreps, paths and normalisation constants (no weights).

Shared by the Flax model (:mod:`._sevennet`) and the converter (:mod:`._sevennet_convert`), which
recomputes every path list from these helpers and checks it against the torch model's.
"""

from __future__ import annotations

import dataclasses

import e3nn_jax as e3nn

from jaxcsp.errors import JaxcspError

__all__ = [
    "SevenNetArch",
    "SevenNetBlock",
    "SevenNetCheckpointError",
    "blocks",
    "linear_instructions",
    "linear_numel",
    "tp_paths",
]


class SevenNetCheckpointError(JaxcspError, ValueError):
    """A converted SevenNet checkpoint is missing, unreadable or of another architecture."""


# ---------------------------------------------------------------------- static architecture


@dataclasses.dataclass(frozen=True)
class SevenNetBlock:
    """Static description of one interaction block (irreps as e3nn strings, unsimplified).

    Attributes:
      irreps_x: node features entering the block.
      irreps_sc: output of the self-connection linear map (= the block's pre-gate irreps).
      irreps_filter: edge spherical harmonics (``1x0e+1x1e+1x2e`` for lmax 2, no parity).
      irreps_mid: output of the tensor product (one entry per path, sorted by irrep).
      tp_paths: ``(i_in1, i_in2, i_out)`` of each 'uvu' path, in weight order.
      radial_hidden: hidden widths of the radial MLP (``(64, 64)``).
      radial_act_scale: normalisation constant of the radial MLP's SiLU.
      gate_scalars: scalar channels kept by the gate (``"128x0e"``).
      gate_gates: gate channels (one scalar per gated multiplicity).
      gate_gated: gated channels (``l > 0``).
      scalar_act_scales: normalisation constant of the activation of each scalar block.
      gate_act_scales: normalisation constant of the activation of each gate block.
      scalar_acts: activation names of the scalar blocks (``"silu"`` or ``"tanh"``).
      gate_acts: activation names of the gate blocks.
    """

    irreps_x: str
    irreps_sc: str
    irreps_filter: str
    irreps_mid: str
    tp_paths: tuple[tuple[int, int, int], ...]
    radial_hidden: tuple[int, ...]
    radial_act_scale: float
    gate_scalars: str
    gate_gates: str
    gate_gated: str
    scalar_acts: tuple[str, ...]
    scalar_act_scales: tuple[float, ...]
    gate_acts: tuple[str, ...]
    gate_act_scales: tuple[float, ...]

    @property
    def irreps_out(self) -> str:
        """Node features leaving the block (the gate's output)."""
        return str(e3nn.Irreps(self.gate_scalars) + e3nn.Irreps(self.gate_gated))


@dataclasses.dataclass(frozen=True)
class SevenNetArch:
    """Static, hashable description of a SevenNet model (everything but the weights).

    Attributes:
      name: model name (``"7net-0"``).
      cutoff: edge cutoff ``r_c`` in Å (5.0).
      cutoff_on: start of the XPLOR envelope ``r_on`` in Å (4.5).
      lmax: highest spherical-harmonic degree on edges (2).
      num_basis: radial Bessel functions (8).
      type_map: ``((Z, type_index), ...)`` for every covered element.
      irreps_embed: node features after the species embedding (``"128x0e"``).
      blocks: the interaction blocks.
      irreps_readout_hidden: hidden readout irreps (``"64x0e"``).
    """

    name: str
    cutoff: float
    cutoff_on: float
    lmax: int
    num_basis: int
    type_map: tuple[tuple[int, int], ...]
    irreps_embed: str
    blocks: tuple[SevenNetBlock, ...]
    irreps_readout_hidden: str

    @property
    def num_types(self) -> int:
        """Number of species types of the one-hot embedding."""
        return len(self.type_map)

    @property
    def species(self) -> tuple[int, ...]:
        """Sorted atomic numbers the model covers."""
        return tuple(sorted(z for z, _ in self.type_map))

    def to_dict(self) -> dict:
        """Plain JSON-able dict (for the checkpoint file)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SevenNetArch:
        """Inverse of :meth:`to_dict`."""
        blocks = []
        for b in d["blocks"]:
            b = dict(b)
            for key in ("scalar_acts", "gate_acts", "radial_hidden"):
                b[key] = tuple(b[key])
            b["scalar_act_scales"] = tuple(float(x) for x in b["scalar_act_scales"])
            b["gate_act_scales"] = tuple(float(x) for x in b["gate_act_scales"])
            b["tp_paths"] = tuple(tuple(int(i) for i in p) for p in b["tp_paths"])
            blocks.append(SevenNetBlock(**b))
        out = dict(d)
        out["blocks"] = tuple(blocks)
        out["type_map"] = tuple((int(z), int(t)) for z, t in d["type_map"])
        return cls(**out)


def tp_paths(irreps_x: str, irreps_filter: str, irreps_keep: str) -> tuple[str, tuple]:
    """SevenNet's convolution paths: every ``x ⊗ Y → ir`` with ``ir`` in ``irreps_keep``.

    Returns ``(irreps_mid, paths)``: the tensor product's output irreps (one entry of multiplicity
    ``mul_x`` per path, sorted by irrep, stable) and ``(i_in1, i_in2, i_out)`` per path sorted by
    ``i_out`` — the order of the per-edge weights.
    """
    x, f, keep = e3nn.Irreps(irreps_x), e3nn.Irreps(irreps_filter), e3nn.Irreps(irreps_keep)
    keep_irs = {ir for _, ir in keep}
    mid: list[tuple[int, e3nn.Irrep]] = []
    paths: list[tuple[int, int, int]] = []
    for i, (mul_x, ir_x) in enumerate(x):
        for j, (_, ir_f) in enumerate(f):
            for ir_out in ir_x * ir_f:
                if ir_out in keep_irs:
                    paths.append((i, j, len(mid)))
                    mid.append((mul_x, ir_out))
    order = sorted(range(len(mid)), key=lambda k: (mid[k][1], k))  # stable sort by irrep
    new_index = {old: new for new, old in enumerate(order)}
    mid_sorted = e3nn.Irreps([mid[k] for k in order])
    paths = sorted(((i, j, new_index[k]) for i, j, k in paths), key=lambda p: p[2])
    return str(mid_sorted), tuple(paths)


def blocks(irreps: str) -> list[tuple[int, int, int, int]]:
    """``(mul, l, start, stop)`` of each block of a flat feature vector."""
    out, start = [], 0
    for mul, ir in e3nn.Irreps(irreps):
        stop = start + mul * ir.dim
        out.append((mul, ir.l, start, stop))
        start = stop
    return out


def linear_instructions(irreps_in: str, irreps_out: str) -> list[tuple[int, int]]:
    """e3nn ``Linear``'s default paths: every input block into every output block of its irrep."""
    ins, outs = e3nn.Irreps(irreps_in), e3nn.Irreps(irreps_out)
    return [
        (i, o)
        for i, (_, ir_i) in enumerate(ins)
        for o, (_, ir_o) in enumerate(outs)
        if ir_i == ir_o
    ]


def linear_numel(irreps_in: str, irreps_out: str) -> int:
    """Number of weights of :class:`IrrepsLinear` (``Σ mul_in · mul_out`` over paths)."""
    ins, outs = e3nn.Irreps(irreps_in), e3nn.Irreps(irreps_out)
    return sum(ins[i].mul * outs[o].mul for i, o in linear_instructions(irreps_in, irreps_out))
