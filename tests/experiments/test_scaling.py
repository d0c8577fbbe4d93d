"""Scaling experiments: bisection against known thresholds, the gradient noise scale against closed forms,
resumable sweeps, and the claim 4 / 5 rules at their boundaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from hessian_lib.curvature.noise import gradient_noise_scale, per_sample_gradients
from hessian_lib.experiments import bisection, scaling
from hessian_lib.laws.brackets import Interval
from hessian_lib.profiles import ProfileError, TrainSizes, load_profile
from hessian_lib.store import ResultsStore
from hessian_lib.verdicts import (
    CLAIM4_ALTERNATIVE,
    CLAIM4_SLOPE,
    CLAIM5_ALTERNATIVE,
    CLAIM5_NULL,
    CLAIM5_SLOPE,
    CLAIM7_FLAT,
    CLAIM7_NULL,
    DOES_NOT_HOLD,
    HOLDS,
    INCONCLUSIVE,
    PARITY_POINTS,
    PARTLY,
    claim4_conditions,
    claim4_verdict,
    claim5_verdict,
    claim7_verdict,
    parity_holds,
)

RATIO = 2 ** 0.25  # the final bracket the chapter asks for
RUNG = 8           # ladder factor 4 = RATIO ** 8, three bisections


# ----------------------------------------------------------------------------- a quadratic with a known threshold


def quadratic_trial(eigenvalues: torch.Tensor, lr: float, *, momentum: float = 0.0, steps: int = 400,
                    factor: float = 2.0, seed: int = 0) -> bool:
    """Whether PyTorch's SGD (heavy ball for momentum > 0) diverges on 0.5 w^T diag(eigenvalues) w within ``steps``:
    a non-finite loss or one above ``factor`` times the starting loss, the chapter's rule.

    As in a trained network, the top eigendirection carries a small share (0.1%) of the starting loss: heavy ball
    amplifies it transiently (up to about 20x in amplitude just below its limit), which must not count as divergence.
    """
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(eigenvalues.numel(), generator=gen, dtype=torch.float64)
    bulk = 0.5 * float((eigenvalues[1:] * w0[1:] ** 2).sum())
    w0[0] = math.sqrt(2 * 1e-3 * bulk / float(eigenvalues[0]))
    w = nn.Parameter(w0)
    opt = torch.optim.SGD([w], lr=lr, momentum=momentum)
    start = None
    for _ in range(steps):
        loss = 0.5 * (eigenvalues * w * w).sum()
        value = loss.item()
        start = value if start is None else start
        if not math.isfinite(value) or value > factor * start:
            return True
        opt.zero_grad()
        loss.backward()
        opt.step()
    return False


def _spectrum(lambda_max: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    rest = torch.rand(15, generator=gen, dtype=torch.float64) * 0.2 * lambda_max
    return torch.cat([torch.tensor([lambda_max], dtype=torch.float64), rest])


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("offset", [0.1, 0.5, 0.9])
def test_bisection_finds_the_stability_limit_of_a_quadratic(momentum, offset):
    """SGD diverges exactly above 2/lambda_max, heavy ball above 2(1 + beta)/lambda_max: the final bracket holds it."""
    start = 0.01
    threshold = start * RATIO ** (5 + offset)  # the limit sits at a known place inside a lattice cell
    lambda_max = 2 * (1 + momentum) / threshold
    eig = _spectrum(lambda_max)
    lattice = bisection.LrLattice(start=start, ratio=RATIO, rung=RUNG)
    found = bisection.bisect_max_lr(lambda j: quadratic_trial(eig, lattice.lr(j), momentum=momentum), start=0,
                                    rung=RUNG)
    assert found.upper == found.lower + 1
    assert lattice.lr(found.lower) < threshold < lattice.lr(found.upper)
    assert len(found.tried) == len({j for j, _ in found.tried})  # no trial twice


def test_bisection_ladders_down_and_reports_a_missing_end():
    lattice = bisection.LrLattice(start=1.0, ratio=RATIO, rung=RUNG)
    eig = _spectrum(2 / 0.02)  # threshold 0.02, far below the start
    found = bisection.bisect_max_lr(lambda j: quadratic_trial(eig, lattice.lr(j)), start=0, rung=RUNG,
                                    max_ladder_steps=8)
    assert lattice.lr(found.lower) < 0.02 < lattice.lr(found.upper)
    never = bisection.bisect_max_lr(lambda j: False, start=0, rung=RUNG, max_ladder_steps=3)
    assert never.upper is None and never.lower == 3 * RUNG and len(never.tried) == 4
    with pytest.raises(ValueError, match="power of two"):
        bisection.bisect_max_lr(lambda j: False, rung=6)


def test_sweep_over_batch_sizes_brackets_each_threshold():
    """A synthetic lr_max(B) = 2 / (lambda_1 + k/B): every bracket holds it, whatever the warm start."""
    lattice = bisection.LrLattice(start=0.05, ratio=RATIO, rung=RUNG)
    truth = {b: 2 / (5.0 + 400.0 / b) for b in (8, 16, 32, 64, 128, 256)}
    brackets = bisection.lr_sweep(lambda b, j: {"diverged": lattice.lr(j) > truth[b]}, list(truth), lattice)
    for br in brackets:
        assert br.bracketed and br.lower < truth[br.batch_size] < br.upper
        assert br.upper / br.lower == pytest.approx(RATIO)
        assert [t["lr"] for t in br.trials] == [lattice.lr(t["index"]) for t in br.trials]


class _Interrupted(RuntimeError):
    pass


def test_an_interrupted_sweep_resumes_to_the_same_result(tmp_path):
    lattice = bisection.LrLattice(start=0.05, ratio=RATIO, rung=RUNG)
    eigen = {b: _spectrum(5.0 + 400.0 / b, seed=b) for b in (8, 32, 128)}
    calls = []

    def make_trial(store, fail_after=None):
        def run(b, j):
            def compute():
                if fail_after is not None and len(calls) >= fail_after:
                    raise _Interrupted
                calls.append((b, j))
                return {"diverged": quadratic_trial(eigen[b], lattice.lr(j), seed=b), "losses": np.arange(3.0)}
            return store.cached({"b": b, "j": j}, compute)
        return run

    whole = bisection.lr_sweep(make_trial(ResultsStore(tmp_path / "a")), list(eigen), lattice)
    n_whole = len(calls)
    calls.clear()
    store = ResultsStore(tmp_path / "b")
    with pytest.raises(_Interrupted):
        bisection.lr_sweep(make_trial(store, fail_after=n_whole // 2), list(eigen), lattice)
    assert len(calls) == n_whole // 2
    resumed = bisection.lr_sweep(make_trial(store), list(eigen), lattice)
    assert len(calls) == n_whole  # the finished trials were loaded, not run again
    assert [(b.batch_size, b.lower, b.upper) for b in resumed] == [(b.batch_size, b.lower, b.upper) for b in whole]
    assert [[t["index"] for t in b.trials] for b in resumed] == [[t["index"] for t in b.trials] for b in whole]


# ----------------------------------------------------------------------------- the gradient noise scale


def _regression(n: int, d: int, sigma: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    w_star = torch.randn(d, generator=gen, dtype=torch.float64)
    y = x @ w_star + sigma * torch.randn(n, generator=gen, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_((w_star + 0.3 * torch.randn(d, generator=gen, dtype=torch.float64))[None])
    return model, x, y, model.weight.detach()[0] - w_star


def _squared_error(out, target):
    return 0.5 * ((out.squeeze(-1) - target) ** 2).mean()


def test_noise_scale_matches_the_sample_formula_exactly():
    model, x, y, _ = _regression(300, 6, 0.5, seed=0)
    r = gradient_noise_scale(model, _squared_error, x, y, chunk_size=37, groups=5)
    g = ((x @ model.weight.detach()[0] - y)[:, None] * x).numpy()  # per-sample gradients in closed form
    mean = g.mean(0)
    trace = ((g - mean) ** 2).sum() / (len(g) - 1)
    signal = mean @ mean - trace / len(g)
    assert r.trace_sigma == pytest.approx(trace, rel=1e-10)
    assert r.grad_norm_sq == pytest.approx(signal, rel=1e-10)
    assert r.b_simple == pytest.approx(trace / signal, rel=1e-10)
    assert r.num_samples == 300 and np.isfinite(r.stderr) and r.stderr > 0


@pytest.mark.parametrize("seed", [1, 2])
def test_noise_scale_of_linear_regression_against_its_closed_form(seed):
    """x ~ N(0, I_d), y = w*.x + N(0, sigma^2), at w = w* + delta:
    tr Sigma = (d + 1)|delta|^2 + d sigma^2, |G|^2 = |delta|^2."""
    d, sigma = 8, 0.7
    model, x, y, delta = _regression(20_000, d, sigma, seed=seed)
    r = gradient_noise_scale(model, _squared_error, x, y, chunk_size=4_000)
    norm2 = float(delta @ delta)
    expected = ((d + 1) * norm2 + d * sigma**2) / norm2
    assert abs(r.b_simple - expected) < 4 * r.stderr
    assert r.stderr < 0.05 * expected


def test_per_sample_gradients_of_a_batchnorm_network_match_one_sample_at_a_time():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    net.eval()
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))
    loss = nn.CrossEntropyLoss(label_smoothing=0.1)
    got = torch.cat(list(per_sample_gradients(net, loss, x, y, chunk_size=4)))
    for i in range(6):
        net.zero_grad()
        loss(net(x[i:i + 1]), y[i:i + 1]).backward()
        expected = torch.cat([p.grad.reshape(-1) for p in net.parameters()])
        torch.testing.assert_close(got[i], expected, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- real trials on a small network


class _Images:
    def __init__(self, n: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
        self.labels = torch.randint(0, 10, (n,), generator=gen)


def _small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(32, 10))


def test_divergence_trial_records_the_loss_curve_and_the_divergence():
    sizes = load_profile("smoke").scaling
    recipe = TrainSizes(model="fastcnn", augment=False, channels_last=False, label_smoothing=0.0)
    data = _Images(64)

    def trial(lr):
        r = scaling.trial_recipe(recipe, sizes, "sgd", batch_size=8, lr=lr, steps=6, n_train=64)
        return scaling.divergence_trial(_small_net(), data, r, steps=6, seed=0, threshold=1.5 * math.log(10), window=2)

    calm = trial(1e-4)
    assert not calm["diverged"] and calm["steps"] == 6 and calm["losses"].shape == (6,) and calm["diverged_step"] == -1
    wild = trial(1e4)
    assert wild["diverged"] and 0 <= wild["diverged_step"] < 6
    assert wild["losses"].shape == (wild["diverged_step"] + 1,)
    np.testing.assert_array_equal(trial(1e-4)["losses"], calm["losses"])  # deterministic given its seed


class _ScriptedFit:
    """Stands in for ``fit``: feeds a scripted loss sequence to the step hook, with fit's own per-loss stop."""

    def __init__(self, losses):
        self.losses = losses

    def __call__(self, model, train, recipe, *, on_step, max_steps, **kwargs):
        from hessian_lib.trainer import FitResult, StepInfo

        for step, loss in enumerate(self.losses[:max_steps]):
            if not math.isfinite(loss) or loss > recipe.divergence_loss:
                return FitResult(diverged=True, diverged_step=step, diverged_loss=loss, steps=step)
            on_step(StepInfo(step=step, epoch=1, loss=loss, lr=recipe.lr))
        return FitResult(steps=min(len(self.losses), max_steps))


