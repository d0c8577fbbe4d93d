r"""Scaling experiments: the largest stable learning rate against batch size, measured and predicted.

Everything starts from one set of weights: a checkpoint of the profile's shared training run
(:func:`~hessian_lib.experiments.training.train_experiment`), so no trial starts from
initialisation.

* **Divergence trials** (:func:`divergence_trial`): ``steps`` optimiser steps at one constant
  learning rate and batch size, with :func:`~hessian_lib.train.fit`, BatchNorm on its running
  statistics. A trial *diverges* when a training loss is non-finite or the training loss averaged
  over ``loss_window`` steps exceeds ``divergence_factor`` times the starting loss.
* **Sweeps** (:func:`lr_sweep`): for each batch size, a ladder then a bisection on
  :math:`\log\alpha` over a lattice :math:`\alpha_j = \alpha_0 r^j` (:class:`LrLattice`) finds the
  final bracket ``[lower, upper]``: the largest stable and the smallest diverged rate, a factor
  ``r`` apart. Each trial is stored in the results store under its own config, so an
  interrupted sweep resumes where it stopped and a rerun loads every trial.
* **Prediction** (:func:`curvature_prediction`): the top eigenvalue of batch Hessians of B
  images at the starting weights gives :math:`2/\lambda_{\max}(H_B)` (plain SGD) and
  :math:`2(1+\beta)/\lambda_{\max}(H_B)` (heavy ball).
* **Gradient noise scale** (:func:`noise_scale`): :math:`B_{\mathrm{simple}}` at the same weights.
* **Parity** (:func:`parity_runs`): training runs at B0, 4 B0, 16 B0 with scaled learning rates.

:func:`run_scaling` runs (or loads) all of it for a profile and returns a :class:`ScalingResult`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from hessian_lib import scaling as laws
from hessian_lib.curvature import batch_operator, lanczos
from hessian_lib.curvature.noise import gradient_noise_scale
from hessian_lib.data import load_cifar100, normalize, stratified_indices
from hessian_lib.experiments.training import (
    curvature_inputs,
    load_subsets,
    model_from_profile,
    train_config,
    train_experiment,
)
from hessian_lib.profiles import Profile, ScalingSizes, TrainSizes, load_profile
from hessian_lib.store import ResultsStore, config_key
from hessian_lib.train import StepInfo, TrainCallback, derive_seed, evaluate, fit, resolve_device

__all__ = [
    "OPTIMIZERS",
    "Bracket",
    "LrLattice",
    "ScalingResult",
    "bisect_max_lr",
    "curvature_prediction",
    "divergence_trial",
    "lr_sweep",
    "noise_scale",
    "parity_runs",
    "run_scaling",
    "trial_recipe",
]

#: Changes whenever a trial, a prediction or a parity run would give another result for the same config.
SCALING_VERSION = 1
#: Seeds of the class-stratified image draws (the same images for every run seed).
TRIAL_SUBSET_SEED, PARITY_SUBSET_SEED, TEST_SUBSET_SEED = 2, 3, 4
#: The optimisers of the sweeps: plain SGD, heavy-ball SGD with the profile's momentum, Adam.
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam")
#: How the chapter names them.
OPTIMIZER_LABELS: dict[str, str] = {"sgd": "SGD", "momentum": "SGD + momentum", "adam": "Adam"}


def _seed(*parts: Any) -> int:
    """A seed in [0, 2^31) determined by ``parts`` (any JSON-able values)."""
    return int(config_key(list(parts)), 16) % (2**31 - 1)


# ----------------------------------------------------------------------------- bisection


@dataclass(frozen=True)
class LrLattice:
    r"""The learning rates a sweep may try: :math:`\alpha_j = \alpha_0 r^j` for integer j.

    ``start``: :math:`\alpha_0`; ``ratio``: r, the factor of a final bracket; ``rung``: the
    ladder step in lattice units (``2 ** bisections``), so the ladder moves by a factor
    :math:`r^{\mathrm{rung}}` and ``bisections`` halvings of a rung end at one lattice cell.
    """

    start: float
    ratio: float
    rung: int

    def __post_init__(self) -> None:
        if not (self.start > 0 and self.ratio > 1 and self.rung >= 1):
            raise ValueError(f"a lattice needs start > 0, ratio > 1 and rung >= 1, got {self}")

    @classmethod
    def from_sizes(cls, sizes: ScalingSizes, start: float) -> "LrLattice":
        """The lattice of a profile's ``scaling`` section with :math:`\\alpha_0` = ``start``."""
        return cls(start=float(start), ratio=sizes.final_bracket(), rung=2**sizes.bisections)

    def lr(self, index: int) -> float:
        """:math:`\\alpha_j`."""
        return float(self.start * self.ratio ** int(index))


@dataclass(frozen=True)
class BisectionResult:
    """Lattice indices of the final bracket (``None`` when not found) and every ``(index, diverged)`` tried, in order."""

    lower: int | None
    upper: int | None
    tried: tuple[tuple[int, bool], ...]


