"""The papermill pipeline: parameters are validated first, failures name the chapter and cell."""

import hashlib
import json
import re
import subprocess

import nbformat
import pytest
import torch
import yaml

from hessian_lib import provenance
from hessian_lib.book import (
    BUILD_FILE,
    ChapterError,
    build_identity,
    execute_chapter,
    list_chapters,
    new_build_id,
    project_root,
    run_book,
)
from hessian_lib.cli import main
from hessian_lib.data import DOWNLOAD_ENV, DataError
from hessian_lib.figures import GLUE_PREFIX
from hessian_lib.profiles import ProfileError, load_profile
from hessian_lib.provenance import write_about_page


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


def test_missing_data_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv(DOWNLOAD_ENV, "0")  # never the network, whatever the environment says
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


def test_build_ids_are_unique_and_sortable():
    ids = [new_build_id() for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", i) for i in ids)


def test_the_scoreboard_is_the_last_chapter():
    assert list_chapters()[-1] == "book/scoreboard"


def test_build_id_is_injected_and_every_code_cell_reported(tmp_path):
    src = _notebook(tmp_path / "ok.ipynb", "assert build_id == 'b-42', build_id", "x = 2")
    calls = []
    execute_chapter(src, tmp_path / "out" / "ok.ipynb", {"profile": "smoke", "build_id": "b-42"},
                    on_cell=lambda *args: calls.append(args))
    # (notebook cell index, k-th code cell, code cells, seconds): parameters, injected parameters, two cells
    assert [c[:3] for c in calls] == [(0, 1, 4), (1, 2, 4), (2, 3, 4), (3, 4, 4)]
    assert all(c[3] >= 0 for c in calls)


def test_a_chapter_figure_and_table_become_numbered_directives(tmp_path):
    src = _notebook(tmp_path / "fig.ipynb", """
import matplotlib.pyplot as plt
import pandas as pd
from hessian_lib.figures import show_figure, show_table
fig, ax = plt.subplots()
ax.plot([1, 2, 3])
show_figure(fig, "test-line", "A straight line.")
show_table(pd.DataFrame({"B": [1, 2]}), "test-table", "Two batch sizes.")
print("after the table")
""")
    out = tmp_path / "out" / "fig.ipynb"
    execute_chapter(src, out, {"profile": "smoke"})
    cells = nbformat.read(out, as_version=4).cells
    directives = [c.source.splitlines()[0] for c in cells if c.cell_type == "markdown"]
    assert directives == ["::::{glue:figure} test-line", "::::{table} Two batch sizes."]
    glued = [o for c in cells if c.cell_type == "code" for o in c.outputs if "scrapbook" in o.get("metadata", {})]
    assert len(glued) == 1 and f"{GLUE_PREFIX}image/png" in glued[0].data
    assert cells[-1].outputs[0].text.strip() == "after the table"   # the print stays after the table


def test_about_page_states_the_build(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.npz").write_bytes(b"train bytes")
    (data / "meta.json").write_text("{}")
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nparts:\n  - caption: A\n    chapters:\n"
                                      "      - file: book/01_theory\n")
    profile = load_profile("smoke", {"theory.dim": 300})
    kwargs = dict(root=project_root(), profile=profile, overrides={"theory.dim": 300}, seed=3, device="cpu",
                  data_root=data, build_id="b-1", timings={"book/01_theory": 12.25, "book/02_spectra": 40.0},
                  rerun={"book/01_theory"}, checksum_cache=tmp_path / "sums.json")
    page = write_about_page(staging, "book/about", **kwargs).read_text()
    lines = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in sorted(data.iterdir()))
    assert hashlib.sha256(lines.encode()).hexdigest() in page
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert commit in page and "b-1" in page and f"{torch.__version__}" in page
    for key in ("theory.dim (set for this build)", "train.model", "spectra.batch_sizes"):
        assert f"| {key} |" in page.replace("\\_", "_").replace("\\.", ".")
    assert "12.2 s" in page and "40.0 s (kept from an earlier run)" in page
    assert yaml.safe_load((staging / "_toc.yml").read_text())["parts"][-1]["chapters"][-1] == {"file": "book/about"}
    # the checksums are cached: a second page reads no data file
    monkeypatch.setattr(provenance, "_sha256", lambda path: pytest.fail(f"{path} read again"))
    write_about_page(staging, "book/about", **kwargs)


def test_a_partial_run_continues_the_staged_build(tmp_path):
    settings = {"profile": "smoke", "overrides": {}, "seed": 0}
    assert build_identity(tmp_path, settings, partial=True) != build_identity(tmp_path, settings, partial=True)
    (tmp_path / BUILD_FILE).write_text(json.dumps({"build_id": "b-7", "settings": settings}))
    assert build_identity(tmp_path, settings, partial=True) == "b-7"
    assert build_identity(tmp_path, settings, partial=False) != "b-7"           # a full run is a new build
    assert build_identity(tmp_path, {**settings, "seed": 1}, partial=True) != "b-7"  # other settings: new build
