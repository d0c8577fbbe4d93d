"""The verdict store: what a chapter writes, the scoreboard reads back, for the current build only."""

from __future__ import annotations

import pytest

from hessian_lib.store import ResultsStore
from hessian_lib.verdicts import (
    CLAIMS,
    DOES_NOT_HOLD,
    HOLDS,
    INCONCLUSIVE,
    PARTLY,
    VERDICT_WORDS,
    Verdict,
    agreement,
    combine_parts,
    load_verdicts,
    record_verdict,
    weakest,
)


def test_round_trip_and_build_filter(tmp_path):
    store = ResultsStore(tmp_path)
    v = Verdict(claim=2, verdict=HOLDS, summary="within 1.6%", numbers={"max_error": 0.016},
                scale="P = 800", evidence="01_theory.html#bbp")
    record_verdict(store, v, build_id="b1", profile="cpu")
    assert load_verdicts(store, build_id="b1", profile="cpu") == {2: v}
    assert load_verdicts(store, build_id="b2", profile="cpu") == {}      # an older build's verdict is not shown
    assert load_verdicts(store, build_id="b1", profile="smoke") == {}
    record_verdict(store, Verdict(claim=2, verdict=PARTLY, summary="s"), build_id="b2", profile="cpu")
    assert load_verdicts(store, build_id="b2", profile="cpu")[2].verdict == PARTLY
    pooled = Verdict(claim=1, verdict=INCONCLUSIVE, summary="s", per_network=[INCONCLUSIVE, HOLDS, INCONCLUSIVE])
    record_verdict(store, pooled, build_id="b3", profile="cpu")
    back = load_verdicts(store, build_id="b3", profile="cpu")[1]
    assert back == pooled and back.per_network == (INCONCLUSIVE, HOLDS, INCONCLUSIVE)
    assert back.agreement() == (2, 3) and Verdict(claim=2, verdict=HOLDS, summary="").agreement() is None


@pytest.mark.parametrize("claim, word", [(0, HOLDS), (9, HOLDS), (1, "passes"), (1, "not run")])
def test_bad_verdicts_are_refused(claim, word):
    with pytest.raises(ValueError):
        Verdict(claim=claim, verdict=word, summary="")


def test_per_network_words_must_be_verdict_words():
    with pytest.raises(ValueError):
        Verdict(claim=1, verdict=HOLDS, summary="", per_network=(HOLDS, "not resolved"))


def test_the_claims_and_the_four_words():
    assert sorted(CLAIMS) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert VERDICT_WORDS == (HOLDS, PARTLY, INCONCLUSIVE, DOES_NOT_HOLD)


