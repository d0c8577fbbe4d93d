"""What the Mixture chapter reads off its networks: tables, intervals, and the verdict of claim 8.

:func:`run_mixture` trains (or loads) and measures the K networks of both sides and the perceptrons
of the separation sweep (:mod:`hessian_lib.experiments.mixture`); :class:`MixtureStudy` compares
the sides by the rule of :mod:`hessian_lib.verdicts` (claim 8): the outlier count, the subspace
overlaps, the batch shift and the near-zero mass.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from hessian_lib import verdicts as V
from hessian_lib.experiments.mixture import SIDES, natural_network, shift_record, synthetic_network, welch_interval
from hessian_lib.experiments.spectra_analysis import fit_shift_exponent, pool_shift, shift_statistics
from hessian_lib.experiments.stages import run_stage, stage_config
from hessian_lib.experiments.theory import child_seed
from hessian_lib.experiments.training import network_seeds
from hessian_lib.mixture import GaussianMixture, make_mixture
from hessian_lib.profiles import Profile, load_profile
from hessian_lib.store import ResultsStore

__all__ = ["MEASURE_KEYS", "MixtureStudy", "mixture_step", "mixture_steps", "run_mixture", "step_name"]

#: The chapter whose stages (:mod:`~hessian_lib.experiments.stages`) this module runs.
CHAPTER = "05_mixture"

#: The scalar measures compared by an interval, by record key: (label, tolerance, claim-8 measure).
MEASURE_KEYS: dict[str, tuple[str, float, str]] = {
    "share_ggn": ("top eigenspace in the GGN's", V.CLAIM8_OVERLAP_TOLERANCE, "overlap"),
    "share_class": ("top eigenspace in the class-mean gradients'", V.CLAIM8_OVERLAP_TOLERANCE, "overlap"),
    "bulk": ("spectral mass near zero", V.CLAIM8_BULK_TOLERANCE, "bulk"),
}


def _evidence(table: pd.DataFrame, fit: dict[str, float], empirical_flagged: bool) -> V.ShiftEvidence:
    return V.ShiftEvidence(tuple(table["shift"]), tuple(table["se"]), fit["gamma_low"], fit["gamma_high"],
                           flagged_fraction=float(table["flagged"].sum() / max(table["draws"].sum(), 1)),
                           empirical_flagged=bool(empirical_flagged))


def _shift_word(evidence: V.ShiftEvidence) -> str:
    """The claim-1 word at the top of one Hessian; :data:`~hessian_lib.verdicts.INCONCLUSIVE` when not resolved."""
    return V.shift_end_verdict(evidence) if evidence.resolved() else V.INCONCLUSIVE


@dataclass
class MixtureStudy:
    """Both sides of the chapter, K networks each, and the separation sweep.

    ``records[side]``: one record per network (:func:`~hessian_lib.experiments.mixture.synthetic_network`
    with ``what="measure"`` for ``"mixture"``, :func:`~hessian_lib.experiments.mixture.natural_network`
    for ``"network"``), in the order of ``seeds``; ``sweep[separation]``: the perceptrons' Hessian
    spectra at each separation (``what="spectrum"``), same order; ``mixture``: the mixture at the
    chapter's separation.
    """

    profile: Profile
    seeds: tuple[int, ...]
    records: dict[str, list[dict[str, Any]]]
    sweep: dict[float, list[dict[str, Any]]]
    mixture: GaussianMixture
    pool_seed: int = 0
    _pooled: dict[str, tuple[pd.DataFrame, dict[str, float]]] = field(default_factory=dict, repr=False)

    @property
    def classes(self) -> int:
        """C, the number of classes of both sides."""
        return int(self.profile.mixture.classes)

    def values(self, side: str, key: str) -> np.ndarray:
        """The scalar ``key`` of every network of ``side`` [K] (float; NaN for a missing value)."""
        return np.asarray([float(r.get(key, math.nan)) for r in self.records[side]], dtype=float)

    def counts(self, side: str) -> list[int | None]:
        """Each network's outlier count, ``None`` where it is not resolved."""
        return [int(r["count"]) if bool(r["resolved"]) else None for r in self.records[side]]

    # --- the batch shift -----------------------------------------------------------------------

    def pooled(self, side: str) -> tuple[pd.DataFrame, dict[str, float]]:
        """:func:`~hessian_lib.experiments.spectra_analysis.pool_shift` of the top of the Hessian over the side's
        networks."""
        if side not in self._pooled:
            self._pooled[side] = pool_shift([shift_record(r) for r in self.records[side]], "top",
                                            seed=child_seed(self.pool_seed, 8, SIDES.index(side)))
        return self._pooled[side]

    def shift_evidence(self, side: str) -> V.ShiftEvidence:
        """The pooled :class:`~hessian_lib.verdicts.ShiftEvidence` of one side (flagged if any network's empirical top
        is)."""
        table, fit = self.pooled(side)
        return _evidence(table, fit, any(table.attrs["empirical_flagged"]))

    def shift_word(self, side: str) -> str:
        """The claim-1 word of the side's pooled shift at the top of the Hessian."""
        return _shift_word(self.shift_evidence(side))

    def network_shift(self, side: str, k: int) -> tuple[pd.DataFrame, dict[str, float], str]:
        """Network k's own shift table, exponent fit and claim-1 word."""
        table = shift_statistics(shift_record(self.records[side][k]), "top")
        fit = fit_shift_exponent(table["x"], table["shift"], table["se"])
        return table, fit, _shift_word(_evidence(table, fit, table.attrs["empirical_flagged"]))

    # --- the measures and the verdict ------------------------------------------------------------

    def interval(self, key: str) -> tuple[float, float, float]:
        """(difference, low, high): mixture minus network mean of ``key``, with Welch's interval over networks."""
        return welch_interval(self.values("mixture", key), self.values("network", key))

    def count_word(self) -> str:
        """Claim 8's count measure: whether the two sides' outlier counts agree within its tolerance."""
        return V.claim8_count_agreement(self.counts("mixture"), self.counts("network"), self.classes)

    def measure_words(self) -> dict[str, str]:
        """The three measures besides the count, each :data:`~hessian_lib.verdicts.AGREE`, ``DIFFER`` or
        ``INCONCLUSIVE``."""
        ggn, cls, bulk = (self.interval(k)[1:] for k in ("share_ggn", "share_class", "bulk"))
        return {"overlap": V.claim8_overlap_agreement(ggn, cls),
                "shift": V.claim8_shift_agreement(self.shift_word("mixture"), self.shift_word("network")),
                "bulk": V.claim8_equivalence(bulk, V.CLAIM8_BULK_TOLERANCE)}

    def verdict(self) -> str:
        """Claim 8 over all networks (:func:`~hessian_lib.verdicts.claim8_verdict`)."""
        return V.claim8_verdict(self.count_word(), self.measure_words())

    def network_verdicts(self) -> list[str]:
        """Claim 8 on each pair (perceptron k, network k) alone: point values instead of intervals, each network's
        own shift word."""
        words = []
        for k in range(len(self.seeds)):
            mix, net = self.records["mixture"][k], self.records["network"][k]
            diff = {key: float(mix[key]) - float(net[key]) for key in MEASURE_KEYS}
            measures = {"overlap": V.claim8_overlap_agreement((diff["share_ggn"],) * 2, (diff["share_class"],) * 2),
                        "shift": V.claim8_shift_agreement(self.network_shift("mixture", k)[2],
                                                          self.network_shift("network", k)[2]),
                        "bulk": V.claim8_equivalence((diff["bulk"],) * 2, V.CLAIM8_BULK_TOLERANCE)}
            count = V.claim8_count_agreement(self.counts("mixture")[k:k + 1], self.counts("network")[k:k + 1],
                                             self.classes)
            words.append(V.claim8_verdict(count, measures))
        return words

    def measures_table(self) -> pd.DataFrame:
        """One row per (side, network): accuracies and every measure."""
        rows = []
        for side in SIDES:
            for k, r in enumerate(self.records[side]):
                rows.append({"side": side, "network": k, "test acc.": float(r["test_accuracy"]),
                             "outliers": int(r["count"]), "gap ratio": float(r["gap_ratio"]),
                             "resolved": bool(r["resolved"]), "GGN share": float(r["share_ggn"]),
                             "class-mean share": float(r["share_class"]), "mass near 0": float(r["bulk"]),
                             "lambda_max": float(np.nanmax(r["hessian_values"])), "P": int(r["dim"]),
                             "shift word": self.network_shift(side, k)[2]})
        return pd.DataFrame(rows)

    def verdict_table(self) -> pd.DataFrame:
        """One row per measure: each side's value (median count, mean of the rest), the interval, the band, the word."""
        c = self.classes
        words = self.measure_words()
        med = {s: V.side_count(self.counts(s)) for s in SIDES}
        spans = " / ".join(f"{V.side_spread(self.counts(s)):g}" for s in SIDES)
        rows = [{"measure": "outlier count", "mixture": med["mixture"], "network": med["network"],
                 "difference [interval]": f"{med['mixture'] - med['network']:+g} (networks span {spans})",
                 "agrees within": f"{V.count_tolerance(c)} of C = {c}; each side's networks span at most that",
                 "word": self.count_word()}]
        for key, (label, tol, measure) in MEASURE_KEYS.items():
            d, lo, hi = self.interval(key)
            rows.append({"measure": label, "mixture": float(np.nanmean(self.values("mixture", key))),
                         "network": float(np.nanmean(self.values("network", key))),
                         "difference [interval]": f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]", "agrees within": f"±{tol:g}",
                         "word": words[measure] if measure != "overlap" else
                         V.claim8_equivalence((lo, hi), tol)})
        gamma = {s: self.pooled(s)[1] for s in SIDES}
        rows.append({"measure": "batch shift (gamma)", "mixture": gamma["mixture"]["gamma"],
                     "network": gamma["network"]["gamma"],
                     "difference [interval]": " / ".join(f"[{gamma[s]['gamma_low']:.2f}, {gamma[s]['gamma_high']:.2f}]"
                                                          for s in SIDES),
                     "agrees within": "same claim-1 word", "word": words["shift"]})
        return pd.DataFrame(rows)

    def validation_table(self) -> pd.DataFrame:
        """The perceptrons' Lanczos numbers against their exact spectra, one row per network."""
        c = self.classes
        rows = []
        for k, r in enumerate(self.records["mixture"]):
            exact, ritz = np.sort(r["exact_hessian"])[::-1][:c + 1], np.sort(r["hessian_values"])[::-1][:c + 1]
            rows.append({"network": k, "P": int(r["dim"]),
                         "top C+1 max. rel. error": float(np.max(np.abs(ritz - exact) / np.abs(exact))),
                         "outliers (exact)": int(r["exact_count"]), "outliers (Lanczos)": int(r["count"]),
                         "mass near 0 (exact)": float(r["exact_bulk"]), "mass near 0 (Lanczos)": float(r["bulk"]),
                         "GGN share (exact)": float(r["exact_share_ggn"]), "GGN share (Lanczos)": float(r["share_ggn"]),
                         "class share (exact)": float(r["exact_share_class"]),
                         "class share (Lanczos)": float(r["share_class"])})
        return pd.DataFrame(rows)

    def sweep_table(self) -> pd.DataFrame:
        """One row per (separation, network): accuracies, outlier count and mass near zero of the perceptron."""
        rows = []
        for sep, recs in self.sweep.items():
            for k, r in enumerate(recs):
                rows.append({"separation": sep, "network": k, "test acc.": float(r["test_accuracy"]),
                             "Bayes acc.": float(r["bayes_accuracy"]), "outliers": int(r["count"]),
                             "resolved": bool(r["resolved"]), "gap ratio": float(r["gap_ratio"]),
                             "mass near 0": float(r["bulk"])})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """One sentence per measure, with the numbers: the scoreboard's summary of claim 8."""
        c, words = self.classes, self.measure_words()
        each = {s: ", ".join("-" if n is None else str(n) for n in self.counts(s)) for s in SIDES}
        parts = [f"outliers {V.side_count(self.counts('mixture')):g} (mixture: {each['mixture']}) and "
                 f"{V.side_count(self.counts('network')):g} (network: {each['network']}) for C = {c}: "
                 f"{self.count_word()}"]
        for key, (label, tol, measure) in MEASURE_KEYS.items():
            d, lo, hi = self.interval(key)
            parts.append(f"{label} {np.nanmean(self.values('mixture', key)):.2f} against "
                         f"{np.nanmean(self.values('network', key)):.2f} (difference {d:+.2f} [{lo:+.2f}, {hi:+.2f}])")
        parts[-1] += f": overlap {words['overlap']}, mass near zero {words['bulk']}"
        fits = {s: self.pooled(s)[1] for s in SIDES}
        parts.append("batch shift gamma " + " and ".join(
            f"{fits[s]['gamma']:.2f} [{fits[s]['gamma_low']:.2f}, {fits[s]['gamma_high']:.2f}] ({s}: "
            f"{self.shift_word(s)})" for s in SIDES) + f": {words['shift']}")
        return "; ".join(parts)

    def numbers(self) -> dict[str, Any]:
        """The numbers behind the verdict, by name (for :class:`~hessian_lib.verdicts.Verdict`)."""
        out: dict[str, Any] = {f"{s} outlier count": V.side_count(self.counts(s)) for s in SIDES}
        for key in MEASURE_KEYS:
            d, lo, hi = self.interval(key)
            out.update({f"{key} difference": d, f"{key} low": lo, f"{key} high": hi})
        for s in SIDES:
            fit = self.pooled(s)[1]
            out.update({f"{s} gamma": fit["gamma"], f"{s} gamma low": fit["gamma_low"],
                        f"{s} gamma high": fit["gamma_high"], f"{s} shift word": self.shift_word(s)})
        out.update({f"{m} word": w for m, w in self.measure_words().items()}, **{"count word": self.count_word()})
        return out


