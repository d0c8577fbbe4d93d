"""Claim 2: the BBP transition and the outlier formulas (Theory chapter)."""

from __future__ import annotations

from typing import Any, Mapping

from hessian_lib.verdicts._words import DOES_NOT_HOLD, HOLDS, PARTLY

#: A formula counts as reproduced when every simulated extreme eigenvalue lies within this relative
#: error of its prediction (strictly below it) ...
CLAIM2_TOLERANCE = 0.05
#: ... leaving out the finite-P window around the BBP threshold, CLAIM2_WINDOW[0] < s/theta < CLAIM2_WINDOW[1]
#: (open interval), where P^(-1/3) corrections dominate.
CLAIM2_WINDOW: tuple[float, float] = (0.7, 1.4)


def in_threshold_window(ratio: Any) -> Any:
    """Whether s/theta lies inside the open window :data:`CLAIM2_WINDOW` (works elementwise on arrays)."""
    low, high = CLAIM2_WINDOW
    return (ratio > low) & (ratio < high)


def formula_reproduced(max_error: float) -> bool:
    """A formula is reproduced when its largest relative error is below :data:`CLAIM2_TOLERANCE` (NaN is not)."""
    return bool(max_error < CLAIM2_TOLERANCE)


def claim2_verdict(max_errors: Mapping[str, float]) -> str:
    """Claim 2 from the largest relative error of each formula check (outside the threshold window).

    :data:`HOLDS` when every formula is reproduced, :data:`PARTLY` when some but not all are,
    :data:`DOES_NOT_HOLD` when none is.
    """
    if not max_errors:
        raise ValueError("claim 2 needs at least one formula check")
    reproduced = [formula_reproduced(e) for e in max_errors.values()]
    return HOLDS if all(reproduced) else PARTLY if any(reproduced) else DOES_NOT_HOLD
