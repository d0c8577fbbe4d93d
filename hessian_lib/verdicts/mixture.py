"""Claim 8: a perceptron on a Gaussian mixture against a network on natural images (Mixture chapter)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from hessian_lib.verdicts._words import (
    DOES_NOT_HOLD,
    HOLDS,
    INCONCLUSIVE,
    PARTLY,
    VERDICT_WORDS,
    _ends,
    _missing,
)

#: The near-zero window of a Hessian spectrum: eigenvalues with |lambda| <= CLAIM8_BULK_WINDOW * lambda_max are bulk
#: by definition. The bulk's shape is measured as the spectral mass (Ritz weight) inside it (:func:`bulk_fraction`),
#: and the outlier search (:func:`outlier_count`) looks above it.
CLAIM8_BULK_WINDOW = 0.05
#: The outlier search looks at the top CLAIM8_SEARCH_FACTOR * C + 1 Ritz values (C classes): a count up to 2C.
CLAIM8_SEARCH_FACTOR = 2
#: Outliers are separated from the bulk when the largest ratio of neighbouring top Ritz values, theta_k / theta_(k+1),
#: is at least this (inclusive); the count is then k.
CLAIM8_GAP_RATIO = 1.5
#: A count is resolved when the Ritz values from the top down to the first below the gap have residual bounds at most
#: this fraction of their magnitude (of the window's edge, for a value inside the window).
CLAIM8_RESIDUAL = 0.01
#: The two spectra agree on the count when the sides' counts (medians over their networks) differ by at most this
#: fraction of C, rounded down, and at least one outlier (:func:`count_tolerance`). A side has a count only when its
#: networks agree on it by the same measure: their resolved counts span at most that many outliers
#: (:func:`side_spread`); otherwise the count depends on which networks were drawn, and the measure is inconclusive.
CLAIM8_COUNT_TOLERANCE = 0.2
#: The two sides agree on a subspace overlap (a share in [0, 1]) when the interval of the difference of their means
#: lies inside [-CLAIM8_OVERLAP_TOLERANCE, CLAIM8_OVERLAP_TOLERANCE] ...
CLAIM8_OVERLAP_TOLERANCE = 0.2
#: ... and on the bulk's shape when the interval of the difference of the near-zero masses lies inside
#: [-CLAIM8_BULK_TOLERANCE, CLAIM8_BULK_TOLERANCE]. An interval entirely outside the band differs; any other
#: interval (one that crosses the band's edge, or was not measured) is inconclusive (:func:`claim8_equivalence`).
CLAIM8_BULK_TOLERANCE = 0.1
#: Confidence level of those intervals (Welch's t interval of the difference of the two sides' means over networks).
CLAIM8_LEVEL = 0.95
#: What one measure of claim 8 says: the two spectra agree on it, differ, or (:data:`INCONCLUSIVE`) cannot tell.
AGREE, DIFFER = "agree", "differ"
#: The measures besides the outlier count, as :func:`claim8_verdict` takes them.
CLAIM8_MEASURES: tuple[str, ...] = ("overlap", "shift", "bulk")


@dataclass(frozen=True)
class OutlierCount:
    """The gap criterion's reading of one spectrum: ``count`` outliers (0: none separated), the ``ratio``
    theta_k / theta_(k+1) of the largest gap searched, and whether the count is ``resolved``."""

    count: int
    ratio: float
    resolved: bool


def outlier_count(values: Any, residuals: Any, classes: int) -> OutlierCount:
    """The number of outliers separated from the bulk, from the Ritz values (any order) and their residual bounds.

    Sort the values from the top, theta_1 >= theta_2 >= ..., and let the window's edge be
    ``floor = CLAIM8_BULK_WINDOW * theta_1``. For each j from 1 to ``CLAIM8_SEARCH_FACTOR * classes``
    with theta_j above the floor, the ratio is theta_j / max(theta_(j+1), floor) (a value inside the
    window counts as the window's edge). The count is the j of the largest ratio when that ratio is
    at least :data:`CLAIM8_GAP_RATIO`, and 0 otherwise. It is resolved when theta_1, ...,
    theta_(count+1) (every value searched, for a count of 0) have residual bounds at most
    :data:`CLAIM8_RESIDUAL` times max(|theta|, floor). NaN values (Lanczos stopped early) are dropped;
    a spectrum without a positive value, or with a single value, has no outliers and is not resolved.
    """
    pairs = sorted(((float(v), float(r)) for v, r in zip(values, residuals, strict=True) if math.isfinite(float(v))),
                   reverse=True)
    if not pairs or pairs[0][0] <= 0:
        return OutlierCount(0, math.nan, False)
    top = pairs[0][0]
    floor = CLAIM8_BULK_WINDOW * top
    ratios = []
    for j in range(min(CLAIM8_SEARCH_FACTOR * int(classes), len(pairs) - 1)):
        upper = pairs[j][0]
        if upper <= floor:
            break
        ratios.append(upper / max(pairs[j + 1][0], floor))
    if not ratios:
        return OutlierCount(0, math.nan, False)
    best = max(range(len(ratios)), key=lambda j: (ratios[j], -j))
    count = best + 1 if ratios[best] >= CLAIM8_GAP_RATIO else 0
    checked = pairs[:count + 1] if count else pairs[:len(ratios) + 1]
    resolved = all(r <= CLAIM8_RESIDUAL * max(abs(v), floor) for v, r in checked)
    return OutlierCount(count, float(ratios[best]), bool(resolved))


def bulk_fraction(values: Any, weights: Any) -> float:
    """The spectral mass near zero: the total Ritz weight of the values with |theta| <= CLAIM8_BULK_WINDOW * max(theta).

    ``values``, ``weights``: Ritz values and weights of one Lanczos run (weights sum to 1), or exact
    eigenvalues with weights 1/P each. NaN values are dropped.
    """
    kept = [(float(v), float(w)) for v, w in zip(values, weights, strict=True) if math.isfinite(float(v))]
    if not kept:
        return math.nan
    edge = CLAIM8_BULK_WINDOW * max(v for v, _ in kept)
    return float(sum(w for v, w in kept if abs(v) <= edge))


def count_tolerance(classes: int) -> int:
    """The largest difference of outlier counts that still agrees: floor(CLAIM8_COUNT_TOLERANCE * C), at least 1."""
    return max(1, math.floor(CLAIM8_COUNT_TOLERANCE * int(classes) + 1e-9))


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _resolved(counts: Any) -> list[float]:
    """The resolved counts of a side's networks (``None`` or NaN: not resolved)."""
    return [float(c) for c in counts if c is not None and math.isfinite(float(c))]


def side_count(counts: Any) -> float:
    """One side's outlier count: the median of its networks' resolved counts (``None`` or NaN: not resolved);
    NaN when fewer than half of its networks have a resolved count."""
    counts = list(counts)
    resolved = _resolved(counts)
    if not counts or 2 * len(resolved) < len(counts):
        return math.nan
    return _median(resolved)


def side_spread(counts: Any) -> float:
    """The largest minus the smallest of a side's resolved counts (``None`` or NaN: not resolved); NaN for none."""
    resolved = _resolved(counts)
    return max(resolved) - min(resolved) if resolved else math.nan


def claim8_count_agreement(mixture_counts: Any, network_counts: Any, classes: int) -> str:
    """The count measure: :data:`AGREE` when the two sides' counts (:func:`side_count`) differ by at most
    :func:`count_tolerance`, :data:`DIFFER` when they differ by more; :data:`INCONCLUSIVE` when a side has none,
    or when its networks' resolved counts span more than :func:`count_tolerance` (:func:`side_spread`: they do not
    agree with one another, so the side's count would move with the networks drawn)."""
    a, b = side_count(mixture_counts), side_count(network_counts)
    if not (math.isfinite(a) and math.isfinite(b)):
        return INCONCLUSIVE
    if max(side_spread(mixture_counts), side_spread(network_counts)) > count_tolerance(classes):
        return INCONCLUSIVE
    return AGREE if abs(a - b) <= count_tolerance(classes) else DIFFER


def claim8_equivalence(interval: Any, tolerance: float) -> str:
    """A measure given as the interval of the difference of the two sides' means, against the band [-tol, tol].

    :data:`AGREE` when the interval lies inside the band (ends included); :data:`DIFFER` when it lies
    entirely outside (strictly above ``tolerance`` or strictly below ``-tolerance``); :data:`INCONCLUSIVE`
    otherwise (it crosses an edge of the band, or an end is NaN).
    """
    if _missing(interval):
        return INCONCLUSIVE
    low, high = _ends(interval)
    if -tolerance <= low and high <= tolerance:
        return AGREE
    if low > tolerance or high < -tolerance:
        return DIFFER
    return INCONCLUSIVE


def claim8_overlap_agreement(ggn_interval: Any, class_mean_interval: Any) -> str:
    """The overlap measure from its two parts (the share of the Hessian's top eigenspace explained by the GGN's and
    by the class-mean gradients'), each by :func:`claim8_equivalence` with :data:`CLAIM8_OVERLAP_TOLERANCE`:
    :data:`AGREE` when both agree, :data:`DIFFER` when either differs, :data:`INCONCLUSIVE` otherwise."""
    words = {claim8_equivalence(i, CLAIM8_OVERLAP_TOLERANCE) for i in (ggn_interval, class_mean_interval)}
    return DIFFER if DIFFER in words else AGREE if words == {AGREE} else INCONCLUSIVE


def claim8_shift_agreement(mixture_word: str, network_word: str) -> str:
    """The batch-shift measure from the claim-1 word of each side (:func:`shift_end_verdict` at the top of the
    Hessian, pooled over the side's networks; :data:`INCONCLUSIVE` for an end not resolved).

    :data:`AGREE` when both sides hold, or both do not hold (the same regime of gamma, separated from the other);
    :data:`DIFFER` when one holds and the other does not; :data:`INCONCLUSIVE` when either side is.
    """
    for word in (mixture_word, network_word):
        if word not in VERDICT_WORDS:
            raise ValueError(f"a claim-1 word is one of {VERDICT_WORDS}, got {word!r}")
    decided = {HOLDS, DOES_NOT_HOLD}
    if mixture_word not in decided or network_word not in decided:
        return INCONCLUSIVE
    return AGREE if mixture_word == network_word else DIFFER


def claim8_verdict(count: str, measures: Mapping[str, str]) -> str:
    """Claim 8 from the count measure (:func:`claim8_count_agreement`) and the other three (:data:`CLAIM8_MEASURES`).

    Every argument is :data:`AGREE`, :data:`DIFFER` or :data:`INCONCLUSIVE`. :data:`INCONCLUSIVE` when
    the count is (a side's count not resolved, or not agreed by its networks); :data:`DOES_NOT_HOLD` when
    the counts differ; otherwise (the counts agree) :data:`HOLDS` when at least two of the other three
    measures agree, :data:`PARTLY` when even the inconclusive ones could not make two, and
    :data:`INCONCLUSIVE` when they could (the word depends on measures the data cannot decide).
    """
    allowed = {AGREE, DIFFER, INCONCLUSIVE}
    if set(measures) != set(CLAIM8_MEASURES):
        raise ValueError(f"claim 8 needs the measures {CLAIM8_MEASURES}, got {sorted(measures)}")
    if count not in allowed or not set(measures.values()) <= allowed:
        raise ValueError(f"claim-8 measures are among {sorted(allowed)}, got {count!r} and {dict(measures)}")
    if count == INCONCLUSIVE:
        return INCONCLUSIVE
    if count == DIFFER:
        return DOES_NOT_HOLD
    agree = sum(w == AGREE for w in measures.values())
    undecided = sum(w == INCONCLUSIVE for w in measures.values())
    if agree >= 2:
        return HOLDS
    return INCONCLUSIVE if agree + undecided >= 2 else PARTLY