@pytest.mark.parametrize("losses, frozen, expected_step, expected_loss", [
    ([1, 1, 1, 1, 1, 1], 0, -1, None),                 # never above
    ([1, 1, 1, 4.1, 1, 1], 0, 3, 2.0333333333333),     # the window 1, 1, 4.1 averages 2.03 > 2
    ([1, 1, 1, 3.9, 1, 1], 0, -1, None),               # a spike that windows absorb (means at most 1.97)
    ([5, 5, 1, 1, 1, 1, 1], 2, -1, None),              # frozen steps do not count
    ([1, 1, 6.5, 1, 1, 1], 0, 2, 6.5),                 # above window x threshold: stopped at once
    ([1, float("nan"), 1, 1, 1, 1], 0, 1, None),       # non-finite
])
def test_divergence_is_a_windowed_mean_above_the_threshold(monkeypatch, losses, frozen, expected_step, expected_loss):
    monkeypatch.setattr(scaling, "fit", _ScriptedFit(losses))
    record = scaling.divergence_trial(nn.Linear(1, 1), None, TrainSizes(lr=0.1), steps=len(losses) - frozen, seed=0,
                                      threshold=2.0, window=3, frozen_steps=frozen)
    assert record["diverged"] == (expected_step >= 0) and record["diverged_step"] == expected_step
    if expected_loss is not None:
        assert record["diverged_loss"] == pytest.approx(expected_loss)
    with pytest.raises(ValueError, match="window"):
        scaling.divergence_trial(nn.Linear(1, 1), None, TrainSizes(), steps=2, seed=0, threshold=2.0, window=3)


