"""Conversion between :class:`~jaxcsp.Crystals` and ASE / pymatgen objects, files and databases.

All functions here run on the host. Converters are exact in float64 (round trips reproduce
Cartesian positions to ~1e-14 Å); in float32 they are exact to float32 precision.

File formats go through :mod:`ase.io`; the precision a file keeps is the format's:

================  ==========================================================================
format            what a write/read round trip preserves
================  ==========================================================================
ASE db (SQLite)   everything, bit for bit (binary float64), plus key-value metadata
POSCAR / vasp     lattice and fractional coordinates to 1e-16 (one structure per file)
CIF               cell *parameters* and fractional coordinates to full precision; the cell is
                  re-oriented to the standard setting (a along x), so compare metrics, not rows
extxyz            positions to 1e-8 Å (ASE writes ``%16.8f``); lattice to full precision
================  ==========================================================================

>>> from ase.build import bulk
>>> c = from_ase([bulk("Si", "diamond", a=5.43), bulk("Cu", "fcc", a=3.6)])
>>> c.batch_size, c.max_atoms
(2, 2)
>>> [a.get_chemical_formula() for a in to_ase(c)]
['Si2', 'Cu']
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxcsp.crystal import Crystals
from jaxcsp.errors import InvalidStructureError, StructureFileError

__all__ = [
    "connect_db",
    "from_ase",
    "from_pymatgen",
    "read",
    "read_db",
    "to_ase",
    "to_pymatgen",
    "write",
    "write_db",
]


def _pack(
    cells: list[np.ndarray],
    fracs: list[np.ndarray],
    numbers_: list[np.ndarray],
    *,
    dtype: Any,
    max_atoms: int | None,
    source: str | None,
) -> Crystals:
    if not cells:
        raise InvalidStructureError("no structures given", source=source)
    n = max(len(z) for z in numbers_)
    if max_atoms is not None:
        if max_atoms < n:
            big = int(np.argmax([len(z) for z in numbers_]))
            raise InvalidStructureError(
                f"{len(numbers_[big])} atoms exceed max_atoms={max_atoms}",
                index=big,
                field="species",
                source=source,
            )
        n = max_atoms
    b = len(cells)
    lattice = np.stack(cells).astype(np.float64)
    frac = np.zeros((b, n, 3), np.float64)
    species = np.zeros((b, n), np.int32)
    for i, (f, z) in enumerate(zip(fracs, numbers_, strict=True)):
        frac[i, : len(z)] = f
        species[i, : len(z)] = z
    return Crystals.create(lattice, frac, species, dtype=dtype, source=source)


# ---------------------------------------------------------------------- ASE


def from_ase(
    atoms: Any,
    *,
    dtype: Any | None = None,
    max_atoms: int | None = None,
    source: str | None = None,
) -> Crystals:
    """Convert ASE ``Atoms`` (one or a sequence) to a padded ``Crystals`` batch.

    Args:
      atoms: an ``ase.Atoms`` or a sequence of them; each must be periodic in all three
        directions with a non-singular, right-handed cell.
      dtype: float dtype of the result (default: float64 if ``jax_enable_x64`` else float32).
      max_atoms: slot count ``N`` (default: the largest structure's atom count).
      source: name used in error messages (default ``"ase"``).

    Returns:
      ``Crystals`` with ``lattice (B,3,3)`` = ``atoms.cell`` rows (Å) and ``frac (B,N,3)`` =
      ``atoms.get_scaled_positions(wrap=False)`` (positions are not wrapped).

    Raises:
      InvalidStructureError: non-periodic structure, dummy atoms (Z = 0), bad cell or coordinates.
    """
    from ase import Atoms

    source = "ase" if source is None else source
    images = [atoms] if isinstance(atoms, Atoms) else list(atoms)
    cells, fracs, zs = [], [], []
    for i, a in enumerate(images):
        if not isinstance(a, Atoms):
            raise InvalidStructureError(
                f"expected ase.Atoms, got {type(a).__name__}", index=i, source=source
            )
        if not all(a.pbc):
            raise InvalidStructureError(
                f"structure must be periodic in 3D, got pbc={a.pbc.tolist()}",
                index=i,
                field="pbc",
                source=source,
            )
        z = a.numbers
        if len(z) == 0:
            raise InvalidStructureError(
                "structure has no atoms", index=i, field="species", source=source
            )
        if np.any(z <= 0):
            raise InvalidStructureError(
                f"dummy atom (Z = 0) at index {int(np.argmax(z <= 0))} is not supported",
                index=i,
                field="species",
                source=source,
            )
        cell = a.cell.array
        vol = np.linalg.det(cell)
        if not np.all(np.isfinite(cell)) or abs(vol) <= 1e-8 * np.prod(
            np.linalg.norm(cell, axis=1)
        ):
            # Let validation produce the message; scaled positions would fail on a singular cell.
            frac = np.zeros((len(z), 3))
        else:
            frac = np.linalg.solve(cell.T, a.positions.T).T
        cells.append(cell)
        fracs.append(frac)
        zs.append(z)
    return _pack(cells, fracs, zs, dtype=dtype, max_atoms=max_atoms, source=source)


def to_ase(crystals: Crystals) -> list:
    """Convert a ``Crystals`` batch to a list of ``ase.Atoms`` (padding removed, pbc on).

    Args:
      crystals: a batch ``(B, ...)`` or a single crystal.

    Returns:
      ``B`` ``ase.Atoms`` with ``cell = lattice[i]`` and ``positions = frac[i] @ lattice[i]`` (Å),
      real atoms only, in slot order.
    """
    from ase import Atoms

    lat, frac, species, mask = _host_arrays(crystals)
    out = []
    for i in range(lat.shape[0]):
        m = mask[i]
        out.append(
            Atoms(numbers=species[i][m], positions=frac[i][m] @ lat[i], cell=lat[i], pbc=True)
        )
    return out


def _host_arrays(crystals: Crystals):
    lat = np.asarray(crystals.lattice, dtype=np.float64)
    frac = np.asarray(crystals.frac, dtype=np.float64)
    species = np.asarray(crystals.species)
    mask = np.asarray(crystals.mask)
    if lat.ndim == 2:
        lat, frac, species, mask = lat[None], frac[None], species[None], mask[None]
    return lat, frac, species, mask


# ---------------------------------------------------------------------- pymatgen


def from_pymatgen(
    structures: Any,
    *,
    dtype: Any | None = None,
    max_atoms: int | None = None,
    source: str | None = None,
) -> Crystals:
    """Convert pymatgen ``Structure`` objects (one or a sequence) to ``Crystals``.

    Args:
      structures: an ordered ``pymatgen.core.Structure`` or a sequence of them.
      dtype, max_atoms: as in :func:`from_ase`.
      source: name used in error messages (default ``"pymatgen"``).

    Returns:
      ``Crystals`` with ``lattice = structure.lattice.matrix`` (Å) and
      ``frac = structure.frac_coords``.

    Raises:
      InvalidStructureError: disordered sites, dummy species, bad cell or coordinates.
    """
    from pymatgen.core import Element, IStructure, Structure

    source = "pymatgen" if source is None else source
    items = [structures] if isinstance(structures, (Structure, IStructure)) else list(structures)
    cells, fracs, zs = [], [], []
    for i, s in enumerate(items):
        if not isinstance(s, (Structure, IStructure)):
            raise InvalidStructureError(
                f"expected pymatgen Structure, got {type(s).__name__}", index=i, source=source
            )
        if not s.is_ordered:
            raise InvalidStructureError(
                "disordered (partially occupied) sites are not supported",
                index=i,
                field="species",
                source=source,
            )
        z = []
        for j, site in enumerate(s):
            sp = site.specie
            el = getattr(sp, "element", sp)
            if not isinstance(el, Element):
                raise InvalidStructureError(
                    f"site {j} has non-element species {sp!s}",
                    index=i,
                    field="species",
                    source=source,
                )
            z.append(el.Z)
        if not z:
            raise InvalidStructureError(
                "structure has no atoms", index=i, field="species", source=source
            )
        cells.append(np.asarray(s.lattice.matrix, dtype=np.float64))
        fracs.append(np.asarray(s.frac_coords, dtype=np.float64))
        zs.append(np.asarray(z, dtype=np.int32))
    return _pack(cells, fracs, zs, dtype=dtype, max_atoms=max_atoms, source=source)


def to_pymatgen(crystals: Crystals) -> list:
    """Convert a ``Crystals`` batch to a list of pymatgen ``Structure`` (padding removed).

    Fractional coordinates are passed through unchanged (not wrapped).
    """
    from pymatgen.core import Element, Lattice, Structure

    lat, frac, species, mask = _host_arrays(crystals)
    out = []
    for i in range(lat.shape[0]):
        m = mask[i]
        out.append(
            Structure(
                Lattice(lat[i]),
                [Element.from_Z(int(z)) for z in species[i][m]],
                frac[i][m],
                coords_are_cartesian=False,
                to_unit_cell=False,
            )
        )
    return out


# ---------------------------------------------------------------------- files


def read(
    path: str | os.PathLike,
    *,
    index: Any = ":",
    format: str | None = None,
    dtype: Any | None = None,
    max_atoms: int | None = None,
) -> Crystals:
    """Read every structure in a file (CIF, extxyz, POSCAR, ASE db, ... through ASE).

    Args:
      path: file path.
      index: which images to read (ASE syntax, default all: ``":"``).
      format: ASE format name; guessed from the file name when ``None``.
      dtype, max_atoms: as in :func:`from_ase`.

    Returns:
      ``Crystals`` batch of the file's structures, in file order.

    Raises:
      StructureFileError: missing file, unparsable content, or no structures in it.
      InvalidStructureError: a structure read fine but is invalid (names the file and index).
    """
    import ase.io

    path = os.fspath(path)
    if not os.path.exists(path):
        raise StructureFileError("no such file", path=path)
    try:
        images = ase.io.read(path, index=index, format=format)
    except Exception as e:  # ASE raises many types for bad content
        detail = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        raise StructureFileError(f"could not parse ({detail})", path=path) from e
    if not isinstance(images, list):
        images = [images]
    if not images:
        raise StructureFileError("file holds no structures", path=path)
    return from_ase(images, dtype=dtype, max_atoms=max_atoms, source=path)


def write(
    path: str | os.PathLike, crystals: Crystals, *, format: str | None = None, **kwargs
) -> None:
    """Write a batch to a file through :func:`ase.io.write` (many structures where allowed).

    Args:
      path: file path; the format is guessed from its name unless ``format`` is given.
      crystals: batch to write (padding removed).
      format: ASE format name (``"cif"``, ``"extxyz"``, ``"vasp"``, ``"db"``, ...).
      **kwargs: passed to :func:`ase.io.write`.

    Raises:
      StructureFileError: the format holds one structure but the batch has several, or ASE
        failed to write.
    """
    import ase.io
    from ase.io.formats import filetype, ioformats

    path = os.fspath(path)
    images = to_ase(crystals)
    fmt = format
    if fmt is None:
        try:
            fmt = filetype(path, read=False)
        except Exception as e:
            raise StructureFileError(
                f"cannot tell the format from the name ({e})", path=path
            ) from e
    io = ioformats.get(fmt)
    if io is not None and io.single and len(images) > 1:
        raise StructureFileError(
            f"format {fmt!r} holds one structure per file but the batch has {len(images)}; "
            "write them one by one or use extxyz/cif/db",
            path=path,
        )
    try:
        ase.io.write(path, images if len(images) > 1 else images[0], format=fmt, **kwargs)
    except Exception as e:
        raise StructureFileError(
            f"could not write as {fmt!r} ({type(e).__name__}: {e})", path=path
        ) from e


# ---------------------------------------------------------------------- ASE database


def connect_db(path: str | os.PathLike, *, write: bool = True):
    """Open an ASE database (SQLite path or URL) without ASE's lock file.

    SQLite and PostgreSQL make every write a transaction already; ASE's extra ``.lock`` file is
    left behind when a process is killed mid-write and then blocks every later writer forever,
    which would defeat resuming a killed run.

    A plain path is checked first, so that a wrong output location fails on one line before
    any work is done instead of with a raw ``sqlite3`` traceback at the first write.

    Args:
      path: database file (type from its extension: ``.db`` SQLite, ``.json``) or URL
        (``postgresql://...``, not checked).
      write: the caller will write: the directory (and an existing file) must be writable.

    Returns:
      The ``ase.db`` database object.

    Raises:
      StructureFileError: the path is a directory, its directory does not exist or is not
        writable, an existing ``.db`` file is not an SQLite database, or ASE cannot tell the
        database type from the name.
    """
    import ase.db

    spath = os.fspath(path)
    if "://" not in spath:
        _check_db_path(spath, write=write)
    try:
        return ase.db.connect(spath, use_lock_file=False)
    except ValueError as e:  # e.g. "No file extension or database type given"
        raise StructureFileError(f"cannot open as a database ({e})", path=spath) from e


def _check_db_path(path: str, *, write: bool) -> None:
    if os.path.isdir(path):
        raise StructureFileError("is a directory, not a database file", path=path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise StructureFileError(f"directory {parent} does not exist", path=path)
    if write and not os.access(parent, os.W_OK | os.X_OK):
        raise StructureFileError(f"directory {parent} is not writable", path=path)
    if not os.path.exists(path):
        return
    if write and not os.access(path, os.W_OK):
        raise StructureFileError("file is not writable", path=path)
    if path.endswith(".db") and os.path.getsize(path) > 0:
        try:
            with open(path, "rb") as fh:
                header = fh.read(16)
        except OSError as e:
            raise StructureFileError(f"cannot read ({e.strerror})", path=path) from e
        if header != b"SQLite format 3\x00":
            raise StructureFileError("exists and is not an SQLite database", path=path)


def _plain(value: Any, key: str, index: int) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return _plain(value.item(), key, index)
    if hasattr(value, "shape") and getattr(value, "ndim", None) == 0:  # jax scalar
        return _plain(np.asarray(value).item(), key, index)
    raise InvalidStructureError(
        f"key-value {key!r} must be a str, bool or number, got {type(value).__name__}",
        index=index,
        field="key_value_pairs",
    )


def _rows_of(meta: Any, b: int, name: str) -> list[dict]:
    if meta is None:
        return [{} for _ in range(b)]
    if isinstance(meta, Mapping):  # dict of per-structure sequences (or scalars shared by all)
        rows: list[dict] = [{} for _ in range(b)]
        for key, vals in meta.items():
            arr = np.asarray(vals) if not isinstance(vals, str) else None
            if arr is None or arr.ndim == 0:
                for r in rows:
                    r[key] = vals
                continue
            if len(vals) != b:
                raise InvalidStructureError(
                    f"{name}[{key!r}] has {len(vals)} entries for {b} structures", field=name
                )
            for r, v in zip(rows, vals, strict=True):
                r[key] = v
        return rows
    rows = list(meta)
    if len(rows) != b:
        raise InvalidStructureError(f"{len(rows)} {name} rows for {b} structures", field=name)
    return [dict(r) for r in rows]


def write_db(
    path: str | os.PathLike,
    crystals: Crystals,
    *,
    key_value_pairs: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None = None,
    data: Sequence[Mapping[str, Any]] | None = None,
) -> list[int]:
    """Append a batch to an ASE database (SQLite file, or any URL :func:`ase.db.connect` takes).

    All rows are written in one transaction: either every structure lands or none does.

    Args:
      path: database path or URL.
      crystals: batch of ``B`` structures.
      key_value_pairs: per-structure metadata, either ``B`` dicts or one dict of length-``B``
        sequences (scalars are shared by all rows); values str, bool, int or float.
      data: optional ``B`` dicts of arrays stored in each row's ``data`` blob.

    Returns:
      The ``B`` new row ids, in batch order.
    """

    images = to_ase(crystals)
    b = len(images)
    kvps = _rows_of(key_value_pairs, b, "key_value_pairs")
    kvps = [{k: _plain(v, k, i) for k, v in row.items()} for i, row in enumerate(kvps)]
    datas = _rows_of(data, b, "data") if data is not None else [None] * b
    ids = []
    try:
        db = connect_db(path)
        with db:
            for atoms, kvp, d in zip(images, kvps, datas, strict=True):
                ids.append(db.write(atoms, key_value_pairs=kvp, data=d or {}))
    except (ValueError, KeyError) as e:
        raise StructureFileError(f"could not write rows ({e})", path=os.fspath(path)) from e
    return ids


def read_db(
    path: str | os.PathLike,
    selection: Any = None,
    *,
    dtype: Any | None = None,
    max_atoms: int | None = None,
    with_data: bool = False,
    **query: Any,
) -> tuple[Crystals, list[dict]]:
    """Read rows of an ASE database as a batch plus their metadata.

    Args:
      path: database path or URL (must exist).
      selection: ASE selection string/int/list (e.g. ``"spg=194,loss<0.1"``); ``None`` = all.
      dtype, max_atoms: as in :func:`from_ase`.
      with_data: also return each row's ``data`` dict under the key ``"data"``.
      **query: extra key=value filters passed to ``db.select``.

    Returns:
      ``(crystals, rows)``: rows are dicts with ``"id"`` and the row's key-value pairs, in id order.

    Raises:
      StructureFileError: missing database or no matching rows.
    """

    spath = os.fspath(path)
    if "://" not in spath and not os.path.exists(spath):
        raise StructureFileError("no such database", path=spath)
    try:
        db = connect_db(spath, write=False)
        rows = list(db.select(selection, sort="id", **query))
    except StructureFileError:
        raise
    except Exception as e:
        raise StructureFileError(
            f"could not read database ({type(e).__name__}: {e})", path=spath
        ) from e
    if not rows:
        raise StructureFileError(
            f"no rows match selection {selection!r} {query or ''}".strip(), path=spath
        )
    images = [r.toatoms() for r in rows]
    meta = []
    for r in rows:
        m = {"id": r.id, **r.key_value_pairs}
        if with_data:
            m["data"] = dict(r.data)
        meta.append(m)
    return from_ase(images, dtype=dtype, max_atoms=max_atoms, source=spath), meta
