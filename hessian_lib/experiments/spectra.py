r"""Experiments of the Spectra chapter: batch against empirical Hessian and GGN on CIFAR-100.

For a trained network at several checkpoints, with N training images under test-time
transforms as "the dataset" and BatchNorm in eval mode (running statistics, so every image
contributes independently of its batch):

* the empirical spectrum (Lanczos on the operator over all N images) and batch spectra for B
  over a grid, several random batches of B images each (drawn without replacement), for the
  Hessian and the Gauss-Newton matrix, all with the same number of Lanczos steps; each
  extreme Ritz value keeps its residual bound :math:`\lVert A y - \theta y\rVert`;
* the shift :math:`\Delta(B) = \overline{|\lambda_{\mathrm{ext}}(H_B)|} - |\lambda_{\mathrm{ext}}(H_{\mathrm{emp}})|`
  with its standard error over draws, the draws per B chosen from a first estimate of the
  shift and its spread (:func:`plan_draws`), and the exponent :math:`\gamma` of
  :math:`\Delta \propto (1/B - 1/N)^\gamma` with a confidence interval
  (:func:`~hessian_lib.experiments.spectra_analysis.fit_shift_exponent`);
* a direct estimate of the per-sample curvature noise (:func:`per_sample_noise_scale`) and
  three parameter-free predictions of the batch extremes from it (:mod:`hessian_lib.laws.rmt`);
* a dense-Hessian validation of Lanczos on a network small enough to diagonalise exactly.

Every result is cached in a :class:`~hessian_lib.store.ResultsStore` per (checkpoint, matrix),
so an interrupted run resumes where it stopped. :func:`run_spectra` returns a
:class:`~hessian_lib.experiments.spectra_analysis.SpectraStudy`; what the chapter reads off it (shift
statistics, the exponent fit, pooling over networks, verdicts) is in :mod:`hessian_lib.experiments.spectra_analysis`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from hessian_lib.curvature import GGNOperator, HessianOperator, batch_operator, dense_ggn, dense_hessian, lanczos
from hessian_lib.device import resolve_device
from hessian_lib.experiments.spectra_analysis import (
    ENDS,
    KINDS,
    TARGET_SE_FRACTION,
    SpectraResult,
    SpectraStudy,
    extreme_ritz,
)
from hessian_lib.experiments.stages import run_stage, stage_config
from hessian_lib.experiments.theory import child_seed
from hessian_lib.experiments.training import (
    TrainResult,
    curvature_inputs,
    measured_model,
    network_seeds,
    train_experiment,
)
from hessian_lib.models.mlp import PooledMLP
from hessian_lib.profiles import Profile, SpectraSizes, load_profile
from hessian_lib.store import ResultsStore

__all__ = [
    "BN_MODE",
    "dense_validation",
    "network_stage",
    "network_state",
    "per_sample_noise_scale",
    "plan_draws",
    "required_draws",
    "run_spectra",
    "spectra_dataset",
    "spectrum_at",
]

#: The chapter whose stages (:mod:`~hessian_lib.experiments.stages`) this module runs.
CHAPTER = "02_spectra"
#: BatchNorm uses its running statistics in every product (see :func:`hessian_lib.curvature.batchnorm_mode`).
BN_MODE = "eval"

_OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator}


def _chunks(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def _operator(kind: str, model: nn.Module, data: Any):
    return _OPERATORS[kind](model, nn.CrossEntropyLoss(), data, bn_mode=BN_MODE)


def spectra_dataset(profile: Profile, data_root: Any = None, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The N = ``spectra.dataset_size`` training images of the study: float32 [N, 3, 32, 32] (test-time), labels [N]."""
    return curvature_inputs(profile, data_root, device, size=profile.spectra.dataset_size)


@torch.no_grad()
def network_state(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 256) -> dict[str, float]:
    r"""Loss, accuracy and mean largest softmax probability of ``model`` (eval mode) on (x, y).

    A mean largest probability near 1/C (C classes) means a near-uniform softmax: then every
    sample's output Hessian :math:`\Lambda_i = \mathrm{diag}(p) - pp^\top` is nearly the same
    matrix and the batch Gauss-Newton matrix barely fluctuates.
    """
    model.eval()
    logits = torch.cat([model(xb) for xb, _ in _chunks(x, y, chunk_size)])
    probs = logits.softmax(dim=1)
    return {"loss": float(nn.functional.cross_entropy(logits, y)),
            "accuracy": float((logits.argmax(dim=1) == y).float().mean()),
            "mean_max_prob": float(probs.max(dim=1).values.mean()),
            "num_classes": int(logits.shape[1])}


