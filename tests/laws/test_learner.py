"""The SLQ learner's formulas: extremes of a Ritz spectrum, the two tunings, and the authors' defects in them.

The quadratics with a known spectrum are those of ``tests/quadratics.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from quadratics import LAM, MU, quadratic

from hessian_lib.curvature import MatrixOperator, lanczos
from hessian_lib.laws.learner import BULK_WEIGHT, extremes, gd_hyperparameters, polyak_hyperparameters

# ----------------------------------------------------------------------------- extremes


def test_extremes_on_a_known_spectrum_with_negative_curvature():
    matrix, eigenvalues, _ = quadratic()
    result = lanczos(MatrixOperator(matrix), 40, seed=3)
    assert result.breakdown  # 16 distinct eigenvalues: Lanczos finds them exactly
    lam, mu = extremes(result.ritz_values, result.ritz_weights)
    assert lam == pytest.approx(LAM, rel=1e-9) and mu == pytest.approx(MU, rel=1e-9)


def test_bulk_rule_boundaries():
    theta = np.array([0.0, 0.1, -0.2, 5.0, 1.0])
    gamma = np.array([0.3, 0.2, 0.1, 0.1, 0.3])  # by |theta|: 0 (.3), .1 (.2), -.2 (.1), 1 (.3), 5 (.1)
    # exactly half the weight in the two smallest: they are the bulk, mu is the next positive value
    assert extremes(theta, gamma, bulk_weight=0.5) == (5.0, 1.0)
    # a hair more than half needs the third (negative) value too: still mu = 1
    assert extremes(theta, gamma, bulk_weight=0.5 + 1e-6) == (5.0, 1.0)
    # less than the first weight: only the zero is dropped, mu = 0.1
    assert extremes(theta, gamma, bulk_weight=0.3) == (5.0, 0.1)
    # nothing dropped: the smallest positive value
    assert extremes(theta, gamma, bulk_weight=0.0) == (5.0, 0.1)
    # the largest |theta| is never dropped: mu = lambda_max when the bulk takes everything else
    assert extremes(theta, gamma, bulk_weight=0.95) == (5.0, 5.0)
    # weights are normalised (stacked runs), and None means equal weights
    assert extremes(theta, 3 * gamma) == extremes(theta, gamma)
    assert extremes(theta) == (5.0, 1.0)  # equal weights: 0, .1, -.2 make 60% >= 50%
    assert BULK_WEIGHT == 0.5


def test_median_rule():
    theta = np.array([-3.0, 0.01, 0.2, 1.0, 8.0])
    assert extremes(theta, np.full(5, 0.2), mu_rule="median") == (8.0, 1.0)


def test_extremes_refuses_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        extremes(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="finite"):
        extremes(np.array([1.0, np.nan]), np.ones(2))
    with pytest.raises(ValueError, match="non-negative"):
        extremes(np.array([1.0, 2.0]), np.array([1.0, -0.5]))
    with pytest.raises(ValueError, match="zero"):
        extremes(np.zeros(3))
    with pytest.raises(ValueError, match="no positive Ritz value"):
        extremes(np.array([0.0, -1.0, -4.0]), np.array([0.6, 0.2, 0.2]))
    with pytest.raises(ValueError, match="mu_rule"):
        extremes(np.ones(2), mu_rule="mean")
    with pytest.raises(ValueError, match="bulk_weight"):
        extremes(np.ones(2), bulk_weight=1.0)


# ----------------------------------------------------------------------------- the two tunings


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "x"])
def test_hyperparameters_refuse_bad_curvature(bad):
    for fn in (gd_hyperparameters, polyak_hyperparameters):
        with pytest.raises(ValueError, match="lambda_max.*" + re_value(bad)):
            fn(bad, 1.0)
        with pytest.raises(ValueError, match="mu.*" + re_value(bad)):
            fn(10.0, bad)


def re_value(value) -> str:
    import re

    return re.escape(repr(value))


def test_mu_above_lambda_max_is_refused():
    with pytest.raises(ValueError, match="must not exceed"):
        polyak_hyperparameters(1.0, 2.0)


def test_formulas():
    assert gd_hyperparameters(LAM, MU) == pytest.approx(2 / (LAM + MU), rel=1e-15)
    alpha, beta = polyak_hyperparameters(100.0, 4.0)
    assert alpha == pytest.approx(4 / 12**2, rel=1e-15) and beta == pytest.approx((8 / 12) ** 2, rel=1e-15)
    assert polyak_hyperparameters(3.0, 3.0) == pytest.approx((1 / 3, 0.0))


# ----------------------------------------------------------------------------- the authors' defects


def test_defect_wrong_sort_axis_does_not_fold_in_negative_curvature():
    """Ritz values of two Lanczos runs stacked as [runs, m] (each row ascending, as eigh returns them).

    Sorting |theta| along the runs axis and reading the first column gives the magnitude of the most
    negative Ritz value, not the largest curvature; ``extremes`` compares every value at once.
    """
    theta = np.array([[-6.0, -0.1, 0.0, 2.0, 9.0], [-5.0, -0.1, 0.0, 3.0, 10.0]])
    gamma = np.array([[0.05, 0.2, 0.2, 0.05, 0.05], [0.05, 0.2, 0.1, 0.05, 0.05]])
    defective = np.sort(np.abs(theta), axis=0)[-1][0]
    assert defective == 6.0  # the wrong-axis answer: negative curvature folded in
    lam, mu = extremes(theta, gamma)
    assert lam == 10.0 and mu == 2.0
    order = np.random.default_rng(0).permutation(theta.size)  # any order of (value, weight) pairs
    assert extremes(theta.reshape(-1)[order], gamma.reshape(-1)[order]) == (lam, mu)
    # a negative Ritz value becomes lambda_max only when its magnitude really is the largest
    assert extremes(np.array([-12.0, 0.0, 3.0]), np.array([0.1, 0.8, 0.1]))[0] == 12.0


def test_defect_polyak_alpha_uses_sqrt_mu_not_mu():
    """The script wrote 4 / (sqrt(lambda_max) + mu)^2. The tuned heavy ball satisfies
    sqrt(alpha mu) + sqrt(alpha lambda_max) = 2 and beta = (1 - sqrt(alpha mu))^2: both fail with +mu."""
    lam, mu = 100.0, 4.0
    alpha, beta = polyak_hyperparameters(lam, mu)
    assert math.sqrt(alpha * mu) + math.sqrt(alpha * lam) == pytest.approx(2.0, rel=1e-12)
    assert beta == pytest.approx((1 - math.sqrt(alpha * mu)) ** 2, rel=1e-12)
    defective = 4 / (math.sqrt(lam) + mu) ** 2
    assert abs(math.sqrt(defective * mu) + math.sqrt(defective * lam) - 2.0) > 0.1
    assert alpha != pytest.approx(defective, rel=0.1)


@pytest.mark.parametrize("scale", [1e-3, 7.0, 1e4])
def test_defect_alpha_is_a_step_size(scale):
    """alpha = sqrt(mu / lambda_max) is dimensionless: a step size must scale as 1/curvature."""
    lam, mu = 40.0, 0.4
    alpha_gd = gd_hyperparameters(lam, mu)
    alpha_p, beta_p = polyak_hyperparameters(lam, mu)
    assert gd_hyperparameters(scale * lam, scale * mu) == pytest.approx(alpha_gd / scale, rel=1e-12)
    scaled_alpha, scaled_beta = polyak_hyperparameters(scale * lam, scale * mu)
    assert scaled_alpha == pytest.approx(alpha_p / scale, rel=1e-12) and scaled_beta == pytest.approx(beta_p, rel=1e-12)
    defective = math.sqrt(mu / lam)
    assert math.sqrt((scale * mu) / (scale * lam)) == pytest.approx(defective)  # does not move with the scale
    # so on a sharp enough quadratic it is unstable, |1 - alpha lambda_max| > 1, where 2 / (lambda_max + mu) is not
    sharp = 1e4 * lam
    assert abs(1 - defective * sharp) > 1 and abs(1 - gd_hyperparameters(sharp, mu) * sharp) < 1
