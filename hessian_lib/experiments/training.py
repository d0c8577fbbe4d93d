"""Training experiments: one run, a grid of runs, and the learning-rate stability sweep."""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from hessian_lib.checkpoints import load_checkpoint
from hessian_lib.data import CIFAR100Split, load_cifar100, normalize, stratified_indices
from hessian_lib.models import build_model, canonical_name
from hessian_lib.profiles import Profile, TrainSizes, load_profile
from hessian_lib.store import ResultsStore, config_key
from hessian_lib.trainer import (
    StepInfo,
    check_batch_size,
    derive_seed,
    fit,
    is_main_process,
    resolve_device,
)

__all__ = [
    "Subsets",
    "SweepResult",
    "TrainResult",
    "curvature_inputs",
    "load_subsets",
    "max_stable_lr_sweep",
    "measured_model",
    "model_from_profile",
    "network_seeds",
    "refresh_batchnorm",
    "sweep",
    "train_config",
    "train_experiment",
    "train_networks",
]

#: Changes whenever the trainer's behaviour changes for the same recipe, so no stale run is loaded.
TRAINER_VERSION = 3
#: Seed of the subset draws: the same images for every training seed.
SUBSET_SEED = 0
#: Seed of the curvature subset (drawn from the training subset, independently of it).
CURVATURE_SEED = 1
#: Seed of the images whose forward passes refresh BatchNorm statistics before a checkpoint is measured.
BN_REFRESH_SEED = 5


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Subsets:
    """The images a profile uses: ``train`` and ``test`` subsets, and the fixed ``curvature`` subset.

    All are uint8 :class:`~hessian_lib.data.CIFAR100Split`. ``curvature`` is a class-stratified
    subset of ``train`` of ``profile.data.curvature_subset`` images; use it with test-time
    transforms only (:func:`curvature_inputs`).
    """

    train: CIFAR100Split
    test: CIFAR100Split
    curvature: CIFAR100Split


def load_subsets(profile: str | Profile, data_root: str | os.PathLike | None = None) -> Subsets:
    """Deterministic, class-stratified subsets of CIFAR-100 of the profile's sizes (``DataError`` if missing)."""
    profile = load_profile(profile)
    sizes = profile.data
    train_all = load_cifar100("train", data_root)
    test_all = load_cifar100("test", data_root)
    train = train_all.subset(stratified_indices(train_all.labels, sizes.train_subset, seed=SUBSET_SEED)) \
        if sizes.train_subset < len(train_all) else train_all
    test = test_all.subset(stratified_indices(test_all.labels, sizes.test_subset, seed=SUBSET_SEED)) \
        if sizes.test_subset < len(test_all) else test_all
    curvature = train.subset(stratified_indices(train.labels, sizes.curvature_subset, seed=CURVATURE_SEED))
    return Subsets(train=train, test=test, curvature=curvature)