def _lanczos_record(op, steps: int, seed: int, vectors: bool = False) -> dict[str, np.ndarray]:
    res = lanczos(op, steps, seed=seed, return_vectors=vectors)
    out = {"ritz_values": res.ritz_values.numpy(), "ritz_weights": res.ritz_weights.numpy(),
           "residuals": res.residuals.numpy()}
    if vectors:
        out["top_vector"] = res.ritz_vectors[-1].float().cpu().numpy()
        out["bottom_vector"] = res.ritz_vectors[0].float().cpu().numpy()
    return out




def required_draws(magnitudes: np.ndarray, empirical_magnitude: float, target: float = TARGET_SE_FRACTION) -> float:
    r"""Draws needed for a standard error of the shift of at most ``target`` times the shift.

    From first draws ``magnitudes`` [n >= 2] of :math:`|\lambda_{\mathrm{ext}}(H_B)|`: with shift
    :math:`\Delta` = mean - ``empirical_magnitude`` and standard deviation s, it is
    :math:`\lceil (s / (\text{target}\,\Delta))^2\rceil`; ``inf`` when the shift is not positive.
    """
    m = np.asarray(magnitudes, dtype=float)
    m = m[np.isfinite(m)]
    if m.size < 2:
        return math.inf
    shift = float(m.mean()) - float(empirical_magnitude)
    if not shift > 0:
        return math.inf
    return float(math.ceil((float(m.std(ddof=1)) / (target * shift)) ** 2 * (1 - 1e-12)))  # no ceil of 8.0000001


