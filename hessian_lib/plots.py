"""Figure helpers with one house style, shared by the chapters."""

from __future__ import annotations

from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from hessian_lib.laws import rmt

__all__ = ["COLORS", "use_house_style", "spectrum_histogram", "rmt_explorer_frame", "training_curves",
           "broadened_density", "spectrum_density_frame", "shift_panel", "prediction_panel"]

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


def spectrum_histogram(
    ax: Axes,
    eigenvalues: np.ndarray,
    density: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    bins: int | None = None,
    label: str = "sampled spectrum",
    density_label: str = "limiting density",
    x_range: tuple[float, float] | None = None,
) -> None:
    """Normalised histogram of ``eigenvalues`` [P] with an optional limiting density curve.

    ``bins`` defaults to about four eigenvalues a bin, between 10 and 60 bins.
    """
    bins = bins or int(np.clip(len(eigenvalues) // 4, 10, 60))
    lo, hi = x_range or (float(eigenvalues.min()), float(eigenvalues.max()))
    pad = 0.05 * (hi - lo or 1.0)
    ax.hist(eigenvalues, bins=bins, range=(lo - pad, hi + pad), density=True, color=COLORS["batch"], alpha=0.45,
            label=label)
    if density is not None:
        x = np.linspace(lo - pad, hi + pad, 600)
        ax.plot(x, density(x), color=COLORS["theory"], lw=1.6, label=density_label)


def rmt_explorer_frame(sample: dict) -> Figure:
    r"""One frame of the Theory chapter's explorer: Wigner (Hessian) and Wishart (GGN) panels.

    ``sample`` is the dict of :func:`hessian_lib.experiments.theory.explorer_sample`. Left:
    :math:`\theta e_1 e_1^\top + W_{s(B)}`, the semicircle, the edges :math:`\pm 2s` and the
    predicted outlier. Right: the spiked sample covariance, the Marchenko-Pastur law (non-zero
    eigenvalues) and the predicted top eigenvalue.
    """
    theta, s, q, sigma2, ell = (sample[k] for k in ("theta", "s", "q", "sigma2", "spike"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.4))

    eig, predicted = sample["wigner_eigenvalues"], sample["wigner_predicted_top"]
    spectrum_histogram(left, eig, (lambda x: rmt.semicircle_density(x, s)) if s > 0 else None,
                       x_range=(min(-2 * s, eig.min()), max(2 * s, eig.max(), predicted)))
    for edge in rmt.semicircle_edges(s):
        left.axvline(edge, color=COLORS["edge"], ls=":", lw=1)
    left.axvline(predicted, color=COLORS["empirical"], ls="--", lw=1.4, label=f"predicted top {predicted:.2f}")
    left.plot([eig[-1]], [0], marker="v", color="k", ms=7, clip_on=False, label=f"sampled top {eig[-1]:.2f}")
    regime = "outlier" if abs(theta) > s else "stuck at edge (below BBP threshold)"
    left.set_title(f"Hessian-like: spike {theta:g} + Wigner, s(B)={s:.2f}: {regime}", fontsize=9.5)
    left.set_xlabel("eigenvalue")
    left.legend(loc="upper left")

    eig_w, top_pred = sample["wishart_eigenvalues"], sample["wishart_predicted_top"]
    nonzero = eig_w[eig_w > 1e-9 * max(eig_w[-1], 1e-300)]
    continuous_mass = min(1.0, 1.0 / q)
    lo_edge, hi_edge = rmt.marchenko_pastur_edges(q, sigma2)
    spectrum_histogram(right, nonzero, lambda x: rmt.marchenko_pastur_density(x, q, sigma2) / continuous_mass,
                       label="sampled non-zero eigenvalues", density_label="Marchenko-Pastur",
                       x_range=(min(lo_edge, nonzero.min()), max(hi_edge, nonzero.max(), top_pred)))
    right.axvline(hi_edge, color=COLORS["edge"], ls=":", lw=1)
    right.axvline(top_pred, color=COLORS["empirical"], ls="--", lw=1.4, label=f"predicted top {top_pred:.2f}")
    right.plot([eig_w[-1]], [0], marker="v", color="k", ms=7, clip_on=False, label=f"sampled top {eig_w[-1]:.2f}")
    right.set_title(f"GGN-like: spiked Wishart, q=P/B={q:.3g}, l={ell:g}, sigma^2={sigma2:.2g}", fontsize=9.5)
    right.set_xlabel("eigenvalue")
    right.legend(loc="upper right")
    fig.suptitle(f"B = {sample['batch_size']}, P = {sample['dim']}, s1 = {sample['s1']:g}", fontsize=10, y=1.02)
    fig.tight_layout()
    return fig


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
    at_ends += [np.interp(v, grid, batch_density) for v in np.concatenate([tops[0], tops[1] if kind == "hessian" else []])]
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


def shift_panel(ax: Axes, table, fit: dict, *, sigmas: float, color: str, title: str) -> None:
    r"""The shift :math:`\Delta(B)` against :math:`x = 1/B - 1/N` (log-log) with its power-law fit.

    ``table``: :func:`hessian_lib.experiments.spectra.shift_statistics`, or the pooled table of
    :func:`~hessian_lib.experiments.spectra.pool_shift` (its ``shift net k`` columns are drawn as
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
