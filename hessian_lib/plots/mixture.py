"""Figures of the Mixture chapter: the two sides' Hessian spectra, the gap criterion, the outlier count against
separation, the measures of claim 8 side by side, the batch shift, and the explorer's frames.

Every function takes the :class:`~hessian_lib.experiments.mixture_analysis.MixtureStudy` of
:func:`~hessian_lib.experiments.mixture_analysis.run_mixture` and draws with the house style of
:mod:`hessian_lib.plots.style`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from hessian_lib import verdicts as V
from hessian_lib.experiments.mixture import SIDES, shift_record
from hessian_lib.experiments.mixture_analysis import MixtureStudy
from hessian_lib.plots.style import COLORS, broadened_density, shift_panel

__all__ = ["SIDE_COLORS", "SIDE_LABELS", "explorer_frame", "gap_figure", "measures_figure", "separation_figure",
           "shift_figure", "spectra_figure"]

#: One colour per side, the same in every figure of the chapter.
SIDE_COLORS = {"mixture": "#ff7f0e", "network": "#17becf"}
#: How the figures name the sides.
SIDE_LABELS = {"mixture": "perceptron, Gaussian mixture", "network": "network, CIFAR-100"}


def _log_density(ax: Axes, values: np.ndarray, weights: np.ndarray, residuals: np.ndarray, scale: float,
                 color: str, label: str, lw: float = 1.4, upper: float = 1.08) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values broadened by their residual bounds (at least 1/200), on lambda / ``scale`` up to ``upper``."""
    v = np.asarray(values, dtype=float) / scale
    grid = np.linspace(min(-0.1, np.nanmin(v) - 0.05), upper, 1400)
    density = broadened_density(grid, v, np.asarray(weights, dtype=float), np.asarray(residuals, dtype=float) / scale,
                                1 / 200)
    ax.semilogy(grid, np.where(density > 0, density, np.nan), color=color, lw=lw, label=label)
    return grid, density


def _floor_at_peaks(ax: Axes, grid: np.ndarray, density: np.ndarray, peaks: np.ndarray) -> None:
    """A lower y limit that keeps the density's peaks at ``peaks`` (the outliers: weights of order 1/P) in view."""
    heights = np.interp(np.asarray(peaks, dtype=float), grid, density)
    heights = heights[heights > 0]
    top = float(np.nanmax(density))
    low = float(np.clip(0.3 * heights.min(), 1e-9 * top, 1e-3)) if heights.size else 1e-3
    ax.set_ylim(low, 5 * top)


def _window(ax: Axes) -> None:
    ax.axvspan(-V.CLAIM8_BULK_WINDOW, V.CLAIM8_BULK_WINDOW, color=COLORS["edge"], alpha=0.15, lw=0,
               label=f"near zero: |λ| ≤ {V.CLAIM8_BULK_WINDOW:g} λmax")


def spectra_figure(study: MixtureStudy, network: int = 0) -> Figure:
    """The Hessian spectrum of network ``network`` of each side, on lambda / lambda_max with log densities.

    Left, the perceptron: its exact eigenvalues (histogram) and the Lanczos density; right, the
    network on images: the Lanczos density. Shaded: the near-zero window; dashed: the gap the
    outlier count found (none drawn for a count of 0).
    """
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.5))
    for ax, side in zip(axes, SIDES):
        r = study.records[side][network]
        top = float(np.nanmax(r["hessian_values"]))
        if "exact_hessian" in r:
            exact = np.asarray(r["exact_hessian"]) / top
            bins = np.linspace(min(-0.1, exact.min() - 0.02), 1.08, 120)
            ax.hist(exact, bins=bins, density=True, color=COLORS["theory"], alpha=0.35, log=True,
                    label=f"exact (P = {len(exact):,})")
        grid, density = _log_density(ax, r["hessian_values"], r["hessian_weights"], r["hessian_residuals"], top,
                                     SIDE_COLORS[side], f"Lanczos, {len(r['hessian_values'])} steps")
        _window(ax)
        k = int(r["count"])
        ritz = np.sort(np.asarray(r["hessian_values"], dtype=float))[::-1] / top
        if k:
            ax.axvline(0.5 * (ritz[k - 1] + ritz[k]), color="k", ls="--", lw=1,
                       label=f"gap: {k} outliers above" + ("" if r["resolved"] else " (not resolved)"))
        _floor_at_peaks(ax, grid, density, ritz[:study.classes])
        ax.set_xlabel("eigenvalue / largest eigenvalue")
        ax.set_ylabel("density (log scale)")
        note = f"{k} outliers" if k else "no separated outliers"
        ax.set_title(f"{SIDE_LABELS[side]}: {note}", fontsize=10)
        ax.legend(loc="upper right", fontsize=7.5)
    fig.tight_layout()
    return fig