def plan_draws(required: Any, batch_sizes: Any, *, min_draws: int, max_draws: int, budget: int) -> np.ndarray:
    """Draws per batch size [len(B)]: ``required`` ones where the budget of images allows.

    Every B keeps its ``min_draws`` first draws. The extra draws each B needs (``required`` minus
    ``min_draws``, at most ``max_draws`` in all) are granted in order of their cost in images
    (extra draws x B, cheapest first), while the images of all draws stay within ``budget``;
    the last B granted may get part of what it needs.
    """
    req = np.asarray(required, dtype=float)
    b = np.asarray(batch_sizes, dtype=int)
    draws = np.full(b.shape, int(min_draws))
    extra = np.clip(np.nan_to_num(req, posinf=max_draws) - min_draws, 0, max_draws - min_draws).astype(int)
    spent = int(min_draws * b.sum())
    for i in sorted(range(b.size), key=lambda j: (extra[j] * b[j], b[j])):
        give = int(min(extra[i], max(budget - spent, 0) // b[i]))
        draws[i] += give
        spent += give * int(b[i])
    return draws


def spectrum_at(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    sizes: SpectraSizes,
    *,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Empirical and batch Lanczos spectra of one matrix (``kind``: hessian or ggn) at one set of weights.

    Every spectrum takes ``sizes.lanczos_steps`` (m) steps. The batch draws come in two stages:
    ``sizes.min_draws`` per B, then :func:`plan_draws` from the :func:`required_draws` of each B
    (the larger over the matrix's ends, :data:`~hessian_lib.experiments.spectra_analysis.ENDS`). Returns
    arrays: ``empirical_values`` / ``empirical_weights`` / ``empirical_residuals`` [m]; ``empirical_top_vector`` /
    ``empirical_bottom_vector`` [P] (the extreme Ritz vectors); ``batch_sizes`` [G];
    ``draws`` [G] (draws made); ``required_draws`` [G] (from the first stage; inf when the first
    draws showed no shift); ``batch_values`` / ``batch_weights`` / ``batch_residuals``
    [G, max_draws, m] (NaN beyond the draws made); scalars ``dim`` (P), ``dataset_size`` (N),
    ``num_classes`` (C), ``lanczos_steps`` (m) and ``seconds``.
    """
    start = time.perf_counter()
    model.eval()
    m = sizes.lanczos_steps
    emp = _operator(kind, model, _chunks(x, y, sizes.chunk_size))
    empirical = _lanczos_record(emp, m, child_seed(seed, 1), vectors=True)
    emp.clear_cache()
    grid = [int(b) for b in sizes.batch_sizes]
    shape = (len(grid), sizes.max_draws, m)
    values, weights, residuals = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    loss_fn = nn.CrossEntropyLoss()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid) * sizes.min_draws, desc=f"{kind} batch spectra", leave=False)

    def draw(i: int, d: int) -> None:
        b = grid[i]
        op = batch_operator(kind, model, loss_fn, (x, y), b, seed=child_seed(seed, 2, b, d), bn_mode=BN_MODE)
        rec = _lanczos_record(op, m, child_seed(seed, 3, b, d))
        k = len(rec["ritz_values"])  # fewer on breakdown (a rank-deficient batch GGN)
        values[i, d, :k], weights[i, d, :k], residuals[i, d, :k] = \
            rec["ritz_values"], rec["ritz_weights"], rec["residuals"]
        if bar is not None:
            bar.update(1)

    for i in range(len(grid)):
        for d in range(sizes.min_draws):
            draw(i, d)
    required = np.zeros(len(grid))
    for end in ENDS[kind]:
        emp_value, _ = extreme_ritz(empirical["ritz_values"], empirical["residuals"], end)
        batch_value, _ = extreme_ritz(values[:, :sizes.min_draws], residuals[:, :sizes.min_draws], end)
        required = np.maximum(required, [required_draws(np.abs(row), abs(float(emp_value))) for row in batch_value])
    draws = plan_draws(required, grid, min_draws=sizes.min_draws, max_draws=sizes.max_draws,
                       budget=sizes.batch_images)
    if bar is not None:
        bar.total += int((draws - sizes.min_draws).sum())
    for i in range(len(grid)):
        for d in range(sizes.min_draws, int(draws[i])):
            draw(i, d)
    if bar is not None:
        bar.close()
    return {
        "empirical_values": empirical["ritz_values"],
        "empirical_weights": empirical["ritz_weights"],
        "empirical_residuals": empirical["residuals"],
        "empirical_top_vector": empirical["top_vector"],
        "empirical_bottom_vector": empirical["bottom_vector"],
        "batch_sizes": np.asarray(grid),
        "draws": np.asarray(draws),
        "required_draws": required,
        "batch_values": values,
        "batch_weights": weights,
        "batch_residuals": residuals,
        "dim": int(emp.dim),
        "dataset_size": int(len(y)),
        "num_classes": int(model(x[:1]).shape[1]),
        "lanczos_steps": int(m),
        "seconds": time.perf_counter() - start,
    }


def per_sample_noise_scale(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    *,
    samples: int,
    probes: int,
    chunk_size: int = 250,
    seed: int = 0,
    directions: dict[str, np.ndarray] | None = None,
) -> dict[str, float]:
    r"""Direct estimate of the single-sample noise scale :math:`s_1 = \sqrt{\mathbb E_i\lVert M_i - M\rVert_F^2 / P}`.

    :math:`M_i` is the matrix (Hessian or GGN) of sample i alone, :math:`M` the empirical one.
    Hutchinson: :math:`\lVert A\rVert_F^2 = \mathbb E_z \lVert A z\rVert^2` with Gaussian probes z.
    In the Wigner model the entry variance is :math:`\sigma^2 = s_1^2/P`, so a batch of B has
    noise scale :math:`s(B) = s_1\sqrt{1/B - 1/N}`. Returns ``s1``, its standard error ``s1_err``
    (delta method over samples) and ``frobenius2`` (the mean squared Frobenius norm).

    ``directions`` (name -> unit vector [P], e.g. the empirical top eigenvector v) adds the
    noise *along* each direction, ``s2_<name>`` :math:`= \mathbb E_i \lVert (I - vv^\top)(M_i - M)v\rVert^2`,
    and its standard error ``s2_<name>_err``: the variance that second-order perturbation theory
    says pushes the eigenvalue of v (:func:`hessian_lib.laws.rmt.directional_outlier`). For isotropic
    Wigner noise it equals :math:`s_1^2`; for noise concentrated on v's neighbourhood it is larger.
    """
    model.eval()
    emp = _operator(kind, model, _chunks(x, y, chunk_size))
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn(probes, emp.dim, generator=gen)
    names = list(directions or {})
    dirs = [torch.as_tensor(np.asarray(directions[n]), dtype=torch.float32) for n in names]
    dirs = [d / d.norm() for d in dirs]
    block = torch.cat([z, *[d[None] for d in dirs]]).to(device=x.device)
    m_block = emp.matvec(block).reshape(len(block), -1)
    emp.clear_cache()
    picks = torch.randperm(len(y), generator=gen)[:samples].tolist()
    fro2_list, along = [], {n: [] for n in names}
    for i in picks:
        op = _operator(kind, model, (x[i:i + 1], y[i:i + 1]))
        diff = (op.matvec(block).reshape(len(block), -1) - m_block).double()
        fro2_list.append(float((diff[:probes] ** 2).sum(dim=1).mean()))
        for j, n in enumerate(names):
            d = diff[probes + j]
            v = block[probes + j].double()
            along[n].append(float((d - (d @ v) * v).pow(2).sum()))
    fro2 = np.asarray(fro2_list)
    mean = float(fro2.mean())
    s1 = float(np.sqrt(mean / emp.dim))
    err = float(fro2.std(ddof=1) / np.sqrt(len(fro2)) / (2 * np.sqrt(mean * emp.dim))) if len(fro2) > 1 else math.nan
    out = {"s1": s1, "s1_err": err, "frobenius2": mean, "dim": int(emp.dim)}
    for n in names:
        a = np.asarray(along[n])
        out[f"s2_{n}"] = float(a.mean())
        out[f"s2_{n}_err"] = float(a.std(ddof=1) / np.sqrt(a.size)) if a.size > 1 else math.nan
    return out


def dense_validation(x: torch.Tensor, y: torch.Tensor, *, hidden: int, steps: int = 40, lanczos_steps: int = 80,
                     k: int = 5, seed: int = 0) -> pd.DataFrame:
    """Lanczos extremes against the exact eigenvalues of a dense Hessian and GGN of a small MLP.

    The :class:`~hessian_lib.models.mlp.PooledMLP` is trained for ``steps`` full-batch gradient
    steps on (x, y) first, so the spectrum is not that of initialisation. Returns one row per
    (matrix, end, rank) with the exact and Lanczos eigenvalues and their relative error.
    """
    torch.manual_seed(seed)
    x, y = x.cpu(), y.cpu()
    model = PooledMLP(hidden)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    rows = []
    for kind, dense_fn in (("hessian", dense_hessian), ("ggn", dense_ggn)):
        exact = torch.linalg.eigvalsh(dense_fn(model, loss_fn, (x, y))).numpy()
        res = lanczos(_operator(kind, model, (x, y)), lanczos_steps, seed=seed)
        ritz = res.ritz_values.numpy()
        ends = [("top", exact[::-1][:k], ritz[::-1][:k])]
        if kind == "hessian":
            ends.append(("bottom", exact[:k], ritz[:k]))
        for end, ex, rz in ends:
            for rank, (e, r) in enumerate(zip(ex, rz), 1):
                rows.append({"matrix": kind, "end": end, "rank": rank, "exact": float(e), "Lanczos": float(r),
                             "rel. error": abs(r - e) / max(abs(e), 1e-12)})
    table = pd.DataFrame(rows)
    table.attrs["dim"] = sum(p.numel() for p in model.parameters())
    table.attrs["lanczos_steps"] = lanczos_steps
    return table




def _key(profile: Profile, seed: int, epoch: int, kind: str, train_key: str, what: str) -> dict[str, Any]:
    # A checkpoint's results do not depend on which other checkpoints are analysed, nor on the dense panel's sizes.
    sizes = {k: v for k, v in dataclasses.asdict(profile.spectra).items()
             if k not in ("checkpoints", "dense_hidden", "dense_samples")}
    return {"experiment": "spectra", "version": 4, "what": what, "train": train_key, "epoch": int(epoch),
            "kind": kind, "bn_mode": BN_MODE, "bn_refresh_images": profile.networks.bn_refresh_images,
            "spectra": sizes, "seed": int(seed)}


def _network_spectra(profile: Profile, run: TrainResult, *, seed: int, data_root: Any, dev: torch.device,
                     store: ResultsStore, x: torch.Tensor, y: torch.Tensor, progress: bool) -> SpectraResult:
    """Every spectrum, noise estimate and state of one network, cached in ``store`` (``seed``: its training seed)."""
    sizes = profile.spectra
    missing = [e for e in sizes.checkpoints if e not in run.checkpoints]
    if missing:
        raise ValueError(f"spectra.checkpoints {missing} were not kept by the training run; "
                         f"available epochs: {sorted(run.checkpoints)}")
    spectra, noise, states = {}, {}, {}
    for epoch in sizes.checkpoints:
        model = None

        def model_now() -> nn.Module:
            nonlocal model
            if model is None:
                model = measured_model(run, epoch, profile, data_root, device=dev)
            return model

        states[epoch] = store.cached(_key(profile, seed, epoch, "", run.key, "state"),
                                     lambda: network_state(model_now(), x, y, sizes.chunk_size))
        for kind in KINDS:
            spectra[(epoch, kind)] = store.cached(
                _key(profile, seed, epoch, kind, run.key, "spectrum"),
                lambda: spectrum_at(model_now(), x, y, kind, sizes, seed=seed, progress=progress))
            sp = spectra[(epoch, kind)]
            noise[(epoch, kind)] = store.cached(
                _key(profile, seed, epoch, kind, run.key, "noise"),
                lambda: per_sample_noise_scale(
                    model_now(), x, y, kind, samples=sizes.noise_samples, probes=sizes.noise_probes,
                    chunk_size=sizes.chunk_size, seed=seed,
                    directions={"top": sp["empirical_top_vector"], "bottom": sp["empirical_bottom_vector"]}))
    any_spectrum = next(iter(spectra.values()))
    return SpectraResult(train=run, spectra=spectra, noise=noise, states=states, dim=int(any_spectrum["dim"]),
                         n_data=int(any_spectrum["dataset_size"]))


def network_stage(profile: Profile, k: int, *, seed: int, data_root: Any, device: Any, store: ResultsStore,
                  run: TrainResult | None = None, data: tuple[torch.Tensor, torch.Tensor] | None = None,
                  progress: bool = False) -> SpectraResult:
    """Network k's stage of the chapter: every spectrum, noise estimate and state at its checkpoints (cached;
    the stage's record under ``stage_config(CHAPTER, "network k", profile, seed)``). ``run``: its training
    run (default: loaded from ``store``, trained if absent); ``data``: :func:`spectra_dataset`'s images."""
    dev = resolve_device(device)
    s = network_seeds(seed, profile.networks.count)[k]
    run = run or train_experiment(profile, seed=s, data_root=data_root, device=dev, store=store, quiet=True)
    x, y = data if data is not None else spectra_dataset(profile, data_root, dev)
    return run_stage(store, stage_config(CHAPTER, f"network {k}", profile, seed),
                     lambda: _network_spectra(profile, run, seed=s, data_root=data_root, dev=dev, store=store,
                                              x=x, y=y, progress=progress))


def run_spectra(
    profile: str | Profile = "cpu",
    *,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    store: ResultsStore | str | os.PathLike = "results",
    progress: bool = False,
) -> SpectraStudy:
    """Train (or load) the profile's K networks, then compute each spectrum of the chapter on each, cached in ``store``.

    Network k (training seed ``network_seeds(seed, K)[k]``) is measured at its checkpoints with
    BatchNorm statistics refreshed at full resolution (:func:`~hessian_lib.experiments.training.measured_model`);
    its batch draws and Lanczos start vectors are seeded by its training seed.
    """
    profile = load_profile(profile, overrides)
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    dev = resolve_device(device)
    seeds = network_seeds(seed, profile.networks.count)
    runs = [train_experiment(profile, seed=s, data_root=data_root, device=dev, store=store, quiet=not progress)
            for s in seeds]
    x, y = spectra_dataset(profile, data_root, dev)
    networks = [network_stage(profile, k, seed=seed, data_root=data_root, device=dev, store=store, run=run,
                              data=(x, y), progress=progress) for k, run in enumerate(runs)]
    return SpectraStudy(networks=networks, seeds=seeds, pool_seed=seed)
