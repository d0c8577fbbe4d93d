"""What the Learner chapter reads off a finished study: the curvature subset against batches, the cost of an
estimate, the verdict of claim 6, and the learner on a quadratic.

:func:`subset_vs_batches` and :func:`estimate_tradeoff` measure the final network of one learner run of the
:class:`~hessian_lib.experiments.learner.LearnerStudy` that
:func:`~hessian_lib.experiments.learner.run_study` returns (cached in the study's store); :func:`claim6`
applies the rule of :func:`hessian_lib.verdicts.claim6_verdict` to the study; :func:`quadratic_demo` checks the
learner against the predicted rates on a quadratic with a known spectrum.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from hessian_lib.curvature import HessianOperator, MatrixOperator, batch_operator, lanczos
from hessian_lib.data import normalize, stratified_indices
from hessian_lib.experiments.learner import (
    LEARNER_VERSION,
    LearnerData,
    LearnerStudy,
    _curvature,
    centre_crop,
    method_label,
    run_recipe,
)
from hessian_lib.experiments.training import CURVATURE_SEED, model_from_profile
from hessian_lib.laws.learner import extremes, gd_rate, heavy_ball_rate
from hessian_lib.profiles import Profile, TrainSizes
from hessian_lib.slq_learner import SLQLearner, refreshed_batchnorm
from hessian_lib.trainer import resolve_device
from hessian_lib.verdicts import Verdict, claim6_verdict, paired_interval

__all__ = [
    "claim6",
    "estimate_tradeoff_config",
    "estimate_tradeoff",
    "quadratic_demo",
    "subset_vs_batches",
    "subset_vs_batches_config",
]


# ----------------------------------------------------------------------------- subset against batches


def _final_network(study: LearnerStudy, run: dict[str, Any], recipe: TrainSizes, dev: torch.device) -> nn.Module:
    model = model_from_profile(recipe)
    if "model" in run:
        model.load_state_dict(run["model"].state_dict())
    else:
        model.load_state_dict(torch.load(study.store.path(run["config"]) / "final.pt", map_location="cpu"))
    return model.to(dev).eval()


def subset_vs_batches_config(profile: Profile, run_key: str, method: str = "polyak") -> dict[str, Any]:
    """The store config of :func:`subset_vs_batches` at the end of the run whose store key is ``run_key``."""
    sizes = profile.learner
    return {"experiment": "learner_subset_vs_batches", "version": LEARNER_VERSION, "run": run_key,
            "batches": sizes.compare_batches, "lanczos_steps": sizes.lanczos_steps,
            "batch_size": run_recipe(profile, method).batch_size}


def estimate_tradeoff_config(profile: Profile, run_key: str) -> dict[str, Any]:
    """The store config of :func:`estimate_tradeoff` at the end of the run whose store key is ``run_key``."""
    sizes = profile.learner
    return {"experiment": "learner_estimate_tradeoff", "version": LEARNER_VERSION, "run": run_key,
            "steps": list(sizes.tradeoff_steps), "lanczos_steps": sizes.lanczos_steps,
            "curvature_images": sizes.curvature_images}


def subset_vs_batches(study: LearnerStudy, data: LearnerData, *, method: str = "polyak", seed: int | None = None,
                      device: str | torch.device | None = "cpu") -> pd.DataFrame:
    """lambda_max of the curvature subset against that of training batches, at the end of one learner run.

    The network is the final one of the ``method`` run with ``seed`` (default: the first seed),
    with BatchNorm statistics refreshed on the curvature subset, in eval mode, so the curvature
    subset and every batch see the same function: what differs is the number of images (M
    against the batch size B) and which images. ``learner.compare_batches`` batches of B training
    images (test-time transforms at the training resolution) are drawn without replacement.
    Cached in the study's store.
    """
    sizes, seed, run, recipe = _end_of_run(study, method, seed)
    config = subset_vs_batches_config(study.profile, run["key"], method)

    def compute() -> dict[str, Any]:
        dev = resolve_device(device)
        model = _final_network(study, run, recipe, dev)
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


def _end_of_run(study: LearnerStudy, method: str, seed: int | None) -> tuple[Any, int, dict[str, Any], Any]:
    """The learner sizes, the seed (default: the study's first), the run and its recipe."""
    seed = study.seeds[0] if seed is None else seed
    return study.profile.learner, seed, study.run(method_label(method), seed), run_recipe(study.profile, method)


def _row(name: str, images: int, op: Any, steps: int, seed: int) -> dict[str, Any]:
    result = lanczos(op, steps, seed=seed)
    lam, mu = extremes(result.ritz_values, result.ritz_weights)
    return {"curvature of": name, "images": int(images), "lambda_max": lam, "mu": mu,
            "largest Ritz value": float(result.ritz_values.max()), "2 / lambda_max": 2.0 / lam}


def estimate_tradeoff(study: LearnerStudy, data: LearnerData, *, method: str = "polyak", seed: int | None = None,
                      device: str | torch.device | None = "cpu") -> pd.DataFrame:
    """What an estimate costs and what it gives, at the end of one learner run.

    For each Lanczos step count of ``learner.tradeoff_steps`` (and ``learner.lanczos_steps``) on the curvature
    subset of M images, and for ``learner.lanczos_steps`` steps on M/2 and 2M images: the wall time of one
    estimate as the learner takes it (BatchNorm refresh, a fresh operator, Lanczos), its ``lambda_max``, ``mu`` and
    learning rate, and the rate's relative change from the most expensive row. Cached in the study's store
    (the seconds are those of the run that computed it).
    """
    sizes, seed, run, recipe = _end_of_run(study, method, seed)
    config = estimate_tradeoff_config(study.profile, run["key"])

    def compute() -> dict[str, Any]:
        dev = resolve_device(device)
        model = _final_network(study, run, recipe, dev)
        train_y = data.train.labels
        m = sizes.curvature_images
        settings = [(steps, m) for steps in sorted({*sizes.tradeoff_steps, sizes.lanczos_steps})]
        settings += [(sizes.lanczos_steps, n) for n in (max(2, m // 2), min(2 * m, len(train_y))) if n != m]
        rows = []
        for steps, n in settings:
            index = stratified_indices(train_y, n, seed=CURVATURE_SEED)
            x = normalize(centre_crop(data.train.images[index], data.resolution)).to(dev)
            y = train_y[index].to(dev)
            learner = SLQLearner(None, _curvature(model, x, y, recipe), rule="polyak", every_steps=1,
                                 lanczos_steps=steps, seed=seed)
            lam, mu, seconds = learner.estimate()
            lr, momentum = learner.hyperparameters(lam, mu)
            rows.append({"Lanczos steps": steps, "images": n, "seconds": seconds, "lambda_max": lam, "mu": mu,
                         "lr": lr, "momentum": momentum})
        return {"rows": rows}

    result = study.store.cached(config, compute) if study.store is not None else compute()
    table = pd.DataFrame(result["rows"])
    reference = table.loc[(table["Lanczos steps"] * table["images"]).idxmax(), "lr"]
    table["lr change"] = table["lr"] / reference - 1.0
    table.attrs["run"] = run["label"]
    table.attrs["seed"] = seed
    return table


# ----------------------------------------------------------------------------- claim 6


def claim6(study: LearnerStudy) -> tuple[Verdict, dict[str, Any]]:
    """The claim-6 verdict (rule: :func:`hessian_lib.verdicts.claim6_verdict`) and the numbers behind it."""
    best_lr = study.best_sgd_lr()
    learner_acc, sgd_acc = study.paired("polyak")
    word = claim6_verdict(learner_acc, sgd_acc)
    mean, low, high = paired_interval(100.0 * (learner_acc - sgd_acc))
    scheduled_acc, sgd_beside_scheduled = study.paired("polyak_schedule")
    s_mean, s_low, s_high = paired_interval(100.0 * (scheduled_acc - sgd_beside_scheduled))
    both = sorted({r["seed"] for r in study.runs_of(method_label("polyak_schedule"))}
                  & {r["seed"] for r in study.runs_of(method_label("polyak"))})
    effect = paired_interval(100.0 * np.array([study.run(method_label("polyak_schedule"), s)["test_acc"]
                                               - study.run(method_label("polyak"), s)["test_acc"] for s in both]))
    stable = study.stable_range()
    chosen = study.chosen_lrs("polyak")
    inside = stable is not None and chosen.size > 0 and bool(((chosen >= stable[0]) & (chosen <= stable[1])).all())
    overheads = study.overheads()
    grid = study.sgd_grid().set_index("lr")
    numbers = {
        "polyak_mean_test_acc": float(np.mean(learner_acc)), "best_sgd_mean_test_acc": float(np.mean(sgd_acc)),
        "best_sgd_lr": best_lr, "best_sgd_mean_val_acc": float(grid.loc[best_lr, "mean_val_acc"]),
        "difference_pp": mean, "difference_low_pp": low, "difference_high_pp": high,
        "schedule_mean_test_acc": float(np.mean(scheduled_acc)), "schedule_difference_pp": s_mean,
        "schedule_difference_low_pp": s_low, "schedule_difference_high_pp": s_high,
        "schedule_effect_pp": effect[0], "schedule_effect_low_pp": effect[1], "schedule_effect_high_pp": effect[2],
        "gd_mean_test_acc": study.mean_acc("gd"), "adam_mean_test_acc": study.mean_acc("adam"),
        "stable_lr_low": stable[0] if stable else math.nan, "stable_lr_high": stable[1] if stable else math.nan,
        "polyak_lr_min": float(chosen.min()) if chosen.size else math.nan,
        "polyak_lr_max": float(chosen.max()) if chosen.size else math.nan,
        "polyak_lr_inside": inside,
        "polyak_momentum_min": float(study.chosen_momenta().min()) if chosen.size else math.nan,
        "polyak_momentum_max": float(study.chosen_momenta().max()) if chosen.size else math.nan,
        "polyak_overhead": study.overhead("polyak"), "max_overhead": max(overheads.values()) if overheads else 0.0,
        "seeds": len(study.seeds), "paired_seeds": len(study.paired_seeds()),
    }
    stable_text = f"{stable[0]:g}-{stable[1]:g}" if stable else "empty (every grid value diverged)"
    summary = (f"Polyak learner {100 * numbers['polyak_mean_test_acc']:.1f}% mean test accuracy against "
               f"{100 * numbers['best_sgd_mean_test_acc']:.1f}% for SGD at the validated lr {best_lr:g}; "
               f"seed-paired difference {mean:+.1f} points [{low:+.1f}, {high:+.1f}]; its learning rates "
               f"{numbers['polyak_lr_min']:.3g}-{numbers['polyak_lr_max']:.3g} "
               f"{'inside' if inside else 'not all inside'} the grid's non-diverging range {stable_text}")
    sizes, recipe = study.profile.learner, run_recipe(study.profile, "adam")
    params = study.runs[0]["parameters"]
    resolution = f" on {study.profile.train.low_res_size}-pixel crops" if sizes.low_res else ""
    scale = (f"profile {study.profile.name}: {recipe.model} ({params:,} parameters), {sizes.train_images:,} CIFAR-100 "
             f"training images ({sizes.validation_images:,} held out to choose SGD's rate), "
             f"{_count(sizes.epochs, 'epoch')}{resolution} at B = {recipe.batch_size}, {len(study.seeds)} seeds "
             f"({len(study.paired_seeds())} for the Polyak learner and the validated SGD), "
             f"{sizes.test_images:,} test images; validated SGD {100 * numbers['best_sgd_mean_test_acc']:.1f}%, "
             f"Polyak learner {100 * numbers['polyak_mean_test_acc']:.1f}%")
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
    step, beside the predicted rates :func:`~hessian_lib.laws.learner.gd_rate` and
    :func:`~hessian_lib.laws.learner.heavy_ball_rate`.
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
