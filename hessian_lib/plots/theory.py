"""Figures of the Theory chapter: sampled spectra against their limiting laws, and the explorer's frames."""

from __future__ import annotations

from typing import Callable

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hessian_lib.laws import rmt
from hessian_lib.plots.style import COLORS

__all__ = ["spectrum_histogram", "rmt_explorer_frame"]


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
