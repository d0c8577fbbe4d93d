r"""Gaussian-mixture data: C classes in d dimensions, a shared within-class covariance, a separation knob.

The synthetic side of the Mixture chapter. A sample of class :math:`c` is

.. math:: x = \mu_c + \Sigma^{1/2} z, \qquad z \sim \mathcal N(0, I_d),

with the **class means** :math:`\mu_c = s\,(q_c - \bar q)`: :math:`q_1, \dots, q_C` are orthonormal
directions (the first C columns of a seeded random orthogonal matrix) and :math:`\bar q` their
mean, so the means form a centred regular simplex spanning C - 1 dimensions, every pair of them
:math:`s\sqrt2` apart (``separation`` is :math:`s`). The **within-class covariance**
:math:`\Sigma = V\,\mathrm{diag}(\sigma_1^2, \dots, \sigma_d^2)\,V^\top` is the same for every class,
with a seeded random orthogonal :math:`V` (independent of the means' directions) and variances
:math:`\sigma_i^2 \propto i^{-\alpha}` (``covariance_decay`` :math:`\alpha`; 0 is isotropic)
normalised to a mean of 1, so :math:`\mathrm{tr}\,\Sigma = d` whatever :math:`\alpha`. The
separation is in units of the average within-class standard deviation per direction.

Labels are balanced (n // C per class, the first n % C classes one more) and shuffled. Everything
is a function of the seeds, so the same arguments always give the same numbers.

>>> mix = make_mixture(classes=4, dim=8, separation=3.0, seed=0)
>>> mix.means.shape, mix.covariance.shape
((4, 8), (8, 8))
>>> round(float(np.linalg.norm(mix.means[0] - mix.means[1])), 6)   # s * sqrt(2)
4.242641
>>> round(float(np.trace(mix.covariance)), 6)                       # tr(Sigma) = d
8.0
>>> x, y = mix.sample(10, seed=1)
>>> x.shape, x.dtype, y.tolist().count(0), y.tolist().count(3)      # 10 = 3 + 3 + 2 + 2
(torch.Size([10, 8]), torch.float32, 3, 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["GaussianMixture", "balanced_labels", "make_mixture"]


def balanced_labels(n: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """int64 [n] labels in 0..C-1, n // C of each class and one more for the first n % C, shuffled by ``rng``.

    >>> np.bincount(balanced_labels(7, 3, np.random.default_rng(0))).tolist()
    [3, 2, 2]
    """
    if n < 1 or classes < 2:
        raise ValueError(f"need n >= 1 and at least two classes, got n = {n}, C = {classes}")
    labels = np.repeat(np.arange(classes), n // classes)
    labels = np.concatenate([labels, np.arange(n % classes)])
    return rng.permutation(labels).astype(np.int64)


def _orthogonal(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix [d, d] (QR of a Gaussian matrix with the signs fixed)."""
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


@dataclass(frozen=True)
class GaussianMixture:
    r"""A C-class Gaussian mixture with equal class weights and a shared covariance (see the module docstring).

    ``means``: [C, d] class means; ``covariance``: [d, d] within-class covariance
    :math:`\Sigma`; ``factor``: [d, d] with ``factor @ factor.T == covariance``;
    ``separation``: :math:`s`; ``seed``: the seed the parameters were drawn with. All float64.
    """

    means: np.ndarray
    covariance: np.ndarray
    factor: np.ndarray
    separation: float
    seed: int

    @property
    def classes(self) -> int:
        """C, the number of classes."""
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        """d, the input dimension."""
        return int(self.means.shape[1])

    def sample(self, n: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples: inputs float32 [n, d] and balanced, shuffled labels int64 [n] (seeded by ``seed``)."""
        rng = np.random.default_rng([int(self.seed), int(seed)])
        y = balanced_labels(int(n), self.classes, rng)
        z = rng.standard_normal((int(n), self.dim))
        x = self.means[y] + z @ self.factor.T
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)

    def bayes_accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        r"""Accuracy of the Bayes-optimal classifier on (x [n, d], y [n]): the class of largest likelihood.

        With equal weights and a shared covariance it is linear (Fisher's discriminant with the true
        parameters): :math:`\arg\max_c\, \mu_c^\top\Sigma^{-1}x - \tfrac12\mu_c^\top\Sigma^{-1}\mu_c`. On a
        large fresh sample it estimates the best accuracy any classifier can reach on this mixture.
        """
        precision_means = np.linalg.solve(self.covariance, self.means.T)  # [d, C]
        scores = x.double().numpy() @ precision_means - 0.5 * np.sum(self.means.T * precision_means, axis=0)
        return float(np.mean(scores.argmax(axis=1) == y.numpy()))


def make_mixture(classes: int, dim: int, separation: float, *, covariance_decay: float = 0.0,
                 seed: int = 0) -> GaussianMixture:
    r"""The mixture of ``classes`` (C) Gaussians in ``dim`` (d >= C) dimensions at ``separation`` (s >= 0).

    The means' directions and the covariance's eigenbasis come from ``seed`` alone, so mixtures
    of one seed at different separations share them: only the distance between the means
    changes. ``covariance_decay`` (:math:`\alpha \ge 0`) shapes the within-class variances
    :math:`\propto i^{-\alpha}`.
    """
    if classes < 2 or dim < classes:
        raise ValueError(f"need at least two classes and dim >= classes, got C = {classes}, d = {dim}")
    if not separation >= 0 or not covariance_decay >= 0:
        raise ValueError(f"separation and covariance_decay must not be negative, got {separation}, {covariance_decay}")
    rng = np.random.default_rng([int(seed), 17])
    directions = _orthogonal(dim, rng)[:, :classes].T  # [C, d], orthonormal rows
    means = float(separation) * (directions - directions.mean(axis=0))
    basis = _orthogonal(dim, rng)
    variances = np.arange(1, dim + 1, dtype=float) ** -float(covariance_decay)
    variances *= dim / variances.sum()
    factor = basis * np.sqrt(variances)
    return GaussianMixture(means=means, covariance=factor @ factor.T, factor=factor, separation=float(separation),
                           seed=int(seed))