def test_frozen_steps_fill_adam_without_moving_the_weights():
    sizes = load_profile("smoke").scaling
    recipe = scaling.trial_recipe(TrainSizes(model="fastcnn", augment=True, channels_last=False), sizes, "adam",
                                  batch_size=8, lr=10.0, steps=5, n_train=64)
    assert (recipe.optimizer, recipe.schedule, recipe.epochs, recipe.augment) == ("adam", "constant", 1, False)
    frozen = scaling.divergence_trial(_small_net(), _Images(64), recipe, steps=1, frozen_steps=4, seed=0, threshold=1e9)
    assert frozen["frozen_steps"] == 4 and frozen["steps"] == 1
    assert np.ptp(frozen["losses"][:4]) < 1.0  # the weights did not move during the frozen steps


def test_trial_recipe_sets_the_optimizers():
    sizes = load_profile("cpu").scaling
    base = TrainSizes(nesterov=True, momentum=0.5, schedule="linear", warmup_epochs=1.0)
    r = scaling.trial_recipe(base, sizes, "momentum", batch_size=32, lr=0.1, steps=100, n_train=1000)
    assert (r.optimizer, r.momentum, r.nesterov, r.schedule, r.warmup_epochs) == ("sgd", sizes.momentum, False,
                                                                                     "constant", 0.0)
    assert r.epochs == 4
    assert scaling.trial_recipe(base, sizes, "sgd", batch_size=32, lr=0.1, steps=5, n_train=1000).momentum == 0.0
    with pytest.raises(ValueError, match="larger than"):
        scaling.trial_recipe(base, sizes, "sgd", batch_size=2000, lr=0.1, steps=5, n_train=1000)


