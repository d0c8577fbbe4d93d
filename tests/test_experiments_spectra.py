"""Library code of the Spectra chapter: fits, the direct noise estimate and the verdict logic."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from hessian_lib.curvature import dense_hessian
from hessian_lib.experiments import spectra as S


def test_linear_form_is_recovered_and_preferred_for_an_outlier_law():
    rng = np.random.default_rng(0)
    b = np.array([8, 16, 32, 64, 128, 256, 512])
    n = 1000
    truth = 2.0 + 30.0 * (1 / b - 1 / n)
    values = truth[:, None] * (1 + 0.01 * rng.standard_normal((len(b), 3)))
    fit = S.fit_batch_dependence(b, values, n, empirical=2.0)
    assert fit["a"] == pytest.approx(2.0, rel=0.05) and fit["b"] == pytest.approx(30.0, rel=0.05)
    assert fit["linear_rms"] < fit["sqrt_rms"]


def test_sqrt_form_is_preferred_for_a_bulk_edge_law():
    b = np.array([8, 16, 32, 64, 128, 256, 512])
    n = 1000
    values = (0.1 + 2.0 * np.sqrt(1 / b - 1 / n))[:, None] * np.ones((1, 2))
    fit = S.fit_batch_dependence(b, values, n, empirical=0.1)
    assert fit["sqrt_rms"] < fit["linear_rms"]
    assert fit["sqrt_slope"] == pytest.approx(2.0, rel=1e-6)


def test_direct_noise_scale_matches_dense_per_sample_hessians():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(12, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    loss = nn.CrossEntropyLoss()
    full = dense_hessian(model, loss, (x, y))
    per = torch.stack([dense_hessian(model, loss, (x[i:i + 1], y[i:i + 1])) for i in range(12)])
    p = full.shape[0]
    exact = float(((per - full) ** 2).sum(dim=(1, 2)).mean() / p) ** 0.5
    est = S.per_sample_noise_scale(model, x, y, "hessian", samples=12, probes=400, chunk_size=5, seed=1)
    # 400 Gaussian probes: relative error of ||A||_F^2 about sqrt(2/400) = 7%, of s1 about half that
    assert est["s1"] == pytest.approx(exact, rel=0.08)
    assert est["dim"] == p


def _checks(exceeds, rho, lin, sq, matrix="hessian"):
    return pd.DataFrame([{"matrix": matrix, "exceeds": exceeds, "spearman": rho, "linear rms": lin, "sqrt rms": sq}])


def test_verdict_logic():
    assert S.verdict(_checks(1.0, -1.0, 0.01, 0.05), "hessian") == "holds"
    assert S.verdict(_checks(1.0, -1.0, 0.05, 0.01), "hessian") == "partly"
    assert S.verdict(_checks(0.5, -1.0, 0.01, 0.05), "hessian") == "does not hold"
    assert S.verdict(_checks(0.85, -0.9, 0.01, 0.05), "hessian") == "partly"   # one batch size below, ordering kept
    assert S.verdict(_checks(0.85, -0.3, 0.01, 0.05), "hessian") == "does not hold"
    assert S.verdict(_checks(1.0, 0.2, 0.01, 0.05), "hessian") == "does not hold"
    assert S.verdict(_checks(1.0, -1.0, 0.01, 0.05), "ggn") == "not measured"


def _fake_result(theta, s1, s2, b, n):
    sp = {"batch_sizes": np.asarray(b), "empirical_top": theta, "empirical_bottom": -theta}
    return S.SpectraResult(train=None, spectra={(1, "hessian"): sp},
                           noise={(1, "hessian"): {"s1": s1, "s2_top": s2, "s2_bottom": s2}}, dim=10, n_data=n)


def test_predictions_reduce_to_the_wigner_outlier_for_small_isotropic_noise():
    b = np.array([100, 1000])
    r = _fake_result(theta=2.0, s1=0.5, s2=0.25, b=b, n=10**9)
    x = 1 / b
    wigner = 2.0 + 0.25 * x / 2.0
    np.testing.assert_allclose(S.wigner_prediction(r, 1, "top"), wigner, rtol=1e-6)
    # directional with s_v^2 = s1^2: the self-consistent root agrees to second order in the shift
    np.testing.assert_allclose(S.directional_prediction(r, 1, "top"), wigner, rtol=1e-3)
    np.testing.assert_allclose(S.directional_prediction(r, 1, "bottom"), -wigner, rtol=1e-3)


def test_wigner_prediction_sticks_to_the_edge_below_threshold():
    r = _fake_result(theta=0.1, s1=4.0, s2=16.0, b=np.array([4]), n=10**9)
    np.testing.assert_allclose(S.wigner_prediction(r, 1, "top"), [2 * 4.0 * 0.5])
