"""Griffe extension: render jaxcsp's reST-flavoured docstrings as Markdown.

jaxcsp's docstrings are Google style (``Args:``, ``Returns:``, ``Raises:``) with a few reST
habits that Markdown would garble. Before griffe parses a docstring, this extension

* turns roles (``:func:`x```, ``:class:`~a.b.C```, ``:data:``, ``:mod:``, ``:meth:``, ...) into
  inline code (the ``~`` form keeps the last component);
* fences ``>>>`` doctest blocks that start a paragraph as ``pycon`` code;
* fences reST simple tables (``====  ====`` borders) as plain text;
* ends a ``::`` literal-block lead-in with ``:`` (the indented block is Markdown code already).

The docstrings themselves stay reST-friendly; only the rendered API reference changes.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const)+:`(~?)([^`]+)`")
_BORDER = re.compile(r"^\s*=+(\s+=+)+\s*$")


def _role(match: re.Match) -> str:
    tilde, target = match.groups()
    target = target.strip()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def _is_header(line: str, indent: str) -> bool:
    """Whether ``line`` is a section header (``Example:``) above a block indented by ``indent``."""
    stripped = line.strip()
    return stripped.endswith(":") and len(line) - len(line.lstrip()) < len(indent)


def _fence(lines: list[str]) -> list[str]:
    """Wrap doctest blocks and reST tables in code fences."""
    out: list[str] = []
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        stripped = line.lstrip()
        indent = line[: len(line) - len(stripped)]
        starts_paragraph = i == 0 or not lines[i - 1].strip()
        after_header = i > 0 and _is_header(lines[i - 1], indent)
        if stripped.startswith(">>>") and (starts_paragraph or after_header):
            j = i
            while j < n and lines[j].strip():
                j += 1
            out += [f"{indent}```pycon", *lines[i:j], f"{indent}```"]
            i = j
            continue
        if _BORDER.match(line) and starts_paragraph:
            # a simple table: top border, header, border, rows..., bottom border
            borders = [i]
            j = i + 1
            while j < n and len(borders) < 3:
                if _BORDER.match(lines[j]):
                    borders.append(j)
                elif not lines[j].strip():
                    break
                j += 1
            if len(borders) == 3:
                out += [f"{indent}```text", *lines[i:j], f"{indent}```"]
                i = j
                continue
        out.append(line)
        i += 1
    return out


def rst_to_markdown(text: str) -> str:
    """The Markdown form of one docstring (see the module docstring)."""
    text = _ROLE.sub(_role, text)
    lines = [re.sub(r"(\S)::$", r"\1:", line) for line in text.split("\n")]
    return "\n".join(_fence(lines))


class RstDocstrings(griffe.Extension):
    """Rewrite every docstring once (packages included) when the object tree is built."""

    def _rewrite(self, obj: Any) -> None:
        if obj.docstring is not None and not getattr(obj.docstring, "_jaxcsp_md", False):
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
            obj.docstring._jaxcsp_md = True

    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        self._rewrite(obj)

    def on_package(self, *, pkg: Any, **kwargs: Any) -> None:
        self._rewrite(pkg)
