"""Figures of the Spectra chapter: training curves, batch against empirical spectra, the shift's predictions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hessian_lib.plots.style import COLORS, _plain_log_ticks, broadened_density

__all__ = ["training_curves", "spectrum_density_frame", "prediction_panel"]


def training_curves(histories: list[dict] | list[list[dict]], checkpoints: list[int]) -> Figure:
    """Loss and accuracy per epoch of one training run (``TrainResult.history``) or of several (a list of
    histories, one line style per network), checkpoints dotted."""
    runs = [histories] if histories and isinstance(histories[0], dict) else list(histories)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    styles = ["-", "--", ":", "-."]
    for k, history in enumerate(runs):
        epochs = [h["epoch"] for h in history]
        ls = styles[k % len(styles)]
        tag = f" (network {k})" if len(runs) > 1 else ""
        train_label = ("train" + tag) if len(runs) > 1 else "train (running, augmented)"
        left.plot(epochs, [h["train_loss"] for h in history], "o" + ls, color="C0", ms=4, label=train_label)
        left.plot(epochs, [h["test_loss"] for h in history], "s" + ls, color="C1", ms=4, label="test" + tag)
        right.plot(epochs, [100 * h["train_acc"] for h in history], "o" + ls, color="C0", ms=4, label=train_label)
        right.plot(epochs, [100 * h["test_acc"] for h in history], "s" + ls, color="C1", ms=4, label="test" + tag)
    left.set_xlabel("epoch")
    left.set_title("Cross-entropy")
    right.set_xlabel("epoch")
    right.set_ylabel("accuracy (%)")
    right.set_title("Accuracy (100 classes)")
    for ax in (left, right):
        for e in checkpoints:
            ax.axvline(e, color=COLORS["edge"], lw=0.8, ls=":")
        ax.set_xticks([h["epoch"] for h in runs[0]])
        ax.legend(fontsize=7 if len(runs) > 1 else None, ncol=2 if len(runs) > 1 else 1)
    fig.tight_layout()
    return fig


def _ritz_stems(ax: Axes, values: np.ndarray, weights: np.ndarray, color: str, label: str, floor: float,
                marker: str = "o") -> None:
    keep = np.isfinite(values) & np.isfinite(weights)
    v, w = values[keep], np.maximum(weights[keep], floor)
    ax.vlines(v, floor, w, color=color, lw=1.2, alpha=0.7)
    ax.scatter(v, w, color=color, s=14, marker=marker, zorder=3, label=label)


def spectrum_density_frame(sp: dict, batch_index: int, *, kind: str, epoch: int, draw: int = 0) -> Figure:
    """Batch against empirical spectrum of one matrix: Ritz stems (left) and log densities (right).

    ``sp`` is a dict of :func:`hessian_lib.experiments.spectra.spectrum_at`; ``batch_index`` picks B
    from its grid. Left: Ritz values and weights of the empirical matrix and of one batch draw.
    Right: :func:`broadened_density` on a log scale (the batch density averaged over its draws),
    with the extreme Ritz values marked at the top: the outliers carry weights of order 1/P,
    invisible on a linear scale, so the lower limit is set from their peaks.
    """
    b = int(sp["batch_sizes"][batch_index])
    n_draws = int(sp["draws"][batch_index])
    bv, bw, br = (sp[k][batch_index][:n_draws] for k in ("batch_values", "batch_weights", "batch_residuals"))
    ev, ew, er = sp["empirical_values"], sp["empirical_weights"], sp["empirical_residuals"]
    m = int(sp["lanczos_steps"])
    name = "Hessian" if kind == "hessian" else "Gauss-Newton"
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.3))  # fits the page as a widget frame (72 dpi)
    floor = 1e-6
    _ritz_stems(left, ev, ew, COLORS["empirical"], f"empirical (N = {int(sp['dataset_size'])})", floor, "s")
    _ritz_stems(left, bv[draw], bw[draw], COLORS["batch"], f"batch B = {b}, draw {draw + 1}", floor)
    left.set_yscale("log")
    left.set_ylim(floor, 1.5)
    left.set_xlabel("Ritz value (eigenvalue)")
    left.set_ylabel("Ritz weight")
    left.legend(loc="lower right")
    left.set_title(f"{name}, epoch {epoch}: Ritz values and weights ({m} steps)", fontsize=9.5)

    lo = float(min(np.nanmin(bv), np.nanmin(ev)))
    hi = float(max(np.nanmax(bv), np.nanmax(ev)))
    span = hi - lo or 1.0
    grid = np.linspace(lo - 0.08 * span, hi + 0.08 * span, 1200)
    width = span / (4 * m)
    emp_density = broadened_density(grid, ev, ew, er, width)
    batch_density = broadened_density(grid, bv, bw, br, width)
    def positive(d: np.ndarray) -> np.ndarray:  # log scale: no offset, which would hide the small peaks
        return np.where(d > 0, d, np.nan)

    right.semilogy(grid, positive(emp_density), color=COLORS["empirical"], lw=1.6, ls="--", label="empirical")
    right.semilogy(grid, positive(batch_density), color=COLORS["batch"], lw=1.3,
                   label=f"batch B = {b} (mean of {n_draws} draws)")
    tops = np.nanmax(bv, axis=1), np.nanmin(bv, axis=1)
    ends = ["top", "bottom"] if kind == "hessian" else ["top"]
    # low enough to show the extreme Ritz values' own peaks (their weights are of order 1/P)
    peak = float(max(emp_density.max(), batch_density.max()))
    at_ends = [np.interp(float(np.nanmax(ev) if end == "top" else np.nanmin(ev)), grid, emp_density) for end in ends]
    at_ends += [
        np.interp(v, grid, batch_density) for v in np.concatenate([tops[0], tops[1] if kind == "hessian" else []])
    ]
    floor_y = min([a for a in at_ends if a > 0] or [1e-4 * peak])
    ylim = (float(np.clip(0.3 * floor_y, 1e-10 * peak, 1e-3 * peak)), 3 * peak)
    right.fill_between(grid, ylim[0], np.maximum(emp_density, ylim[0]), color=COLORS["empirical"], alpha=0.2, lw=0)
    right.set_ylim(*ylim)
    for end in ends:
        e_val = float(np.nanmax(ev) if end == "top" else np.nanmin(ev))
        b_vals = tops[0] if end == "top" else tops[1]
        right.plot([e_val], [ylim[1] / 1.6], marker="v", color=COLORS["empirical"], ms=8, ls="none")
        right.plot(b_vals, np.full(b_vals.shape, ylim[1] / 1.6), marker="|", color=COLORS["batch"], ms=12, ls="none")
    right.set_xlabel("eigenvalue")
    right.set_ylabel("density (log scale)")
    right.legend(loc="center right")
    right.set_title(f"Densities; markers: extreme Ritz values (min. width {width:.2g})", fontsize=9.5)
    fig.tight_layout()
    return fig


def prediction_panel(ax: Axes, batch_sizes: np.ndarray, mean: np.ndarray, se: np.ndarray, empirical: float,
                     predictions: dict, *, sigmas: float, color: str, title: str) -> None:
    """Measured extreme eigenvalue magnitude against B with the noise models' predictions (bands: one error)."""
    b = np.asarray(batch_sizes, dtype=float)
    ax.errorbar(b, np.abs(mean), yerr=sigmas * se, fmt="o", ms=4, color=color, capsize=2,
                label=f"measured (mean, {sigmas:g} se)")
    ax.axhline(abs(empirical), color=color, lw=0.9, ls="-.", label="empirical")
    styles = {"isotropic Wigner": ("x", "--", COLORS["empirical"]), "directional": ("+", "--", COLORS["theory"]),
              "rank-deficient MP": ("d", ":", "#ff7f0e")}
    for name, (pred, err) in predictions.items():
        marker, ls, c = styles.get(name, ("o", "-", "k"))
        ax.plot(b, np.abs(pred), marker=marker, ls=ls, color=c, lw=1, ms=6, label=name)
        ax.fill_between(b, np.abs(pred) - err, np.abs(pred) + err, color=c, alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain_log_ticks(ax, b)
    ax.set_xlabel("batch size B")
    ax.set_ylabel("|extreme eigenvalue|")
    ax.set_title(title, fontsize=9.5)
