r"""What the Spectra chapter reads off its spectra: shift statistics, the exponent fit, pooling over networks, verdicts.

:class:`SpectraResult` holds everything :func:`~hessian_lib.experiments.spectra.run_spectra` measured on one
network (the spectra of :func:`~hessian_lib.experiments.spectra.spectrum_at`, the noise estimates, the network's
state); :class:`SpectraStudy` holds the K independently trained networks and judges claims 1 and 3
(:mod:`hessian_lib.verdicts`) on each network alone and on the networks pooled (:func:`pool_shift`, a two-stage
bootstrap over networks, then batch draws within each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

from hessian_lib import verdicts
from hessian_lib.experiments.theory import child_seed
from hessian_lib.experiments.training import TrainResult
from hessian_lib.laws import brackets, rmt, scaling

__all__ = [
    "ENDS",
    "KINDS",
    "POOL_MAX_UNFITTED",
    "POOL_REPLICATES",
    "PREDICTIONS",
    "RESIDUAL_TOLERANCE",
    "TARGET_SE_FRACTION",
    "SpectraResult",
    "SpectraStudy",
    "extreme_ritz",
    "fit_shift_exponent",
    "pool_shift",
    "shift_statistics",
]

KINDS = ("hessian", "ggn")
#: The ends of each matrix the claims are about: both ends of the Hessian, the top of the GGN (PSD).
ENDS: dict[str, tuple[str, ...]] = {"hessian": ("top", "bottom"), "ggn": ("top",)}
#: The draws per B aim at a standard error of the shift of at most this fraction of the shift.
TARGET_SE_FRACTION = 0.25
#: An extreme Ritz value whose residual bound exceeds this fraction of its magnitude is flagged.
RESIDUAL_TOLERANCE = 0.01
#: The three noise models whose predictions are compared with the measured extremes.
PREDICTIONS = ("isotropic Wigner", "directional", "rank-deficient MP")


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


def shift_statistics(sp: dict[str, Any], end: str) -> pd.DataFrame:
    r"""The shift of one end of one matrix, one row per B.

    Columns: ``B``; ``x`` :math:`= 1/B - 1/N`; ``draws``; ``mean |lambda_B|``; ``shift``
    :math:`\Delta(B)`; ``se`` (its standard error over draws: the sample standard deviation over
    :math:`\sqrt{\text{draws}}`); ``se/shift``; ``required`` (the draws the first stage asked
    for, :func:`~hessian_lib.experiments.spectra.required_draws`, the larger over the matrix's ends);
    ``flagged`` (draws whose extreme Ritz value has a residual bound above :data:`RESIDUAL_TOLERANCE` of its
    magnitude). ``attrs`` hold the empirical extreme (``empirical``, signed), its residual bound and whether it
    is flagged.
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

    ``spectra``: the :func:`~hessian_lib.experiments.spectra.spectrum_at` records of the K networks at one
    checkpoint (same B grid and N). The pooled shift is the mean over networks of each network's :math:`\Delta(B)`. Its
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


@dataclass
class SpectraResult:
    """Everything the Spectra chapter shows.

    ``spectra[(epoch, kind)]``: the dict of :func:`~hessian_lib.experiments.spectra.spectrum_at`;
    ``noise[(epoch, kind)]``: the dict of :func:`~hessian_lib.experiments.spectra.per_sample_noise_scale`;
    ``states[epoch]``: the dict of :func:`~hessian_lib.experiments.spectra.network_state` on the N images;
    ``train``: the training run; ``dim`` (P) and ``n_data`` (N).
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
