"""The claim-8 rule (a perceptron on a Gaussian mixture against a network on images) at its boundaries."""

import math

import pytest

from hessian_lib import verdicts as V
from hessian_lib.verdicts import AGREE, DIFFER, DOES_NOT_HOLD, HOLDS, INCONCLUSIVE, PARTLY


def _zeros(values):
    return [0.0] * len(values)


# --- the outlier count (gap criterion) ---------------------------------------------------------------


def test_a_gap_at_the_threshold_counts_and_just_below_it_does_not():
    r = V.CLAIM8_GAP_RATIO
    values = [10.0, 9.5, 9.0, 9.0 / r, 9.0 / r * 0.99, 9.0 / r * 0.98]  # the largest ratio is the threshold
    got = V.outlier_count(values, _zeros(values), classes=3)
    assert (got.count, got.resolved) == (3, True) and got.ratio == pytest.approx(r)
    values[3] = 9.0 / r * 1.0001  # ratio just below the threshold: no separated outliers
    got = V.outlier_count(values, _zeros(values), classes=3)
    assert got.count == 0 and got.ratio < r


def test_the_largest_gap_wins_and_ties_take_the_first():
    values = [100.0, 50.0, 45.0, 15.0, 14.0]  # ratios 2, 1.11, 3, 1.07
    assert V.outlier_count(values, _zeros(values), classes=2).count == 3
    values = [8.0, 4.0, 3.5, 1.75, 1.7]  # ratios 2, 1.14, 2, ...: the first of two equal gaps
    assert V.outlier_count(values, _zeros(values), classes=2).count == 1


def test_values_inside_the_near_zero_window_count_as_its_edge():
    edge = V.CLAIM8_BULK_WINDOW * 10.0
    values = [10.0, 9.0, 0.1 * edge, -3.0]  # the drop to a value deep inside the window is measured to its edge
    got = V.outlier_count(values, _zeros(values), classes=5)
    assert got.count == 2 and got.ratio == pytest.approx(9.0 / edge)
    # a value inside the window is never an upper member of a pair: with all but the top inside, the count is 1
    values = [10.0, 0.2, 0.1, 0.05]
    assert V.outlier_count(values, _zeros(values), classes=5).count == 1


def test_the_search_stops_at_2c():
    c = 2
    # a big gap after rank 2C + 1 is not seen: the count is the best gap within the first 2C ranks
    values = [10.0, 9.0, 8.5, 8.0, 7.5, 1.0]  # ratios 1.11, 1.06, 1.06, 1.07 within reach, 7.5 beyond it
    got = V.outlier_count(values, _zeros(values), classes=c)
    assert got.count == 0
    values = [10.0, 9.0, 8.5, 4.0, 3.9, 1.0]  # the gap at rank 3 <= 2C is seen
    assert V.outlier_count(values, _zeros(values), classes=c).count == 3


def test_resolution_reads_the_residuals_down_to_the_first_value_below_the_gap():
    values = [10.0, 9.0, 3.0, 2.9, 2.8]
    limit = [V.CLAIM8_RESIDUAL * abs(v) for v in values]
    assert V.outlier_count(values, limit, classes=2).resolved  # at the tolerance: resolved
    worse = list(limit)
    worse[2] *= 1.01  # the first value below the gap just above its tolerance
    assert not V.outlier_count(values, worse, classes=2).resolved
    below = list(limit)
    below[4] = 100.0  # a value further down the bulk does not matter for a count of 2
    assert V.outlier_count(values, below, classes=2).resolved
    flat = [10.0, 9.5, 9.0, 8.6, 8.2, 7.9]  # no gap: every value searched must be converged
    res = [0.0] * 4 + [1.0, 0.0]  # the last value searched (rank 2C + 1 = 5) is not converged
    got = V.outlier_count(flat, res, classes=2)
    assert got.count == 0 and not got.resolved
    assert V.outlier_count(flat, [0.0] * 5 + [1.0], classes=2).resolved  # rank 6 is beyond the search


