"""The SLQ learner as a training callback: on quadratics with a known spectrum (``tests/quadratics.py``), the
authors' undefined-variable defect, in fit with resume, and the BatchNorm statistics it measures with.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from quadratics import LAM, MU, NEGATIVE, SLIGHT_NEGATIVE, Quadratic, measured_rate, quadratic, run_quadratic

from hessian_lib.checkpoints import load_checkpoint
from hessian_lib.curvature import HessianOperator, MatrixOperator
from hessian_lib.data import load_cifar100, normalize, stratified_indices
from hessian_lib.laws.learner import RULES, gd_rate, heavy_ball_rate
from hessian_lib.models import build_model
from hessian_lib.profiles import TrainSizes
from hessian_lib.slq_learner import SLQLearner, refreshed_batchnorm
from hessian_lib.trainer import fit

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


# ----------------------------------------------------------------------------- the authors' defects


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("mu_rule", ["bulk", "median"])
def test_defect_undefined_variable_every_variant_runs(rule, mu_rule):
    """One variant of the scripts referred to a variable it never defined: every rule and mu rule runs here."""
    learner, errors = run_quadratic(rule, 30, mu_rule=mu_rule)
    entry = learner.history[0]
    assert math.isfinite(entry["lr"]) and entry["lr"] > 0 and errors[-1] < errors[0]


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
