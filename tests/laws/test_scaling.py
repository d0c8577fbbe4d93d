"""Tests of hessian_lib.laws.scaling: learning-rate laws and the fits used on measured sweeps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hessian_lib.blas import limit_blas_threads
from hessian_lib.laws import brackets, rmt, scaling


@pytest.fixture(autouse=True, scope="module")
def _single_blas_thread():
    # P <= 1000 eigensolvers gain nothing from threads; on shared cores spinning
    # BLAS threads make them ~10x slower.
    with limit_blas_threads(1):
        yield


# ---------------------------------------------------------------------------
# laws
# ---------------------------------------------------------------------------


def test_sgd_max_lr_and_bad_curvature():
    np.testing.assert_allclose(scaling.sgd_max_lr([1.0, 4.0]), [2.0, 0.5])
    for bad in [0.0, -1.0, [1.0, -2.0], np.inf]:
        with pytest.raises(ValueError):
            scaling.sgd_max_lr(bad)


def test_critical_batch_and_additive_sgd_limits():
    lam, kp = 2.0, 2000.0
    b_star = scaling.critical_batch_size(lam, kp)
    assert b_star == 1000.0
    # exact identity (2/l1)/(1 + B*/B) = 2/(l1 + kappa P / B)
    b = np.array([1.0, 10.0, 1e3, 1e6])
    np.testing.assert_allclose(scaling.sgd_max_lr_additive(b, lam, kp), 2 / (lam + kp / b), rtol=1e-12)
    # half the saturated value at B = B*
    assert float(scaling.sgd_max_lr_additive(b_star, lam, kp)) == pytest.approx(0.5 * 2 / lam)


def test_sgd_additive_linear_then_saturating():
    lam, kp = 1.0, 1e4  # B* = 1e4
    small = np.geomspace(1, 30, 8)  # B <= B*/300
    slope, err = scaling.loglog_slope(small, scaling.sgd_max_lr_additive(small, lam, kp))
    # local slope is 1/(1 + B/B*) >= 0.997 on this range
    assert slope == pytest.approx(1.0, abs=0.005)
    large = np.geomspace(1e6, 1e8, 5)  # B >= 100 B*
    lr = scaling.sgd_max_lr_additive(large, lam, kp)
    np.testing.assert_allclose(lr, 2 / lam, rtol=0.011)  # 1/(1 + B*/B) >= 0.99
    assert scaling.loglog_slope(large, lr)[0] < 0.01


def test_adam_square_root_rule():
    lam, kp = 1.0, 1e4
    small = np.geomspace(1, 30, 8)
    slope, _ = scaling.loglog_slope(small, scaling.adam_max_lr_additive(small, lam, kp))
    # local slope is 0.5/(1 + B/B*) in [0.4985, 0.5]
    assert slope == pytest.approx(0.5, abs=0.003)
    assert float(scaling.adam_max_lr_additive(1e9, lam, kp)) == pytest.approx(2 / np.sqrt(lam), rel=1e-4)


def test_wigner_law_has_no_linear_regime():
    # theta = 1, P sigma^2 = 16 (s = 4/sqrt(B), N infinite): threshold at B = 16
    theta, dim, sigma2 = 1.0, 1000, 0.016
    below = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    lr_below = scaling.sgd_max_lr_wigner(below, theta, dim, sigma2)
    # below threshold lr = 2/(2s) = sqrt(B)/4 exactly: slope 1/2, not 1
    np.testing.assert_allclose(lr_below, np.sqrt(below) / 4)
    assert scaling.loglog_slope(below, lr_below)[0] == pytest.approx(0.5, abs=1e-12)
    above = np.geomspace(16, 1e7, 30)
    lr_above = scaling.sgd_max_lr_wigner(above, theta, dim, sigma2)
    # above threshold lr in [1/theta, 2/theta]: at most a factor 2 change
    assert lr_above.min() == pytest.approx(1.0) and lr_above.max() <= 2.0
    assert lr_above.max() / lr_above.min() <= 2.0
    assert np.all(np.diff(lr_above) > 0)
    # with finite N the noise vanishes at B = N and lr reaches 2/theta
    assert float(scaling.sgd_max_lr_wigner(5000, theta, dim, sigma2, n_data=5000)) == pytest.approx(2.0)


def test_wigner_law_matches_simulated_top_eigenvalue():
    # 2 / simulated top vs the law at P = 600 (outlier sd ~ P^{-1/2}, edge bias
    # ~ -1.2 s P^{-2/3} ~ 1%): 3% tolerance.
    theta, dim, sigma2 = 1.0, 600, 16 / 600
    for b in [2, 64]:
        s = float(rmt.noise_scale(dim, sigma2, b))
        top, _ = rmt.extreme_eigenvalues(rmt.sample_spiked_wigner(dim, [theta], s, seed=b))
        assert 2 / top == pytest.approx(float(scaling.sgd_max_lr_wigner(b, theta, dim, sigma2)), rel=0.03)


def test_mp_law_is_additive_in_p_over_b():
    dim, ell = 1000, 5.0
    b = np.array([20, 50, 100, 250, 1000, 16000])
    lr = scaling.sgd_max_lr_mp(b, ell, dim)
    np.testing.assert_allclose(lr, 2 / rmt.mp_spiked_top(ell, dim / b), rtol=1e-12)
    # above threshold lambda_1 = l + l q/(l - 1): exactly additive in q = P/B,
    # so 2/lambda_1 is of the saturating form with lr_max = 2/l, B* = P/(l - 1)
    big = np.array([500.0, 1000.0, 4000.0])  # l = 5 > 1 + sqrt(q) for q <= 2
    fit = scaling.fit_saturating_lr(big, scaling.sgd_max_lr_mp(big, ell, dim))
    assert fit["lr_max"] == pytest.approx(2 / ell, rel=1e-6)
    assert fit["critical_batch"] == pytest.approx(dim / (ell - 1), rel=1e-6)
    with pytest.raises(ValueError):
        scaling.sgd_max_lr_mp(0, ell, dim)


def test_protocol_scaling_rules():
    np.testing.assert_allclose(scaling.linear_scaled_lr(0.05, 128, [256, 512]), [0.1, 0.2])
    np.testing.assert_allclose(scaling.sqrt_scaled_lr(4e-4, 128, 256), 5.657e-4, rtol=1e-3)
    np.testing.assert_allclose(scaling.sqrt_scaled_lr(1e-3, 128, [512, 2048]), [2e-3, 4e-3])


def test_bad_inputs_raise():
    for call in [
        lambda: scaling.sgd_max_lr_additive(0, 1.0, 1.0),
        lambda: scaling.sgd_max_lr_additive(4, -1.0, 1.0),
        lambda: scaling.adam_max_lr_additive(4, 1.0, -1.0),
        lambda: scaling.critical_batch_size(0.0, 1.0),
        lambda: scaling.sgd_max_lr_wigner(200, 1.0, 100, 1.0, n_data=100),
        lambda: scaling.sgd_max_lr_wigner(8, -1.0, 100, 0.0),  # no positive curvature
        lambda: scaling.loglog_slope([1, 2], [1, -1]),
        lambda: scaling.loglog_slope([1, 2, 3], [1, 2]),
        lambda: scaling.loglog_slope([2, 2, 2], [1, 2, 3]),
        lambda: scaling.fit_inverse_batch_shift([1, 2], [1, 2]),
        lambda: scaling.fit_inverse_batch_shift([4, 4, 4], [1, 2, 3]),
        lambda: scaling.fit_inverse_batch_shift([1, 2, 400], [1, 2, 3], n_data=100),
        lambda: scaling.fit_saturating_lr([1, 2, 4], [0.1, 0.0, 0.3]),
        lambda: scaling.fit_saturating_lr([1, 2], [0.1, 0.2]),
    ]:
        with pytest.raises(ValueError):
            call()


# ---------------------------------------------------------------------------
# fits
# ---------------------------------------------------------------------------


def test_loglog_slope_recovers_power_law_with_stderr():
    rng = np.random.default_rng(0)
    x = np.geomspace(1, 1000, 12)
    y = 3 * x**0.7 * np.exp(0.05 * rng.standard_normal(x.size))
    slope, err = scaling.loglog_slope(x, y)
    assert 0 < err < 0.02  # 0.05 / sqrt(sum (log x - mean)^2) ~ 0.007
    assert abs(slope - 0.7) < 3 * err
    assert np.isnan(scaling.loglog_slope([1, 2], [1, 2])[1])


def _synthetic_shift(rng, a, b, batches, n_data, noise):
    x = 1 / batches - (0 if n_data is None else 1 / n_data)
    return a + b * x + noise * rng.standard_normal(batches.size)


def test_weighted_least_squares_against_closed_form_and_coverage():
    rng = np.random.default_rng(5)
    x = np.linspace(0, 1, 8)
    design = np.stack([np.ones_like(x), x, x**2], axis=1)
    sigma = 0.05 + 0.2 * x
    v = design @ [1.0, -2.0, 0.5] + sigma * rng.standard_normal(x.size)
    fit = scaling.weighted_least_squares(design, v, 1 / sigma**2)
    w = np.diag(1 / sigma**2)
    normal = np.linalg.inv(design.T @ w @ design)
    np.testing.assert_allclose(fit["coef"], normal @ design.T @ w @ v, rtol=1e-10)
    np.testing.assert_allclose(fit["cov_unscaled"], normal, rtol=1e-10)
    np.testing.assert_allclose(fit["cov"], normal * fit["chi2_red"], rtol=1e-10)
    assert fit["dof"] == 5
    # the known-sigma covariance is calibrated: 1-sigma coverage of the slope over 400 data sets
    # (binomial sd 2.3%): accept [0.61, 0.75]
    hits = 0
    for _ in range(400):
        v = design @ [1.0, -2.0, 0.5] + sigma * rng.standard_normal(x.size)
        f = scaling.weighted_least_squares(design, v, 1 / sigma**2)
        hits += abs(f["coef"][1] + 2.0) < np.sqrt(f["cov_unscaled"][1, 1])
    assert 0.61 <= hits / 400 <= 0.75
    for bad in (lambda: scaling.weighted_least_squares(design[:3], v[:3]),             # n = k
                lambda: scaling.weighted_least_squares(np.ones((5, 2)), np.arange(5.0)),  # rank-deficient
                lambda: scaling.weighted_least_squares(design, v[:-1]),
                lambda: scaling.weighted_least_squares(design, v, -np.ones(x.size))):
        with pytest.raises(ValueError):
            bad()


def test_fit_inverse_batch_shift_recovers_parameters():
    batches = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024], dtype=float)
    a, b, n_data = 3.0, 12.0, 2048.0
    fit = scaling.fit_inverse_batch_shift(
        batches, _synthetic_shift(np.random.default_rng(1), a, b, batches, n_data, 0.1), n_data=n_data
    )
    assert abs(fit["a"] - a) < 3 * fit["a_err"]
    assert abs(fit["b"] - b) < 3 * fit["b_err"]
    assert fit["a_err"] < 0.1 and fit["b_err"] < 0.2
    # without noise the fit is exact
    exact = scaling.fit_inverse_batch_shift(batches, a + b / batches)
    assert (exact["a"], exact["b"]) == (pytest.approx(a), pytest.approx(b))


def test_fit_inverse_batch_shift_error_bars_are_calibrated():
    # Over 300 seeded data sets, the 1-sigma interval must cover about 68%;
    # the binomial sd of the coverage is 2.7%, t-distribution (7 dof) lowers the
    # nominal coverage to ~65%: accept [0.58, 0.76].
    batches = np.geomspace(1, 512, 9)
    weights = batches / batches.max()  # noise sd proportional to 1/sqrt(B)
    rng = np.random.default_rng(2)
    hits_a = hits_b = 0
    for _ in range(300):
        noise = 0.2 * rng.standard_normal(batches.size) / np.sqrt(weights)
        v = 1.0 + 5.0 / batches + noise
        fit = scaling.fit_inverse_batch_shift(batches, v, weights=weights)
        hits_a += abs(fit["a"] - 1.0) < fit["a_err"]
        hits_b += abs(fit["b"] - 5.0) < fit["b_err"]
    assert 0.58 <= hits_a / 300 <= 0.76
    assert 0.58 <= hits_b / 300 <= 0.76


def test_fit_saturating_lr_recovers_parameters():
    lr_max, b_star = 0.4, 300.0
    batches = 2.0 ** np.arange(3, 14)  # 8 .. 8192, straddles B*
    clean = lr_max / (1 + b_star / batches)
    fit = scaling.fit_saturating_lr(batches, clean)
    assert fit["lr_max"] == pytest.approx(lr_max, rel=1e-6)
    assert fit["critical_batch"] == pytest.approx(b_star, rel=1e-6)
    # 5% multiplicative noise (a divergence sweep on a sqrt(2) grid is coarser):
    # recovered within 3 of its own error bars, and the error bars are < 15%
    noisy = clean * np.exp(0.05 * np.random.default_rng(4).standard_normal(batches.size))
    fit = scaling.fit_saturating_lr(batches, noisy)
    assert abs(fit["lr_max"] - lr_max) < 3 * fit["lr_max_err"]
    assert abs(fit["critical_batch"] - b_star) < 3 * fit["critical_batch_err"]
    assert fit["lr_max_err"] < 0.15 * lr_max and fit["critical_batch_err"] < 0.15 * b_star
    assert fit["log_residual_rms"] < 0.1


def test_fit_saturating_lr_from_additive_law():
    # the fit inverts sgd_max_lr_additive: lr_max = 2/lambda1, B* = kappa P/lambda1
    batches = np.geomspace(4, 4096, 9)
    fit = scaling.fit_saturating_lr(batches, scaling.sgd_max_lr_additive(batches, 5.0, 1000.0))
    assert fit["lr_max"] == pytest.approx(0.4, rel=1e-6)
    assert fit["critical_batch"] == pytest.approx(200.0, rel=1e-6)


def test_fit_saturating_lr_refuses_unidentifiable_data():
    # all B << B*: pure linear scaling, lr_max runs off to infinity
    with pytest.raises(scaling.FitError, match="not identifiable"):
        scaling.fit_saturating_lr([8, 16, 32, 64], [0.1, 0.2, 0.4, 0.8])
    # all B >> B*: flat, B* drifts below the grid
    flat = scaling.sgd_max_lr_additive(np.array([1e5, 2e5, 4e5]), 1.0, 1.0)
    with pytest.raises(scaling.FitError):
        scaling.fit_saturating_lr([1e5, 2e5, 4e5], flat)
    # the check can be switched off; lr_max is then still well determined
    fit = scaling.fit_saturating_lr([1e5, 2e5, 4e5], flat, range_factor=None)
    assert fit["lr_max"] == pytest.approx(2.0, rel=1e-6)


# ---------------------------------------------------------------------------
# fits to brackets
# ---------------------------------------------------------------------------


RATIO = 2 ** 0.25  # the final bracket the chapter asks for


def _brackets_around(truth: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Final brackets of factor RATIO with the true value uniformly (in log) inside each."""
    lower = truth * RATIO ** (-rng.random(truth.shape))
    return lower, lower * RATIO


