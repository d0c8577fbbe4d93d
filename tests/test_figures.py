"""Numbered figures and tables: what a chapter displays, and what the pipeline turns it into."""

from __future__ import annotations

import nbformat
import pandas as pd
import pytest

from hessian_lib.figures import CONTINUED, GLUE_PREFIX, MARKER, number_figures, numref, table_markdown


def _output(kind=None, name="x", text="x", data=None):
    meta = {}
    if kind == "caption":
        meta[MARKER] = {"caption_of": name}
    elif kind:
        meta[MARKER] = {"kind": kind, "name": name, "caption": f"About {name}.",
                        "markdown": "| a |\n|---:|\n| 1 |"}
    return nbformat.v4.new_output("display_data", data=data or {"text/plain": text}, metadata=meta)


def test_table_markdown_formats_as_displayed_and_escapes():
    df = pd.DataFrame({"B": [1, 16], "err": [0.01234, 0.5], "name": ["a|b", "x*y_z"], "link": ["[s](p.html)", "-"]})
    styler = df.style.format({"err": "{:.2%}"}).hide(axis="index")
    lines = table_markdown(styler, markup_columns=("link",)).splitlines()
    assert lines[0] == "| B | err | name | link |"
    assert lines[1] == "|---:|---:|:---|:---|"          # numbers right, text left
    assert lines[2] == "| 1 | 1.23% | a\\|b | [s](p.html) |"
    assert lines[3] == "| 16 | 50.00% | x\\*y\\_z | - |"
    # a DataFrame shows without its index; a Styler that keeps its index shows it
    assert table_markdown(df[["B"]]).splitlines()[0] == "| B |"
    assert table_markdown(df[["B"]].style).splitlines()[0].count("|") == 3


@pytest.mark.parametrize("name", ["Theory-BBP", "theory_bbp", "-x", "x--y", ""])
def test_names_are_sphinx_labels(name):
    with pytest.raises(ValueError, match="lower-case"):
        numref(name)


def test_number_figures_rewrites_marked_outputs_in_order(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("show everything")
    cell.outputs = [_output(text="before"), _output("figure", "fig-a", data={"image/png": "iVBOR"}),
                    _output("caption", "fig-a"), _output(text="between"), _output("table", "tab-b"),
                    _output("caption", "tab-b"), _output(text="after")]
    hidden = nbformat.v4.new_code_cell("not shown")
    hidden.metadata["tags"] = ["remove-cell"]
    hidden.outputs = [_output("figure", "fig-hidden")]
    nb.cells = [cell, hidden]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)

    assert number_figures(str(path)) == ["fig-a", "tab-b"]
    cells = nbformat.read(path, as_version=4).cells
    kinds = [c.cell_type for c in cells]
    assert kinds == ["code", "markdown", "code", "markdown", "code", "code"]
    first, figure, middle, table, last, untouched = cells
    assert [o.get("data", {}).get("text/plain") for o in first.outputs] == ["before", None]
    glued = first.outputs[1]
    assert list(glued.data) == [GLUE_PREFIX + "image/png"] and glued.metadata["scrapbook"]["name"] == "fig-a"
    assert figure.source.startswith("::::{glue:figure} fig-a\n:name: fig-a") and "About fig-a." in figure.source
    assert middle.source == CONTINUED and middle.metadata["tags"] == ["remove-input"]
    assert [o.data["text/plain"] for o in middle.outputs] == ["between"]
    assert table.source.startswith("::::{table} About tab-b.\n:name: tab-b") and "| 1 |" in table.source
    assert [o.data["text/plain"] for o in last.outputs] == ["after"]
    assert untouched.outputs[0].metadata[MARKER]["name"] == "fig-hidden"


def test_a_name_used_twice_is_refused(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("")
    cell.outputs = [_output("figure", "same"), _output("table", "same")]
    nb.cells = [cell]
    nbformat.write(nb, tmp_path / "nb.ipynb")
    with pytest.raises(ValueError, match="'same' is used twice"):
        number_figures(str(tmp_path / "nb.ipynb"))
