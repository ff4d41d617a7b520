"""The repository stands alone: no file points at documents that are not in it."""

import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
# spelled in pieces so that this file does not match itself
OUTSIDE = ["../" + "shared", "DESIGN" + ".md", "STYLE" + ".md", "seeds" + "/0"]


def test_no_tracked_file_refers_to_documents_outside_the_repository():
    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    hits = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.suffix in {".db", ".png", ".npz", ".pt", ".gz"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits += [(name, word) for word in OUTSIDE if word in text]
    assert not hits, hits
