"""Tests of hessian_lib.laws.rmt: densities, outlier laws and samplers against simulation.

Simulations use P <= 1000 and a few seeded repeats. Finite-P effects that set
the tolerances: a separated outlier fluctuates by O(P^{-1/2}) (O(B^{-1/2}) for
the Marchenko-Pastur outlier), a bulk edge by O(P^{-2/3}) with a negative
Tracy-Widom mean shift, and right at the BBP threshold by O(P^{-1/3}).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate

from hessian_lib.blas import limit_blas_threads
from hessian_lib.laws import rmt


@pytest.fixture(autouse=True, scope="module")
def _single_blas_thread():
    # P <= 1000 eigensolvers gain nothing from threads; on shared cores spinning
    # BLAS threads make them ~10x slower.
    with limit_blas_threads(1):
        yield


# ---------------------------------------------------------------------------
# densities
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("s", [0.3, 1.0, 4.0])
def test_semicircle_integrates_to_one_with_variance_s2(s):
    lo, hi = rmt.semicircle_edges(s)
    assert (lo, hi) == (-2 * s, 2 * s)
    mass, _ = integrate.quad(rmt.semicircle_density, lo, hi, args=(s,))
    second, _ = integrate.quad(lambda x: x * x * rmt.semicircle_density(x, s), lo, hi)
    # quad is accurate to ~1e-8 on this smooth-inside, sqrt-at-edge integrand
    assert mass == pytest.approx(1.0, abs=1e-6)
    assert second == pytest.approx(s * s, rel=1e-6)
    assert rmt.semicircle_density(np.array([lo - 1e-9, hi + 1.0]), s).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("q", [0.1, 0.5, 1.0, 2.0, 10.0])
@pytest.mark.parametrize("sigma2", [1.0, 2.5])
def test_marchenko_pastur_mass_and_moments(q, sigma2):
    lo, hi = rmt.marchenko_pastur_edges(q, sigma2)
    assert lo == pytest.approx(sigma2 * (1 - np.sqrt(q)) ** 2)
    assert hi == pytest.approx(sigma2 * (1 + np.sqrt(q)) ** 2)
    f = lambda x, k: x**k * rmt.marchenko_pastur_density(x, q, sigma2)  # noqa: E731
    # the 1/x singularity at lo = 0 (q = 1) is integrable: give quad a generous limit
    mass, _ = integrate.quad(f, lo, hi, args=(0,), limit=200)
    m1, _ = integrate.quad(f, lo, hi, args=(1,), limit=200)
    m2, _ = integrate.quad(f, lo, hi, args=(2,), limit=200)
    # continuous part carries min(1, 1/q); the atom at 0 adds nothing to moments:
    # (1/P) tr S -> sigma2, (1/P) tr S^2 -> sigma2^2 (1 + q)
    assert mass == pytest.approx(min(1.0, 1.0 / q), rel=1e-4)
    assert m1 == pytest.approx(sigma2, rel=1e-4)
    assert m2 == pytest.approx(sigma2**2 * (1 + q), rel=1e-4)


def test_marchenko_pastur_density_matches_simulated_spectrum():
    # P = 400, B = 800 (q = 1/2): the fraction of eigenvalues below the median
    # of the law agrees to O(1/P) (eigenvalue rigidity); allow 0.03.
    dim, batch = 400, 800
    q = dim / batch
    ev = np.linalg.eigvalsh(rmt.sample_spiked_wishart(dim, batch, 1.0, seed=3))
    lo, hi = rmt.marchenko_pastur_edges(q)
    for cut in [lo + 0.25 * (hi - lo), lo + 0.5 * (hi - lo)]:
        expected, _ = integrate.quad(rmt.marchenko_pastur_density, lo, cut, args=(q,))
        assert np.mean(ev < cut) == pytest.approx(expected, abs=0.03)


def test_bad_density_inputs():
    with pytest.raises(ValueError):
        rmt.semicircle_density(0.0, 0.0)
    with pytest.raises(ValueError):
        rmt.marchenko_pastur_density(1.0, -1.0)
    with pytest.raises(ValueError):
        rmt.marchenko_pastur_edges(1.0, sigma2=0.0)


# ---------------------------------------------------------------------------
# noise scale
# ---------------------------------------------------------------------------


def test_noise_scale_values_and_vectorised():
    s = rmt.noise_scale(1000, 0.016, [1, 4, 16])
    np.testing.assert_allclose(s, [4.0, 2.0, 1.0], rtol=1e-12)
    s_n = rmt.noise_scale(100, 2.0, np.array([10, 50, 100]), n_data=100)
    np.testing.assert_allclose(s_n, np.sqrt(200 * (1 / np.array([10, 50, 100]) - 1 / 100)))
    assert s_n[-1] == 0.0  # the fluctuation vanishes at B = N
    exact = rmt.noise_scale(100, 2.0, 10, n_data=100, exact=True)
    assert float(exact) == pytest.approx(np.sqrt(200 * 90 / (10 * 99)))


@pytest.mark.parametrize("batch", [0, -1, 101, [10, 200]])
def test_noise_scale_rejects_bad_batch(batch):
    with pytest.raises(ValueError):
        rmt.noise_scale(10, 1.0, batch, n_data=100)


# ---------------------------------------------------------------------------
# spiked Wigner: formulas
# ---------------------------------------------------------------------------


def test_wigner_outlier_formula_and_edges():
    out = rmt.wigner_outlier([2.0, 0.5, -2.0, -0.5, 0.0], 1.0)
    np.testing.assert_allclose(out, [2.5, 2.0, -2.5, -2.0, 2.0])
    # continuous at the threshold, broadcast over s
    s = np.array([[0.5], [1.0], [4.0]])
    got = rmt.wigner_outlier(np.array([1.0, -1.0]), s)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got[:, 0], [1.25, 2.0, 8.0])
    np.testing.assert_allclose(got[:, 1], [-1.25, -2.0, -8.0])
    assert float(rmt.wigner_bbp_threshold(0.7)) == 0.7
    with pytest.raises(ValueError):
        rmt.wigner_outlier(1.0, -0.1)


def test_wigner_extremes_prediction():
    top, bottom = rmt.wigner_extremes([1.0, 3.0, -1.5], 1.0)
    assert float(top) == pytest.approx(3 + 1 / 3)
    assert float(bottom) == pytest.approx(-1.5 - 1 / 1.5)
    top, bottom = rmt.wigner_extremes([0.5], [1.0, 0.1])
    np.testing.assert_allclose(top, [2.0, 0.5 + 0.02])
    np.testing.assert_allclose(bottom, [-2.0, -0.2])
    top, bottom = rmt.wigner_extremes([], 2.0)
    assert (float(top), float(bottom)) == (4.0, -4.0)


# ---------------------------------------------------------------------------
# spiked Wigner: simulation
# ---------------------------------------------------------------------------


def _mean_extremes(dim, spikes, s, seeds):
    vals = np.array([rmt.extreme_eigenvalues(rmt.sample_spiked_wigner(dim, spikes, s, seed=k)) for k in seeds])
    return vals.mean(axis=0)


def test_wigner_check_table_from_paper():
    # PAPER.md: P = 1000, theta = 1, s = 4/sqrt(B). Per-draw sd measured over 20
    # seeds is <= 1.5% of the prediction (largest at B = 64, an O(P^{-1/2})
    # outlier), the edge bias at B = 1, 4 is about -0.6% (Tracy-Widom mean,
    # -1.2 s P^{-2/3}). Mean of 3 draws (sd <= 0.9%): tolerance 3% is > 3 sd + bias.
    batches = [1, 4, 16, 64, 256, 1024]
    predicted = [8.0, 4.0, 2.0, 1.25, 1.0625, 1.015625]
    for b, pred in zip(batches, predicted):
        s = 4 / np.sqrt(b)
        assert float(rmt.wigner_outlier(1.0, s)) == pytest.approx(pred)
        top, _ = _mean_extremes(1000, [1.0], s, seeds=range(3))
        assert top == pytest.approx(pred, rel=0.03), (b, top, pred)


def test_below_threshold_top_sticks_to_edge_not_outlier_formula():
    # theta = 1 < s = 2: the naive theta + s^2/theta = 5 is wrong; the top is
    # the edge 2s = 4 (edge fluctuations ~ s P^{-2/3} = 0.02 at P = 1000).
    top, bottom = _mean_extremes(1000, [1.0], 2.0, seeds=range(2))
    assert top == pytest.approx(4.0, abs=0.1)
    assert bottom == pytest.approx(-4.0, abs=0.1)


def test_above_threshold_outlier_separates_from_bulk():
    # theta = 1 > s = 0.5: outlier 1.25, edge at 1.0; outlier sd ~ 0.02 (P = 1000).
    dim, s = 1000, 0.5
    ev = np.linalg.eigvalsh(rmt.sample_spiked_wigner(dim, [1.0], s, seed=11))
    assert ev[-1] == pytest.approx(1.25, abs=0.06)
    assert ev[-2] == pytest.approx(2 * s, abs=0.05)  # the next one is the bulk edge
    assert ev[-1] - ev[-2] > 0.15


def test_negative_spike_sets_bottom_end():
    # spikes 1 (top) and -1.5 (bottom), s = 0.5: predicted 1.25 and -1.6667.
    # Outlier sd ~ O(P^{-1/2}) ~ 0.02 per draw; mean of 3 draws, tolerance 0.05.
    spikes, s = [1.0, -1.5], 0.5
    top, bottom = _mean_extremes(1000, spikes, s, seeds=range(3))
    pred_top, pred_bottom = rmt.wigner_extremes(spikes, s)
    assert top == pytest.approx(float(pred_top), abs=0.05)
    assert bottom == pytest.approx(float(pred_bottom), abs=0.05)
    assert bottom < -2 * s - 0.5  # well outside the bulk


def test_semicircle_matches_goe_spectrum():
    # fraction of eigenvalues in [0, s]: rigidity gives O(1/P) errors; allow 0.02.
    dim, s = 600, 1.5
    ev = np.linalg.eigvalsh(rmt.sample_spiked_wigner(dim, [], s, seed=5))
    expected, _ = integrate.quad(rmt.semicircle_density, 0.0, s, args=(s,))
    assert np.mean((ev > 0) & (ev < s)) == pytest.approx(expected, abs=0.02)
    # (1/P) tr W^2 = s^2 (1 + 1/P) for GOE: relative sd ~ sqrt(2)/P
    assert np.mean(ev**2) == pytest.approx(s * s, rel=0.01)


def test_batch_hessian_relaxes_with_batch_size():
    # Claim 1 in the toy model: |extremes| shrink as B grows, reach H_emp at B = N.
    dim, n, sigma2, spikes = 400, 4096, 0.01, [1.0, -0.8]
    tops, bottoms = [], []
    for b in [1, 16, 256, 4096]:
        top, bottom = rmt.extreme_eigenvalues(rmt.sample_batch_hessian(dim, spikes, sigma2, b, n, seed=b))
        tops.append(top)
        bottoms.append(bottom)
    assert np.all(np.diff(tops) < 0) and np.all(np.diff(bottoms) > 0)
    assert tops[-1] == pytest.approx(1.0, abs=1e-12)
    assert bottoms[-1] == pytest.approx(-0.8, abs=1e-12)


# ---------------------------------------------------------------------------
# spiked Marchenko-Pastur
# ---------------------------------------------------------------------------


def test_mp_spiked_top_formula():
    # PAPER.md predictions at P = 1000, l = 5, sigma2 = 1 (rounded there)
    b = np.array([20, 50, 100, 250, 1000, 16000])
    pred = rmt.mp_spiked_top(5.0, 1000 / b)
    np.testing.assert_allclose(pred, [65.1, 29.9, 17.5, 10.0, 6.25, 5.08], atol=0.05)
    assert float(rmt.mp_bbp_threshold(4.0)) == 3.0
    # continuity at the threshold and sigma2 scaling
    q = 4.0
    assert float(rmt.mp_spiked_top(3.0 + 1e-12, q)) == pytest.approx(float(rmt.mp_spiked_top(3.0, q)))
    assert float(rmt.mp_spiked_top(5.0, 1.0, sigma2=2.0)) == pytest.approx(12.5)
    with pytest.raises(ValueError):
        rmt.mp_spiked_top(-1.0, 1.0)


def test_mp_spiked_top_matches_simulation():
    # P = 500 with the paper's ratios q = 50, 20, 10, 4, 1, 1/8. The outlier sd
    # per draw is sqrt(2 l^2 (1 - q/(l-1)^2) / B), up to ~7% of the value at
    # B = 125 (1.2% at B = 4000); edges carry a -3% Tracy-Widom bias at B = 10
    # (edge sd ~3% per draw). With 12 draws at the edge (sd of the mean 0.9%)
    # a 5% tolerance leaves >= 2.4 sd after the bias; 6 draws for the outliers
    # (2 at the costly B = 4000) leave >= 2.6 sd.
    dim, ell = 500, 5.0
    for b, reps in [(10, 12), (25, 12), (50, 6), (125, 6), (500, 6), (4000, 2)]:
        pred = float(rmt.mp_spiked_top(ell, dim / b))
        tops = [rmt.extreme_eigenvalues(rmt.sample_spiked_wishart(dim, b, ell, seed=k))[0] for k in range(reps)]
        assert np.mean(tops) == pytest.approx(pred, rel=0.05), (b, np.mean(tops), pred)


def test_wishart_sampler_covariance():
    # B >> P: S -> population covariance; entry error ~ sqrt(2/B) * sigma2 * l
    s = rmt.sample_spiked_wishart(5, 20000, 4.0, sigma2=2.0, seed=0)
    np.testing.assert_allclose(s, np.diag([8.0, 2, 2, 2, 2]), atol=0.2)


# ---------------------------------------------------------------------------
# samplers: reproducibility and shapes
# ---------------------------------------------------------------------------


def test_samplers_are_seeded():
    a = rmt.sample_spiked_wigner(50, [1.0], 0.5, seed=7)
    assert a.shape == (50, 50) and a.dtype == np.float64
    np.testing.assert_array_equal(a, a.T)
    np.testing.assert_array_equal(a, rmt.sample_spiked_wigner(50, [1.0], 0.5, seed=7))
    assert not np.array_equal(a, rmt.sample_spiked_wigner(50, [1.0], 0.5, seed=8))
    w = rmt.sample_spiked_wishart(30, 10, 3.0, seed=1)
    assert w.shape == (30, 30) and w.dtype == np.float64
    np.testing.assert_array_equal(w, rmt.sample_spiked_wishart(30, 10, 3.0, seed=1))
    assert not np.array_equal(w, rmt.sample_spiked_wishart(30, 10, 3.0, seed=2))
    assert np.linalg.matrix_rank(w) == 10  # B < P: rank B (the atom at 0)
    h = rmt.sample_batch_hessian(40, [1.0], 0.1, 8, 100, seed=3)
    np.testing.assert_array_equal(h, rmt.sample_batch_hessian(40, [1.0], 0.1, 8, 100, seed=3))


def test_goe_entry_variances():
    # off-diagonal variance s^2/P, diagonal 2 s^2/P; with ~1.2e5 off-diagonal
    # entries the relative sd of the estimate is ~0.4%, diagonal (500) ~6%.
    dim, s = 500, 2.0
    w = rmt.sample_spiked_wigner(dim, [], s, seed=0)
    off = w[np.triu_indices(dim, 1)]
    assert np.var(off) * dim / s**2 == pytest.approx(1.0, rel=0.02)
    assert np.var(np.diag(w)) * dim / s**2 == pytest.approx(2.0, rel=0.25)


def test_sampler_and_extremes_bad_inputs():
    with pytest.raises(ValueError):
        rmt.sample_spiked_wigner(2, [1.0, 2.0, 3.0], 1.0, seed=0)
    with pytest.raises(ValueError):
        rmt.sample_spiked_wigner(0, [], 1.0, seed=0)
    with pytest.raises(ValueError):
        rmt.sample_spiked_wishart(10, 0, 2.0, seed=0)
    with pytest.raises(ValueError):
        rmt.sample_spiked_wishart(10, 5, 0.0, seed=0)
    with pytest.raises(ValueError):
        rmt.extreme_eigenvalues(np.ones((2, 3)))
    with pytest.raises(ValueError):
        rmt.extreme_eigenvalues(np.array([[0.0, 1.0], [0.0, 0.0]]))
    assert rmt.extreme_eigenvalues(np.diag([3.0, -1.0, 2.0])) == (3.0, -1.0)


# ---------------------------------------------------------------------------
# outliers from a measured per-sample noise
# ---------------------------------------------------------------------------


def test_directional_outlier_solves_its_self_consistent_equation():
    theta, x, s2 = np.array([2.0, -2.0, 0.5]), np.array([0.1, 0.1, 0.3]), np.array([3.0, 3.0, 1.0])
    lam = rmt.directional_outlier(theta, x, s2)
    np.testing.assert_allclose(lam, theta + x * s2 / lam, rtol=1e-12)   # lambda = theta + x s_v^2 / lambda
    assert lam[0] > theta[0] and lam[1] < theta[1] and lam[1] == pytest.approx(-lam[0])
    # small shift, isotropic noise: the Wigner outlier theta + s^2/theta to second order
    small = rmt.directional_outlier(3.0, 1e-4, 2.0)
    assert small == pytest.approx(float(rmt.wigner_outlier(3.0, np.sqrt(2e-4))), rel=1e-7)
    assert rmt.directional_outlier(1.5, 0.0, 5.0) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        rmt.directional_outlier(1.0, -0.1, 1.0)


def test_rank_deficient_outlier_closed_forms():
    dim, rank, s1 = 1000, 9, 2.0
    x = np.array([0.5, 0.1, 0.01])
    additive = s1 * x * np.sqrt(dim / rank)
    above = rmt.rank_deficient_outlier(3.0, s1, x, dim, rank)          # theta = 3 > s1 sqrt(x) for every x
    np.testing.assert_allclose(above, 3.0 + additive + s1**2 * x / 3.0, rtol=1e-12)
    below = rmt.rank_deficient_outlier(0.5, s1, x[:2], dim, rank)       # 0.5 < s1 sqrt(x): the edge
    np.testing.assert_allclose(below, 2 * s1 * np.sqrt(x[:2]) + additive[:2], rtol=1e-12)
    np.testing.assert_allclose(rmt.rank_deficient_outlier(-3.0, s1, x, dim, rank), -above)
    # continuous at the BBP threshold theta = s1 sqrt(x)
    th = s1 * np.sqrt(0.1)
    assert rmt.rank_deficient_outlier(th * (1 + 1e-9), s1, 0.1, dim, rank) == pytest.approx(
        float(rmt.rank_deficient_outlier(th * (1 - 1e-9), s1, 0.1, dim, rank)), rel=1e-6)
    with pytest.raises(ValueError):
        rmt.rank_deficient_outlier(1.0, s1, 0.0, dim, rank)


@pytest.mark.parametrize("batch_size", [4, 16, 64])
def test_rank_deficient_outlier_matches_its_model_by_simulation(batch_size):
    # The model: R = r/x Gaussian rank-one terms with covariance sigma_w^2 I + theta e1 e1^T,
    # sigma_w^2 = s1 sqrt(r/P), centred by sigma_w^2 I. Its Frobenius noise per dimension is s1^2 x
    # (up to the spike's 2 theta/(P sigma_w^2) ~ 1% and 1/P), and its top eigenvalue follows the
    # formula: within 3 standard errors of the mean over 4 samples, plus 2% for the O(1/R) bias of
    # a finite number of terms (R = 80 at B = 4).
    dim, rank, s1, theta = 800, 20, 2.0, 2.5
    x = 1.0 / batch_size
    r_terms = int(round(rank / x))
    sigma2 = s1 * np.sqrt(rank / dim)
    tops, fro = [], []
    for rep in range(4):
        rng = np.random.default_rng([batch_size, rep])
        a = rng.standard_normal((r_terms, dim)) * np.sqrt(sigma2)
        a[:, 0] += rng.standard_normal(r_terms) * np.sqrt(theta)
        s = a.T @ a / r_terms
        cov = sigma2 * np.eye(dim)
        cov[0, 0] += theta
        fro.append(np.sum((s - cov) ** 2) / dim)
        tops.append(rmt.extreme_eigenvalues(s - sigma2 * np.eye(dim))[0])
    assert np.mean(fro) == pytest.approx(s1**2 * x, rel=0.1)
    predicted = float(rmt.rank_deficient_outlier(theta, s1, x, dim, rank))
    assert abs(np.mean(tops) - predicted) <= 3 * np.std(tops, ddof=1) / 2 + 0.02 * predicted
    # and it is not the Wigner outlier: the additive shift s1 x sqrt(P/r) is what separates them
    assert predicted - float(rmt.wigner_outlier(theta, s1 * np.sqrt(x))) == pytest.approx(s1 * x * np.sqrt(dim / rank))
