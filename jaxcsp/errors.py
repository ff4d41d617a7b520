"""Typed errors and warnings raised by jaxcsp.

Every error about bad input names *which* structure (its batch index, or the file it came
from) and *which* field is wrong, so that a batch of ten thousand candidates never fails with
an anonymous shape error or, worse, silently drops a structure.

>>> err = InvalidStructureError("cell is singular", index=3, field="lattice")
>>> str(err)
"structure 3, field 'lattice': cell is singular"
"""

from __future__ import annotations

__all__ = [
    "InvalidStructureError",
    "JaxcspError",
    "JaxcspWarning",
    "StructureFileError",
]


class JaxcspError(Exception):
    """Base class of every exception jaxcsp raises on purpose."""


class JaxcspWarning(UserWarning):
    """Base class of jaxcsp's warnings (turned into errors in the test suite)."""


class InvalidStructureError(JaxcspError, ValueError):
    """A structure (or a batch of them) failed validation.

    Attributes:
      index: batch index of the offending structure, or ``None`` when the problem concerns the
        batch as a whole (e.g. mismatched array shapes).
      field: name of the offending field (``"lattice"``, ``"frac"``, ``"species"``, ``"mask"``,
        ``"pbc"``, ...).
      source: where the structure came from (a file path, ``"ase"``, ``"pymatgen"``), if known.
    """

    def __init__(
        self,
        message: str,
        *,
        index: int | None = None,
        field: str | None = None,
        source: str | None = None,
    ):
        self.index = index
        self.field = field
        self.source = source
        self.reason = message
        where = []
        if source is not None:
            where.append(f"{source}")
        if index is not None:
            where.append(f"structure {index}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class StructureFileError(JaxcspError, OSError):
    """A structure file could not be read or written (missing, unparsable, wrong format).

    Attributes:
      path: the file's path as given.
    """

    def __init__(self, message: str, *, path: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")
