"""The Mixture chapter's experiment: the perceptron's exact spectra against Lanczos, the measures, the natural
side's classes, the profile section, and a smoke run of the whole experiment."""

import dataclasses
import math
import time

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from hessian_lib import verdicts as V
from hessian_lib.curvature import GGNOperator, HessianOperator, dense_ggn, dense_hessian, lanczos
from hessian_lib.experiments import mixture as M
from hessian_lib.mixture import make_mixture
from hessian_lib.models.mlp import VectorMLP
from hessian_lib.profiles import MixtureSizes, ProfileError, load_profile

# --- the perceptron: exact spectra against Lanczos --------------------------------------------------------


def _trained_mlp(classes=4, dim=6, hidden=(8,), n=120, seed=0):
    mix = make_mixture(classes, dim, 3.0, seed=seed)
    x, y = mix.sample(n, seed=1)
    torch.manual_seed(seed)
    model = VectorMLP(dim, hidden, classes)
    recipe = dataclasses.replace(M.mlp_recipe("smoke"), epochs=20, batch_size=20, lr=0.1)
    M.train_mlp(model, x, y, recipe, seed=seed)
    return model.double(), x.double(), y


def test_vector_mlp_has_the_stated_parameter_count():
    model = VectorMLP(32, (32, 32), num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 2442 == 33 * 32 + 33 * 32 + 33 * 10
    with pytest.raises(ValueError):
        VectorMLP(3, (), 4)


def test_lanczos_reproduces_the_exact_spectrum_of_the_perceptron():
    model, x, y = _trained_mlp()
    loss = nn.CrossEntropyLoss()
    for dense_fn, op_cls in ((dense_hessian, HessianOperator), (dense_ggn, GGNOperator)):
        exact = torch.linalg.eigvalsh(dense_fn(model, loss, (x, y))).numpy()
        op = op_cls(model, loss, (x, y))
        # up to P steps (fewer when Lanczos finds an invariant subspace: repeated eigenvalues such as those of dead
        # units are seen once): every Ritz value is an exact eigenvalue, and both ends are found
        full = lanczos(op, op.dim, seed=0).ritz_values.numpy()
        tol = 1e-7 * np.abs(exact).max()
        assert np.all(np.min(np.abs(full[:, None] - exact[None, :]), axis=1) < tol)
        assert full.max() == pytest.approx(exact.max(), abs=tol) and full.min() == pytest.approx(exact.min(), abs=tol)
        top = np.sort(lanczos(op, 30, seed=1).ritz_values.numpy())[::-1][:5]
        assert np.allclose(top, exact[::-1][:5], rtol=1e-6)


def test_measure_agrees_with_the_exact_spectrum():
    model, x, y = _trained_mlp(n=96)
    sizes = MixtureSizes(classes=4, dim=6, hidden=(8,), separations=(2.5,), train_samples=96, cnn_train_images=200,
                         dataset_size=96, batch_sizes=(4, 8, 16), lanczos_steps=40, ggn_steps=20, shift_steps=8,
                         min_draws=2, max_draws=2, batch_images=56, chunk_size=96)
    sizes.validate()
    rec = M.measure(model, x, y, sizes, seed=0, exact=True)
    assert rec["dim"] == 92 and len(rec["exact_hessian"]) == 92
    assert rec["count"] == rec["exact_count"] and rec["resolved"]
    assert rec["share_ggn"] == pytest.approx(rec["exact_share_ggn"], abs=1e-6)
    assert rec["share_class"] == pytest.approx(rec["exact_share_class"], abs=1e-6)
    assert abs(rec["bulk"] - rec["exact_bulk"]) < 0.1
    assert rec["shift_batch_values"].shape == (3, 2, 8)
    assert not any(k.endswith("_vector") for k in rec)


# --- the measures ----------------------------------------------------------------------------------------


def test_subspace_share_of_identical_orthogonal_and_random_spans():
    gen = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(500, 6, generator=gen, dtype=torch.float64)).Q.T
    assert M.subspace_share(q[:3], q[:3] * 2 + 0)[0] == pytest.approx(1.0)
    assert M.subspace_share(q[:3], q[3:])[0] == pytest.approx(0.0, abs=1e-12)
    share, per = M.subspace_share(q[:2], q[1:3])  # one of the two vectors inside
    assert share == pytest.approx(0.5) and per.tolist() == pytest.approx([0.0, 1.0], abs=1e-12)
    rand = M.subspace_share(torch.randn(4, 500, generator=gen), torch.randn(10, 500, generator=gen))[0]
    assert rand == pytest.approx(10 / 500, abs=0.03)


