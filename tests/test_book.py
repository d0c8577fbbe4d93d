"""The papermill pipeline: parameters are validated first, failures name the chapter and cell."""

import nbformat
import pytest

from hessian_lib.book import ChapterError, execute_chapter, list_chapters, project_root, run_book
from hessian_lib.cli import main
from hessian_lib.data import DataError
from hessian_lib.profiles import ProfileError


def _notebook(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cells = [nbformat.v4.new_code_cell('profile = "cpu"')]
    cells[0].metadata["tags"] = ["parameters"]
    cells += [nbformat.v4.new_code_cell(src) for src in sources]
    nb.cells = cells
    nbformat.write(nb, path)
    return path


def test_chapters_follow_the_table_of_contents():
    names = list_chapters()
    assert names and names[0].startswith("book/01_theory")
    assert all((project_root() / f"{n}.ipynb").exists() for n in names)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"profile": "huge"}, ProfileError, "valid profiles: cpu"),
        ({"overrides": {"theory.dimm": 3}}, ProfileError, "valid keys"),
        ({"seed": -1}, ValueError, "seed"),
        ({"device": "tpu"}, ValueError, "device"),
        ({"chapters": ["99_nothing"]}, ValueError, "valid chapters: 01_theory"),
        ({"cell_timeout": -5}, ValueError, "cell_timeout"),
    ],
)
def test_bad_parameters_fail_before_any_work(tmp_path, data_root, kwargs, error, message):
    args = {"profile": "smoke", "data_root": data_root, "build_dir": tmp_path / "build", **kwargs}
    with pytest.raises(error, match=message):
        run_book(**args)
    assert not (tmp_path / "build").exists(), "nothing may be staged before validation passes"


def test_missing_data_fails_before_any_work(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "empty")):
        run_book("smoke", data_root=tmp_path / "empty", build_dir=tmp_path / "build")
    assert not (tmp_path / "build").exists()


def test_cli_reports_bad_input_with_exit_status_2(capsys):
    assert main(["book", "--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'nope'" in err and "smoke" in err
    assert main(["book", "--set", "theory.dim"]) == 2
    assert "SECTION.FIELD=VALUE" in capsys.readouterr().err


def test_a_failing_chapter_names_itself_and_the_cell(tmp_path):
    src = _notebook(tmp_path / "07_broken.ipynb", "x = 1", "raise RuntimeError('curvature exploded')")
    with pytest.raises(ChapterError) as err:
        execute_chapter(src, tmp_path / "out" / "07_broken.ipynb", {"profile": "smoke"})
    text = str(err.value)
    assert "07_broken" in text and "curvature exploded" in text and "RuntimeError" in text
    assert err.value.cell_index == 3  # parameters, injected parameters, x = 1, the raise


def test_parameters_are_injected_and_the_injected_cell_hidden(tmp_path):
    src = _notebook(tmp_path / "ok.ipynb", "assert profile == 'smoke', profile")
    out = tmp_path / "out" / "ok.ipynb"
    seconds = execute_chapter(src, out, {"profile": "smoke"})
    assert seconds > 0
    nb = nbformat.read(out, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "remove-cell" in injected[0].metadata["tags"]


def test_a_cell_past_its_timeout_fails_the_chapter(tmp_path):
    src = _notebook(tmp_path / "08_slow.ipynb", "import time; time.sleep(30)")
    with pytest.raises(ChapterError, match="08_slow"):
        execute_chapter(src, tmp_path / "out" / "08_slow.ipynb", {"profile": "smoke"}, cell_timeout=2)
