r"""The Learner chapter's experiments: the SLQ learner against validated SGD and Adam on CIFAR-100.

A class-stratified validation split (``learner.validation_images``) is held out of the training
images; every run trains on ``learner.train_images`` of the rest. Every run is a pure function of
the profile's ``learner`` and ``train`` sections, a method and a seed, cached in the results store
(:func:`run_method`). :func:`run_study` runs them all, several at a time on a multi-core CPU:

* ``polyak``: :class:`~hessian_lib.slq_learner.SLQLearner` with the heavy-ball rule (SGD, no Nesterov),
  holding each rate until the next estimate (the paper's learner);
* ``polyak_schedule``: the same, with the recipe's warm-up and decay as a multiplier on the rate it sets;
* ``gd``: the learner with the gradient-descent rule (SGD without momentum);
* ``sgd``: SGD with the paper's momentum at each learning rate of the grid ``learner.sgd_lrs``, the
  recipe's schedule; the best is chosen on the validation split, never on the test set;
* ``adam``: Adam at ``learner.adam_lr``, the recipe's schedule;

all with the profile's recipe otherwise (network, batch size, weight decay, label smoothing,
augmentation; every epoch on low-resolution crops when ``learner.low_res``), the same
initialisation and data order per seed, for ``learner.epochs`` epochs; each is tested on
``learner.test_images`` test images after every epoch and scored on the validation split at the
end (no test-time flip: one forward pass per image).

The learner's curvature is the Hessian of the training loss (label smoothing and the L2 weight
decay included) on a fixed curvature subset of the training images with test-time transforms
(centre crops at the training resolution), ``bn_mode="eval"``, on a copy of the network whose
BatchNorm statistics are refreshed on that subset before each estimate
(:func:`~hessian_lib.slq_learner.refreshed_batchnorm`).

What the chapter reads off a finished study (the curvature subset against batches, the cost of an estimate,
the verdict of claim 6) and the learner on a quadratic are in :mod:`hessian_lib.experiments.learner_analysis`.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from hessian_lib.curvature import HessianOperator
from hessian_lib.data import CIFAR100Split, load_cifar100, normalize, stratified_indices
from hessian_lib.experiments.stages import run_stage, stage_config
from hessian_lib.experiments.training import CURVATURE_SEED, SUBSET_SEED, TRAINER_VERSION, model_from_profile
from hessian_lib.models import count_parameters
from hessian_lib.profiles import Profile, TrainSizes, load_profile
from hessian_lib.slq_learner import SLQLearner, refreshed_batchnorm
from hessian_lib.store import ResultsStore, atomic_torch_save
from hessian_lib.trainer import derive_seed, evaluate, fit, lr_factor, resolve_device
from hessian_lib.verdicts import stable_lr_range

__all__ = [
    "LEARNER_METHODS",
    "MAX_WORKERS",
    "VALIDATION_SEED",
    "LearnerData",
    "LearnerStudy",
    "default_workers",
    "learner_data",
    "method_label",
    "first_runs",
    "run_config",
    "run_method",
    "run_recipe",
    "run_study",
]

#: Changes whenever a run's behaviour changes for the same config, so no stale run is loaded.
LEARNER_VERSION = 2
#: The chapter whose stages (:mod:`~hessian_lib.experiments.stages`) this module runs.
CHAPTER = "04_learner"
#: The methods a study compares, in the order tables and figures show them.
LEARNER_METHODS = ("polyak", "polyak_schedule", "gd", "sgd", "adam")
#: Seed of the class-stratified validation split held out of the training images.
VALIDATION_SEED = 2
#: At most this many runs at once on a CPU (each holds a copy of the training images).
MAX_WORKERS = 8


def method_label(method: str, lr: float | None = None) -> str:
    """How tables, figures and the explorer name a run: ``Polyak learner``, ``SGD lr 0.1``, ..."""
    names = {"polyak": "Polyak learner", "polyak_schedule": "Polyak learner x schedule", "gd": "GD learner",
             "sgd": "SGD", "adam": "Adam"}
    if method not in names:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(LEARNER_METHODS)}")
    return f"{names[method]} lr {lr:g}" if method == "sgd" else names[method]


# ----------------------------------------------------------------------------- data and recipes


@dataclass(frozen=True)
class LearnerData:
    """The images of a study: uint8 ``train``, ``validation`` and ``test`` splits; the indices of the
    training and validation images in CIFAR-100's training split (``train_index``, ``validation_index``:
    disjoint); the normalised curvature subset ``curvature_x`` [M, 3, R, R] with ``curvature_y`` [M]
    (centre crops at the training resolution R = ``resolution``)."""

    train: CIFAR100Split
    validation: CIFAR100Split
    test: CIFAR100Split
    train_index: np.ndarray
    validation_index: np.ndarray
    curvature_x: torch.Tensor
    curvature_y: torch.Tensor
    resolution: int = 32

    @property
    def train_x(self) -> torch.Tensor:
        """Every training image, normalised, test-time transforms at the training resolution."""
        return normalize(centre_crop(self.train.images, self.resolution).to(self.curvature_x.device))


def centre_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` pixels of ``images`` [N, C, H, W] (the images themselves at full size)."""
    h, w = images.shape[-2:]
    if size == h and size == w:
        return images
    if size > min(h, w):
        raise ValueError(f"cannot crop {size} pixels out of {h} x {w} images")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size]


