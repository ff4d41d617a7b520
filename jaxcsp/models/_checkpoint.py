"""msgpack checkpoints of the models: atomic writes and checked reads (host side)."""

from __future__ import annotations

import os
from typing import Any

import flax.serialization

from jaxcsp.errors import JaxcspError


def write_msgpack(path: str | os.PathLike, state: dict) -> None:
    """Serialise ``state`` (a dict of arrays and plain values) to ``path`` with msgpack; the
    file is written under a temporary name and renamed, so a crash never leaves half a file."""
    data = flax.serialization.msgpack_serialize(state)
    path = os.fspath(path)
    tmp = f"{path}.partial"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def restore_msgpack(data: bytes, path: Any, *, fmt: str, version: int, what: str) -> dict:
    """The checkpoint dict in ``data`` (read from ``path``), checked to carry ``format == fmt``
    and ``version == version``.

    Raises:
      JaxcspError: not msgpack, not a ``what`` checkpoint, or an unknown version (naming the
        file).
    """
    where = os.fspath(path)
    try:
        state = flax.serialization.msgpack_restore(data)
    except Exception as exc:
        raise JaxcspError(f"{where}: not a msgpack {what} checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise JaxcspError(f"{where}: not a jaxcsp {what} checkpoint")
    if state.get("version") != version:
        raise JaxcspError(f"{where}: unknown {what} checkpoint version {state.get('version')}")
    return state
