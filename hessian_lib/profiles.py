"""Named experiment profiles: every size an experiment uses, in one place.

A profile is data. Chapters and experiments read their sizes from it and never
branch on its name, so the ``cpu`` profile (fits CI: 2 cores, no GPU), the
``paper`` profile (the authors' protocol, for GPUs) and the tiny ``smoke``
profile (for tests) all run the same code path.

>>> p = load_profile("cpu")
>>> p.theory.dim
800
>>> load_profile("cpu", {"theory.dim": 200}).theory.dim
200
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = [
    "Profile",
    "ProfileError",
    "TheorySizes",
    "TrainSizes",
    "NetworkSizes",
    "SpectraSizes",
    "LearnerSizes",
    "ScalingSizes",
    "MixtureSizes",
    "PROFILES",
    "load_profile",
    "profile_names",
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
    ``mixed_precision``: bf16 autocast for training on CUDA (curvature stays float32).
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


@dataclass(frozen=True)
class Profile:
    """A named set of sizes. Sections group the sizes of one part of the work."""

    name: str
    description: str
    theory: TheorySizes = field(default_factory=TheorySizes)
    data: DataSizes = field(default_factory=DataSizes)
    train: TrainSizes = field(default_factory=TrainSizes)
    networks: NetworkSizes = field(default_factory=NetworkSizes)
    spectra: SpectraSizes = field(default_factory=SpectraSizes)
    learner: LearnerSizes = field(default_factory=LearnerSizes)
    scaling: ScalingSizes = field(default_factory=ScalingSizes)
    mixture: MixtureSizes = field(default_factory=MixtureSizes)

    def validate(self) -> "Profile":
        """Validate every section and the limits between sections (:class:`ProfileError` if not); return ``self``."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        if self.networks.bn_refresh_images > self.data.train_subset:
            raise ProfileError(f"networks.bn_refresh_images ({self.networks.bn_refresh_images}) cannot exceed "
                               f"data.train_subset ({self.data.train_subset}): they are drawn from it")
        if self.spectra.dataset_size > self.data.train_subset:
            raise ProfileError("spectra.dataset_size cannot exceed data.train_subset (its images come from it)")
        self.scaling.check_against(self)
        return self

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> "Profile":
        """A copy with ``{"section.field": value}`` overrides applied and validated."""
        if not overrides:
            return self
        sections: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            section_name, _, field_name = key.partition(".")
            section = getattr(self, section_name, None)
            if not field_name or not dataclasses.is_dataclass(section):
                valid = ", ".join(sorted(override_keys(self)))
                raise ProfileError(f"unknown profile key {key!r}; valid keys: {valid}")
            names = {f.name: f for f in dataclasses.fields(section)}
            if field_name not in names:
                valid = ", ".join(f"{section_name}.{n}" for n in names)
                raise ProfileError(f"unknown profile key {key!r}; valid keys in this section: {valid}")
            sections.setdefault(section_name, {})[field_name] = _coerce(key, value, getattr(section, field_name))
        replaced = {name: dataclasses.replace(getattr(self, name), **fields) for name, fields in sections.items()}
        return dataclasses.replace(self, **replaced).validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable): used to hash experiment configs."""
        return dataclasses.asdict(self)


def override_keys(profile: Profile) -> list[str]:
    """Every ``section.field`` key that :meth:`Profile.with_overrides` accepts."""
    keys = []
    for f in dataclasses.fields(profile):
        section = getattr(profile, f.name)
        if dataclasses.is_dataclass(section):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(section)]
    return keys


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Coerce an override (possibly a string from the command line) to the type of ``current``."""
    try:
        if isinstance(current, tuple):
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split()]
            kind = type(current[0]) if current else float
            return tuple(kind(v) for v in value)
        if isinstance(current, bool):
            if isinstance(value, str):
                return value.lower() in {"1", "true", "yes", "on"}
            return bool(value)
        if isinstance(current, int) and not isinstance(value, bool):
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError("not an integer")
            return int(as_float)
        return type(current)(value)
    except (TypeError, ValueError) as err:
        raise ProfileError(f"profile key {key!r}: cannot use {value!r} ({err})") from None


PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu",
        description="Fits CI: 2 CPU cores, no GPU; every chapter together in about 35 minutes.",
        # The fast recipe (benchmarks/train_results.md): a small VGG-style BatchNorm network (259,228
        # parameters) on all 50,000 training images, 5 epochs (the first 4 on random 24-pixel crops) in under
        # 3 minutes of training on 2 cores; Nesterov SGD, label smoothing, warm-up then linear decay to zero;
        # test accuracy on all 10,000 test images with test-time flips (49.6% on a quiet 2-core machine).
        data=DataSizes(train_subset=50_000, test_subset=10_000, curvature_subset=1_000),
        train=TrainSizes(model="fastcnn", width=1.0, dropout=0.0, epochs=5, batch_size=128, lr=0.4, momentum=0.9,
                         nesterov=True, weight_decay=5e-4, label_smoothing=0.2, optimizer="sgd", schedule="linear",
                         warmup_epochs=0.25, checkpoint_every=1, eval_flip=True, low_res_epochs=4, low_res_size=24),
        # The learner race on all 45,000 training images left beside a 5,000-image validation split: 3 epochs on
        # 24-pixel crops (the recipe's fast epochs; 36% test accuracy at the recipe's lr), 7 methods x 2 seeds and a
        # third seed of the Polyak learner and the validated SGD, run two at a time (one per core), an SGD grid around
        # the recipe's lr 0.4, 10 Lanczos steps on 128 images once per epoch; tested on all 10,000 images.
        # Three independently trained networks: every claim about trained networks is judged on each and pooled,
        # so its intervals carry the variation between networks (each about 2.5 minutes of training).
        networks=NetworkSizes(count=3, bn_refresh_images=2_000),
        # The batch-Hessian study at the ends and the middle of the 5-epoch recipe.
        spectra=SpectraSizes(checkpoints=(1, 3, 5)),
        # One sweep per optimiser from each network (three in all), so that the slope intervals include the
        # variation between networks and the scatter of the stability threshold from sweep to sweep; parity
        # runs one seed from each network.
        scaling=ScalingSizes(seeds=1, parity_seeds=3),
        learner=LearnerSizes(epochs=3, low_res=True, sgd_lrs=(0.2, 0.4, 0.8), curvature_images=128, lanczos_steps=10,
                             every_steps=0, compare_batches=2, tradeoff_steps=(5, 10, 20, 40)),
        # The mixture study in about 5 minutes on 2 cores: C = 10 on both sides, so that the outlier search (the top
        # 2C + 1 Ritz values) converges within 50 Lanczos steps on N = 256 images; the network trained afresh on the
        # 5,000 training images of 10 CIFAR-100 classes (8 epochs, 6 of them on 24-pixel crops; about 20 s each), the
        # perceptron small enough (P = 2,442) for exact Hessians and Gauss-Newton matrices. The batch shift needs only
        # the top eigenvalue, which converges within 15 steps; the GGN's top 9 eigenvectors within 25.
        mixture=MixtureSizes(classes=10, dim=32, hidden=(32, 32), separation=2.5, separations=(1.0, 2.0, 2.5, 3.0, 4.0),
                             train_samples=2_000, test_samples=5_000, mlp_epochs=30, mlp_batch_size=50, mlp_lr=0.05,
                             cnn_train_images=5_000, cnn_epochs=8, cnn_low_res_epochs=6, cnn_lr=0.2,
                             dataset_size=256, batch_sizes=(4, 8, 16, 32), lanczos_steps=50, ggn_steps=25,
                             shift_steps=15, min_draws=3, max_draws=6, batch_images=600, chunk_size=256),
    ),
    "paper": Profile(
        name="paper",
        description="The authors' protocol at full scale: all of CIFAR-100, paper-size networks; needs GPUs.",
        theory=TheorySizes(dim=2000, repeats=10, widget_dim=(500, 2000)),
        data=DataSizes(train_subset=50_000, test_subset=10_000, curvature_subset=1_024),
        # VGG-16 (no BatchNorm), SGD lr 0.05 at B = 128, momentum 0.9, no weight decay, 300 epochs.
        train=TrainSizes(model="vgg16", width=1.0, epochs=300, batch_size=128, lr=0.05, momentum=0.9,
                         weight_decay=0.0, optimizer="sgd", schedule="authors", checkpoint_every=25),
        networks=NetworkSizes(count=3, bn_refresh_images=10_000),
        # The batch-Hessian study: B = 1..1024, 10 subsamples each, 100 Lanczos steps, every 25 epochs.
        # (at least the authors' 10 draws per B; more where the shift needs them).
        spectra=SpectraSizes(checkpoints=(25, 100, 200, 300), dataset_size=10_000,
                             batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), lanczos_steps=100,
                             min_draws=10, max_draws=40, batch_images=200_000, chunk_size=1_000,
                             noise_samples=64, noise_probes=4, dense_hidden=32, dense_samples=2_000),
        # Sweeps from the epoch-25 checkpoint on all of CIFAR-100, on the authors' sqrt(2) learning-rate grid
        # (bisected once more to 2^(1/4)); parity as in their scripts: SGD 0.05 and Adam 4e-4 at B = 128, 300 epochs.
        scaling=ScalingSizes(checkpoint=25, train_subset=50_000, batch_sizes=(32, 64, 128, 256, 512, 1024, 2048),
                             steps=200, loss_window=20, seeds=1, ladder_factor=2 ** 0.5, bisections=1,
                             max_ladder_steps=16,
                             adam_state_steps=20, curvature_images=4_096, curvature_draws=10, lanczos_steps=100,
                             noise_samples=4_096, parity_batch=128, parity_sgd_lr=0.05, parity_adam_lr=4e-4,
                             parity_epochs=300, parity_subset=50_000, parity_seeds=2, parity_from_checkpoint=False),
        # The authors' learner: PreResNet-110 on CIFAR-100 (5,000 images held out to choose SGD's rate), full
        # schedule, 20 Lanczos steps every epoch.
        learner=LearnerSizes(model="preresnet110", validation_images=5_000, train_images=45_000, test_images=10_000,
                             epochs=300, sgd_lrs=(0.025, 0.05, 0.1, 0.2), curvature_images=1_024, lanczos_steps=20,
                             every_steps=0, compare_batches=10),
        # C = 20 on both sides (one fine class from each superclass: 10,000 training images), 100 Lanczos steps as in
        # the authors' protocol; the perceptron (P = 9,556) still small enough for exact spectra on a GPU.
        mixture=MixtureSizes(classes=20, dim=64, hidden=(64, 64), separation=2.5,
                             separations=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0), train_samples=10_000, test_samples=20_000,
                             mlp_epochs=100, mlp_batch_size=128, mlp_lr=0.05, cnn_train_images=10_000, cnn_epochs=100,
                             cnn_low_res_epochs=0, cnn_lr=0.0, dataset_size=2_048,
                             batch_sizes=(8, 16, 32, 64, 128, 256, 512), lanczos_steps=100, ggn_steps=100,
                             shift_steps=100, min_draws=10,
                             max_draws=40, batch_images=100_000, chunk_size=1_024),
    ),
    "smoke": Profile(
        name="smoke",
        description="The smallest sizes that still run every code path: for tests, seconds per chapter.",
        theory=TheorySizes(
            dim=200,
            batch_sizes=(1, 16, 256),
            repeats=2,
            mp_batch_sizes=(20, 100, 1000),
            threshold_points=7,
            widget_dim=(200,),
            widget_spike=(1.0, 2.0),
            widget_noise=(4.0,),
            widget_batch_sizes=(1, 16, 256),
        ),
        data=DataSizes(train_subset=500, test_subset=200, curvature_subset=100),
        train=TrainSizes(model="fastcnn", width=0.5, dropout=0.0, epochs=2, batch_size=50, lr=0.2, nesterov=True,
                         weight_decay=5e-4, label_smoothing=0.2, schedule="linear", warmup_epochs=0.25,
                         checkpoint_every=1, eval_flip=True),
        networks=NetworkSizes(count=2, bn_refresh_images=100),
        spectra=SpectraSizes(checkpoints=(1, 2), dataset_size=100, batch_sizes=(8, 16, 32), lanczos_steps=6,
                             min_draws=2, max_draws=3, batch_images=150, chunk_size=50, noise_samples=4,
                             noise_probes=1, dense_hidden=4, dense_samples=100),
        scaling=ScalingSizes(train_subset=200, batch_sizes=(4, 8, 16), steps=4, loss_window=2, max_ladder_steps=6,
                             adam_state_steps=2, curvature_images=64, curvature_draws=1, lanczos_steps=5,
                             noise_samples=16, parity_batch=4, parity_epochs=1, parity_subset=64,
                             parity_test_subset=100),
        learner=LearnerSizes(validation_images=100, train_images=200, test_images=200, epochs=1,
                             sgd_lrs=(0.03, 0.1, 0.3), curvature_images=50, lanczos_steps=4, every_steps=2,
                             compare_batches=2, tradeoff_steps=(2, 4)),
        mixture=MixtureSizes(classes=4, dim=8, hidden=(8,), separation=3.0, separations=(1.0, 3.0), train_samples=200,
                             test_samples=400, mlp_epochs=5, mlp_batch_size=20, mlp_lr=0.05, cnn_train_images=200,
                             cnn_epochs=1, cnn_low_res_epochs=0, cnn_lr=0.0, dataset_size=48, batch_sizes=(4, 8, 16),
                             lanczos_steps=10, ggn_steps=6, shift_steps=5, min_draws=2, max_draws=2, batch_images=56,
                             chunk_size=48),
    ),
}


def profile_names() -> list[str]:
    """Names of the available profiles."""
    return list(PROFILES)


def load_profile(name: str | Profile, overrides: Mapping[str, Any] | None = None) -> Profile:
    """The profile called ``name`` with optional ``{"section.field": value}`` overrides.

    Raises :class:`ProfileError` naming the valid choices for an unknown name or key.
    """
    if isinstance(name, Profile):
        return name.with_overrides(overrides)
    if name not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}")
    return PROFILES[name].validate().with_overrides(overrides)


# The type hints above are evaluated lazily; make sure they resolve (catches typos early).
typing.get_type_hints(TheorySizes)
