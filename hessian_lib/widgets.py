"""Interactive figures that keep working in the static HTML book.

A rendered page has no Python kernel, so a slider cannot ask for a new plot.
:func:`frame_explorer` therefore renders one PNG frame for every combination
of a small parameter grid up front, stacks them in nested
:class:`ipywidgets.Stack` widgets, and links each slider to the stacks of its
level with ``jslink``: moving a slider switches frames in the browser alone.
:func:`live_explorer` is the same figure for readers running the notebook: it
re-renders on demand for any value of the sliders.
"""

from __future__ import annotations

import io
import itertools
from typing import Any, Callable, Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

__all__ = ["figure_to_png", "frame_explorer", "live_explorer"]

Renderer = Callable[..., Figure]


def figure_to_png(fig: Figure, *, dpi: int = 72) -> bytes:
    """PNG bytes of a matplotlib figure; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def frame_explorer(
    render: Renderer,
    grid: Mapping[str, Sequence[Any]],
    *,
    labels: Mapping[str, str] | None = None,
    initial: Mapping[str, Any] | None = None,
    dpi: int = 72,
    progress: bool = False,
) -> widgets.VBox:
    """Sliders over ``grid`` that pick among precomputed frames ``render(**params)``.

    ``grid`` maps each keyword of ``render`` to its values (frames: the product of
    their lengths). Works without a kernel once the notebook's widget state is saved.
    A parameter with a single value gets no slider, only a note that it is fixed.
    Each slider is a :class:`~ipywidgets.SelectionSlider` whose ``index`` is jslinked
    to the ``selected_index`` of every Stack at its level.
    """
    names = list(grid)
    values = [list(grid[n]) for n in names]
    if not names or any(len(v) == 0 for v in values):
        raise ValueError("frame_explorer needs at least one parameter, each with at least one value")
    labels = dict(labels or {})
    initial = dict(initial or {})
    combos = list(itertools.product(*[range(len(v)) for v in values]))
    iterator = combos
    if progress:
        from tqdm import tqdm

        iterator = tqdm(combos, desc="rendering frames", leave=False)
    frames: dict[tuple[int, ...], widgets.Image] = {}
    for combo in iterator:
        params = {n: values[k][i] for k, (n, i) in enumerate(zip(names, combo))}
        frames[combo] = widgets.Image(value=figure_to_png(render(**params), dpi=dpi), format="png",
                                      layout=widgets.Layout(max_width="100%", height="auto"))

    start = [values[k].index(initial[n]) if n in initial else 0 for k, n in enumerate(names)]
    stacks_by_level: list[list[widgets.Stack]] = [[] for _ in names]

    def build(level: int, prefix: tuple[int, ...]) -> widgets.Widget:
        if level == len(names):
            return frames[prefix]
        children = [build(level + 1, prefix + (i,)) for i in range(len(values[level]))]
        stack = widgets.Stack(children=children, selected_index=start[level])
        stacks_by_level[level].append(stack)
        return stack

    root = build(0, ())
    sliders: list[widgets.Widget] = []
    fixed = []
    for k, name in enumerate(names):
        if len(values[k]) == 1:  # nothing to choose: say so instead of showing a slider that cannot move
            fixed.append(f"{labels.get(name, name)} = {_format(values[k][0])}")
            continue
        slider = widgets.SelectionSlider(
            options=[(_format(v), i) for i, v in enumerate(values[k])],
            value=start[k],
            description=labels.get(name, name),
            continuous_update=True,
            style={"description_width": "initial"},
            layout=widgets.Layout(width="420px"),
        )
        for stack in stacks_by_level[k]:
            widgets.jslink((slider, "index"), (stack, "selected_index"))
        sliders.append(slider)
    rows: list[widgets.Widget] = [widgets.HBox(sliders[i:i + 2]) for i in range(0, len(sliders), 2)]
    if fixed:
        rows.append(widgets.HTML(f"<small>fixed in this run: {', '.join(fixed)}</small>"))
    return widgets.VBox(rows + [root], layout=widgets.Layout(width="100%"))


def live_explorer(render: Renderer, grid: Mapping[str, Sequence[Any]], *,
                  labels: Mapping[str, str] | None = None) -> widgets.interactive:
    """The same figure, re-rendered by a live kernel for any slider value (not for static HTML)."""
    labels = dict(labels or {})
    controls = {
        name: widgets.SelectionSlider(options=[(_format(v), v) for v in vals], description=labels.get(name, name),
                                      continuous_update=False, style={"description_width": "initial"})
        for name, vals in grid.items()
    }

    def show(**params: Any) -> None:
        fig = render(**params)
        from IPython.display import display

        display(fig)
        plt.close(fig)

    return widgets.interactive(show, **controls)
