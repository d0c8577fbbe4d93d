r"""Experiments of the Mixture chapter: a perceptron on a Gaussian mixture against a network on CIFAR-100.

Two sides with the same number of classes C and the same number K of independently trained
networks (:func:`~hessian_lib.experiments.network_seeds`):

* **synthetic**: the ReLU perceptron :class:`~hessian_lib.models.mlp.VectorMLP` trained on samples
  of a C-class Gaussian mixture (:mod:`hessian_lib.mixture`), at the chapter's separation and over
  a grid of separations. Its P is small enough for the exact Hessian and Gauss-Newton matrix
  (:func:`~hessian_lib.curvature.dense_hessian`, :func:`~hessian_lib.curvature.dense_ggn`), which
  validate every Lanczos number;
* **natural**: the profile's network trained afresh on C CIFAR-100 classes, one fine class from
  each of the first C superclasses (:func:`natural_classes`).

On each network, over N training samples with the plain cross-entropy (BatchNorm in eval mode,
statistics refreshed), :func:`measure` computes with Lanczos the Hessian's outlier count and
near-zero mass (the rules of :mod:`hessian_lib.verdicts`, claim 8), the share of its top C - 1
eigenspace that lies in the GGN's top C - 1 eigenspace and in the span of the C class-mean
gradients, and the batch shift of its top eigenvalue
(:func:`~hessian_lib.experiments.spectra.spectrum_at`). Everything is cached in the results store.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import numpy as np
import scipy.stats
import torch
from torch import nn

from hessian_lib import verdicts
from hessian_lib.curvature import GGNOperator, HessianOperator, dense_ggn, dense_hessian, lanczos
from hessian_lib.data import CIFAR100Split, load_cifar100, normalize, stratified_indices
from hessian_lib.device import resolve_device
from hessian_lib.experiments.spectra import BN_MODE, spectrum_at
from hessian_lib.experiments.theory import child_seed
from hessian_lib.experiments.training import (
    BN_REFRESH_SEED,
    CURVATURE_SEED,
    SUBSET_SEED,
    model_from_profile,
    refresh_batchnorm,
)
from hessian_lib.mixture import GaussianMixture, make_mixture
from hessian_lib.models.mlp import VectorMLP
from hessian_lib.profiles import MixtureSizes, Profile, SpectraSizes, TrainSizes, load_profile
from hessian_lib.store import ResultsStore, atomic_torch_save
from hessian_lib.trainer import derive_seed, fit, lr_factor, make_optimizer

__all__ = [
    "MIXTURE_VERSION",
    "SIDES",
    "class_mean_gradients",
    "cnn_recipe",
    "measure",
    "mlp_recipe",
    "natural_classes",
    "natural_data",
    "natural_network",
    "shift_record",
    "spectra_sizes",
    "subspace_share",
    "synthetic_network",
    "train_mlp",
    "welch_interval",
]

#: Changes whenever a result of this module would change for the same config, so no stale result is loaded.
MIXTURE_VERSION = 1
#: The two sides, in the order the chapter shows them.
SIDES: tuple[str, ...] = ("mixture", "network")
#: Seed stream of the mixture's samples (its parameters come from the chapter's seed itself).
TRAIN_STREAM, TEST_STREAM = 1, 2


# ----------------------------------------------------------------------------- data and recipes


def natural_classes(split: CIFAR100Split, classes: int) -> list[int]:
    """The C fine classes of the natural side: for each superclass 0..C-1, its fine class of smallest index.

    Classes from different superclasses are about as distinct as the mixture's components; the
    choice is fixed by the labels alone (no seed).
    """
    fine, coarse = split.labels.numpy(), split.coarse_labels.numpy()
    return [int(fine[coarse == c].min()) for c in range(int(classes))]


def _relabel(split: CIFAR100Split, fines: list[int]) -> CIFAR100Split:
    """The images of the classes ``fines``, labelled 0..C-1 in that order."""
    idx = np.flatnonzero(np.isin(split.labels.numpy(), fines))
    sub = split.subset(idx)
    lookup = torch.full((100,), -1, dtype=torch.long)
    lookup[torch.tensor(fines)] = torch.arange(len(fines))
    return dataclasses.replace(sub, labels=lookup[sub.labels], classes=tuple(split.classes[f] for f in fines))


def natural_data(profile: str | Profile, data_root: str | os.PathLike | None = None
                 ) -> tuple[CIFAR100Split, CIFAR100Split, list[int]]:
    """(train, test, fine classes): ``mixture.cnn_train_images`` class-stratified training images of the C classes
    and all their test images, uint8, labelled 0..C-1 (``classes`` holds their names)."""
    sizes = load_profile(profile).mixture
    train_all, test_all = load_cifar100("train", data_root), load_cifar100("test", data_root)
    fines = natural_classes(train_all, sizes.classes)
    train, test = _relabel(train_all, fines), _relabel(test_all, fines)
    if sizes.cnn_train_images < len(train):
        train = train.subset(stratified_indices(train.labels, sizes.cnn_train_images, seed=SUBSET_SEED))
    return train, test, fines


def cnn_recipe(profile: str | Profile) -> TrainSizes:
    """The natural side's recipe: the ``train`` section's, with the mixture section's epochs, low-resolution epochs
    and learning rate (0: the recipe's), and one checkpoint at the end."""
    profile = load_profile(profile)
    s = profile.mixture
    return dataclasses.replace(profile.train, epochs=s.cnn_epochs, low_res_epochs=s.cnn_low_res_epochs,
                               lr=s.cnn_lr or profile.train.lr, checkpoint_every=s.cnn_epochs)


def mlp_recipe(profile: str | Profile) -> TrainSizes:
    """The perceptron's recipe: the ``train`` section's optimiser, momentum, weight decay, label smoothing and
    warm-up, with the mixture section's epochs, batch size and learning rate, and a linear decay to zero."""
    profile = load_profile(profile)
    s = profile.mixture
    return dataclasses.replace(profile.train, epochs=s.mlp_epochs, batch_size=s.mlp_batch_size, lr=s.mlp_lr,
                               schedule="linear", low_res_epochs=0, augment=False)


def spectra_sizes(sizes: MixtureSizes) -> SpectraSizes:
    """The :class:`~hessian_lib.profiles.SpectraSizes` that :func:`spectrum_at` reads, from the mixture section."""
    return SpectraSizes(checkpoints=(1, 2), dataset_size=sizes.dataset_size, batch_sizes=sizes.batch_sizes,
                        lanczos_steps=sizes.shift_steps, min_draws=sizes.min_draws, max_draws=sizes.max_draws,
                        batch_images=sizes.batch_images, chunk_size=sizes.chunk_size)


def train_mlp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: TrainSizes, *,
              seed: int) -> dict[str, np.ndarray]:
    """Train ``model`` in place on (x [n, d], y [n]) with ``recipe``; per-epoch ``train_loss`` and ``train_acc`` [E].

    Mini-batches of ``recipe.batch_size`` in a seeded order (the last incomplete batch dropped), the
    recipe's optimiser, label smoothing, warm-up and schedule (:func:`hessian_lib.trainer.lr_factor`).
    """
    gen = torch.Generator().manual_seed(derive_seed(seed, "order"))
    opt = make_optimizer(model.parameters(), recipe)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
    per_epoch = len(y) // recipe.batch_size
    total, warmup = per_epoch * recipe.epochs, int(round(recipe.warmup_epochs * per_epoch))
    losses, accs = [], []
    step = 0
    model.train()
    for _ in range(recipe.epochs):
        order = torch.randperm(len(y), generator=gen)
        loss_sum = correct = 0.0
        for i in range(per_epoch):
            idx = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            for group in opt.param_groups:
                group["lr"] = recipe.lr * lr_factor(step, total, recipe.schedule, warmup)
            opt.zero_grad()
            logits = model(x[idx])
            loss = loss_fn(logits, y[idx])
            loss.backward()
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            correct += float((logits.argmax(1) == y[idx]).sum())
        losses.append(loss_sum / (per_epoch * recipe.batch_size))
        accs.append(correct / (per_epoch * recipe.batch_size))
    model.eval()
    return {"train_loss": np.asarray(losses), "train_acc": np.asarray(accs)}


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


