"""Library code of the Spectra chapter: draws, the shift and its exponent, the noise estimate, spectra, the store."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from hessian_lib.curvature import dense_ggn, dense_hessian
from hessian_lib.experiments import spectra as S
from hessian_lib.experiments import spectra_analysis as SA
from hessian_lib.profiles import SpectraSizes, load_profile
from hessian_lib.store import ResultsStore

# ----------------------------------------------------------------------------- draws


def test_required_draws_reaches_the_target_standard_error():
    # mean 4, sd sqrt(2), shift 2: (sqrt(2) / (0.25 * 2))^2 = 8 draws
    assert S.required_draws(np.array([3.0, 5.0]), 2.0) == 8
    assert S.required_draws(np.array([3.0, 5.0]), 2.0, target=0.5) == 2
    assert S.required_draws(np.array([3.0, 5.0]), 4.0) == math.inf      # no shift: as many as allowed
    assert S.required_draws(np.array([3.0, np.nan]), 1.0) == math.inf    # one finite draw: no spread


def test_plan_draws_grants_the_cheapest_needs_first_within_the_budget():
    b = [4, 16, 64]
    first = 2 * sum(b)  # 168 images for the first draws
    # everything fits
    np.testing.assert_array_equal(S.plan_draws([5, 5, 5], b, min_draws=2, max_draws=10, budget=10_000), [5, 5, 5])
    # capped at max_draws, never below min_draws
    np.testing.assert_array_equal(S.plan_draws([math.inf, 1, 30], b, min_draws=2, max_draws=10, budget=10_000),
                                  [10, 2, 10])
    # exactly the budget for the two cheapest needs (3 x 4 + 3 x 16 = 60 images), nothing left for B = 64
    np.testing.assert_array_equal(S.plan_draws([5, 5, 5], b, min_draws=2, max_draws=10, budget=first + 60), [5, 5, 2])
    # one image short: the last need granted gets part of it
    np.testing.assert_array_equal(S.plan_draws([5, 5, 5], b, min_draws=2, max_draws=10, budget=first + 59), [5, 4, 2])
    # an expensive small need can go before a cheap large one: cost is extra draws x B
    np.testing.assert_array_equal(S.plan_draws([10, 3, 3], b, min_draws=2, max_draws=10, budget=first + 16),
                                  [2, 3, 2])


def test_extreme_ritz_skips_padding():
    values = np.array([[1.0, 3.0, np.nan], [-2.0, 0.5, 4.0]])
    res = np.array([[0.1, 0.2, np.nan], [0.3, 0.4, 0.5]])
    top, top_res = SA.extreme_ritz(values, res, "top")
    bottom, bottom_res = SA.extreme_ritz(values, res, "bottom")
    np.testing.assert_array_equal(top, [3.0, 4.0])
    np.testing.assert_array_equal(top_res, [0.2, 0.5])
    np.testing.assert_array_equal(bottom, [1.0, -2.0])
    np.testing.assert_array_equal(bottom_res, [0.1, 0.3])


# ----------------------------------------------------------------------------- the exponent


def test_fit_shift_exponent_recovers_gamma_and_its_interval_covers():
    x = 1 / np.array([4, 8, 16, 32, 64]) - 1 / 512
    rng = np.random.default_rng(0)
    hits, n = 0, 400
    for _ in range(n):
        for gamma in (1.0, 0.5):
            truth = 3.0 * x**gamma
            se = 0.1 * truth
            fit = SA.fit_shift_exponent(x, truth + se * rng.standard_normal(x.size), se, confidence=0.95)
            hits += fit["gamma_low"] <= gamma <= fit["gamma_high"]
    # 800 intervals: binomial sd of the coverage 0.8%; the delta method on log(shift) at 10% noise is close
    assert 0.92 <= hits / (2 * n) <= 0.98
    exact = SA.fit_shift_exponent(x, 2.0 * x**0.7, 0.01 * x**0.7)
    assert exact["gamma"] == pytest.approx(0.7, abs=1e-9) and exact["amplitude"] == pytest.approx(2.0, rel=1e-9)
    assert exact["n_used"] == 5


def test_fit_shift_exponent_uses_only_positive_shifts():
    x = np.array([0.2, 0.1, 0.05, 0.02])
    fit = SA.fit_shift_exponent(x, [2.0, 1.0, -0.1, 0.2], [0.1, 0.1, 0.1, 0.01])
    assert fit["n_used"] == 3
    assert math.isfinite(fit["gamma"])
    none = SA.fit_shift_exponent(x, [2.0, -1.0, -0.1, 0.2], [0.1, 0.1, 0.1, 0.01])
    assert none["n_used"] == 2 and math.isnan(none["gamma"]) and math.isnan(none["gamma_low"])


def test_shift_statistics_from_a_spectrum_record():
    m = 3
    values = np.full((2, 4, m), np.nan)
    residuals = np.zeros((2, 4, m))
    values[0, :3] = [[0.0, 1.0, 5.0], [0.0, 1.0, 7.0], [-1.0, 1.0, 6.0]]
    values[1, :2] = [[0.0, 1.0, 4.5], [0.0, 1.0, 5.5]]
    residuals[1, 1, 2] = 0.2  # 0.2 > 1% of 5.5: flagged
    sp = {"empirical_values": np.array([-0.5, 1.0, 4.0]), "empirical_residuals": np.array([0.0, 0.0, 0.01]),
          "batch_values": values, "batch_residuals": residuals, "batch_sizes": np.array([2, 8]), "dataset_size": 16}
    t = SA.shift_statistics(sp, "top")
    np.testing.assert_allclose(t["shift"], [2.0, 1.0])
    np.testing.assert_allclose(t["se"], [1 / np.sqrt(3), np.sqrt(0.5) / np.sqrt(2)])
    np.testing.assert_array_equal(t["draws"], [3, 2])
    np.testing.assert_array_equal(t["flagged"], [0, 1])
    np.testing.assert_allclose(t["x"], [1 / 2 - 1 / 16, 1 / 8 - 1 / 16])
    assert t.attrs["empirical"] == 4.0 and not t.attrs["empirical_flagged"]  # 0.01 <= 1% of 4
    bottom = SA.shift_statistics(sp, "bottom")
    np.testing.assert_allclose(bottom["shift"], [1 / 3 - 0.5, -0.5])


# ----------------------------------------------------------------------------- noise and spectra on a tiny network


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(24, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    return model, x, y


def test_direct_noise_scale_matches_dense_per_sample_hessians():
    model, x, y = _tiny()
    x, y = x[:12], y[:12]
    loss = nn.CrossEntropyLoss()
    full = dense_hessian(model, loss, (x, y))
    per = torch.stack([dense_hessian(model, loss, (x[i:i + 1], y[i:i + 1])) for i in range(12)])
    p = full.shape[0]
    exact = float(((per - full) ** 2).sum(dim=(1, 2)).mean() / p) ** 0.5
    v = torch.linalg.eigh(full).eigenvectors[:, -1]
    along = per - full
    proj = torch.eye(p, dtype=full.dtype) - torch.outer(v, v)
    s2_exact = float(torch.stack([(proj @ a @ v).pow(2).sum() for a in along]).mean())
    est = S.per_sample_noise_scale(model, x, y, "hessian", samples=12, probes=400, chunk_size=5, seed=1,
                                   directions={"top": v.numpy()})
    # 400 Gaussian probes: relative error of ||A||_F^2 about sqrt(2/400) = 7%, of s1 about half that
    assert est["s1"] == pytest.approx(exact, rel=0.08)
    assert est["s2_top"] == pytest.approx(s2_exact, rel=1e-6)  # exact: no probes along a given direction
    assert est["dim"] == p and est["s2_top_err"] > 0


@pytest.mark.parametrize("kind, dense", [("hessian", dense_hessian), ("ggn", dense_ggn)])
def test_spectrum_at_matches_dense_eigenvalues(kind, dense):
    model, x, y = _tiny()
    p = sum(q.numel() for q in model.parameters())
    sizes = SpectraSizes(checkpoints=(1, 2), dataset_size=24, batch_sizes=(4, 8, 12), lanczos_steps=p,
                         min_draws=2, max_draws=3, batch_images=60, chunk_size=10)
    sp = S.spectrum_at(model, x, y, kind, sizes, seed=0)
    exact = torch.linalg.eigvalsh(dense(model, nn.CrossEntropyLoss(), (x, y))).numpy()
    scale = np.abs(exact).max()
    # P steps with full re-orthogonalisation: the extremes of the empirical matrix are exact
    assert np.nanmax(sp["empirical_values"]) == pytest.approx(exact[-1], abs=1e-8 * scale)
    assert np.nanmin(sp["empirical_values"]) == pytest.approx(exact[0], abs=1e-8 * scale)
    assert sp["batch_values"].shape == (3, 3, p) == sp["batch_residuals"].shape
    assert sp["dim"] == p and sp["dataset_size"] == 24 and sp["num_classes"] == 3
    draws = sp["draws"]
    assert np.all((draws >= 2) & (draws <= 3)) and int((draws * np.array([4, 8, 12])).sum()) <= 60
    for i, d in enumerate(draws):
        assert np.isfinite(sp["batch_values"][i, :d, 0]).all() and np.isnan(sp["batch_values"][i, d:]).all()
    # a batch draw is the batch matrix of its images: check the first one against a dense batch matrix
    from hessian_lib.curvature import batch_operator
    from hessian_lib.experiments.theory import child_seed

    op = batch_operator(kind, model, nn.CrossEntropyLoss(), (x, y), 4, seed=child_seed(0, 2, 4, 0))
    exact_b = torch.linalg.eigvalsh(dense(model, nn.CrossEntropyLoss(), op._data[0])).numpy()
    assert np.nanmax(sp["batch_values"][0, 0]) == pytest.approx(exact_b[-1], abs=1e-6 * np.abs(exact_b).max())


@pytest.mark.slow
def test_run_spectra_on_the_smoke_profile_and_loads_from_the_store(tmp_path, data_root, monkeypatch):
    torch.set_num_threads(1)
    study = S.run_spectra("smoke", data_root=data_root, device="cpu", store=tmp_path)
    profile = load_profile("smoke")
    cfg, k = profile.spectra, profile.networks.count
    assert len(study.networks) == len(study.seeds) == k >= 2 and study.seeds[0] == 0
    assert study.epochs() == list(cfg.checkpoints)
    result = study.first
    assert set(result.spectra) == {(e, kind) for e in cfg.checkpoints for kind in SA.KINDS}
    table = result.shift_table()
    assert len(table) == len(cfg.checkpoints) * 3
    assert set(table["regime"]) <= {"both", "outlier (gamma = 1)", "bulk edge (gamma = 1/2)", "neither"}
    words = {"holds", "partly", "inconclusive", "does not hold"}
    assert result.verdict("hessian")[0] in words
    assert study.verdict("hessian")[0] in words and len(study.network_verdicts("ggn")) == k
    pooled = study.pooled_table()
    assert len(pooled) == len(table) and all(len(p) == k for p in pooled["per network"])
    # the networks differ: their empirical top eigenvalues are not the same
    last = cfg.checkpoints[-1]
    tops = [net.shifts(last, "hessian", "top").attrs["empirical"] for net in study.networks]
    assert len(set(tops)) == k
    preds = result.prediction_table()
    assert set(preds["model"]) == set(SA.PREDICTIONS) and preds["closest"].sum() >= len(table)
    state = result.checkpoint_table()
    assert (state["mean max. softmax"] > 0.01).all() and (state["mean max. softmax"] <= 1).all()

    def fail(*args, **kwargs):
        raise AssertionError("recomputed instead of loading from the store")

    monkeypatch.setattr(S, "spectrum_at", fail)
    monkeypatch.setattr(S, "per_sample_noise_scale", fail)
    monkeypatch.setattr(S, "network_state", fail)
    again = S.run_spectra("smoke", data_root=data_root, device="cpu", store=ResultsStore(tmp_path))
    first = result.spectra[(last, "hessian")]
    np.testing.assert_array_equal(again.first.spectra[(last, "hessian")]["batch_values"], first["batch_values"])
    # the same data and seeds give the same words (the determinism the scoreboard promises)
    for kind in SA.KINDS:
        assert again.verdict(kind) == study.verdict(kind)
        assert again.network_verdicts(kind) == study.network_verdicts(kind)


# ----------------------------------------------------------------------------- pooling over networks


def _synthetic_spectrum(gamma, amplitude, *, empirical=5.0, draws=12, batch_sizes=(1, 2, 4, 8, 16), n=256,
                        noise=0.1, seed=0, flagged=False):
    """A spectrum record whose top end has a shift amplitude * (1/B - 1/N)^gamma, relative noise ``noise``."""
    rng = np.random.default_rng(seed)
    b = np.asarray(batch_sizes)
    x = 1 / b - 1 / n
    values = np.full((b.size, draws, 3), np.nan)
    residuals = np.zeros_like(values)
    for i in range(b.size):
        values[i, :, 2] = empirical + amplitude * x[i] ** gamma * (1 + noise * rng.standard_normal(draws))
        values[i, :, 1], values[i, :, 0] = 0.0, -0.1
        if flagged:
            residuals[i, :, 2] = 1.0
    return {"empirical_values": np.array([-0.1, 0.0, empirical]), "empirical_residuals": np.zeros(3),
            "batch_values": values, "batch_residuals": residuals, "batch_sizes": b, "dataset_size": n}


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_pooled_exponent_recovers_a_shared_gamma_across_networks(gamma):
    spectra = [_synthetic_spectrum(gamma, a, seed=i) for i, a in enumerate((2.0, 2.5, 1.6))]
    table, fit = SA.pool_shift(spectra, "top", seed=0)
    assert fit["gamma_low"] <= gamma <= fit["gamma_high"] and fit["gamma_high"] - fit["gamma_low"] < 0.15
    assert fit["networks"] == 3 and fit["unfitted"] == 0
    per = [SA.shift_statistics(sp, "top")["shift"].to_numpy() for sp in spectra]
    np.testing.assert_allclose(table["shift"], np.mean(per, axis=0))
    assert list(table.columns[-3:]) == ["shift net 0", "shift net 1", "shift net 2"]
    assert table["draws"].tolist() == [36] * 5


def test_pooled_interval_widens_when_networks_disagree():
    agree = [_synthetic_spectrum(0.75, 2.0, seed=i) for i in range(3)]
    disagree = [_synthetic_spectrum(g, 2.0, seed=i) for i, g in enumerate((0.4, 0.75, 1.1))]
    _, narrow = SA.pool_shift(agree, "top", seed=0)
    _, wide = SA.pool_shift(disagree, "top", seed=0)
    assert wide["gamma_high"] - wide["gamma_low"] > 2 * (narrow["gamma_high"] - narrow["gamma_low"])
    # within one network only the batch scatter enters: its interval is the narrowest
    _, one = SA.pool_shift(disagree[:1], "top", seed=0)
    assert one["gamma_high"] - one["gamma_low"] < wide["gamma_high"] - wide["gamma_low"]


def test_pooled_evidence_of_a_study_flags_unresolved_ends():
    nets = []
    for i in range(2):
        sp = _synthetic_spectrum(1.0, 2.0, seed=i, flagged=(i == 0))
        nets.append(SA.SpectraResult(train=None, spectra={(1, "hessian"): sp, (2, "hessian"): sp}, noise={},
                                    states={}, dim=3, n_data=256))
    study = SA.SpectraStudy(networks=nets, seeds=(0, 1))
    ev = study.pooled_evidence(2, "hessian", "top")
    assert ev.flagged_fraction == pytest.approx(0.5) and ev.resolved()
    assert (
        not nets[0].end_evidence(2, "hessian", "top").resolved()
        and nets[1].end_evidence(2, "hessian", "top").resolved()
    )


def test_pool_shift_refuses_mismatched_grids():
    with pytest.raises(ValueError):
        SA.pool_shift([_synthetic_spectrum(1.0, 2.0), _synthetic_spectrum(1.0, 2.0, batch_sizes=(1, 2, 4, 8, 32))],
                     "top")
