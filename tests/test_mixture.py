"""The Mixture chapter's Gaussian-mixture generator: its examples, the means, the covariance, sampling,
the Bayes accuracy, and the mixtures it refuses."""

import doctest
import math

import numpy as np
import pytest
import torch

import hessian_lib.mixture
from hessian_lib.mixture import balanced_labels, make_mixture

# --- the generator ----------------------------------------------------------------------------------------


def test_the_generator_docstring_examples_run():
    result = doctest.testmod(hessian_lib.mixture)
    assert result.failed == 0 and result.attempted >= 5


def test_class_means_form_a_centred_simplex_at_the_separation():
    mix = make_mixture(classes=5, dim=9, separation=2.0, seed=3)
    mu = mix.means
    assert np.allclose(mu.mean(axis=0), 0, atol=1e-12)
    dist = np.linalg.norm(mu[:, None] - mu[None, :], axis=-1)
    assert np.allclose(dist[~np.eye(5, dtype=bool)], 2.0 * math.sqrt(2))
    assert np.linalg.matrix_rank(mu) == 4  # C - 1 dimensions
    assert np.trace(mix.covariance) == pytest.approx(9.0)
    assert np.allclose(mix.factor @ mix.factor.T, mix.covariance)


def test_covariance_decay_shapes_the_within_class_variances():
    iso = make_mixture(4, 8, 1.0, seed=0)
    assert np.allclose(iso.covariance, np.eye(8))
    decayed = np.linalg.eigvalsh(make_mixture(4, 8, 1.0, covariance_decay=1.0, seed=0).covariance)[::-1]
    expected = 1.0 / np.arange(1, 9)
    assert np.allclose(decayed, expected * 8 / expected.sum())


def test_sample_statistics_match_the_mixture():
    mix = make_mixture(classes=4, dim=6, separation=1.5, covariance_decay=0.5, seed=1)
    n = 20_003
    x, y = mix.sample(n, seed=7)
    x, y = x.double().numpy(), y.numpy()
    counts = np.bincount(y, minlength=4)
    assert counts.tolist() == [5001, 5001, 5001, 5000]  # balanced: n // C each, the first n % C one more
    for c in range(4):
        xc = x[y == c]
        se = np.sqrt(np.diag(mix.covariance) / len(xc))
        assert np.all(np.abs(xc.mean(axis=0) - mix.means[c]) < 5 * se), c
    centred = x - mix.means[y]
    cov = centred.T @ centred / n
    assert np.max(np.abs(cov - mix.covariance)) < 0.05


def test_sampling_is_seeded_and_separations_share_directions():
    a, b = make_mixture(3, 5, 1.0, seed=2), make_mixture(3, 5, 4.0, seed=2)
    assert np.allclose(4.0 * a.means, b.means) and np.allclose(a.covariance, b.covariance)
    x1, y1 = a.sample(50, seed=1)
    x2, y2 = a.sample(50, seed=1)
    x3, _ = a.sample(50, seed=2)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert not np.allclose(make_mixture(3, 5, 1.0, seed=3).means, a.means)


def test_bayes_accuracy_spans_chance_to_certainty():
    x, y = make_mixture(4, 8, 0.0, seed=0).sample(4000, seed=1)
    assert make_mixture(4, 8, 0.0, seed=0).bayes_accuracy(x, y) == pytest.approx(0.25, abs=0.05)
    far = make_mixture(4, 8, 10.0, seed=0)
    assert far.bayes_accuracy(*far.sample(2000, seed=1)) > 0.999


def test_bad_mixtures_are_refused():
    with pytest.raises(ValueError, match="dim >= classes"):
        make_mixture(classes=10, dim=5, separation=1.0)
    with pytest.raises(ValueError, match="negative"):
        make_mixture(classes=3, dim=5, separation=-1.0)
    with pytest.raises(ValueError):
        balanced_labels(5, 1, np.random.default_rng(0))
