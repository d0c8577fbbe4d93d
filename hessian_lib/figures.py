"""Numbered, captioned figures and tables that survive into the static book.

A chapter shows a figure or a table with one call, naming it and writing its caption::

    from hessian_lib.figures import show_figure, show_table

    fig, ax = plt.subplots()
    ...
    show_figure(fig, "theory-bbp", "The BBP transition: simulated extremes against the formula.")
    show_table(table.style.format(precision=3).hide(axis="index"), "theory-mp", "Spiked Marchenko-Pastur.")

and the prose refers to it by number with ``{numref}`theory-bbp``` (rendered "Figure 2", a link); Markdown
that a code cell displays does the same with :func:`numref`.

How it works. In a live notebook both calls display the figure or table with a caption line, so a reader
running the notebook sees them in place. Each display also carries a marker in its output metadata
(:data:`MARKER`). After papermill has executed a chapter, the book pipeline calls
:func:`number_figures` on the executed notebook; it rewrites every marked output into what Sphinx numbers:

* a figure becomes a myst-nb ``glue`` output plus, right after its cell, a Markdown cell with
  ``{glue:figure}`` (caption and ``:name:``), so Sphinx numbers it "Figure N";
* a table becomes a Markdown cell with a ``{table}`` directive holding a pipe table of the formatted
  values (``Styler`` formats and hidden index are respected), numbered "Table N".

Names are Sphinx labels: lower-case letters, digits and hyphens, unique in the whole book (start them with
the chapter's name). Numbers are per page, in the order the figures appear.
"""

from __future__ import annotations

import re
from typing import Any

import nbformat

__all__ = ["MARKER", "numref", "show_figure", "show_table", "table_directive", "table_markdown", "number_figures"]

#: Key of the output metadata that marks a figure, a table, or the caption line shown in live notebooks.
MARKER = "hessian_lib"
#: The prefix myst-nb's ``glue`` gives to the mime types of an output pasted elsewhere.
GLUE_PREFIX = "application/papermill.record/"
_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_SKIP_TAGS = {"remove-cell", "remove-output"}
#: Source of the cell that carries the outputs displayed after a figure or table (its input is hidden).
CONTINUED = "# (the outputs of the cell above, continued)"


def _check(name: str, caption: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"figure/table name {name!r} must be lower-case letters, digits and single hyphens, "
                         "e.g. 'theory-bbp-sweep'")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"{name}: a caption is required")


def _caption_line(kind: str, name: str, caption: str) -> None:
    """The caption as a live notebook shows it (the book numbers it instead)."""
    from IPython.display import Markdown, display

    display(Markdown(f"*{kind.capitalize()} `{name}`: {caption}*"), metadata={MARKER: {"caption_of": name}})


def numref(name: str) -> str:
    """A reference to figure or table ``name`` for Markdown that a code cell displays ("Figure 2", a link).

    The book renders Markdown outputs as MyST (``nb_render_markdown_format: myst`` in ``_config.yml``),
    so prose formatted from a run's numbers can refer to figures like the chapter's own text does.
    """
    _check(name, "-")
    return f"{{numref}}`{name}`"


def show_figure(fig: Any, name: str, caption: str) -> None:
    """Display ``fig`` as a numbered figure with ``caption``.

    ``fig``: a matplotlib figure (saved as PNG, then closed) or any displayable object, such as the
    widget of :func:`hessian_lib.widgets.frame_explorer` (an interactive figure).
    """
    import io

    from IPython.display import Image, display

    _check(name, caption)
    marker = {MARKER: {"kind": "figure", "name": name, "caption": caption}}
    if hasattr(fig, "savefig"):
        import matplotlib.pyplot as plt

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", bbox_inches="tight")
        plt.close(fig)
        display(Image(data=buffer.getvalue(), format="png"), metadata=marker)
    else:
        display(fig, metadata=marker)
    _caption_line("figure", name, caption)


def _cells(table: Any) -> tuple[list[str], list[list[str]], list[bool]]:
    """(header, rows, numeric column flags) of a DataFrame or Styler, formatted as displayed."""
    import pandas as pd
    from pandas.io.formats.style import Styler

    styler = table if isinstance(table, Styler) else table.style.hide(axis="index")
    data = styler.data
    if data.columns.nlevels > 1:
        raise ValueError("tables with multi-level columns are not supported: flatten the column names")
    lines = styler.to_string(delimiter="\x1f").rstrip("\n").split("\n")
    header, *rows = [line.split("\x1f") for line in lines]
    index_columns = len(header) - data.shape[1]
    numeric = [False] * index_columns + [pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t)
                                         for t in data.dtypes]
    return header, rows, numeric


