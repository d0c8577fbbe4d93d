"""Claim 6: the SLQ learner (Learner chapter)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hessian_lib.verdicts._words import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE

#: Claim 6 holds when the Polyak learner's mean final test accuracy is at most this many percentage points
#: below that of the best validated SGD (inclusive; above it is fine) ...
CLAIM6_GAP_PP = 2.0
#: ... and the lower end of the interval of the seed-paired difference (learner minus SGD, points) lies above
#: minus this many points (strictly). It does not hold when the whole interval lies below ``-CLAIM6_GAP_PP``.
CLAIM6_FLOOR_PP = 4.0
#: Confidence level of that interval (Student's t on the paired differences, one per seed).
CLAIM6_LEVEL = 0.95


def stable_lr_range(lrs: Any, diverged: Any) -> tuple[float, float] | None:
    """``(lowest, highest)`` grid learning rate none of whose runs diverged; ``None`` if every one diverged.

    ``lrs`` and ``diverged`` are parallel sequences, one entry per run (a learning rate may repeat over seeds).
    """
    lrs, diverged = [float(v) for v in lrs], [bool(d) for d in diverged]
    if len(lrs) != len(diverged):
        raise ValueError(f"{len(lrs)} learning rates but {len(diverged)} divergence flags")
    bad = {lr for lr, d in zip(lrs, diverged) if d}
    stable = sorted(set(lrs) - bad)
    return (stable[0], stable[-1]) if stable else None


def t_quantile(pairs: int, level: float = CLAIM6_LEVEL) -> float:
    """Student's t quantile of a two-sided ``level`` interval over ``pairs`` pairs (``pairs - 1`` degrees of freedom).

    >>> round(t_quantile(2), 2), round(t_quantile(3), 2)
    (12.71, 4.3)
    """
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, pairs - 1))


def paired_interval(differences: Any, level: float = CLAIM6_LEVEL) -> tuple[float, float, float]:
    """``(mean, low, high)`` of seed-paired differences: Student's t interval at ``level`` on ``n - 1`` degrees
    of freedom (``n`` >= 2 pairs; with 2 pairs the t quantile is 12.7, so the interval is wide unless the pairs
    agree closely). A NaN difference gives a NaN interval.

    >>> m, lo, hi = paired_interval([-1.0, -1.0, -1.0])
    >>> (m, lo, hi)
    (-1.0, -1.0, -1.0)
    """
    d = np.asarray(differences, dtype=float).reshape(-1)
    if d.size < 2:
        raise ValueError(f"a paired interval needs at least 2 pairs (seeds), got {d.size}")
    if not np.all(np.isfinite(d)):
        return math.nan, math.nan, math.nan
    mean = float(d.mean())
    half = t_quantile(d.size, level) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return mean, mean - half, mean + half


def claim6_verdict(learner_acc: Any, sgd_acc: Any) -> str:
    """Claim 6 from the Polyak learner's and the best validated SGD's final test accuracies (fractions),
    one per seed, paired by seed (same initialisation and data order).

    With :math:`d_s` the difference in points and :func:`paired_interval` ``(low, high)``: :data:`HOLDS`
    when the mean accuracy is at most :data:`CLAIM6_GAP_PP` points below SGD's (mean difference at least -2) and
    ``low`` > -:data:`CLAIM6_FLOOR_PP`; :data:`DOES_NOT_HOLD` when ``high`` < -:data:`CLAIM6_GAP_PP`;
    :data:`INCONCLUSIVE` otherwise (a NaN accuracy, from a run that diverged, makes the whole verdict one
    that does not hold: a learner that diverges is not competitive). Whether its rates lie inside the grid's
    :func:`stable_lr_range` is reported beside the word, not part of it.
    """
    a, b = np.asarray(learner_acc, dtype=float).reshape(-1), np.asarray(sgd_acc, dtype=float).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} learner accuracies but {b.size} SGD accuracies: they are paired by seed")
    if np.any(np.isnan(a)):
        return DOES_NOT_HOLD
    mean, low, high = paired_interval(100.0 * (a - b))
    if not math.isfinite(mean):
        return INCONCLUSIVE
    if mean >= -CLAIM6_GAP_PP - 1e-9 and low > -CLAIM6_FLOOR_PP:
        return HOLDS
    if high < -CLAIM6_GAP_PP:
        return DOES_NOT_HOLD
    return INCONCLUSIVE
