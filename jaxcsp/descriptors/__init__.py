"""Local-environment descriptors: SO(3) power spectrum, coordination numbers, losses.

>>> from jaxcsp.descriptors import num_so3_components
>>> num_so3_components(2, 4)
15
"""

from jaxcsp.descriptors._so3 import (
    SO3Basis,
    num_so3_components,
    so3_basis,
    so3_power_spectrum,
    so3_power_spectrum_from_edges,
)

__all__ = [
    "SO3Basis",
    "num_so3_components",
    "so3_basis",
    "so3_power_spectrum",
    "so3_power_spectrum_from_edges",
]
