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
  :math:`\Delta \propto (1/B - 1/N)^\gamma` with a confidence interval (:func:`fit_shift_exponent`);
* a direct estimate of the per-sample curvature noise (:func:`per_sample_noise_scale`) and
  three parameter-free predictions of the batch extremes from it (:mod:`hessian_lib.laws.rmt`);
* a dense-Hessian validation of Lanczos on a network small enough to diagonalise exactly.

Every result is cached in a :class:`~hessian_lib.store.ResultsStore` per (checkpoint, matrix),
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats
import torch
from torch import nn

from hessian_lib import verdicts
from hessian_lib.curvature import GGNOperator, HessianOperator, batch_operator, dense_ggn, dense_hessian, lanczos
from hessian_lib.device import resolve_device
from hessian_lib.experiments.theory import child_seed
from hessian_lib.experiments.training import (
    TrainResult,
    curvature_inputs,
    measured_model,
    network_seeds,
    train_experiment,
)
from hessian_lib.laws import brackets, rmt, scaling
from hessian_lib.models.mlp import PooledMLP
from hessian_lib.profiles import Profile, SpectraSizes, load_profile
from hessian_lib.store import ResultsStore

__all__ = [
    "BN_MODE",
    "ENDS",
    "KINDS",
    "PREDICTIONS",
    "RESIDUAL_TOLERANCE",
    "TARGET_SE_FRACTION",
    "SpectraResult",
    "SpectraStudy",
    "dense_validation",
    "extreme_ritz",
    "fit_shift_exponent",
    "network_state",
    "per_sample_noise_scale",
    "plan_draws",
    "pool_shift",
    "required_draws",
    "run_spectra",
    "shift_statistics",
    "spectra_dataset",
    "spectrum_at",
]

KINDS = ("hessian", "ggn")
#: The ends of each matrix the claims are about: both ends of the Hessian, the top of the GGN (PSD).
ENDS: dict[str, tuple[str, ...]] = {"hessian": ("top", "bottom"), "ggn": ("top",)}
#: BatchNorm uses its running statistics in every product (see :func:`hessian_lib.curvature.batchnorm_mode`).
BN_MODE = "eval"
#: The draws per B aim at a standard error of the shift of at most this fraction of the shift.
TARGET_SE_FRACTION = 0.25
#: An extreme Ritz value whose residual bound exceeds this fraction of its magnitude is flagged.
RESIDUAL_TOLERANCE = 0.01
#: The three noise models whose predictions are compared with the measured extremes.
PREDICTIONS = ("isotropic Wigner", "directional", "rank-deficient MP")

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


