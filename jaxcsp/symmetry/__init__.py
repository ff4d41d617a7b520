"""Space-group symmetry: tables, lattice constraints, Wyckoff reconstruction, generation, WPCs.

Host side (numpy) builds batches and index maps; device side (:func:`reconstruct`) is a pure
gather + einsum that jit, vmap and grad go through. See the submodules' docstrings.
"""

from jaxcsp.symmetry._generate import (
    GenerationError,
    min_distance_margin,
    random_crystals,
    spglib_space_groups,
)
from jaxcsp.symmetry._lattice import (
    cell_parameters,
    cell_rule,
    expand_cell,
    lattice_matrix,
    num_lattice_free,
)
from jaxcsp.symmetry._tables import (
    CRYSTAL_SYSTEMS,
    WyckoffPosition,
    crystal_system,
    num_wyckoff_positions,
    space_group_symbol,
    wyckoff_index,
    wyckoff_positions,
)
from jaxcsp.symmetry._wpc import (
    compatible_space_groups,
    parse_composition,
    wyckoff_combinations,
)
from jaxcsp.symmetry._wyckoff import (
    DEFAULT_BOUNDS,
    Bounds,
    WyckoffCrystals,
    denormalize_cell,
    free_variables,
    from_pyxtal,
    from_tabular,
    normalize_cell,
    reconstruct,
    site_generators,
    to_pyxtal,
    to_tabular,
    validate_free_variables,
    with_free_variables,
)

__all__ = [
    "CRYSTAL_SYSTEMS",
    "DEFAULT_BOUNDS",
    "Bounds",
    "GenerationError",
    "WyckoffCrystals",
    "WyckoffPosition",
    "cell_parameters",
    "cell_rule",
    "compatible_space_groups",
    "crystal_system",
    "denormalize_cell",
    "expand_cell",
    "free_variables",
    "from_pyxtal",
    "from_tabular",
    "lattice_matrix",
    "min_distance_margin",
    "normalize_cell",
    "num_lattice_free",
    "num_wyckoff_positions",
    "parse_composition",
    "random_crystals",
    "reconstruct",
    "site_generators",
    "space_group_symbol",
    "spglib_space_groups",
    "to_pyxtal",
    "to_tabular",
    "validate_free_variables",
    "with_free_variables",
    "wyckoff_combinations",
    "wyckoff_index",
    "wyckoff_positions",
]
