"""The notebooks in ``notebooks/`` are committed without outputs, each introduces itself and
ends by checking what it shows, every search method has one, and the figure check of
``notebooks/run.py`` tells a figure with data from an empty one.

Executing the notebooks is CI's notebooks step (``python notebooks/run.py``, ``notebooks``
extra), not part of this suite.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import json
import pathlib

import pytest

import jaxcsp.search

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

#: search methods whose notebook calls the function that runs them rather than the factory
RUNNERS = {"dual_level_search": "jc.search.dual_level("}


def _load(path: pathlib.Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _source(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _runner():
    spec = importlib.util.spec_from_file_location("notebooks_run", ROOT / "notebooks" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_notebooks_are_there():
    names = [p.name for p in NOTEBOOKS]
    assert len(names) >= 7, names
    assert names[:4] == [
        "01_wyckoff_gradients.ipynb",
        "02_descriptor_design.ipynb",
        "03_batched_relaxation.ipynb",
        "04_csp_search.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_have_no_outputs(path):
    nb = _load(path)
    assert nb["nbformat"] == 4
    assert "widgets" not in nb["metadata"], "saved widget state: strip the notebook"
    for k, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{path.name} cell {k} has outputs: strip the notebook"
            assert cell["execution_count"] is None, f"{path.name} cell {k} has an execution count"
        assert "execution" not in cell.get("metadata", {}), f"{path.name} cell {k}: timings"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_introduces_itself_and_ends_with_checks(path):
    cells = _load(path)["cells"]
    assert cells[0]["cell_type"] == "markdown" and _source(cells[0]).startswith("# ")
    last = cells[-1]
    assert last["cell_type"] == "code" and "assert " in _source(last)
    code = "\n".join(_source(c) for c in cells if c["cell_type"] == "code")
    assert "plt.show()" in code  # shows at least one figure inline
    assert "../" not in code  # runs from any checkout: data through jaxcsp's package path


def test_every_search_method_has_a_notebook():
    code = "\n".join(
        _source(c) for p in NOTEBOOKS for c in _load(p)["cells"] if c["cell_type"] == "code"
    )
    factories = [
        name
        for name in jaxcsp.search.__all__
        if inspect.isfunction(f := getattr(jaxcsp.search, name))
        and inspect.signature(f).return_annotation in ("Method", jaxcsp.search.Method)
    ]
    assert {"random_search", "crysim_search", "basin_hopping", "dual_level_search"} <= set(
        factories
    )
    missing = [n for n in factories if RUNNERS.get(n, f"jc.search.{n}(") not in code]
    assert not missing, f"search methods without a notebook: {missing}"


def _png(draw) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3))
    draw(ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def test_the_figure_check_tells_data_from_an_empty_figure():
    check = _runner().figure_problem
    assert check(_png(lambda ax: ax.plot([0, 1, 2], [1, 3, 2], color="tab:blue"))) is None
    assert check(_png(lambda ax: ax.bar([0, 1], [2, 1], color="tab:orange"))) is None
    assert "no data" in check(_png(lambda ax: ax.set_xlabel("nothing plotted")))
    assert "no data" in check(_png(lambda ax: ax.plot([], [])))
    assert "does not decode" in check(b"not a png")
