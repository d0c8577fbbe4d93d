r"""The Learner chapter's experiments: the SLQ learner against tuned SGD and Adam on CIFAR-100.

Every run is a pure function of the profile's ``learner`` and ``train`` sections, a method and a
seed, cached in the results store (:func:`run_method`). :func:`run_study` runs them all:

* ``polyak``: :class:`~hessian_lib.learner.SLQLearner` with the heavy-ball rule (SGD, no Nesterov);
* ``gd``: the learner with the gradient-descent rule (SGD without momentum);
* ``sgd``: SGD with the paper's momentum at each learning rate of the grid ``learner.sgd_lrs``;
* ``adam``: Adam at ``learner.adam_lr``;

all with the profile's recipe otherwise (network, batch size, weight decay, label smoothing,
augmentation at full resolution; the schedule for SGD and Adam, none for the learner, which sets
the learning rate itself), the same initialisation and data order per seed, for ``learner.epochs`` epochs on a
class-stratified draw of ``learner.train_images`` training images, and a single test at the end
on ``learner.test_images`` test images (no test-time flip: one forward pass per image).

The learner's curvature is the Hessian of the training loss (label smoothing and the L2 weight
decay included) on a fixed curvature subset of the training images with test-time transforms,
``bn_mode="eval"``, on a copy of the network whose BatchNorm statistics are refreshed on that
subset before each estimate (:func:`~hessian_lib.learner.refreshed_batchnorm`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from hessian_lib.curvature import HessianOperator, MatrixOperator, batch_operator, lanczos
from hessian_lib.data import CIFAR100Split, load_cifar100, normalize, stratified_indices
from hessian_lib.experiments.training import CURVATURE_SEED, SUBSET_SEED, TRAINER_VERSION, model_from_profile
from hessian_lib.learner import SLQLearner, extremes, gd_rate, heavy_ball_rate, refreshed_batchnorm
from hessian_lib.models import count_parameters
from hessian_lib.profiles import Profile, TrainSizes, load_profile
from hessian_lib.store import ResultsStore, atomic_torch_save
from hessian_lib.train import derive_seed, evaluate, fit, resolve_device
from hessian_lib.verdicts import Verdict, claim6_verdict, stable_lr_range

__all__ = [
    "LEARNER_METHODS",
    "LearnerData",
    "LearnerStudy",
    "claim6",
    "learner_data",
    "method_label",
    "quadratic_demo",
    "run_config",
    "run_method",
    "run_recipe",
    "run_study",
    "subset_vs_batches",
]

#: Changes whenever a run's behaviour changes for the same config, so no stale run is loaded.
LEARNER_VERSION = 1
#: The methods a study compares, in the order tables and figures show them.
LEARNER_METHODS = ("polyak", "gd", "sgd", "adam")


def method_label(method: str, lr: float | None = None) -> str:
    """How tables, figures and the explorer name a run: ``Polyak learner``, ``SGD lr 0.1``, ..."""
    names = {"polyak": "Polyak learner", "gd": "GD learner", "sgd": "SGD", "adam": "Adam"}
    return names[method] if method in ("polyak", "gd") else f"{names[method]} lr {lr:g}"


# ----------------------------------------------------------------------------- data and recipes


@dataclass(frozen=True)
class LearnerData:
    """The images of a study: uint8 ``train`` and ``test`` splits, the normalised curvature subset
    ``curvature_x`` [M, 3, 32, 32] with ``curvature_y`` [M], and ``train_x`` (all training images,
    normalised, test-time transforms) for drawing batches to compare with it."""

    train: CIFAR100Split
    test: CIFAR100Split
    curvature_x: torch.Tensor
    curvature_y: torch.Tensor

    @property
    def train_x(self) -> torch.Tensor:
        return normalize(self.train.images.to(self.curvature_x.device))


def learner_data(profile: str | Profile, data_root: str | os.PathLike | None = None,
                 device: str | torch.device | None = "cpu") -> LearnerData:
    """Class-stratified draws of ``learner.train_images`` training and ``learner.test_images`` test images
    (all of a split when the size is the split's), and the curvature subset drawn from the training draw."""
    sizes = load_profile(profile).learner
    train_all, test_all = load_cifar100("train", data_root), load_cifar100("test", data_root)
    train = train_all if sizes.train_images == len(train_all) else \
        train_all.subset(stratified_indices(train_all.labels, sizes.train_images, seed=SUBSET_SEED))
    test = test_all if sizes.test_images == len(test_all) else \
        test_all.subset(stratified_indices(test_all.labels, sizes.test_images, seed=SUBSET_SEED))
    curvature = train.subset(stratified_indices(train.labels, sizes.curvature_images, seed=CURVATURE_SEED))
    dev = resolve_device(device)
    return LearnerData(train=train, test=test, curvature_x=normalize(curvature.images.to(dev)),
                       curvature_y=curvature.labels.to(dev))


def run_recipe(profile: str | Profile, method: str, lr: float | None = None) -> TrainSizes:
    """The training recipe of one run: the profile's ``train`` recipe with the study's network, epochs
    and batch size, and the method's optimiser (the learner's ``lr`` is a placeholder it overrides)."""
    profile = load_profile(profile)
    t, sizes = profile.train, profile.learner
    # Full resolution throughout (no progressive resizing): the learner's curvature subset is at 32 pixels.
    common = dataclasses.replace(t, model=sizes.model or t.model, epochs=sizes.epochs,
                                 batch_size=sizes.batch_size or t.batch_size, checkpoint_every=sizes.epochs,
                                 low_res_epochs=0)
    if method == "sgd":
        if lr is None:
            raise ValueError("an SGD run needs its learning rate")
        return dataclasses.replace(common, optimizer="sgd", lr=float(lr), momentum=sizes.sgd_momentum, nesterov=False)
    if method == "adam":
        return dataclasses.replace(common, optimizer="adam", lr=sizes.adam_lr)
    if method in ("polyak", "gd"):
        return dataclasses.replace(common, optimizer="sgd", lr=1.0, momentum=0.0, nesterov=False, schedule="constant",
                                   warmup_epochs=0.0)
    raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(LEARNER_METHODS)}")


