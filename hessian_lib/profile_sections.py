"""The sections of a profile, each a frozen dataclass that validates its own sizes.

:class:`~hessian_lib.profiles.Profile` groups them; the limits between sections are checked there.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hessian_lib.profiles import Profile

__all__ = [
    "ProfileError",
    "TheorySizes",
    "DataSizes",
    "TrainSizes",
    "NetworkSizes",
    "SpectraSizes",
    "ScalingSizes",
    "LearnerSizes",
    "MixtureSizes",
]


class ProfileError(ValueError):
    """An unknown profile, an unknown override key, or a size out of range."""


def _positive(name: str, value: Any) -> None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ProfileError(f"{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class TheorySizes:
    """Sizes of the random-matrix simulations of the Theory chapter.

    ``dim`` is the matrix size P; ``batch_sizes`` the grid of B for the
    measured-vs-predicted outlier tables; ``n_data`` the dataset size N in the
    batch-size mapping ``s^2 = P sigma^2 (1/B - 1/N)``; ``repeats`` the number of
    independent matrices per point. The ``widget_*`` tuples span the grid of
    precomputed frames of the interactive figure (one frame per combination).
    """

    dim: int = 800
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64, 256, 1024)
    n_data: int = 50_000
    repeats: int = 4
    mp_batch_sizes: tuple[int, ...] = (20, 50, 100, 250, 1000, 16000)
    threshold_points: int = 25
    widget_dim: tuple[int, ...] = (400, 1600)
    widget_spike: tuple[float, ...] = (0.5, 1.0, 2.0)
    widget_noise: tuple[float, ...] = (2.0, 4.0)
    widget_batch_sizes: tuple[int, ...] = (1, 4, 16, 64, 256, 1024)

    def validate(self) -> None:
        """Raise :class:`ProfileError`, naming the key, for a value out of range."""
        for f in dataclasses.fields(self):
            _positive(f"theory.{f.name}", getattr(self, f.name))
        if max(self.batch_sizes) > self.n_data:
            raise ProfileError("theory.batch_sizes must not exceed theory.n_data")


@dataclass(frozen=True)
class DataSizes:
    """How much of CIFAR-100 an experiment sees.

    ``train_subset`` / ``test_subset``: number of images in the deterministic,
    class-stratified subsets (50,000 / 10,000 is all of CIFAR-100);
    ``curvature_subset``: images in the fixed subset used for curvature.
    """

    train_subset: int = 5_000
    test_subset: int = 1_000
    curvature_subset: int = 1_000

    def validate(self) -> None:
        """Raise :class:`ProfileError`, naming the key, for a value out of range."""
        for f in dataclasses.fields(self):
            _positive(f"data.{f.name}", getattr(self, f.name))
        if self.train_subset > 50_000:
            raise ProfileError("data.train_subset cannot exceed the 50,000 CIFAR-100 training images")
        if self.test_subset > 10_000:
            raise ProfileError("data.test_subset cannot exceed the 10,000 CIFAR-100 test images")
        if self.curvature_subset > self.train_subset:
            raise ProfileError("data.curvature_subset cannot exceed data.train_subset")


_OPTIMIZERS = ("sgd", "adam", "adamw")
_SCHEDULES = ("authors", "linear", "constant")


@dataclass(frozen=True)
class TrainSizes:
    """The network and the training recipe of a run (see ``hessian_lib.trainer``).

    ``model``: a name from ``hessian_lib.models.MODEL_NAMES``; ``width`` multiplies its channel
    counts; ``depth`` (0: the depth in the name) and ``widen_factor`` (WideResNet's k) size it.
    ``dropout``: the network's dropout probability (-1: the architecture's default).
    ``optimizer``: sgd (with ``momentum``, Nesterov's if ``nesterov``), adam or adamw;
    ``weight_decay`` is L2 for sgd/adam and decoupled for adamw. ``schedule``: ``authors``
    (constant for 50% of the epochs, linear decay to 1% of ``lr`` by 90%, then flat), ``linear``
    (linear decay to zero) or ``constant``; ``warmup_epochs`` of linear warm-up first.
    ``label_smoothing``: of the training cross-entropy (0: none; evaluation never smooths).
    ``checkpoint_every``: epochs between checkpoints (the last epoch is always kept).
    ``divergence_loss``: a training loss above it (or NaN/inf) stops the run as diverged.
    ``augment``: random crop (4-pixel padding) + horizontal flip on the training images.
    ``mixed_precision``: bf16 autocast for training where the device has native bf16 (CUDA; CPUs with
    AVX512-BF16 or AMX), float32 elsewhere (also the per-epoch test evaluation's; curvature stays float32).
    ``channels_last``: NHWC tensors in training (faster convolutions). ``eval_flip``: test accuracy
    averages the logits of each image and its mirror image. ``low_res_epochs``: progressive
    resizing: the first epochs train on random ``low_res_size``-pixel crops (and flips) of the
    32-pixel images, at ``(low_res_size/32)^2`` of the cost; the network must pool globally.
    """

    model: str = "vgg16"
    width: float = 0.125
    depth: int = 0
    widen_factor: int = 10
    dropout: float = -1.0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    label_smoothing: float = 0.0
    optimizer: str = "sgd"
    schedule: str = "authors"
    warmup_epochs: float = 0.0
    checkpoint_every: int = 5
    divergence_loss: float = 100.0
    augment: bool = True
    mixed_precision: bool = True
    channels_last: bool = True
    eval_flip: bool = False
    low_res_epochs: int = 0
    low_res_size: int = 24

    def validate(self) -> None:
        """Raise :class:`ProfileError`, naming the key, for a value out of range."""
        from hessian_lib.models import MODEL_NAMES, canonical_name

        try:
            canonical_name(self.model)
        except ValueError:
            raise ProfileError(f"unknown model {self.model!r}; valid models: {', '.join(MODEL_NAMES)}") from None
        for name in ("width", "widen_factor", "epochs", "batch_size", "checkpoint_every", "divergence_loss"):
            _positive(f"train.{name}", getattr(self, name))
        if self.depth < 0:
            raise ProfileError(f"train.depth must be 0 (the named depth) or positive, got {self.depth}")
        if not self.lr > 0:
            raise ProfileError(f"train.lr (learning rate) must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ProfileError(f"train.momentum must be in [0, 1), got {self.momentum}")
        if not (0 <= self.dropout < 1 or self.dropout == -1):
            raise ProfileError(
                f"train.dropout must be in [0, 1) or -1 (the architecture's default), got {self.dropout}")
        if self.low_res_epochs < 0 or not 8 <= self.low_res_size <= 32 or self.low_res_size % 2:
            raise ProfileError("train.low_res_epochs must not be negative and train.low_res_size must be even, "
                               f"in 8..32; got {self.low_res_epochs} and {self.low_res_size}")
        if not 0 <= self.label_smoothing < 1:
            raise ProfileError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.weight_decay < 0 or self.warmup_epochs < 0:
            raise ProfileError("train.weight_decay and train.warmup_epochs must not be negative")
        if self.optimizer not in _OPTIMIZERS:
            raise ProfileError(f"unknown optimizer {self.optimizer!r}; valid optimizers: {', '.join(_OPTIMIZERS)}")
        if self.schedule not in _SCHEDULES:
            raise ProfileError(f"unknown schedule {self.schedule!r}; valid schedules: {', '.join(_SCHEDULES)}")


@dataclass(frozen=True)
class NetworkSizes:
    """The independently trained networks the chapters measure.

    ``count``: K networks of the ``train`` section's recipe, trained with K different seeds
    (:func:`hessian_lib.experiments.network_seeds`); a claim about trained networks is judged on
    each and pooled over all, so its intervals carry the variation between networks.
    ``bn_refresh_images``: before any curvature or trial starts from a checkpoint, its BatchNorm
    running statistics are recomputed on this many training images at full resolution with
    test-time transforms (the authors' protocol; a checkpoint trained on low-resolution crops
    would otherwise carry statistics of 24-pixel images); 0 keeps the training run's statistics.
    """

    count: int = 1
    bn_refresh_images: int = 2_000

    def validate(self) -> None:
        """Raise :class:`ProfileError`, naming the key, for a value out of range."""
        _positive("networks.count", self.count)
        if self.bn_refresh_images < 0:
            raise ProfileError(f"networks.bn_refresh_images must not be negative, got {self.bn_refresh_images}")


@dataclass(frozen=True)
class SpectraSizes:
    """Sizes of the Spectra chapter: batch against empirical Hessian and GGN spectra.

    ``checkpoints``: epochs of the profile's training run to analyse (each must be a kept
    checkpoint; at least two, since the first is shown but not judged); ``dataset_size``: N, the
    training images (test-time transforms) whose empirical Hessian is the reference;
    ``batch_sizes``: the grid of B, each below N; ``lanczos_steps``: Lanczos iterations of every
    spectrum, batch and empirical alike. Draws: ``min_draws`` random batches per B first; then
    each B gets the draws that bring the standard error of the shift to a quarter of the shift
    (estimated from the first draws), at most ``max_draws``, while the draws of one matrix at one
    checkpoint stay within ``batch_images`` images in all. ``chunk_size``: images per product
    chunk; ``noise_samples`` x ``noise_probes``: per-sample matrices and Hutchinson probes for the
    direct noise estimate; ``dense_hidden`` / ``dense_samples``: the MLP and data of the
    dense-Hessian validation panel.
    """

    checkpoints: tuple[int, ...] = (1, 3, 5)
    dataset_size: int = 256
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    lanczos_steps: int = 16
    min_draws: int = 4
    max_draws: int = 24
    batch_images: int = 480
    chunk_size: int = 256
    noise_samples: int = 64
    noise_probes: int = 2
    dense_hidden: int = 16
    dense_samples: int = 500

    def validate(self) -> None:
        """Raise :class:`ProfileError`, naming the key, for a value out of range."""
        for f in dataclasses.fields(self):
            _positive(f"spectra.{f.name}", getattr(self, f.name))
        if len(self.checkpoints) < 2:
            raise ProfileError("spectra.checkpoints needs at least two epochs (the first is shown, not judged)")
        if len(self.batch_sizes) < 3:
            raise ProfileError("spectra.batch_sizes needs at least three batch sizes (to fit the shift's exponent)")
        if max(self.batch_sizes) >= self.dataset_size:
            raise ProfileError(
                "spectra.batch_sizes must stay below spectra.dataset_size (B = N is the empirical matrix)")
        if self.min_draws < 2:
            raise ProfileError("spectra.min_draws must be at least 2 (a standard error needs two draws)")
        if self.max_draws < self.min_draws:
            raise ProfileError("spectra.max_draws must be at least spectra.min_draws")
        if self.batch_images < self.min_draws * sum(self.batch_sizes):
            raise ProfileError(f"spectra.batch_images must cover the first draws: at least min_draws x "
                               f"sum(batch_sizes) = {self.min_draws * sum(self.batch_sizes)}")


@dataclass(frozen=True)
class ScalingSizes:
    """Sizes of the Scaling chapter: largest stable learning rate against batch size.

    Divergence sweeps start from the weights of each of the profile's networks (``networks``) at
    ``checkpoint`` (0: its first kept checkpoint) and train on ``train_subset`` images (a class-stratified draw
    from the training subset). For every B in ``batch_sizes`` (increasing) and every optimiser
    (plain SGD, SGD with ``momentum``, Adam), trials of ``steps`` optimiser steps at a constant
    learning rate search the largest one that does not diverge: a ladder of factor
    ``ladder_factor`` from a start (``sgd_start_lr``, ``momentum_start_lr``, ``adam_start_lr`` at
    the smallest B, the previous B's stable rate after it; at most ``max_ladder_steps`` rungs),
    then ``bisections`` halvings of log(lr), so the final bracket is a factor
    ``ladder_factor ** (1 / 2 ** bisections)`` (at most 2^(1/4)). A trial diverges on a
    non-finite loss or a training loss (the mean over ``loss_window`` consecutive steps) above
    ``divergence_factor`` times the starting loss.
    Adam trials first take ``adam_state_steps`` steps at learning rate 0, which fill Adam's
    moment estimates without moving the weights. ``seeds``: sweeps per optimiser and network.
    The mechanism check repeats the plain-SGD search at the smallest and the largest B with trials
    ``long_horizon`` times longer (``steps * long_horizon`` steps, the same window and seeds).

    Prediction: ``curvature_draws`` batch Hessians per B from ``curvature_images`` images
    (test-time transforms), top eigenvalue from ``lanczos_steps`` Lanczos steps.
    Gradient noise scale: per-sample gradients of ``noise_samples`` images.

    Parity: from ``parity_batch`` (B0) to 4 B0 and 16 B0, ``parity_epochs`` epochs on
    ``parity_subset`` images, ``parity_seeds`` seeds (seed r starts from network r mod K), test accuracy on
    ``parity_test_subset`` test images; the base learning rates at B0 are ``parity_sgd_lr`` and ``parity_adam_lr`` (0:
    ``parity_lr_fraction`` times the largest stable one measured there); runs start from the
    sweep's checkpoint (``parity_from_checkpoint``) or from a fresh initialisation.
    """

    checkpoint: int = 0
    train_subset: int = 4_096
    batch_sizes: tuple[int, ...] = (4, 8, 16, 32, 64, 128)
    steps: int = 20
    seeds: int = 1
    long_horizon: int = 4
    divergence_factor: float = 1.2
    loss_window: int = 10
    momentum: float = 0.9
    sgd_start_lr: float = 0.1
    momentum_start_lr: float = 0.01
    adam_start_lr: float = 0.001
    ladder_factor: float = 4.0
    bisections: int = 3
    max_ladder_steps: int = 8
    adam_state_steps: int = 6
    curvature_images: int = 1_024
    curvature_draws: int = 3
    lanczos_steps: int = 12
    noise_samples: int = 1_024
    parity_batch: int = 16
    parity_lr_fraction: float = 0.25
    parity_sgd_lr: float = 0.0
    parity_adam_lr: float = 0.0
    parity_epochs: int = 1
    parity_subset: int = 4_096
    parity_seeds: int = 2
    parity_test_subset: int = 10_000
    parity_from_checkpoint: bool = True

    def final_bracket(self) -> float:
        """The factor between the ends of a finished bisection: ``ladder_factor ** (1 / 2 ** bisections)``."""
        return float(self.ladder_factor ** (0.5 ** self.bisections))

    def validate(self) -> None:
        """Raise :class:`ProfileError`, naming the key, for a value out of range."""
        for f in dataclasses.fields(self):
            if f.name not in ("checkpoint", "adam_state_steps", "parity_sgd_lr", "parity_adam_lr",
                              "parity_from_checkpoint"):
                _positive(f"scaling.{f.name}", getattr(self, f.name))
        for name in ("checkpoint", "adam_state_steps", "parity_sgd_lr", "parity_adam_lr"):
            if getattr(self, name) < 0:
                raise ProfileError(f"scaling.{name} must not be negative, got {getattr(self, name)}")
        if len(self.batch_sizes) < 3 or list(self.batch_sizes) != sorted(set(self.batch_sizes)):
            raise ProfileError("scaling.batch_sizes needs at least three increasing batch sizes, "
                               f"got {self.batch_sizes}")
        if max(self.batch_sizes) > self.train_subset:
            raise ProfileError(f"scaling.batch_sizes: {max(self.batch_sizes)} is larger than scaling.train_subset "
                               f"({self.train_subset} images)")
        if max(self.batch_sizes) > self.curvature_images:
            raise ProfileError(f"scaling.batch_sizes: {max(self.batch_sizes)} is larger than "
                               f"scaling.curvature_images ({self.curvature_images})")
        if not self.divergence_factor > 1:
            raise ProfileError(f"scaling.divergence_factor must exceed 1, got {self.divergence_factor}")
        if self.loss_window > self.steps:
            raise ProfileError(f"scaling.loss_window ({self.loss_window}) cannot exceed scaling.steps ({self.steps})")
        if not 0 <= self.momentum < 1:
            raise ProfileError(f"scaling.momentum must be in [0, 1), got {self.momentum}")
        if not self.ladder_factor > 1:
            raise ProfileError(f"scaling.ladder_factor must exceed 1, got {self.ladder_factor}")
        if self.final_bracket() > 2 ** 0.25 * (1 + 1e-9):
            raise ProfileError(f"scaling.ladder_factor {self.ladder_factor:g} with scaling.bisections "
                               f"{self.bisections} leaves a final bracket of {self.final_bracket():.3g}, above 2^(1/4)")
        if self.noise_samples < 2:
            raise ProfileError(f"scaling.noise_samples needs at least 2 images, got {self.noise_samples}")
        from hessian_lib.verdicts import CLAIM7_HORIZON_FACTOR

        if self.long_horizon < CLAIM7_HORIZON_FACTOR:
            raise ProfileError(f"scaling.long_horizon must be at least {CLAIM7_HORIZON_FACTOR} (the mechanism check's "
                               f"longer trials), got {self.long_horizon}")
        if self.parity_seeds < 2:
            raise ProfileError(f"scaling.parity_seeds needs at least 2 seeds, got {self.parity_seeds}")
        if not self.parity_lr_fraction <= 1:
            raise ProfileError(f"scaling.parity_lr_fraction must be in (0, 1], got {self.parity_lr_fraction}")
        if 16 * self.parity_batch > self.parity_subset:
            raise ProfileError(f"scaling.parity_batch: 16 x {self.parity_batch} is larger than scaling.parity_subset "
                               f"({self.parity_subset} images)")
        if self.parity_test_subset > 10_000:
            raise ProfileError("scaling.parity_test_subset cannot exceed the 10,000 CIFAR-100 test images")
        if not (self.parity_sgd_lr and self.parity_adam_lr) and self.parity_batch not in self.batch_sizes:
            raise ProfileError(f"scaling.parity_batch {self.parity_batch} must be one of scaling.batch_sizes "
                               "(its base learning rate comes from the sweep there) unless scaling.parity_sgd_lr "
                               "and scaling.parity_adam_lr are set")

    def check_against(self, profile: "Profile") -> None:
        """The checks that need the rest of the profile: subsets of its training images, a kept checkpoint."""
        for name in ("train_subset", "curvature_images", "noise_samples", "parity_subset"):
            if getattr(self, name) > profile.data.train_subset:
                raise ProfileError(f"scaling.{name} ({getattr(self, name)}) cannot exceed data.train_subset "
                                   f"({profile.data.train_subset})")
        t = profile.train
        if self.checkpoint and not (self.checkpoint == t.epochs or
                                    (self.checkpoint < t.epochs and self.checkpoint % t.checkpoint_every == 0)):
            raise ProfileError(f"scaling.checkpoint {self.checkpoint} is not a checkpoint the training run keeps "
                               f"(every {t.checkpoint_every} epochs and the last, {t.epochs})")

    def start_epoch(self, train: TrainSizes) -> int:
        """The epoch of the training run the sweeps start from (``checkpoint``, or the first kept one)."""
        return self.checkpoint or min(train.checkpoint_every, train.epochs)


@dataclass(frozen=True)
class LearnerSizes:
    """Sizes of the Learner chapter: the SLQ learner against tuned SGD and Adam (``hessian_lib.slq_learner``).

    A class-stratified **validation split** of ``validation_images`` is held out of the CIFAR-100
    training images; every run trains on ``train_images`` of the rest (all of them when that is
    the rest's size), with the network of the ``train`` section (``model``: another registry name
    instead, empty for the same) and its recipe (augmentation, weight decay, label smoothing,
    warm-up and schedule) for ``epochs`` epochs at batch ``batch_size`` (0: the recipe's), every
    epoch on random ``train.low_res_size``-pixel crops when ``low_res`` (the cpu recipe's fast
    first epochs). Each run is tested on ``test_images`` test images (10,000: all of them) after
    every epoch and scored on the validation split at the end. Methods, ``seeds`` runs each with
    the same initialisation and data order per seed: the learner with the Polyak rule, the same
    with the recipe's schedule as a multiplier on the rate it sets, the learner with the GD rule
    (plain SGD), SGD with momentum ``sgd_momentum`` at each learning rate of ``sgd_lrs`` (at least
    three; the best is chosen on the validation split), and Adam at ``adam_lr``. The Polyak learner
    and the validated SGD then run on more seeds, ``paired_seeds`` in all, for the seed-paired
    comparison of claim 6 (a Student t interval over 2 seeds is 12.7 standard errors wide each
    side, over 3 seeds 4.3). The learner
    estimates at the first step and every ``every_steps`` optimiser steps (0: once per epoch) with
    ``lanczos_steps`` Lanczos steps on a fixed curvature subset of ``curvature_images`` training
    images (test-time transforms; centre crops of the training resolution). ``compare_batches``
    training batches are set beside the curvature subset at the end of one learner run, and
    ``tradeoff_steps`` Lanczos step counts are timed there against the estimate they give.
    """

    model: str = ""
    validation_images: int = 5_000
    train_images: int = 45_000
    test_images: int = 10_000
    epochs: int = 3
    batch_size: int = 0
    low_res: bool = False
    seeds: int = 2
    paired_seeds: int = 3
    sgd_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)
    sgd_momentum: float = 0.9
    adam_lr: float = 1e-3
    curvature_images: int = 128
    lanczos_steps: int = 10
    every_steps: int = 0
    compare_batches: int = 3
    tradeoff_steps: tuple[int, ...] = (5, 10, 20, 40)

    def validate(self) -> None:
        """Raise :class:`ProfileError`, naming the key, for a value out of range."""
        for name in ("validation_images", "train_images", "test_images", "epochs", "seeds", "sgd_lrs", "adam_lr",
                     "curvature_images", "lanczos_steps", "compare_batches", "tradeoff_steps"):
            _positive(f"learner.{name}", getattr(self, name))
        if self.model:
            from hessian_lib.models import MODEL_NAMES, canonical_name

            try:
                canonical_name(self.model)
            except ValueError:
                raise ProfileError(f"unknown model {self.model!r} in learner.model; valid models: "
                                   f"{', '.join(MODEL_NAMES)} (or empty: the train section's)") from None
        if self.batch_size < 0 or self.batch_size > self.train_images:
            raise ProfileError(f"learner.batch_size must be 0 (the recipe's) or at most learner.train_images "
                               f"({self.train_images}), got {self.batch_size}")
        if self.train_images + self.validation_images > 50_000 or self.test_images > 10_000:
            raise ProfileError(f"learner.train_images + learner.validation_images ({self.train_images:,} + "
                               f"{self.validation_images:,}) cannot exceed CIFAR-100's 50,000 training images, nor "
                               f"learner.test_images its 10,000 test images")
        if self.curvature_images > self.train_images:
            raise ProfileError(f"learner.curvature_images ({self.curvature_images}) cannot exceed "
                               f"learner.train_images ({self.train_images}): it is drawn from them")
        if self.seeds < 2:
            raise ProfileError(f"learner.seeds needs at least 2 seeds per method, got {self.seeds}")
        if self.paired_seeds < self.seeds:
            raise ProfileError(f"learner.paired_seeds ({self.paired_seeds}) cannot be fewer than learner.seeds "
                               f"({self.seeds})")
        if len(self.sgd_lrs) < 3 or list(self.sgd_lrs) != sorted(set(self.sgd_lrs)):
            raise ProfileError(f"learner.sgd_lrs needs at least three increasing learning rates, got {self.sgd_lrs}")
        if not 0 <= self.sgd_momentum < 1:
            raise ProfileError(f"learner.sgd_momentum must be in [0, 1), got {self.sgd_momentum}")
        if self.lanczos_steps < 2 or min(self.tradeoff_steps) < 2:
            raise ProfileError(f"learner.lanczos_steps and learner.tradeoff_steps need at least 2 steps, got "
                               f"{self.lanczos_steps} and {self.tradeoff_steps}")
        if self.every_steps < 0:
            raise ProfileError(f"learner.every_steps must be 0 (once per epoch) or positive, got {self.every_steps}")


@dataclass(frozen=True)
class MixtureSizes:
    """Sizes of the Mixture chapter: a perceptron on a Gaussian mixture against a network on CIFAR-100 images.

    Both sides have ``classes`` (C) classes and K = ``networks.count`` networks (seeds
    :func:`~hessian_lib.experiments.network_seeds`). **Synthetic side**: a C-class Gaussian mixture
    in ``dim`` dimensions (:mod:`hessian_lib.mixture`; within-class variances decaying with
    ``covariance_decay``, 0 isotropic), ``train_samples`` training and ``test_samples`` test
    samples; a ReLU perceptron with hidden widths ``hidden`` trained for ``mlp_epochs`` epochs at
    batch ``mlp_batch_size`` and learning rate ``mlp_lr`` (the optimiser, label smoothing, weight
    decay and warm-up of the ``train`` recipe, linear decay to zero). The chapter's comparison is at
    ``separation``; ``separations`` (which must include it) is the grid of the outlier count against
    separation and of the explorer. **Natural side**: the ``train`` section's network, trained
    afresh on ``cnn_train_images`` images of C CIFAR-100 classes (one fine class from each of the
    first C superclasses) for ``cnn_epochs`` epochs, the first ``cnn_low_res_epochs`` of them on
    low-resolution crops, at learning rate ``cnn_lr`` (0: the recipe's); tested on every test
    image of those classes. **Curvature** on both sides: ``dataset_size`` (N) training samples,
    products in chunks of ``chunk_size``; the Hessian's spectrum (outliers, near-zero mass, top
    eigenvectors) from ``lanczos_steps`` Lanczos steps, the GGN's top eigenvectors from
    ``ggn_steps``; the batch shift of the top eigenvalue with ``shift_steps`` steps for every
    spectrum, empirical and batch alike, over ``batch_sizes`` with ``min_draws`` to ``max_draws``
    draws per B within ``batch_images`` samples (as in :func:`hessian_lib.experiments.spectra.spectrum_at`).
    """

    classes: int = 10
    dim: int = 32
    hidden: tuple[int, ...] = (32, 32)
    separation: float = 2.5
    separations: tuple[float, ...] = (1.0, 2.0, 2.5, 3.0, 4.0)
    covariance_decay: float = 0.0
    train_samples: int = 2_000
    test_samples: int = 5_000
    mlp_epochs: int = 30
    mlp_batch_size: int = 50
    mlp_lr: float = 0.05
    cnn_train_images: int = 5_000
    cnn_epochs: int = 8
    cnn_low_res_epochs: int = 6
    cnn_lr: float = 0.2
    dataset_size: int = 256
    batch_sizes: tuple[int, ...] = (4, 8, 16, 32)
    lanczos_steps: int = 50
    ggn_steps: int = 25
    shift_steps: int = 15
    min_draws: int = 3
    max_draws: int = 6
    batch_images: int = 600
    chunk_size: int = 256

    def validate(self) -> None:
        """Raise :class:`ProfileError`, naming the key, for a value out of range."""
        for f in dataclasses.fields(self):
            if f.name not in ("covariance_decay", "cnn_low_res_epochs", "cnn_lr"):
                _positive(f"mixture.{f.name}", getattr(self, f.name))
        for name in ("covariance_decay", "cnn_low_res_epochs", "cnn_lr"):
            if getattr(self, name) < 0:
                raise ProfileError(f"mixture.{name} must not be negative, got {getattr(self, name)}")
        from hessian_lib.verdicts import CLAIM8_SEARCH_FACTOR

        if not 2 <= self.classes <= 20:
            raise ProfileError(f"mixture.classes must be in 2..20 (one CIFAR-100 class from each of C of the 20 "
                               f"superclasses), got {self.classes}")
        if self.dim < self.classes:
            raise ProfileError(f"mixture.dim ({self.dim}) must be at least mixture.classes ({self.classes}): the "
                               "class means are orthonormal directions")
        if self.separation not in self.separations or list(self.separations) != sorted(set(self.separations)):
            raise ProfileError(f"mixture.separations must be increasing and include mixture.separation "
                               f"({self.separation:g}), got {self.separations}")
        if self.cnn_train_images > 500 * self.classes:
            raise ProfileError(f"mixture.cnn_train_images ({self.cnn_train_images}) cannot exceed the "
                               f"{500 * self.classes:,} training images of {self.classes} CIFAR-100 classes")
        if self.cnn_low_res_epochs >= self.cnn_epochs:
            raise ProfileError(f"mixture.cnn_low_res_epochs ({self.cnn_low_res_epochs}) must be below "
                               f"mixture.cnn_epochs ({self.cnn_epochs}): the last epoch trains at full resolution")
        if self.dataset_size > min(self.train_samples, self.cnn_train_images):
            raise ProfileError(f"mixture.dataset_size ({self.dataset_size}) cannot exceed mixture.train_samples or "
                               "mixture.cnn_train_images (its samples come from both)")
        if self.mlp_batch_size > self.train_samples or self.dataset_size < self.classes:
            raise ProfileError("mixture.mlp_batch_size cannot exceed mixture.train_samples, and mixture.dataset_size "
                               "needs at least one sample per class")
        if self.lanczos_steps < CLAIM8_SEARCH_FACTOR * self.classes + 2:
            raise ProfileError(f"mixture.lanczos_steps must be at least {CLAIM8_SEARCH_FACTOR} x classes + 2 = "
                               f"{CLAIM8_SEARCH_FACTOR * self.classes + 2} (the outlier search reads the top "
                               f"{CLAIM8_SEARCH_FACTOR} C + 1 Ritz values), got {self.lanczos_steps}")
        if self.ggn_steps < self.classes + 1 or self.shift_steps < 3:
            raise ProfileError(f"mixture.ggn_steps must be at least classes + 1 = {self.classes + 1} (the GGN's top "
                               f"C - 1 eigenvectors and two more) and mixture.shift_steps at least 3, got "
                               f"{self.ggn_steps} and {self.shift_steps}")
        if len(self.batch_sizes) < 3 or list(self.batch_sizes) != sorted(set(self.batch_sizes)):
            raise ProfileError(f"mixture.batch_sizes needs at least three increasing batch sizes, "
                               f"got {self.batch_sizes}")
        if max(self.batch_sizes) >= self.dataset_size:
            raise ProfileError("mixture.batch_sizes must stay below mixture.dataset_size (B = N is the empirical "
                               "matrix)")
        if self.min_draws < 2 or self.max_draws < self.min_draws:
            raise ProfileError("mixture.min_draws must be at least 2 and mixture.max_draws at least min_draws, got "
                               f"{self.min_draws} and {self.max_draws}")
        if self.batch_images < self.min_draws * sum(self.batch_sizes):
            raise ProfileError(f"mixture.batch_images must cover the first draws: at least min_draws x "
                               f"sum(batch_sizes) = {self.min_draws * sum(self.batch_sizes)}")


# The type hints above are evaluated lazily; make sure they resolve (catches typos early).
typing.get_type_hints(TheorySizes)
