r"""Fits to divergence brackets, with bootstrap intervals over independently trained networks.

A learning-rate sweep does not measure the largest stable rate :math:`\alpha_{\max}(B)`; it brackets it
between the largest rate that trained and the smallest that diverged. The functions here fit the scaling
laws of :mod:`hessian_lib.laws.scaling` through such brackets (log-log slopes, the saturating SGD law, a
power law of fixed exponent) and give intervals by a two-stage bootstrap: networks (the clusters) first,
then a value inside each bracket. With few networks the percentile interval is widened by
:func:`cluster_expansion`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
from numpy.typing import ArrayLike

from hessian_lib.laws.scaling import _positive

__all__ = [
    "Interval",
    "bootstrap_slope",
    "bootstrap_ratio_slope",
    "cluster_expansion",
    "widen",
    "fit_saturating_brackets",
    "fit_power_brackets",
]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval ``[low, high]`` at ``level`` (e.g. 0.95)."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def __post_init__(self) -> None:
        for name in ("estimate", "low", "high", "level"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def contains(self, value: float) -> bool:
        """``low <= value <= high`` (ends included)."""
        return bool(self.low <= value <= self.high)

    def excludes(self, value: float) -> bool:
        """The interval lies strictly on one side of ``value``."""
        return not self.contains(value)

    def __str__(self) -> str:
        return f"{self.estimate:.3g} [{self.low:.3g}, {self.high:.3g}]"


def _brackets(batch_sizes: ArrayLike, lower: ArrayLike, upper: ArrayLike,
              level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch sizes [n] and log bracket ends [seeds, n], checked: finite, 0 < lower < upper; 0 < level < 1."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    b = _positive("batch_sizes", batch_sizes).reshape(-1)
    lo = np.atleast_2d(np.asarray(lower, dtype=float))
    hi = np.atleast_2d(np.asarray(upper, dtype=float))
    if lo.shape != hi.shape or lo.shape[1] != b.size:
        raise ValueError(f"lower and upper must be [n] or [seeds, n] with n = {b.size} batch sizes, "
                         f"got {lo.shape} and {hi.shape}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))) or np.any(lo <= 0) or np.any(hi <= lo):
        raise ValueError("every bracket needs finite ends with 0 < lower < upper (drop unbracketed batch sizes)")
    if np.unique(b).size < 2:
        raise ValueError("need at least two distinct batch sizes")
    return b, np.log(lo), np.log(hi)


def _replicate_rows(rows: int, n_boot: int, rng: np.random.Generator, groups: ArrayLike | None = None) -> np.ndarray:
    """[n_boot, rows] row indices of a (two-stage) bootstrap.

    Without ``groups``: the rows resampled with replacement (none when there is one row). With
    ``groups`` [rows] (e.g. the network each sweep started from; every group the same size):
    the groups resampled with replacement first, then the rows within each group drawn.
    """
    if groups is None:
        return rng.integers(0, rows, size=(n_boot, rows)) if rows > 1 else np.zeros((n_boot, 1), dtype=int)
    labels = np.asarray(groups).reshape(-1)
    if labels.size != rows:
        raise ValueError(f"groups must give one label per row ({rows}), got {labels.size}")
    names = np.unique(labels)
    members = [np.flatnonzero(labels == g) for g in names]
    size = members[0].size
    if any(m.size != size for m in members):
        raise ValueError("every group must hold the same number of rows")
    members = np.stack(members)  # [G, m]
    chosen = rng.integers(0, names.size, size=(n_boot, names.size)) if names.size > 1 else \
        np.zeros((n_boot, 1), dtype=int)
    within = rng.integers(0, size, size=chosen.shape + (size,)) if size > 1 else \
        np.zeros(chosen.shape + (1,), dtype=int)
    return members[chosen[:, :, None], within].reshape(n_boot, -1)


def _bracket_replicates(log_lo: np.ndarray, log_hi: np.ndarray, n_boot: int, seed: int,
                        groups: ArrayLike | None = None) -> np.ndarray:
    """[n_boot, seeds, n] log learning rates: sweeps resampled (:func:`_replicate_rows`, by ``groups`` first when
    given), each value uniform in log inside its bracket."""
    rng = np.random.default_rng(seed)
    rows = _replicate_rows(log_lo.shape[0], n_boot, rng, groups)
    u = rng.random((n_boot,) + log_lo.shape)
    return log_lo[rows] + u * (log_hi - log_lo)[rows]


def _ols_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes of y [..., m] against x [m] along the last axis."""
    dx = x - x.mean()
    return (y - y.mean(axis=-1, keepdims=True)) @ dx / float(dx @ dx)


