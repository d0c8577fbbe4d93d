"""Figures of the Scaling chapter: bisection trials, lr_max against B with fits and predictions, parity runs.

Every function takes what :func:`hessian_lib.experiments.scaling.run_scaling` returns (or one of its
parts) and draws with the house style of :mod:`hessian_lib.plots.style`.
"""

from __future__ import annotations

from typing import Any, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from hessian_lib.experiments.scaling import OPTIMIZER_LABELS, PARITY_ARMS, Bracket, ScalingResult
from hessian_lib.plots.style import COLORS

__all__ = ["trial_curves", "lr_max_panel", "lr_max_figure", "ratio_figure", "mechanism_figure", "parity_figure",
           "sweep_frame"]

STABLE, DIVERGED = COLORS["batch"], COLORS["empirical"]


def _plain_log_ticks(ax: Axes) -> None:
    """Tick labels of a log y axis as plain numbers (0.05, 0.1, 0.2), minor ones only at 2 and 5 times a decade."""
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))


def trial_curves(ax: Axes, bracket: Bracket, threshold: float, window: int = 1) -> None:
    """Every trial of one batch size's search: blue stable, red diverged, darker = larger learning rate.

    Thin lines: the batch losses; thick lines: their mean over the last ``window`` steps, which the
    divergence rule compares with ``threshold`` (dashed). A cross marks where a trial diverged. Losses
    are clipped to the top of the axes; steps at learning rate 0 (Adam's moment fill) are not drawn.
    """
    trials = sorted(bracket.trials, key=lambda t: t["lr"])
    lrs = np.array([t["lr"] for t in trials])
    span = float(np.log(lrs.max() / lrs.min())) if len(lrs) > 1 else 0.0
    top = 1.6 * threshold
    for t in trials:
        losses = np.asarray(t["losses"], dtype=float)[int(t.get("frozen_steps", 0)):]
        shade = 0.35 + 0.65 * (np.log(t["lr"] / lrs.min()) / span if span else 1.0)
        color = DIVERGED if t["diverged"] else STABLE
        shown = np.minimum(np.nan_to_num(losses, nan=top, posinf=top), top)
        ax.plot(np.arange(len(shown)), shown, color=color, alpha=0.3 * shade, lw=0.8)
        if len(losses) >= window:
            mean = np.convolve(np.nan_to_num(losses, nan=1e30, posinf=1e30), np.ones(window) / window, mode="valid")
            ax.plot(np.arange(window - 1, len(losses)), np.minimum(mean, top), color=color, alpha=shade, lw=1.6)
        if t["diverged"] and len(losses):
            ax.plot(len(losses) - 1, min(float(t["diverged_loss"]) if np.isfinite(t["diverged_loss"]) else top, top),
                    "x", color=color, ms=7, mew=2)
    ax.axhline(threshold, color=COLORS["edge"], ls="--", lw=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("step at the trial's learning rate")
    ax.set_ylabel("training loss")
    ax.set_ylim(bottom=0.4 * threshold, top=top * 1.02)
    lower = f"{bracket.lower:.3g}" if np.isfinite(bracket.lower) else "none"
    upper = f"{bracket.upper:.3g}" if np.isfinite(bracket.upper) else "none"
    ax.set_title(f"B = {bracket.batch_size}: {len(trials)} trials, bracket [{lower}, {upper}]", fontsize=9.5)
    ax.legend(handles=[Line2D([], [], color=STABLE, label="stable"), Line2D([], [], color=DIVERGED, label="diverged"),
                       Line2D([], [], color="k", lw=0.8, alpha=0.4, label="batch loss"),
                       Line2D([], [], color="k", lw=1.6, label=f"mean of {window} steps"),
                       Line2D([], [], color=COLORS["edge"], ls="--", label="divergence threshold")],
              loc="lower left", fontsize=7, ncol=2)


def lr_max_panel(ax: Axes, result: ScalingResult, optimizer: str, fits: Mapping[str, Any], *,
                 highlight: int | None = None, predictions: bool = True) -> None:
    """lr_max against B for one optimiser, log-log: final brackets (bars), fitted laws, curvature prediction.

    SGD panels show the saturating law through the brackets and, with ``predictions``, the
    prediction 2/lambda_max(H_B) (or 2(1+beta)/lambda_max for momentum; bars: the range over draws);
    the Adam panel shows the square-root law. Dotted grey lines: slopes 1 and 1/2 through the
    smallest B. ``highlight``: a batch size to ring.
    """
    frame = result.brackets(optimizer)
    b_all = np.array(result.batch_sizes, dtype=float)
    seeds = sorted(frame.seed.unique())
    for s in seeds:
        rows = frame[(frame.seed == s)]
        jitter = 1.0 + 0.04 * (s - (len(seeds) - 1) / 2)
        for r in rows.itertuples():
            x = r.batch_size * jitter
            if r.bracketed:
                ax.plot([x, x], [r.lower, r.upper], color="k", lw=2.2, solid_capstyle="butt")
            elif np.isfinite(r.lower):
                ax.plot(x, r.lower, "^", color="k", ms=5)  # never diverged: lr_max above this
            elif np.isfinite(r.upper):
                ax.plot(x, r.upper, "v", color="k", ms=5)  # diverged everywhere: lr_max below this
    nets = frame.network.nunique() if "network" in frame else 1
    handles = [Line2D([], [], color="k", lw=2.2, label=f"final bracket ({len(seeds)} sweep{'s' * (len(seeds) > 1)}"
                                                     + (f", {nets} networks)" if nets > 1 else ")"))]
    b = fits["batch_sizes"]
    dense = np.geomspace(b_all.min() / 1.3, b_all.max() * 1.3, 200)
    if optimizer == "adam" and "sqrt" in fits:
        c = fits["sqrt"]["coefficient"].estimate
        ax.plot(dense, c * np.sqrt(dense), color=COLORS["theory"], lw=1.4)
        handles.append(Line2D([], [], color=COLORS["theory"], label="square-root law (fit)"))
    if optimizer != "adam" and "saturating" in fits:
        sat = fits["saturating"]
        lr_inf, b_star = sat["lr_inf"].estimate, sat["critical_batch"].estimate
        ax.plot(dense, lr_inf / (1 + b_star / dense), color=COLORS["theory"], lw=1.4)
        handles.append(Line2D([], [], color=COLORS["theory"], label=f"saturating law (fit), B* = {b_star:.3g}"))
        ax.plot(b, sat["through"], color=COLORS["theory"], ls="--", lw=1, marker="_", ms=10)
        handles.append(Line2D([], [], color=COLORS["theory"], ls="--", marker="_",
                              label=f"closest law to every bracket ({int(np.sum(sat['passes']))}/{b.size} inside)"))
    if b.size:
        x0, y0 = b[0], float(np.sqrt(fits["lower"][:, 0] * fits["upper"][:, 0]).mean())
        span = np.geomspace(b_all.min(), b_all.max(), 50)
        for slope, style in ((1.0, ":"), (0.5, "-.")):
            ax.plot(span, y0 * (span / x0) ** slope, color=COLORS["edge"], ls=style, lw=0.9)
            handles.append(Line2D([], [], color=COLORS["edge"], ls=style, label=f"slope {slope:g}"))
    if predictions and optimizer in ("sgd", "momentum"):
        beta = result.profile.scaling.momentum if optimizer == "momentum" else 0.0
        table = result.prediction_table()
        grouped = result.prediction.groupby("batch_size")["lambda_max"]
        pred = table[f"{optimizer}_predicted"].to_numpy()
        lo = 2 * (1 + beta) / grouped.max().reindex(table.batch_size).to_numpy()
        hi = 2 * (1 + beta) / grouped.min().reindex(table.batch_size).to_numpy()
        ax.errorbar(table.batch_size * 1.08, pred, yerr=[pred - lo, hi - pred], fmt="D", ms=4,
                    color=COLORS["ggn"], lw=1, capsize=2)
        what = "2(1+beta)" if beta else "2"
        handles.append(Line2D([], [], color=COLORS["ggn"], marker="D", ls="", label=f"{what} / lambda_max(H_B)"))
    if highlight is not None:
        rows = frame[frame.batch_size == highlight]
        ends = np.concatenate([rows.lower.to_numpy(), rows.upper.to_numpy()])
        ends = ends[np.isfinite(ends)]
        if ends.size:
            ax.plot(
                highlight, np.sqrt(ends.min() * ends.max()), "o", ms=16, mfc="none", mec=COLORS["empirical"], mew=1.5
            )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_log_ticks(ax)
    ax.set_xticks(b_all, [f"{int(v)}" for v in b_all])
    ax.set_xlabel("batch size B")
    ax.set_ylabel("largest stable learning rate")
    ax.set_title(OPTIMIZER_LABELS[optimizer] + (f" (beta = {result.profile.scaling.momentum:g})"
                                                if optimizer == "momentum" else ""), fontsize=10)
    ax.legend(handles=handles, loc="upper left", fontsize=7.2)


def lr_max_figure(result: ScalingResult, fits: Mapping[str, Mapping[str, Any]]) -> Figure:
    """One :func:`lr_max_panel` per optimiser, two to a row (the book's text column is narrow)."""
    rows = (len(fits) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 4.3 * rows), squeeze=False)
    for ax, (optimizer, fit) in zip(axes.flat, fits.items()):
        lr_max_panel(ax, result, optimizer, fit)
    for ax in list(axes.flat)[len(fits):]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def ratio_figure(table: pd.DataFrame) -> Figure:
    """Measured lr_max over its curvature prediction against B, for plain and momentum SGD (1: exact)."""
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    for optimizer, marker, color in (("sgd", "o", COLORS["batch"]), ("momentum", "s", COLORS["ggn"])):
        ax.plot(
            table.batch_size, table[f"{optimizer}_ratio"], marker=marker, color=color, label=OPTIMIZER_LABELS[optimizer]
        )
    ax.axhline(1.0, color=COLORS["edge"], ls="--", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(table.batch_size, [str(int(b)) for b in table.batch_size])
    _plain_log_ticks(ax)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("measured / predicted")
    ax.legend()
    fig.tight_layout()
    return fig


def mechanism_figure(result: ScalingResult) -> Figure:
    """Measured lr_max over its curvature prediction against B, per network, for plain SGD (left) and heavy ball
    (right): thin lines one per sweep (the prediction of that sweep's network), thick the geometric mean over
    networks; on the left, open triangles mark the longer trials at the smallest and largest B."""
    lam = np.nanmean(result.lambdas(), axis=2)  # [K, n]
    grid = result.batch_sizes
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharey=True)
    table = result.prediction_table()
    for ax, optimizer in zip(axes, ("sgd", "momentum")):
        numerator = result.prediction_numerator(optimizer)
        frame = result.brackets(optimizer)
        for (seed, network), rows in frame[frame.bracketed].groupby(["seed", "network"]):
            idx = [grid.index(int(b)) for b in rows.batch_size]
            ratio = np.sqrt(rows.lower.to_numpy() * rows.upper.to_numpy()) / (numerator / lam[int(network), idx])
            ax.plot(rows.batch_size, ratio, "-", marker=".", lw=0.9, alpha=0.7, color=f"C{int(network) % 10}",
                    label=f"network {int(network)}" if seed == frame[frame.network == network].seed.min() else None)
        ax.plot(table.batch_size, table[f"{optimizer}_ratio"], "-", color="k", lw=2.2, label="geometric mean")
        if optimizer == "sgd" and result.long_sweeps:
            horizon = result.horizon_table()
            for _, r in horizon.iterrows():
                if np.isfinite(r["long ratio"]):
                    ax.plot(r["batch_size"] * 1.06, r["long ratio"], "^", mfc="none", ms=7,
                            color=f"C{int(r['network']) % 10}")
            ax.plot([], [], "^", mfc="none", color="k", label=f"{result.long_horizon}x longer trials")
        ax.axhline(1.0, color=COLORS["edge"], ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(grid, [str(b) for b in grid])
        _plain_log_ticks(ax)
        ax.set_xlabel("batch size B")
        what = "2(1+beta)" if optimizer == "momentum" else "2"
        ax.set_title(f"{OPTIMIZER_LABELS[optimizer]}: measured / ({what} / lambda_max(H_B))", fontsize=9.5)
        ax.legend(fontsize=7.2, loc="best")
    axes[0].set_ylabel("measured / predicted")
    fig.tight_layout()
    return fig


def parity_figure(parity: pd.DataFrame, tolerance: float) -> Figure:
    """Final test accuracy of every parity run against B: one panel per optimiser, points per seed, means joined.

    The shaded band is B0's mean accuracy plus or minus ``tolerance`` points; a diverged run is
    drawn at the bottom as a cross.
    """
    optimizers = list(dict.fromkeys(arm[1] for arm in PARITY_ARMS))
    fig, axes = plt.subplots(1, len(optimizers), figsize=(11, 4.2), sharey=True)
    low = np.nanmin(parity.test_acc) if np.isfinite(parity.test_acc).any() else 0.0
    for ax, optimizer in zip(np.atleast_1d(axes), optimizers):
        rows = parity[parity.optimizer == optimizer]
        b0 = rows.batch_size.min()
        base = rows[(rows.multiple == 1)].test_acc.mean()
        ax.axhspan(base - tolerance, base + tolerance, color=COLORS["edge"], alpha=0.15, lw=0)
        for k, (arm, frame) in enumerate(rows.groupby("arm", sort=False)):
            color = COLORS["batch"] if "control" not in arm else COLORS["empirical"]
            means = frame.groupby("batch_size").test_acc.mean()
            ax.plot(means.index * (1.06 if "control" in arm else 1.0), means.to_numpy(), "-", color=color, lw=1.2,
                    label=arm)
            for r in frame.itertuples():
                x = r.batch_size * (1.06 if "control" in arm else 1.0)
                if r.diverged or not np.isfinite(r.test_acc):
                    ax.plot(x, low - 1, "x", color=color, ms=7, mew=2)
                else:
                    ax.plot(x, r.test_acc, "o", color=color, ms=4, alpha=0.8)
        ax.set_xscale("log", base=2)
        ticks = sorted(rows.batch_size.unique())
        ax.set_xticks(ticks, [f"{int(t)}" for t in ticks])
        ax.set_xlabel(f"batch size (B0 = {int(b0)})")
        ax.set_title(OPTIMIZER_LABELS[optimizer], fontsize=10)
        ax.legend(loc="lower left", fontsize=7.5)
    np.atleast_1d(axes)[0].set_ylabel("test accuracy (%)")
    fig.tight_layout()
    return fig


def sweep_frame(result: ScalingResult, fits: Mapping[str, Mapping[str, Any]], optimizer: str, batch_size: int,
                seed: int = 0) -> Figure:
    """One frame of the explorer: the trials of one (optimiser, B) above, the lr_max(B) panel with B ringed below."""
    bracket = next(br for br in result.sweeps[optimizer][seed] if br.batch_size == batch_size)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7.6))
    trial_curves(top, bracket, result.threshold, result.profile.scaling.loss_window)
    top.set_title(f"{OPTIMIZER_LABELS[optimizer]}, " + top.get_title(), fontsize=10)
    lr_max_panel(bottom, result, optimizer, fits[optimizer], highlight=batch_size)
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.07, top=0.95, hspace=0.32)  # fixed: many frames, no layout pass
    return fig