# ----------------------------------------------------------------------------- measurements


def class_mean_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int, *,
                         chunk_size: int = 256) -> torch.Tensor:
    r"""The C class-mean gradients [C, P] (float64): row c is :math:`\nabla_w` of the mean cross-entropy over the
    samples of class c in (x, y), BatchNorm in eval mode. A class without samples gives a zero row."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    model.eval()
    rows = []
    for c in range(int(classes)):
        xc, n = x[y == c], int((y == c).sum())
        total = [torch.zeros_like(p) for p in params]
        for start in range(0, n, chunk_size):
            xb = xc[start:start + chunk_size]
            grads = torch.autograd.grad(loss_fn(model(xb), torch.full((len(xb),), c, device=x.device)), params)
            total = [t + g for t, g in zip(total, grads)]
        rows.append(torch.cat([t.reshape(-1) for t in total]).double() / max(n, 1))
    return torch.stack(rows)


def subspace_share(top: torch.Tensor, basis: torch.Tensor) -> tuple[float, np.ndarray]:
    r"""How much of the span of ``top`` [k, P] lies in the span of ``basis`` [r, P]: (share, per-vector shares [k]).

    Both are orthonormalised (QR) first; the share is :math:`\lVert U V^\top\rVert_F^2 / k` in [0, 1] (1: the first
    span lies in the second; about r/P for random spans); the per-vector shares are the squared norms of the rows
    of :math:`U V^\top` (of the orthonormalised ``top``, in its order, so of each Ritz vector for Ritz vectors).
    """
    u = torch.linalg.qr(top.double().T).Q.T
    v = torch.linalg.qr(basis.double().T).Q.T
    per = ((u @ v.T) ** 2).sum(dim=1).cpu().numpy()
    return float(per.mean()), per


def _top_vectors(res: Any, k: int) -> torch.Tensor:
    return res.ritz_vectors[-k:].flip(0)  # ascending Ritz values: the top k, largest first


def _stratified(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.as_tensor(stratified_indices(y.cpu().numpy(), n, seed=CURVATURE_SEED))
    return x[idx], y[idx]


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sizes: MixtureSizes, *, seed: int,
            exact: bool = False) -> dict[str, Any]:
    """Every number of the chapter on one network: Hessian and GGN Lanczos, outliers, overlaps, bulk, batch shift.

    ``x``, ``y``: the N = ``sizes.dataset_size`` samples (curvature inputs, labels 0..C-1). Returns
    ``hessian_values`` / ``_weights`` / ``_residuals`` [m] (``lanczos_steps`` steps) and ``ggn_...``
    (``ggn_steps``);
    ``count``, ``gap_ratio``, ``resolved`` (:func:`~hessian_lib.verdicts.outlier_count`); ``bulk``
    (:func:`~hessian_lib.verdicts.bulk_fraction`); ``share_ggn`` and ``share_class`` with their per-vector
    ``share_ggn_vectors`` / ``share_class_vectors`` [C - 1] (:func:`subspace_share` of the top C - 1 Hessian
    Ritz vectors against the top C - 1 GGN Ritz vectors and the C class-mean gradients); ``dim`` (P);
    ``shift_*``: the :func:`spectrum_at` record of the Hessian (``shift_steps`` steps; its Ritz vectors left
    out); ``seconds``: the wall time of the measurement. With ``exact``
    (small P only) also ``exact_hessian`` / ``exact_ggn`` [P] eigenvalues and the same numbers from them
    (``exact_count``, ``exact_resolved``, ``exact_bulk``, ``exact_share_ggn``, ``exact_share_class``).
    """
    start = time.perf_counter()
    c, m = int(sizes.classes), int(sizes.lanczos_steps)
    chunks = [(x[i:i + sizes.chunk_size], y[i:i + sizes.chunk_size]) for i in range(0, len(y), sizes.chunk_size)]
    loss_fn = nn.CrossEntropyLoss()
    model.eval()
    out: dict[str, Any] = {}
    vectors = {}
    for kind, cls, stream, steps in (("hessian", HessianOperator, 1, m), ("ggn", GGNOperator, 4, sizes.ggn_steps)):
        op = cls(model, loss_fn, chunks, bn_mode=BN_MODE)
        res = lanczos(op, steps, seed=child_seed(seed, stream), return_vectors=True)
        op.clear_cache()
        out.update({f"{kind}_values": res.ritz_values.numpy(), f"{kind}_weights": res.ritz_weights.numpy(),
                    f"{kind}_residuals": res.residuals.numpy()})
        vectors[kind] = _top_vectors(res, c - 1)
        out["dim"] = int(op.dim)
    oc = verdicts.outlier_count(out["hessian_values"], out["hessian_residuals"], c)
    means = class_mean_gradients(model, x, y, c, chunk_size=sizes.chunk_size)
    out.update(count=oc.count, gap_ratio=oc.ratio, resolved=oc.resolved,
               bulk=verdicts.bulk_fraction(out["hessian_values"], out["hessian_weights"]))
    out["share_ggn"], out["share_ggn_vectors"] = subspace_share(vectors["hessian"], vectors["ggn"])
    out["share_class"], out["share_class_vectors"] = subspace_share(vectors["hessian"], means.to(vectors["hessian"]))
    if exact:
        h = dense_hessian(model, loss_fn, (x, y), bn_mode=BN_MODE)
        g = dense_ggn(model, loss_fn, (x, y), bn_mode=BN_MODE)
        (eh, vh), (eg, vg) = torch.linalg.eigh(h), torch.linalg.eigh(g)
        top_h, top_g = vh[:, -(c - 1):].T.flip(0), vg[:, -(c - 1):].T.flip(0)
        ec = verdicts.outlier_count(eh.numpy(), np.zeros(len(eh)), c)
        out.update(exact_hessian=eh.numpy(), exact_ggn=eg.numpy(), exact_count=ec.count, exact_resolved=ec.resolved,
                   exact_bulk=verdicts.bulk_fraction(eh.numpy(), np.full(len(eh), 1.0 / len(eh))),
                   exact_share_ggn=subspace_share(top_h, top_g)[0],
                   exact_share_class=subspace_share(top_h, means.to(top_h))[0])
    sp = spectrum_at(model, x, y, "hessian", spectra_sizes(sizes), seed=seed)
    out.update({f"shift_{k}": v for k, v in sp.items() if not k.endswith("_vector")})
    out["seconds"] = time.perf_counter() - start
    return out


def shift_record(record: dict[str, Any]) -> dict[str, Any]:
    """The :func:`spectrum_at` record inside a :func:`measure` record (what the shift statistics read)."""
    return {k.removeprefix("shift_"): v for k, v in record.items() if k.startswith("shift_")}


def welch_interval(a: Any, b: Any, level: float = verdicts.CLAIM8_LEVEL) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): Welch's t interval of the difference of two means at ``level``.

    ``a``, ``b``: 1-D samples (one value per network; NaN dropped). NaN bounds when a side has
    fewer than two values; the point itself when both sides have no spread.
    """
    a = np.asarray(a, dtype=float)[np.isfinite(np.asarray(a, dtype=float))]
    b = np.asarray(b, dtype=float)[np.isfinite(np.asarray(b, dtype=float))]
    if a.size == 0 or b.size == 0:
        return math.nan, math.nan, math.nan
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return diff, math.nan, math.nan
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(scipy.stats.t.ppf(0.5 + level / 2, dof)) * se
    return diff, diff - half, diff + half


