"""The verdict words and how the words of a claim's parts combine; the interval helpers the rules share."""

from __future__ import annotations

import math
from typing import Any

#: The four verdict words a rule may return, strongest first. ``inconclusive``: the data cannot separate the
#: claim from its alternative (an interval that contains both values, a shift Lanczos has not resolved).
HOLDS, PARTLY, INCONCLUSIVE, DOES_NOT_HOLD = "holds", "partly", "inconclusive", "does not hold"
VERDICT_WORDS: tuple[str, ...] = (HOLDS, PARTLY, INCONCLUSIVE, DOES_NOT_HOLD)
#: What the scoreboard shows for a claim whose chapter did not write a verdict in this build.
NOT_RUN = "not run"
#: What the scoreboard shows for a claim no chapter tests yet.
NO_CHAPTER = "no chapter yet"


def weakest(words: Any) -> str:
    """The weakest of some verdict words, in the order of :data:`VERDICT_WORDS` (``does not hold`` last)."""
    words = list(words)
    if not words:
        raise ValueError("weakest() needs at least one verdict word")
    return max(words, key=VERDICT_WORDS.index)


def combine_parts(words: Any) -> str:
    """The verdict of a claim made of parts (ends of a spectrum, checkpoints), from the parts' words.

    :data:`HOLDS` when every part holds; :data:`DOES_NOT_HOLD` when no part holds and some part does
    not; :data:`PARTLY` when some part holds and some does not (a part that is itself
    :data:`PARTLY` counts as both); :data:`INCONCLUSIVE` otherwise (some part holds and the rest are
    inconclusive, or every part is inconclusive): the claim over all its parts is not established.
    """
    words = set(words)
    if not words or not words <= set(VERDICT_WORDS):
        raise ValueError(f"combine_parts() needs verdict words, got {sorted(words)}")
    some_hold = bool(words & {HOLDS, PARTLY})
    some_fail = bool(words & {DOES_NOT_HOLD, PARTLY})
    if some_hold and some_fail:
        return PARTLY
    if words == {HOLDS}:
        return HOLDS
    return DOES_NOT_HOLD if some_fail else INCONCLUSIVE


def agreement(pooled: str, per_network: Any) -> tuple[int, int]:
    """``(same, K)``: in how many of the K networks' own verdicts the pooled word came out."""
    words = list(per_network)
    return sum(w == pooled for w in words), len(words)


def _ends(interval: Any) -> tuple[float, float]:
    """``(low, high)`` of an interval given as a pair or an object with ``low`` and ``high``."""
    low, high = (interval.low, interval.high) if hasattr(interval, "low") else interval
    return float(low), float(high)


def _missing(interval: Any) -> bool:
    return not all(math.isfinite(v) for v in _ends(interval))
