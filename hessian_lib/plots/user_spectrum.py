"""The figure of the ``spectrum`` command: top eigenvalues with their error bounds, or the SLQ density."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from hessian_lib.plots.style import COLORS, use_house_style

__all__ = ["spectrum_figure"]

_NAMES = {"hessian": "Hessian", "ggn": "Gauss-Newton matrix"}


def _subtitle(result: dict[str, Any]) -> str:
    images = f"batch of {result['batch_size']}" if result.get("batch_size") else f"all {result['num_samples']} images"
    return f"{result['model']}, {images}, BatchNorm {result['bn_mode']}, P = {result['dim']:,}"


def spectrum_figure(result: dict[str, Any]) -> Figure:
    """One panel from the JSON of the ``spectrum`` command (``result``).

    ``top``: eigenvalue against its rank with its error bound as an error bar (usually smaller than
    the marker). ``density``: the Gaussian-broadened SLQ density on a log scale (the outliers carry
    weights of order 1/P), with each probe's Ritz values as ticks at the bottom.
    """
    use_house_style()
    color = COLORS["ggn"] if result["matrix"] == "ggn" else COLORS["batch"]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    name = _NAMES[result["matrix"]]
    if result["method"] == "top":
        values = np.asarray(result["eigenvalues"], dtype=float)
        ranks = np.arange(1, len(values) + 1)
        ax.errorbar(ranks, values, yerr=np.asarray(result["error_bounds"], dtype=float), fmt="o", color=color,
                    capsize=4, label="Ritz value, error bound")
        ax.set_xticks(ranks)
        ax.set_xlabel("rank")
        ax.set_ylabel("eigenvalue")
        state = "converged" if result["converged"] else "not converged"
        ax.set_title(f"Top eigenvalues of the {name} ({result['num_products']} Lanczos steps, {state})")
    else:
        grid, density = np.asarray(result["grid"]), np.asarray(result["density"])
        floor = max(float(density.max()) * 1e-8, 1e-300)
        ax.semilogy(grid, np.maximum(density, floor), color=color, lw=1.4, label=f"SLQ, sigma = {result['sigma']:.3g}")
        for values in result["ritz_values"]:
            ax.plot(values, np.full(len(values), floor * 3), "|", color=COLORS["edge"], ms=8)
        ax.set_ylim(bottom=floor)
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density")
        ax.set_title(f"Spectral density of the {name} ({len(result['ritz_values'])} probes)")
    ax.legend(loc="best", title=_subtitle(result), title_fontsize=8)
    fig.tight_layout()
    return fig
