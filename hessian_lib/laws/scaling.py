r"""Maximal learning rates as a function of batch size, and fits to measured ones.

On a local quadratic, gradient descent multiplies eigencomponent :math:`i` by
:math:`1 - \alpha\lambda_i`, so it is stable iff :math:`\alpha < 2/\lambda_{\max}`.
With an additive batch shift :math:`\lambda_1'(B) = \lambda_1 + \kappa P/B`:

.. math:: \alpha_{\max}^{\mathrm{SGD}}(B) = \frac{2/\lambda_1}{1 + B^*/B}, \qquad
          B^* = \frac{\kappa P}{\lambda_1}, \qquad
          \alpha_{\max}^{\mathrm{Adam}}(B) = \frac{2}{\sqrt{\lambda_1 + \kappa P/B}} .

SGD is linear in B for :math:`B \ll B^*` and saturates at :math:`2/\lambda_1`;
Adam grows as :math:`\sqrt B`. With the pure spiked-Wigner law there is no
linear regime: below the BBP threshold the top eigenvalue is the edge
:math:`2s \propto B^{-1/2}` (:math:`\alpha_{\max} \propto \sqrt B`), above it
:math:`\alpha_{\max}` changes by at most a factor 2 (see :func:`sgd_max_lr_wigner`).
Throughout, ``kappa_p`` stands for the product :math:`\kappa P`.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import scipy.optimize
from numpy.typing import ArrayLike

from hessian_lib.laws.rmt import mp_spiked_top, noise_scale, wigner_extremes

__all__ = [
    "FitError",
    "sgd_max_lr",
    "critical_batch_size",
    "sgd_max_lr_additive",
    "adam_max_lr_additive",
    "sgd_max_lr_wigner",
    "sgd_max_lr_mp",
    "linear_scaled_lr",
    "sqrt_scaled_lr",
    "loglog_slope",
    "weighted_least_squares",
    "fit_inverse_batch_shift",
    "fit_saturating_lr",
]


class FitError(RuntimeError):
    """A fit that did not converge or whose parameters are not identifiable from the data."""


def _positive(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return arr


def _nonneg(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return arr


# ---------------------------------------------------------------------------
# laws
# ---------------------------------------------------------------------------


def sgd_max_lr(lambda_max: ArrayLike) -> np.ndarray:
    r"""Stability limit :math:`2/\lambda_{\max}` of gradient descent on a quadratic.

    Raises ``ValueError`` for :math:`\lambda_{\max} \le 0` (no finite limit).

    >>> sgd_max_lr([10.0, 20.0]).tolist()
    [0.2, 0.1]
    """
    return 2.0 / _positive("lambda_max", lambda_max)


def critical_batch_size(lambda1: float, kappa_p: float) -> float:
    r"""Critical batch size :math:`B^* = \kappa P / \lambda_1` (samples).

    >>> critical_batch_size(lambda1=5.0, kappa_p=1000.0)
    200.0
    """
    lam = float(_positive("lambda1", lambda1))
    kp = float(_nonneg("kappa_p", kappa_p))
    return kp / lam


def sgd_max_lr_additive(batch_size: ArrayLike, lambda1: float, kappa_p: float) -> np.ndarray:
    r""":math:`\alpha_{\max}(B) = (2/\lambda_1)/(1 + B^*/B) = 2/(\lambda_1 + \kappa P/B)`.

    ``batch_size`` any shape; returns the same shape (units 1/eigenvalue). At :math:`B = B^*`
    the rate is half its large-batch limit :math:`2/\lambda_1`:

    >>> sgd_max_lr_additive([200, 1e12], lambda1=5.0, kappa_p=1000.0).round(6).tolist()
    [0.2, 0.4]
    """
    b = _positive("batch_size", batch_size)
    lam = float(_positive("lambda1", lambda1))
    b_star = critical_batch_size(lam, kappa_p)
    return (2.0 / lam) / (1.0 + b_star / b)


def adam_max_lr_additive(batch_size: ArrayLike, lambda1: float, kappa_p: float) -> np.ndarray:
    r"""Square-root rule :math:`\alpha_{\max}(B) = 2/\sqrt{\lambda_1 + \kappa P/B}`.

    Adam as :math:`H^{-1/2}` preconditioning: :math:`\propto \sqrt B` for
    :math:`B \ll B^*`, saturating at :math:`2/\sqrt{\lambda_1}`.
    """
    b = _positive("batch_size", batch_size)
    lam = float(_positive("lambda1", lambda1))
    kp = float(_nonneg("kappa_p", kappa_p))
    return 2.0 / np.sqrt(lam + kp / b)


def sgd_max_lr_wigner(
    batch_size: ArrayLike,
    theta: float | Sequence[float],
    dim: int,
    sigma2: float,
    n_data: float | None = None,
) -> np.ndarray:
    r""":math:`2/\lambda_{\max}(B)` with :math:`\lambda_{\max}` from the spiked-Wigner law.

    :math:`s(B) = \sqrt{P\sigma^2(1/B - 1/N)}`; :math:`\lambda_{\max} = \theta + s^2/\theta`
    for :math:`\theta > s`, else :math:`2s`. ``theta`` may be one spike or a list.
    Below threshold this grows like :math:`\sqrt B`; above it, it lies in
    :math:`[1/\theta, 2/\theta]`, i.e. changes by at most a factor 2.
    """
    s = noise_scale(dim, sigma2, batch_size, n_data)
    top, _ = wigner_extremes(np.atleast_1d(np.asarray(theta, dtype=float)), s)
    return sgd_max_lr(top)


def sgd_max_lr_mp(batch_size: ArrayLike, spike: float, dim: int, sigma2: float = 1.0) -> np.ndarray:
    r""":math:`2/\lambda_1(B)` with the spiked Marchenko-Pastur top eigenvalue at :math:`q = P/B`."""
    b = _positive("batch_size", batch_size)
    if isinstance(dim, bool) or int(dim) != dim or dim <= 0:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    return sgd_max_lr(mp_spiked_top(spike, dim / b, sigma2))


def linear_scaled_lr(base_lr: float, base_batch: float, batch_size: ArrayLike) -> np.ndarray:
    r"""Linear rule :math:`\alpha(B) = \alpha_0 B / B_0` (e.g. SGD: 0.05 @ 128 -> 0.1 @ 256)."""
    a0 = float(_positive("base_lr", base_lr))
    b0 = float(_positive("base_batch", base_batch))
    return a0 * _positive("batch_size", batch_size) / b0


def sqrt_scaled_lr(base_lr: float, base_batch: float, batch_size: ArrayLike) -> np.ndarray:
    r"""Square-root rule :math:`\alpha(B) = \alpha_0 \sqrt{B/B_0}` (e.g. Adam: 4e-4 @ 128 -> 5.66e-4 @ 256)."""
    a0 = float(_positive("base_lr", base_lr))
    b0 = float(_positive("base_batch", base_batch))
    return a0 * np.sqrt(_positive("batch_size", batch_size) / b0)


# ---------------------------------------------------------------------------
# fits
# ---------------------------------------------------------------------------


def loglog_slope(x: ArrayLike, y: ArrayLike) -> tuple[float, float]:
    r"""Least-squares slope of :math:`\log y` against :math:`\log x`, and its standard error.

    ``x``, ``y``: 1-D, same length >= 2, all > 0. The standard error uses the
    residual variance with :math:`n - 2` degrees of freedom (``nan`` for n = 2).

    >>> slope, stderr = loglog_slope([1, 2, 4, 8], [3, 6, 12, 24])  # y = 3 x
    >>> round(slope, 12), round(stderr, 12)
    (1.0, 0.0)
    """
    x = _positive("x", x).reshape(-1)
    y = _positive("y", y).reshape(-1)
    if x.size != y.size:
        raise ValueError(f"x and y differ in length: {x.size} vs {y.size}")
    if x.size < 2:
        raise ValueError("need at least 2 points")
    lx, ly = np.log(x), np.log(y)
    dx = lx - lx.mean()
    sxx = float(dx @ dx)
    if sxx == 0.0:
        raise ValueError("x values are all equal")
    slope = float(dx @ (ly - ly.mean())) / sxx
    if x.size == 2:
        return slope, float("nan")
    resid = ly - ly.mean() - slope * dx
    stderr = float(np.sqrt((resid @ resid) / (x.size - 2) / sxx))
    return slope, stderr


def weighted_least_squares(design: ArrayLike, values: ArrayLike, weights: ArrayLike | None = None) -> dict:
    r"""Weighted least squares :math:`\min_c \sum_i w_i (v_i - (Xc)_i)^2`, with the covariance of :math:`c`.

    ``design``: ``[n, k]`` (:math:`X`, n > k, full column rank); ``values``: ``[n]``;
    ``weights``: ``[n]`` inverse variances :math:`w_i = 1/\sigma_i^2` (default all 1).
    Returns ``coef`` [k]; ``cov_unscaled`` [k, k] :math:`= (X^\top W X)^{-1}`, the covariance
    when the :math:`\sigma_i` are the true standard errors; ``chi2_red``
    :math:`= \sum_i w_i r_i^2/(n - k)`; ``cov`` [k, k] :math:`=` ``cov_unscaled * chi2_red``, the
    covariance when only the relative weights are known; ``residuals`` [n] :math:`v - Xc`; ``dof``.
    """
    x = np.asarray(design, dtype=float)
    v = np.asarray(values, dtype=float).reshape(-1)
    if x.ndim != 2 or x.shape[0] != v.size:
        raise ValueError(f"design must be [n, k] with n = len(values) = {v.size}, got shape {x.shape}")
    n, k = x.shape
    if n <= k:
        raise ValueError(f"need more points than parameters, got {n} points for {k} parameters")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(v))):
        raise ValueError("design and values must be finite")
    w = np.ones(n) if weights is None else _positive("weights", weights).reshape(-1)
    if w.size != n:
        raise ValueError("weights must have the length of values")
    sw = np.sqrt(w)
    coef, _, rank, _ = np.linalg.lstsq(x * sw[:, None], v * sw, rcond=None)
    if rank < k:
        raise ValueError("the design matrix is rank-deficient: the parameters are not identifiable")
    resid = v - x @ coef
    chi2_red = float((w * resid**2).sum() / (n - k))
    cov_unscaled = np.linalg.inv(x.T @ (x * w[:, None]))
    return {"coef": coef, "cov_unscaled": cov_unscaled, "cov": cov_unscaled * chi2_red, "chi2_red": chi2_red,
            "residuals": resid, "dof": n - k}


def fit_inverse_batch_shift(
    batch_sizes: ArrayLike,
    values: ArrayLike,
    n_data: float | None = None,
    weights: ArrayLike | None = None,
) -> dict[str, float]:
    r"""Weighted least squares :math:`v \approx a + b\,(1/B - 1/N)`.

    ``batch_sizes``, ``values``: 1-D of equal length n >= 3 (at least two distinct
    B). ``n_data`` N (``None``: infinite). ``weights``: relative inverse-variance
    weights :math:`w_i \propto 1/\sigma_i^2` (default all 1). Standard errors
    ``a_err``, ``b_err`` are scaled by the reduced :math:`\chi^2`, so only the
    relative weights matter. ``a`` is the large-batch (B = N) value, ``b`` the
    slope in :math:`1/B - 1/N`. Returns a dict with ``a, b, a_err, b_err, cov_ab,
    chi2_red, n``.
    """
    b = _positive("batch_sizes", batch_sizes).reshape(-1)
    v = np.asarray(values, dtype=float).reshape(-1)
    if v.size != b.size:
        raise ValueError(f"batch_sizes and values differ in length: {b.size} vs {v.size}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite")
    if b.size < 3:
        raise ValueError("need at least 3 points to fit 2 parameters with error bars")
    if n_data is None:
        x = 1.0 / b
    else:
        n = float(_positive("n_data", n_data))
        if np.any(b > n):
            raise ValueError(f"batch sizes must not exceed n_data={n_data}")
        x = 1.0 / b - 1.0 / n
    if np.unique(x).size < 2:
        raise ValueError("need at least two distinct batch sizes")
    w = np.ones_like(x) if weights is None else _positive("weights", weights).reshape(-1)
    if w.size != x.size:
        raise ValueError("weights must have the length of batch_sizes")
    fit = weighted_least_squares(np.stack([np.ones_like(x), x], axis=1), v, w)
    coef, cov = fit["coef"], fit["cov"]
    return {
        "a": float(coef[0]),
        "b": float(coef[1]),
        "a_err": float(np.sqrt(cov[0, 0])),
        "b_err": float(np.sqrt(cov[1, 1])),
        "cov_ab": float(cov[0, 1]),
        "chi2_red": fit["chi2_red"],
        "n": int(x.size),
    }


def _saturating_log(b: np.ndarray, log_lr_max: float, log_b_star: float) -> np.ndarray:
    return log_lr_max - np.log1p(np.exp(log_b_star) / b)


def fit_saturating_lr(
    batch_sizes: ArrayLike, lrs: ArrayLike, *, range_factor: float | None = 100.0
) -> dict[str, float]:
    r"""Fit :math:`\alpha(B) = \alpha_{\max} / (1 + B^*/B)` by least squares on :math:`\log\alpha`.

    ``batch_sizes``, ``lrs``: 1-D, equal length n >= 3, all > 0. Parameters are
    fitted as :math:`(\log\alpha_{\max}, \log B^*)`, so both stay positive; the
    start comes from the linearisation
    :math:`1/\alpha = 1/\alpha_{\max} + (B^*/\alpha_{\max})/B`.
    Returns a dict with ``lr_max, critical_batch, lr_max_err, critical_batch_err``
    (delta method from the log-parameter covariance, scaled by the residual
    variance; ``inf`` when it cannot be estimated), ``log_residual_rms`` and
    ``n``. If :math:`B^*` lies far outside the sampled range the error bars are
    large: read them before the point values. Raises :class:`FitError` when the
    optimiser fails, returns non-finite values, or (unless ``range_factor`` is
    ``None``) puts :math:`B^*` more than ``range_factor`` times outside the
    sampled batch sizes: data all in the linear regime do not determine
    :math:`\alpha_{\max}`, data all saturated do not determine :math:`B^*`.
    """
    b = _positive("batch_sizes", batch_sizes).reshape(-1)
    lr = _positive("lrs", lrs).reshape(-1)
    if b.size != lr.size:
        raise ValueError(f"batch_sizes and lrs differ in length: {b.size} vs {lr.size}")
    if b.size < 3:
        raise ValueError("need at least 3 points to fit 2 parameters with error bars")
    if np.unique(b).size < 2:
        raise ValueError("need at least two distinct batch sizes")

    # starting point from the linear model 1/lr = c0 + c1 / B
    design = np.stack([np.ones_like(b), 1.0 / b], axis=1)
    (c0, c1), *_ = np.linalg.lstsq(design, 1.0 / lr, rcond=None)
    if c0 > 0 and c1 > 0:
        p0 = [np.log(1.0 / c0), np.log(c1 / c0)]
    else:
        p0 = [np.log(lr.max()), np.log(np.median(b))]

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.optimize.OptimizeWarning)
            popt, pcov = scipy.optimize.curve_fit(
                _saturating_log, b, np.log(lr), p0=p0, maxfev=10_000
            )
    except (RuntimeError, ValueError) as exc:
        raise FitError(f"saturating learning-rate fit failed: {exc}") from exc
    if not np.all(np.isfinite(popt)):
        raise FitError(f"saturating learning-rate fit returned non-finite parameters {popt}")
    lr_max, b_star = float(np.exp(popt[0])), float(np.exp(popt[1]))
    if range_factor is not None and not b.min() / range_factor <= b_star <= b.max() * range_factor:
        raise FitError(
            f"critical batch size {b_star:.3g} lies far outside the sampled range "
            f"[{b.min():.3g}, {b.max():.3g}]: the data are all in the linear or all in the "
            "saturated regime, so (lr_max, B*) are not identifiable; widen the batch-size grid"
        )
    diag = np.diag(pcov)
    sd = np.sqrt(diag) if np.all(np.isfinite(diag)) and np.all(diag >= 0) else np.full(2, np.inf)
    resid = np.log(lr) - _saturating_log(b, *popt)
    return {
        "lr_max": lr_max,
        "critical_batch": b_star,
        "lr_max_err": lr_max * float(sd[0]),
        "critical_batch_err": b_star * float(sd[1]),
        "log_residual_rms": float(np.sqrt(np.mean(resid**2))),
        "n": int(b.size),
    }