def test_a_spectrum_without_positive_values_has_no_resolved_count():
    got = V.outlier_count([-1.0, -2.0, math.nan], [0.0, 0.0, 0.0], classes=3)
    assert got.count == 0 and not got.resolved and math.isnan(got.ratio)


def test_the_last_value_has_no_gap_below_it():
    values = [10.0, 9.0, 8.0]  # nothing below 8: no ratio is taken there
    got = V.outlier_count(values, _zeros(values), classes=5)
    assert got.count == 0 and got.ratio == pytest.approx(9 / 8)
    assert not V.outlier_count([10.0], [0.0], classes=5).resolved


def test_nan_ritz_values_are_dropped():
    values = [10.0, math.nan, 9.0, 2.0, 1.9]
    assert V.outlier_count(values, _zeros(values), classes=2).count == 2


def test_bulk_fraction_includes_the_window_edge():
    w = V.CLAIM8_BULK_WINDOW
    values, weights = [10.0, w * 10.0, -w * 10.0, w * 10.0 * 1.001], [0.1, 0.2, 0.3, 0.4]
    assert V.bulk_fraction(values, weights) == pytest.approx(0.5)
    assert math.isnan(V.bulk_fraction([math.nan], [1.0]))


# --- agreement of each measure --------------------------------------------------------------------------


def test_count_tolerance_is_a_fifth_of_c_and_at_least_one():
    assert V.CLAIM8_COUNT_TOLERANCE == 0.2
    assert [V.count_tolerance(c) for c in (2, 4, 5, 9, 10, 20)] == [1, 1, 1, 1, 2, 4]


def test_side_count_needs_half_of_the_networks_resolved():
    assert V.side_count([9, None, 11, None]) == 10.0  # two of four resolved: the median of those
    assert math.isnan(V.side_count([9, None, None]))  # one of three: none
    assert V.side_count([0, 0, float("nan")]) == 0.0


def test_counts_agree_up_to_the_tolerance():
    assert V.claim8_count_agreement([9, 9, 9], [7, 7, 8], classes=10) == AGREE  # medians 9 and 7: 2 apart
    assert V.claim8_count_agreement([9, 9, 9], [6, 7, 6], classes=10) == DIFFER  # 3 apart
    assert V.claim8_count_agreement([9, 9], [6, 7], classes=10) == DIFFER  # medians 9 and 6.5
    assert V.claim8_count_agreement([9, 9, 9], [None, None, 8], classes=10) == INCONCLUSIVE


def test_a_side_whose_networks_disagree_on_the_count_has_none():
    """A side's networks must agree with one another within the tolerance (2 for C = 10): counts spanning 2 still
    give a side count, spanning 3 do not, and the measure is then inconclusive whatever the medians say."""
    assert V.side_spread([11, 10, None]) == 1.0 and math.isnan(V.side_spread([None, float("nan")]))
    assert V.claim8_count_agreement([9, 9, 9], [8, 10, 9], classes=10) == AGREE  # span 2
    assert V.claim8_count_agreement([9, 9, 9], [8, 11, 9], classes=10) == INCONCLUSIVE  # span 3, median 9
    assert V.claim8_count_agreement([9, 9, 9], [11, 10, 0], classes=10) == INCONCLUSIVE  # median 10 would agree
    assert V.claim8_count_agreement([9, 9, 9], [0, 0, 10], classes=10) == INCONCLUSIVE  # median 0 would differ
    assert V.claim8_count_agreement([9, 12, 9], [9, 9, 9], classes=10) == INCONCLUSIVE  # either side
    assert V.claim8_count_agreement([9, 12, None], [9, 9, 9], classes=10) == INCONCLUSIVE  # resolved ones only
    assert V.claim8_count_agreement([9, 9, None], [0, 0, 1], classes=10) == DIFFER


