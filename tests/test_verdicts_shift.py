"""The shift rule of claims 1 and 3 (hessian_lib.verdicts), at its boundaries, on synthetic numbers."""

from __future__ import annotations

import math

import pytest

from hessian_lib.verdicts import (
    DOES_NOT_HOLD,
    EDGE_GAMMA,
    GAMMA_CONFIDENCE,
    HOLDS,
    OUTLIER_GAMMA,
    PARTLY,
    SHIFT_SIGMAS,
    ShiftEvidence,
    shift_checkpoint_verdict,
    shift_claim_verdict,
)


def ev(shift=(4.0, 2.0, 1.0), se=(0.1, 0.1, 0.1), low=0.8, high=1.2):
    return ShiftEvidence(tuple(shift), tuple(se), low, high)


def test_constants_are_the_issue_s():
    assert (SHIFT_SIGMAS, GAMMA_CONFIDENCE, OUTLIER_GAMMA, EDGE_GAMMA) == (2.0, 0.95, 1.0, 0.5)


def test_shift_must_exceed_two_standard_errors_at_every_batch_size():
    se = 0.5
    assert not ev(shift=(3.0, SHIFT_SIGMAS * se), se=(se, se)).significant()           # equal is not exceeding
    assert ev(shift=(3.0, SHIFT_SIGMAS * se * 1.001), se=(se, se)).significant()
    assert not ev(shift=(3.0, -1.0), se=(se, se)).significant()
    assert not ev(shift=(3.0, math.nan), se=(se, se)).significant()
    assert not ev(shift=(), se=()).significant()
    with pytest.raises(ValueError):
        ev(shift=(1.0, 2.0), se=(0.1,)).significant()


def test_interval_is_closed_and_nan_contains_nothing():
    assert ev(low=OUTLIER_GAMMA, high=2.0).contains(OUTLIER_GAMMA)
    assert ev(low=0.2, high=OUTLIER_GAMMA).contains(OUTLIER_GAMMA)
    assert not ev(low=0.2, high=OUTLIER_GAMMA - 1e-9).contains(OUTLIER_GAMMA)
    assert not ev(low=math.nan, high=math.nan).contains(OUTLIER_GAMMA)
    assert ev(low=0.4, high=1.1).regime() == "both"
    assert ev(low=0.8, high=1.1).regime() == "outlier (gamma = 1)"
    assert ev(low=0.3, high=0.9).regime() == "bulk edge (gamma = 1/2)"
    assert ev(low=1.2, high=1.9).regime() == "neither"


def test_checkpoint_rule():
    good, edge, weak = ev(), ev(low=0.3, high=0.7), ev(shift=(4.0, 2.0, 0.15))
    assert shift_checkpoint_verdict({"top": good, "bottom": good}) == HOLDS
    assert shift_checkpoint_verdict({"top": good, "bottom": edge}) == PARTLY          # significant, gamma excludes 1
    assert shift_checkpoint_verdict({"top": good, "bottom": weak}) == DOES_NOT_HOLD   # one B within 2 se
    assert shift_checkpoint_verdict({"top": weak}) == DOES_NOT_HOLD
    assert shift_checkpoint_verdict({"top": edge}) == PARTLY
    with pytest.raises(ValueError):
        shift_checkpoint_verdict({})


def test_claim_rule_over_checkpoints_after_the_first():
    good, edge, weak = {"top": ev()}, {"top": ev(low=0.3, high=0.7)}, {"top": ev(shift=(1.0, 1.0, 0.1))}
    # the first checkpoint is shown, never judged
    assert shift_claim_verdict({1: weak, 2: good, 3: good}) == (HOLDS, {2: HOLDS, 3: HOLDS})
    # holds at some checkpoints only: partly, and the per-checkpoint verdicts name them
    word, per = shift_claim_verdict({1: good, 2: weak, 3: good})
    assert word == PARTLY and per == {2: DOES_NOT_HOLD, 3: HOLDS}
    assert shift_claim_verdict({1: good, 2: good, 3: edge})[0] == PARTLY
    assert shift_claim_verdict({1: good, 2: edge, 3: edge})[0] == PARTLY
    # the weakest otherwise
    assert shift_claim_verdict({1: good, 2: edge, 3: weak})[0] == DOES_NOT_HOLD
    assert shift_claim_verdict({1: good, 2: weak})[0] == DOES_NOT_HOLD
    assert shift_claim_verdict({5: good, 1: weak})[0] == HOLDS                       # order of keys does not matter
    with pytest.raises(ValueError):
        shift_claim_verdict({1: good})
