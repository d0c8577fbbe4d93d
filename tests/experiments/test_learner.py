"""The Learner chapter's runs: the quadratic demo, claim 6's rule, the recipes and sizes of the race, its data, and
runs side by side.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from quadratics import measured_rate

from hessian_lib.experiments.learner_analysis import quadratic_demo
from hessian_lib.laws.learner import RULES
from hessian_lib.verdicts import (
    CLAIM6_FLOOR_PP,
    CLAIM6_GAP_PP,
    CLAIM6_LEVEL,
    DOES_NOT_HOLD,
    HOLDS,
    INCONCLUSIVE,
    claim6_verdict,
    paired_interval,
    stable_lr_range,
)

# ----------------------------------------------------------------------------- the learner on quadratics


def test_quadratic_demo_reaches_the_predicted_rates():
    demo = quadratic_demo(kappa=100.0, steps=300, seed=1)
    assert demo["polyak"]["lambda_max"] == pytest.approx(100.0, rel=1e-6) and demo["polyak"]["mu"] == pytest.approx(1.0)
    for rule, predicted, (a, b) in (
        ("gd", demo["gd_rate"], (100, 299)),
        ("polyak", demo["heavy_ball_rate"], (20, 110)),
    ):
        assert measured_rate(demo[rule]["errors"], a, b) == pytest.approx(predicted, rel=0.05), rule


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


def test_runs_side_by_side_equal_runs_one_after_another(data_root, tmp_path):
    """Two worker processes of one thread each give the runs that one process with one thread gives."""
    from hessian_lib.experiments import learner as L
    from hessian_lib.experiments import learner_analysis as LA
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
    verdict, numbers = LA.claim6(two)
    assert verdict.verdict in ("holds", "does not hold", "inconclusive")
    assert numbers["best_sgd_lr"] == two.best_sgd_lr() in (0.03, 0.1, 0.3)
    # the trade-off table always has the learner's own estimate, also when its step count is not among those compared
    sizes = profile.learner
    fewer = load_profile("smoke", {"learner.sgd_lrs": "0.03,0.1,0.3", "learner.seeds": 2,
                                   "learner.tradeoff_steps": "2"})
    table = LA.estimate_tradeoff(dataclasses.replace(two, profile=fewer), L.learner_data(profile, data_root))
    chosen = table[(table["Lanczos steps"] == sizes.lanczos_steps) & (table["images"] == sizes.curvature_images)]
    assert sizes.lanczos_steps not in fewer.learner.tradeoff_steps and len(chosen) == 1
    assert table["Lanczos steps"].tolist()[:2] == [2, sizes.lanczos_steps]
