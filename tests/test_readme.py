"""The README's Python example runs as written and prints what it claims."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = code.replace('"jaxcsp/data/structures/', f'"{ROOT}/jaxcsp/data/structures/')
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().split() == "6 12 [ 4 8 8 8 6 12]".split()
    assert (tmp_path / "out.db").exists()