_SPECIALS = re.compile(r"([\\`*_{}\[\]<>#|$~])")


def table_markdown(table: Any, *, markup_columns: tuple[str, ...] = ()) -> str:
    """A MyST pipe table of a DataFrame or Styler, with the values formatted as they display.

    Markdown in cell text is escaped, except in ``markup_columns`` (links, emphasis, math), where only the
    pipe is. Numeric columns are right-aligned.
    """
    header, rows, numeric = _cells(table)
    raw = [name in markup_columns for name in header]

    def cell(text: str, column: int) -> str:
        text = " ".join(str(text).split())
        return text.replace("|", "\\|") if raw[column] else _SPECIALS.sub(r"\\\1", text)

    lines = ["| " + " | ".join(cell(h, j) for j, h in enumerate(header)) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(v, j) for j, v in enumerate(row)) + " |")
    return "\n".join(lines)


def show_table(table: Any, name: str, caption: str, *, markup_columns: tuple[str, ...] = ()) -> None:
    """Display a DataFrame or Styler as a numbered table with ``caption``.

    Format values with a ``Styler`` (``df.style.format(...).hide(axis="index")``); a DataFrame shows
    without its index. ``markup_columns``: columns whose text is Markdown (links, emphasis, math).
    """
    from IPython.display import display
    from pandas.io.formats.style import Styler

    _check(name, caption)
    styler = table if isinstance(table, Styler) else table.style.hide(axis="index")
    record = {"kind": "table", "name": name, "caption": caption,
              "markdown": table_markdown(styler, markup_columns=markup_columns)}
    display(styler, metadata={MARKER: record})
    _caption_line("table", name, caption)


def table_directive(markdown: str, name: str, caption: str) -> str:
    """A numbered MyST ``{table}`` (a colon fence, so the caption may hold backticks) around a pipe table."""
    return f"::::{{table}} {' '.join(caption.split())}\n:name: {name}\n\n{markdown}\n::::"


def _directive(record: dict) -> str:
    if record["kind"] == "figure":
        caption = " ".join(record["caption"].split())
        return f"::::{{glue:figure}} {record['name']}\n:name: {record['name']}\n\n{caption}\n::::"
    return table_directive(record["markdown"], record["name"], record["caption"])


def number_figures(path: str) -> list[str]:
    """Rewrite the marked outputs of an executed notebook into numbered figures and tables (in place).

    Returns the names found, in order. Raises ValueError on a name used twice in the notebook. Cells
    tagged ``remove-cell`` or ``remove-output`` are left alone. Outputs keep their order: the outputs
    after a figure or table move to a code cell after it (source :data:`CONTINUED`, tagged ``remove-input``).
    """
    nb = nbformat.read(path, as_version=4)
    cells, names = [], []
    for cell in nb.cells:
        cells.append(cell)
        if cell.cell_type != "code" or _SKIP_TAGS & set(cell.metadata.get("tags", [])):
            continue
        segments: list[tuple[list, str | None]] = [([], None)]  # (outputs, directive that follows them)
        for output in cell.get("outputs", []):
            record = output.get("metadata", {}).get(MARKER)
            if record is None:
                segments[-1][0].append(output)
                continue
            if "caption_of" in record:
                continue
            if record["name"] in names:
                raise ValueError(f"{path}: the figure/table name {record['name']!r} is used twice")
            names.append(record["name"])
            if record["kind"] == "figure":
                output["data"] = {GLUE_PREFIX + k: v for k, v in output["data"].items()}
                output["metadata"] = {**output["metadata"], "scrapbook": {"name": record["name"],
                                                                          "mime_prefix": GLUE_PREFIX}}
                segments[-1][0].append(output)
            segments[-1] = (segments[-1][0], _directive(record))
            segments.append(([], None))
        if len(segments) == 1:
            continue
        cell.outputs = segments[0][0]
        for i, (outputs, directive) in enumerate(segments):
            if i > 0 and outputs:
                rest = nbformat.v4.new_code_cell(CONTINUED)  # a cell without source would be skipped
                rest.metadata["tags"] = ["remove-input"]
                rest.outputs = outputs
                cells.append(rest)
            if directive:
                cells.append(nbformat.v4.new_markdown_cell(directive))
    nb.cells = cells
    nbformat.write(nb, path)
    return names
