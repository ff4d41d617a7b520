"""Energy + forces + stress throughput of jaxcsp potentials vs jax-md and looped ASE calculators.

For each potential a batch of ``B`` rattled, randomly strained supercells (wide enough for
jax-md's minimum-image convention) is evaluated:

* **jaxcsp**: :func:`jaxcsp.calculate` end to end (neighbor lists built on the host, one jitted,
  batched call for energy, forces and stress);
* **jax-md**: its own energy function (dense all-pairs, minimum image, ``periodic_general`` with
  a per-structure box) with forces and stress from one ``value_and_grad`` over positions and a
  strain ``perturbation``, mapped over the batch with ``jax.lax.map`` (chunks of 16 for memory);
* **ASE**: its own calculators looped over the structures (``LennardJones``; ``Tersoff``, pure
  Python) and our :class:`~jaxcsp.potentials.ase_calculator.JaxcspCalculator` adapter looped
  (Stillinger-Weber: ASE has none). ASE loops are timed on ``--ase-structures`` structures and
  scaled to ``B`` (marked "scaled" in the peer name).

Energies are checked against each other before timing. Run from the repository root::

    python -m benchmarks.potentials [--batch 1000] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk

from benchmarks.harness import Timing, compare, time_fn

jax.config.update("jax_enable_x64", True)

import jaxcsp.io as jio  # noqa: E402
from jaxcsp import potentials as P  # noqa: E402
from jaxcsp.calculator import calculate  # noqa: E402

SUITE = "potentials"


def _batch(proto, b: int, seed: int = 0, rattle: float = 0.05):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(b):
        at = proto.copy()
        strain = np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))
        at.set_cell(at.cell @ strain, scale_atoms=True)
        at.positions += rng.normal(0.0, rattle, at.positions.shape)
        out.append(at)
    return out


def _jax_md_efs(energy_fn_for, atoms):
    """Batched jax-md energy, forces, stress (ASE sign) over same-size structures."""
    from jax_md import space

    boxes = jnp.asarray(np.stack([np.asarray(a.cell).T for a in atoms]))
    pos = jnp.asarray(np.stack([a.positions for a in atoms]))
    displacement, _ = space.periodic_general(boxes[0], fractional_coordinates=False)
    energy_fn = energy_fn_for(displacement)

    def one(args):
        r, box = args
        eye = jnp.eye(3, dtype=r.dtype)

        def u(r, eps):
            return energy_fn(r, box=box, perturbation=eye + 0.5 * (eps + eps.T))

        e, (g, ge) = jax.value_and_grad(u, argnums=(0, 1))(r, jnp.zeros((3, 3), r.dtype))
        return e, -g, ge / jnp.abs(jnp.linalg.det(box))

    fn = jax.jit(lambda p, b: jax.lax.map(one, (p, b), batch_size=16))
    return lambda: fn(pos, boxes)


def _ase_loop(atoms, make_calc, n):
    sub = [a.copy() for a in atoms[:n]]
    calc = make_calc()

    def run():
        out = []
        for a in sub:
            a.calc = calc
            out.append((a.get_potential_energy(), a.get_forces(), a.get_stress()))
            calc.reset()
        return out

    return run


def _scaled(t: Timing, factor: float) -> Timing:
    return dataclasses.replace(
        t, times=tuple(x * factor for x in t.times), median=t.median * factor
    )


def _case(name, pot, atoms, jax_md_fn, ase_peers, *, repeats, n_ase):
    from jaxcsp.potentials.ase_calculator import JaxcspCalculator  # noqa: F401

    b = len(atoms)
    c = jio.from_ase(atoms)
    ours_fn = lambda: calculate(pot, c)  # noqa: E731
    ref = ours_fn()
    case = f"{name} B={b} N={len(atoms[0])}"
    ours = time_fn(ours_fn, repeats=repeats)
    if jax_md_fn is not None:
        run = _jax_md_efs(jax_md_fn, atoms)
        e_md, _, _ = run()
        err = float(np.max(np.abs(np.asarray(e_md) - np.asarray(ref.energy))))
        peer = time_fn(run, repeats=repeats)
        compare(SUITE, case, ours, peer, peer_name="jax-md (dense, lax.map)", units=b,
                extra={"max_energy_diff_eV": err})  # fmt: skip
    for peer_name, make_calc in ase_peers:
        n = min(n_ase, b)
        run = _ase_loop(atoms, make_calc, n)
        res = run()
        err = max(abs(res[i][0] - float(ref.energy[i])) for i in range(n))
        t = time_fn(run, repeats=1, warmup=0)
        compare(SUITE, case, ours, _scaled(t, b / n),
                peer_name=f"{peer_name} (loop, scaled from {n})", units=b,
                extra={"max_energy_diff_eV": err})  # fmt: skip


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--ase-structures", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="B=100, 10 ASE structures, 2 repeats")
    args = p.parse_args(argv)
    b, n_ase, repeats = args.batch, args.ase_structures, 3
    if args.quick:
        b, n_ase, repeats = 100, 10, 2

    import pyxtal
    from ase.calculators.lj import LennardJones
    from ase.calculators.tersoff import Tersoff
    from jax_md import energy

    from jaxcsp.potentials.ase_calculator import JaxcspCalculator

    # Lennard-Jones argon (σ = 3.4 Å, ε = 10.4 meV), jax-md's smooth cutoff 2σ → 2.5σ.
    sig, eps = 3.4, 0.0104
    lj = P.lennard_jones(sig, eps, 2.5 * sig, cutoff_mode="smooth", r_onset=2.0 * sig)
    argon = _batch(bulk("Ar", "fcc", a=5.26, cubic=True) * (4, 4, 4), b, rattle=0.05)
    _case(
        "lennard_jones", lj, argon,
        lambda d: energy.lennard_jones_pair(d, sigma=sig, epsilon=eps),
        [("ASE LennardJones", lambda: LennardJones(sigma=sig, epsilon=eps, rc=2.5 * sig,
                                                   ro=2.0 * sig, smooth=True))],
        repeats=repeats, n_ase=n_ase,
    )  # fmt: skip

    silicon = _batch(bulk("Si", "diamond", a=5.431, cubic=True) * (2, 2, 2), b, rattle=0.05)
    sw = P.stillinger_weber()
    _case(
        "stillinger_weber", sw, silicon,
        lambda d: energy.stillinger_weber(d, epsilon=2.1683),
        [("ASE+JaxcspCalculator", lambda: JaxcspCalculator(sw))],
        repeats=repeats, n_ase=n_ase,
    )  # fmt: skip

    path = os.path.join(os.path.dirname(pyxtal.__file__), "potentials", "Si.tersoff")
    with open(path) as fh:
        params = energy.load_lammps_tersoff_parameters(fh)
    ters = P.tersoff(path)
    _case(
        "tersoff", ters, silicon,
        lambda d: energy.tersoff(d, params),
        [("ASE Tersoff", lambda: Tersoff.from_lammps(path))],
        repeats=repeats, n_ase=max(2, n_ase // 5),
    )  # fmt: skip


if __name__ == "__main__":
    main()