def bisect_max_lr(diverges: Callable[[int], bool], *, start: int = 0, rung: int = 8,
                  max_ladder_steps: int = 8) -> BisectionResult:
    """Find adjacent lattice indices ``lower`` (stable) and ``upper = lower + 1`` (diverged).

    ``diverges(j)`` runs (or loads) the trial at lattice index j. From ``start``, a ladder moves
    by ``rung`` indices (up while stable, down while diverged, at most ``max_ladder_steps``
    rungs) until a stable and a diverged index are one rung apart; bisection then halves the gap
    (``rung`` must be a power of two) down to one index. Assumes that divergence is monotone in
    the learning rate; a trial is never run twice.
    """
    if rung < 1 or rung & (rung - 1):
        raise ValueError(f"rung must be a power of two, got {rung}")
    outcomes: dict[int, bool] = {}
    order: list[tuple[int, bool]] = []

    def test(j: int) -> bool:
        if j not in outcomes:
            outcomes[j] = bool(diverges(j))
            order.append((j, outcomes[j]))
        return outcomes[j]

    j = int(start)
    lower: int | None
    upper: int | None
    if test(j):
        lower, upper = None, j
        for _ in range(max_ladder_steps):
            j -= rung
            if not test(j):
                lower = j
                break
            upper = j
    else:
        lower, upper = j, None
        for _ in range(max_ladder_steps):
            j += rung
            if test(j):
                upper = j
                break
            lower = j
    if lower is None or upper is None:
        return BisectionResult(lower, upper, tuple(order))
    while upper - lower > 1:
        mid = (lower + upper) // 2
        if test(mid):
            upper = mid
        else:
            lower = mid
    return BisectionResult(lower, upper, tuple(order))


@dataclass
class Bracket:
    """The final bracket of one batch size's search.

    ``lower``: the largest stable learning rate tried below the first diverged one, ``upper``: the
    smallest diverged one (``nan`` when the search ran out of rungs on that side); ``trials``: the
    records of the trials in the order they ran (``lr``, ``index``, ``diverged``, ``losses``, ...).
    """

    batch_size: int
    lower: float
    upper: float
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bracketed(self) -> bool:
        """Both ends were found."""
        return math.isfinite(self.lower) and math.isfinite(self.upper)


def lr_sweep(
    run_trial: Callable[[int, int], Mapping[str, Any]],
    batch_sizes: Sequence[int],
    lattice: LrLattice,
    *,
    max_ladder_steps: int = 8,
) -> list[Bracket]:
    """One :func:`bisect_max_lr` search per batch size, in increasing order.

    ``run_trial(batch_size, index)`` runs or loads the trial at :math:`\\alpha_{index}` and returns
    its record (a mapping with at least ``diverged``). The first batch size starts the ladder at
    index 0, each later one at the previous one's stable end (or a rung below its diverged end),
    which saves trials and, for a monotone threshold, ends in the same lattice cell.
    """
    brackets: list[Bracket] = []
    start = 0
    for b in sorted(int(v) for v in batch_sizes):
        records: dict[int, Mapping[str, Any]] = {}

        def diverges(j: int, b: int = b) -> bool:
            records[j] = run_trial(b, j)
            return bool(records[j]["diverged"])

        found = bisect_max_lr(diverges, start=start, rung=lattice.rung, max_ladder_steps=max_ladder_steps)
        trials = [{**records[j], "index": j, "lr": lattice.lr(j), "batch_size": b} for j, _ in found.tried]
        brackets.append(Bracket(
            batch_size=b,
            lower=lattice.lr(found.lower) if found.lower is not None else math.nan,
            upper=lattice.lr(found.upper) if found.upper is not None else math.nan,
            trials=trials,
        ))
        if found.lower is not None:
            start = found.lower
        elif found.upper is not None:
            start = found.upper - lattice.rung
    return brackets


# ----------------------------------------------------------------------------- one trial


