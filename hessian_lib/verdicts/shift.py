"""Claims 1 and 3: the batch shift of the extreme eigenvalues (Spectra chapter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from hessian_lib.verdicts._words import DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, combine_parts

#: The shift Delta(B) counts as measured at a batch size when it exceeds this many standard errors (strictly).
SHIFT_SIGMAS = 2.0
#: Confidence level of the interval of the exponent gamma in Delta(B) ~ (1/B - 1/N)^gamma.
GAMMA_CONFIDENCE = 0.95
#: gamma of the outlier regime (theta + s^2/theta: a shift proportional to s^2, i.e. to 1/B - 1/N).
OUTLIER_GAMMA = 1.0
#: gamma of the bulk-edge regime (2s: a shift proportional to s, i.e. to the square root of 1/B - 1/N).
EDGE_GAMMA = 0.5


#: An end of a spectrum is **not resolved** when its empirical extreme Ritz value is flagged (residual bound above
#: 1% of its magnitude) or more than this fraction of its batch extremes are: the shift there would be measured on
#: values Lanczos has not converged, so the end is left out of the verdict (and said so).
UNRESOLVED_FRACTION = 0.5


@dataclass(frozen=True)
class ShiftEvidence:
    """The numbers behind the shift rule at one end of one matrix at one checkpoint.

    ``shift``, ``stderr``: Delta(B) and its standard error, one value per B of the grid in
    increasing order of B (the smallest B first); ``gamma_low``, ``gamma_high``: the
    :data:`GAMMA_CONFIDENCE` interval of gamma (NaN when gamma could not be fitted);
    ``flagged_fraction``: the fraction of the batch extremes whose residual bound is flagged;
    ``empirical_flagged``: whether the empirical extreme is.
    """

    shift: tuple[float, ...]
    stderr: tuple[float, ...]
    gamma_low: float
    gamma_high: float
    flagged_fraction: float = 0.0
    empirical_flagged: bool = False

    def _exceeds(self) -> list[bool]:
        return [bool(d > SHIFT_SIGMAS * e) for d, e in zip(self.shift, self.stderr, strict=True)]

    def significant(self) -> bool:
        """Delta(B) exceeds :data:`SHIFT_SIGMAS` standard errors at every B (NaN fails)."""
        return bool(self.shift) and all(self._exceeds())

    def significant_at_smallest(self) -> bool:
        """Delta(B) exceeds :data:`SHIFT_SIGMAS` standard errors at the smallest B (the first of the grid)."""
        return bool(self.shift) and self._exceeds()[0]

    def contains(self, gamma: float) -> bool:
        """The interval of gamma contains ``gamma`` (closed interval; NaN bounds contain nothing)."""
        return bool(self.gamma_low <= gamma <= self.gamma_high)

    def resolved(self) -> bool:
        """Neither the empirical extreme nor more than :data:`UNRESOLVED_FRACTION` of the batch extremes is flagged."""
        return not self.empirical_flagged and not self.flagged_fraction > UNRESOLVED_FRACTION

    def regime(self) -> str:
        """Which regime the interval contains: 'outlier (gamma = 1)', 'bulk edge (gamma = 1/2)', 'both' or 'neither'."""
        outlier, edge = self.contains(OUTLIER_GAMMA), self.contains(EDGE_GAMMA)
        return "both" if outlier and edge else "outlier (gamma = 1)" if outlier else \
            "bulk edge (gamma = 1/2)" if edge else "neither"


def shift_end_verdict(evidence: ShiftEvidence) -> str:
    """The shift rule at one end of one matrix at one checkpoint, resolved or not (:func:`shift_checkpoint_verdict`).

    :data:`HOLDS` when Delta(B) exceeds :data:`SHIFT_SIGMAS` standard errors at every B and the
    interval of gamma contains :data:`OUTLIER_GAMMA` and excludes :data:`EDGE_GAMMA`;
    :data:`DOES_NOT_HOLD` when the shift is not significant at the smallest B, or the interval
    excludes :data:`OUTLIER_GAMMA` and contains :data:`EDGE_GAMMA`; :data:`INCONCLUSIVE` otherwise
    (an interval holding both values, or neither, or a shift significant at the smallest B only).
    """
    ev = evidence
    if not ev.significant_at_smallest() or (ev.contains(EDGE_GAMMA) and not ev.contains(OUTLIER_GAMMA)):
        return DOES_NOT_HOLD
    if ev.significant() and ev.contains(OUTLIER_GAMMA) and not ev.contains(EDGE_GAMMA):
        return HOLDS
    return INCONCLUSIVE


def shift_checkpoint_verdict(ends: Mapping[str, ShiftEvidence]) -> str:
    """The shift rule at one checkpoint, over the ends of one matrix ({'top': ..., 'bottom': ...}).

    Only the resolved ends (:meth:`ShiftEvidence.resolved`) are judged, each by
    :func:`shift_end_verdict`, and their words combined by :func:`combine_parts`; with no resolved
    end the checkpoint is :data:`INCONCLUSIVE`.
    """
    if not ends:
        raise ValueError("the shift rule needs at least one end")
    words = [shift_end_verdict(e) for e in ends.values() if e.resolved()]
    return combine_parts(words) if words else INCONCLUSIVE


def shift_claim_verdict(checkpoints: Mapping[int, Mapping[str, ShiftEvidence]]) -> tuple[str, dict[int, str]]:
    """Claims 1 (Hessian, both ends) and 3 (GGN, top end): the verdict over checkpoints after the first.

    ``checkpoints``: epoch -> end -> evidence; the earliest epoch is not judged (the network has
    barely trained). Each later checkpoint gets :func:`shift_checkpoint_verdict`, and the claim
    :func:`combine_parts` of them. Returns the verdict and the per-checkpoint verdicts of the judged epochs.
    """
    epochs = sorted(checkpoints)
    if len(epochs) < 2:
        raise ValueError("the shift claims need at least two checkpoints (the first is not judged)")
    judged = {e: shift_checkpoint_verdict(checkpoints[e]) for e in epochs[1:]}
    return combine_parts(judged.values()), judged