@pytest.mark.parametrize("interval, word", [
    ((-0.2, 0.2), AGREE),              # the band's ends are inside
    ((-0.2, 0.2000001), INCONCLUSIVE),  # crossing the edge
    ((0.2, 0.5), INCONCLUSIVE),         # touching the band from outside is not outside
    ((0.2000001, 0.5), DIFFER),
    ((-0.9, -0.21), DIFFER),
    ((-0.5, 0.5), INCONCLUSIVE),
    ((math.nan, math.nan), INCONCLUSIVE),
])
def test_equivalence_interval_against_the_band(interval, word):
    assert V.claim8_equivalence(interval, 0.2) == word


def test_the_overlap_measure_needs_both_parts():
    inside, outside, across = (-0.05, 0.05), (0.3, 0.4), (0.1, 0.3)
    assert V.claim8_overlap_agreement(inside, inside) == AGREE
    assert V.claim8_overlap_agreement(inside, across) == INCONCLUSIVE
    assert V.claim8_overlap_agreement(across, outside) == DIFFER
    assert V.claim8_overlap_agreement(outside, inside) == DIFFER


def test_the_shift_measure_compares_the_claim1_words():
    assert V.claim8_shift_agreement(HOLDS, HOLDS) == AGREE
    assert V.claim8_shift_agreement(DOES_NOT_HOLD, DOES_NOT_HOLD) == AGREE
    assert V.claim8_shift_agreement(HOLDS, DOES_NOT_HOLD) == DIFFER
    assert V.claim8_shift_agreement(HOLDS, INCONCLUSIVE) == INCONCLUSIVE
    assert V.claim8_shift_agreement(PARTLY, PARTLY) == INCONCLUSIVE
    with pytest.raises(ValueError):
        V.claim8_shift_agreement("maybe", HOLDS)


# --- the verdict ---------------------------------------------------------------------------------------


def _m(overlap, shift, bulk):
    return {"overlap": overlap, "shift": shift, "bulk": bulk}


@pytest.mark.parametrize("count, measures, word", [
    (INCONCLUSIVE, _m(AGREE, AGREE, AGREE), INCONCLUSIVE),
    (DIFFER, _m(AGREE, AGREE, AGREE), DOES_NOT_HOLD),
    (AGREE, _m(AGREE, AGREE, DIFFER), HOLDS),          # two of three is enough
    (AGREE, _m(AGREE, AGREE, AGREE), HOLDS),
    (AGREE, _m(AGREE, INCONCLUSIVE, DIFFER), INCONCLUSIVE),  # one more agreement would make it hold
    (AGREE, _m(INCONCLUSIVE, INCONCLUSIVE, DIFFER), INCONCLUSIVE),
    (AGREE, _m(AGREE, DIFFER, DIFFER), PARTLY),         # the count only (and one measure): cannot reach two
    (AGREE, _m(INCONCLUSIVE, DIFFER, DIFFER), PARTLY),
    (AGREE, _m(DIFFER, DIFFER, DIFFER), PARTLY),
])
def test_claim8_verdict_at_its_boundaries(count, measures, word):
    assert V.claim8_verdict(count, measures) == word


def test_claim8_verdict_refuses_unknown_measures_and_words():
    with pytest.raises(ValueError, match="measures"):
        V.claim8_verdict(AGREE, {"overlap": AGREE, "shift": AGREE})
    with pytest.raises(ValueError):
        V.claim8_verdict("similar", _m(AGREE, AGREE, AGREE))
    with pytest.raises(ValueError):
        V.claim8_verdict(AGREE, _m(HOLDS, AGREE, AGREE))


def test_claim8_has_a_chapter_and_every_new_name_is_exported():
    assert V.CLAIM_CHAPTERS[8] == "05_mixture"
    for name in ("claim8_verdict", "outlier_count", "bulk_fraction", "CLAIM8_GAP_RATIO", "CLAIM8_BULK_WINDOW",
                 "AGREE", "DIFFER", "CLAIM8_MEASURES"):
        assert name in V.__all__