# ----------------------------------------------------------------------------- the profile section


@pytest.mark.parametrize("overrides, key", [
    ({"scaling.batch_sizes": "8,16,100000"}, "scaling.batch_sizes"),
    ({"scaling.bisections": 2}, "scaling.ladder_factor"),
    ({"scaling.checkpoint": 99}, "scaling.checkpoint"),
    ({"scaling.parity_batch": 12}, "scaling.parity_batch"),
    ({"scaling.parity_seeds": 1}, "scaling.parity_seeds"),
    ({"scaling.batch_sizes": "16,8,32"}, "scaling.batch_sizes"),
    ({"scaling.divergence_factor": 1.0}, "scaling.divergence_factor"),
    ({"scaling.loss_window": 50}, "scaling.loss_window"),
])
def test_bad_scaling_sizes_name_the_key(overrides, key):
    with pytest.raises(ProfileError, match=key.replace(".", r"\.")):
        load_profile("cpu", overrides)


def test_cpu_profile_has_the_grid_the_chapter_needs():
    sizes = load_profile("cpu").scaling
    assert len(sizes.batch_sizes) >= 6 and sizes.final_bracket() <= RATIO + 1e-12 and sizes.parity_seeds >= 2


# ----------------------------------------------------------------------------- the verdict rules at their boundaries


EPS = 1e-9


