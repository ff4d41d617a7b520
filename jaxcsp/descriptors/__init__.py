"""Local-environment descriptors: SO(3) power spectrum, coordination numbers, losses.

* :class:`SO3Settings` — one frozen, validated setting of the spectrum (``nmax``, ``lmax``,
  ``rcut`` Å, ``alpha`` Å⁻², ``weight_on``), the ``settings`` argument of spectra and losses.
* :func:`so3_power_spectrum` — per-atom Bartók power spectra in PyXtal's conventions;
  :func:`so3_power_spectrum_edge_list` — the same for chosen centers from one sparse edge list
  (:func:`jaxcsp.neighbors.edge_list`).
* :func:`coordination_numbers`, :func:`valid_environment` (the CN validity test),
  :func:`smooth_coordination_numbers` (differentiable).
* :func:`reference_spectrum`, :func:`spectrum_loss` (seed Eq. 1 / PyXtal's ``calculate_S``),
  :func:`descriptor_loss` (reconstruct → neighbors → spectra → loss for Wyckoff batches).

>>> from jaxcsp.descriptors import SO3Settings, num_so3_components
>>> num_so3_components(2, 4), SO3Settings().num_components
(15, 15)
"""

from jaxcsp.descriptors._coordination import (
    PYXTAL_BOND_FACTOR,
    bond_cutoffs,
    coordination_numbers,
    pyxtal_covalent_radii,
    smooth_coordination_numbers,
    smooth_coordination_numbers_edge_list,
    valid_environment,
)
from jaxcsp.descriptors._losses import (
    WEIGHTINGS,
    descriptor_loss,
    edge_list_spec_for_sites,
    reference_spectrum,
    site_centers,
    spectrum_loss,
)
from jaxcsp.descriptors._so3 import (
    SO3Basis,
    SO3Settings,
    num_so3_components,
    so3_basis,
    so3_power_spectrum,
    so3_power_spectrum_edge_list,
    so3_power_spectrum_from_edges,
)

__all__ = [
    "PYXTAL_BOND_FACTOR",
    "WEIGHTINGS",
    "SO3Basis",
    "SO3Settings",
    "bond_cutoffs",
    "coordination_numbers",
    "descriptor_loss",
    "edge_list_spec_for_sites",
    "num_so3_components",
    "pyxtal_covalent_radii",
    "reference_spectrum",
    "site_centers",
    "smooth_coordination_numbers",
    "smooth_coordination_numbers_edge_list",
    "so3_basis",
    "so3_power_spectrum",
    "so3_power_spectrum_edge_list",
    "so3_power_spectrum_from_edges",
    "spectrum_loss",
    "valid_environment",
]