def cluster_expansion(units: int) -> float:
    r"""The factor :math:`\sqrt{K/(K-1)}` by which a bootstrap interval that resamples K units (networks, sweeps)
    is widened about its estimate; 1 for one unit.

    Resampling K units with replacement gives a mean a variance :math:`(K-1)/K` times the unbiased
    :math:`s^2/K`, so with few units a percentile interval is too narrow: by a factor 0.82 for K = 3.

    >>> round(cluster_expansion(3), 4), cluster_expansion(1)
    (1.2247, 1.0)
    """
    return float(np.sqrt(units / (units - 1))) if units > 1 else 1.0


def widen(estimate: float, low: float, high: float, factor: float) -> tuple[float, float]:
    """``(low, high)`` moved away from ``estimate`` by ``factor`` (>= 1) on each side."""
    return estimate - factor * (estimate - low), estimate + factor * (high - estimate)


def _units(rows: int, groups: ArrayLike | None) -> int:
    """How many units the first stage of the bootstrap resamples: the groups, or the rows without groups."""
    return rows if groups is None else int(np.unique(np.asarray(groups)).size)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_slope(
    batch_sizes: ArrayLike,
    lower: ArrayLike,
    upper: ArrayLike,
    *,
    n_boot: int = 4000,
    level: float = 0.95,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> Interval:
    r"""Log-log slope of :math:`\alpha_{\max}` against B, from bisection brackets, with a bootstrap interval.

    ``batch_sizes`` [n]; ``lower``/``upper`` [n] or [seeds, n]: the final bracket of each sweep
    (largest stable, smallest diverged learning rate). The estimate is the least-squares slope
    through the geometric midpoints (all seeds pooled). The interval is the percentile interval
    of ``n_boot`` replicates, each of which resamples the seeds with replacement (when there are
    several) and treats every :math:`\alpha_{\max}` as uniform in :math:`\log\alpha` inside its
    bracket. With one seed, the interval expresses the bisection's resolution only. ``groups``
    [seeds]: the network each sweep started from; the bootstrap then resamples networks first and
    the sweeps within each, so the interval carries the variation between networks.
    """
    b, log_lo, log_hi = _brackets(batch_sizes, lower, upper, level)
    seeds = log_lo.shape[0]
    x = np.tile(np.log(b), seeds)
    estimate = float(_ols_slopes(x, (0.5 * (log_lo + log_hi)).reshape(-1)))
    replicates = _bracket_replicates(log_lo, log_hi, n_boot, seed, groups).reshape(n_boot, -1)
    low, high = widen(estimate, *_percentiles(_ols_slopes(x, replicates), level),
                      cluster_expansion(_units(seeds, groups)))
    return Interval(estimate, low, high, level)


def bootstrap_ratio_slope(
    batch_sizes: ArrayLike,
    lower: ArrayLike,
    upper: ArrayLike,
    lambdas: ArrayLike,
    groups: ArrayLike,
    *,
    numerator: float = 2.0,
    n_boot: int = 4000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[Interval, float]:
    r"""Log-log slope against B of measured over predicted largest stable learning rate, with a bootstrap interval.

    The prediction of network k at B is ``numerator`` :math:`/\bar\lambda_k(B)`, the mean over its
    draws of :math:`\lambda_{\max}(H_B)`; the measured value of a sweep is the geometric middle of its
    final bracket. ``lower``/``upper`` [S, n]: the brackets of S sweeps; ``groups`` [S]: the network
    of each sweep, an index into ``lambdas`` [K, n, d] (draws of :math:`\lambda_{\max}`, NaN padding
    allowed). The estimate is the least-squares slope of :math:`\log(\text{measured}/\text{predicted})`
    on :math:`\log B` over every (sweep, B); each bootstrap replicate resamples the networks, the
    sweeps within each, the draws of :math:`\lambda_{\max}` within each network and B, and takes every
    :math:`\alpha_{\max}` uniform in :math:`\log\alpha` inside its bracket. A flat ratio (slope 0) means
    the prediction has the right dependence on B, whatever its level. Returns the slope's
    :class:`Interval` and the level: the median ratio over every (sweep, B).
    """
    b, log_lo, log_hi = _brackets(batch_sizes, lower, upper, level)
    lam = np.asarray(lambdas, dtype=float)
    labels = np.asarray(groups, dtype=int).reshape(-1)
    if lam.ndim != 3 or lam.shape[1] != b.size:
        raise ValueError(f"lambdas must be [K, n, draws] with n = {b.size}, got {lam.shape}")
    if labels.size != log_lo.shape[0] or labels.min() < 0 or labels.max() >= lam.shape[0]:
        raise ValueError("groups must give, for every sweep, the index of its network in lambdas")
    if np.any(~(np.nanmin(lam, axis=2) > 0)):
        raise ValueError("every (network, B) needs at least one positive lambda_max")
    log_pred = np.log(numerator) - np.log(np.nanmean(lam, axis=2))  # [K, n]
    x = np.log(b)
    log_ratio = 0.5 * (log_lo + log_hi) - log_pred[labels]  # [S, n]
    estimate = float(_ols_slopes(np.tile(x, labels.size), log_ratio.reshape(-1)))
    rng = np.random.default_rng(seed)
    rows = _replicate_rows(labels.size, n_boot, rng, labels)  # [n_boot, S]
    u = rng.random((n_boot, labels.size, b.size))
    log_alpha = log_lo[rows] + u * (log_hi - log_lo)[rows]
    boot_pred = np.empty((n_boot, lam.shape[0], b.size))
    for k in range(lam.shape[0]):
        for i in range(b.size):
            draws = lam[k, i][np.isfinite(lam[k, i])]
            pick = rng.integers(0, draws.size, size=(n_boot, draws.size))
            boot_pred[:, k, i] = np.log(numerator) - np.log(draws[pick].mean(axis=1))
    pred_rows = boot_pred[np.arange(n_boot)[:, None], labels[rows]]  # [n_boot, S, n]
    slopes = _ols_slopes(np.tile(x, labels.size), (log_alpha - pred_rows).reshape(n_boot, -1))
    low, high = widen(estimate, *_percentiles(slopes, level), cluster_expansion(_units(labels.size, labels)))
    return Interval(estimate, low, high, level), float(np.exp(np.median(log_ratio)))


def _saturating_profile(b: np.ndarray, y: np.ndarray, log_b_star: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each candidate log B* [g]: the best log alpha_inf and the residual sum of squares, for y [..., m]."""
    shape = -np.log1p(np.exp(log_b_star)[:, None] / b[None, :])  # [g, m]
    intercept = (y[..., None, :] - shape).mean(axis=-1)  # [..., g]
    resid = y[..., None, :] - shape - intercept[..., None]
    return intercept, (resid**2).sum(axis=-1)


def _saturating_point(b: np.ndarray, y: np.ndarray, bounds: tuple[float, float]) -> tuple[float, float]:
    grid = np.linspace(*bounds, 801)
    _, sse = _saturating_profile(b, y, grid)
    k = int(np.argmin(sse))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    best = scipy.optimize.minimize_scalar(lambda u: float(_saturating_profile(b, y, np.array([u]))[1][0]),
                                          bounds=(lo, hi), method="bounded", options={"xatol": 1e-8})
    u = float(best.x) if best.fun <= sse[k] else float(grid[k])
    intercept, _ = _saturating_profile(b, y, np.array([u]))
    return float(intercept[0]), u


def _through_brackets(shape: np.ndarray, log_lo: np.ndarray, log_hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For curves ``c + shape`` ([g, n] shapes, bracket ends [n]): the gap ``max(lo - shape) - min(hi - shape)``
    (<= 0: some intercept c puts the curve inside every bracket) and the minimax intercept, each [g]."""
    top = (log_lo - shape).max(axis=-1)
    bottom = (log_hi - shape).min(axis=-1)
    return top - bottom, 0.5 * (top + bottom)


def _inside(curve: np.ndarray, log_lo: np.ndarray, log_hi: np.ndarray) -> np.ndarray:
    """Where ``curve`` [n] lies inside the brackets ``[exp(log_lo), exp(log_hi)]`` (ends included, up to rounding)."""
    return (np.exp(log_lo) <= curve * (1 + 1e-12)) & (curve <= np.exp(log_hi) * (1 + 1e-12))


def fit_saturating_brackets(
    batch_sizes: ArrayLike,
    lower: ArrayLike,
    upper: ArrayLike,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    range_factor: float = 1000.0,
    groups: ArrayLike | None = None,
) -> dict[str, object]:
    r"""Fit :math:`\alpha_{\max}(B) = \alpha_\infty / (1 + B^*/B)` to bisection brackets, with bootstrap intervals.

    Least squares in :math:`\log\alpha` through the geometric bracket midpoints (seeds pooled);
    :math:`\log\alpha_\infty` is solved in closed form for every :math:`B^*`, and :math:`\log B^*`
    is searched on ``[min B / range_factor, max B * range_factor]``, so the fit always returns.
    Intervals: percentiles of refits to the replicates of :func:`bootstrap_slope`'s scheme (with ``groups``).

    Returns ``lr_inf`` and ``critical_batch`` (:class:`Interval` each); ``b_star_at_bound``: the
    point estimate of :math:`B^*` sits at an end of the search range (all points in the linear
    regime, or all saturated: :math:`B^*` not identified); ``fitted`` [n]: the least-squares law
    at each B; ``log_residual_rms``.

    Whether the law can pass through the brackets is a separate question from the best fit (a
    least-squares curve may graze past a bracket that another law of the family goes through):
    ``through`` [n] is the law of the family whose largest miss (in :math:`\log\alpha`) over the
    brackets (the union of the seeds' brackets at each B) is smallest, ``passes`` [n] bool says
    where it lies inside the bracket (all True: some saturating law passes through every
    bracket), and ``consistent_critical_batch`` is the ``(low, high)`` range of :math:`B^*` for
    which one does (``nan`` when none does; ends at the search range mean unbounded).
    """
    if not range_factor > 1:
        raise ValueError(f"range_factor must exceed 1, got {range_factor}")
    b, log_lo, log_hi = _brackets(batch_sizes, lower, upper, level)
    seeds = log_lo.shape[0]
    if b.size < 3:
        raise ValueError("need at least 3 batch sizes to fit 2 parameters")
    bounds = (float(np.log(b.min() / range_factor)), float(np.log(b.max() * range_factor)))
    bb = np.tile(b, seeds)
    y = (0.5 * (log_lo + log_hi)).reshape(-1)
    log_inf, log_b_star = _saturating_point(bb, y, bounds)
    grid = np.linspace(*bounds, 601)
    replicates = _bracket_replicates(log_lo, log_hi, n_boot, seed, groups).reshape(n_boot, -1)
    rep_inf = np.empty(n_boot)
    rep_star = np.empty(n_boot)
    for start in range(0, n_boot, 200):
        intercept, sse = _saturating_profile(bb, replicates[start:start + 200], grid)
        k = np.argmin(sse, axis=-1)
        rep_star[start:start + 200] = grid[k]
        rep_inf[start:start + 200] = intercept[np.arange(k.size), k]
    fitted = np.exp(log_inf - np.log1p(np.exp(log_b_star) / b))
    resid = y - np.tile(np.log(fitted), seeds)
    expand = cluster_expansion(_units(seeds, groups))
    step = grid[1] - grid[0]
    # the law that misses the brackets least (minimax in log), on a fine grid of B* refined around its best point
    lo_env, hi_env = log_lo.min(axis=0), log_hi.max(axis=0)
    fine = np.linspace(*bounds, 4001)
    shapes = -np.log1p(np.exp(fine)[:, None] / b[None, :])
    gap, intercept = _through_brackets(shapes, lo_env, hi_env)
    k = int(np.argmin(gap))
    best = scipy.optimize.minimize_scalar(
        lambda u: float(_through_brackets(-np.log1p(np.exp(u) / b)[None, :], lo_env, hi_env)[0][0]),
        bounds=(fine[max(k - 1, 0)], fine[min(k + 1, fine.size - 1)]), method="bounded", options={"xatol": 1e-10})
    u = float(best.x) if best.fun < gap[k] else float(fine[k])
    shape = -np.log1p(np.exp(u) / b)
    _, c = _through_brackets(shape[None, :], lo_env, hi_env)
    through = np.exp(c[0] + shape)
    feasible = fine[gap <= 0]
    if feasible.size:
        consistent = (float(np.exp(feasible.min())), float(np.exp(feasible.max())))
    else:
        consistent = (math.nan, math.nan)
    inf_low, inf_high = np.exp(widen(log_inf, *_percentiles(rep_inf, level), expand))
    star_low, star_high = np.exp(widen(log_b_star, *_percentiles(rep_star, level), expand))
    return {
        "lr_inf": Interval(float(np.exp(log_inf)), inf_low, inf_high, level),
        "critical_batch": Interval(float(np.exp(log_b_star)), star_low, star_high, level),
        "b_star_at_bound": bool(min(log_b_star - bounds[0], bounds[1] - log_b_star) < step),
        "fitted": fitted,
        "through": through,
        "passes": _inside(through, lo_env, hi_env),
        "consistent_critical_batch": consistent,
        "log_residual_rms": float(np.sqrt(np.mean(resid**2))),
    }


def fit_power_brackets(
    batch_sizes: ArrayLike,
    lower: ArrayLike,
    upper: ArrayLike,
    exponent: float = 0.5,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> dict[str, object]:
    r"""Fit :math:`\alpha_{\max}(B) = c\,B^{p}` with the exponent fixed (the square-root law: ``p = 0.5``).

    ``log c`` is the mean of :math:`\log\alpha - p\log B` over the geometric bracket midpoints
    (seeds pooled). Returns ``coefficient`` (:class:`Interval`, bootstrap as in
    :func:`bootstrap_slope`), ``fitted`` [n], ``log_residual_rms``, and, as in
    :func:`fit_saturating_brackets`, ``through`` [n] (the law of this exponent that misses the
    brackets least) with ``passes`` [n] (where it lies inside the bracket).
    """
    b, log_lo, log_hi = _brackets(batch_sizes, lower, upper, level)
    seeds = log_lo.shape[0]
    shift = np.tile(exponent * np.log(b), seeds)
    y = (0.5 * (log_lo + log_hi)).reshape(-1)
    log_c = float(np.mean(y - shift))
    replicates = _bracket_replicates(log_lo, log_hi, n_boot, seed, groups).reshape(n_boot, -1)
    low, high = widen(log_c, *_percentiles((replicates - shift).mean(axis=-1), level),
                      cluster_expansion(_units(seeds, groups)))
    fitted = np.exp(log_c + exponent * np.log(b))
    lo_env, hi_env = log_lo.min(axis=0), log_hi.max(axis=0)
    _, c = _through_brackets(exponent * np.log(b)[None, :], lo_env, hi_env)
    through = np.exp(c[0] + exponent * np.log(b))
    return {
        "coefficient": Interval(float(np.exp(log_c)), float(np.exp(low)), float(np.exp(high)), level),
        "fitted": fitted,
        "through": through,
        "passes": _inside(through, lo_env, hi_env),
        "log_residual_rms": float(np.sqrt(np.mean((y - log_c - shift) ** 2))),
    }