def learner_data(profile: str | Profile, data_root: str | os.PathLike | None = None,
                 device: str | torch.device | None = "cpu") -> LearnerData:
    """The validation split (``learner.validation_images``, class-stratified, held out of the training
    split), ``learner.train_images`` of the remaining training images (all of them when that is their
    number; otherwise a class-stratified draw), ``learner.test_images`` test images, and the curvature
    subset drawn from the training images."""
    profile = load_profile(profile)
    sizes = profile.learner
    train_all, test_all = load_cifar100("train", data_root), load_cifar100("test", data_root)
    validation_index = stratified_indices(train_all.labels, sizes.validation_images, seed=VALIDATION_SEED)
    rest = np.setdiff1d(np.arange(len(train_all)), validation_index)
    if sizes.train_images > rest.size:
        raise ValueError(f"learner.train_images ({sizes.train_images:,}) exceeds the {rest.size:,} training images "
                         f"left beside the validation split")
    train_index = rest if sizes.train_images == rest.size else \
        rest[stratified_indices(train_all.labels[rest], sizes.train_images, seed=SUBSET_SEED)]
    train = train_all.subset(train_index)
    test = test_all if sizes.test_images == len(test_all) else \
        test_all.subset(stratified_indices(test_all.labels, sizes.test_images, seed=SUBSET_SEED))
    curvature = train.subset(stratified_indices(train.labels, sizes.curvature_images, seed=CURVATURE_SEED))
    resolution = profile.train.low_res_size if sizes.low_res else int(train_all.images.shape[-1])
    dev = resolve_device(device)
    return LearnerData(train=train, validation=train_all.subset(validation_index), test=test,
                       train_index=np.asarray(train_index), validation_index=np.asarray(validation_index),
                       curvature_x=normalize(centre_crop(curvature.images, resolution).to(dev)),
                       curvature_y=curvature.labels.to(dev), resolution=resolution)


def run_recipe(profile: str | Profile, method: str, lr: float | None = None) -> TrainSizes:
    """The training recipe of one run: the profile's ``train`` recipe with the study's network, epochs,
    batch size and resolution, and the method's optimiser (the learner's ``lr`` is a placeholder it
    overrides; ``polyak_schedule`` keeps the recipe's schedule, which the learner reads as a multiplier)."""
    profile = load_profile(profile)
    t, sizes = profile.train, profile.learner
    common = dataclasses.replace(t, model=sizes.model or t.model, epochs=sizes.epochs,
                                 batch_size=sizes.batch_size or t.batch_size, checkpoint_every=sizes.epochs,
                                 low_res_epochs=sizes.epochs if sizes.low_res else 0, eval_flip=False)
    if method == "sgd":
        if lr is None:
            raise ValueError("an SGD run needs its learning rate")
        return dataclasses.replace(common, optimizer="sgd", lr=float(lr), momentum=sizes.sgd_momentum, nesterov=False)
    if method == "adam":
        return dataclasses.replace(common, optimizer="adam", lr=sizes.adam_lr)
    if method in ("polyak", "gd"):
        return dataclasses.replace(common, optimizer="sgd", lr=1.0, momentum=0.0, nesterov=False, schedule="constant",
                                   warmup_epochs=0.0)
    if method == "polyak_schedule":
        return dataclasses.replace(common, optimizer="sgd", lr=1.0, momentum=0.0, nesterov=False)
    raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(LEARNER_METHODS)}")


def _steps_per_epoch(profile: Profile) -> int:
    return profile.learner.train_images // run_recipe(profile, "adam").batch_size


