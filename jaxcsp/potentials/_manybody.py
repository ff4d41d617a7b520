"""Many-body potentials on multi-image neighbor lists: Stillinger-Weber and Tersoff.

Both are written over full neighbor lists (``index (N, K)``, ``shift (N, K, 3)``) that include an
atom's own periodic images, so the triplet sums ``Σ_i Σ_{j≠k}`` run over neighbor *slots*: two slots
may hold the same atom with different image shifts, which is what makes 2- and 8-atom cells exact
(jax-md's versions use minimum-image lists and need cells wider than twice the cutoff; they are
the reference in the tests on such supercells). Triplet tensors are ``(N, K, K)``.

Formulas follow LAMMPS (``pair_style sw`` and ``pair_style tersoff``):

* Stillinger-Weber: ``E = Σ_{i<j} φ2(r_ij) + Σ_i Σ_{j<k} φ3``, with
  ``φ2 = A ε [B (σ/r)^p - (σ/r)^q] exp(σ / (r - aσ))`` and
  ``φ3 = λ ε (cos θ_jik - cos θ0)² exp(γσ / (r_ij - aσ)) exp(γσ / (r_ik - aσ))``.
* Tersoff: ``E = 1/2 Σ_i Σ_{j≠i} f_C(r_ij) [A e^{-λ1 r_ij} - b_ij B e^{-λ2 r_ij}]``,
  ``b_ij = (1 + (β ζ_ij)^n)^{-1/(2n)}``,
  ``ζ_ij = Σ_{k≠i,j} f_C(r_ik) g(θ_ijk) exp[(λ3 (r_ij - r_ik))^m]``,
  ``g = γ (1 + c²/d² - c² / (d² + (h - cos θ)²))``, ``f_C`` the sine switch between ``R - D``
  and ``R + D``. Two-body parameters of the pair ``ij`` come from the ``i j j`` entry of the
  file and three-body ones from ``i j k``, as in LAMMPS.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxcsp.crystal import Crystals
from jaxcsp.elements import atomic_numbers, chemical_symbols
from jaxcsp.errors import InvalidStructureError, JaxcspError
from jaxcsp.potentials._base import (
    Potential,
    accumulator_dtype,
    check_positive,
    edge_vectors_single,
    masked_distances,
    species_table,
    species_tuple,
)

__all__ = ["ParameterFileError", "read_tersoff_file", "stillinger_weber", "tersoff"]

Array = jax.Array

#: LAMMPS clamps ``exp`` arguments of the Tersoff distance penalty here (``e^69.0776 = 1e30``).
_EXP_CLAMP = 69.0776


class ParameterFileError(JaxcspError, ValueError):
    """A potential parameter file is missing or malformed.

    Attributes:
      path: the file's path as given.
      line: 1-based line number of the problem, if known.
    """

    def __init__(self, message: str, *, path: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def _cast(params: Any, dtype: Any) -> Any:
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, params
    )


# ---------------------------------------------------------------------- Stillinger-Weber


def _sw_energy(params: Any, crystal: Crystals, neighbors: Any, options: Any) -> Array:
    (cutoff,) = options
    dtype = crystal.frac.dtype
    acc = accumulator_dtype(dtype)
    p = _cast(params, dtype)
    eps, sig, a = p["epsilon"], p["sigma"], p["a"]
    rc = a * sig
    vec = edge_vectors_single(crystal, neighbors)
    r, live = masked_distances(vec, neighbors.mask, cutoff, fill=0.5 * cutoff)
    live = live & (r < rc)
    r = jnp.where(live, r, 0.5 * rc)
    sr = sig / r
    phi2 = p["A"] * eps * (p["B"] * sr ** p["p"] - sr ** p["q"]) * jnp.exp(sig / (r - rc))
    e2 = 0.5 * jnp.sum(jnp.where(live, phi2, 0.0), dtype=acc)
    radial = jnp.where(live, jnp.exp(p["gamma"] * sig / (r - rc)), 0.0)  # (N, K)
    unit = vec / r[..., None]
    cos = jnp.einsum("nja,nka->njk", unit, unit)
    k = r.shape[-1]
    pair = live[:, :, None] & live[:, None, :] & ~jnp.eye(k, dtype=bool)[None]
    h = (cos - p["cos_theta0"]) ** 2 * radial[:, :, None] * radial[:, None, :]
    e3 = 0.5 * p["lam"] * eps * jnp.sum(jnp.where(pair, h, 0.0), dtype=acc)
    return e2 + e3


def stillinger_weber(
    *,
    epsilon: float = 2.1683,
    sigma: float = 2.0951,
    a: float = 1.80,
    lam: float = 21.0,
    gamma: float = 1.20,
    cos_theta0: float = -1.0 / 3.0,
    A: float = 7.049556277,
    B: float = 0.6022245584,
    p: float = 4.0,
    q: float = 0.0,
    species: Sequence[int | str] = ("Si",),
) -> Potential:
    """Stillinger-Weber potential (defaults: the original silicon parameters, LAMMPS ``Si.sw``).

    Stillinger & Weber, Phys. Rev. B 31, 5262 (1985). Diamond Si at a = 5.431 Å: -4.3366 eV/atom.
    The same parameters are applied to every element in ``species``.

    Args:
      epsilon: energy scale ε in eV.
      sigma: length scale σ in Å.
      a: cutoff in units of σ (cutoff ``a σ`` Å).
      lam: three-body strength λ.
      gamma: three-body decay γ.
      cos_theta0: ideal angle cosine (tetrahedral ``-1/3``).
      A: two-body prefactor.
      B: two-body repulsion coefficient.
      p: repulsive exponent.
      q: attractive exponent.
      species: elements the parameters apply to.

    Returns:
      A :class:`~jaxcsp.potentials.Potential` with cutoff ``a σ`` Å.

    Raises:
      InvalidStructureError: non-positive ε, σ, a, λ, γ, A, B or p, or negative q.

    >>> sw = stillinger_weber()
    >>> round(sw.cutoff, 5), sw.species
    (3.77118, (14,))
    """
    name = "stillinger_weber"
    for key, val in dict(
        epsilon=epsilon, sigma=sigma, a=a, lam=lam, gamma=gamma, A=A, B=B, p=p
    ).items():
        check_positive(key, val, potential=name)
    check_positive("q", q, allow_zero=True, potential=name)
    sp = species_tuple(species)
    params = {
        k: jnp.asarray(float(v))
        for k, v in dict(epsilon=epsilon, sigma=sigma, a=a, lam=lam, gamma=gamma,
                         cos_theta0=cos_theta0, A=A, B=B, p=p, q=q).items()
    }  # fmt: skip
    cutoff = float(a) * float(sigma)
    return Potential(_sw_energy, params, cutoff=cutoff, species=sp, options=(cutoff,), name=name)


# ---------------------------------------------------------------------- Tersoff

#: Column names of one LAMMPS Tersoff entry after the three element names.
TERSOFF_COLUMNS = (
    "m", "gamma", "lam3", "c", "d", "h", "n", "beta", "lam2", "B", "R", "D", "lam1", "A",
)  # fmt: skip


def read_tersoff_file(path: str | os.PathLike) -> tuple[tuple[int, ...], dict[str, np.ndarray]]:
    """Parse a LAMMPS Tersoff parameter file (host side).

    Entries are 17 whitespace-separated fields (``el1 el2 el3 m γ λ3 c d h n β λ2 B R D λ1 A``),
    possibly continued over several lines; ``#`` starts a comment. Every element triplet of the
    elements present must be given exactly once.

    Args:
      path: file path.

    Returns:
      ``(species, table)``: atomic numbers in file order and a dict of ``(T, T, T)`` float64
      arrays indexed ``[i, j, k]`` for every column in :data:`TERSOFF_COLUMNS`.

    Raises:
      ParameterFileError: missing file, wrong field count, unknown element, non-numeric or
        out-of-range values (``m`` not 1 or 3, non-positive ``R``, ``D``, ``n``, ``d``, ...),
        duplicate or missing triplets; the message names the file and line.
    """
    path = str(path)
    try:
        with open(path) as fh:
            lines = fh.read().splitlines()
    except OSError as e:
        raise ParameterFileError(f"cannot read Tersoff file ({e.strerror})", path=path) from e
    tokens: list[tuple[str, int]] = []
    for lineno, line in enumerate(lines, start=1):
        tokens.extend((w, lineno) for w in line.split("#", 1)[0].split())
    if not tokens:
        raise ParameterFileError("no Tersoff entries found", path=path)
    if len(tokens) % 17:
        raise ParameterFileError(
            f"{len(tokens)} fields is not a multiple of 17 (el1 el2 el3 + 14 numbers per entry)",
            path=path, line=tokens[-1][1],
        )  # fmt: skip
    entries = []
    order: list[int] = []
    for start in range(0, len(tokens), 17):
        chunk = tokens[start : start + 17]
        lineno = chunk[0][1]
        try:
            zs = atomic_numbers([w for w, _ in chunk[:3]])
        except InvalidStructureError as e:
            raise ParameterFileError(
                f"unknown element in entry: {e.reason}", path=path, line=lineno
            ) from e
        try:
            values = [float(w) for w, _ in chunk[3:]]
        except ValueError as e:
            raise ParameterFileError(f"non-numeric parameter ({e})", path=path, line=lineno) from e
        vals = dict(zip(TERSOFF_COLUMNS, values, strict=True))
        bad = [k for k, v in vals.items() if not np.isfinite(v)]
        if vals["m"] not in (1.0, 3.0):
            bad.append("m (must be 1 or 3)")
        bad += [k for k in ("c", "R", "D", "n", "gamma") if not vals[k] > 0]
        bad += [k for k in ("d",) if vals[k] == 0]
        bad += [k for k in ("beta", "lam2", "B", "lam1", "A") if not vals[k] >= 0]
        if vals["D"] > vals["R"]:
            bad.append("D (must not exceed R)")
        if bad:
            raise ParameterFileError(
                f"invalid parameter(s) {bad} in entry {chunk[0][0]} {chunk[1][0]} {chunk[2][0]}",
                path=path,
                line=lineno,
            )
        for z in zs:
            if z not in order:
                order.append(z)
        entries.append((zs, vals, lineno))
    t = len(order)
    idx = {z: i for i, z in enumerate(order)}
    table = {k: np.full((t, t, t), np.nan) for k in TERSOFF_COLUMNS}
    seen = np.zeros((t, t, t), dtype=bool)
    for zs, vals, lineno in entries:
        i, j, k = (idx[z] for z in zs)
        if seen[i, j, k]:
            raise ParameterFileError(f"duplicate entry for triplet {zs}", path=path, line=lineno)
        seen[i, j, k] = True
        for key, v in vals.items():
            table[key][i, j, k] = v
    if not seen.all():
        i, j, k = np.argwhere(~seen)[0]
        missing = chemical_symbols([order[i], order[j], order[k]])
        raise ParameterFileError(f"missing entry for triplet {' '.join(missing)}", path=path)
    return tuple(order), table


def _fc(r: Array, big_r: Array, big_d: Array) -> Array:
    mid = 0.5 * (1.0 - jnp.sin(0.5 * jnp.pi * (r - big_r) / big_d))
    return jnp.where(r < big_r - big_d, 1.0, jnp.where(r < big_r + big_d, mid, 0.0))


def _tersoff_energy(params: Any, crystal: Crystals, neighbors: Any, options: Any) -> Array:
    (cutoff,) = options
    dtype = crystal.frac.dtype
    acc = accumulator_dtype(dtype)
    p = _cast(params, dtype)
    vec = edge_vectors_single(crystal, neighbors)
    r, live = masked_distances(vec, neighbors.mask, cutoff, fill=0.5 * cutoff)
    types = p["types"][crystal.species]
    ti = types[:, None]  # (N, 1)
    tj = types[neighbors.index]  # (N, K)
    t3 = p["three"]
    if t3["A"].shape[0] == 1:  # one element: scalars, no per-edge / per-triplet gathers
        two = three = {k: v[0, 0, 0] for k, v in t3.items()}
    else:
        two = {k: t3[k][ti, tj, tj] for k in ("n", "beta", "lam2", "B", "R", "D", "lam1", "A")}
        a, b, c = ti[:, :, None], tj[:, :, None], tj[:, None, :]
        three = {k: t3[k][a, b, c] for k in ("m", "gamma", "lam3", "c", "d", "h", "R", "D")}
    fc_ij = jnp.where(live, _fc(r, two["R"], two["D"]), 0.0)
    # three-body tensors (N, K_j, K_k)
    unit = vec / r[..., None]
    cos = jnp.einsum("nja,nka->njk", unit, unit)
    rij, rik = r[:, :, None], r[:, None, :]
    c2, d2 = three["c"] ** 2, three["d"] ** 2
    g = three["gamma"] * (1.0 + c2 / d2 - c2 / (d2 + (three["h"] - cos) ** 2))
    x = three["lam3"] * (rij - rik)
    arg = jnp.where(three["m"] == 3.0, x * x * x, x)
    ex = jnp.exp(jnp.minimum(arg, _EXP_CLAMP))
    k = r.shape[-1]
    pair = live[:, :, None] & live[:, None, :] & ~jnp.eye(k, dtype=bool)[None]
    terms = _fc(rik, three["R"], three["D"]) * g * ex
    zeta = jnp.sum(jnp.where(pair, terms, 0.0), axis=-1)  # (N, K)
    t = two["beta"] * zeta
    pos = t > 0
    tn = jnp.where(pos, jnp.where(pos, t, 1.0) ** two["n"], 0.0)
    bij = (1.0 + tn) ** (-0.5 / two["n"])
    e = fc_ij * (two["A"] * jnp.exp(-two["lam1"] * r) - bij * two["B"] * jnp.exp(-two["lam2"] * r))
    return 0.5 * jnp.sum(jnp.where(live, e, 0.0), dtype=acc)


def tersoff(path: str | os.PathLike) -> Potential:
    """Tersoff potential from a LAMMPS parameter file (e.g. pyxtal's ``Si.tersoff``).

    J. Tersoff, Phys. Rev. B 37, 6991 (1988) / 38, 9902 (1988); LAMMPS ``pair_style tersoff``
    conventions (see the module docstring). Diamond Si with ``Si.tersoff`` (Tersoff 1988b) at
    a = 5.431 Å: -4.6304 eV/atom.

    Args:
      path: LAMMPS ``.tersoff`` file (multi-element files are supported).

    Returns:
      A :class:`~jaxcsp.potentials.Potential` covering the file's elements; cutoff
      ``max(R + D)`` Å.

    Raises:
      ParameterFileError: missing or malformed file (names the file and line).
    """
    species, table = read_tersoff_file(path)
    cutoff = float(np.max(table["R"] + table["D"]))
    params = {
        "types": jnp.asarray(species_table(species)),
        "three": {k: jnp.asarray(v) for k, v in table.items()},
    }
    return Potential(
        _tersoff_energy, params, cutoff=cutoff, species=tuple(sorted(species)),
        options=(cutoff,), name=f"tersoff({os.path.basename(str(path))})",
    )  # fmt: skip


#: the carbon Tersoff parameter file shipped with jaxcsp (Tersoff 1988/1989)
CARBON_TERSOFF_FILE = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "data", "potentials", "C.tersoff"
)


def tersoff_carbon() -> Potential:
    """Tersoff's carbon potential (Phys. Rev. Lett. 61, 2879 (1988); PRB 39, 5566 (1989)).

    The parameters ship with jaxcsp (:data:`CARBON_TERSOFF_FILE`); cutoff 2.1 Å. Diamond at
    a = 3.566 Å: -7.37 eV/atom; a graphene sheet is slightly lower (about -7.40 eV/atom), and
    graphite's layers do not bind (no dispersion term). The classical stand-in for a universal
    potential in the carbon design workflow.
    """
    return tersoff(CARBON_TERSOFF_FILE)
