"""Figure helpers with one house style, shared by the chapters."""

from __future__ import annotations

from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hessian_lib import rmt
from hessian_lib.experiments.theory import child_seed, wigner_spectrum, wishart_spectrum

__all__ = ["COLORS", "use_house_style", "spectrum_histogram", "rmt_explorer_frame"]

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


def rmt_explorer_frame(batch_size: int, theta: float, dim: int, s1: float, *, n_data: int, seed: int = 0) -> Figure:
    r"""One frame of the Theory chapter's explorer: Wigner (Hessian) and Wishart (GGN) panels.

    Left: :math:`\theta e_1 e_1^\top + W_{s(B)}` with :math:`s(B) = s_1\sqrt{1/B - 1/N}`,
    the semicircle, the edges :math:`\pm 2s` and the predicted outlier. Right: a
    spiked sample covariance of B samples in dimension P with bulk variance
    :math:`\sigma^2 = (s_1/4)^2` and spike :math:`\ell = 1 + 4\theta`, the
    Marchenko-Pastur law (non-zero eigenvalues) and the predicted top eigenvalue.
    """
    sigma2_w = s1**2 / dim
    s = float(rmt.noise_scale(dim, sigma2_w, batch_size, n_data))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.4))

    eig = wigner_spectrum(dim, theta, s, seed=child_seed(seed, dim, batch_size, int(theta * 100), int(s1 * 100)))
    predicted = float(rmt.wigner_outlier(theta, s))
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

    sigma2 = (s1 / 4.0) ** 2
    ell = 1.0 + 4.0 * theta
    q = dim / batch_size
    eig_w = wishart_spectrum(dim, batch_size, ell, sigma2, seed=child_seed(seed, dim, batch_size, 7))
    nonzero = eig_w[eig_w > 1e-9 * max(eig_w[-1], 1e-300)]
    top_pred = float(rmt.mp_spiked_top(ell, q, sigma2))
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
    fig.suptitle(f"B = {batch_size}, P = {dim}, s1 = {s1:g}", fontsize=10, y=1.02)
    fig.tight_layout()
    return fig


def _ritz_stems(ax: Axes, values: np.ndarray, weights: np.ndarray, color: str, label: str, floor: float) -> None:
    keep = np.isfinite(values) & np.isfinite(weights)
    v, w = values[keep], np.maximum(weights[keep], floor)
    ax.vlines(v, floor, w, color=color, lw=1.2, alpha=0.8)
    ax.scatter(v, w, color=color, s=12, zorder=3, label=label)


def spectrum_stem_frame(sp: dict, batch_index: int, *, kind: str, epoch: int, draw: int = 0) -> Figure:
    """Batch against empirical spectrum of one matrix: Ritz stems (left) and broadened densities (right).

    ``sp`` is a dict of :func:`hessian_lib.experiments.spectra.spectrum_at`; ``batch_index`` picks B
    from its grid. Left: Ritz values and weights of the empirical matrix and of one batch draw.
    Right: Gaussian-broadened SLQ densities, the batch density averaged over all draws.
    """
    import torch

    from hessian_lib.curvature import gaussian_density

    b = int(sp["batch_sizes"][batch_index])
    bv, bw = sp["batch_values"][batch_index], sp["batch_weights"][batch_index]
    ev, ew = sp["empirical_values"], sp["empirical_weights"]
    name = "Hessian" if kind == "hessian" else "Gauss-Newton"
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.5, 3.4))
    floor = 1e-6
    _ritz_stems(left, ev, ew, COLORS["empirical"], f"empirical (N = {int(sp['dataset_size'])})", floor)
    _ritz_stems(left, bv[draw], bw[draw], COLORS["batch"], f"batch, B = {b}", floor)
    left.set_yscale("log")
    left.set_ylim(floor, 1.5)
    left.set_xlabel("Ritz value (eigenvalue)")
    left.set_ylabel("Ritz weight")
    left.legend(loc="lower right")
    left.set_title(f"{name}, epoch {epoch}: Lanczos Ritz values and weights", fontsize=9.5)

    lo = float(np.nanmin([np.nanmin(bv), ev.min()]))
    hi = float(np.nanmax([np.nanmax(bv), ev.max()]))
    span = hi - lo or 1.0
    grid = torch.linspace(lo - 0.1 * span, hi + 0.1 * span, 500, dtype=torch.float64)
    sigma = 0.015 * span

    def density(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
        pairs = [(torch.as_tensor(v[np.isfinite(v)]), torch.as_tensor(w[np.isfinite(w)])) for v, w in
                 zip(np.atleast_2d(values), np.atleast_2d(weights))]
        return gaussian_density(grid, [p[0] for p in pairs], [p[1] for p in pairs], sigma).numpy()

    right.semilogy(grid.numpy(), density(ev, ew) + 1e-8, color=COLORS["empirical"], label="empirical")
    right.semilogy(grid.numpy(), density(bv, bw) + 1e-8, color=COLORS["batch"],
                   label=f"batch B = {b} (mean of {bv.shape[0]} draws)")
    right.set_ylim(1e-4, None)
    right.set_xlabel("eigenvalue")
    right.set_ylabel("density (broadened)")
    right.legend(loc="upper right")
    right.set_title(f"SLQ spectral density, Gaussian broadening {sigma:.2g}", fontsize=9.5)
    fig.tight_layout()
    return fig


def extremes_against_batch(ax: Axes, sp: dict, n_data: int, *, end: str = "top", fit: dict | None = None,
                           prediction: np.ndarray | None = None, directional: np.ndarray | None = None,
                           color: str | None = None, label: str = "") -> None:
    """Extreme Ritz value (mean and spread over draws) against B, with the empirical value, fits and a prediction."""
    b = sp["batch_sizes"].astype(float)
    vals = sp["batch_top"] if end == "top" else sp["batch_bottom"]
    sign = 1.0 if end == "top" else -1.0
    mean, sd = np.nanmean(vals, axis=1) * sign, np.nanstd(vals, axis=1, ddof=1)
    emp = sign * (sp["empirical_top"] if end == "top" else sp["empirical_bottom"])
    color = color or COLORS["batch"]
    ax.errorbar(b, mean, yerr=sd, fmt="o", ms=4, color=color, capsize=2, label=f"{label} batch (mean ± sd)")
    ax.axhline(emp, color=color, lw=0.9, ls="-.", alpha=0.8, label=f"{label} empirical, N = {n_data}")
    grid = np.geomspace(b.min(), n_data, 200)
    x = 1.0 / grid - 1.0 / n_data
    if fit is not None:
        ax.plot(grid, sign * (fit["linear_intercept"] + fit["linear_slope"] * x), color=color, lw=1,
                label=f"{label} fit a + b(1/B - 1/N)")
        ax.plot(grid, sign * (fit["sqrt_intercept"] + fit["sqrt_slope"] * np.sqrt(x)), color=color, lw=1, ls=":",
                label=f"{label} fit a + c sqrt(1/B - 1/N)")
    if prediction is not None:
        ax.plot(b, sign * prediction, marker="x", ls="--", color=COLORS["empirical"], lw=1,
                label=f"{label} isotropic Wigner prediction (no fit)")
    if directional is not None:
        ax.plot(b, sign * directional, marker="+", ms=8, ls="--", color=COLORS["theory"], lw=1,
                label=f"{label} directional-noise prediction (no fit)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
