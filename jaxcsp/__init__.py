"""jaxcsp: JAX-native differentiable crystal structure optimization and prediction.

The names re-exported here are the stable public contract.

>>> import jaxcsp as jc
>>> c = jc.Crystals.create([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 4.0]], [[0, 0, 0]], ["Cu"])
>>> int(c.num_atoms[0])
1
"""

from jaxcsp import (
    descriptors,
    design,
    elements,
    errors,
    io,
    models,
    neighbors,
    optimize,
    parallel,
    potentials,
    runtime,
    search,
    symmetry,
)
from jaxcsp.calculator import Results, calculate
from jaxcsp.crystal import Crystals, compact, concatenate, pad, stack, unstack
from jaxcsp.errors import InvalidStructureError, JaxcspError, StructureFileError

__version__ = "0.1.0"

__all__ = [
    "Crystals",
    "InvalidStructureError",
    "JaxcspError",
    "Results",
    "StructureFileError",
    "__version__",
    "calculate",
    "compact",
    "concatenate",
    "descriptors",
    "design",
    "elements",
    "errors",
    "io",
    "models",
    "neighbors",
    "optimize",
    "pad",
    "parallel",
    "potentials",
    "runtime",
    "search",
    "stack",
    "symmetry",
    "unstack",
]