def test_slope_interval_covers_the_true_slope():
    b = np.array([8, 16, 32, 64, 128, 256], dtype=float)
    covered, widths = 0, []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        slope = rng.uniform(0.3, 1.2)
        lower, upper = _brackets_around(0.01 * b**slope, rng)
        interval = brackets.bootstrap_slope(b[:3], lower[:3], upper[:3], n_boot=2000, seed=seed)
        covered += interval.contains(slope)
        widths.append(interval.high - interval.low)
    assert covered >= 90
    assert np.median(widths) < 0.35  # narrow enough to tell a slope of 1 from one of 0.5


def test_slope_interval_over_seeds_covers_the_true_slope():
    """With several sweeps, the seeds are resampled too, so per-sweep noise beyond the bracket is covered."""
    b = np.array([8, 16, 32, 64, 128, 256], dtype=float)
    covered = 0
    for seed in range(100):
        rng = np.random.default_rng(1000 + seed)
        truth = 0.01 * b**0.5 * np.exp(0.15 * rng.standard_normal((10, b.size)))
        lower, upper = _brackets_around(truth, rng)
        covered += brackets.bootstrap_slope(b, lower, upper, n_boot=2000, seed=seed).contains(0.5)
    assert covered >= 90


def test_saturating_fit_recovers_the_critical_batch_size():
    b = np.array([8, 16, 32, 64, 128, 256, 512], dtype=float)
    lower, upper = _brackets_around(0.4 / (1 + 60.0 / b), np.random.default_rng(3))
    fit = brackets.fit_saturating_brackets(b, lower, upper, n_boot=1000)
    assert fit["critical_batch"].contains(60.0) and fit["lr_inf"].contains(0.4)
    assert fit["passes"].all() and not fit["b_star_at_bound"]
    assert fit["critical_batch"].high / fit["critical_batch"].low < 3
    low, high = fit["consistent_critical_batch"]
    assert low <= 60.0 <= high
    assert np.all((lower <= fit["through"] * (1 + 1e-9)) & (fit["through"] <= upper * (1 + 1e-9)))


