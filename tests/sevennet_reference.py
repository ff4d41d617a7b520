"""The reference for jaxcsp's native SevenNet-0: the torch model of the ``sevenn`` wheel in float64.

``sevenn``'s calculator runs the model in float32, which limits agreement to ~1e-7 relative.
Here the same torch model runs in float64 so that differences measure the implementations, not
the arithmetic: the module is cast with ``.double()``, the edge vectors are passed in float64
(``AtomGraphData.from_numpy_dict`` casts them to float32), the one-hot embedding (which
``sevenn`` builds with ``.float()``) is cast to float64, and e3nn's Wigner 3j buffers (built in
float32) are recomputed in float64. Nothing else is changed: same weights, graph (matscipy/ASE
neighbor list at the model's cutoff), forward pass, and forces/stress from torch autograd.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _model(name: str):
    import sevenn._keys as keys
    import sevenn.util as util
    import torch
    from e3nn import o3

    cp = util.load_checkpoint(name)
    net = cp.build_model()
    net.set_is_batch_data(True)
    net.eval()
    net.double()
    with torch.no_grad():
        for mod in net.modules():
            for buf_name, buf in list(mod.named_buffers(recurse=False)):
                if buf_name.startswith("_w3j_"):
                    l1, l2, l3 = (int(x) for x in buf_name.split("_")[2:])
                    buf.copy_(o3.wigner_3j(l1, l2, l3, dtype=torch.float64))
    emb = net._modules["onehot_idx_to_onehot"]

    def as_double(mod, inputs, out):
        for key in (mod.key_output, mod.key_additional_output):
            if key is not None and key in out:
                out[key] = out[key].double()
        return out

    emb.register_forward_hook(as_double)
    return net, float(cp.config[keys.CUTOFF])


def torch_sevennet(atoms_list, model: str = "7net-0"):
    """Energies ``(B,)`` eV, forces (list of ``(n_i, 3)`` eV/Å) and stress ``(B, 3, 3)`` eV/Å³
    (ASE sign) of the torch SevenNet in float64."""
    import sevenn._keys as keys
    import torch
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.train.dataload import unlabeled_atoms_to_graph
    from torch_geometric.loader.dataloader import Collater

    net, cutoff = _model(model)
    graphs = []
    for atoms in atoms_list:
        d = unlabeled_atoms_to_graph(atoms, cutoff, with_shift=False)
        vec = np.array(d[keys.EDGE_VEC], dtype=np.float64)  # from_numpy_dict casts d in place
        g = AtomGraphData.from_numpy_dict(d)
        for key in list(g.keys()):
            v = g[key]
            if torch.is_tensor(v) and v.is_floating_point():
                g[key] = v.double()
        g[keys.EDGE_VEC] = torch.from_numpy(vec)
        graphs.append(g)
    batch = Collater([], follow_batch=None, exclude_keys=None)(graphs)
    out = net(batch)
    energy = out[keys.PRED_TOTAL_ENERGY].detach().numpy().reshape(-1)
    forces = out[keys.PRED_FORCE].detach().numpy()
    s6 = -out[keys.PRED_STRESS].detach().numpy().reshape(-1, 6)  # sevenn: xx yy zz xy yz zx
    stress = np.zeros((len(atoms_list), 3, 3))
    for k, (i, j) in enumerate([(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]):
        stress[:, i, j] = stress[:, j, i] = s6[:, k]
    counts = [len(a) for a in atoms_list]
    return energy, np.split(forces, np.cumsum(counts)[:-1]), stress