# ----------------------------------------------------------------------------- one network per side


def _mixture(profile: Profile, separation: float, seed: int) -> GaussianMixture:
    s = profile.mixture
    return make_mixture(s.classes, s.dim, separation, covariance_decay=s.covariance_decay, seed=seed)


def _mixture_config(profile: Profile, separation: float, seed: int) -> dict[str, Any]:
    s = profile.mixture
    return {"classes": s.classes, "dim": s.dim, "separation": float(separation),
            "covariance_decay": s.covariance_decay, "seed": int(seed), "train_samples": s.train_samples,
            "test_samples": s.test_samples}


def _curvature_config(profile: Profile) -> dict[str, Any]:
    s = profile.mixture
    return {k: getattr(s, k) for k in ("classes", "dataset_size", "batch_sizes", "lanczos_steps", "ggn_steps",
                                       "shift_steps", "min_draws", "max_draws", "batch_images", "chunk_size")}


def synthetic_network(profile: str | Profile, separation: float, network_seed: int, *, seed: int,
                      store: ResultsStore, what: str = "measure") -> dict[str, Any]:
    """One perceptron on the mixture of ``seed`` at ``separation``, trained with ``network_seed`` (cached).

    ``what``: ``"measure"`` (everything of :func:`measure`, exact spectra included), ``"spectrum"``
    (the Hessian's Lanczos numbers and the batch shift only: the separation sweep) or ``"train"``.
    The training record: ``train_loss`` / ``train_acc`` [E], ``train_accuracy`` and ``test_accuracy``
    (final, plain argmax), ``bayes_accuracy`` (:meth:`~hessian_lib.mixture.GaussianMixture.bayes_accuracy`
    on the test samples), ``parameters``; the measure adds the numbers of :func:`measure`.
    """
    profile = load_profile(profile)
    s = profile.mixture
    recipe = mlp_recipe(profile)
    mix = _mixture(profile, separation, seed)
    x, y = mix.sample(s.train_samples, seed=TRAIN_STREAM)
    train_cfg = {"experiment": "mixture_mlp", "version": MIXTURE_VERSION, "mixture": _mixture_config(profile,
                 separation, seed), "hidden": list(s.hidden), "recipe": dataclasses.asdict(recipe),
                 "seed": int(network_seed)}

    def build() -> nn.Module:
        torch.manual_seed(derive_seed(network_seed, "init"))
        return VectorMLP(s.dim, tuple(s.hidden), s.classes)

    def train() -> dict[str, Any]:
        model = build()
        record: dict[str, Any] = train_mlp(model, x, y, recipe, seed=network_seed)
        xt, yt = mix.sample(s.test_samples, seed=TEST_STREAM)
        record.update(train_accuracy=_accuracy(model, x, y), test_accuracy=_accuracy(model, xt, yt),
                      bayes_accuracy=mix.bayes_accuracy(xt, yt), parameters=sum(p.numel() for p in model.parameters()))
        atomic_torch_save(model.state_dict(), store.artifact_dir(train_cfg) / "final.pt")
        return record

    trained = store.cached(train_cfg, train)
    if what == "train":
        return trained
    model = build()
    model.load_state_dict(torch.load(store.path(train_cfg) / "final.pt", weights_only=True))
    model.eval()
    xs, ys = _stratified(x, y, s.dataset_size)
    config = {"experiment": "mixture_measure", "version": MIXTURE_VERSION, "side": "mixture", "what": what,
              "model": ResultsStore.key(train_cfg), "curvature": _curvature_config(profile), "seed": int(network_seed)}
    if what == "measure":
        record = store.cached(config, lambda: measure(model, xs, ys, s, seed=network_seed, exact=True))
    elif what == "spectrum":
        record = store.cached(config, lambda: _spectrum_only(model, xs, ys, s, seed=network_seed))
    else:
        raise ValueError(f"what must be 'measure', 'spectrum' or 'train', got {what!r}")
    return {**trained, **record}