def test_weakest_orders_the_words():
    assert weakest([HOLDS, PARTLY]) == PARTLY
    assert weakest([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert weakest([INCONCLUSIVE, DOES_NOT_HOLD]) == DOES_NOT_HOLD
    with pytest.raises(ValueError):
        weakest([])


@pytest.mark.parametrize("words, combined", [
    ([HOLDS, HOLDS], HOLDS),
    ([DOES_NOT_HOLD, DOES_NOT_HOLD], DOES_NOT_HOLD),
    ([HOLDS, DOES_NOT_HOLD], PARTLY),                  # holds at some part, fails at another
    ([PARTLY], PARTLY),
    ([HOLDS, INCONCLUSIVE], INCONCLUSIVE),             # not established over every part
    ([INCONCLUSIVE, DOES_NOT_HOLD], DOES_NOT_HOLD),    # fails somewhere, holds nowhere
    ([INCONCLUSIVE], INCONCLUSIVE),
    ([PARTLY, INCONCLUSIVE], PARTLY),
])
def test_combine_parts(words, combined):
    assert combine_parts(words) == combined


def test_combine_parts_refuses_other_words():
    with pytest.raises(ValueError):
        combine_parts([])
    with pytest.raises(ValueError):
        combine_parts([HOLDS, "not resolved"])


def test_agreement_counts_the_networks_with_the_pooled_word():
    assert agreement(HOLDS, [HOLDS, INCONCLUSIVE, HOLDS]) == (2, 3)
    assert agreement(DOES_NOT_HOLD, []) == (0, 0)


# --- Claim 2 (Theory chapter): the rule at its boundaries, on synthetic numbers ----------------------

import math  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hessian_lib.experiments.theory import claim2_checks  # noqa: E402
from hessian_lib.verdicts import (  # noqa: E402
    CLAIM2_TOLERANCE,
    CLAIM2_WINDOW,
    DOES_NOT_HOLD,
    NO_CHAPTER,
    NOT_RUN,
    claim2_verdict,
    formula_reproduced,
    in_threshold_window,
    scoreboard,
)


def test_claim2_tolerance_is_strict():
    assert formula_reproduced(math.nextafter(CLAIM2_TOLERANCE, 0.0))
    assert not formula_reproduced(CLAIM2_TOLERANCE)
    assert not formula_reproduced(float("nan"))


def test_claim2_window_is_open():
    low, high = CLAIM2_WINDOW
    ratios = np.array([low, math.nextafter(low, 2.0), 1.0, math.nextafter(high, 0.0), high])
    assert in_threshold_window(ratios).tolist() == [False, True, True, True, False]


@pytest.mark.parametrize("errors, word", [
    ({"a": 0.01, "b": 0.049}, HOLDS),
    ({"a": 0.01, "b": CLAIM2_TOLERANCE}, PARTLY),
    ({"a": 0.06, "b": float("nan")}, DOES_NOT_HOLD),
])
def test_claim2_verdict_levels(errors, word):
    assert claim2_verdict(errors) == word


def test_claim2_verdict_needs_a_check():
    with pytest.raises(ValueError):
        claim2_verdict({})


def test_claim2_checks_leave_out_the_threshold_window():
    low, high = CLAIM2_WINDOW
    wigner = pd.DataFrame({"top rel. error": [0.01, 0.02], "bottom rel. error": [0.03, 0.0]})
    # three sweep points: on the window's lower edge (counts), inside it (does not), above it (counts)
    bbp = pd.DataFrame({"s/theta": [low, 1.0, high], "top predicted": [2.0, 2.0, 2.0],
                        "top measured": [2.02, 3.0, 2.0], "bottom predicted": [-2.0, -2.0, -2.0],
                        "bottom measured": [-2.0, -2.0, -2.08]})
    mp = pd.DataFrame({"top rel. error": [0.2, 0.01]})
    checks = claim2_checks(wigner, bbp, mp).set_index("check")
    assert checks["largest relative error"].tolist() == pytest.approx([0.03, 0.04, 0.5, 0.2])
    assert checks["counts"].tolist() == [True, True, False, True]
    assert checks["reproduced"].tolist() == ["yes", "yes", "(not counted)", "no"]


# --- The scoreboard: this build's verdicts, "not run" and "no chapter yet" --------------------------

def test_scoreboard_reads_only_this_build(tmp_path):
    store = ResultsStore(tmp_path)
    record_verdict(store, Verdict(claim=2, verdict=HOLDS, summary="3 of 3", scale="P = 800",
                                  evidence="book/01_theory.html#theory-verdict"), build_id="b1", profile="cpu")
    record_verdict(store, Verdict(claim=1, verdict=PARTLY, summary="old"), build_id="b0", profile="cpu")
    record_verdict(store, Verdict(claim=3, verdict=HOLDS, summary="s", per_network=(HOLDS, HOLDS, INCONCLUSIVE)),
                   build_id="b1", profile="cpu")
    rows = scoreboard(store, build_id="b1", profile="cpu", chapters=["book/01_theory", "02_spectra", "scoreboard"])
    assert [r.claim for r in rows] == [1, 2, 3, 4, 5, 6, 7, 8]
    words = {r.claim: r.verdict for r in rows}
    assert words == {1: NOT_RUN, 2: HOLDS, 3: HOLDS, 4: NO_CHAPTER, 5: NO_CHAPTER, 6: NO_CHAPTER, 7: NO_CHAPTER,
                     8: NO_CHAPTER}
    assert rows[1].evidence == "01_theory.html#theory-verdict" and rows[1].numbers == "3 of 3"
    assert rows[0].evidence == "02_spectra.html" and rows[3].evidence == ""
    assert rows[2].agreement() == "2 of 3 networks" and rows[1].agreement() == "" and rows[0].agreement() == ""
    assert scoreboard(store, build_id="b2", profile="cpu", chapters=["01_theory"])[1].verdict == NOT_RUN