def extreme_ritz(values: np.ndarray, residuals: np.ndarray, end: str) -> tuple[np.ndarray, np.ndarray]:
    """The extreme Ritz value at ``end`` ('top' or 'bottom') along the last axis, and its residual bound.

    ``values``, ``residuals``: [..., m] (NaN where a run stopped early); returns two arrays [...]
    (NaN where a row has no value).
    """
    filled = np.where(np.isfinite(values), values, -np.inf if end == "top" else np.inf)
    idx = np.argmax(filled, axis=-1) if end == "top" else np.argmin(filled, axis=-1)
    value = np.take_along_axis(values, idx[..., None], axis=-1)[..., 0]
    residual = np.take_along_axis(residuals, idx[..., None], axis=-1)[..., 0]
    return value, residual


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
    (the larger over the matrix's ends, :data:`ENDS`). Returns arrays: ``empirical_values`` /
    ``empirical_weights`` / ``empirical_residuals`` [m]; ``empirical_top_vector`` /
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


def shift_statistics(sp: dict[str, Any], end: str) -> pd.DataFrame:
    r"""The shift of one end of one matrix, one row per B.

    Columns: ``B``; ``x`` :math:`= 1/B - 1/N`; ``draws``; ``mean |lambda_B|``; ``shift``
    :math:`\Delta(B)`; ``se`` (its standard error over draws: the sample standard deviation over
    :math:`\sqrt{\text{draws}}`); ``se/shift``; ``required`` (the draws the first stage asked
    for, :func:`required_draws`, the larger over the matrix's ends); ``flagged`` (draws whose
    extreme Ritz value has a residual bound above :data:`RESIDUAL_TOLERANCE` of its magnitude). ``attrs`` hold the
    empirical extreme (``empirical``, signed), its residual bound and whether it is flagged.
    """
    emp_value, emp_res = extreme_ritz(sp["empirical_values"], sp["empirical_residuals"], end)
    value, res = extreme_ritz(sp["batch_values"], sp["batch_residuals"], end)
    mag = np.abs(value)
    n = np.sum(np.isfinite(mag), axis=1)
    mean = np.nanmean(mag, axis=1)
    se = np.nanstd(mag, axis=1, ddof=1) / np.sqrt(n)
    shift = mean - abs(float(emp_value))
    b = np.asarray(sp["batch_sizes"], dtype=float)
    flagged = np.sum(np.isfinite(mag) & (res > RESIDUAL_TOLERANCE * mag), axis=1)
    table = pd.DataFrame({"B": b.astype(int), "x": 1.0 / b - 1.0 / float(sp["dataset_size"]), "draws": n,
                          "mean |lambda_B|": mean, "shift": shift, "se": se,
                          "se/shift": np.where(shift > 0, se / np.where(shift > 0, shift, 1.0), np.inf),
                          "required": np.asarray(sp.get("required_draws", np.full(b.shape, np.nan)), dtype=float),
                          "flagged": flagged})
    table.attrs.update(empirical=float(emp_value), empirical_residual=float(emp_res),
                       empirical_flagged=bool(emp_res > RESIDUAL_TOLERANCE * abs(float(emp_value))))
    return table


def fit_shift_exponent(x: Any, shift: Any, se: Any, confidence: float = verdicts.GAMMA_CONFIDENCE) -> dict[str, float]:
    r"""Fit :math:`\Delta = c\,x^\gamma` by weighted least squares on logarithms, with an interval for :math:`\gamma`.

    ``x`` (:math:`1/B - 1/N`), ``shift`` (:math:`\Delta`) and ``se`` (its standard error): 1-D of
    one length. Only points with a positive shift and standard error enter (a logarithm needs
    :math:`\Delta > 0`); each has weight :math:`(\Delta/\mathrm{se})^2`, the inverse variance of
    :math:`\log\Delta` by the delta method. The weights are taken as relative: the covariance is
    scaled by the reduced :math:`\chi^2`, and the ``confidence`` interval uses Student's t with
    n - 2 degrees of freedom. Returns ``gamma``, ``gamma_err``, ``gamma_low``, ``gamma_high``,
    ``amplitude`` (c), ``chi2_red`` and ``n_used``; NaN for all but ``n_used`` when fewer than
    three points qualify.
    """
    x, shift, se = (np.asarray(a, dtype=float).reshape(-1) for a in (x, shift, se))
    use = (x > 0) & (shift > 0) & (se > 0) & np.isfinite(shift) & np.isfinite(se)
    out = dict.fromkeys(("gamma", "gamma_err", "gamma_low", "gamma_high", "amplitude", "chi2_red"), math.nan)
    out["n_used"] = int(use.sum())
    if use.sum() < 3 or np.unique(x[use]).size < 2:
        return out
    lx = np.log(x[use])
    fit = scaling.weighted_least_squares(np.stack([np.ones_like(lx), lx], axis=1), np.log(shift[use]),
                                         (shift[use] / se[use]) ** 2)
    gamma, err = float(fit["coef"][1]), float(np.sqrt(fit["cov"][1, 1]))
    half = float(scipy.stats.t.ppf(0.5 + confidence / 2, fit["dof"])) * err
    out.update(gamma=gamma, gamma_err=err, gamma_low=gamma - half, gamma_high=gamma + half,
               amplitude=float(np.exp(fit["coef"][0])), chi2_red=fit["chi2_red"])
    return out


#: Replicates of the two-stage bootstrap that pools the shift over independently trained networks.
POOL_REPLICATES = 2000
#: The pooled interval of gamma is left undefined (NaN) when more than this fraction of the replicates cannot
#: be fitted (fewer than three batch sizes with a positive shift).
POOL_MAX_UNFITTED = 0.025


def _weighted_slopes(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares slopes of y [R, n] on x [n] with weights w [R, n] (0 leaves a point out); NaN
    where fewer than three points or fewer than two distinct x values are left."""
    sw = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (w * x).sum(axis=1) / sw
        my = (w * np.where(w > 0, y, 0.0)).sum(axis=1) / sw
        dx = x[None, :] - mx[:, None]
        sxx = (w * dx**2).sum(axis=1)
        sxy = (w * dx * np.where(w > 0, y - my[:, None], 0.0)).sum(axis=1)
        slope = sxy / sxx
    enough = ((w > 0).sum(axis=1) >= 3) & (sxx > 1e-12 * np.maximum((w * x**2).sum(axis=1), 1e-300))
    return np.where(enough, slope, np.nan)


def pool_shift(spectra: list[dict[str, Any]], end: str, *, confidence: float = verdicts.GAMMA_CONFIDENCE,
               replicates: int = POOL_REPLICATES, seed: int = 0) -> tuple[pd.DataFrame, dict[str, float]]:
    r"""The shift of one end of one matrix pooled over K independently trained networks, with its exponent.

    ``spectra``: the :func:`spectrum_at` records of the K networks at one checkpoint (same B grid
    and N). The pooled shift is the mean over networks of each network's :math:`\Delta(B)`. Its
    standard error and the interval of :math:`\gamma` come from a two-stage bootstrap: each
    replicate draws K networks with replacement, then, within each network drawn, its batch
    draws at every B with replacement; so both the variation between networks and the scatter
    between batches enter. :math:`\gamma` is fitted as in :func:`fit_shift_exponent` (weighted
    least squares of :math:`\log\Delta` on :math:`\log(1/B - 1/N)`, weights
    :math:`(\Delta/\mathrm{se})^2` from the pooled numbers, positive shifts only); the interval
    is the percentile interval of the replicates' :math:`\gamma`, NaN when more than
    :data:`POOL_MAX_UNFITTED` of them cannot be fitted. Resampling K networks makes a bootstrap
    spread too narrow by :math:`\sqrt{(K-1)/K}`, so the standard error and the interval are
    widened about the estimate by :func:`~hessian_lib.laws.brackets.cluster_expansion` (1.22 for K = 3).

    Returns a table with one row per B (``B``, ``x``, ``shift``, ``se``, ``se/shift``, ``draws``:
    over all networks, ``flagged``, and ``shift net k`` for each network k) whose ``attrs`` hold
    ``empirical`` (the signed empirical extremes, one per network), ``empirical_flagged`` (per
    network), and a fit dict: ``gamma``, ``gamma_low``, ``gamma_high``, ``amplitude`` (c),
    ``n_used``, ``unfitted`` (fraction of replicates), ``networks`` (K).
    """
    if not spectra:
        raise ValueError("pool_shift needs at least one network's spectra")
    tables = [shift_statistics(sp, end) for sp in spectra]
    b = tables[0]["B"].to_numpy()
    if any(not np.array_equal(t["B"].to_numpy(), b) for t in tables) or \
            len({int(sp["dataset_size"]) for sp in spectra}) != 1:
        raise ValueError("the networks' spectra must share the batch-size grid and the dataset size")
    x = tables[0]["x"].to_numpy()
    k, g = len(spectra), b.size
    mags, emps = [], []
    for sp in spectra:
        value, _ = extreme_ritz(sp["batch_values"], sp["batch_residuals"], end)
        mags.append(np.abs(value))  # [G, max_draws], NaN beyond the draws made
        emps.append(abs(float(extreme_ritz(sp["empirical_values"], sp["empirical_residuals"], end)[0])))
    per_net = np.stack([t["shift"].to_numpy() for t in tables])  # [K, G]
    shift = per_net.mean(axis=0)
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, k, size=(replicates, k)) if k > 1 else np.zeros((replicates, 1), dtype=int)
    boot = np.zeros((replicates, g))
    for slot in range(chosen.shape[1]):
        for n in range(k):
            rows = np.flatnonzero(chosen[:, slot] == n)
            if rows.size == 0:
                continue
            for i in range(g):
                v = mags[n][i][np.isfinite(mags[n][i])]
                pick = rng.integers(0, v.size, size=(rows.size, v.size))
                boot[rows, i] += v[pick].mean(axis=1) - emps[n]
    boot /= chosen.shape[1]
    expand = brackets.cluster_expansion(k)
    se = expand * boot.std(axis=0, ddof=1)
    point = fit_shift_exponent(x, shift, se, confidence)
    ok = (shift > 0) & (se > 0) & np.isfinite(shift)
    weights = np.where(ok, (shift / np.where(se > 0, se, 1.0)) ** 2, 0.0)
    w = np.where(boot > 0, weights[None, :], 0.0)
    gammas = _weighted_slopes(np.log(x), np.log(np.where(boot > 0, boot, 1.0)), w)
    unfitted = float(np.mean(~np.isfinite(gammas)))
    tail = 50.0 * (1.0 - confidence)
    if unfitted <= POOL_MAX_UNFITTED and np.isfinite(point["gamma"]):
        low, high = brackets.widen(point["gamma"], *(float(v) for v in np.nanpercentile(gammas, [tail, 100.0 - tail])),
                                  expand)
    else:
        low = high = math.nan
    table = pd.DataFrame({"B": b, "x": x, "shift": shift, "se": se,
                          "se/shift": np.where(shift > 0, se / np.where(shift > 0, shift, 1.0), np.inf),
                          "draws": sum(t["draws"].to_numpy() for t in tables),
                          "flagged": sum(t["flagged"].to_numpy() for t in tables)})
    for j in range(k):
        table[f"shift net {j}"] = per_net[j]
    table.attrs.update(empirical=[t.attrs["empirical"] for t in tables],
                       empirical_flagged=[bool(t.attrs["empirical_flagged"]) for t in tables],
                       fit={"gamma": point["gamma"], "gamma_low": low, "gamma_high": high,
                            "amplitude": point["amplitude"], "n_used": point["n_used"], "unfitted": unfitted,
                            "networks": k})
    return table, table.attrs["fit"]


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


@dataclass
class SpectraResult:
    """Everything the Spectra chapter shows.

    ``spectra[(epoch, kind)]``: the dict of :func:`spectrum_at`; ``noise[(epoch, kind)]``: the dict of
    :func:`per_sample_noise_scale`; ``states[epoch]``: the dict of :func:`network_state` on the N
    images; ``train``: the training run; ``dim`` (P) and ``n_data`` (N).
    """

    train: TrainResult | None
    spectra: dict[tuple[int, str], dict[str, Any]]
    noise: dict[tuple[int, str], dict[str, float]]
    states: dict[int, dict[str, float]]
    dim: int
    n_data: int

    def epochs(self) -> list[int]:
        """The checkpoints (epochs) measured, in order."""
        return sorted({e for e, _ in self.spectra})

    def shifts(self, epoch: int, kind: str, end: str) -> pd.DataFrame:
        """:func:`shift_statistics` of one end of one matrix at one checkpoint."""
        return shift_statistics(self.spectra[(epoch, kind)], end)

    def shift_fit(self, epoch: int, kind: str, end: str) -> dict[str, float]:
        """:func:`fit_shift_exponent` of the shift of one end of one matrix at one checkpoint."""
        t = self.shifts(epoch, kind, end)
        return fit_shift_exponent(t["x"], t["shift"], t["se"])

    def end_evidence(self, epoch: int, kind: str, end: str) -> verdicts.ShiftEvidence:
        """The :class:`~hessian_lib.verdicts.ShiftEvidence` of one end of one matrix at one checkpoint, this network."""
        t, fit = self.shifts(epoch, kind, end), self.shift_fit(epoch, kind, end)
        return verdicts.ShiftEvidence(tuple(t["shift"]), tuple(t["se"]), fit["gamma_low"], fit["gamma_high"],
                                      flagged_fraction=float(t["flagged"].sum() / max(t["draws"].sum(), 1)),
                                      empirical_flagged=bool(t.attrs["empirical_flagged"]))

    def evidence(self, kind: str) -> dict[int, dict[str, verdicts.ShiftEvidence]]:
        """Epoch -> end -> the :class:`~hessian_lib.verdicts.ShiftEvidence` of the shift rule."""
        return {epoch: {end: self.end_evidence(epoch, kind, end) for end in ENDS[kind]} for epoch in self.epochs()}

    def shift_table(self) -> pd.DataFrame:
        """One row per (checkpoint, matrix, end): the shift rule's numbers and the exponent fit."""
        rows = []
        for epoch in self.epochs():
            for kind in KINDS:
                for end in ENDS[kind]:
                    t, fit = self.shifts(epoch, kind, end), self.shift_fit(epoch, kind, end)
                    ev = self.end_evidence(epoch, kind, end)
                    rows.append({
                        "epoch": epoch, "matrix": kind, "end": end, "empirical": t.attrs["empirical"],
                        "empirical flagged": t.attrs["empirical_flagged"],
                        "min shift/se": float(np.min(t["shift"] / t["se"])),
                        "significant at every B": ev.significant(),
                        "gamma": fit["gamma"], "gamma low": fit["gamma_low"], "gamma high": fit["gamma_high"],
                        "regime": ev.regime(), "resolved": ev.resolved(),
                        "word": verdicts.shift_end_verdict(ev) if ev.resolved() else "not resolved",
                        "points fitted": fit["n_used"],
                        "B at target se": int(np.sum(t["se/shift"] <= TARGET_SE_FRACTION)),
                        "draws": int(t["draws"].sum()), "flagged draws": int(t["flagged"].sum()),
                    })
        return pd.DataFrame(rows)

    def verdict(self, kind: str) -> tuple[str, dict[int, str]]:
        """The claim's verdict (claim 1: ``"hessian"``, claim 3: ``"ggn"``).

        By :func:`~hessian_lib.verdicts.shift_claim_verdict`.
        """
        return verdicts.shift_claim_verdict(self.evidence(kind))

    def predictions(self, epoch: int, kind: str, end: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        r"""The three noise models' predictions of the extreme eigenvalue (signed) for each B: name -> (value, error).

        Parameter-free, from the empirical extreme :math:`\theta` and the measured noise:
        isotropic Wigner (:func:`hessian_lib.laws.rmt.wigner_outlier` with :math:`s = s_1\sqrt x`),
        directional (:func:`hessian_lib.laws.rmt.directional_outlier` with :math:`s_v^2` along the
        extreme eigenvector) and rank-deficient Marchenko-Pastur
        (:func:`hessian_lib.laws.rmt.rank_deficient_outlier` with rank C - 1 per sample). The error
        propagates one standard error of :math:`s_1` (:math:`s_v^2`).
        """
        sp, noise = self.spectra[(epoch, kind)], self.noise[(epoch, kind)]
        theta = float(extreme_ritz(sp["empirical_values"], sp["empirical_residuals"], end)[0])
        x = 1.0 / np.asarray(sp["batch_sizes"], dtype=float) - 1.0 / self.n_data
        s1, s1_err = noise["s1"], noise["s1_err"]
        s2, s2_err = noise[f"s2_{end}"], noise[f"s2_{end}_err"]
        rank = int(sp["num_classes"]) - 1
        models = {
            "isotropic Wigner": lambda s, v: rmt.wigner_outlier(theta, s * np.sqrt(x)),
            "directional": lambda s, v: rmt.directional_outlier(theta, x, v),
            "rank-deficient MP": lambda s, v: rmt.rank_deficient_outlier(theta, s, x, self.dim, rank),
        }
        out = {}
        for name, f in models.items():
            lo = f(max(s1 - s1_err, 0.0), max(s2 - s2_err, 0.0))
            hi = f(s1 + s1_err, s2 + s2_err)
            out[name] = (np.asarray(f(s1, s2), dtype=float), np.abs(np.asarray(hi) - np.asarray(lo)) / 2)
        return out

    def measured_extremes(self, epoch: int, kind: str, end: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean extreme Ritz value (signed) over draws for each B, and its standard error."""
        sp = self.spectra[(epoch, kind)]
        value, _ = extreme_ritz(sp["batch_values"], sp["batch_residuals"], end)
        n = np.sum(np.isfinite(value), axis=1)
        return np.nanmean(value, axis=1), np.nanstd(value, axis=1, ddof=1) / np.sqrt(n)

    def prediction_table(self) -> pd.DataFrame:
        """How well each noise model predicts the measured extremes, one row per (checkpoint, matrix, end, model).

        ``rms rel. error``: RMS over B of (prediction - mean) / mean; ``max |z|``: the largest
        difference in units of the combined standard error (measurement and prediction);
        ``closest``: whether the model has the smallest RMS relative error of the three.
        """
        rows = []
        for epoch in self.epochs():
            for kind in KINDS:
                for end in ENDS[kind]:
                    mean, se = self.measured_extremes(epoch, kind, end)
                    group = []
                    for name, (pred, err) in self.predictions(epoch, kind, end).items():
                        rel = (pred - mean) / np.abs(mean)
                        z = (pred - mean) / np.sqrt(se**2 + err**2)
                        group.append({"epoch": epoch, "matrix": kind, "end": end, "model": name,
                                      "rms rel. error": float(np.sqrt(np.mean(rel**2))),
                                      "max |z|": float(np.max(np.abs(z)))})
                    best = min(r["rms rel. error"] for r in group)
                    rows += [{**r, "closest": r["rms rel. error"] == best} for r in group]
        return pd.DataFrame(rows)

    def checkpoint_table(self) -> pd.DataFrame:
        """One row per checkpoint: accuracies from the training run and the network's state on the N images."""
        history = {int(h["epoch"]): h for h in (self.train.history if self.train is not None else [])}
        rows = []
        for epoch in self.epochs():
            h, s = history.get(epoch, {}), self.states[epoch]
            rows.append({"epoch": epoch, "train acc. (running)": h.get("train_acc", math.nan),
                         "test acc.": h.get("test_acc", math.nan), "accuracy on the N images": s["accuracy"],
                         "loss on the N images": s["loss"], "mean max. softmax": s["mean_max_prob"]})
        return pd.DataFrame(rows)


@dataclass
class SpectraStudy:
    """The Spectra chapter over K independently trained networks.

    ``networks``: one :class:`SpectraResult` per network, in the order of ``seeds`` (their training
    seeds, :func:`~hessian_lib.experiments.training.network_seeds`). Claims 1 and 3 are judged on
    each network alone (:meth:`network_verdicts`) and on the networks pooled (:meth:`verdict`),
    whose intervals carry the variation between networks (:func:`pool_shift`).
    """

    networks: list[SpectraResult]
    seeds: tuple[int, ...]
    pool_seed: int = 0

    def __post_init__(self) -> None:
        self._pooled: dict[tuple[int, str, str], tuple[pd.DataFrame, dict[str, float]]] = {}

    @property
    def first(self) -> SpectraResult:
        """Network 0 (the one the single-network figures show)."""
        return self.networks[0]

    @property
    def dim(self) -> int:
        """P, the number of parameters of the networks."""
        return self.first.dim

    @property
    def n_data(self) -> int:
        """N, the images the empirical matrices average over."""
        return self.first.n_data

    def epochs(self) -> list[int]:
        """The checkpoints (epochs) measured, in order."""
        return self.first.epochs()

    def pooled(self, epoch: int, kind: str, end: str) -> tuple[pd.DataFrame, dict[str, float]]:
        """:func:`pool_shift` of one end of one matrix at one checkpoint over every network (cached)."""
        key = (epoch, kind, end)
        if key not in self._pooled:
            self._pooled[key] = pool_shift([net.spectra[(epoch, kind)] for net in self.networks], end,
                                           seed=child_seed(self.pool_seed, 7, epoch, KINDS.index(kind),
                                                           ENDS[kind].index(end)))
        return self._pooled[key]

    def pooled_evidence(self, epoch: int, kind: str, end: str) -> verdicts.ShiftEvidence:
        """The pooled :class:`~hessian_lib.verdicts.ShiftEvidence` (an end is flagged if it is in any network)."""
        t, fit = self.pooled(epoch, kind, end)
        return verdicts.ShiftEvidence(tuple(t["shift"]), tuple(t["se"]), fit["gamma_low"], fit["gamma_high"],
                                      flagged_fraction=float(t["flagged"].sum() / max(t["draws"].sum(), 1)),
                                      empirical_flagged=any(t.attrs["empirical_flagged"]))

    def evidence(self, kind: str) -> dict[int, dict[str, verdicts.ShiftEvidence]]:
        """Epoch -> end -> the pooled evidence."""
        return {e: {end: self.pooled_evidence(e, kind, end) for end in ENDS[kind]} for e in self.epochs()}

    def verdict(self, kind: str) -> tuple[str, dict[int, str]]:
        """The pooled verdict of claim 1 (``"hessian"``) or 3 (``"ggn"``) and its per-checkpoint words."""
        return verdicts.shift_claim_verdict(self.evidence(kind))

    def network_verdicts(self, kind: str) -> list[str]:
        """The claim's word from each network's own data, in network order."""
        return [net.verdict(kind)[0] for net in self.networks]

    def pooled_table(self) -> pd.DataFrame:
        """One row per (checkpoint, matrix, end): the pooled shift rule's numbers and each network's word there."""
        rows = []
        for epoch in self.epochs():
            for kind in KINDS:
                for end in ENDS[kind]:
                    t, fit = self.pooled(epoch, kind, end)
                    ev = self.pooled_evidence(epoch, kind, end)
                    per = []
                    for net in self.networks:
                        e = net.end_evidence(epoch, kind, end)
                        per.append(verdicts.shift_end_verdict(e) if e.resolved() else "not resolved")
                    rows.append({
                        "epoch": epoch, "matrix": kind, "end": end,
                        "min shift/se": float(np.min(t["shift"] / t["se"])),
                        "significant at every B": ev.significant(),
                        "significant at smallest B": ev.significant_at_smallest(),
                        "gamma": fit["gamma"], "gamma low": fit["gamma_low"], "gamma high": fit["gamma_high"],
                        "regime": ev.regime(), "resolved": ev.resolved(),
                        "word": verdicts.shift_end_verdict(ev) if ev.resolved() else "not resolved",
                        "per network": per, "draws": int(t["draws"].sum()), "flagged draws": int(t["flagged"].sum()),
                        "empirical flagged": int(sum(t.attrs["empirical_flagged"])),
                    })
        return pd.DataFrame(rows)


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
    networks = [_network_spectra(profile, run, seed=s, data_root=data_root, dev=dev, store=store, x=x, y=y,
                                 progress=progress) for s, run in zip(seeds, runs)]
    return SpectraStudy(networks=networks, seeds=seeds, pool_seed=seed)
