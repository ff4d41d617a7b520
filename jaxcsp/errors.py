"""Typed errors and warnings raised by jaxcsp, and the argument checks that raise them.

Every error about bad input names *which* structure (its batch index, or the file it came
from) and *which* field is wrong, so that a batch of ten thousand candidates never fails with
an anonymous shape error or, worse, silently drops a structure.

>>> err = InvalidStructureError("cell is singular", index=3, field="lattice")
>>> str(err)
"structure 3, field 'lattice': cell is singular"
"""

from __future__ import annotations

import numbers
from typing import SupportsInt, cast

import numpy as np

__all__ = [
    "InvalidArgumentError",
    "InvalidStructureError",
    "JaxcspError",
    "JaxcspWarning",
    "StructureFileError",
    "check_int",
    "check_real",
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


class InvalidArgumentError(JaxcspError, ValueError):
    """A function argument (or command-line option) is outside its domain.

    Raised on the host before anything is traced or compiled, so that e.g. ``fmax=-1`` fails
    at once instead of relaxing a batch whose rows all end ``"invalid"``.

    >>> str(InvalidArgumentError("fmax must be a positive finite number (eV/Å), got -1.0",
    ...                          argument="fmax", value=-1.0))
    'fmax must be a positive finite number (eV/Å), got -1.0'

    Attributes:
      argument: name of the offending parameter (``"fmax"``, ``"max_steps"``, ...).
      value: the value given.
    """

    def __init__(self, message: str, *, argument: str, value: object = None):
        self.argument = argument
        self.value = value
        super().__init__(message)


class StructureFileError(JaxcspError, OSError):
    """A structure file could not be read or written (missing, unparsable, wrong format).

    Attributes:
      path: the file's path as given.
    """

    def __init__(self, message: str, *, path: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {message}")


# ---------------------------------------------------------------------- argument checks


def _shown(value: object) -> str:
    """``value`` for a message: plain ``-1.0`` / ``0`` for numpy and JAX scalars too."""
    try:
        arr = np.asarray(value)
    except Exception:  # pragma: no cover - anything numpy cannot hold
        return repr(value)
    if arr.ndim == 0 and arr.dtype.kind in "iuf":
        return repr(arr.item())
    return repr(value)


def check_real(name: str, value: object, *, positive: bool = True, unit: str | None = None):
    """Raise :class:`InvalidArgumentError` unless ``value`` is a finite (positive) real number.

    Args:
      name: the parameter's name, used in the message and as ``error.argument``.
      value: a Python or numpy/JAX real scalar, or an array of them (every entry is checked).
      positive: also require ``value > 0``.
      unit: unit shown in the message (e.g. ``"eV/Å"``).

    Returns:
      ``value`` unchanged.

    >>> check_real("fmax", -1.0, unit="eV/Å")
    Traceback (most recent call last):
    ...
    jaxcsp.errors.InvalidArgumentError: fmax must be a positive finite number (eV/Å), got -1.0
    """
    ok = not isinstance(value, (bool, str, bytes, np.bool_))
    if ok:
        try:
            arr = np.asarray(value)
            ok = arr.dtype.kind in "iuf" and bool(np.all(np.isfinite(arr)))
            ok = ok and (not positive or bool(np.all(arr > 0)))
        except Exception:
            ok = False
    if not ok:
        what = "a positive finite number" if positive else "a finite number"
        units = f" ({unit})" if unit else ""
        raise InvalidArgumentError(
            f"{name} must be {what}{units}, got {_shown(value)}", argument=name, value=value
        )
    return value


def check_int(name: str, value: object, *, minimum: int = 1):
    """Raise :class:`InvalidArgumentError` unless ``value`` is an integer ``>= minimum``.

    Args:
      name: the parameter's name, used in the message and as ``error.argument``.
      value: a Python, numpy or 0-d JAX integer (``bool`` and floats such as ``10.0`` are
        refused).
      minimum: smallest allowed value.

    Returns:
      ``int(value)``.

    >>> check_int("max_steps", 0)
    Traceback (most recent call last):
    ...
    jaxcsp.errors.InvalidArgumentError: max_steps must be an integer >= 1, got 0
    """
    ok = not isinstance(value, (bool, np.bool_)) and (
        isinstance(value, numbers.Integral)
        or (getattr(value, "ndim", None) == 0 and np.asarray(value).dtype.kind in "iu")
    )
    # an Integral or a 0-d integer array: both convert with int()
    number = int(cast(SupportsInt, value)) if ok else None
    if number is None or number < minimum:
        raise InvalidArgumentError(
            f"{name} must be an integer >= {minimum}, got {_shown(value)}",
            argument=name,
            value=value,
        )
    return number
