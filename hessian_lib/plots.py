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