GRID = (4, 8, 16, 32, 64, 128)
LINEAR = (0.8, 1.2)          # contains 1, excludes 1/2
B_STAR = (8.0, 100.0)        # inside the grid


@pytest.mark.parametrize("small, b_star, passes, parity, expected", [
    (LINEAR, B_STAR, True, True, HOLDS),
    ((CLAIM4_ALTERNATIVE + EPS, CLAIM4_SLOPE), B_STAR, True, True, HOLDS),         # 1 on the upper end: contained
    (LINEAR, (GRID[0], GRID[-1]), True, True, HOLDS),                             # B* interval on the grid's ends
    (LINEAR, (GRID[0] - EPS, 100.0), True, True, PARTLY),                         # B* may lie below the grid
    (LINEAR, (8.0, GRID[-1] + EPS), True, True, PARTLY),                          # ... or above it
    (LINEAR, B_STAR, False, True, PARTLY),                                        # the law misses a bracket
    (LINEAR, B_STAR, True, False, PARTLY),                                        # parity fails
    (LINEAR, B_STAR, False, False, DOES_NOT_HOLD),                                # (a) passes, (b) and (c) fail
    ((CLAIM4_ALTERNATIVE, CLAIM4_SLOPE + 0.2), B_STAR, True, True, INCONCLUSIVE),  # contains both
    ((0.3, 1.4), B_STAR, True, True, INCONCLUSIVE),
    ((CLAIM4_SLOPE + EPS, 2.0), B_STAR, True, True, DOES_NOT_HOLD),                # 1 just outside, 1/2 too
    ((0.2, 0.9), B_STAR, True, True, DOES_NOT_HOLD),                              # excludes 1, contains 1/2
    ((math.nan, math.nan), B_STAR, True, True, INCONCLUSIVE),                     # not measured
])
def test_claim4_rule(small, b_star, passes, parity, expected):
    assert claim4_verdict(small, b_star, GRID, passes, parity) == expected
    assert claim4_verdict(Interval(0.0, *small), Interval(0.0, *b_star), GRID, passes, parity) == expected


def test_claim4_conditions_name_what_failed():
    assert claim4_conditions((0.2, 0.4), B_STAR, GRID, True, False) == \
        {"linear": False, "saturating": True, "parity": False}
    assert not claim4_conditions(LINEAR, (math.nan, math.nan), GRID, True, True)["saturating"]


@pytest.mark.parametrize("grid, parity, expected", [
    ((CLAIM5_SLOPE, CLAIM5_ALTERNATIVE - EPS), True, HOLDS),
    ((CLAIM5_NULL + EPS, CLAIM5_SLOPE), True, HOLDS),
    ((CLAIM5_NULL + EPS, CLAIM5_SLOPE), False, PARTLY),        # parity fails
    ((CLAIM5_NULL, CLAIM5_SLOPE), True, PARTLY),               # reaches 0
    ((-0.2, 0.6), True, PARTLY),
    ((0.3, CLAIM5_ALTERNATIVE), True, INCONCLUSIVE),           # 1 on the upper end: contains both
    ((0.3, 1.4), False, INCONCLUSIVE),
    ((CLAIM5_SLOPE + EPS, 0.9), True, DOES_NOT_HOLD),          # 1/2 just outside
    ((-0.016, 0.122), True, DOES_NOT_HOLD),
    ((0.066, 0.137), True, DOES_NOT_HOLD),                     # a slope of 0.1 no longer earns partly
    ((math.nan, math.nan), True, INCONCLUSIVE),
])
def test_claim5_rule(grid, parity, expected):
    assert claim5_verdict(grid, parity) == expected


@pytest.mark.parametrize("interval, expected", [
    ((-CLAIM7_FLAT, CLAIM7_FLAT), HOLDS),                      # ends included
    ((-0.05, 0.1), HOLDS),
    ((-CLAIM7_FLAT - EPS, 0.1), INCONCLUSIVE),                 # reaches outside, contains 0
    ((-0.1, 0.35), INCONCLUSIVE),
    ((CLAIM7_NULL + EPS, 0.15), HOLDS),                        # flat enough although it excludes 0
    ((CLAIM7_NULL + EPS, 0.3), DOES_NOT_HOLD),                 # drifts with B
    ((-0.5, CLAIM7_NULL - EPS), DOES_NOT_HOLD),
    ((math.nan, math.nan), INCONCLUSIVE),
])
def test_claim7_rule(interval, expected):
    assert claim7_verdict(interval) == expected
    assert claim7_verdict(Interval(0.0, *interval)) == expected