def mixture_steps(profile: Profile) -> list[tuple[str | float, int]]:
    """The study's steps in order, ``(what, k)``: network k of the natural side (``"network"``), of the synthetic
    side (``"mixture"``), then of each separation of the sweep (a float)."""
    ks = range(profile.networks.count)
    return ([("network", k) for k in ks] + [("mixture", k) for k in ks]
            + [(float(sep), k) for sep in profile.mixture.separations for k in ks])


def step_name(what: str | float, k: int) -> str:
    """A step's name: ``natural network 0``, ``perceptron 1``, ``separation 2.5, perceptron 0``."""
    if what in SIDES:
        return f"natural network {k}" if what == "network" else f"perceptron {k}"
    return f"separation {float(what):g}, perceptron {k}"


def mixture_step(profile: Profile, what: str | float, k: int, *, seed: int, data_root: Any, device: Any,
                 store: ResultsStore) -> dict[str, Any]:
    """Train (or load) and measure the network of step ``(what, k)`` of :func:`mixture_steps` (cached), then store
    the stage's record under ``stage_config(CHAPTER, step_name(what, k), profile, seed)``."""
    network_seed = network_seeds(seed, profile.networks.count)[k]

    def compute() -> dict[str, Any]:
        if what == "network":
            return natural_network(profile, network_seed, data_root=data_root, device=device, store=store)
        if what == "mixture":
            return synthetic_network(profile, profile.mixture.separation, network_seed, seed=seed, store=store)
        return synthetic_network(profile, float(what), network_seed, seed=seed, store=store, what="spectrum")

    return run_stage(store, stage_config(CHAPTER, step_name(what, k), profile, seed), compute)