def run_config(profile: str | Profile, method: str, seed: int, lr: float | None = None) -> dict[str, Any]:
    """What a run's store key hashes: its recipe, the images, the learner's sizes (learner runs), the seed."""
    profile = load_profile(profile)
    sizes = profile.learner
    config: dict[str, Any] = {
        "experiment": "learner_run", "version": LEARNER_VERSION, "trainer_version": TRAINER_VERSION,
        "method": method, "seed": int(seed), "recipe": dataclasses.asdict(run_recipe(profile, method, lr)),
        "train_images": sizes.train_images, "test_images": sizes.test_images,
    }
    if method in ("polyak", "gd"):
        config.update(curvature_images=sizes.curvature_images, lanczos_steps=sizes.lanczos_steps,
                      every_steps=sizes.every_steps, bn="eval, statistics refreshed on the curvature subset")
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

    Record: ``method``, ``lr`` (the grid value; ``None`` for the learner), ``seed``, ``label``,
    ``test_acc``/``test_loss`` (fractions, on the test draw, after the last epoch), ``diverged``,
    ``diverged_step``, ``seconds`` (training wall time, estimates included), ``learner_seconds``,
    ``step_loss`` / ``step_lr`` / ``step_momentum`` (one entry per optimiser step), ``estimates``
    (the learner's history), ``parameters``, ``key``. Learner runs keep their final weights
    (``final.pt`` in the run's store folder).
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
    if method in ("polyak", "gd"):
        sizes = profile.learner
        x, y = data.curvature_x.to(dev), data.curvature_y.to(dev)
        learner = SLQLearner(None, _curvature(model, x, y, recipe), rule=method, every_steps=sizes.every_steps,
                             lanczos_steps=sizes.lanczos_steps, seed=seed)
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

    fitted = fit(model, data.train, recipe, seed=seed, device=dev, quiet=True, callbacks=callbacks,
                 on_step=on_step)
    test_loss, test_acc = evaluate(model, data.test.images, data.test.labels, device=dev, flip=False)
    lr = recipe.lr if method in ("sgd", "adam") else None  # the learner's recipe lr is a placeholder
    record: dict[str, Any] = {
        "method": method, "lr": lr, "seed": int(seed), "label": method_label(method, lr),
        "test_acc": float(test_acc), "test_loss": float(test_loss), "diverged": bool(fitted.diverged),
        "diverged_step": fitted.diverged_step, "seconds": float(fitted.seconds),
        "learner_seconds": float(learner.seconds) if learner is not None else 0.0,
        "estimates": [dict(e) for e in learner.history] if learner is not None else [],
        "parameters": int(count_parameters(model)),
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


# ----------------------------------------------------------------------------- the study


@dataclass
class LearnerStudy:
    """Every run of a study (``runs``: the records of :func:`run_method`) and the sizes behind them."""

    profile: Profile
    runs: list[dict[str, Any]]
    seconds: float = 0.0
    store: ResultsStore | None = field(default=None, repr=False)

    @property
    def seeds(self) -> list[int]:
        return sorted({r["seed"] for r in self.runs})

    @property
    def labels(self) -> list[str]:
        """Run labels in display order (learners, the SGD grid by learning rate, Adam)."""
        seen: dict[str, None] = {}
        for r in sorted(self.runs, key=lambda r: (LEARNER_METHODS.index(r["method"]), r["lr"] or 0.0)):
            seen.setdefault(r["label"], None)
        return list(seen)

    def run(self, label: str, seed: int) -> dict[str, Any]:
        for r in self.runs:
            if r["label"] == label and r["seed"] == seed:
                return r
        raise KeyError(f"no run {label!r} with seed {seed}")

    def table(self) -> pd.DataFrame:
        """One row per method (and grid value): mean and spread of the final test accuracy over seeds,
        divergences, training time and the learner's share of it."""
        rows = []
        for label in self.labels:
            runs = [r for r in self.runs if r["label"] == label]
            acc = np.array([r["test_acc"] for r in runs])
            seconds = sum(r["seconds"] for r in runs)
            rows.append({"method": label, "mean test accuracy (%)": 100 * acc.mean(),
                         "spread over seeds (%)": 100 * (acc.max() - acc.min()),
                         "diverged": f"{sum(r['diverged'] for r in runs)} of {len(runs)}",
                         "seconds per run": seconds / len(runs),
                         "estimates share": sum(r["learner_seconds"] for r in runs) / seconds if seconds else 0.0})
        return pd.DataFrame(rows)

    def sgd_grid(self) -> pd.DataFrame:
        """The SGD grid: per learning rate, the mean test accuracy and whether any seed diverged."""
        rows = []
        for lr in sorted({r["lr"] for r in self.runs if r["method"] == "sgd"}):
            runs = [r for r in self.runs if r["method"] == "sgd" and r["lr"] == lr]
            rows.append({"lr": lr, "mean_acc": float(np.mean([r["test_acc"] for r in runs])),
                         "diverged": any(r["diverged"] for r in runs)})
        return pd.DataFrame(rows)

    def mean_acc(self, method: str) -> float:
        return float(np.mean([r["test_acc"] for r in self.runs if r["method"] == method]))

    def chosen_lrs(self, method: str = "polyak") -> np.ndarray:
        """Every learning rate the learner applied (all estimates, all seeds)."""
        return np.array([e["lr"] for r in self.runs if r["method"] == method for e in r["estimates"]], dtype=float)

    def chosen_momenta(self, method: str = "polyak") -> np.ndarray:
        return np.array([e["momentum"] for r in self.runs if r["method"] == method for e in r["estimates"]], dtype=float)

    def stable_range(self) -> tuple[float, float] | None:
        sgd = [r for r in self.runs if r["method"] == "sgd"]
        return stable_lr_range([r["lr"] for r in sgd], [r["diverged"] for r in sgd])

    def overhead(self, method: str = "polyak") -> float:
        """The learner's estimates as a share of its runs' training wall time."""
        runs = [r for r in self.runs if r["method"] == method]
        return sum(r["learner_seconds"] for r in runs) / max(1e-12, sum(r["seconds"] for r in runs))


def run_study(profile: str | Profile, *, seed: int = 0, data_root: str | os.PathLike | None = None,
              device: str | torch.device | None = "auto", store: ResultsStore | str | os.PathLike | None = None,
              data: LearnerData | None = None, progress: bool = False) -> LearnerStudy:
    """Every run of the study for seeds ``seed, seed + 1, ...`` (``learner.seeds`` of them), cached in ``store``."""
    profile = load_profile(profile)
    sizes = profile.learner
    store = ResultsStore(store) if store is not None and not isinstance(store, ResultsStore) else store
    data = data if data is not None else learner_data(profile, data_root, device)
    plan = [(m, lr, s) for s in range(seed, seed + sizes.seeds)
            for m, lr in [("polyak", None), ("gd", None), *[("sgd", v) for v in sizes.sgd_lrs], ("adam", None)]]
    start = time.perf_counter()
    iterator: Iterator[Any] = iter(plan)
    if progress:
        from tqdm.auto import tqdm

        iterator = iter(tqdm(plan, desc="learner study", leave=False))
    runs = [run_method(profile, m, s, lr, data=data, store=store, device=device) for m, lr, s in iterator]
    return LearnerStudy(profile=profile, runs=runs, seconds=time.perf_counter() - start, store=store)


# ----------------------------------------------------------------------------- subset against batches


def subset_vs_batches(study: LearnerStudy, data: LearnerData, *, method: str = "polyak", seed: int | None = None,
                      device: str | torch.device | None = "cpu") -> pd.DataFrame:
    """lambda_max of the curvature subset against that of training batches, at the end of one learner run.

    The network is the final one of the ``method`` run with ``seed`` (default: the first seed),
    with BatchNorm statistics refreshed on the curvature subset, in eval mode, so the curvature
    subset and every batch see the same function: what differs is the number of images (M
    against the batch size B) and which images. ``learner.compare_batches`` batches of B training
    images (test-time transforms) are drawn without replacement. Cached in the study's store.
    """
    profile = study.profile
    sizes = profile.learner
    seed = study.seeds[0] if seed is None else seed
    run = study.run(method_label(method), seed)
    recipe = run_recipe(profile, method)
    config = {"experiment": "learner_subset_vs_batches", "version": LEARNER_VERSION, "run": run["key"],
              "batches": sizes.compare_batches, "lanczos_steps": sizes.lanczos_steps, "batch_size": recipe.batch_size}

    def compute() -> dict[str, Any]:
        dev = resolve_device(device)
        model = model_from_profile(recipe)
        if "model" in run:
            model.load_state_dict(run["model"].state_dict())
        else:
            model.load_state_dict(torch.load(study.store.path(run["config"]) / "final.pt", map_location="cpu"))
        model = model.to(dev).eval()
        x, y = data.curvature_x.to(dev), data.curvature_y.to(dev)
        net = refreshed_batchnorm(model, x)
        loss = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        rows = []
        op = HessianOperator(net, loss, (x, y), bn_mode="eval", weight_decay=recipe.weight_decay)
        rows.append(_row("curvature subset", len(y), op, sizes.lanczos_steps, seed))
        train_x, train_y = data.train_x.to(dev), data.train.labels.to(dev)
        for k in range(sizes.compare_batches):
            op = batch_operator("hessian", net, loss, (train_x, train_y), recipe.batch_size, seed=1_000 + k,
                                bn_mode="eval", weight_decay=recipe.weight_decay)
            rows.append(_row(f"training batch {k + 1}", recipe.batch_size, op, sizes.lanczos_steps, seed))
        return {"rows": rows, "last_estimate": run["estimates"][-1]["lambda_max"] if run["estimates"] else math.nan}

    result = study.store.cached(config, compute) if study.store is not None else compute()
    table = pd.DataFrame(result["rows"])[["curvature of", "images", "lambda_max", "mu", "largest Ritz value",
                                          "2 / lambda_max"]]
    table.attrs["last_estimate"] = result["last_estimate"]
    table.attrs["run"] = run["label"]
    table.attrs["seed"] = seed
    return table


def _row(name: str, images: int, op: Any, steps: int, seed: int) -> dict[str, Any]:
    result = lanczos(op, steps, seed=seed)
    lam, mu = extremes(result.ritz_values, result.ritz_weights)
    return {"curvature of": name, "images": int(images), "lambda_max": lam, "mu": mu,
            "largest Ritz value": float(result.ritz_values.max()), "2 / lambda_max": 2.0 / lam}


# ----------------------------------------------------------------------------- claim 6


def claim6(study: LearnerStudy) -> tuple[Verdict, dict[str, Any]]:
    """The claim-6 verdict (rule: :func:`hessian_lib.verdicts.claim6_verdict`) and the numbers behind it."""
    grid = study.sgd_grid()
    best = grid.loc[grid["mean_acc"].idxmax()]
    stable = study.stable_range()
    chosen = study.chosen_lrs("polyak")
    learner_acc = study.mean_acc("polyak")
    word = claim6_verdict(learner_acc, float(best["mean_acc"]), chosen, stable)
    numbers = {
        "polyak_mean_test_acc": learner_acc, "best_sgd_mean_test_acc": float(best["mean_acc"]),
        "best_sgd_lr": float(best["lr"]), "gap_pp": 100 * (float(best["mean_acc"]) - learner_acc),
        "gd_mean_test_acc": study.mean_acc("gd"), "adam_mean_test_acc": study.mean_acc("adam"),
        "stable_lr_low": stable[0] if stable else math.nan, "stable_lr_high": stable[1] if stable else math.nan,
        "polyak_lr_min": float(chosen.min()) if chosen.size else math.nan,
        "polyak_lr_max": float(chosen.max()) if chosen.size else math.nan,
        "polyak_momentum_min": float(study.chosen_momenta().min()) if chosen.size else math.nan,
        "polyak_momentum_max": float(study.chosen_momenta().max()) if chosen.size else math.nan,
        "polyak_overhead": study.overhead("polyak"), "seeds": len(study.seeds),
    }
    stable_text = f"{stable[0]:g}-{stable[1]:g}" if stable else "empty (every grid value diverged)"
    summary = (f"Polyak learner {100 * learner_acc:.1f}% mean test accuracy against {100 * best['mean_acc']:.1f}% for "
               f"the best grid SGD (lr {best['lr']:g}); its learning rates {numbers['polyak_lr_min']:.3g}-"
               f"{numbers['polyak_lr_max']:.3g} against the grid's non-diverging range {stable_text}")
    sizes, recipe = study.profile.learner, run_recipe(study.profile, "adam")
    params = study.runs[0]["parameters"]
    scale = (f"profile {study.profile.name}: {recipe.model} ({params:,} parameters), {sizes.train_images:,} CIFAR-100 "
             f"training images, {_count(sizes.epochs, 'epoch')} at B = {recipe.batch_size}, {len(study.seeds)} seeds, "
             f"{sizes.test_images:,} test images")
    verdict = Verdict(claim=6, verdict=word, summary=summary, numbers=numbers, scale=scale,
                      evidence="04_learner.html#learner-verdict")
    return verdict, numbers


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# ----------------------------------------------------------------------------- the quadratic check


def quadratic_demo(*, kappa: float = 100.0, n_bulk: int = 150, n_outliers: int = 20, steps: int = 300,
                   seed: int = 0) -> dict[str, Any]:
    r"""The learner on :math:`\tfrac12 w^\top A w`: a bulk of ``n_bulk`` zero eigenvalues (most of the
    weight) and ``n_outliers`` eigenvalues spread geometrically over :math:`[1, \kappa]`.

    Returns, per rule (``gd``, ``polyak``), the learner's estimate (``lambda_max``, ``mu``, ``lr``,
    ``momentum``) and the error :math:`\lVert P_+ w_t\rVert` on the curved eigenspace at every
    step, beside the predicted rates :func:`~hessian_lib.learner.gd_rate` and
    :func:`~hessian_lib.learner.heavy_ball_rate`.
    """
    gen = torch.Generator().manual_seed(seed)
    eigenvalues = torch.cat([torch.zeros(n_bulk, dtype=torch.float64),
                             torch.logspace(0, math.log10(kappa), n_outliers, dtype=torch.float64)])
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen, dtype=torch.float64))
    matrix = q @ torch.diag(eigenvalues) @ q.T
    curved = q[:, eigenvalues > 0]
    w0 = torch.randn(len(eigenvalues), generator=gen, dtype=torch.float64)
    out: dict[str, Any] = {"kappa": kappa, "steps": steps, "gd_rate": gd_rate(kappa),
                           "heavy_ball_rate": heavy_ball_rate(kappa)}
    for rule in ("gd", "polyak"):
        w = nn.Parameter(w0.clone())
        optimizer = torch.optim.SGD([w], lr=1.0, momentum=0.0)
        learner = SLQLearner(optimizer, lambda: MatrixOperator(matrix), rule=rule, every_steps=steps + 1,
                             lanczos_steps=n_outliers + 5, seed=seed)
        errors = np.empty(steps)
        for t in range(steps):
            learner.on_step_start(t, None, optimizer)
            errors[t] = float((curved.T @ w.detach()).norm())
            optimizer.zero_grad()
            (0.5 * w @ (matrix @ w)).backward()
            optimizer.step()
        out[rule] = {**{k: learner.history[0][k] for k in ("lambda_max", "mu", "lr", "momentum")}, "errors": errors}
    return out