def test_class_mean_gradients_average_to_the_full_gradient():
    model, x, y = _trained_mlp(n=60)
    means = M.class_mean_gradients(model, x, y, 4, chunk_size=7)
    model.zero_grad()
    nn.CrossEntropyLoss()(model(x), y).backward()
    full = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    weights = torch.bincount(y, minlength=4).double() / len(y)
    assert torch.allclose(weights @ means, full, atol=1e-10)


def test_welch_interval_matches_scipy():
    a, b = [0.91, 0.90, 0.93], [0.88, 0.85, 0.90, 0.87]
    d, lo, hi = M.welch_interval(a, b, 0.95)
    ci = scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d == pytest.approx(np.mean(a) - np.mean(b)) and (lo, hi) == pytest.approx((ci.low, ci.high))
    assert M.welch_interval([1.0, 1.0], [0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert all(math.isnan(v) for v in M.welch_interval([1.0], [0.5, 0.6])[1:])


# --- the natural side and the profile ---------------------------------------------------------------------


def test_natural_classes_come_from_distinct_superclasses(data_root):
    from hessian_lib.data import load_cifar100

    train = load_cifar100("train", data_root)
    fines = M.natural_classes(train, 10)
    coarse = [int(train.coarse_labels[train.labels == f][0]) for f in fines]
    assert coarse == list(range(10)) and len(set(fines)) == 10
    for f, c in zip(fines, coarse):  # the smallest fine index of its superclass
        assert f == int(train.labels[train.coarse_labels == c].min())
    tr, te, got = M.natural_data("smoke", data_root)
    c = load_profile("smoke").mixture.classes
    assert got == fines[:c] and len(tr) == load_profile("smoke").mixture.cnn_train_images
    assert np.bincount(tr.labels.numpy()).tolist() == [len(tr) // c] * c
    assert np.bincount(te.labels.numpy()).tolist() == [100] * c
    assert te.classes == tuple(train.classes[f] for f in fines[:c])


def test_every_profile_has_a_valid_mixture_section():
    for name in ("cpu", "paper", "smoke"):
        s = load_profile(name).mixture
        assert s.separation in s.separations
        assert s.lanczos_steps >= V.CLAIM8_SEARCH_FACTOR * s.classes + 2


@pytest.mark.parametrize("overrides, message", [
    ({"mixture.classes": 21}, "2..20"),
    ({"mixture.dim": 5}, "at least mixture.classes"),
    ({"mixture.separation": 1.7}, "include mixture.separation"),
    ({"mixture.lanczos_steps": 20}, "at least 2 x classes"),
    ({"mixture.cnn_low_res_epochs": 8}, "below mixture.cnn_epochs"),
    ({"mixture.batch_sizes": "4,8"}, "three increasing"),
    ({"mixture.batch_sizes": "4,8,300"}, "below mixture.dataset_size"),
    ({"mixture.cnn_train_images": 6000}, "cannot exceed the 5,000"),
    ({"mixture.ggn_steps": 5}, "ggn_steps"),
    ({"mixture.covariance_decay": -1}, "must not be negative"),
])
def test_invalid_mixture_sizes_fail_with_a_clear_message(overrides, message):
    with pytest.raises(ProfileError, match=message):
        load_profile("cpu", overrides)


# --- the whole experiment at the smoke profile ------------------------------------------------------------


@pytest.mark.slow
def test_the_smoke_study_runs_and_loads_from_the_store(tmp_path, data_root):
    from hessian_lib.experiments.mixture_analysis import run_mixture

    study = run_mixture("smoke", seed=0, data_root=data_root, device="cpu", store=tmp_path)
    k, sizes = load_profile("smoke").networks.count, load_profile("smoke").mixture
    assert [len(study.records[s]) for s in M.SIDES] == [k, k]
    assert sorted(study.sweep) == list(sizes.separations) and all(len(v) == k for v in study.sweep.values())
    assert study.verdict() in V.VERDICT_WORDS and len(study.network_verdicts()) == k
    assert set(study.measure_words()) == set(V.CLAIM8_MEASURES)
    table = study.verdict_table()
    assert list(table["measure"])[0] == "outlier count" and len(table) == 5
    assert len(study.validation_table()) == k and len(study.sweep_table()) == k * len(sizes.separations)
    assert isinstance(study.summary(), str) and "outliers" in study.summary()
    import matplotlib.pyplot as plt

    from hessian_lib.plots import mixture as PM

    for draw in (PM.spectra_figure, PM.gap_figure, PM.separation_figure, PM.measures_figure, PM.shift_figure):
        plt.close(draw(study))
    plt.close(PM.explorer_frame(study, sizes.separations[0], sizes.batch_sizes[-1]))
    start = time.perf_counter()
    again = run_mixture("smoke", seed=0, data_root=data_root, device="cpu", store=tmp_path)
    assert time.perf_counter() - start < 10
    assert again.verdict() == study.verdict()
    assert np.array_equal(again.values("network", "share_class"), study.values("network", "share_class"))
