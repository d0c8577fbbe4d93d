"""The determinism promise of the scoreboard: the same profile and seed on the same machine give the same words.

Everything is computed twice from nothing, into two separate results stores (networks, spectra, sweeps, curvature,
parity), and the verdict words, pooled and per network, must agree exactly, as must every count and flag. The
numbers behind them agree to float rounding: a curvature operator chooses its product path by timing a trial
(``path="auto"``), so a busy machine may pick the other path, whose products differ in the last bits.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import pytest

from hessian_lib.experiments import scaling as SC
from hessian_lib.experiments import spectra as S
from hessian_lib.experiments import spectra_analysis as SA

#: Numbers may differ by this much, relative (float32 products differ at about 1e-7).
RELATIVE = 1e-4


def _leaves(value: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{where}/{key}")
    elif isinstance(value, (list, tuple)):
        for k, item in enumerate(value):
            yield from _leaves(item, f"{where}[{k}]")
    else:
        yield where, value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= RELATIVE * max(abs(a), abs(b), 1e-12)
    return repr(a) == repr(b)


def test_leaves_compare_words_exactly_and_numbers_to_rounding():
    assert _same("holds", "holds") and not _same("holds", "inconclusive")
    assert _same(1.0, 1.0 + 1e-7) and not _same(1.0, 1.001)
    assert _same(math.nan, math.nan) and not _same(math.nan, 1.0)
    assert not _same(True, False) and not _same(3, 4)


@pytest.mark.slow
def test_same_seed_gives_the_same_words(tmp_path, data_root):
    runs = []
    for name in ("first", "second"):
        store = tmp_path / name
        study = S.run_spectra("smoke", seed=3, data_root=data_root, device="cpu", store=store)
        scaling = SC.run_scaling("smoke", seed=3, data_root=data_root, device="cpu", store=store)
        judged = scaling.judge(n_boot=300)
        runs.append({
            "spectra": {kind: (study.verdict(kind), study.network_verdicts(kind)) for kind in SA.KINDS},
            "pooled": study.pooled_table().drop(columns=["per network"]).to_dict(),
            "scaling": (judged.words, judged.per_network),
            "mechanism": {k: (v[0].low, v[0].high, v[1]) for k, v in judged.mechanism.items()},
        })
    first, second = dict(_leaves(runs[0])), dict(_leaves(runs[1]))
    assert list(first) == list(second)
    differ = {k: (first[k], second[k]) for k in first if not _same(first[k], second[k])}
    assert differ == {}
