"""The SLQ learner: extremes of a Ritz spectrum, the two tunings, the callback on quadratics and in fit.

Quadratics ``0.5 w^T A w`` with a known spectrum: a bulk of exact zeros holding most of the
start vector's weight, a few negative eigenvalues, and positive eigenvalues spanning
``[MU, LAM]``. Lanczos finds the distinct eigenvalues exactly there, so the learner must pick
the formulas' values for the true extremes, and the iterates must contract at the rates the
theory gives on the positive eigenspace (components decouple in the eigenbasis).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from hessian_lib.curvature import HessianOperator, lanczos
from hessian_lib.data import load_cifar100, normalize, stratified_indices
from hessian_lib.curvature import MatrixOperator
from hessian_lib.experiments.learner import quadratic_demo
from hessian_lib.laws.learner import (BULK_WEIGHT, RULES, extremes, gd_hyperparameters, gd_rate, heavy_ball_rate,
                                      polyak_hyperparameters)
from hessian_lib.models import build_model
from hessian_lib.profiles import TrainSizes
from hessian_lib.slq_learner import SLQLearner, refreshed_batchnorm
from hessian_lib.trainer import fit, load_checkpoint
from hessian_lib.verdicts import (CLAIM6_FLOOR_PP, CLAIM6_GAP_PP, CLAIM6_LEVEL, DOES_NOT_HOLD, HOLDS, INCONCLUSIVE,
                                  claim6_verdict, paired_interval,
                                  stable_lr_range)

MU, LAM = 0.5, 50.0
NEGATIVE = (-2.0, -0.7, -0.2)
#: Slight negative curvature for the convergence tests: iterates grow along it, slowly enough that
#: rounding leaks nothing measurable into the positive eigenspace over the steps the rates need.
SLIGHT_NEGATIVE = (-0.05, -0.02, -0.01)


def quadratic(negative=NEGATIVE, n_zero=60, n_positive=12, seed=0):
    """``(A, eigenvalues, eigenvectors)``: zeros, ``negative``, and geometric positives MU..LAM."""
    positive = np.geomspace(MU, LAM, n_positive)
    eigenvalues = torch.tensor(np.concatenate([np.zeros(n_zero), negative, positive]), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen, dtype=torch.float64))
    return q @ torch.diag(eigenvalues) @ q.T, eigenvalues, q


class Quadratic(torch.nn.Module):
    def __init__(self, matrix: torch.Tensor, w0: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix)
        self.w = torch.nn.Parameter(w0.clone())

    def loss(self) -> torch.Tensor:
        return 0.5 * self.w @ (self.matrix @ self.w)


def run_quadratic(rule: str, steps: int, *, negative=NEGATIVE, every_steps=10_000, **learner_kwargs):
    """Train the quadratic with SGD driven by the learner; return (learner, positive-space error norms)."""
    matrix, eigenvalues, q = quadratic(negative)
    w0 = torch.randn(matrix.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = Quadratic(matrix, w0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0)
    learner = SLQLearner(optimizer, lambda: MatrixOperator(matrix), rule=rule, every_steps=every_steps,
                         lanczos_steps=40, **learner_kwargs)
    positive = q[:, eigenvalues > 0]
    errors = []
    for step in range(steps):
        learner.on_step_start(step, model, optimizer)
        errors.append((positive.T @ model.w.detach()).norm().item())
        optimizer.zero_grad()
        model.loss().backward()
        optimizer.step()
    return learner, np.array(errors)


def measured_rate(errors: np.ndarray, start: int, stop: int) -> float:
    return float((errors[stop] / errors[start]) ** (1.0 / (stop - start)))


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


# ----------------------------------------------------------------------------- the learner on quadratics


@pytest.mark.parametrize("negative", [(), SLIGHT_NEGATIVE, NEGATIVE])
def test_gd_rule_picks_the_formula_and_contracts_at_the_gd_rate(negative):
    learner, errors = run_quadratic("gd", 1200 if negative is not NEGATIVE else 1, negative=negative)
    entry = learner.history[0]
    assert entry["lambda_max"] == pytest.approx(LAM, rel=1e-6) and entry["mu"] == pytest.approx(MU, rel=1e-6)
    assert entry["lr"] == pytest.approx(2 / (LAM + MU), rel=1e-6)
    assert entry["momentum"] == 0.0  # untouched by the GD rule
    if negative is not NEGATIVE:  # along -2.0 the iterates grow by 1.08 a step: no rate to measure
        assert measured_rate(errors, 200, 1199) == pytest.approx(gd_rate(LAM / MU), rel=0.05)


@pytest.mark.parametrize("negative", [(), SLIGHT_NEGATIVE, NEGATIVE])
def test_polyak_rule_picks_the_formulas_and_contracts_at_the_heavy_ball_rate(negative):
    learner, errors = run_quadratic("polyak", 160, negative=negative)
    entry = learner.history[0]
    s_lam, s_mu = math.sqrt(LAM), math.sqrt(MU)
    assert entry["lr"] == pytest.approx(4 / (s_lam + s_mu) ** 2, rel=1e-6)
    assert entry["momentum"] == pytest.approx(((s_lam - s_mu) / (s_lam + s_mu)) ** 2, rel=1e-6)
    assert learner.optimizer.param_groups[0]["momentum"] == entry["momentum"]
    kappa = LAM / MU
    if negative is NEGATIVE:
        return
    rate = measured_rate(errors, 30, 150)  # errors from 1e-1 to 1e-12, above rounding
    assert rate == pytest.approx(heavy_ball_rate(kappa), rel=0.05)
    assert math.log(rate) < 5 * math.log(gd_rate(kappa))  # ten times gradient descent's log-rate at kappa = 100


def test_quadratic_demo_reaches_the_predicted_rates():
    demo = quadratic_demo(kappa=100.0, steps=300, seed=1)
    assert demo["polyak"]["lambda_max"] == pytest.approx(100.0, rel=1e-6) and demo["polyak"]["mu"] == pytest.approx(1.0)
    for rule, predicted, (a, b) in (("gd", demo["gd_rate"], (100, 299)), ("polyak", demo["heavy_ball_rate"], (20, 110))):
        assert measured_rate(demo[rule]["errors"], a, b) == pytest.approx(predicted, rel=0.05), rule


def test_learner_reestimates_on_schedule_and_overrides_the_optimizer_each_step():
    matrix, _, _ = quadratic(negative=())
    model = Quadratic(matrix, torch.ones(matrix.shape[0], dtype=torch.float64))
    optimizer = torch.optim.SGD(model.parameters(), lr=123.0, momentum=0.0)
    learner = SLQLearner(optimizer, lambda: MatrixOperator(matrix), every_steps=3, lanczos_steps=30, seed=4)
    for step in range(7):
        optimizer.param_groups[0]["lr"] = 123.0  # what a schedule does before every step
        learner.on_step_start(step, model, optimizer)
        assert optimizer.param_groups[0]["lr"] == learner.lr
    assert [e["step"] for e in learner.history] == [0, 3, 6]
    assert learner.seconds > 0 and all(e["seconds"] >= 0 for e in learner.history)


def test_safety_factor_and_clipping():
    matrix, _, _ = quadratic(negative=())
    base = SLQLearner(None, lambda: MatrixOperator(matrix), every_steps=1)
    alpha, beta = base.hyperparameters(LAM, MU)
    assert SLQLearner(None, lambda: None, every_steps=1, safety=0.5).hyperparameters(LAM, MU) == \
        pytest.approx((0.5 * alpha, beta))
    clipped = SLQLearner(None, lambda: None, every_steps=1, lr_range=(0.0, alpha / 2), momentum_range=(0.0, 0.5))
    assert clipped.hyperparameters(LAM, MU) == (alpha / 2, 0.5)
    for bad in ({"safety": 0.0}, {"lr_range": (1.0, 0.5)}, {"momentum_range": (0.0, 1.5)}, {"every_steps": 0},
                {"rule": "adam"}, {"lanczos_steps": 1}):
        with pytest.raises(ValueError):
            SLQLearner(None, lambda: None, **{"every_steps": 1, **bad})


def test_polyak_rule_refuses_nesterov_and_optimizers_without_momentum():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match="nesterov"):
        SLQLearner(torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), lambda: None, every_steps=1)
    with pytest.raises(ValueError, match="momentum"):
        SLQLearner(torch.optim.Adam(p), lambda: None, every_steps=1)
    SLQLearner(torch.optim.Adam(p), lambda: None, every_steps=1, rule="gd")  # GD sets lr only


def test_a_failed_estimate_keeps_the_last_values_and_a_failed_first_one_raises():
    spectra = [np.diag([0.0, 0.0, 0.0, 1.0, 9.0]), np.diag([0.0, 0.0, 0.0, -1.0, -9.0])]
    calls = []

    def curvature():
        calls.append(1)
        return MatrixOperator(torch.tensor(spectra[min(len(calls), 2) - 1], dtype=torch.float64))

    learner = SLQLearner(None, curvature, every_steps=1, lanczos_steps=5)
    first = learner.update(0)
    second = learner.update(1)
    assert second["kept"] and (second["lr"], second["momentum"]) == (first["lr"], first["momentum"])
    fresh = SLQLearner(None, lambda: MatrixOperator(torch.tensor(spectra[1], dtype=torch.float64)), every_steps=1,
                       lanczos_steps=5)
    with pytest.raises(ValueError, match="no positive Ritz value"):
        fresh.update(0)


# ----------------------------------------------------------------------------- the authors' defects


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mu_rule", ["bulk", "median"])
def test_defect_undefined_variable_every_variant_runs(rule, mu_rule):
    """One variant of the scripts referred to a variable it never defined: every rule and mu rule runs here."""
    learner, errors = run_quadratic(rule, 30, mu_rule=mu_rule)
    entry = learner.history[0]
    assert math.isfinite(entry["lr"]) and entry["lr"] > 0 and errors[-1] < errors[0]


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


# ----------------------------------------------------------------------------- in fit, with resume


TINY = TrainSizes(model="vgg16", width=0.0625, epochs=3, batch_size=25, lr=0.01, momentum=0.0, checkpoint_every=1,
                  mixed_precision=False)


@pytest.fixture(scope="module")
def tiny_data(data_root):
    train = load_cifar100("train", data_root)
    train = train.subset(stratified_indices(train.labels, 100))
    curvature = train.subset(torch.arange(0, 100, 5))
    return train, (normalize(curvature.images), curvature.labels)


def _learner_run(train, curv, cfg, rule, **fit_kwargs):
    torch.manual_seed(0)
    model = build_model("vgg16", width=0.0625)
    loss = torch.nn.CrossEntropyLoss()
    learner = SLQLearner(None, lambda: HessianOperator(model, loss, curv, bn_mode="eval"), rule=rule,
                         every_steps=5, lanczos_steps=4, seed=2, lr_range=(0.0, 0.05))
    result = fit(model, train, cfg, seed=5, device="cpu", quiet=True, callbacks=[learner], **fit_kwargs)
    return model, learner, result


@pytest.mark.parametrize("rule", RULES)
def test_learner_in_fit_sets_the_rate_and_resume_equals_uninterrupted(tiny_data, tmp_path, rule):
    train, curv = tiny_data
    cfg = TINY
    reference, ref_learner, ref_result = _learner_run(train, curv, cfg, rule)
    assert [e["step"] for e in ref_learner.history] == [0, 5, 10]  # 4 steps per epoch, 12 in all
    assert [h["lr"] for h in ref_result.history] == [ref_learner.history[k]["lr"] for k in (0, 1, 2)]

    class Interrupt(Exception):
        pass

    def stop(info):
        if info.step == 9:  # in epoch 3, after the epoch-2 checkpoint and the step-5 estimate
            raise Interrupt

    with pytest.raises(Interrupt):
        _learner_run(train, curv, cfg, rule, checkpoint_dir=tmp_path, on_step=stop)
    state = load_checkpoint(tmp_path / "epoch_0002.pt")
    assert [e["step"] for e in state["callbacks"][0]["history"]] == [0, 5]
    resumed, learner, result = _learner_run(train, curv, cfg, rule, checkpoint_dir=tmp_path, resume=True)
    assert result.resumed_from == 2
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    strip = [{k: v for k, v in e.items() if k != "seconds"} for e in ref_learner.history]
    assert [{k: v for k, v in e.items() if k != "seconds"} for e in learner.history] == strip


def test_learner_checkpoint_refuses_another_recipe(tiny_data, tmp_path):
    train, curv = tiny_data
    _learner_run(train, curv, dataclasses.replace(TINY, epochs=1), "gd", checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="another training recipe"):
        _learner_run(train, curv, TINY, "gd", checkpoint_dir=tmp_path, resume=True)


# ----------------------------------------------------------------------------- BatchNorm statistics


def test_refreshed_batchnorm_uses_the_images_statistics_on_a_copy():
    torch.manual_seed(0)
    model = build_model("fastcnn", width=0.25, dropout=0.5)
    images = 3 * torch.randn(40, 3, 32, 32) + 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = refreshed_batchnorm(model, images)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched
    assert not net.training and not any(m.training for m in net.modules())
    first_bn = net.features[1]
    conv_out = net.features[0](images)
    assert torch.allclose(first_bn.running_mean, conv_out.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(first_bn.running_var, conv_out.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert first_bn.momentum == model.features[1].momentum
    chunked = refreshed_batchnorm(model, images, batch_size=20)  # an average of two chunks' means
    assert torch.allclose(chunked.features[1].running_mean, first_bn.running_mean, atol=1e-5)
    for name, p in net.named_parameters():
        assert torch.equal(p, dict(model.named_parameters())[name])


# ----------------------------------------------------------------------------- claim 6 verdict rule


def test_stable_lr_range():
    lrs = [0.01, 0.01, 0.1, 0.1, 1.0, 1.0]
    assert stable_lr_range(lrs, [False] * 6) == (0.01, 1.0)
    assert stable_lr_range(lrs, [False, False, False, False, True, False]) == (0.01, 0.1)  # one seed is enough
    assert stable_lr_range(lrs, [True] * 6) is None
    with pytest.raises(ValueError):
        stable_lr_range(lrs, [False])


def test_paired_interval_is_students_t_on_the_differences():
    from scipy import stats

    d = np.array([-1.0, -2.0, -0.5])
    mean, low, high = paired_interval(d)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert mean == pytest.approx(d.mean()) and (low, high) == (pytest.approx(d.mean() - half),
                                                              pytest.approx(d.mean() + half))
    _, low2, high2 = paired_interval([-1.0, -2.0])  # two seeds: 12.7 standard errors each side
    assert high2 - low2 == pytest.approx(2 * 12.7062 * np.std([-1.0, -2.0], ddof=1) / np.sqrt(2), rel=1e-4)
    assert all(math.isnan(v) for v in paired_interval([1.0, math.nan]))
    with pytest.raises(ValueError, match="at least 2"):
        paired_interval([1.0])


def test_claim6_verdict_boundaries():
    assert (CLAIM6_GAP_PP, CLAIM6_FLOOR_PP, CLAIM6_LEVEL) == (2.0, 4.0, 0.95)
    sgd = [0.40, 0.40, 0.40]
    # equal differences on every seed: a zero-width interval at the mean
    assert claim6_verdict([0.38, 0.38, 0.38], sgd) == HOLDS  # exactly 2 points behind holds
    assert claim6_verdict([0.45, 0.45, 0.45], sgd) == HOLDS  # ahead of SGD holds
    assert claim6_verdict([0.3799, 0.3799, 0.3799], sgd) == DOES_NOT_HOLD  # the whole interval below -2
    # a mean within 2 points is not enough when the interval reaches -4 or below
    d = np.array([-1.0, -3.0])
    _, low, _ = paired_interval(d)
    assert low < -CLAIM6_FLOOR_PP
    assert claim6_verdict(0.40 + d / 100, [0.40, 0.40]) == INCONCLUSIVE
    # the lower end at -4 (up to rounding) is not above it: inconclusive; a hair above: holds
    spread = 1.0
    half = float(paired_interval([0.0, spread])[2] - 0.5 * spread)
    for shift, word in ((-1e-6, INCONCLUSIVE), (1e-6, HOLDS)):
        acc = 0.40 + (-CLAIM6_FLOOR_PP + half + shift + np.array([-spread / 2, spread / 2])) / 100
        assert claim6_verdict(acc, [0.40, 0.40]) == word
    # the interval's upper end at -2 is not below it: inconclusive; a hair below: does not hold
    for shift, word in ((1e-6, INCONCLUSIVE), (-1e-6, DOES_NOT_HOLD)):
        acc = 0.40 + (-CLAIM6_GAP_PP - half + shift + np.array([-spread / 2, spread / 2])) / 100
        assert claim6_verdict(acc, [0.40, 0.40]) == word
    # a learner run that diverged (NaN accuracy) is not competitive
    assert claim6_verdict([math.nan, 0.40], [0.40, 0.40]) == DOES_NOT_HOLD
    with pytest.raises(ValueError, match="paired"):
        claim6_verdict([0.4, 0.4], [0.4])


# ----------------------------------------------------------------------------- the chapter's recipes


def test_run_recipes_follow_the_profile_and_the_method():
    from hessian_lib.experiments.learner import run_config, run_recipe
    from hessian_lib.profiles import load_profile

    cfg = load_profile("cpu")
    sizes = cfg.learner
    sgd = run_recipe(cfg, "sgd", 0.1)
    assert (sgd.optimizer, sgd.lr, sgd.momentum, sgd.nesterov) == ("sgd", 0.1, sizes.sgd_momentum, False)
    assert (sgd.epochs, sgd.model, sgd.schedule) == (sizes.epochs, cfg.train.model, cfg.train.schedule)
    assert run_recipe(cfg, "adam").lr == sizes.adam_lr and run_recipe(cfg, "adam").optimizer == "adam"
    for rule in RULES:  # heavy ball needs plain SGD; the learner replaces the schedule
        rec = run_recipe(cfg, rule)
        assert (rec.optimizer, rec.momentum, rec.nesterov, rec.schedule) == ("sgd", 0.0, False, "constant")
        assert rec.label_smoothing == cfg.train.label_smoothing and rec.weight_decay == cfg.train.weight_decay
    scheduled = run_recipe(cfg, "polyak_schedule")  # keeps the recipe's schedule, read as a multiplier
    assert (scheduled.momentum, scheduled.schedule, scheduled.warmup_epochs) == (0.0, cfg.train.schedule,
                                                                                 cfg.train.warmup_epochs)
    assert all(run_recipe(cfg, m, 0.1).low_res_epochs == (sizes.epochs if sizes.low_res else 0)
               for m in ("sgd", "polyak"))
    keys = {str(run_config(cfg, m, s, lr)) for m, lr in [("polyak", None), ("polyak_schedule", None), ("gd", None),
                                                         ("sgd", 0.1), ("sgd", 0.3), ("adam", None)] for s in (0, 1)}
    assert len(keys) == 12
    with pytest.raises(ValueError, match="learning rate"):
        run_recipe(cfg, "sgd")
    with pytest.raises(ValueError, match="unknown method"):
        run_recipe(cfg, "lbfgs")


@pytest.mark.parametrize("override, match", [
    ({"learner.seeds": 1}, "at least 2 seeds"),
    ({"learner.seeds": 3, "learner.paired_seeds": 2}, "cannot be fewer"),
    ({"learner.sgd_lrs": "0.01,0.1"}, "at least three"),
    ({"learner.sgd_lrs": "0.3,0.1,0.03,0.01"}, "increasing"),
    ({"learner.curvature_images": 45_001}, "cannot exceed"),
    ({"learner.batch_size": 45_001}, "batch_size"),
    ({"learner.test_images": 10001}, "cannot exceed"),
    ({"learner.validation_images": 5001}, "cannot exceed"),
    ({"learner.tradeoff_steps": "1,10"}, "at least 2"),
    ({"learner.sgd_momentum": 1.0}, "momentum"),
    ({"learner.model": "resnet9"}, "unknown model"),
    ({"learner.lanczos_steps": 1}, "at least 2"),
    ({"learner.every_steps": -1}, "once per epoch"),
])
def test_learner_sizes_are_validated(override, match):
    from hessian_lib.profiles import ProfileError, load_profile

    with pytest.raises(ProfileError, match=match):
        load_profile("cpu", override)
    assert load_profile("cpu", {"learner.seeds": 2, "learner.sgd_lrs": "0.01,0.1,1,2"}).learner.sgd_lrs[-1] == 2.0
    assert load_profile("cpu", {"learner.every_steps": 0}).learner.every_steps == 0  # once per epoch


# ----------------------------------------------------------------------------- the race's data


def test_validation_split_is_disjoint_from_the_training_images_and_the_test_set(data_root):
    from hessian_lib.data import load_cifar100
    from hessian_lib.experiments.learner import learner_data
    from hessian_lib.profiles import load_profile

    for profile in (load_profile("smoke"), load_profile("cpu")):
        sizes = profile.learner
        data = learner_data(profile, data_root)
        assert len(data.validation_index) == sizes.validation_images == len(data.validation.labels)
        assert len(data.train_index) == sizes.train_images == len(data.train.labels)
        assert np.intersect1d(data.train_index, data.validation_index).size == 0
        # validation and training images come from the training split, the test images from the test split
        train_all = load_cifar100("train", data_root)
        assert torch.equal(train_all.images[torch.as_tensor(data.validation_index)], data.validation.images)
        assert torch.equal(train_all.images[torch.as_tensor(data.train_index)], data.train.images)
        assert data.test.name != data.train.name and len(data.test.labels) == sizes.test_images
        # every class is in the validation split (class-stratified) and the curvature subset is at the
        # training resolution
        assert torch.unique(data.validation.labels).numel() == min(100, sizes.validation_images)
        size = profile.train.low_res_size if sizes.low_res else 32
        assert tuple(data.curvature_x.shape[1:]) == (3, size, size)
    cpu = load_profile("cpu").learner
    assert cpu.train_images + cpu.validation_images == 50_000  # the cpu race uses every training image


def test_scheduled_learner_multiplies_its_rate_by_the_schedule():
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    matrix = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64))
    optimizer = torch.optim.SGD([w], lr=1.0, momentum=0.0)
    factors = [0.5, 1.0, 0.25, 0.1]
    learner = SLQLearner(optimizer, lambda: MatrixOperator(matrix), rule="polyak", every_steps=2, lanczos_steps=3,
                         lr_schedule=lambda step: factors[step])
    for step in range(4):
        learner.on_step_start(step, None, optimizer)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(learner.lr * factors[step])
    assert [e["step"] for e in learner.history] == [0, 2]
    assert all(e["lr"] == pytest.approx(learner.hyperparameters(e["lambda_max"], e["mu"])[0]) for e in learner.history)


def test_runs_side_by_side_equal_runs_one_after_another(data_root, tmp_path):
    """Two worker processes of one thread each give the runs that one process with one thread gives."""
    from hessian_lib.experiments import learner as L
    from hessian_lib.profiles import load_profile

    profile = load_profile("smoke", {"learner.sgd_lrs": "0.03,0.1,0.3", "learner.seeds": 2})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = L.run_study(profile, data_root=data_root, device="cpu", store=tmp_path / "one", workers=1)
    finally:
        torch.set_num_threads(threads)
    two = L.run_study(profile, data_root=data_root, device="cpu", store=tmp_path / "two", workers=2, threads=1)
    # 7 methods x 2 seeds, then a third seed of the Polyak learner and the validated SGD
    assert two.workers == 2 and len(two.runs) == len(one.runs) == 2 * 7 + 2
    assert one.seeds == [0, 1] and one.paired_seeds() == [0, 1, 2]
    assert {r["label"] for r in one.runs if r["seed"] == 2} == {"Polyak learner", f"SGD lr {one.best_sgd_lr():g}"}
    for a in one.runs:
        b = two.run(a["label"], a["seed"])
        assert a["key"] == b["key"]
        np.testing.assert_array_equal(a["step_loss"], b["step_loss"])
        assert a["test_acc"] == b["test_acc"] and a["val_acc"] == b["val_acc"]
    # a second call loads everything from the store and starts no process
    again = L.run_study(profile, data_root=data_root, device="cpu", store=tmp_path / "two", workers=2)
    assert again.workers == 1 and [r["key"] for r in again.runs] == [r["key"] for r in two.runs]
    verdict, numbers = L.claim6(two)
    assert verdict.verdict in ("holds", "does not hold", "inconclusive")
    assert numbers["best_sgd_lr"] == two.best_sgd_lr() in (0.03, 0.1, 0.3)