def _spectrum_only(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sizes: MixtureSizes, *,
                   seed: int) -> dict[str, Any]:
    """The sweep's numbers: the Hessian's Lanczos spectrum (``lanczos_steps``), its count and near-zero mass, and
    the :func:`spectrum_at` record of the batch spectra (``shift_*``, ``shift_steps``)."""
    res = lanczos(HessianOperator(model, nn.CrossEntropyLoss(), (x, y), bn_mode=BN_MODE), sizes.lanczos_steps,
                  seed=child_seed(seed, 1))
    out: dict[str, Any] = {"hessian_values": res.ritz_values.numpy(), "hessian_weights": res.ritz_weights.numpy(),
                           "hessian_residuals": res.residuals.numpy()}
    oc = verdicts.outlier_count(out["hessian_values"], out["hessian_residuals"], sizes.classes)
    out.update(count=oc.count, gap_ratio=oc.ratio, resolved=oc.resolved,
               bulk=verdicts.bulk_fraction(out["hessian_values"], out["hessian_weights"]))
    sp = spectrum_at(model, x, y, "hessian", spectra_sizes(sizes), seed=seed)
    out.update({f"shift_{k}": v for k, v in sp.items() if not k.endswith("_vector")})
    return out


def natural_network(profile: str | Profile, network_seed: int, *, data_root: str | os.PathLike | None,
                    device: str | torch.device | None, store: ResultsStore) -> dict[str, Any]:
    """The profile's network trained with ``network_seed`` on the C classes (:func:`natural_data`) and measured
    (:func:`measure`) on N class-stratified training images with test-time transforms, BatchNorm statistics
    refreshed on ``networks.bn_refresh_images`` of its training images (at most all of them). Cached.

    The record holds the training ``history`` (per epoch), ``train_seconds``, ``test_accuracy`` (all test images of
    the C classes, with the recipe's test-time flips), ``parameters`` and the numbers of :func:`measure`.
    """
    profile = load_profile(profile)
    s = profile.mixture
    recipe = cnn_recipe(profile)
    train, test, fines = natural_data(profile, data_root)
    dev = resolve_device(device)
    train_cfg = {"experiment": "mixture_cnn", "version": MIXTURE_VERSION, "recipe": dataclasses.asdict(recipe),
                 "fine_classes": fines, "train_images": s.cnn_train_images, "seed": int(network_seed)}

    def build() -> nn.Module:
        torch.manual_seed(derive_seed(network_seed, "init"))
        return model_from_profile(recipe, num_classes=s.classes)

    def fit_network() -> dict[str, Any]:
        model = build()
        fitted = fit(model, train, recipe, test=test, seed=network_seed, device=dev, quiet=True)
        atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                          store.artifact_dir(train_cfg) / "final.pt")
        return {"history": fitted.history, "test_accuracy": float(fitted.history[-1]["test_acc"]),
                "train_accuracy": float(fitted.history[-1]["train_acc"]), "train_seconds": float(fitted.seconds),
                "parameters": sum(p.numel() for p in model.parameters())}

    trained = store.cached(train_cfg, fit_network)
    n_refresh = min(profile.networks.bn_refresh_images, len(train))
    config = {"experiment": "mixture_measure", "version": MIXTURE_VERSION, "side": "network", "what": "measure",
              "model": ResultsStore.key(train_cfg), "curvature": _curvature_config(profile),
              "bn_refresh_images": n_refresh, "seed": int(network_seed)}

    def compute() -> dict[str, Any]:
        model = build()
        model.load_state_dict(torch.load(store.path(train_cfg) / "final.pt", weights_only=True))
        model = model.to(dev).eval()
        if n_refresh:
            images = train.subset(stratified_indices(train.labels, n_refresh, seed=BN_REFRESH_SEED)).images
            refresh_batchnorm(model, images, batch_size=recipe.batch_size, device=dev)
        cur = train.subset(stratified_indices(train.labels, s.dataset_size, seed=CURVATURE_SEED))
        return measure(model, normalize(cur.images.to(dev)), cur.labels.to(dev), s, seed=network_seed)

    return {**trained, **store.cached(config, compute), "fine_classes": fines,
            "class_names": list(train.classes)}
