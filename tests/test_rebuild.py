"""Rebuilds: unchanged chapters are reused, prose-only edits keep the outputs, code and inputs re-execute.

A tiny book in a temporary folder (one chapter reading the results store and writing a verdict-like entry,
and a scoreboard reading it) runs through :func:`hessian_lib.book.run_book` under the smoke profile.
"""

import nbformat
import pytest
import yaml

from hessian_lib import rebuild
from hessian_lib.book import run_book
from hessian_lib.store import ResultsStore

CHAPTER_CODE = """from hessian_lib.store import ResultsStore
store = ResultsStore(results_dir)
value = store.cached({"demo": "input"}, lambda: {"x": 2.0})["x"]
import random
draw = random.random()  # differs on every execution: tells an executed copy from a reused one
store.save({"demo": "verdict", "build": build_id}, {"word": "holds" if value > 1 else "does not hold"})
print(f"value {value} draw {draw}")"""

SCOREBOARD_CODE = """from hessian_lib.store import ResultsStore
import random
word = ResultsStore(results_dir).load({"demo": "verdict", "build": build_id})["word"]
print(f"scoreboard {word} draw {random.random()}")"""

PARAMETERS = 'profile = "cpu"\noverrides = {}\nseed = 0\ndata_root = None\ndevice = "auto"\n' \
             'results_dir = "results"\nbuild_id = "interactive"\nlive_widgets = True'


def _write_chapter(path, prose, code):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# A chapter\n\n{prose}"), params, nbformat.v4.new_code_cell(code)]
    nbformat.write(nb, path)


@pytest.fixture()
def tiny_book(tmp_path, monkeypatch):
    """A project root with ``book/01_demo.ipynb`` and ``book/scoreboard.ipynb``; the cwd is moved there."""
    root = tmp_path / "root"
    (root / "book").mkdir(parents=True)
    (root / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": "book/01_demo",
                                                   "chapters": [{"file": "book/scoreboard"}]}))
    _write_chapter(root / "book" / "01_demo.ipynb", "First prose.", CHAPTER_CODE)
    _write_chapter(root / "book" / "scoreboard.ipynb", "The scoreboard.", SCOREBOARD_CODE)
    monkeypatch.chdir(root)
    monkeypatch.setattr("hessian_lib.vendor.install_static_assets", lambda *args, **kwargs: None)
    return root


def _build(root, data_root, **kwargs):
    lines = []
    run_book("smoke", data_root=data_root, device="cpu", build_dir=root / "_build", build=False,
             log=lines.append, **kwargs)
    return lines


def _outputs(root, chapter):
    nb = nbformat.read(root / "_build" / "staging" / "book" / f"{chapter}.ipynb", as_version=4)
    return [o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _status(lines, chapter):
    return next(line for line in lines if f"book/{chapter}:" in line and line.startswith("["))


def test_rebuilds_execute_only_what_changed(tiny_book, data_root):
    root = tiny_book
    first = _build(root, data_root)
    assert "executing (no earlier executed copy)" in _status(first, "01_demo")
    before = _outputs(root, "01_demo")
    assert any("value 2.0" in text for text in before)

    # Nothing changed: no chapter executes, the outputs are the very same.
    again = _build(root, data_root)
    assert "reused (unchanged" in _status(again, "01_demo") and "reused" in _status(again, "scoreboard")
    assert _outputs(root, "01_demo") == before
    assert any("Executed 0 of 2" in line for line in again)

    # Prose only: the new text around the earlier outputs, no kernel.
    source = root / "book" / "01_demo.ipynb"
    nb = nbformat.read(source, as_version=4)
    nb.cells[0].source = "# A chapter\n\nSecond prose, rewritten."
    nbformat.write(nb, source)
    prose = _build(root, data_root)
    assert "prose updated" in _status(prose, "01_demo") and "reused" in _status(prose, "scoreboard")
    staged = nbformat.read(root / "_build" / "staging" / "book" / "01_demo.ipynb", as_version=4)
    assert "Second prose, rewritten." in staged.cells[0].source
    assert _outputs(root, "01_demo") == before
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in staged.cells)

    # A code edit: that chapter and the scoreboard execute again.
    nb.cells[2].source = CHAPTER_CODE.replace("value {value}", "worth {value}")
    nbformat.write(nb, source)
    code = _build(root, data_root)
    assert "executing (code cells changed)" in _status(code, "01_demo")
    # (the reason is the verdict entry it read, now saved again with a new time, or the chapter it follows)
    assert ": executing (" in _status(code, "scoreboard")
    assert any("worth 2.0" in text for text in _outputs(root, "01_demo"))

    # A changed store entry, the library source or a parameter: the copy is stale (decided without a kernel).
    staged = root / "_build" / "staging" / "book"
    output = staged / "01_demo.ipynb"
    saved = rebuild.load_fingerprint(output)
    store = ResultsStore(root / "_build" / "results")
    assert str(store.path({"demo": "input"}).resolve()) in saved["entries"]  # the look-up was noted
    library = rebuild.library_digest()
    assert rebuild.decide(output, source, saved["parameters"], library=library).action == "reuse"
    assert rebuild.decide(output, source, saved["parameters"], library="another").reason == "library source changed"
    changed = dict(saved["parameters"], seed=1)
    assert rebuild.decide(output, source, changed, library=library).reason == "parameters changed: seed"
    store.save({"demo": "input"}, {"x": 0.5})
    decision = rebuild.decide(output, source, saved["parameters"], library=library)
    assert decision.action == "execute"
    assert decision.reason == f"1 store entry changed ({store.key({'demo': 'input'})})"