def estimate_every(profile: str | Profile) -> int:
    """Optimiser steps between the learner's estimates (``learner.every_steps``; 0 is once per epoch)."""
    profile = load_profile(profile)
    return profile.learner.every_steps or _steps_per_epoch(profile)


def run_config(profile: str | Profile, method: str, seed: int, lr: float | None = None) -> dict[str, Any]:
    """What a run's store key hashes: its recipe, the images, the learner's sizes (learner runs), the seed."""
    profile = load_profile(profile)
    sizes = profile.learner
    config: dict[str, Any] = {
        "experiment": "learner_run", "version": LEARNER_VERSION, "trainer_version": TRAINER_VERSION,
        "method": method, "seed": int(seed), "recipe": dataclasses.asdict(run_recipe(profile, method, lr)),
        "train_images": sizes.train_images, "validation_images": sizes.validation_images,
        "validation_seed": VALIDATION_SEED, "test_images": sizes.test_images,
    }
    if method in ("polyak", "polyak_schedule", "gd"):
        config.update(curvature_images=sizes.curvature_images, lanczos_steps=sizes.lanczos_steps,
                      every_steps=estimate_every(profile), low_res=sizes.low_res,
                      bn="eval, statistics refreshed on the curvature subset")
    return config


# ----------------------------------------------------------------------------- one run


def _curvature(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: TrainSizes) -> Callable[[], HessianOperator]:
    loss = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    def make() -> HessianOperator:
        return HessianOperator(refreshed_batchnorm(model, x), loss, (x, y), bn_mode="eval",
                               weight_decay=recipe.weight_decay)

    return make


def run_method(profile: str | Profile, method: str, seed: int, lr: float | None = None, *,
               data: LearnerData, store: ResultsStore | str | os.PathLike | None = None,
               device: str | torch.device | None = "auto", recompute: bool = False) -> dict[str, Any]:
    """Train one run (or load it from ``store``); return its record.

    Record: ``method``, ``lr`` (the grid value; ``None`` for the learners), ``seed``, ``label``,
    ``test_acc``/``test_loss`` (fractions, on the test images, after the last epoch),
    ``val_acc``/``val_loss`` (on the validation split, at the end), ``epoch_test_acc`` (one per epoch),
    ``diverged``, ``diverged_step`` (a run that diverged has NaN accuracies), ``seconds`` (training
    wall time, estimates included, evaluation excluded), ``learner_seconds``, ``step_loss`` /
    ``step_lr`` / ``step_momentum`` (one entry per optimiser step, the values the step was taken
    with), ``estimates`` (the learner's history), ``parameters``, ``key``. Learner runs keep their
    final weights (``final.pt`` in the run's store folder).
    """
    profile = load_profile(profile)
    config = run_config(profile, method, seed, lr)
    store = ResultsStore(store) if store is not None and not isinstance(store, ResultsStore) else store
    if store is not None and store.has(config) and not recompute:
        return _with_key(store.load(config), config)
    recipe = run_recipe(profile, method, lr)
    dev = resolve_device(device)
    torch.manual_seed(derive_seed(seed, "init"))
    model = model_from_profile(recipe)
    learner = None
    callbacks = []
    if method in ("polyak", "polyak_schedule", "gd"):
        sizes = profile.learner
        x, y = data.curvature_x.to(dev), data.curvature_y.to(dev)
        steps = _steps_per_epoch(profile)
        total, warmup = steps * recipe.epochs, int(round(recipe.warmup_epochs * steps))
        schedule = (lambda step: lr_factor(step, total, recipe.schedule, warmup)) if method == "polyak_schedule" \
            else None
        learner = SLQLearner(None, _curvature(model, x, y, recipe), rule="gd" if method == "gd" else "polyak",
                             every_steps=estimate_every(profile), lanczos_steps=sizes.lanczos_steps, seed=seed,
                             lr_schedule=schedule)
        callbacks.append(learner)
    losses: list[float] = []
    rates: list[float] = []
    momenta: list[float] = []

    def on_step(info: Any) -> None:  # after each step: the loss, and the lr and momentum it was taken with
        losses.append(info.loss)
        rates.append(info.lr)
        if learner is not None:
            momenta.append(learner.momentum if learner.momentum is not None else recipe.momentum)
        else:
            momenta.append(recipe.momentum if recipe.optimizer == "sgd" else math.nan)

    fitted = fit(model, data.train, recipe, test=data.test, seed=seed, device=dev, quiet=True, callbacks=callbacks,
                 on_step=on_step)
    epoch_acc = [float(h["test_acc"]) for h in fitted.history]
    if fitted.diverged:
        test_loss = test_acc = val_loss = val_acc = math.nan
    else:
        test_loss, test_acc = float(fitted.history[-1]["test_loss"]), epoch_acc[-1]
        val_loss, val_acc = evaluate(model, data.validation.images, data.validation.labels, device=dev, flip=False)
    lr = recipe.lr if method in ("sgd", "adam") else None  # the learner's recipe lr is a placeholder
    record: dict[str, Any] = {
        "method": method, "lr": lr, "seed": int(seed), "label": method_label(method, lr),
        "test_acc": float(test_acc), "test_loss": float(test_loss), "val_acc": float(val_acc),
        "val_loss": float(val_loss), "epoch_test_acc": np.asarray(epoch_acc, dtype=np.float64),
        "diverged": bool(fitted.diverged), "diverged_step": fitted.diverged_step,
        "seconds": float(sum(h["train_seconds"] for h in fitted.history)) if fitted.history and not fitted.diverged
        else float(fitted.seconds),
        "learner_seconds": float(learner.seconds) if learner is not None else 0.0,
        "estimates": [dict(e) for e in learner.history] if learner is not None else [],
        "parameters": int(count_parameters(model)), "threads": int(torch.get_num_threads()),
        "step_loss": np.asarray(losses, dtype=np.float64), "step_lr": np.asarray(rates, dtype=np.float64),
        "step_momentum": np.asarray(momenta, dtype=np.float64),
    }
    if store is not None:
        if learner is not None:
            atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                              store.artifact_dir(config) / "final.pt")
        store.save(config, record)
        return _with_key(store.load(config), config)
    record["model"] = model
    return _with_key(record, config)