def gap_figure(study: MixtureStudy) -> Figure:
    """The gap criterion on every network: left, the top Ritz values over the largest (log scale) against their rank;
    right, the ratios of neighbours with the threshold :data:`~hessian_lib.verdicts.CLAIM8_GAP_RATIO`. Ringed: the
    count of each network (the largest ratio, when it passes)."""
    c = study.classes
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 3.4))
    reach = V.CLAIM8_SEARCH_FACTOR * c
    for side in SIDES:
        for k, r in enumerate(study.records[side]):
            v = np.sort(np.asarray(r["hessian_values"], dtype=float))[::-1][:reach + 1]
            v = v / v[0]
            label = SIDE_LABELS[side] if k == 0 else None
            ranks = np.arange(1, len(v) + 1)
            left.semilogy(ranks, np.where(v > 0, v, np.nan), "o-", color=SIDE_COLORS[side], ms=3, lw=0.9, alpha=0.8,
                          label=label)
            ratio = v[:-1] / np.maximum(v[1:], V.CLAIM8_BULK_WINDOW)
            ratio = np.where(v[:-1] > V.CLAIM8_BULK_WINDOW, ratio, np.nan)
            right.plot(ranks[:-1], ratio, "o-", color=SIDE_COLORS[side], ms=3, lw=0.9, alpha=0.8, label=label)
            if int(r["count"]):
                j = int(r["count"])
                right.plot([j], [ratio[j - 1]], "o", ms=10, mfc="none", color="k", mew=1.2)
    left.axhline(V.CLAIM8_BULK_WINDOW, color=COLORS["edge"], ls=":", lw=1, label="edge of the near-zero window")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axvline(c - 0.5, color=COLORS["edge"], lw=0.8, ls="-.")
        ax.axvline(c + 0.5, color=COLORS["edge"], lw=0.8, ls="-.")
        ax.set_xlabel("rank j")
    right.axhline(V.CLAIM8_GAP_RATIO, color="k", ls="--", lw=1, label=f"threshold {V.CLAIM8_GAP_RATIO:g}")
    left.set_ylabel("θ_j / θ_1")
    right.set_ylabel("θ_j / θ_(j+1)")
    left.set_title(f"Top {reach + 1} Ritz values (dash-dotted: ranks C - 1 and C)", fontsize=10)
    right.set_title("Neighbour ratios; ringed: each network's count", fontsize=10)
    left.legend(fontsize=7.5, loc="lower left")
    right.legend(fontsize=7.5, loc="upper right")
    fig.tight_layout()
    return fig


def separation_figure(study: MixtureStudy) -> Figure:
    """Left: the perceptron's outlier count against the separation (each network; hollow: not resolved), the natural
    networks' counts at the right edge, lines at C - 1 and C. Right: the perceptron's test accuracy and the Bayes
    accuracy against the separation, and the natural networks' test accuracy."""
    c = study.classes
    seps = sorted(study.sweep)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.0, 3.4))
    color = SIDE_COLORS["mixture"]
    jitter = np.linspace(-0.04, 0.04, len(study.seeds)) * (seps[-1] - seps[0] or 1)
    for s in seps:
        for k, r in enumerate(study.sweep[s]):
            filled = bool(r["resolved"])
            left.plot(s + jitter[k], int(r["count"]), "o", color=color, mfc=color if filled else "white", ms=6,
                      label=SIDE_LABELS["mixture"] if (s == seps[0] and k == 0) else None)
    edge = seps[-1] + 0.12 * (seps[-1] - seps[0] or 1)
    for k, r in enumerate(study.records["network"]):
        filled = bool(r["resolved"])
        left.plot(edge + jitter[k], int(r["count"]), "s", color=SIDE_COLORS["network"],
                  mfc=SIDE_COLORS["network"] if filled else "white", ms=6,
                  label=SIDE_LABELS["network"] if k == 0 else None)
    for level, ls in ((c - 1, ":"), (c, "--")):
        left.axhline(level, color=COLORS["edge"], ls=ls, lw=1, label=f"{'C - 1' if level < c else 'C'} = {level}")
    left.axvline(study.profile.mixture.separation, color=COLORS["edge"], lw=0.8)
    left.set_xlabel("separation s of the class means (right edge: the natural networks)")
    left.set_ylabel("outliers (gap criterion)")
    left.set_ylim(-0.5, V.CLAIM8_SEARCH_FACTOR * c + 0.5)
    left.legend(fontsize=7.5, loc="lower right")
    left.set_title("Outlier count", fontsize=10)
    tab = study.sweep_table().groupby("separation").agg({"test acc.": "mean", "Bayes acc.": "mean"})
    right.plot(tab.index, 100 * tab["test acc."], "o-", color=color, label="perceptron, test (mean)")
    right.plot(tab.index, 100 * tab["Bayes acc."], "--", color=COLORS["edge"], label="Bayes-optimal")
    net = 100 * float(np.mean(study.values("network", "test_accuracy")))
    right.axhline(net, color=SIDE_COLORS["network"], lw=1.2, label=f"network on images, test: {net:.0f}%")
    right.axhline(100 / c, color=COLORS["edge"], lw=0.8, ls=":", label="chance")
    right.axvline(study.profile.mixture.separation, color=COLORS["edge"], lw=0.8)
    right.set_xlabel("separation s")
    right.set_ylabel("accuracy (%)")
    right.set_title("Accuracy", fontsize=10)
    right.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    return fig