def run_mixture(
    profile: str | Profile = "cpu",
    *,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    device: str | torch.device | None = "auto",
    store: ResultsStore | str | os.PathLike = "results",
    progress: bool = False,
) -> MixtureStudy:
    """Train (or load) and measure the K networks of both sides and the separation sweep, cached in ``store``.

    Network k of each side is trained with ``network_seeds(seed, K)[k]``; the mixture's parameters
    come from ``seed``. The perceptrons are measured on the CPU (they are tiny), the natural networks
    on ``device``.
    """
    profile = load_profile(profile, overrides)
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    s = profile.mixture
    seeds = network_seeds(seed, profile.networks.count)
    steps = mixture_steps(profile)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc="mixture study", leave=False)
    records: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    sweep: dict[float, list[dict[str, Any]]] = {float(sep): [] for sep in s.separations}
    for what, k in steps:
        record = mixture_step(profile, what, k, seed=seed, data_root=data_root, device=device, store=store)
        (records[what] if what in SIDES else sweep[float(what)]).append(record)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    mix = make_mixture(s.classes, s.dim, s.separation, covariance_decay=s.covariance_decay, seed=seed)
    return MixtureStudy(profile=profile, seeds=seeds, records=records, sweep=sweep, mixture=mix, pool_seed=seed)
