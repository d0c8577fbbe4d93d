r"""Experiments of the Spectra chapter: batch against empirical Hessian and GGN on CIFAR-100.

For a trained network at several checkpoints, with N training images under test-time
transforms as "the dataset":

* the empirical spectrum (Lanczos on the operator over all N images), and
* batch spectra for B over a grid, several random batches of B images each (drawn without
  replacement), for the Hessian and the Gauss-Newton matrix;
* a direct estimate of the per-sample curvature noise,
  :math:`s_1^2 = \mathbb E_i \lVert H_i - H_{\mathrm{emp}}\rVert_F^2 / P` (Hutchinson probes), which
  is the single-sample Wigner scale of the Theory chapter;
* fits of :math:`\lambda(B)` by the linear (outlier) form :math:`a + b\,(1/B - 1/N)` and by the
  square-root (bulk-edge) form :math:`a + c\sqrt{1/B - 1/N}`;
* a dense-Hessian validation of Lanczos on a network small enough to diagonalise exactly.

Every result is cached in a :class:`~hessian_lib.store.ResultsStore` per (checkpoint, matrix),
so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from torch import nn

from hessian_lib import scaling
from hessian_lib.curvature import GGNOperator, HessianOperator, batch_operator, dense_ggn, dense_hessian, lanczos
from hessian_lib.device import resolve_device
from hessian_lib.experiments.training import TrainResult, curvature_inputs, train_experiment
from hessian_lib.profiles import Profile, load_profile
from hessian_lib.store import ResultsStore

__all__ = [
    "KINDS",
    "SpectraResult",
    "spectra_dataset",
    "spectrum_at",
    "per_sample_noise_scale",
    "fit_batch_dependence",
    "wigner_prediction",
    "directional_prediction",
    "claim_checks",
    "verdict",
    "dense_validation",
    "run_spectra",
]

KINDS = ("hessian", "ggn")
_OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator}


def _chunks(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def spectra_dataset(profile: Profile, data_root: Any = None, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """The N = ``spectra.dataset_size`` training images of the study: float32 [N, 3, 32, 32] (test-time), labels [N]."""
    return curvature_inputs(profile, data_root, device, size=profile.spectra.dataset_size)


def _lanczos_record(op, steps: int, seed: int, vectors: bool = False) -> dict[str, np.ndarray]:
    res = lanczos(op, steps, seed=seed, return_vectors=vectors)
    out = {"ritz_values": res.ritz_values.numpy(), "ritz_weights": res.ritz_weights.numpy()}
    if vectors:
        out["top_vector"] = res.ritz_vectors[-1].float().cpu().numpy()
        out["bottom_vector"] = res.ritz_vectors[0].float().cpu().numpy()
    return out


def spectrum_at(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    kind: str,
    profile: Profile,
    *,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Empirical and batch Lanczos spectra of one matrix (``kind``: hessian or ggn) at one set of weights.

    Returns arrays: ``empirical_values`` / ``empirical_weights`` [m_emp]; ``batch_values`` /
    ``batch_weights`` [len(B grid), draws, m]; ``batch_top`` / ``batch_bottom`` [len(B grid), draws]
    (extreme Ritz values); ``batch_sizes`` [len(B grid)]; ``empirical_top_vector`` /
    ``empirical_bottom_vector`` [P] (the extreme Ritz vectors); scalars ``empirical_top``,
    ``empirical_bottom``, ``dim`` (P) and ``dataset_size`` (N).
    """
    sizes = profile.spectra
    loss_fn = nn.CrossEntropyLoss()
    model.eval()
    emp = _OPERATORS[kind](model, loss_fn, _chunks(x, y, sizes.chunk_size))
    empirical = _lanczos_record(emp, sizes.empirical_lanczos_steps, seed, vectors=True)
    emp.clear_cache()
    grid = list(sizes.batch_sizes)
    m = sizes.lanczos_steps
    values = np.full((len(grid), sizes.draws, m), np.nan)
    weights = np.full((len(grid), sizes.draws, m), np.nan)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(grid) * sizes.draws, desc=f"{kind} batch spectra", leave=False)
    for i, b in enumerate(grid):
        for d in range(sizes.draws):
            op = batch_operator(kind, model, loss_fn, (x, y), b, seed=seed * 100_003 + 1_000 * i + d)
            rec = _lanczos_record(op, m, seed + d + 1)
            k = len(rec["ritz_values"])  # fewer on breakdown (rank-deficient batch GGN)
            values[i, d, :k] = rec["ritz_values"]
            weights[i, d, :k] = rec["ritz_weights"]
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return {
        "empirical_values": empirical["ritz_values"],
        "empirical_weights": empirical["ritz_weights"],
        "empirical_top_vector": empirical["top_vector"],
        "empirical_bottom_vector": empirical["bottom_vector"],
        "empirical_top": float(empirical["ritz_values"].max()),
        "empirical_bottom": float(empirical["ritz_values"].min()),
        "batch_sizes": np.asarray(grid),
        "batch_values": values,
        "batch_weights": weights,
        "batch_top": np.nanmax(values, axis=2),
        "batch_bottom": np.nanmin(values, axis=2),
        "dim": int(emp.dim),
        "dataset_size": int(len(y)),
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
    noise *along* each direction, ``s2_<name>`` :math:`= \mathbb E_i \lVert (I - vv^\top)(M_i - M)v\rVert^2`:
    the variance that second-order perturbation theory says pushes the eigenvalue of v, so that
    :math:`\lambda(B) \approx \theta + (1/B - 1/N)\, s_v^2/\theta`. For isotropic Wigner noise it equals
    :math:`s_1^2`; for noise concentrated on v's neighbourhood it is larger.
    """
    loss_fn = nn.CrossEntropyLoss()
    model.eval()
    emp = _OPERATORS[kind](model, loss_fn, _chunks(x, y, chunk_size))
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
        op = _OPERATORS[kind](model, loss_fn, (x[i:i + 1], y[i:i + 1]))
        diff = (op.matvec(block).reshape(len(block), -1) - m_block).double()
        fro2_list.append(float((diff[:probes] ** 2).sum(dim=1).mean()))
        for j, n in enumerate(names):
            d = diff[probes + j]
            v = block[probes + j].double()
            along[n].append(float((d - (d @ v) * v).pow(2).sum()))
    fro2 = np.asarray(fro2_list)
    mean = float(fro2.mean())
    s1 = float(np.sqrt(mean / emp.dim))
    err = float(fro2.std(ddof=1) / np.sqrt(len(fro2)) / (2 * np.sqrt(mean * emp.dim))) if len(fro2) > 1 else float("nan")
    out = {"s1": s1, "s1_err": err, "frobenius2": mean, "dim": int(emp.dim)}
    for n in names:
        out[f"s2_{n}"] = float(np.mean(along[n]))
    return out


def fit_batch_dependence(batch_sizes: np.ndarray, values: np.ndarray, n_data: int, empirical: float) -> dict[str, float]:
    r"""Fit extreme eigenvalues [len(B), draws] against B by the linear and the square-root form.

    Linear (outlier regime): :math:`\lambda(B) = a + b\,x`, :math:`x = 1/B - 1/N`.
    Square root (bulk-edge regime): :math:`\lambda(B) = a' + c\sqrt{x}`. Both are least squares
    on the means over draws, weighted by their standard errors; the reported ``*_rms`` is the
    RMS relative residual. ``a`` should match the empirical value when the model holds.
    """
    b = np.asarray(batch_sizes, dtype=float)
    mean = np.nanmean(values, axis=1)
    sd = np.nanstd(values, axis=1, ddof=1) if values.shape[1] > 1 else np.zeros_like(mean)
    se = np.maximum(sd / np.sqrt(values.shape[1]), 1e-3 * np.abs(mean) + 1e-12)
    x = 1.0 / b - 1.0 / n_data
    # include the empirical point (x = 0) with the smallest standard error of the grid
    xs = np.concatenate([x, [0.0]])
    ys = np.concatenate([mean, [empirical]])
    ws = 1.0 / np.concatenate([se, [se.min()]]) ** 2
    out: dict[str, float] = {}
    for name, feature in (("linear", xs), ("sqrt", np.sqrt(xs))):
        design = np.stack([np.ones_like(feature), feature], axis=1)
        w = np.sqrt(ws)
        coef, *_ = np.linalg.lstsq(design * w[:, None], ys * w, rcond=None)
        resid = (ys - design @ coef) / np.maximum(np.abs(ys), 1e-12)
        out[f"{name}_intercept"] = float(coef[0])
        out[f"{name}_slope"] = float(coef[1])
        out[f"{name}_rms"] = float(np.sqrt(np.mean(resid**2)))
    shift = scaling.fit_inverse_batch_shift(b, mean, n_data=n_data, weights=1.0 / se**2)
    out.update({"a": shift["a"], "a_err": shift["a_err"], "b": shift["b"], "b_err": shift["b_err"]})
    return out


class _MLP(nn.Module):
    """The validation network: 4x4 average-pooled images (48 inputs) -> hidden -> 100 classes."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, hidden), nn.Tanh(), nn.Linear(hidden, 100))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.pool(x))


def dense_validation(x: torch.Tensor, y: torch.Tensor, *, hidden: int, steps: int = 40, lanczos_steps: int = 80,
                     k: int = 5, seed: int = 0) -> pd.DataFrame:
    """Lanczos extremes against the exact eigenvalues of a dense Hessian and GGN of a small MLP.

    The MLP (P = 49 hidden + 101 * 100 ... see :class:`_MLP`) is trained for ``steps`` full-batch
    gradient steps on (x, y) first, so the spectrum is not that of initialisation. Returns one
    row per (matrix, end, rank) with the exact and Lanczos eigenvalues and their relative error.
    """
    torch.manual_seed(seed)
    x, y = x.cpu(), y.cpu()
    model = _MLP(hidden)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    rows = []
    for kind, dense_fn in (("hessian", dense_hessian), ("ggn", dense_ggn)):
        exact = torch.linalg.eigvalsh(dense_fn(model, loss_fn, (x, y))).numpy()
        res = lanczos(_OPERATORS[kind](model, loss_fn, (x, y)), lanczos_steps, seed=seed)
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
    :func:`per_sample_noise_scale`; ``train``: the training run; ``dim`` (P) and ``n_data`` (N).
    """

    train: TrainResult
    spectra: dict[tuple[int, str], dict[str, Any]]
    noise: dict[tuple[int, str], dict[str, float]]
    dim: int
    n_data: int

    def fits(self) -> pd.DataFrame:
        """One row per (checkpoint, matrix, end): the linear and square-root fits of the extreme eigenvalue."""
        rows = []
        for (epoch, kind), sp in self.spectra.items():
            ends = [("top", sp["batch_top"], sp["empirical_top"])]
            if kind == "hessian":
                ends.append(("bottom", sp["batch_bottom"], sp["empirical_bottom"]))
            for end, vals, emp in ends:
                fit = fit_batch_dependence(sp["batch_sizes"], vals, self.n_data, emp)
                rows.append({"epoch": epoch, "matrix": kind, "end": end, "empirical": emp, **fit})
        return pd.DataFrame(rows)

    def epochs(self) -> list[int]:
        return sorted({e for e, _ in self.spectra})


def _key(profile: Profile, seed: int, epoch: int, kind: str, train_key: str, what: str) -> dict[str, Any]:
    return {"experiment": "spectra", "version": 2, "what": what, "train": train_key, "epoch": int(epoch),
            "kind": kind, "spectra": dataclasses.asdict(profile.spectra), "seed": int(seed)}


def _iter_work(profile: Profile) -> Iterator[tuple[int, str]]:
    for epoch in profile.spectra.checkpoints:
        for kind in KINDS:
            yield epoch, kind


def run_spectra(
    profile: str | Profile = "cpu",
    *,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    store: ResultsStore | str | os.PathLike = "results",
    progress: bool = False,
) -> SpectraResult:
    """Train (or load) the profile's network, then compute every spectrum of the chapter, cached in ``store``."""
    profile = load_profile(profile, overrides)
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    dev = resolve_device(device)
    run = train_experiment(profile, seed=seed, data_root=data_root, device=dev, store=store, quiet=not progress)
    missing = [e for e in profile.spectra.checkpoints if e not in run.checkpoints]
    if missing:
        raise ValueError(f"spectra.checkpoints {missing} were not kept by the training run; "
                         f"available epochs: {sorted(run.checkpoints)}")
    x, y = spectra_dataset(profile, data_root, dev)
    spectra, noise = {}, {}
    for epoch, kind in _iter_work(profile):
        model = None

        def model_now():
            nonlocal model
            if model is None:
                model = run.model_at(epoch, device=dev)
            return model

        spectra[(epoch, kind)] = store.cached(
            _key(profile, seed, epoch, kind, run.key, "spectrum"),
            lambda: spectrum_at(model_now(), x, y, kind, profile, seed=seed, progress=progress))
        noise[(epoch, kind)] = store.cached(
            _key(profile, seed, epoch, kind, run.key, "noise"),
            lambda: per_sample_noise_scale(
                model_now(), x, y, kind, samples=profile.spectra.noise_samples, probes=profile.spectra.noise_probes,
                chunk_size=profile.spectra.chunk_size, seed=seed,
                directions={"top": spectra[(epoch, kind)]["empirical_top_vector"],
                            "bottom": spectra[(epoch, kind)]["empirical_bottom_vector"]}))
    any_spectrum = next(iter(spectra.values()))
    return SpectraResult(train=run, spectra=spectra, noise=noise, dim=int(any_spectrum["dim"]),
                         n_data=int(any_spectrum["dataset_size"]))


def wigner_prediction(result: SpectraResult, epoch: int, end: str = "top") -> np.ndarray:
    r"""Parameter-free prediction of the Hessian's extreme eigenvalue for each B of the grid [len(B)].

    :math:`\lambda(B) = \theta + s(B)^2/\theta` above the BBP threshold, else :math:`\pm 2 s(B)`,
    with :math:`\theta` the empirical extreme eigenvalue and :math:`s(B) = s_1\sqrt{1/B - 1/N}`
    from the directly measured :math:`s_1` (:func:`per_sample_noise_scale`). Nothing is fitted.
    """
    from hessian_lib import rmt

    sp = result.spectra[(epoch, "hessian")]
    s1 = result.noise[(epoch, "hessian")]["s1"]
    theta = sp["empirical_top"] if end == "top" else sp["empirical_bottom"]
    s = s1 * np.sqrt(1.0 / sp["batch_sizes"] - 1.0 / result.n_data)
    return np.asarray(rmt.wigner_outlier(theta, s), dtype=float)


def directional_prediction(result: SpectraResult, epoch: int, end: str = "top", kind: str = "hessian") -> np.ndarray:
    r"""Parameter-free prediction from the noise measured along the eigenvector itself [len(B)].

    For :math:`H_B = \theta vv^\top + \dots + \varepsilon`, the eigenvalue attached to v solves
    :math:`\lambda = \theta + v^\top\varepsilon v + v^\top\varepsilon P_\perp(\lambda - P_\perp H_B P_\perp)^{-1}P_\perp\varepsilon v`.
    Averaging (:math:`\mathbb E\, v^\top\varepsilon v = 0`) and neglecting the bulk against
    :math:`\lambda` gives :math:`\lambda = \theta + (1/B - 1/N)\, s_v^2/\lambda`, i.e.
    :math:`\lambda(B) = \tfrac12\big(\theta + \operatorname{sign}\theta\sqrt{\theta^2 + 4(1/B - 1/N)s_v^2}\big)`,
    with :math:`s_v^2` the ``s2_top`` / ``s2_bottom`` of :func:`per_sample_noise_scale`: the
    variance that actually couples to the eigenvector (a field-dependent variance profile) in
    place of the isotropic :math:`s_1^2`. For isotropic noise and small shifts it reduces to the
    Wigner outlier :math:`\theta + s^2/\theta`. Nothing is fitted.
    """
    sp = result.spectra[(epoch, kind)]
    s2 = result.noise[(epoch, kind)][f"s2_{end}"]
    theta = sp["empirical_top"] if end == "top" else sp["empirical_bottom"]
    x = 1.0 / sp["batch_sizes"] - 1.0 / result.n_data
    return 0.5 * (theta + np.sign(theta) * np.sqrt(theta**2 + 4.0 * x * s2))


def claim_checks(result: SpectraResult) -> pd.DataFrame:
    """The numbers behind the verdicts on claims 1-3, one row per (checkpoint, matrix, end).

    Columns: ``exceeds`` (fraction of batch sizes whose mean extreme eigenvalue is larger in
    magnitude than the empirical one), ``spearman`` (rank correlation of the magnitude with B;
    negative means it relaxes as B grows), the relative RMS residuals of the linear (1/B - 1/N)
    and square-root fits, for the Hessian ``wigner_error``: the RMS relative error of the
    parameter-free isotropic Wigner prediction (:func:`wigner_prediction`), and
    ``directional_error``: that of :func:`directional_prediction`.
    """
    from scipy.stats import spearmanr

    fits = result.fits()
    rows = []
    for _, row in fits.iterrows():
        sp = result.spectra[(row["epoch"], row["matrix"])]
        vals = sp["batch_top"] if row["end"] == "top" else sp["batch_bottom"]
        mean = np.nanmean(vals, axis=1)
        emp = row["empirical"]
        exceeds = float(np.mean(np.abs(mean) > abs(emp)))
        rho = float(spearmanr(sp["batch_sizes"], np.abs(mean)).statistic)
        entry = {"epoch": row["epoch"], "matrix": row["matrix"], "end": row["end"], "empirical": emp,
                 "smallest-B mean": float(mean[0]), "exceeds": exceeds, "spearman": rho,
                 "linear rms": row["linear_rms"], "sqrt rms": row["sqrt_rms"]}
        if row["matrix"] == "hessian":
            pred = wigner_prediction(result, row["epoch"], row["end"])
            entry["wigner_error"] = float(np.sqrt(np.mean(((mean - pred) / mean) ** 2)))
        pred = directional_prediction(result, row["epoch"], row["end"], row["matrix"])
        entry["directional_error"] = float(np.sqrt(np.mean(((mean - pred) / mean) ** 2)))
        rows.append(entry)
    return pd.DataFrame(rows)


def verdict(checks: pd.DataFrame, matrix: str, *, exceed_min: float = 0.9, rho_max: float = -0.7,
            pooled_min: float = 0.8, rho_partly: float = -0.5) -> str:
    """'holds', 'partly' or 'does not hold' for the batch-vs-empirical claim on one matrix.

    Holds: on every checkpoint and end, at least ``exceed_min`` of the batch sizes exceed the
    empirical magnitude, the magnitude falls with B (Spearman <= ``rho_max``) and the linear
    (1/B - 1/N) form fits at least as well as the square-root form. Partly: over all checkpoints
    and ends together at least ``pooled_min`` of the batch sizes exceed the empirical magnitude and
    every Spearman correlation is at most ``rho_partly`` (the ordering holds with exceptions, or
    the functional form differs). Otherwise it does not hold.
    """
    rows = checks[checks["matrix"] == matrix]
    if rows.empty:
        return "not measured"
    ordered = bool(((rows["exceeds"] >= exceed_min) & (rows["spearman"] <= rho_max)).all())
    linear = bool((rows["linear rms"] <= rows["sqrt rms"]).all())
    if ordered and linear:
        return "holds"
    if rows["exceeds"].mean() >= pooled_min and bool((rows["spearman"] <= rho_partly).all()):
        return "partly"
    return "does not hold"