@pytest.mark.parametrize("base, scaled, control, expected", [
    (50.0, [50.0 + PARITY_POINTS, 50.0 - PARITY_POINTS], 50.0 - PARITY_POINTS - EPS, True),
    (50.0, [50.0 + PARITY_POINTS + 1e-6, 50.0], 40.0, False),        # a scaled run too far (above counts too)
    (50.0, [49.0, 48.5], 50.0 - PARITY_POINTS, False),               # control exactly 2 points below: not more than 2
    (50.0, [49.0, math.nan], 40.0, False),                           # a diverged scaled run
    (50.0, [49.0, 49.5], math.nan, True),                            # a diverged control is far below
])
def test_parity_rule(base, scaled, control, expected):
    assert parity_holds(base, scaled, control) is expected


# ------------------------------------------------------------------------ the whole chapter's experiments, smoke-sized


@pytest.mark.slow
def test_run_scaling_smoke_resumes_from_the_store(tmp_path, data_root, monkeypatch):
    store = tmp_path / "results"
    first = scaling.run_scaling("smoke", data_root=data_root, store=store, device="cpu")
    profile = first.profile
    sizes, k = profile.scaling, profile.networks.count
    assert first.networks == k >= 2
    for optimizer in scaling.OPTIMIZERS:
        assert len(first.sweeps[optimizer]) == k * sizes.seeds
        assert first.sweep_networks[optimizer] == [n for n in range(k) for _ in range(sizes.seeds)]
        for sweep in first.sweeps[optimizer]:
            assert [br.batch_size for br in sweep] == list(sizes.batch_sizes)
            for br in sweep:
                assert all(t["batch_size"] == br.batch_size for t in br.trials)
                if br.bracketed:
                    assert br.upper / br.lower == pytest.approx(sizes.final_bracket())
                    assert not next(t for t in br.trials if t["lr"] == br.lower)["diverged"]
                    assert next(t for t in br.trials if t["lr"] == br.upper)["diverged"]
    # the networks start from different weights: different starting losses
    assert len(set(first.starting_losses)) == k
    assert len(first.prediction) == k * len(sizes.batch_sizes) * sizes.curvature_draws
    assert sorted(first.prediction.network.unique()) == list(range(k))
    assert len(first.parity) == 8 * sizes.parity_seeds and first.noise["num_samples"] == sizes.noise_samples
    assert first.parity.network.tolist() == [s % k for _ in range(8) for s in range(sizes.parity_seeds)]
    # longer trials at the smallest and the largest B, one pair per network, with the same window
    assert [[br.batch_size for br in pair] for pair in first.long_sweeps] == \
        [[min(sizes.batch_sizes), max(sizes.batch_sizes)]] * k
    horizon = first.horizon_table()
    assert len(horizon) == 2 * k and set(horizon.columns) >= {"short ratio", "long ratio"}
    judged = first.judge(n_boot=200)
    assert set(judged.words) == {4, 5, 7} and all(len(w) == k for w in judged.per_network.values())

    def refuse(*args, **kwargs):
        raise AssertionError("a stored result was computed again")

    monkeypatch.setattr(scaling, "divergence_trial", refuse)
    monkeypatch.setattr(scaling, "fit", refuse)
    monkeypatch.setattr(scaling, "curvature_prediction", refuse)
    again = scaling.run_scaling("smoke", data_root=data_root, store=store, device="cpu")
    for optimizer in scaling.OPTIMIZERS:
        assert again.brackets(optimizer).equals(first.brackets(optimizer))
    assert again.parity.equals(first.parity) and again.noise == first.noise
    assert again.judge(n_boot=200).words == judged.words          # the same data give the same words