def test_saturating_fit_flags_data_without_saturation():
    b = np.array([8, 16, 32, 64, 128, 256], dtype=float)
    lower, upper = _brackets_around(1e-3 * b, np.random.default_rng(4))
    fit = brackets.fit_saturating_brackets(b, lower, upper, n_boot=500)
    assert fit["b_star_at_bound"] and fit["passes"].all()
    bent = brackets.fit_saturating_brackets(b, lower * [1, 1, 1, 1, 1, 3], upper * [1, 1, 1, 1, 1, 3], n_boot=200)
    assert not bent["passes"].all() and math.isnan(bent["consistent_critical_batch"][0])


def test_square_root_law_fit():
    b = np.array([8, 16, 32, 64, 128, 256], dtype=float)
    lower, upper = _brackets_around(3e-4 * np.sqrt(b), np.random.default_rng(5))
    fit = brackets.fit_power_brackets(b, lower, upper, 0.5, n_boot=1000)
    assert fit["coefficient"].contains(3e-4) and fit["passes"].all()
    assert not brackets.fit_power_brackets(b, lower, upper, 1.0, n_boot=100)["passes"].all()


@pytest.mark.parametrize("bad", [dict(lower=[1, 2, np.nan], upper=[2, 3, 4]), dict(lower=[1, 2, 3], upper=[2, 3, 3])])
def test_bracket_fits_refuse_bad_brackets(bad):
    with pytest.raises(ValueError, match="bracket"):
        brackets.bootstrap_slope([1, 2, 4], **bad)
