"""Run the ``>>>`` examples in every jaxcsp module's docstrings."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import jaxcsp

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(jaxcsp.__path__, prefix="jaxcsp.")
    if not m.name.rsplit(".", 1)[-1].startswith("__")
)


@pytest.mark.parametrize("name", ["jaxcsp", "benchmarks.harness", *MODULES])
def test_doctests(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
