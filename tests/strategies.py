"""Hypothesis strategies shared by the test modules: random periodic structures."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.geometry import cellpar_to_cell
from hypothesis import assume
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation


@st.composite
def cellpars(draw, min_len=2.0, max_len=15.0, min_angle=40.0, max_angle=140.0):
    """Valid cell parameters ``(a, b, c, alpha, beta, gamma)`` in Å and degrees, incl. skewed."""
    lengths = [draw(st.floats(min_len, max_len)) for _ in range(3)]
    angles = [draw(st.floats(min_angle, max_angle)) for _ in range(3)]
    al, be, ga = np.radians(angles)
    # Gram determinant > 0 <=> the three angles describe a real (non-degenerate) cell.
    gram = (
        1
        - np.cos(al) ** 2
        - np.cos(be) ** 2
        - np.cos(ga) ** 2
        + 2 * np.cos(al) * np.cos(be) * np.cos(ga)
    )
    assume(gram > 0.05)
    return np.array(lengths + angles)


@st.composite
def lattices(draw, **kw):
    """Right-handed ``(3, 3)`` lattice (rows, Å) from random cell parameters, randomly rotated."""
    cell = cellpar_to_cell(draw(cellpars(**kw)))
    seed = draw(st.integers(0, 2**32 - 1))
    rot = Rotation.random(random_state=seed).as_matrix()
    return cell @ rot.T


@st.composite
def atoms_objects(draw, min_atoms=1, max_atoms=16, max_z=118):
    """A random periodic ``ase.Atoms``: random lattice, species and (unwrapped) coordinates."""
    lat = draw(lattices())
    n = draw(st.integers(min_atoms, max_atoms))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    frac = rng.uniform(-0.5, 1.5, size=(n, 3))
    numbers = rng.integers(1, max_z + 1, size=n)
    return Atoms(numbers=numbers, positions=frac @ lat, cell=lat, pbc=True)
