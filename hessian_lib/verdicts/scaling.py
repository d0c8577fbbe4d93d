"""Claims 4, 5 and 7: the largest stable learning rate against batch size, and its mechanism (Scaling chapter)."""

from __future__ import annotations

import math
from typing import Any

from hessian_lib.verdicts._words import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, PARTLY, _ends, _missing

#: Confidence level of every slope interval of claims 4, 5 and 7.
SCALING_LEVEL = 0.95
#: Claim 4 looks for linear scaling in the small-batch regime: the slope over this many smallest batch sizes ...
CLAIM4_SMALL_BATCHES = 3
#: ... must have an interval containing this slope ...
CLAIM4_SLOPE = 1.0
#: ... and excluding this one (the square-root law, which the pure spiked-Wigner edge predicts).
CLAIM4_ALTERNATIVE = 0.5
#: Claim 5: the slope over the whole grid must have an interval containing this slope (square-root rule) ...
CLAIM5_SLOPE = 0.5
#: ... and excluding this one (linear scaling) ...
CLAIM5_ALTERNATIVE = 1.0
#: ... and this one (no growth with B), for holds; an interval that reaches it makes the claim partly at best.
CLAIM5_NULL = 0.0
#: Parity: a scaled run ends within this many percentage points of B0's test accuracy (means over seeds),
#: and a control more than this many below it.
PARITY_POINTS = 2.0
#: Claim 7 (the mechanism): measured over predicted largest stable learning rate is flat in B when the 95%
#: interval of its log-log slope against B lies inside [-CLAIM7_FLAT, CLAIM7_FLAT] (ends included) ...
CLAIM7_FLAT = 0.2
#: ... and it does not hold when that interval excludes this slope (a ratio that drifts with B).
CLAIM7_NULL = 0.0
#: The longer trial horizon of the mechanism check, as a multiple of the profile's trial steps (at least this).
CLAIM7_HORIZON_FACTOR = 4


def interval_contains(interval: Any, value: float) -> bool:
    """``low <= value <= high`` (ends included; a NaN end contains nothing)."""
    low, high = _ends(interval)
    return bool(low <= value <= high)


def interval_above(interval: Any, value: float) -> bool:
    """The whole interval lies strictly above ``value``."""
    return bool(_ends(interval)[0] > value)


def interval_within(interval: Any, low: float, high: float) -> bool:
    """The whole interval lies inside ``[low, high]`` (ends included; a NaN end does not)."""
    a, b = _ends(interval)
    return bool(low <= a and b <= high)


def claim4_conditions(small_slope: Any, critical_batch: Any, grid: Any, saturating_passes: bool,
                      parity: bool) -> dict[str, bool]:
    """The three parts of claim 4, by name.

    ``linear`` (a): the slope over the :data:`CLAIM4_SMALL_BATCHES` smallest batch sizes has an
    interval that contains :data:`CLAIM4_SLOPE` and excludes :data:`CLAIM4_ALTERNATIVE`;
    ``saturating`` (b): the interval of the saturating law's B* (``critical_batch``) lies inside
    the measured grid ``[min(grid), max(grid)]`` and the law passes through the final bracket at
    every grid point (``saturating_passes``); ``parity`` (c): linear-scaling parity
    (:func:`parity_holds`).
    """
    b = [float(v) for v in grid]
    return {
        "linear": interval_contains(small_slope, CLAIM4_SLOPE)
        and not interval_contains(small_slope, CLAIM4_ALTERNATIVE),
        "saturating": interval_within(critical_batch, min(b), max(b)) and bool(saturating_passes),
        "parity": bool(parity),
    }


def claim4_verdict(small_slope: Any, critical_batch: Any, grid: Any, saturating_passes: bool, parity: bool) -> str:
    """Claim 4 (SGD) from its three parts (:func:`claim4_conditions`).

    :data:`HOLDS` when all three pass; :data:`PARTLY` when ``linear`` passes and exactly one of the
    other two fails; :data:`INCONCLUSIVE` when the small-B slope interval contains both
    :data:`CLAIM4_ALTERNATIVE` and :data:`CLAIM4_SLOPE` (or was not measured); :data:`DOES_NOT_HOLD`
    otherwise.
    """
    c = claim4_conditions(small_slope, critical_batch, grid, saturating_passes, parity)
    if c["linear"]:
        failed = [name for name in ("saturating", "parity") if not c[name]]
        return HOLDS if not failed else PARTLY if len(failed) == 1 else DOES_NOT_HOLD
    if _missing(small_slope) or (interval_contains(small_slope, CLAIM4_SLOPE)
                                 and interval_contains(small_slope, CLAIM4_ALTERNATIVE)):
        return INCONCLUSIVE
    return DOES_NOT_HOLD


def claim5_verdict(grid_slope: Any, parity: bool) -> str:
    """Claim 5 (Adam) from the slope over the grid and square-root parity (:func:`parity_holds`).

    :data:`HOLDS` when the slope interval contains :data:`CLAIM5_SLOPE` and excludes
    :data:`CLAIM5_NULL` and :data:`CLAIM5_ALTERNATIVE`, and parity holds; :data:`PARTLY` when it
    contains :data:`CLAIM5_SLOPE` and excludes :data:`CLAIM5_ALTERNATIVE` but parity fails or the
    interval reaches :data:`CLAIM5_NULL`; :data:`INCONCLUSIVE` when it contains both
    :data:`CLAIM5_SLOPE` and :data:`CLAIM5_ALTERNATIVE` (or was not measured);
    :data:`DOES_NOT_HOLD` when it excludes :data:`CLAIM5_SLOPE`.
    """
    if _missing(grid_slope):
        return INCONCLUSIVE
    if not interval_contains(grid_slope, CLAIM5_SLOPE):
        return DOES_NOT_HOLD
    if interval_contains(grid_slope, CLAIM5_ALTERNATIVE):
        return INCONCLUSIVE
    reaches_null = _ends(grid_slope)[0] <= CLAIM5_NULL
    return HOLDS if parity and not reaches_null else PARTLY


def claim7_verdict(ratio_slope: Any) -> str:
    """Claim 7 (the mechanism) from the interval of the log-log slope of measured over predicted against B.

    :data:`HOLDS` when the interval lies inside ``[-CLAIM7_FLAT, CLAIM7_FLAT]``;
    :data:`DOES_NOT_HOLD` when it excludes :data:`CLAIM7_NULL`; :data:`INCONCLUSIVE` otherwise (or
    when it was not measured).
    """
    if _missing(ratio_slope):
        return INCONCLUSIVE
    if interval_within(ratio_slope, -CLAIM7_FLAT, CLAIM7_FLAT):
        return HOLDS
    return DOES_NOT_HOLD if not interval_contains(ratio_slope, CLAIM7_NULL) else INCONCLUSIVE


def parity_holds(base_acc: float, scaled_accs: Any, control_acc: float) -> bool:
    """Training parity (accuracies in percent, each a mean over seeds): every scaled run ends within
    :data:`PARITY_POINTS` of ``base_acc`` (B0) and the control ends more than :data:`PARITY_POINTS`
    below it. A NaN (a diverged run) fails the scaled test and counts as far below for the control."""
    scaled = [float(a) for a in scaled_accs]
    if not scaled:
        raise ValueError("parity needs at least one scaled run")
    within = all(abs(a - base_acc) <= PARITY_POINTS for a in scaled)
    control = float(control_acc)
    below = math.isnan(control) or control < base_acc - PARITY_POINTS
    return bool(within and below and math.isfinite(base_acc))
