"""The static-HTML frame explorer: one frame per grid point, sliders linked to every stack of their level."""

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pytest
from ipywidgets.widgets.widget_link import Link

from hessian_lib.widgets import frame_explorer


def _render(a, b):
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.set_title(f"{a}-{b}")
    return fig


def _walk(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from _walk(child)


def test_one_frame_per_grid_point_and_links_per_level():
    box = frame_explorer(_render, {"a": [1, 2, 3], "b": ["x", "y"]})
    everything = list(_walk(box))
    images = [w for w in everything if isinstance(w, widgets.Image)]
    stacks = [w for w in everything if isinstance(w, widgets.Stack)]
    sliders = [w for w in everything if isinstance(w, widgets.SelectionSlider)]
    assert len(images) == 6 and len({im.value for im in images}) == 6  # distinct frames
    assert len(stacks) == 1 + 3 and len(sliders) == 2
    links = [w for w in widgets.Widget.widgets.values() if isinstance(w, Link)]
    linked_stacks = {id(link.target[0]) for link in links if link.source[0] in sliders}
    assert {id(s) for s in stacks} <= linked_stacks


def test_single_valued_parameters_get_no_slider():
    box = frame_explorer(_render, {"a": [1, 2], "b": ["only"]})
    everything = list(_walk(box))
    assert len([w for w in everything if isinstance(w, widgets.SelectionSlider)]) == 1
    assert any(isinstance(w, widgets.HTML) and "b = only" in w.value for w in everything)


def test_empty_grid_is_rejected():
    with pytest.raises(ValueError):
        frame_explorer(_render, {"a": []})