def curvature_inputs(profile: str | Profile, data_root: str | os.PathLike | None = None,
                     device: str | torch.device | None = "cpu", *,
                     size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed curvature subset with test-time transforms: float32 [M, 3, 32, 32] (normalised) and labels [M].

    M is ``data.curvature_subset`` unless ``size`` asks for another class-stratified draw (same
    seed) from the training subset, e.g. the N images of the Spectra chapter.
    """
    subsets = load_subsets(profile, data_root)
    images = subsets.curvature
    if size is not None and size != len(images):
        images = subsets.train.subset(stratified_indices(subsets.train.labels, size, seed=CURVATURE_SEED))
    dev = resolve_device(device)
    return normalize(images.images.to(dev)), images.labels.to(dev)


# ----------------------------------------------------------------------------- one run


def model_from_profile(profile: str | Profile | TrainSizes, num_classes: int = 100) -> nn.Module:
    """A freshly initialised network of a profile's ``train`` section (seed torch first)."""
    t = profile if isinstance(profile, TrainSizes) else load_profile(profile).train
    knobs: dict[str, Any] = {"width": t.width, "depth": t.depth or None,
                             "dropout": t.dropout if t.dropout >= 0 else None}
    if canonical_name(t.model) == "wideresnet28":
        knobs["widen_factor"] = t.widen_factor
    return build_model(t.model, num_classes=num_classes, **knobs)


def train_config(profile: str | Profile, seed: int = 0) -> dict[str, Any]:
    """The config a training run depends on (what its store key hashes): data and train sizes, seed."""
    profile = load_profile(profile)
    return {"experiment": "train", "version": TRAINER_VERSION, "data": dataclasses.asdict(profile.data),
            "train": dataclasses.asdict(profile.train), "seed": int(seed)}


@dataclass
class TrainResult:
    """A finished (or diverged) training run.

    ``history``: one dict per epoch (``epoch``, ``step``, ``lr``, ``train_loss``, ``train_acc``,
    ``test_loss``, ``test_acc``, ``seconds``); ``diverged``/``diverged_step``/``diverged_loss``;
    ``checkpoints``: epoch -> checkpoint path (empty without a store or checkpoint folder);
    ``seconds``: training wall time; ``key``: the store key of ``config``; ``model``: the trained
    network when this call trained it (``None`` when loaded from the store: use :meth:`model_at`).
    """

    config: dict[str, Any]
    key: str
    history: list[dict[str, float]]
    diverged: bool
    diverged_step: int | None
    diverged_loss: float | None
    checkpoints: dict[int, str]
    seconds: float
    model: nn.Module | None = field(default=None, repr=False)

    @property
    def test_acc(self) -> float:
        """Test accuracy after the last finished epoch (NaN if none finished)."""
        return float(self.history[-1].get("test_acc", math.nan)) if self.history else math.nan

    @property
    def train_loss(self) -> float:
        """Mean training loss of the last finished epoch (NaN if none finished)."""
        return float(self.history[-1]["train_loss"]) if self.history else math.nan

    def model_at(self, epoch: int | None = None, device: str | torch.device = "cpu") -> nn.Module:
        """The network with the weights of the checkpoint at ``epoch`` (default: the last one)."""
        if not self.checkpoints:
            raise ValueError("this run kept no checkpoints (train with a store or a checkpoint_dir)")
        epoch = max(self.checkpoints) if epoch is None else int(epoch)
        if epoch not in self.checkpoints:
            raise ValueError(f"no checkpoint at epoch {epoch}; available: {sorted(self.checkpoints)}")
        recipe = TrainSizes(**self.config["train"])
        model = model_from_profile(recipe)
        load_checkpoint(self.checkpoints[epoch], model, cfg=recipe)
        return model.to(device).eval()

    def to_record(self) -> dict[str, Any]:
        """Scalars and arrays for the results store."""
        rec: dict[str, Any] = {"history": self.history, "diverged": self.diverged,
                               "diverged_step": self.diverged_step, "diverged_loss": self.diverged_loss,
                               "checkpoint_epochs": sorted(self.checkpoints), "seconds": self.seconds,
                               "test_acc": self.test_acc, "train_loss": self.train_loss}
        for name in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):
            rec[f"{name}_curve"] = np.array([h.get(name, np.nan) for h in self.history], dtype=np.float64)
        return rec


def _validate(profile: Profile, data_root: Any, device: Any) -> tuple[Subsets, torch.device]:
    check_batch_size(profile.train.batch_size, profile.data.train_subset)
    dev = resolve_device(device)
    return load_subsets(profile, data_root), dev


def train_experiment(
    profile: str | Profile = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    store: ResultsStore | str | os.PathLike | None = None,
    resume: bool = True,
    recompute: bool = False,
    keep_checkpoints: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    quiet: bool = True,
    on_step: Callable[[StepInfo], None] | None = None,
) -> TrainResult:
    """Train the profile's network on its CIFAR-100 subset; return a :class:`TrainResult`.

    Everything is checked before training starts (profile keys and ranges, batch size against the
    subset, data root, device). With a ``store`` (a :class:`ResultsStore` or its folder) a finished
    run with the same config is loaded instead of trained (unless ``recompute``), checkpoints go to
    ``<store>/<key>/checkpoints``, and ``resume`` continues an interrupted run from its last one.
    ``keep_checkpoints=False`` deletes them once the run is stored (sweeps).
    """
    profile = load_profile(profile, overrides)
    config = train_config(profile, seed)
    if store is not None and not isinstance(store, ResultsStore):
        store = ResultsStore(store)
    key = ResultsStore.key(config)
    if store is not None and store.has(config) and not recompute:
        return _from_store(store, config)
    subsets, dev = _validate(profile, data_root, device)
    if checkpoint_dir is None and store is not None:
        checkpoint_dir = store.path(config) / "checkpoints"
    torch.manual_seed(derive_seed(seed, "init"))
    model = model_from_profile(profile)
    fitted = fit(model, subsets.train, profile.train, test=subsets.test, seed=seed, device=dev,
                 checkpoint_dir=checkpoint_dir, resume=resume and not recompute, quiet=quiet, on_step=on_step)
    result = TrainResult(config=config, key=key, history=fitted.history, diverged=fitted.diverged,
                         diverged_step=fitted.diverged_step, diverged_loss=fitted.diverged_loss,
                         checkpoints=dict(fitted.checkpoints), seconds=fitted.seconds, model=model)
    if not keep_checkpoints and checkpoint_dir is not None and is_main_process():
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        result.checkpoints = {}
    if store is not None and is_main_process():
        store.save(config, result.to_record())
    return result