def _with_key(record: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    return {**record, "key": ResultsStore.key(config), "config": config}


# ----------------------------------------------------------------------------- several runs at once

_WORKER: dict[str, Any] = {}


def default_workers(device: str | torch.device | None = "auto", runs: int | None = None) -> int:
    """How many runs :func:`run_study` trains at once: one per CPU core on a CPU (a small network gains
    little from a second thread, so single-threaded runs side by side train more images per second;
    at most :data:`MAX_WORKERS` and ``runs``), one on a GPU."""
    if resolve_device(device).type != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS, runs if runs is not None else MAX_WORKERS))


def _worker_start(profile: Profile, data_root: str | None, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER["data"] = learner_data(profile, data_root, "cpu")


def _worker_run(profile: Profile, method: str, seed: int, lr: float | None, store: str) -> str:
    return run_method(profile, method, seed, lr, data=_WORKER["data"], store=store, device="cpu")["key"]


# ----------------------------------------------------------------------------- the study


@dataclass
class LearnerStudy:
    """Every run of a study (``runs``: the records of :func:`run_method`) and the sizes behind them."""

    profile: Profile
    runs: list[dict[str, Any]]
    seconds: float = 0.0
    store: ResultsStore | None = field(default=None, repr=False)
    workers: int = 1

    @property
    def seeds(self) -> list[int]:
        """The seeds every method ran with (``learner.seeds`` of them)."""
        labels = {r["label"] for r in self.runs}
        return sorted(s for s in {r["seed"] for r in self.runs}
                      if {r["label"] for r in self.runs if r["seed"] == s} == labels)

    def paired_seeds(self, method: str = "polyak") -> list[int]:
        """The seeds on which ``method`` and the validated SGD both ran."""
        best = method_label("sgd", self.best_sgd_lr())
        return sorted({r["seed"] for r in self.runs if r["label"] == method_label(method)}
                      & {r["seed"] for r in self.runs if r["label"] == best})

    @property
    def labels(self) -> list[str]:
        """Run labels in display order (learners, the SGD grid by learning rate, Adam)."""
        seen: dict[str, None] = {}
        for r in sorted(self.runs, key=lambda r: (LEARNER_METHODS.index(r["method"]), r["lr"] or 0.0)):
            seen.setdefault(r["label"], None)
        return list(seen)

    def run(self, label: str, seed: int) -> dict[str, Any]:
        """The record of the run labelled ``label`` with training seed ``seed`` (``KeyError`` if absent)."""
        for r in self.runs:
            if r["label"] == label and r["seed"] == seed:
                return r
        raise KeyError(f"no run {label!r} with seed {seed}")

    def runs_of(self, label: str) -> list[dict[str, Any]]:
        """The runs with ``label``, by seed."""
        return sorted((r for r in self.runs if r["label"] == label), key=lambda r: r["seed"])

    def table(self) -> pd.DataFrame:
        """One row per method (and grid value): mean and spread of the final test accuracy over seeds, the
        mean validation accuracy, divergences, training time and the learner's share of it."""
        rows = []
        for label in self.labels:
            runs = self.runs_of(label)
            acc = np.array([r["test_acc"] for r in runs])
            seconds = sum(r["seconds"] for r in runs)
            rows.append({"method": label, "mean test accuracy (%)": 100 * acc.mean(),
                         "spread over seeds (%)": 100 * (acc.max() - acc.min()),
                         "validation accuracy (%)": 100 * np.mean([r["val_acc"] for r in runs]),
                         "diverged": f"{sum(r['diverged'] for r in runs)} of {len(runs)}",
                         "seconds per run": seconds / len(runs),
                         "estimates share": sum(r["learner_seconds"] for r in runs) / seconds if seconds else 0.0})
        return pd.DataFrame(rows)

    def sgd_grid(self) -> pd.DataFrame:
        """The SGD grid over the seeds every method ran with: per learning rate, the mean validation and test
        accuracies and whether any seed diverged."""
        rows = []
        seeds = set(self.seeds)
        for lr in sorted({r["lr"] for r in self.runs if r["method"] == "sgd"}):
            runs = [r for r in self.runs if r["method"] == "sgd" and r["lr"] == lr and r["seed"] in seeds]
            rows.append({"lr": lr, "mean_val_acc": float(np.mean([r["val_acc"] for r in runs])),
                         "mean_acc": float(np.mean([r["test_acc"] for r in runs])),
                         "diverged": any(r["diverged"] for r in runs)})
        return pd.DataFrame(rows)

    def best_sgd_lr(self) -> float:
        """The grid learning rate with the best mean validation accuracy (a grid value that diverged on any
        seed has a NaN mean and is never chosen; ties go to the smaller rate)."""
        grid = self.sgd_grid()
        scores = grid["mean_val_acc"].fillna(-np.inf).to_numpy()
        if not np.isfinite(scores).any():
            raise ValueError("every learning rate of the SGD grid diverged: there is no validated SGD to compare with")
        return float(grid["lr"].iloc[int(np.argmax(scores))])

    def paired(self, method: str = "polyak") -> tuple[np.ndarray, np.ndarray]:
        """Final test accuracies of ``method`` and of the validated SGD, one per seed both ran with, in seed order."""
        best = method_label("sgd", self.best_sgd_lr())
        label = method_label(method)
        seeds = self.paired_seeds(method)
        return (np.array([self.run(label, s)["test_acc"] for s in seeds]),
                np.array([self.run(best, s)["test_acc"] for s in seeds]))

    def mean_acc(self, method: str) -> float:
        """Mean final test accuracy (fraction) over the runs of ``method``."""
        return float(np.mean([r["test_acc"] for r in self.runs if r["method"] == method]))

    def chosen_lrs(self, method: str = "polyak") -> np.ndarray:
        """Every learning rate the learner set at an estimate (all estimates, all seeds; before any schedule)."""
        return np.array([e["lr"] for r in self.runs if r["method"] == method for e in r["estimates"]], dtype=float)

    def chosen_momenta(self, method: str = "polyak") -> np.ndarray:
        """Every momentum the learner chose in the runs of ``method``, ``[estimates]``."""
        return np.array(
            [e["momentum"] for r in self.runs if r["method"] == method for e in r["estimates"]], dtype=float
        )

    def stable_range(self) -> tuple[float, float] | None:
        """``(lowest, highest)`` learning rate of the SGD grid none of whose runs diverged; ``None`` if all did."""
        sgd = [r for r in self.runs if r["method"] == "sgd"]
        return stable_lr_range([r["lr"] for r in sgd], [r["diverged"] for r in sgd])

    def overhead(self, method: str = "polyak") -> float:
        """The learner's estimates as a share of its runs' training wall time."""
        runs = [r for r in self.runs if r["method"] == method]
        return sum(r["learner_seconds"] for r in runs) / max(1e-12, sum(r["seconds"] for r in runs))

    def overheads(self) -> dict[str, float]:
        """The estimates' share of the training wall time of every learner run (``label, seed s``: share)."""
        return {f"{r['label']}, seed {r['seed']}": r["learner_seconds"] / max(1e-12, r["seconds"])
                for r in self.runs if r["method"] in ("polyak", "polyak_schedule", "gd")}


def run_study(profile: str | Profile, *, seed: int = 0, data_root: str | os.PathLike | None = None,
              device: str | torch.device | None = "auto", store: ResultsStore | str | os.PathLike | None = None,
              data: LearnerData | None = None, progress: bool = False, workers: int | None = None,
              threads: int | None = None) -> LearnerStudy:
    """Every run of the study for seeds ``seed, seed + 1, ...`` (``learner.seeds`` of them), then the Polyak
    learner and the SGD chosen on the validation split for the further seeds up to ``learner.paired_seeds``;
    cached in ``store``.

    ``workers``: runs trained at once (``None``: :func:`default_workers`). With more than one (CPU only;
    a ``store`` is needed), each run goes to a process of its own with ``cores // workers`` threads,
    (``threads``, when given), which loads the images itself; the runs already in the store are loaded, not
    repeated. Results depend on the thread count only in the last bits of floating-point sums.
    """
    profile = load_profile(profile)
    sizes = profile.learner
    store = ResultsStore(store) if store is not None and not isinstance(store, ResultsStore) else store
    if workers is not None and int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    start = time.perf_counter()
    first = _run_plan(profile, first_runs(profile, seed), data_root=data_root, device=device, store=store, data=data,
                      progress=progress, workers=workers, threads=threads)
    data = first.data
    study = LearnerStudy(profile=profile, runs=first.runs, store=store, workers=first.workers)
    extra = [(m, lr, s) for s in range(seed + sizes.seeds, seed + sizes.paired_seeds)
             for m, lr in [("polyak", None), ("sgd", study.best_sgd_lr())]]

    def paired() -> None:
        if extra:
            second = _run_plan(profile, extra, data_root=data_root, device=device, store=store, data=data,
                               progress=progress, workers=workers, threads=threads)
            study.runs += second.runs
            study.workers = max(study.workers, second.workers)

    run_stage(store, stage_config(CHAPTER, "paired seeds", profile, seed), paired)
    study.seconds = time.perf_counter() - start
    return study


def first_runs(profile: Profile, seed: int = 0) -> list[tuple[str, float | None, int]]:
    """``(method, lr, seed)`` of every run of the study's first ``learner.seeds`` seeds (the later, paired seeds
    use the SGD rate these choose)."""
    return [(m, lr, s) for s in range(seed, seed + profile.learner.seeds)
            for m, lr in [("polyak", None), ("polyak_schedule", None), ("gd", None),
                          *[("sgd", v) for v in profile.learner.sgd_lrs], ("adam", None)]]


@dataclass
class _Done:
    runs: list[dict[str, Any]]
    data: LearnerData
    workers: int


def _run_plan(profile: Profile, plan: list[tuple[str, float | None, int]], *, data_root: str | os.PathLike | None,
              device: str | torch.device | None, store: ResultsStore | None, data: LearnerData | None,
              progress: bool, workers: int | None, threads: int | None) -> _Done:
    """The runs of ``plan`` (method, lr, seed), those not in ``store`` trained ``workers`` at a time."""
    pending = [p for p in plan if store is None or not store.has(run_config(profile, p[0], p[2], p[1]))]
    workers = default_workers(device, len(pending)) if workers is None else int(workers)
    workers = min(workers, max(1, len(pending)))
    if workers > 1 and (store is None or resolve_device(device).type != "cpu"):
        workers = 1  # side-by-side runs hand their results back through the store, on CPU cores
    if workers > 1:
        threads = threads if threads is not None else max(1, (os.cpu_count() or 1) // workers)
        root = str(data_root) if data_root is not None else None
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_start,
                                 initargs=(profile, root, threads)) as pool:
            futures = [pool.submit(_worker_run, profile, m, s, lr, str(store.root)) for m, lr, s in pending]
            done: Iterator[Any] = as_completed(futures)
            if progress:
                from tqdm.auto import tqdm

                done = iter(tqdm(done, total=len(futures), desc=f"learner runs ({workers} at a time)", leave=False))
            for future in done:
                future.result()  # a failed run raises here
    data = data if data is not None else learner_data(profile, data_root, device)
    iterator: Iterator[Any] = iter(plan)
    if progress and workers == 1:
        from tqdm.auto import tqdm

        iterator = iter(tqdm(plan, desc="learner runs", leave=False))
    runs = [run_method(profile, m, s, lr, data=data, store=store, device=device) for m, lr, s in iterator]
    return _Done(runs=runs, data=data, workers=workers)
