r"""Random-matrix laws for the batch Hessian: spiked Wigner and spiked Marchenko-Pastur.

The batch Hessian is modelled as :math:`H_B = H_\mathrm{emp} + \varepsilon`, with
:math:`H_\mathrm{emp}` low rank (spikes :math:`\theta_i`) and :math:`\varepsilon` a
Wigner matrix whose entries have variance :math:`s^2/P`, where

.. math:: s^2 = P\,\sigma^2 \left(\tfrac1B - \tfrac1N\right).

Its spectrum is a semicircle on :math:`[-2s, 2s]`, and a spike :math:`\theta`
produces an outlier at :math:`\theta + s^2/\theta` when :math:`|\theta| > s`
(the BBP transition), otherwise the extreme eigenvalue sticks to the edge
:math:`\pm 2s`.

The GGN of a batch is a sum of :math:`B` PSD terms, so it is modelled as a
sample covariance :math:`\tfrac1B X^\top X` with population covariance
:math:`\sigma^2 (I + (\ell - 1) e_1 e_1^\top)` and ratio :math:`q = P/B`
(spiked Marchenko-Pastur): the top eigenvalue tends to
:math:`\sigma^2 \ell (1 + q/(\ell - 1))` when :math:`\ell > 1 + \sqrt q`, else to
the edge :math:`\sigma^2 (1 + \sqrt q)^2`.

All limits are :math:`P \to \infty` limits; at finite :math:`P` expect
corrections of order :math:`P^{-1/2}` for outliers (:math:`B^{-1/2}` for the MP
outlier) and :math:`P^{-2/3}` at a bulk edge, larger (:math:`P^{-1/3}`) right at
the transition.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.linalg
from numpy.typing import ArrayLike

__all__ = [
    "semicircle_density",
    "semicircle_edges",
    "marchenko_pastur_density",
    "marchenko_pastur_edges",
    "noise_scale",
    "wigner_outlier",
    "wigner_bbp_threshold",
    "wigner_extremes",
    "mp_spiked_top",
    "mp_bbp_threshold",
    "sample_goe",
    "sample_spiked_wigner",
    "sample_spiked_wishart",
    "sample_batch_hessian",
    "extreme_eigenvalues",
    "directional_outlier",
    "rank_deficient_outlier",
]


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------


def _nonneg_array(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return arr


def _positive_array(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return arr


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------
# densities and edges
# ---------------------------------------------------------------------------


def semicircle_edges(s: float) -> tuple[float, float]:
    r"""Edges :math:`(-2s, 2s)` of the semicircle of scale ``s`` (>= 0).

    >>> semicircle_edges(1.0)
    (-2.0, 2.0)
    """
    s = float(_nonneg_array("s", s))
    return -2.0 * s, 2.0 * s


def semicircle_density(x: ArrayLike, s: float) -> np.ndarray:
    r"""Wigner semicircle density with edges :math:`\pm 2s`.

    :math:`\rho(x) = \sqrt{4s^2 - x^2} / (2\pi s^2)` on :math:`[-2s, 2s]`, 0
    outside. It is the limiting eigenvalue density of a symmetric :math:`P\times P`
    matrix with independent entries of variance :math:`s^2/P`. ``x`` any shape;
    returns an array of the same shape. ``s`` must be > 0.
    """
    s = float(_positive_array("s", s))
    x = np.asarray(x, dtype=float)
    inside = np.clip(4.0 * s * s - x * x, 0.0, None)
    return np.sqrt(inside) / (2.0 * np.pi * s * s)


def marchenko_pastur_edges(q: float, sigma2: float = 1.0) -> tuple[float, float]:
    r"""Edges :math:`\sigma^2 (1 \mp \sqrt q)^2` of the Marchenko-Pastur bulk."""
    q = float(_positive_array("q", q))
    sigma2 = float(_positive_array("sigma2", sigma2))
    r = np.sqrt(q)
    return sigma2 * (1.0 - r) ** 2, sigma2 * (1.0 + r) ** 2


def marchenko_pastur_density(x: ArrayLike, q: float, sigma2: float = 1.0) -> np.ndarray:
    r"""Continuous part of the Marchenko-Pastur law, ratio :math:`q = P/B`.

    Limit eigenvalue density of :math:`\tfrac1B \sum_{i=1}^B x_i x_i^\top` for
    :math:`x_i \in \mathbb R^P` with covariance :math:`\sigma^2 I`:

    .. math:: \rho(x) = \frac{\sqrt{(\lambda_+ - x)(x - \lambda_-)}}{2\pi\sigma^2 q\, x},
              \quad \lambda_\pm = \sigma^2 (1 \pm \sqrt q)^2 .

    For :math:`q \le 1` it integrates to 1. For :math:`q > 1` the matrix has rank
    :math:`B < P`: this continuous part integrates to :math:`1/q` and the missing
    mass :math:`1 - 1/q` is an atom at 0, which is *not* included here.
    ``x`` any shape (units of ``sigma2``); returns an array of the same shape.
    """
    lo, hi = marchenko_pastur_edges(q, sigma2)
    x = np.asarray(x, dtype=float)
    out = np.zeros_like(x)
    mask = (x > lo) & (x < hi) & (x > 0)
    xm = x[mask]
    out[mask] = np.sqrt((hi - xm) * (xm - lo)) / (2.0 * np.pi * sigma2 * q * xm)
    return out


# ---------------------------------------------------------------------------
# noise scale and spiked Wigner
# ---------------------------------------------------------------------------


def noise_scale(
    dim: int,
    sigma2: float,
    batch_size: ArrayLike,
    n_data: float | None = None,
    *,
    exact: bool = False,
) -> np.ndarray:
    r"""Semicircle scale :math:`s(B) = \sqrt{P \sigma^2 (1/B - 1/N)}` of the batch noise.

    ``dim`` is P, ``sigma2`` the per-sample entry variance :math:`\sigma^2`,
    ``batch_size`` B (any shape), ``n_data`` N (``None``: infinite data, so
    :math:`s^2 = P\sigma^2/B`). With ``exact=True`` the without-replacement factor
    :math:`\tfrac1B \tfrac{N-B}{N-1}` replaces :math:`1/B - 1/N`. Vanishes at
    B = N. Returns an array with the shape of ``batch_size`` (units of the
    eigenvalues). Raises ``ValueError`` for B <= 0 or B > N.

    >>> noise_scale(dim=1000, sigma2=0.016, batch_size=[16, 64]).tolist()  # sqrt(16 / B)
    [1.0, 0.5]
    >>> float(noise_scale(dim=1000, sigma2=0.016, batch_size=1000, n_data=1000))  # the full batch
    0.0
    """
    dim = _positive_int("dim", dim)
    sigma2 = float(_nonneg_array("sigma2", sigma2))
    b = _positive_array("batch_size", batch_size)
    if n_data is None:
        if exact:
            raise ValueError("exact=True needs a finite n_data")
        factor = 1.0 / b
    else:
        n = float(n_data)
        if not np.isfinite(n) or n <= 0:
            raise ValueError(f"n_data must be finite and > 0, got {n_data!r}")
        if np.any(b > n):
            raise ValueError(f"batch_size must not exceed n_data={n_data}, got {batch_size!r}")
        if exact:
            factor = (n - b) / (b * (n - 1.0)) if n > 1 else np.zeros_like(b)
        else:
            factor = 1.0 / b - 1.0 / n
    factor = np.clip(factor, 0.0, None)  # rounding at B = N
    return np.sqrt(dim * sigma2 * factor)


def wigner_bbp_threshold(s: ArrayLike) -> np.ndarray:
    r"""BBP threshold of the spiked Wigner model: a spike needs :math:`|\theta| > s`.

    >>> wigner_bbp_threshold([0.5, 1.0]).tolist()
    [0.5, 1.0]
    """
    return _nonneg_array("s", s).copy()


def wigner_outlier(theta: ArrayLike, s: ArrayLike) -> np.ndarray:
    r"""Limit of the eigenvalue attached to a spike ``theta`` in :math:`\theta\,vv^\top + W_s`.

    .. math:: \lambda(\theta) = \begin{cases} \theta + s^2/\theta & |\theta| > s \\
              2s\,\mathrm{sign}(\theta) & |\theta| \le s \end{cases}

    A negative spike gives the bottom end (:math:`-2s` below threshold);
    ``theta = 0`` is taken as the top edge :math:`+2s`. ``theta`` and ``s``
    (>= 0) broadcast; returns an array of the broadcast shape.

    Above the threshold the outlier is pushed out by :math:`s^2/\theta`; below it sticks to the edge:

    >>> wigner_outlier([2.0, 0.5, -2.0], 1.0).tolist()
    [2.5, 2.0, -2.5]
    """
    theta = np.asarray(theta, dtype=float)
    s = _nonneg_array("s", s)
    theta, s = np.broadcast_arrays(theta, s)
    sign = np.where(theta < 0, -1.0, 1.0)
    above = np.abs(theta) > s
    with np.errstate(divide="ignore", invalid="ignore"):
        outlier = theta + np.where(above, s * s / np.where(above, theta, 1.0), 0.0)
    return np.where(above, outlier, 2.0 * s * sign)


def wigner_extremes(thetas: Sequence[float], s: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    r"""Predicted (largest, smallest) eigenvalue of :math:`\mathrm{diag}(\theta) + W_s`.

    ``thetas``: the (few) non-zero eigenvalues of the low-rank part; ``s`` any
    shape. top :math:`= \max(2s, \max_{\theta>0} \lambda(\theta))`, bottom
    :math:`= \min(-2s, \min_{\theta<0} \lambda(\theta))`. Returns two arrays of
    the shape of ``s``.
    """
    s = _nonneg_array("s", s)
    thetas = np.asarray(thetas, dtype=float).reshape(-1)
    top = 2.0 * s
    bottom = -2.0 * s
    for th in thetas:
        if th > 0:
            top = np.maximum(top, wigner_outlier(th, s))
        elif th < 0:
            bottom = np.minimum(bottom, wigner_outlier(th, s))
    return top, bottom


# ---------------------------------------------------------------------------
# spiked Marchenko-Pastur
# ---------------------------------------------------------------------------


def mp_bbp_threshold(q: ArrayLike) -> np.ndarray:
    r"""BBP threshold :math:`1 + \sqrt q` of the spiked covariance model (spike ratio :math:`\ell`)."""
    return 1.0 + np.sqrt(_positive_array("q", q))


def mp_spiked_top(spike: ArrayLike, q: ArrayLike, sigma2: float = 1.0) -> np.ndarray:
    r"""Limit of the top eigenvalue of a sample covariance with one spike.

    Population covariance :math:`\sigma^2 (I + (\ell - 1) e_1 e_1^\top)`, ratio
    :math:`q = P/B`:

    .. math:: \lambda_1 \to \begin{cases} \sigma^2 \ell \left(1 + \frac{q}{\ell - 1}\right)
              & \ell > 1 + \sqrt q \\ \sigma^2 (1 + \sqrt q)^2 & \text{otherwise.} \end{cases}

    ``spike`` (:math:`\ell > 0`) and ``q`` broadcast; returns an array in units of ``sigma2``.
    """
    ell = _positive_array("spike", spike)
    q = _positive_array("q", q)
    sigma2 = float(_positive_array("sigma2", sigma2))
    ell, q = np.broadcast_arrays(ell, q)
    above = ell > 1.0 + np.sqrt(q)
    safe = np.where(above, ell - 1.0, 1.0)
    outlier = ell * (1.0 + q / safe)
    edge = (1.0 + np.sqrt(q)) ** 2
    return sigma2 * np.where(above, outlier, edge)


# ---------------------------------------------------------------------------
# outliers of a batch matrix from a measured per-sample noise
# ---------------------------------------------------------------------------


def directional_outlier(theta: ArrayLike, x: ArrayLike, s2: ArrayLike) -> np.ndarray:
    r"""Eigenvalue attached to a spike ``theta`` when the noise couples its eigenvector v to the rest.

    For :math:`H_B = \theta vv^\top + \dots + \varepsilon` with :math:`\mathbb E\,\varepsilon = 0`,
    second-order perturbation theory, averaged over the noise and with the rest of the spectrum
    neglected against :math:`\lambda`, gives :math:`\lambda = \theta + x\,s_v^2/\lambda`, whose root
    continuous in ``theta`` is

    .. math:: \lambda = \tfrac12\Big(\theta + \operatorname{sign}\theta\,\sqrt{\theta^2 + 4 x s_v^2}\Big).

    ``x``: :math:`1/B - 1/N` (>= 0); ``s2``: :math:`s_v^2 = \mathbb E_i\lVert(I - vv^\top)(M_i - M)v\rVert^2`,
    the single-sample noise variance along v (>= 0). For isotropic Wigner noise :math:`s_v^2 = s_1^2`
    and, for small shifts, it is the Wigner outlier :math:`\theta + s^2/\theta`. ``theta = 0`` is taken
    as the top end. Inputs broadcast; returns an array of the broadcast shape.
    """
    theta = np.asarray(theta, dtype=float)
    x = _nonneg_array("x", x)
    s2 = _nonneg_array("s2", s2)
    sign = np.where(theta < 0, -1.0, 1.0)
    return 0.5 * (theta + sign * np.sqrt(theta**2 + 4.0 * x * s2))


def rank_deficient_outlier(theta: ArrayLike, s1: ArrayLike, x: ArrayLike, dim: int, rank: float) -> np.ndarray:
    r"""Extreme eigenvalue when the batch noise has low rank: a Marchenko-Pastur-like model.

    The noise of a batch of B samples is a sum of B per-sample terms of rank at most ``rank``
    (C - 1 for a softmax over C classes: the rank of each sample's Gauss-Newton term), so it has
    rank at most ``rank`` * B, below P for small B, and it cannot be a Wigner matrix. Model it
    as a centred sample covariance of :math:`R = r/x` Gaussian rank-one terms (``rank`` = r,
    :math:`x = 1/B - 1/N`, so :math:`R = rB` for :math:`N \to \infty`), carrying a spike:

    .. math:: H_B = S - \sigma_w^2 I, \qquad S = \tfrac1R\textstyle\sum_{j\le R} a_j a_j^\top, \qquad
              a_j \sim \mathcal N(0, \sigma_w^2 I + \theta vv^\top),

    so :math:`\mathbb E H_B = \theta vv^\top`. Matching its Frobenius noise to the measured one,
    :math:`\mathbb E\lVert S - \mathbb E S\rVert_F^2 \approx P^2\sigma_w^4/R = P s_1^2 x`, gives
    :math:`\sigma_w^2 = s_1\sqrt{r/P}`; the aspect ratio is :math:`q = P/R = Px/r`. The spiked
    Marchenko-Pastur law (:func:`mp_spiked_top`, spike :math:`\ell = 1 + \theta/\sigma_w^2`) then gives

    .. math:: \lambda = \theta + s_1 x\sqrt{P/r} + s_1^2 x/\theta \quad (\theta > s_1\sqrt x), \qquad
              \lambda = 2 s_1\sqrt x + s_1 x\sqrt{P/r} \quad \text{otherwise:}

    the Wigner outlier (or edge) plus an additive shift proportional to :math:`x \approx 1/B`. The
    BBP threshold is the Wigner one. A negative ``theta`` gives the mirror image (the bottom end,
    assuming the negative part of the noise has the same structure). ``x`` must be > 0; inputs
    broadcast; returns an array of the broadcast shape.
    """
    dim = _positive_int("dim", dim)
    rank = float(_positive_array("rank", rank))
    theta = np.asarray(theta, dtype=float)
    s1 = _nonneg_array("s1", s1)
    x = _positive_array("x", x)
    theta, s1, x = np.broadcast_arrays(theta, s1, x)
    sigma2 = np.maximum(s1 * np.sqrt(rank / dim), np.finfo(float).tiny)
    q = dim * x / rank
    ell = 1.0 + np.abs(theta) / sigma2
    top = mp_spiked_top(ell, q, 1.0) * sigma2 - sigma2
    return np.where(theta < 0, -1.0, 1.0) * top


# ---------------------------------------------------------------------------
# samplers
# ---------------------------------------------------------------------------


def sample_goe(dim: int, s: float, rng: np.random.Generator) -> np.ndarray:
    r"""GOE matrix [P, P] (float64): off-diagonal variance :math:`s^2/P`, diagonal :math:`2s^2/P`.

    Its spectrum tends to the semicircle on :math:`[-2s, 2s]`.
    """
    dim = _positive_int("dim", dim)
    s = float(_nonneg_array("s", s))
    g = rng.standard_normal((dim, dim))
    w = g + g.T
    w *= s / np.sqrt(2.0 * dim)
    return w


def sample_spiked_wigner(dim: int, spikes: Sequence[float], s: float, *, seed: int) -> np.ndarray:
    r"""Symmetric [P, P] float64 sample of :math:`\sum_i \theta_i e_i e_i^\top + W_s`.

    The spikes sit on the first coordinate axes; since the GOE is rotation
    invariant in law this is equivalent to random orthonormal directions.
    :math:`W_s` is GOE with off-diagonal entry variance :math:`s^2/P`
    (semicircle on :math:`[-2s, 2s]`). Same ``seed`` -> identical matrix
    (``numpy.random.default_rng(seed)``).
    """
    dim = _positive_int("dim", dim)
    spikes = np.asarray(spikes, dtype=float).reshape(-1)
    if spikes.size > dim:
        raise ValueError(f"{spikes.size} spikes do not fit in dimension {dim}")
    if not np.all(np.isfinite(spikes)):
        raise ValueError("spikes must be finite")
    rng = np.random.default_rng(seed)
    h = sample_goe(dim, s, rng)
    idx = np.arange(spikes.size)
    h[idx, idx] += spikes
    return h


def sample_spiked_wishart(
    dim: int, batch_size: int, spike: float, sigma2: float = 1.0, *, seed: int
) -> np.ndarray:
    r"""Sample covariance [P, P] float64: :math:`\tfrac1B X^\top X`, :math:`X \in \mathbb R^{B \times P}`.

    Rows :math:`x \sim \mathcal N(0, \sigma^2 (I + (\ell - 1) e_1 e_1^\top))`,
    :math:`\ell` = ``spike`` > 0. Costs :math:`O(B P^2)`. Same ``seed`` ->
    identical matrix.
    """
    dim = _positive_int("dim", dim)
    batch_size = _positive_int("batch_size", batch_size)
    ell = float(_positive_array("spike", spike))
    sigma2 = float(_positive_array("sigma2", sigma2))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, dim))
    x[:, 0] *= np.sqrt(ell)
    x *= np.sqrt(sigma2)
    return (x.T @ x) / batch_size


def sample_batch_hessian(
    dim: int,
    spikes: Sequence[float],
    sigma2: float,
    batch_size: int,
    n_data: float | None,
    *,
    seed: int,
) -> np.ndarray:
    r"""Toy batch Hessian [P, P]: :math:`H_\mathrm{emp} + W_{s(B)}`.

    :math:`H_\mathrm{emp} = \mathrm{diag}(\text{spikes}, 0, \dots)` and
    :math:`s(B) = \sqrt{P\sigma^2(1/B - 1/N)}` (see :func:`noise_scale`). At
    B = N it returns :math:`H_\mathrm{emp}` exactly.
    """
    s = float(noise_scale(dim, sigma2, batch_size, n_data))
    return sample_spiked_wigner(dim, spikes, s, seed=seed)


def extreme_eigenvalues(matrix: ArrayLike) -> tuple[float, float]:
    """(largest, smallest) eigenvalue of a symmetric [P, P] matrix."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"expected a non-empty square matrix, got shape {m.shape}")
    if not np.allclose(m, m.T, rtol=1e-10, atol=1e-12 * max(1.0, float(np.abs(m).max()))):
        raise ValueError("matrix is not symmetric")
    ev = scipy.linalg.eigvalsh(m, check_finite=True)
    return float(ev[-1]), float(ev[0])
