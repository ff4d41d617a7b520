"""Pretrained universal MLIPs (SevenNet-0, CHGNet) bridged into JAX as a ``Potential``.

Both models ship their weights inside their wheels and run offline on CPU (optional extra
``mlip``: ``pip install torch==2.13.0`` (CPU wheel) first, then ``pip install "jaxcsp[mlip]"``).
They are PyTorch models, so they run on the host through ``jax.pure_callback``; see
:mod:`jaxcsp.potentials._bridge`:

* one batched inference per forward pass — under ``jax.vmap`` (as in
  :func:`jaxcsp.calculator.calculate`) the whole batch reaches the model at once;
* ``custom_vjp`` whose cotangents are the model's own forces and stress (virial), so
  ``jax.grad`` with respect to positions, the lattice and Wyckoff free variables (through
  :func:`jaxcsp.symmetry.reconstruct`) is exact to the model's precision (float32 inside).

Only first derivatives are available. The energies are the models' own (eV per cell, forces
eV/Å, stress eV/Å³, ASE sign), identical to their ASE calculators.

>>> from jaxcsp.potentials import external
>>> pot = external.chgnet()  # doctest: +SKIP
>>> jc.calculate(pot, crystals).energy  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from jaxcsp.errors import JaxcspError
from jaxcsp.potentials._base import Potential
from jaxcsp.potentials._bridge import host_potential

__all__ = ["MissingExtraError", "chgnet", "sevennet"]


class MissingExtraError(JaxcspError, ImportError):
    """An optional dependency (the ``mlip`` extra) is not installed."""


_INSTALL = (
    "install the 'mlip' extra: `pip install torch==2.13.0` (CPU wheel) then "
    "`pip install 'jaxcsp[mlip]'`"
)


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{module} is not installed; {_INSTALL}") from e


def _atoms_list(lattice, frac, species, mask):
    from ase import Atoms

    out = []
    for i in range(species.shape[0]):
        m = mask[i]
        out.append(
            Atoms(numbers=species[i][m], scaled_positions=frac[i][m], cell=lattice[i], pbc=True)
        )
    return out


def _scatter(per_structure, mask, shape):
    out = np.zeros(shape)
    for i, val in enumerate(per_structure):
        out[i][mask[i]] = val
    return out


# ---------------------------------------------------------------------- SevenNet


class _SevenNetModel:
    """Batched SevenNet inference (graphs collated with torch_geometric, one forward pass)."""

    def __init__(self, model: str, device: str, modal: str | None):
        _require("torch")
        util = _require("sevenn.util")
        keys = _require("sevenn._keys")
        self._keys = keys
        cp = util.load_checkpoint(model)
        net = cp.build_model()
        net.set_is_batch_data(True)
        net.eval()
        self.device = device
        self.net = net.to(device)
        self.cutoff = float(cp.config[keys.CUTOFF])
        self.type_map = dict(cp.config[keys.TYPE_MAP])
        self.modal = modal

    def compute(self, lattice, frac, species, mask):
        from sevenn.atom_graph_data import AtomGraphData
        from sevenn.train.dataload import unlabeled_atoms_to_graph
        from torch_geometric.loader.dataloader import Collater

        k = self._keys
        atoms = _atoms_list(lattice, frac, species, mask)
        graphs = []
        for at in atoms:
            g = AtomGraphData.from_numpy_dict(
                unlabeled_atoms_to_graph(at, self.cutoff, with_shift=False)
            )
            if self.modal:
                g[k.DATA_MODALITY] = self.modal
            graphs.append(g)
        batch = Collater([], follow_batch=None, exclude_keys=None)(graphs)
        batch.to(self.device)
        out = self.net(batch)
        energy = out[k.PRED_TOTAL_ENERGY].detach().cpu().numpy().reshape(-1)
        forces = out[k.PRED_FORCE].detach().cpu().numpy()
        counts = mask.sum(axis=1)
        split = np.split(forces, np.cumsum(counts)[:-1])
        # SevenNet's stress is [xx, yy, zz, xy, yz, zx] with the opposite sign to ASE.
        s6 = -out[k.PRED_STRESS].detach().cpu().numpy().reshape(-1, 6)
        stress = np.zeros((len(atoms), 3, 3))
        xx, yy, zz, xy, yz, zx = s6.T
        stress[:, 0, 0], stress[:, 1, 1], stress[:, 2, 2] = xx, yy, zz
        stress[:, 0, 1] = stress[:, 1, 0] = xy
        stress[:, 1, 2] = stress[:, 2, 1] = yz
        stress[:, 0, 2] = stress[:, 2, 0] = zx
        return energy, _scatter(split, mask, frac.shape), stress


@functools.cache
def _sevennet_model(model: str, device: str, modal: str | None) -> _SevenNetModel:
    return _SevenNetModel(model, device, modal)


def sevennet(model: str = "7net-0", *, device: str = "cpu", modal: str | None = None) -> Potential:
    """SevenNet pretrained potential (default SevenNet-0, weights shipped in the ``sevenn`` wheel).

    Matches ``sevenn.calculator.SevenNetCalculator(model, device=device, modal=modal)``.

    Args:
      model: pretrained model name (``"7net-0"``, ``"7net-l3i5"``, …) or checkpoint path.
      device: torch device (``"cpu"``).
      modal: fidelity of multi-fidelity models (``None`` for SevenNet-0).

    Returns:
      A host-side :class:`~jaxcsp.potentials.Potential` (``cutoff=None``) covering the model's
      elements; the loaded model is cached per ``(model, device, modal)``.

    Raises:
      MissingExtraError: ``sevenn``/``torch`` not installed.
    """
    host = _sevennet_model(str(model), device, modal)
    return host_potential(host, name=f"sevennet({model})", species=tuple(sorted(host.type_map)))


# ---------------------------------------------------------------------- CHGNet


class _CHGNetModel:
    """Batched CHGNet inference (``CHGNet.predict_graph`` on the whole batch)."""

    def __init__(self, model_name: str, device: str):
        mod = _require("chgnet.model")
        self.net = mod.CHGNet.load(model_name=model_name, use_device=device, verbose=False)
        self.device = device

    def compute(self, lattice, frac, species, mask):
        from ase import units
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = _atoms_list(lattice, frac, species, mask)
        graphs = [self.net.graph_converter(AseAtomsAdaptor.get_structure(a)) for a in atoms]
        preds = self.net.predict_graph(graphs, task="efs", batch_size=max(1, len(graphs)))
        if isinstance(preds, dict):
            preds = [preds]
        counts = mask.sum(axis=1)
        factor = counts if self.net.is_intensive else np.ones_like(counts)
        energy = np.array([float(p["e"]) for p in preds]) * factor
        forces = _scatter([p["f"] for p in preds], mask, frac.shape)
        stress = np.stack([np.asarray(p["s"], dtype=np.float64) * units.GPa for p in preds])
        return energy, forces, stress


@functools.cache
def _chgnet_model(model_name: str, device: str) -> _CHGNetModel:
    return _CHGNetModel(model_name, device)


def chgnet(model_name: str = "0.3.0", *, device: str = "cpu") -> Potential:
    """CHGNet pretrained potential (weights shipped in the ``chgnet`` wheel).

    Matches ``chgnet.model.dynamics.CHGNetCalculator`` with the same model (energy per cell =
    CHGNet's per-atom energy × atoms; stress GPa → eV/Å³).

    Args:
      model_name: pretrained version (``"0.3.0"``, ``"0.2.0"``).
      device: torch device (``"cpu"``).

    Returns:
      A host-side :class:`~jaxcsp.potentials.Potential` (``cutoff=None``) covering Z = 1…94;
      the loaded model is cached per ``(model_name, device)``.

    Raises:
      MissingExtraError: ``chgnet``/``torch`` not installed.
    """
    host = _chgnet_model(str(model_name), device)
    return host_potential(host, name=f"chgnet({model_name})", species=tuple(range(1, 95)))
