"""Figure helpers with one house style, shared by the chapters."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

__all__ = ["COLORS", "use_house_style", "broadened_density", "shift_panel"]

#: One colour per role, the same in every chapter.
COLORS = {
    "batch": "#1f77b4",      # batch Hessian / simulation
    "empirical": "#d62728",  # empirical Hessian / prediction
    "theory": "#2ca02c",     # limiting density
    "edge": "#7f7f7f",       # bulk edges
    "ggn": "#9467bd",
}


def use_house_style() -> None:
    """Matplotlib defaults for every chapter: readable sizes, light grid, no top/right spines."""
    plt.rcParams.update({
        "figure.dpi": 90,
        "savefig.dpi": 90,
        "figure.figsize": (8.0, 3.6),
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.fontsize": 8.5,
        "legend.frameon": False,
    })


def broadened_density(grid: np.ndarray, values: np.ndarray, weights: np.ndarray, residuals: np.ndarray,
                      floor: float) -> np.ndarray:
    r"""Ritz values broadened by their own resolution, averaged over runs: density on ``grid`` [G].

    ``values``, ``weights``, ``residuals``: [runs, m] or [m] (NaN entries ignored). Each Ritz value
    :math:`\theta_k` becomes a Gaussian of weight :math:`\gamma_k` and width
    :math:`\max(r_k, \text{floor})`, :math:`r_k` its residual bound (Lanczos guarantees an
    eigenvalue within :math:`r_k`): converged outliers stay sharp, the unresolved bulk is smeared
    over the interval it is known to.
    """
    out = np.zeros_like(grid, dtype=float)
    values, weights, residuals = (np.atleast_2d(a) for a in (values, weights, residuals))
    for v, w, r in zip(values, weights, residuals):
        keep = np.isfinite(v) & np.isfinite(w)
        sig = np.maximum(np.nan_to_num(r[keep], nan=floor), floor)
        z = (grid[:, None] - v[keep][None, :]) / sig[None, :]
        out += (np.exp(-0.5 * z * z) * (w[keep] / (sig * np.sqrt(2 * np.pi)))[None, :]).sum(axis=1)
    return out / len(values)


def shift_panel(ax: Axes, table, fit: dict, *, sigmas: float, color: str, title: str) -> None:
    r"""The shift :math:`\Delta(B)` against :math:`x = 1/B - 1/N` (log-log) with its power-law fit.

    ``table``: :func:`hessian_lib.experiments.spectra_analysis.shift_statistics`, or the pooled table of
    :func:`~hessian_lib.experiments.spectra_analysis.pool_shift` (its ``shift net k`` columns are drawn as
    grey crosses, one per network); ``fit``: the exponent fit of it. Error bars are ``sigmas``
    standard errors; points whose shift does not exceed them are hollow. Grey dotted lines: slopes
    1 (outlier regime) and 1/2 (bulk edge) through the middle of the data.
    """
    x, d, se = (np.asarray(table[k], dtype=float) for k in ("x", "shift", "se"))
    ok = d > sigmas * se
    shown = d > 0
    nets = [c for c in table.columns if str(c).startswith("shift net ")]
    for j, col in enumerate(nets):
        v = np.asarray(table[col], dtype=float)
        ax.scatter(x[v > 0], v[v > 0], marker="x", s=14, lw=0.8, color=COLORS["edge"], zorder=2,
                   label="each network" if j == 0 else None)
    ax.errorbar(x[shown], d[shown], yerr=np.minimum(sigmas * se[shown], 0.999 * d[shown]), fmt="none",
                ecolor=color, capsize=2, lw=1)
    ax.scatter(x[ok], d[ok], color=color, s=22, zorder=3)
    ax.scatter(x[shown & ~ok], d[shown & ~ok], facecolors="white", edgecolors=color, s=22, zorder=3)
    for xi, di, b in zip(x[shown], d[shown], table["B"][shown]):
        ax.annotate(f"{b}", (xi, di), textcoords="offset points", xytext=(4, -9), fontsize=7, color=COLORS["edge"])
    if np.isfinite(fit.get("gamma", np.nan)):
        grid = np.geomspace(x.min(), x.max(), 50)
        ax.plot(grid, fit["amplitude"] * grid ** fit["gamma"], color=color, lw=1.2,
                label=f"gamma = {fit['gamma']:.2f} [{fit['gamma_low']:.2f}, {fit['gamma_high']:.2f}]")
        xm, ym = np.exp(np.mean(np.log(grid))), fit["amplitude"] * np.exp(np.mean(np.log(grid))) ** fit["gamma"]
        for slope, ls in ((1.0, ":"), (0.5, "-.")):
            ax.plot(grid, ym * (grid / xm) ** slope, color=COLORS["edge"], lw=0.9, ls=ls, label=f"slope {slope:g}")
        ax.legend(loc="upper left", fontsize=7.5)
    if shown.sum() < len(d):
        ax.text(0.98, 0.04, f"{len(d) - shown.sum()} B with shift <= 0 not shown", transform=ax.transAxes,
                ha="right", fontsize=7.5, color=COLORS["empirical"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax, x)
    ax.set_xlabel("1/B - 1/N")
    ax.set_ylabel("shift Delta(B)")
    ax.set_title(title, fontsize=9.5)


def _tick_label(value: float, _: object = None) -> str:
    """Plain numbers on log axes: 0.059, 2, 20, 500 (no 5e+02)."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _plain_log_ticks(ax: Axes, x_ticks: np.ndarray | None = None) -> None:
    """Log axes without crowded minor labels; ``x_ticks`` puts plain-number ticks at those x values."""
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_minor_formatter(NullFormatter())
    lo, hi = ax.get_ylim()
    if hi / lo < 100:  # two decades or less: label 1-2-5 steps, not just the powers of ten
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(_tick_label))
    if x_ticks is not None:
        ax.xaxis.set_major_locator(FixedLocator(np.asarray(x_ticks, dtype=float)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(_tick_label))