def measures_figure(study: MixtureStudy) -> Figure:
    """The four measures of claim 8, each network a dot, one column per side: the outlier count (hollow: not
    resolved) and the three shares, with the mean of each side (bar) and the band that counts as agreement around
    the perceptrons' mean (shaded)."""
    panels = [("count", "outliers", V.count_tolerance(study.classes)),
              ("share_ggn", "share in the GGN's top space", V.CLAIM8_OVERLAP_TOLERANCE),
              ("share_class", "share in the class-mean span", V.CLAIM8_OVERLAP_TOLERANCE),
              ("bulk", "spectral mass near zero", V.CLAIM8_BULK_TOLERANCE)]
    fig, axes = plt.subplots(1, 4, figsize=(10.0, 3.0))
    for ax, (key, title, tol) in zip(axes, panels):
        centre = float(np.nanmedian(study.values("mixture", key)) if key == "count"
                       else np.nanmean(study.values("mixture", key)))
        ax.axhspan(centre - tol, centre + tol, color=SIDE_COLORS["mixture"], alpha=0.12, lw=0)
        for i, side in enumerate(SIDES):
            vals = study.values(side, key)
            resolved = study.values(side, "resolved") > 0 if key == "count" else np.ones(len(vals), bool)
            xs = i + np.linspace(-0.12, 0.12, len(vals))
            ax.scatter(xs[resolved], vals[resolved], color=SIDE_COLORS[side], s=22, zorder=3)
            ax.scatter(xs[~resolved], vals[~resolved], facecolors="white", edgecolors=SIDE_COLORS[side], s=22,
                       zorder=3)
            mid = float(np.nanmedian(vals) if key == "count" else np.nanmean(vals))
            ax.plot([i - 0.25, i + 0.25], [mid, mid], color=SIDE_COLORS[side], lw=2)
        ax.set_xticks([0, 1], ["perceptron", "network"])
        ax.set_xlim(-0.6, 1.6)
        ax.set_title(title, fontsize=9)
        if key != "count":
            ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.05)
    fig.tight_layout()
    return fig


def shift_figure(study: MixtureStudy) -> Figure:
    """The batch shift of the top Hessian eigenvalue on each side, pooled over its networks (as in the Spectra
    chapter)."""
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.3))
    for ax, side in zip(axes, SIDES):
        table, fit = study.pooled(side)
        shift_panel(ax, table, fit, sigmas=V.SHIFT_SIGMAS, color=SIDE_COLORS[side],
                    title=f"{SIDE_LABELS[side]}: {study.shift_word(side)}")
        ax.set_title(f"{SIDE_LABELS[side]}: claim-1 word {study.shift_word(side)}", fontsize=9.5)
    fig.tight_layout()
    return fig


def explorer_frame(study: MixtureStudy, separation: float, batch_size: int) -> Figure:
    """One frame of the explorer: the perceptron (network 0) at ``separation`` and the natural network 0, each as the
    empirical Hessian's density (N samples) against a batch of ``batch_size``, on lambda / lambda_max of the
    empirical matrix (log scale). The natural side does not depend on the separation."""
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.2))  # fits the page as a widget frame (72 dpi)
    sources = {"mixture": study.sweep[float(separation)][0], "network": study.records["network"][0]}
    for ax, side in zip(axes, SIDES):
        sp = shift_record(sources[side])
        i = list(np.asarray(sp["batch_sizes"])).index(int(batch_size))
        n = int(sp["draws"][i])
        top = float(np.nanmax(sp["empirical_values"]))
        batch = [(sp["batch_values"][i, d], sp["batch_weights"][i, d], sp["batch_residuals"][i, d]) for d in range(n)]
        values, weights, residuals = (np.stack(a) for a in zip(*batch))
        upper = max(1.08, float(np.nanmax(values)) / top + 0.08)
        grid, density = _log_density(ax, sp["empirical_values"], sp["empirical_weights"], sp["empirical_residuals"],
                                     top, COLORS["empirical"], f"empirical (N = {int(sp['dataset_size'])})", lw=1.6,
                                     upper=upper)
        _log_density(ax, values, weights, residuals, top, COLORS["batch"], f"batch B = {int(batch_size)} ({n} draws)",
                     upper=upper)
        _window(ax)
        shift = np.nanmean(np.nanmax(values, axis=1)) / top - 1
        _floor_at_peaks(ax, grid, density, np.sort(np.asarray(sp["empirical_values"], dtype=float))[::-1][:3] / top)
        what = f"s = {float(separation):g}" if side == "mixture" else "any s"
        ax.set_title(f"{SIDE_LABELS[side]} ({what}): top +{100 * shift:.0f}%", fontsize=9.5)
        ax.set_xlabel("eigenvalue / empirical largest")
        ax.set_ylabel("density (log scale)")
        ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    return fig