def _from_store(store: ResultsStore, config: dict[str, Any]) -> TrainResult:
    rec = store.load(config)
    folder = store.path(config) / "checkpoints"
    checkpoints = {int(e): str(folder / f"epoch_{int(e):04d}.pt") for e in rec.get("checkpoint_epochs", [])
                   if (folder / f"epoch_{int(e):04d}.pt").is_file()}
    return TrainResult(config=config, key=ResultsStore.key(config), history=rec["history"],
                       diverged=bool(rec["diverged"]), diverged_step=rec["diverged_step"],
                       diverged_loss=rec["diverged_loss"], checkpoints=checkpoints, seconds=float(rec["seconds"]))


# ----------------------------------------------------------------------------- independent networks


def network_seeds(seed: int, count: int) -> tuple[int, ...]:
    """The training seeds of the K = ``count`` independent networks of base seed ``seed``.

    Network 0 is trained with ``seed`` itself; network k > 0 with a seed derived from
    ``(seed, k)`` by hashing, so two base seeds never share a network (in practice) and a
    network's seed does not depend on K.

    >>> network_seeds(0, 3)[0], len(set(network_seeds(0, 3) + network_seeds(1, 3)))
    (0, 6)
    """
    if count < 1:
        raise ValueError(f"need at least one network, got {count}")
    return tuple(int(seed) if k == 0 else int(config_key(["network", int(seed), k]), 16) % (2**31 - 1)
                 for k in range(int(count)))


def train_networks(
    profile: str | Profile = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    store: ResultsStore | str | os.PathLike | None = None,
    quiet: bool = True,
) -> list[TrainResult]:
    """Train (or load from ``store``) the profile's ``networks.count`` networks, one per :func:`network_seeds`."""
    profile = load_profile(profile, overrides)
    return [train_experiment(profile, seed=s, data_root=data_root, device=device, store=store, quiet=quiet)
            for s in network_seeds(seed, profile.networks.count)]


@torch.no_grad()
def refresh_batchnorm(model: nn.Module, images: torch.Tensor, *, batch_size: int = 128,
                      device: str | torch.device | None = None) -> nn.Module:
    """Recompute every BatchNorm layer's running statistics on ``images``; return ``model`` in eval mode.

    ``images``: uint8 [M, 3, 32, 32], seen with test-time transforms (normalised, no augmentation).
    The statistics are reset and averaged over the batches of ``batch_size`` with equal weight
    (``momentum=None``), in the order given; the weights are untouched. A model without
    BatchNorm is returned unchanged (in eval mode).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return model.eval()
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in layers:
        m.train()
    try:
        for start in range(0, images.shape[0], batch_size):
            model(normalize(images[start:start + batch_size].to(dev)))
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        model.eval()
    return model


def measured_model(run: TrainResult, epoch: int | None, profile: str | Profile,
                   data_root: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The network of ``run`` at ``epoch`` as every measurement sees it: eval mode, BatchNorm statistics
    refreshed on ``networks.bn_refresh_images`` class-stratified training images at 32 pixels with
    test-time transforms (:func:`refresh_batchnorm`; skipped when that is 0)."""
    profile = load_profile(profile)
    model = run.model_at(epoch, device=device)
    n = profile.networks.bn_refresh_images
    if n:
        train = load_subsets(profile, data_root).train
        images = train.subset(stratified_indices(train.labels, n, seed=BN_REFRESH_SEED)).images
        refresh_batchnorm(model, images, batch_size=profile.train.batch_size, device=device)
    return model


