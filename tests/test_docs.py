"""The documentation in ``docs/``: its examples run, and its API reference resolves.

* Every ```` ```pycon ```` block of every ``docs/**/*.md`` page is a doctest; a page's blocks
  run in order in one namespace, in a temporary working directory (float64 is on, as for every
  test: ``tests/conftest.py``).
* Every ``::: name`` directive of ``docs/api/*.md`` names an importable object; every name in a
  documented module's ``__all__`` resolves; every public module of jaxcsp has a directive; and
  the names of a package documented with ``members: false`` are documented in one of its
  modules. (``mkdocs build --strict``, in ``.ci/run``, checks the rendering itself.)
"""

from __future__ import annotations

import doctest
import importlib
import pathlib
import pkgutil
import re
import types

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE = re.compile(r"^\s*```\s*([\w-]*)\s*$")
DIRECTIVE = re.compile(r"^::: *([\w.]+) *$", re.M)
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
#: the capability pages, each with runnable examples
CAPABILITIES = [
    "architecture.md",
    "crystals.md",
    "symmetry.md",
    "neighbors.md",
    "descriptors.md",
    "potentials.md",
    "relaxation.md",
    "models.md",
    "search.md",
    "cli.md",
]


def examples(page: pathlib.Path) -> str:
    """The page's ``pycon`` blocks; every other line blank, so line numbers stay the page's."""
    out, lang = [], None
    for line in page.read_text(encoding="utf-8").splitlines():
        m = FENCE.match(line)
        if m and lang is None:
            lang = m.group(1)
            out.append("")
        elif m:
            lang = None
            out.append("")
        else:
            out.append(line if lang == "pycon" else "")
    return "\n".join(out) + "\n"


def test_every_capability_page_exists_with_examples():
    for name in CAPABILITIES:
        page = DOCS / name
        assert page.exists(), name
        assert ">>>" in examples(page), f"{name} has no runnable example"


@pytest.mark.slow  # compiles a program per example (~90 s): run in CI's docs step
@pytest.mark.parametrize(
    "page", [p for p in PAGES if ">>>" in examples(p)], ids=lambda p: str(p.relative_to(DOCS))
)
def test_page_examples(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    test = doctest.DocTestParser().get_doctest(
        examples(page), {"__name__": "__docs__"}, page.name, str(page), 0
    )
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)


# ---------------------------------------------------------------------- API reference


def _directives() -> list[tuple[str, str]]:
    """``(name, options)`` of every ``::: name`` directive of the API pages, in order."""
    out = []
    for page in sorted((DOCS / "api").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        matches = list(DIRECTIVE.finditer(text))
        for k, m in enumerate(matches):
            end = matches[k + 1].start() if k + 1 < len(matches) else len(text)
            out.append((m.group(1), text[m.end() : end].split("\n\n")[0]))
    return out


def _resolve(name: str):
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for attr in parts[k:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def test_api_directives_resolve():
    directives = _directives()
    assert directives, "docs/api has no ::: directives"
    for name, _ in directives:
        _resolve(name)


def test_every_public_name_of_a_documented_module_resolves():
    for name, _ in _directives():
        module = _resolve(name)
        if not isinstance(module, types.ModuleType):
            continue
        for public in getattr(module, "__all__", []):
            assert hasattr(module, public), f"{name}.__all__ names {public!r}, which is missing"


def _public_modules() -> list[str]:
    import jaxcsp

    names = ["jaxcsp", "pallas_kernels.neighbor_list"]
    for m in pkgutil.walk_packages(jaxcsp.__path__, prefix="jaxcsp."):
        parts = m.name.split(".")
        if any(p.startswith("_") for p in parts) or (parts[1] == "cli" and len(parts) > 2):
            continue  # private modules, and the CLI's subcommand modules (docs/cli.md)
        names.append(m.name)
    return names


def test_every_public_module_is_in_the_api_reference():
    documented = {name for name, _ in _directives()}
    missing = [m for m in _public_modules() if m not in documented]
    assert not missing, f"add a `::: name` directive to docs/api/ for: {missing}"


def test_names_of_a_summarised_package_are_documented_elsewhere():
    """A package rendered with ``members: false`` re-exports names shown on other pages."""
    directives = _directives()
    shown: set[int] = set()
    modules: set[str] = set()
    for name, options in directives:
        obj = _resolve(name)
        if isinstance(obj, types.ModuleType):
            modules.add(name)
            if "members: false" not in options:
                shown |= {id(getattr(obj, n)) for n in getattr(obj, "__all__", [])}
    for name, options in directives:
        if "members: false" not in options:
            continue
        package = _resolve(name)
        for public in package.__all__:
            obj = getattr(package, public)
            if isinstance(obj, types.ModuleType):
                assert obj.__name__ in modules, f"{name}.{public}: module without a page"
            elif public != "__version__":
                assert id(obj) in shown, f"{name}.{public} is documented nowhere"
