"""The shift rule of claims 1 and 3 (hessian_lib.verdicts), at its boundaries, on synthetic numbers."""

from __future__ import annotations

import math

import pytest

from hessian_lib.verdicts import (
    DOES_NOT_HOLD,
    EDGE_GAMMA,
    GAMMA_CONFIDENCE,
    HOLDS,
    INCONCLUSIVE,
    OUTLIER_GAMMA,
    PARTLY,
    SHIFT_SIGMAS,
    UNRESOLVED_FRACTION,
    ShiftEvidence,
    shift_checkpoint_verdict,
    shift_claim_verdict,
    shift_end_verdict,
)

EPS = 1e-9


def ev(shift=(4.0, 2.0, 1.0), se=(0.1, 0.1, 0.1), low=0.8, high=1.2, flagged=0.0, empirical_flagged=False):
    return ShiftEvidence(tuple(shift), tuple(se), low, high, flagged, empirical_flagged)


def test_constants_are_the_issue_s():
    assert (SHIFT_SIGMAS, GAMMA_CONFIDENCE, OUTLIER_GAMMA, EDGE_GAMMA) == (2.0, 0.95, 1.0, 0.5)
    assert UNRESOLVED_FRACTION == 0.5


def test_shift_must_exceed_two_standard_errors_at_every_batch_size():
    se = 0.5
    assert not ev(shift=(3.0, SHIFT_SIGMAS * se), se=(se, se)).significant()           # equal is not exceeding
    assert ev(shift=(3.0, SHIFT_SIGMAS * se * 1.001), se=(se, se)).significant()
    assert not ev(shift=(3.0, -1.0), se=(se, se)).significant()
    assert not ev(shift=(3.0, math.nan), se=(se, se)).significant()
    assert not ev(shift=(), se=()).significant()
    with pytest.raises(ValueError):
        ev(shift=(1.0, 2.0), se=(0.1,)).significant()


def test_significance_at_the_smallest_batch_is_the_first_entry():
    assert ev(shift=(3.0, 0.0), se=(1.0, 1.0)).significant_at_smallest()
    assert not ev(shift=(SHIFT_SIGMAS, 5.0), se=(1.0, 1.0)).significant_at_smallest()
    assert not ev(shift=(), se=()).significant_at_smallest()


def test_interval_is_closed_and_nan_contains_nothing():
    assert ev(low=OUTLIER_GAMMA, high=2.0).contains(OUTLIER_GAMMA)
    assert ev(low=0.2, high=OUTLIER_GAMMA).contains(OUTLIER_GAMMA)
    assert not ev(low=0.2, high=OUTLIER_GAMMA - 1e-9).contains(OUTLIER_GAMMA)
    assert not ev(low=math.nan, high=math.nan).contains(OUTLIER_GAMMA)
    assert ev(low=0.4, high=1.1).regime() == "both"
    assert ev(low=0.8, high=1.1).regime() == "outlier (gamma = 1)"
    assert ev(low=0.3, high=0.9).regime() == "bulk edge (gamma = 1/2)"
    assert ev(low=1.2, high=1.9).regime() == "neither"


def test_resolution_boundary():
    assert ev(flagged=UNRESOLVED_FRACTION).resolved()                      # half flagged: still resolved
    assert not ev(flagged=UNRESOLVED_FRACTION + EPS).resolved()            # mostly flagged: not
    assert not ev(empirical_flagged=True).resolved()                       # the reference itself unresolved


@pytest.mark.parametrize("evidence, word", [
    # holds: significant at every B, the interval contains 1 and excludes 1/2 (ends included)
    (ev(low=EDGE_GAMMA + EPS, high=OUTLIER_GAMMA), HOLDS),
    (ev(low=OUTLIER_GAMMA, high=1.9), HOLDS),
    # contains both: inconclusive, never holds
    (ev(low=EDGE_GAMMA, high=OUTLIER_GAMMA), INCONCLUSIVE),
    (ev(low=0.13, high=1.40), INCONCLUSIVE),
    # excludes 1, contains 1/2: does not hold
    (ev(low=0.3, high=OUTLIER_GAMMA - EPS), DOES_NOT_HOLD),
    # excludes both: the rule says neither holds nor does not hold
    (ev(low=0.6, high=0.9), INCONCLUSIVE),
    (ev(low=1.2, high=1.9), INCONCLUSIVE),
    # not significant at the smallest B: does not hold, whatever the interval
    (ev(shift=(SHIFT_SIGMAS * 0.1, 2.0, 1.0)), DOES_NOT_HOLD),
    # significant at the smallest B only: cannot hold
    (ev(shift=(4.0, 2.0, 0.15)), INCONCLUSIVE),
    # no fit
    (ev(low=math.nan, high=math.nan), INCONCLUSIVE),
])
def test_end_rule(evidence, word):
    assert shift_end_verdict(evidence) == word


def test_checkpoint_rule_judges_the_resolved_ends_only():
    good, edge, both = ev(), ev(low=0.3, high=0.7), ev(low=0.3, high=1.3)
    unresolved = ev(low=0.3, high=0.7, flagged=0.9)
    assert shift_checkpoint_verdict({"top": good, "bottom": good}) == HOLDS
    assert shift_checkpoint_verdict({"top": good, "bottom": edge}) == PARTLY
    assert shift_checkpoint_verdict({"top": good, "bottom": both}) == INCONCLUSIVE
    assert shift_checkpoint_verdict({"top": good, "bottom": unresolved}) == HOLDS      # judged on the top alone
    assert shift_checkpoint_verdict({"top": unresolved}) == INCONCLUSIVE               # nothing resolved
    assert shift_checkpoint_verdict({"top": edge}) == DOES_NOT_HOLD
    with pytest.raises(ValueError):
        shift_checkpoint_verdict({})


def test_claim_rule_over_checkpoints_after_the_first():
    good, edge, both = {"top": ev()}, {"top": ev(low=0.3, high=0.7)}, {"top": ev(low=0.3, high=1.3)}
    # the first checkpoint is shown, never judged
    assert shift_claim_verdict({1: edge, 2: good, 3: good}) == (HOLDS, {2: HOLDS, 3: HOLDS})
    word, per = shift_claim_verdict({1: good, 2: edge, 3: good})
    assert word == PARTLY and per == {2: DOES_NOT_HOLD, 3: HOLDS}
    assert shift_claim_verdict({1: good, 2: good, 3: both})[0] == INCONCLUSIVE
    assert shift_claim_verdict({1: good, 2: edge, 3: both})[0] == DOES_NOT_HOLD
    assert shift_claim_verdict({1: good, 2: edge})[0] == DOES_NOT_HOLD
    assert shift_claim_verdict({5: good, 1: edge})[0] == HOLDS                       # order of keys does not matter
    with pytest.raises(ValueError):
        shift_claim_verdict({1: good})