# ----------------------------------------------------------------------------- sweeps


@dataclass
class SweepResult:
    """The points of a sweep: ``rows`` has one dict per grid point (its overrides, ``diverged``,
    ``diverged_step``, ``test_acc``, ``train_loss``, ``seconds``, ``key``) in grid order."""

    grid: dict[str, list[Any]]
    rows: list[dict[str, Any]]

    def max_stable(self, value_key: str = "train.lr", group_key: str = "train.batch_size") -> dict[Any, float]:
        """For each value of ``group_key``: the largest ``value_key`` below the smallest that diverged.

        ``nan`` where even the smallest value diverged.
        """
        out: dict[Any, float] = {}
        groups = sorted({r[group_key] for r in self.rows}) if group_key in self.grid else [None]
        for g in groups:
            rows = sorted((r for r in self.rows if g is None or r[group_key] == g), key=lambda r: r[value_key])
            best = math.nan
            for r in rows:
                if r["diverged"]:
                    break
                best = r[value_key]
            out[g] = best
        return out

    def table(self) -> str:
        """The rows as a Markdown table."""
        keys = list(self.grid) + ["diverged", "diverged_step", "test_acc", "train_loss", "seconds"]
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in self.rows:
            cells = [f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def sweep(
    profile: str | Profile,
    grid: Mapping[str, Sequence[Any]],
    *,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    store: ResultsStore | str | os.PathLike | None = None,
    resume: bool = True,
    keep_checkpoints: bool = False,
    quiet: bool = True,
    progress: bool = False,
) -> SweepResult:
    """Train once per point of the product of ``grid`` (``{"train.lr": [...], ...}``), on top of ``overrides``.

    Every point is validated before the first one trains. A point that diverges is a row with
    ``diverged=True``; with a ``store``, finished points are loaded, so an interrupted sweep
    resumes at the next point.
    """
    base = load_profile(profile, overrides)
    grid = {k: list(v) for k, v in grid.items()}
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise ValueError("a sweep needs at least one value for every grid key")
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    profiles = [base.with_overrides(p) for p in points]  # bad keys or values fail here, before training
    for prof in profiles:
        check_batch_size(prof.train.batch_size, prof.data.train_subset)
    resolve_device(device)
    if store is None:
        load_subsets(base, data_root)
    rows = []
    iterator = zip(points, profiles)
    if progress and is_main_process():
        from tqdm.auto import tqdm

        iterator = tqdm(list(iterator), desc="sweep")
    for point, prof in iterator:
        run = train_experiment(prof, seed=seed, data_root=data_root, device=device, store=store, resume=resume,
                               keep_checkpoints=keep_checkpoints, quiet=quiet)
        rows.append({**{k: getattr(getattr(prof, k.split(".", 1)[0]), k.split(".", 1)[1]) for k in point},
                     "diverged": run.diverged, "diverged_step": run.diverged_step, "test_acc": run.test_acc,
                     "train_loss": run.train_loss, "seconds": run.seconds, "key": run.key})
    return SweepResult(grid=grid, rows=rows)


def max_stable_lr_sweep(
    profile: str | Profile,
    batch_sizes: Sequence[int],
    lrs: Sequence[float],
    *,
    optimizer: str | None = None,
    epochs: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[dict[int, float], SweepResult]:
    """Divergence-threshold sweep: train at every (batch size, learning rate), return the largest
    stable learning rate per batch size (see :meth:`SweepResult.max_stable`) and the sweep.

    ``optimizer`` and ``epochs`` override the profile's (``train.optimizer``, ``train.epochs``);
    other keyword arguments go to :func:`sweep`.
    """
    extra = dict(overrides or {})
    if optimizer is not None:
        extra["train.optimizer"] = optimizer
    if epochs is not None:
        extra["train.epochs"] = epochs
    result = sweep(profile, {"train.batch_size": list(batch_sizes), "train.lr": sorted(lrs)}, overrides=extra, **kwargs)
    return result.max_stable("train.lr", "train.batch_size"), result