class _FrozenSteps(TrainCallback):
    """Learning rate 0 for the first ``steps`` steps: the optimiser's state fills, the weights stay."""

    def __init__(self, steps: int) -> None:
        self.steps = int(steps)

    def on_step_start(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step < self.steps:
            for group in optimizer.param_groups:
                group["lr"] = 0.0


class _FrozenBatchNorm(TrainCallback):
    """BatchNorm layers use their running statistics (and leave them alone) at every step.

    :func:`~hessian_lib.train.fit` puts the network in training mode at each epoch; this switches
    the BatchNorm layers back before every forward pass, so a trial trains the network whose batch
    Hessians :func:`curvature_prediction` takes (``bn_mode="eval"``): a fixed function of its
    weights, whose loss can truly diverge (with batch statistics, the weights before a BatchNorm
    layer are scale-invariant and a too-large step mostly grows their norm instead).
    """

    def on_step_start(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _full_resolution(recipe: TrainSizes) -> dict[str, Any]:
    """The recipe fields that switch off progressive resizing (trials and parity runs train on 32-pixel images)."""
    return {"low_res_epochs": 0} if hasattr(recipe, "low_res_epochs") else {}


def trial_recipe(recipe: TrainSizes, sizes: ScalingSizes, optimizer: str, *, batch_size: int, lr: float,
                 steps: int, n_train: int) -> TrainSizes:
    """The recipe of a trial: ``recipe`` with one optimiser, batch size and constant learning rate.

    ``optimizer``: a key of :data:`OPTIMIZERS` (``momentum`` is heavy ball with ``sizes.momentum``;
    Nesterov off, so that the stability limit is :math:`2(1+\\beta)/\\lambda`). No schedule, no
    warm-up and no augmentation (a trial sees the images the curvature is taken on); enough epochs
    over ``n_train`` images for ``steps`` steps; weight decay and label smoothing as in ``recipe``,
    at full resolution.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    per_epoch = n_train // batch_size
    if per_epoch < 1:
        raise ValueError(f"batch size {batch_size} is larger than the {n_train} trial images")
    return dataclasses.replace(
        recipe, batch_size=int(batch_size), lr=float(lr),
        optimizer="adam" if optimizer == "adam" else "sgd",
        momentum=sizes.momentum if optimizer == "momentum" else 0.0, nesterov=False,
        schedule="constant", warmup_epochs=0.0, augment=False,
        epochs=max(1, math.ceil(steps / per_epoch)), checkpoint_every=10**6, **_full_resolution(recipe),
    )


class _Diverged(Exception):
    """Raised from a step hook to end a trial whose windowed loss crossed the threshold."""


def divergence_trial(model: nn.Module, train: Any, recipe: TrainSizes, *, steps: int, seed: int, threshold: float,
                     window: int = 1, frozen_steps: int = 0, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Train a copy of ``model`` for ``frozen_steps + steps`` steps of ``recipe``; return the trial record.

    ``train``: uint8 images and labels (a :class:`~hessian_lib.data.CIFAR100Split`). BatchNorm layers
    run on their running statistics throughout. The first ``frozen_steps`` steps run at learning
    rate 0 (they fill an adaptive optimiser's moment estimates and do not count). The trial
    **diverges** when a training loss is not finite or the mean training loss over ``window``
    consecutive steps exceeds ``threshold``; it stops there. A single loss above ``window *
    threshold`` stops it at once (every window holding that step would cross the threshold).

    Record: ``losses`` (float64, one per step taken, the frozen ones first), ``diverged``,
    ``diverged_step`` (the step, counted from the first at the trial's learning rate, at which
    it diverged; ``-1`` if it did not), ``diverged_loss`` (the windowed mean, or the loss, that
    crossed), ``frozen_steps``, ``steps`` (taken at the learning rate), ``seconds``.
    """
    if window < 1 or steps < window:
        raise ValueError(f"need 1 <= window <= steps, got window {window} and {steps} steps")
    losses: list[float] = []
    crossed: list[tuple[int, float]] = []

    def on_step(info: StepInfo) -> None:
        losses.append(info.loss)
        counted = losses[frozen_steps:]
        if len(counted) >= window:
            mean = float(np.mean(counted[-window:]))
            if mean > threshold:
                crossed.append((len(counted) - 1, mean))
                raise _Diverged

    net = copy.deepcopy(model).train()
    start = time.perf_counter()
    recipe = dataclasses.replace(recipe, divergence_loss=float(window * threshold))
    callbacks = [_FrozenBatchNorm(), _FrozenSteps(frozen_steps)]
    try:
        result = fit(net, train, recipe, seed=seed, device=device, quiet=True, on_step=on_step,
                     callbacks=callbacks, max_steps=frozen_steps + steps)
        if result.diverged:  # a non-finite loss, or one too large for any window to stay below the threshold
            losses.append(float(result.diverged_loss))
            crossed.append((int(result.diverged_step) - frozen_steps, float(result.diverged_loss)))
    except _Diverged:
        pass
    diverged = bool(crossed)
    return {
        "losses": np.asarray(losses, dtype=np.float64),
        "diverged": diverged,
        "diverged_step": crossed[0][0] if diverged else -1,
        "diverged_loss": crossed[0][1] if diverged else math.nan,
        "frozen_steps": int(frozen_steps),
        "steps": len(losses) - frozen_steps,
        "seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------- the starting point


class _Start:
    """The starting weights and the images of the experiments, loaded on first use."""

    def __init__(self, profile: Profile, *, seed: int, data_root: Any, device: Any,
                 store: ResultsStore | None, quiet: bool) -> None:
        self.profile, self.seed, self.data_root, self.store, self.quiet = profile, seed, data_root, store, quiet
        self.device = resolve_device(device)
        self.epoch = profile.scaling.start_epoch(profile.train)
        self.config = {"train": config_key(train_config(profile, seed)), "epoch": self.epoch}
        self._model: nn.Module | None = None
        self._run: Any = None
        self._subsets: Any = None
        self._trial_images: Any = None

    @property
    def run(self) -> Any:
        if self._run is None:
            self._run = train_experiment(self.profile, seed=self.seed, data_root=self.data_root, device=self.device,
                                         store=self.store, quiet=self.quiet)
        return self._run

    @property
    def model(self) -> nn.Module:
        """The network at the starting checkpoint, in eval mode, on the CPU (copy it before training)."""
        if self._model is None:
            self._model = self.run.model_at(self.epoch)
        return self._model

    @property
    def subsets(self) -> Any:
        if self._subsets is None:
            self._subsets = load_subsets(self.profile, self.data_root)
        return self._subsets

    @property
    def trial_images(self) -> Any:
        """The class-stratified training images of the trials (uint8)."""
        if self._trial_images is None:
            train = self.subsets.train
            n = self.profile.scaling.train_subset
            self._trial_images = train if n >= len(train) else \
                train.subset(stratified_indices(train.labels, n, seed=TRIAL_SUBSET_SEED))
        return self._trial_images

    def loss_fn(self) -> nn.Module:
        """The training loss of the recipe (cross-entropy with its label smoothing)."""
        return nn.CrossEntropyLoss(label_smoothing=self.profile.train.label_smoothing)

    def starting_loss(self) -> float:
        """The recipe's training loss of the starting weights on the trial images (eval mode, no augmentation)."""
        config = {"experiment": "scaling-start-loss", "version": SCALING_VERSION, "start": self.config,
                  "images": self.profile.scaling.train_subset, "label_smoothing": self.profile.train.label_smoothing}

        def compute() -> dict[str, float]:
            images = self.trial_images
            model, loss_fn, total = self.model, self.loss_fn(), 0.0
            with torch.no_grad():
                for lo in range(0, len(images), 500):
                    x = normalize(images.images[lo:lo + 500])
                    total += float(loss_fn(model(x), images.labels[lo:lo + 500])) * x.shape[0]
            return {"loss": total / len(images)}

        return float(_cached(self.store, config, compute)["loss"])


def _cached(store: ResultsStore | None, config: Mapping[str, Any], compute: Callable[[], Mapping[str, Any]]) -> dict:
    if store is None:
        return dict(compute())
    return store.cached(config, compute)


# ----------------------------------------------------------------------------- sweeps


def _start_lr(sizes: ScalingSizes, optimizer: str) -> float:
    return {"sgd": sizes.sgd_start_lr, "momentum": sizes.momentum_start_lr, "adam": sizes.adam_start_lr}[optimizer]


def _sweep(start: _Start, optimizer: str, sweep_seed: int, progress: Any = None) -> list[Bracket]:
    profile, sizes = start.profile, start.profile.scaling
    lattice = LrLattice.from_sizes(sizes, _start_lr(sizes, optimizer))
    base = {"experiment": "scaling-trial", "version": SCALING_VERSION, "start": start.config,
            "recipe": dataclasses.asdict(profile.train), "optimizer": optimizer,
            "momentum": sizes.momentum if optimizer == "momentum" else 0.0,
            "steps": sizes.steps, "frozen_steps": sizes.adam_state_steps if optimizer == "adam" else 0,
            "images": sizes.train_subset, "divergence_factor": sizes.divergence_factor,
            "loss_window": sizes.loss_window, "seed": sweep_seed}
    threshold: list[float] = []

    def run_trial(batch_size: int, index: int) -> dict[str, Any]:
        lr = lattice.lr(index)
        config = {**base, "batch_size": batch_size, "lr": lr}

        def compute() -> dict[str, Any]:
            if not threshold:
                threshold.append(sizes.divergence_factor * start.starting_loss())
            recipe = trial_recipe(profile.train, sizes, optimizer, batch_size=batch_size, lr=lr,
                                  steps=sizes.steps + base["frozen_steps"], n_train=sizes.train_subset)
            return divergence_trial(start.model, start.trial_images, recipe, steps=sizes.steps,
                                    threshold=threshold[0], window=sizes.loss_window,
                                    frozen_steps=base["frozen_steps"], device=start.device,
                                    seed=_seed(sweep_seed, optimizer, batch_size, lr))

        record = _cached(start.store, config, compute)
        if progress is not None:
            progress.update(1)
            progress.set_postfix_str(f"{OPTIMIZER_LABELS[optimizer]}, B={batch_size}, lr={lr:.3g}")
        return record

    return lr_sweep(run_trial, sizes.batch_sizes, lattice, max_ladder_steps=sizes.max_ladder_steps)


# ----------------------------------------------------------------------------- prediction and noise


def curvature_prediction(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         batch_sizes: Sequence[int], *, draws: int, lanczos_steps: int, momentum: float,
                         weight_decay: float = 0.0, seed: int = 0) -> pd.DataFrame:
    r"""Top eigenvalue of ``draws`` batch Hessians per batch size, and the learning rates they predict.

    ``x`` [M, 3, 32, 32] normalised images (test-time transforms), ``y`` [M]; each batch is B of
    them drawn without replacement; BatchNorm in eval mode; ``weight_decay`` adds its curvature.
    ``lanczos_steps`` steps of :func:`~hessian_lib.curvature.lanczos` per batch; the largest Ritz
    value is :math:`\lambda_{\max}`, and ``residual`` its a-posteriori bound (an eigenvalue lies within
    it). One row per (B, draw): ``batch_size``, ``draw``, ``lambda_max``, ``residual``, ``converged``
    (residual below 1e-3 of lambda_max), ``sgd`` = :math:`2/\lambda_{\max}`, ``momentum`` =
    :math:`2(1+\beta)/\lambda_{\max}`.
    """
    rows = []
    for b in batch_sizes:
        for d in range(draws):
            op = batch_operator("hessian", model, loss_fn, (x, y), int(b), seed=_seed(seed, "batch", b, d),
                                bn_mode="eval", weight_decay=weight_decay)
            run = lanczos(op, lanczos_steps, seed=_seed(seed, "lanczos", b, d))
            lam, residual = float(run.ritz_values[-1]), float(run.residuals[-1])
            rows.append({"batch_size": int(b), "draw": d, "lambda_max": lam, "residual": residual,
                         "converged": bool(residual <= 1e-3 * abs(lam)),
                         "sgd": 2.0 / lam if lam > 0 else math.inf,
                         "momentum": 2.0 * (1.0 + momentum) / lam if lam > 0 else math.inf})
    return pd.DataFrame(rows)


def noise_scale(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """:math:`B_{\\mathrm{simple}}` of ``model`` on ``x``, ``y`` (see :mod:`hessian_lib.curvature.noise`) as a dict."""
    return dataclasses.asdict(gradient_noise_scale(model, loss_fn, x, y, chunk_size=64, groups=8))


# ----------------------------------------------------------------------------- parity


#: The parity arms: (name, optimiser, batch multiples of B0, rule). ``rule``: how the base
#: learning rate is scaled with B/B0 (``linear``, ``sqrt`` or ``none``).
PARITY_ARMS: tuple[tuple[str, str, tuple[int, ...], str], ...] = (
    ("SGD, linear scaling", "momentum", (1, 4, 16), "linear"),
    ("SGD, unscaled (control)", "momentum", (16,), "none"),
    ("Adam, square-root scaling", "adam", (1, 4, 16), "sqrt"),
    ("Adam, linear scaling (control)", "adam", (16,), "linear"),
)


def _scaled(base_lr: float, multiple: int, rule: str) -> float:
    return base_lr * {"linear": multiple, "sqrt": math.sqrt(multiple), "none": 1.0}[rule]


def parity_runs(start: "_Start", base_lrs: Mapping[str, float], *, progress: Any = None) -> pd.DataFrame:
    """Train every arm of :data:`PARITY_ARMS` for every parity seed; one row per run.

    ``base_lrs``: the learning rate at B0 per optimiser (``momentum``, ``adam``). Columns: ``arm``,
    ``optimizer``, ``multiple``, ``batch_size``, ``lr``, ``seed``, ``diverged``, ``test_acc`` (%),
    ``train_loss``, ``seconds``. Runs are cached in the store.
    """
    sizes = start.profile.scaling
    rows = []
    for arm, optimizer, multiples, rule in PARITY_ARMS:
        for multiple in multiples:
            b = sizes.parity_batch * multiple
            lr = _scaled(base_lrs[optimizer], multiple, rule)
            for s in range(sizes.parity_seeds):
                run = _parity_run(start, optimizer, b, lr, s)
                if progress is not None:
                    progress.update(1)
                rows.append({"arm": arm, "optimizer": optimizer, "multiple": multiple, "batch_size": b, "lr": lr,
                             "seed": s, **{k: run[k] for k in ("diverged", "test_acc", "train_loss", "seconds")}})
    return pd.DataFrame(rows)


def _parity_images(start: "_Start") -> tuple[Any, Any]:
    sizes = start.profile.scaling
    train = start.subsets.train
    if sizes.parity_subset < len(train):
        train = train.subset(stratified_indices(train.labels, sizes.parity_subset, seed=PARITY_SUBSET_SEED))
    test = load_cifar100("test", start.data_root)
    if sizes.parity_test_subset < len(test):
        test = test.subset(stratified_indices(test.labels, sizes.parity_test_subset, seed=TEST_SUBSET_SEED))
    return train, test


def _parity_run(start: "_Start", optimizer: str, batch_size: int, lr: float, run_seed: int) -> dict[str, Any]:
    profile, sizes = start.profile, start.profile.scaling
    recipe = dataclasses.replace(profile.train, batch_size=batch_size, lr=lr, epochs=sizes.parity_epochs,
                                 optimizer="adam" if optimizer == "adam" else "sgd",
                                 momentum=sizes.momentum if optimizer == "momentum" else 0.0, nesterov=False,
                                 checkpoint_every=10**6, **_full_resolution(profile.train))
    config = {"experiment": "scaling-parity", "version": SCALING_VERSION,
              "start": start.config if sizes.parity_from_checkpoint else "init",
              "recipe": dataclasses.asdict(recipe), "images": sizes.parity_subset,
              "test_images": sizes.parity_test_subset, "seed": _seed(start.seed, "parity", run_seed)}

    def compute() -> dict[str, Any]:
        train, test = _parity_images(start)
        seed = config["seed"]
        if sizes.parity_from_checkpoint:
            model = copy.deepcopy(start.model)
        else:
            torch.manual_seed(derive_seed(seed, "init"))
            model = model_from_profile(recipe)
        result = fit(model, train, recipe, seed=seed, device=start.device, quiet=True)
        # plain test accuracy (no test-time flip): the comparison is between runs, at half the evaluation cost
        _, acc = evaluate(model, test.images, test.labels, device=start.device, flip=False) \
            if not result.diverged else (math.nan, math.nan)
        return {"diverged": bool(result.diverged), "test_acc": 100.0 * acc,
                "train_loss": float(result.history[-1]["train_loss"]) if result.history else math.nan,
                "seconds": float(result.seconds)}

    return _cached(start.store, config, compute)


# ----------------------------------------------------------------------------- everything


@dataclass
class ScalingResult:
    """What the Scaling chapter shows.

    ``sweeps``: optimiser -> one list of :class:`Bracket` per sweep seed; ``prediction``: the rows
    of :func:`curvature_prediction`; ``noise``: :func:`noise_scale`'s dict; ``parity``: the rows of
    :func:`parity_runs`; ``base_lrs``: the parity learning rates at B0; ``start_epoch``,
    ``starting_loss``, ``threshold`` (the divergence loss), ``dim`` (P), ``seconds`` per part.
    """

    profile: Profile
    sweeps: dict[str, list[list[Bracket]]]
    prediction: pd.DataFrame
    noise: dict[str, float]
    parity: pd.DataFrame
    base_lrs: dict[str, float]
    start_epoch: int
    starting_loss: float
    threshold: float
    dim: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def batch_sizes(self) -> list[int]:
        return [int(b) for b in self.profile.scaling.batch_sizes]

    def brackets(self, optimizer: str) -> pd.DataFrame:
        """One row per (seed, B): ``seed``, ``batch_size``, ``lower``, ``upper``, ``bracketed``, ``trials``."""
        rows = []
        for s, sweep in enumerate(self.sweeps[optimizer]):
            for br in sweep:
                rows.append({"seed": s, "batch_size": br.batch_size, "lower": br.lower, "upper": br.upper,
                             "bracketed": br.bracketed, "trials": len(br.trials)})
        return pd.DataFrame(rows)

    def bracket_arrays(self, optimizer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(B [n], lower [seeds, n], upper [seeds, n])`` over the batch sizes bracketed in every seed."""
        frame = self.brackets(optimizer)
        ok = frame.groupby("batch_size")["bracketed"].all()
        keep = [b for b in self.batch_sizes if ok.get(b, False)]
        frame = frame[frame.batch_size.isin(keep)]
        lower = frame.pivot(index="seed", columns="batch_size", values="lower")[keep].to_numpy()
        upper = frame.pivot(index="seed", columns="batch_size", values="upper")[keep].to_numpy()
        return np.asarray(keep, dtype=float), lower, upper

    def fits(self, optimizer: str, *, smallest: int = 3, level: float = 0.95, n_boot: int = 4000) -> dict[str, Any]:
        """Fits to the final brackets of the batch sizes bracketed in every seed, with bootstrap intervals.

        ``slope``: log-log slope over them; ``slope_small``: over the ``smallest`` smallest batch
        sizes of the grid (absent unless all of those are bracketed); ``saturating`` and ``sqrt``:
        :func:`~hessian_lib.scaling.fit_saturating_brackets` and the square-root law
        (:func:`~hessian_lib.scaling.fit_power_brackets`); ``unbracketed``: the grid points left out.
        """
        b, lower, upper = self.bracket_arrays(optimizer)
        out: dict[str, Any] = {"batch_sizes": b, "lower": lower, "upper": upper,
                               "unbracketed": sorted(set(self.batch_sizes) - {int(v) for v in b})}
        if b.size >= 2:
            out["slope"] = laws.bootstrap_slope(b, lower, upper, level=level, n_boot=n_boot, seed=1)
        first = self.batch_sizes[:smallest]
        if smallest >= 2 and [int(v) for v in b[:smallest]] == first:
            out["slope_small"] = laws.bootstrap_slope(b[:smallest], lower[:, :smallest], upper[:, :smallest],
                                                      level=level, n_boot=n_boot, seed=2)
        if b.size >= 3:
            out["saturating"] = laws.fit_saturating_brackets(b, lower, upper, level=level, seed=3)
            out["sqrt"] = laws.fit_power_brackets(b, lower, upper, 0.5, level=level, seed=4)
        return out

    @staticmethod
    def claim_evidence(fit: Mapping[str, Any]) -> dict[str, Any]:
        """What the claim 4 and 5 rules of :mod:`hessian_lib.verdicts` read from :meth:`fits`: the
        ``small_slope`` and ``grid_slope`` intervals (NaN when missing) and ``saturating_passes``: a saturating
        law goes through the final bracket at every grid point (False when a grid point is not bracketed)."""
        missing = laws.Interval(math.nan, math.nan, math.nan)
        passes = "saturating" in fit and bool(np.all(fit["saturating"]["passes"])) and not fit["unbracketed"]
        return {"small_slope": fit.get("slope_small", missing), "grid_slope": fit.get("slope", missing),
                "saturating_passes": passes}

    @staticmethod
    def fit_table(fits: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
        """One row per optimiser: the slopes, the saturating law and the square-root law with their intervals."""
        def show(interval: Any) -> str:
            return str(interval) if interval is not None else "n/a"

        rows = []
        for optimizer, fit in fits.items():
            sat, sqrt = fit.get("saturating"), fit.get("sqrt")
            n = len(fit["batch_sizes"])
            rows.append({
                "optimiser": OPTIMIZER_LABELS[optimizer],
                "bracketed B": f"{n} of {n + len(fit['unbracketed'])}",
                "slope, smallest B": show(fit.get("slope_small")),
                "slope, all B": show(fit.get("slope")),
                "lr_inf": show(sat["lr_inf"]) if sat else "n/a",
                "B*": show(sat["critical_batch"]) if sat else "n/a",
                "saturating law through": f"{int(np.sum(sat['passes']))} of {n}" if sat else "n/a",
                "sqrt law through": f"{int(np.sum(sqrt['passes']))} of {n}" if sqrt else "n/a",
            })
        return pd.DataFrame(rows)

    def parity_accuracies(self, scaled_arm: str, control_arm: str) -> tuple[float, list[float], float]:
        """``(at B0, [at each larger B of the scaled arm], control)``: mean final test accuracies (%) over seeds,
        the inputs of :func:`hessian_lib.verdicts.parity_holds`. Arms are names from :data:`PARITY_ARMS`."""
        means = self.parity.groupby(["arm", "multiple"]).test_acc.mean()
        scaled = means[scaled_arm]
        control = means[control_arm]
        return float(scaled[1]), [float(v) for m, v in scaled.items() if m != 1], float(control.iloc[-1])

    def parity_table(self) -> pd.DataFrame:
        """Per arm and batch size: the learning rate, the mean, standard deviation, min and max of the final
        test accuracy over seeds (%), and how many runs diverged."""
        grouped = self.parity.groupby(["arm", "batch_size"], sort=False)
        table = grouped.agg(lr=("lr", "first"), mean=("test_acc", "mean"), sd=("test_acc", "std"),
                            low=("test_acc", "min"), high=("test_acc", "max"), diverged=("diverged", "sum"),
                            runs=("seed", "count"))
        return table.reset_index()

    def trials(self) -> pd.DataFrame:
        """Every trial: ``optimizer``, ``seed``, ``batch_size``, ``lr``, ``diverged``, ``diverged_step``, ``seconds``."""
        rows = []
        for optimizer, sweeps in self.sweeps.items():
            for s, sweep in enumerate(sweeps):
                for br in sweep:
                    for t in br.trials:
                        rows.append({"optimizer": optimizer, "seed": s, "batch_size": br.batch_size, "lr": t["lr"],
                                     "diverged": bool(t["diverged"]), "diverged_step": int(t["diverged_step"]),
                                     "seconds": float(t["seconds"])})
        return pd.DataFrame(rows)

    def prediction_table(self) -> pd.DataFrame:
        """Per B: mean and range of lambda_max, and measured over predicted for plain and momentum SGD.

        The prediction is :math:`2/\\bar\\lambda` (and :math:`2(1+\\beta)/\\bar\\lambda`) with
        :math:`\\bar\\lambda` the mean over draws; the measured value is the geometric midpoint of the
        final bracket (mean over seeds of its logarithm); ``nan`` where not bracketed.
        """
        beta = self.profile.scaling.momentum
        grouped = self.prediction.groupby("batch_size")["lambda_max"]
        rows = []
        for b in self.batch_sizes:
            lam = grouped.get_group(b).to_numpy()
            row = {"batch_size": b, "lambda_max": float(lam.mean()), "lambda_min_draw": float(lam.min()),
                   "lambda_max_draw": float(lam.max())}
            for optimizer, numerator in (("sgd", 2.0), ("momentum", 2.0 * (1 + beta))):
                predicted = numerator / row["lambda_max"]
                frame = self.brackets(optimizer)
                frame = frame[(frame.batch_size == b) & frame.bracketed]
                measured = float(np.exp(np.mean(0.5 * (np.log(frame.lower) + np.log(frame.upper))))) \
                    if len(frame) else math.nan
                row[f"{optimizer}_predicted"] = predicted
                row[f"{optimizer}_measured"] = measured
                row[f"{optimizer}_ratio"] = measured / predicted
            rows.append(row)
        return pd.DataFrame(rows)


def _parity_base(sizes: ScalingSizes, sweeps: Mapping[str, list[list[Bracket]]]) -> dict[str, float]:
    """The learning rates at B0: the profile's, or ``parity_lr_fraction`` times the measured lower end at B0."""
    out = {}
    for optimizer, fixed in (("momentum", sizes.parity_sgd_lr), ("adam", sizes.parity_adam_lr)):
        if fixed > 0:
            out[optimizer] = float(fixed)
            continue
        lowers = [br.lower for sweep in sweeps[optimizer] for br in sweep
                  if br.batch_size == sizes.parity_batch and math.isfinite(br.lower)]
        if not lowers:
            raise ValueError(f"scaling.parity_batch {sizes.parity_batch}: no stable learning rate was measured there "
                             f"for {OPTIMIZER_LABELS[optimizer]}; put it on scaling.batch_sizes or set "
                             f"scaling.parity_{'sgd' if optimizer == 'momentum' else 'adam'}_lr")
        out[optimizer] = sizes.parity_lr_fraction * float(np.exp(np.mean(np.log(lowers))))
    return out


def run_scaling(
    profile: str | Profile = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    store: ResultsStore | str | os.PathLike | None = None,
    quiet: bool = True,
    progress: bool = False,
) -> ScalingResult:
    """Run (or load from ``store``) every experiment of the Scaling chapter; see the module docstring.

    The profile's training run is trained first if the store does not hold it. With a store,
    every trial, prediction and parity run is cached, so an interrupted call resumes.
    """
    profile = load_profile(profile, overrides)
    sizes = profile.scaling
    if store is not None and not isinstance(store, ResultsStore):
        store = ResultsStore(store)
    start = _Start(profile, seed=seed, data_root=data_root, device=device, store=store, quiet=quiet)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="scaling", unit="run")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    sweeps = {opt: [_sweep(start, opt, _seed(seed, "sweep", s), bar) for s in range(sizes.seeds)]
              for opt in OPTIMIZERS}
    seconds["sweeps"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    curvature_config = {"experiment": "scaling-prediction", "version": SCALING_VERSION, "start": start.config,
                        "images": sizes.curvature_images, "batch_sizes": list(sizes.batch_sizes),
                        "draws": sizes.curvature_draws, "lanczos_steps": sizes.lanczos_steps,
                        "momentum": sizes.momentum, "label_smoothing": profile.train.label_smoothing,
                        "weight_decay": profile.train.weight_decay, "seed": seed}

    def predict() -> dict[str, Any]:
        x, y = curvature_inputs(profile, data_root, "cpu", size=sizes.curvature_images)
        frame = curvature_prediction(start.model, start.loss_fn(), x, y, sizes.batch_sizes,
                                     draws=sizes.curvature_draws, lanczos_steps=sizes.lanczos_steps,
                                     momentum=sizes.momentum, weight_decay=profile.train.weight_decay, seed=seed)
        return {"rows": frame.to_dict(orient="records")}

    prediction = pd.DataFrame(_cached(store, curvature_config, predict)["rows"])
    seconds["prediction"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    noise_config = {"experiment": "scaling-noise", "version": SCALING_VERSION, "start": start.config,
                    "images": sizes.noise_samples, "label_smoothing": profile.train.label_smoothing}

    def measure_noise() -> dict[str, float]:
        x, y = curvature_inputs(profile, data_root, "cpu", size=sizes.noise_samples)
        return noise_scale(start.model, start.loss_fn(), x, y)

    noise = _cached(store, noise_config, measure_noise)
    seconds["noise"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    base_lrs = _parity_base(sizes, sweeps)
    parity = parity_runs(start, base_lrs, progress=bar)
    seconds["parity"] = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    starting_loss = start.starting_loss()
    dim = sum(p.numel() for p in model_from_profile(profile).parameters())
    return ScalingResult(profile=profile, sweeps=sweeps, prediction=prediction, noise=noise, parity=parity,
                         base_lrs=base_lrs, start_epoch=start.epoch, starting_loss=starting_loss,
                         threshold=sizes.divergence_factor * starting_loss, dim=int(dim), seconds=seconds)
