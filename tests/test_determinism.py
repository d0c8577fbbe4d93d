"""The determinism promise of the scoreboard: the same profile and seed on the same machine give the same words.

Everything is computed twice from nothing, into two separate results stores (networks, spectra, sweeps, curvature,
parity), and the verdict words, pooled and per network, must agree, as must the numbers behind them.
"""

from __future__ import annotations

import pytest

from hessian_lib.experiments import scaling as SC
from hessian_lib.experiments import spectra as S


@pytest.mark.slow
def test_same_seed_gives_the_same_words(tmp_path, data_root):
    runs = []
    for name in ("first", "second"):
        store = tmp_path / name
        study = S.run_spectra("smoke", seed=3, data_root=data_root, device="cpu", store=store)
        scaling = SC.run_scaling("smoke", seed=3, data_root=data_root, device="cpu", store=store)
        judged = scaling.judge(n_boot=300)
        runs.append({
            "spectra": {kind: (study.verdict(kind), study.network_verdicts(kind)) for kind in S.KINDS},
            "pooled": study.pooled_table().drop(columns=["per network"]).to_dict(),
            "scaling": (judged.words, judged.per_network),
            "mechanism": {k: (v[0].low, v[0].high, v[1]) for k, v in judged.mechanism.items()},
        })
    assert repr(runs[0]) == repr(runs[1])  # repr: NaN (an unfitted exponent) equals NaN
