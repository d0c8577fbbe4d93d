"""Figures of the Learner chapter (the SLQ learner against SGD and Adam), in the house style.

Each function takes results of :mod:`hessian_lib.experiments.learner` (or
:mod:`hessian_lib.experiments.learner_analysis`) and returns a matplotlib figure; the chapter numbers and
captions it (:func:`hessian_lib.figures.show_figure`).
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from hessian_lib.plots.style import COLORS

__all__ = ["accuracy_figure", "loss_curves_figure", "method_colors", "quadratic_figure", "run_frame",
           "smooth", "test_curves_figure", "trajectories_figure"]

#: Colours of the non-grid methods; the SGD grid takes shades of grey-blue by learning rate.
METHOD_COLORS = {"polyak": COLORS["empirical"], "polyak_schedule": "#9467bd", "gd": "#ff7f0e", "adam": COLORS["ggn"]}
#: The learners' methods (drawn thicker).
LEARNERS = ("polyak", "polyak_schedule", "gd")


def method_colors(labels: list[str], methods: dict[str, str]) -> dict[str, Any]:
    """A colour per run label: fixed ones for the learners and Adam, a blue ramp for the SGD grid."""
    grid = [label for label in labels if methods[label] == "sgd"]
    ramp = plt.get_cmap("Blues")(np.linspace(0.4, 0.95, max(1, len(grid))))
    colors: dict[str, Any] = {label: ramp[i] for i, label in enumerate(grid)}
    colors.update({label: METHOD_COLORS[methods[label]] for label in labels if methods[label] != "sgd"})
    return colors


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean over ``window`` steps (shorter at the start), NaN-free input assumed."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or values.size == 0:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(values.size):
        lo = max(0, i + 1 - window)
        out[i] = (cumsum[i + 1] - cumsum[lo]) / (i + 1 - lo)
    return out


def _methods(study: Any) -> dict[str, str]:
    return {r["label"]: r["method"] for r in study.runs}


def quadratic_figure(demo: dict[str, Any]) -> Figure:
    """Error on the curved eigenspace against the step for both rules, with the predicted rates."""
    fig, ax = plt.subplots(figsize=(8, 3.4))
    steps = np.arange(demo["steps"])
    anchor = demo["steps"] // 10  # past the first transient: the predicted line starts on the measured curve
    for rule, rate, color, name in (("gd", demo["gd_rate"], METHOD_COLORS["gd"], "GD rule"),
                                    ("polyak", demo["heavy_ball_rate"], METHOD_COLORS["polyak"], "Polyak rule")):
        errors = demo[rule]["errors"]
        ax.semilogy(steps, errors, color=color, label=f"{name}, measured")
        ax.semilogy(
            steps,
            errors[anchor] * rate ** (steps - anchor),
            color=color,
            ls=":",
            lw=1.2,
            label=f"{name}, rate {rate:.3f}",
        )
    ax.set_ylim(max(1e-14, ax.get_ylim()[0]), None)
    ax.set_xlabel("step")
    ax.set_ylabel("error on the curved eigenspace")
    ax.legend(loc="lower left", ncols=2)
    return fig


def loss_curves_figure(study: Any, window: int = 5) -> Figure:
    """Training loss (batch loss, running mean over ``window`` steps, mean over seeds) of every method."""
    methods = _methods(study)
    colors = method_colors(study.labels, methods)
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for label in study.labels:
        curves = [np.asarray(r["step_loss"]) for r in study.runs if r["label"] == label]
        length = min(len(c) for c in curves)
        if length == 0:
            continue
        mean = np.mean([c[:length] for c in curves], axis=0)
        diverged = any(r["diverged"] for r in study.runs if r["label"] == label)
        style = {"lw": 2.2} if methods[label] in LEARNERS else {"lw": 1.3}
        ax.plot(np.arange(length), smooth(mean, window), color=colors[label],
                label=label + (" (diverged)" if diverged else ""), **style)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training loss")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def accuracy_figure(study: Any, gap_pp: float) -> Figure:
    """Final test accuracy of every run (dots; a run that diverged as a cross at zero) and each method's mean
    (bar), with the validated SGD's mean and the band ``gap_pp`` points below it."""
    methods = _methods(study)
    colors = method_colors(study.labels, methods)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    best_label = f"SGD lr {study.best_sgd_lr():g}"
    best = 100 * float(np.mean([r["test_acc"] for r in study.runs_of(best_label)]))
    ax.axhspan(best - gap_pp, best, color=COLORS["theory"], alpha=0.15,
               label=f"within {gap_pp:g} points of the validated SGD ({best_label})")
    for k, label in enumerate(study.labels):
        acc = np.array([r["test_acc"] for r in study.runs_of(label)]) * 100
        finite = acc[np.isfinite(acc)]
        if finite.size == acc.size:
            ax.bar(k, acc.mean(), color=colors[label], alpha=0.75, width=0.7)
        ax.plot(np.full(finite.size, k), finite, "o", color="k", ms=3.5)
        if finite.size < acc.size:
            ax.plot([k] * (acc.size - finite.size), [0] * (acc.size - finite.size), "x", color="k", ms=6)
    ax.set_xticks(range(len(study.labels)))
    ax.set_xticklabels([label.replace(" lr ", "\nlr ").replace(" x ", "\nx ") for label in study.labels], fontsize=8.5)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, None)
    ax.legend(loc="lower right")
    return fig