def _result(parity_rows, sweeps=None, networks=None, prediction=None):
    import pandas as pd

    return scaling.ScalingResult(profile=load_profile("smoke"), sweeps=sweeps or {}, sweep_networks=networks or {},
                                 prediction=prediction if prediction is not None else pd.DataFrame(), noise={},
                                 parity=pd.DataFrame(parity_rows), base_lrs={}, long_sweeps=[], long_horizon=4,
                                 start_epoch=1, starting_losses=[1.0], thresholds=[1.2], dim=1, network_seeds=(0,))


def test_parity_accuracies_and_claim_evidence_feed_the_rules():
    rows = [{"arm": arm, "optimizer": opt, "multiple": m, "seed": s, "network": s, "test_acc": 40.0 + m / 4 + s,
             "diverged": False} for arm, opt, multiples, _ in scaling.PARITY_ARMS for m in multiples for s in (0, 1)]
    result = _result(rows)
    base, scaled, control = result.parity_accuracies("SGD, linear scaling", "SGD, unscaled (control)")
    assert (base, scaled, control) == (40.75, [41.5, 44.5], 44.5)
    assert not parity_holds(base, scaled, control)
    assert result.parity_accuracies("SGD, linear scaling", "SGD, unscaled (control)", network=1) == \
        (41.25, [42.0, 45.0], 45.0)
    fit = {"slope_small": Interval(1.0, 0.8, 1.2), "slope": Interval(0.5, 0.4, 0.6), "unbracketed": [],
           "saturating": {"passes": np.array([True, True, True]), "critical_batch": Interval(10, 5, 12)}}
    assert claim4_verdict(**result.claim4_evidence(fit, True)) == HOLDS
    assert claim4_verdict(**result.claim4_evidence(fit, False)) == PARTLY
    assert claim4_verdict(**result.claim4_evidence({**fit, "unbracketed": [256]}, True)) == PARTLY
    missing = result.claim4_evidence({"unbracketed": [4, 8]}, True)
    assert claim4_verdict(**missing) == INCONCLUSIVE and math.isnan(missing["small_slope"].low)


def test_judge_pools_networks_and_judges_each():
    """Three networks whose brackets follow alpha = 2.5 * 2 / lambda(B) with lambda(B) = 10 + 80 / B: claim 7
    holds for every network and pooled; the per-network words have one entry per network."""
    import pandas as pd

    b = [4, 8, 16]
    lam = {n: {bb: (10 + 80 / bb) * (1 + 0.1 * n) for bb in b} for n in range(3)}
    sweeps, nets, pred = {}, {}, []
    for opt in scaling.OPTIMIZERS:
        sweeps[opt], nets[opt] = [], []
        for n in range(3):
            sweep = []
            for bb in b:
                mid = 2.5 * 2 / lam[n][bb]
                sweep.append(scaling.Bracket(bb, mid / RATIO ** 0.5, mid * RATIO ** 0.5))
            sweeps[opt].append(sweep)
            nets[opt].append(n)
    for n in range(3):
        for bb in b:
            for d in range(2):
                pred.append({"network": n, "batch_size": bb, "draw": d, "lambda_max": lam[n][bb] * (1 + 0.01 * d)})
    rows = [{"arm": arm, "optimizer": opt, "multiple": m, "seed": s, "network": s, "test_acc": 40.0,
             "diverged": False} for arm, opt, multiples, _ in scaling.PARITY_ARMS for m in multiples for s in range(3)]
    result = _result(rows, sweeps, nets, pd.DataFrame(pred))
    result.network_seeds = (0, 1, 2)
    interval, level = result.mechanism("sgd", n_boot=500)
    assert interval.contains(0.0) and -CLAIM7_FLAT < interval.low and interval.high < CLAIM7_FLAT
    assert level == pytest.approx(2.5, rel=0.02)
    judged = result.judge(n_boot=300)
    assert judged.words[7] == HOLDS and judged.per_network[7] == [HOLDS] * 3
    assert len(judged.network_mechanism) == 3
    table = result.prediction_table()
    assert table.sgd_ratio.to_numpy() == pytest.approx(2.5, rel=0.02)
