"""The verdict store: what a chapter writes, the scoreboard reads back, for the current build only."""

from __future__ import annotations

import pytest

from hessian_lib.store import ResultsStore
from hessian_lib.verdicts import CLAIMS, HOLDS, PARTLY, Verdict, load_verdicts, record_verdict


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


@pytest.mark.parametrize("claim, word", [(0, HOLDS), (7, HOLDS), (1, "passes"), (1, "not run")])
def test_bad_verdicts_are_refused(claim, word):
    with pytest.raises(ValueError):
        Verdict(claim=claim, verdict=word, summary="")


def test_six_claims():
    assert sorted(CLAIMS) == [1, 2, 3, 4, 5, 6]