def test_curves_figure(study: Any) -> Figure:
    """Test accuracy after every epoch, mean over seeds, of every method (the validated SGD in black)."""
    methods = _methods(study)
    colors = method_colors(study.labels, methods)
    best_label = f"SGD lr {study.best_sgd_lr():g}"
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for label in study.labels:
        curves = [np.asarray(r["epoch_test_acc"], dtype=float) for r in study.runs_of(label)]
        length = min(len(c) for c in curves)
        if length == 0:
            continue
        mean = 100 * np.mean([c[:length] for c in curves], axis=0)
        style = {"lw": 2.2, "marker": "o"} if methods[label] in LEARNERS else {"lw": 1.3, "marker": "."}
        if label == best_label:
            style = {"lw": 2.2, "marker": "s", "color": "k"}
        ax.plot(np.arange(1, length + 1), mean, **{"color": colors[label], **style},
                label=label + (" (validated)" if label == best_label else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def trajectories_figure(study: Any) -> Figure:
    """The learners along training: lambda_max and mu at each estimate (left); the learning rate (middle)
    and momentum (right) every step was taken with, beside the validated SGD's schedule (black) and the
    non-diverging range of the SGD grid (shaded); one line per seed."""
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.4))
    stable = study.stable_range()
    best = study.runs_of(f"SGD lr {study.best_sgd_lr():g}")[0]
    axes[1].plot(best["step_lr"], color="k", lw=1.4, label=f"{best['label']} (validated), its schedule")
    axes[2].plot(best["step_momentum"], color="k", lw=1.4)
    for method, marker in (("polyak", "o"), ("polyak_schedule", "D"), ("gd", "s")):
        color = METHOD_COLORS[method]
        for k, r in enumerate(sorted((r for r in study.runs if r["method"] == method), key=lambda r: r["seed"])):
            est = r["estimates"]
            steps = [e["step"] for e in est]
            style = {"color": color, "ls": "-" if k == 0 else "--"}
            if method != "polyak_schedule":  # the same estimates as the Polyak learner's up to the schedule
                axes[0].plot(steps, [e["lambda_max"] for e in est], marker=marker, ms=4,
                             label=f"{r['label']}, seed {r['seed']}", **style)
                axes[0].plot(steps, [e["mu"] for e in est], marker="x", ms=4, alpha=0.6, **style)
            axes[1].plot(r["step_lr"], lw=1.6, **style, label=f"{r['label']}, seed {r['seed']}")
            axes[2].plot(r["step_momentum"], lw=1.6, **style)
    if stable is not None:
        axes[1].axhspan(stable[0], stable[1], color=COLORS["theory"], alpha=0.15, label="non-diverging SGD grid")
    axes[0].set_yscale("log")
    axes[0].set_title(r"$\lambda_{\max}$ (markers) and $\mu$ (crosses)")
    axes[1].set_yscale("log")
    axes[1].set_title("learning rate")
    axes[2].set_ylim(-0.05, 1.0)
    axes[2].set_title("momentum")
    for ax in axes:
        ax.set_xlabel("optimiser step")
    fig.legend(*axes[1].get_legend_handles_labels(), loc="upper center", ncols=3, bbox_to_anchor=(0.5, 0.0),
               fontsize=8.5)
    fig.tight_layout()
    return fig


def run_frame(study: Any, seed: int, run: str, window: int = 5) -> Figure:
    """One frame of the explorer: the chosen run's training loss over all runs of its seed (grey), and
    the learning rate and momentum it used at every step."""
    chosen = study.run(run, seed)
    fig, axes = plt.subplots(1, 3, figsize=(9, 2.9))  # about 650 pixels wide in the explorer: no sideways scrolling
    for r in (r for r in study.runs if r["seed"] == seed and r["label"] != run):
        axes[0].plot(smooth(r["step_loss"], window), color=COLORS["edge"], lw=0.8, alpha=0.5)
    color = METHOD_COLORS.get(chosen["method"], COLORS["batch"])
    axes[0].plot(smooth(chosen["step_loss"], window), color=color, lw=2)
    axes[0].set_title(f"{run}, seed {seed}: {100 * chosen['test_acc']:.1f}% test"
                      + (" (diverged)" if chosen["diverged"] else ""), fontsize=10)
    axes[0].set_ylabel("training loss")
    axes[1].plot(chosen["step_lr"], color=color, drawstyle="steps-post")
    rates = np.asarray(chosen["step_lr"], dtype=float)
    if rates.size and rates.min() > 0 and rates.max() / rates.min() > 10:
        axes[1].set_yscale("log")
    axes[1].set_ylim(0 if axes[1].get_yscale() == "linear" else None, None)
    axes[1].set_title("learning rate")
    axes[2].plot(chosen["step_momentum"], color=color, drawstyle="steps-post")
    axes[2].set_ylim(-0.05, 1.0)
    axes[2].set_title("momentum" + (" (Adam: none)" if chosen["method"] == "adam" else ""))
    for ax in axes:
        ax.set_xlabel("optimiser step")
    fig.tight_layout()
    return fig
