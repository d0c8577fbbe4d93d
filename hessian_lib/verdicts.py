"""Every claim's verdict, in one place: the words, the claims, and how verdicts reach the scoreboard.

A verdict is decided by a rule fixed before the data is seen. Each rule lives in this module
as a function of the measured numbers, with its thresholds as named constants; a chapter
formats its prose from the same constants and writes the verdict, with the numbers behind it,
to the results store (:func:`record_verdict`). The scoreboard chapter reads the verdicts of
the current build back (:func:`load_verdicts`) and never recomputes them: a claim whose
verdict is missing, or was written by an earlier build, shows as :data:`NOT_RUN`.

>>> v = Verdict(claim=2, verdict=HOLDS, summary="outliers within 1.6%", numbers={"max_error": 0.016},
...             scale="P = 800", evidence="01_theory.html#the-bbp-transition")
>>> v.verdict in VERDICT_WORDS
True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from hessian_lib.store import ResultsStore

__all__ = [
    "AGREE",
    "CLAIM2_TOLERANCE",
    "CLAIM2_WINDOW",
    "CLAIM4_ALTERNATIVE",
    "CLAIM4_SLOPE",
    "CLAIM4_SMALL_BATCHES",
    "CLAIM5_ALTERNATIVE",
    "CLAIM5_NULL",
    "CLAIM5_SLOPE",
    "CLAIM6_GAP_PP",
    "CLAIM6_FLOOR_PP",
    "CLAIM6_LEVEL",
    "CLAIM7_FLAT",
    "CLAIM7_HORIZON_FACTOR",
    "CLAIM7_NULL",
    "CLAIM8_BULK_TOLERANCE",
    "CLAIM8_BULK_WINDOW",
    "CLAIM8_COUNT_TOLERANCE",
    "CLAIM8_GAP_RATIO",
    "CLAIM8_LEVEL",
    "CLAIM8_MEASURES",
    "CLAIM8_OVERLAP_TOLERANCE",
    "CLAIM8_RESIDUAL",
    "CLAIM8_SEARCH_FACTOR",
    "CLAIMS",
    "CLAIM_CHAPTERS",
    "DIFFER",
    "DOES_NOT_HOLD",
    "EDGE_GAMMA",
    "GAMMA_CONFIDENCE",
    "HOLDS",
    "INCONCLUSIVE",
    "NOT_RUN",
    "NO_CHAPTER",
    "OUTLIER_GAMMA",
    "PARITY_POINTS",
    "PARTLY",
    "SCALING_LEVEL",
    "SHIFT_SIGMAS",
    "UNRESOLVED_FRACTION",
    "VERDICT_WORDS",
    "OutlierCount",
    "ScoreboardRow",
    "ShiftEvidence",
    "Verdict",
    "agreement",
    "bulk_fraction",
    "claim2_verdict",
    "claim4_conditions",
    "claim4_verdict",
    "claim5_verdict",
    "claim6_verdict",
    "claim7_verdict",
    "claim8_count_agreement",
    "claim8_equivalence",
    "claim8_overlap_agreement",
    "claim8_shift_agreement",
    "claim8_verdict",
    "combine_parts",
    "count_tolerance",
    "formula_reproduced",
    "in_threshold_window",
    "interval_above",
    "interval_contains",
    "interval_within",
    "load_verdicts",
    "outlier_count",
    "paired_interval",
    "parity_holds",
    "record_verdict",
    "scoreboard",
    "shift_checkpoint_verdict",
    "shift_claim_verdict",
    "shift_end_verdict",
    "side_count",
    "stable_lr_range",
    "t_quantile",
    "verdict_config",
    "weakest",
]

#: The four verdict words a rule may return, strongest first. ``inconclusive``: the data cannot separate the
#: claim from its alternative (an interval that contains both values, a shift Lanczos has not resolved).
HOLDS, PARTLY, INCONCLUSIVE, DOES_NOT_HOLD = "holds", "partly", "inconclusive", "does not hold"
VERDICT_WORDS: tuple[str, ...] = (HOLDS, PARTLY, INCONCLUSIVE, DOES_NOT_HOLD)
#: What the scoreboard shows for a claim whose chapter did not write a verdict in this build.
NOT_RUN = "not run"
#: What the scoreboard shows for a claim no chapter tests yet.
NO_CHAPTER = "no chapter yet"


def weakest(words: Any) -> str:
    """The weakest of some verdict words, in the order of :data:`VERDICT_WORDS` (``does not hold`` last)."""
    words = list(words)
    if not words:
        raise ValueError("weakest() needs at least one verdict word")
    return max(words, key=VERDICT_WORDS.index)


def combine_parts(words: Any) -> str:
    """The verdict of a claim made of parts (ends of a spectrum, checkpoints), from the parts' words.

    :data:`HOLDS` when every part holds; :data:`DOES_NOT_HOLD` when no part holds and some part does
    not; :data:`PARTLY` when some part holds and some does not (a part that is itself
    :data:`PARTLY` counts as both); :data:`INCONCLUSIVE` otherwise (some part holds and the rest are
    inconclusive, or every part is inconclusive): the claim over all its parts is not established.
    """
    words = set(words)
    if not words or not words <= set(VERDICT_WORDS):
        raise ValueError(f"combine_parts() needs verdict words, got {sorted(words)}")
    some_hold = bool(words & {HOLDS, PARTLY})
    some_fail = bool(words & {DOES_NOT_HOLD, PARTLY})
    if some_hold and some_fail:
        return PARTLY
    if words == {HOLDS}:
        return HOLDS
    return DOES_NOT_HOLD if some_fail else INCONCLUSIVE


def agreement(pooled: str, per_network: Any) -> tuple[int, int]:
    """``(same, K)``: in how many of the K networks' own verdicts the pooled word came out."""
    words = list(per_network)
    return sum(w == pooled for w in words), len(words)


#: The paper's claims the book tests (PAPER.md, section 6), by number.
CLAIMS: dict[int, str] = {
    1: "Batch-Hessian extremal eigenvalues exceed the empirical ones in magnitude and relax as B grows, "
       "with a shift proportional to 1/B - 1/N.",
    2: "The BBP transition and the outlier formulas (Wigner and Marchenko-Pastur) hold.",
    3: "The same holds for the Generalised Gauss-Newton matrix.",
    4: "The largest stable SGD learning rate grows linearly with B, then saturates; "
       "linearly scaled runs reach the same accuracy.",
    5: "The largest stable Adam learning rate grows as the square root of B.",
    6: "The SLQ learner picks a sensible learning rate and momentum and trains competitively.",
    7: "The mechanism: the largest stable learning rate follows the curvature prediction 2/lambda_max(H_B).",
    8: "The Hessian spectrum of a multi-layer perceptron trained on Gaussian-mixture data is similar to that of a "
       "deep network trained on natural images.",
}

#: The chapter (notebook name) that tests each claim; a claim whose chapter is not in the book shows NO_CHAPTER.
CLAIM_CHAPTERS: dict[int, str] = {1: "02_spectra", 2: "01_theory", 3: "02_spectra", 4: "03_scaling",
                                  5: "03_scaling", 6: "04_learner", 7: "03_scaling", 8: "05_mixture"}


@dataclass(frozen=True)
class Verdict:
    """One claim's verdict in one build.

    ``claim``: a key of :data:`CLAIMS`; ``verdict``: one of :data:`VERDICT_WORDS`; ``summary``: one
    sentence with the key numbers; ``numbers``: the numbers behind it (name -> value);
    ``scale``: what it was tested at (profile, network, images); ``evidence``: the page and
    anchor of the section with the evidence, relative to the book's root (``02_spectra.html#...``
    or ``book/02_spectra.html#...``, as the page is built); ``per_network``: for a claim judged over
    independently trained networks, the word each network's own data gave (``verdict`` is then the
    pooled word), empty otherwise.
    """

    claim: int
    verdict: str
    summary: str
    numbers: Mapping[str, Any] = field(default_factory=dict)
    scale: str = ""
    evidence: str = ""
    per_network: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.claim not in CLAIMS:
            raise ValueError(f"unknown claim {self.claim!r}; the claims are {sorted(CLAIMS)}")
        if self.verdict not in VERDICT_WORDS:
            raise ValueError(f"verdict must be one of {VERDICT_WORDS}, got {self.verdict!r}")
        object.__setattr__(self, "per_network", tuple(str(w) for w in self.per_network))
        if not set(self.per_network) <= set(VERDICT_WORDS):
            raise ValueError(f"per_network words must be among {VERDICT_WORDS}, got {self.per_network}")

    def agreement(self) -> tuple[int, int] | None:
        """``(same, K)`` for a claim judged per network (:func:`agreement`), ``None`` otherwise."""
        return agreement(self.verdict, self.per_network) if self.per_network else None


def verdict_config(claim: int, *, profile: str, seed: int = 0) -> dict[str, Any]:
    """The store key of a claim's verdict: one slot per (claim, profile, seed), overwritten by each build."""
    return {"experiment": "verdict", "claim": int(claim), "profile": str(profile), "seed": int(seed)}


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


def record_verdict(store: ResultsStore | str, verdict: Verdict, *, build_id: str, profile: str,
                   seed: int = 0) -> None:
    """Write ``verdict`` to the store for the build ``build_id`` (atomically, replacing an older build's)."""
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    record = dataclasses.asdict(verdict)
    record["numbers"] = {str(k): _plain(v) for k, v in verdict.numbers.items()}
    record["per_network"] = list(verdict.per_network)
    record["build_id"] = str(build_id)
    store.save(verdict_config(verdict.claim, profile=profile, seed=seed), record)


def load_verdicts(store: ResultsStore | str, *, build_id: str, profile: str, seed: int = 0) -> dict[int, Verdict]:
    """The verdicts written by build ``build_id``, by claim; claims without one are absent."""
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    found: dict[int, Verdict] = {}
    for claim in CLAIMS:
        config = verdict_config(claim, profile=profile, seed=seed)
        if not store.has(config):
            continue
        record = store.load(config)
        if record.get("build_id") != str(build_id):
            continue
        found[claim] = Verdict(claim=int(record["claim"]), verdict=record["verdict"], summary=record["summary"],
                               numbers=dict(record.get("numbers", {})), scale=record.get("scale", ""),
                               evidence=record.get("evidence", ""),
                               per_network=tuple(record.get("per_network", ())))
    return found


# --- Claim 2: the BBP transition and the outlier formulas (Theory chapter) -------------------------

#: A formula counts as reproduced when every simulated extreme eigenvalue lies within this relative
#: error of its prediction (strictly below it) ...
CLAIM2_TOLERANCE = 0.05
#: ... leaving out the finite-P window around the BBP threshold, CLAIM2_WINDOW[0] < s/theta < CLAIM2_WINDOW[1]
#: (open interval), where P^(-1/3) corrections dominate.
CLAIM2_WINDOW: tuple[float, float] = (0.7, 1.4)


def in_threshold_window(ratio: Any) -> Any:
    """Whether s/theta lies inside the open window :data:`CLAIM2_WINDOW` (works elementwise on arrays)."""
    low, high = CLAIM2_WINDOW
    return (ratio > low) & (ratio < high)


def formula_reproduced(max_error: float) -> bool:
    """A formula is reproduced when its largest relative error is below :data:`CLAIM2_TOLERANCE` (NaN is not)."""
    return bool(max_error < CLAIM2_TOLERANCE)


def claim2_verdict(max_errors: Mapping[str, float]) -> str:
    """Claim 2 from the largest relative error of each formula check (outside the threshold window).

    :data:`HOLDS` when every formula is reproduced, :data:`PARTLY` when some but not all are,
    :data:`DOES_NOT_HOLD` when none is.
    """
    if not max_errors:
        raise ValueError("claim 2 needs at least one formula check")
    reproduced = [formula_reproduced(e) for e in max_errors.values()]
    return HOLDS if all(reproduced) else PARTLY if any(reproduced) else DOES_NOT_HOLD


# --- Claims 1 and 3: the batch shift of the extreme eigenvalues (Spectra chapter) ------------------

#: The shift Delta(B) counts as measured at a batch size when it exceeds this many standard errors (strictly).
SHIFT_SIGMAS = 2.0
#: Confidence level of the interval of the exponent gamma in Delta(B) ~ (1/B - 1/N)^gamma.
GAMMA_CONFIDENCE = 0.95
#: gamma of the outlier regime (theta + s^2/theta: a shift proportional to s^2, i.e. to 1/B - 1/N).
OUTLIER_GAMMA = 1.0
#: gamma of the bulk-edge regime (2s: a shift proportional to s, i.e. to the square root of 1/B - 1/N).
EDGE_GAMMA = 0.5


#: An end of a spectrum is **not resolved** when its empirical extreme Ritz value is flagged (residual bound above
#: 1% of its magnitude) or more than this fraction of its batch extremes are: the shift there would be measured on
#: values Lanczos has not converged, so the end is left out of the verdict (and said so).
UNRESOLVED_FRACTION = 0.5


@dataclass(frozen=True)
class ShiftEvidence:
    """The numbers behind the shift rule at one end of one matrix at one checkpoint.

    ``shift``, ``stderr``: Delta(B) and its standard error, one value per B of the grid in
    increasing order of B (the smallest B first); ``gamma_low``, ``gamma_high``: the
    :data:`GAMMA_CONFIDENCE` interval of gamma (NaN when gamma could not be fitted);
    ``flagged_fraction``: the fraction of the batch extremes whose residual bound is flagged;
    ``empirical_flagged``: whether the empirical extreme is.
    """

    shift: tuple[float, ...]
    stderr: tuple[float, ...]
    gamma_low: float
    gamma_high: float
    flagged_fraction: float = 0.0
    empirical_flagged: bool = False

    def _exceeds(self) -> list[bool]:
        return [bool(d > SHIFT_SIGMAS * e) for d, e in zip(self.shift, self.stderr, strict=True)]

    def significant(self) -> bool:
        """Delta(B) exceeds :data:`SHIFT_SIGMAS` standard errors at every B (NaN fails)."""
        return bool(self.shift) and all(self._exceeds())

    def significant_at_smallest(self) -> bool:
        """Delta(B) exceeds :data:`SHIFT_SIGMAS` standard errors at the smallest B (the first of the grid)."""
        return bool(self.shift) and self._exceeds()[0]

    def contains(self, gamma: float) -> bool:
        """The interval of gamma contains ``gamma`` (closed interval; NaN bounds contain nothing)."""
        return bool(self.gamma_low <= gamma <= self.gamma_high)

    def resolved(self) -> bool:
        """Neither the empirical extreme nor more than :data:`UNRESOLVED_FRACTION` of the batch extremes is flagged."""
        return not self.empirical_flagged and not self.flagged_fraction > UNRESOLVED_FRACTION

    def regime(self) -> str:
        """Which regime the interval contains: 'outlier (gamma = 1)', 'bulk edge (gamma = 1/2)', 'both' or 'neither'."""
        outlier, edge = self.contains(OUTLIER_GAMMA), self.contains(EDGE_GAMMA)
        return "both" if outlier and edge else "outlier (gamma = 1)" if outlier else \
            "bulk edge (gamma = 1/2)" if edge else "neither"


def shift_end_verdict(evidence: ShiftEvidence) -> str:
    """The shift rule at one end of one matrix at one checkpoint, resolved or not (:func:`shift_checkpoint_verdict`).

    :data:`HOLDS` when Delta(B) exceeds :data:`SHIFT_SIGMAS` standard errors at every B and the
    interval of gamma contains :data:`OUTLIER_GAMMA` and excludes :data:`EDGE_GAMMA`;
    :data:`DOES_NOT_HOLD` when the shift is not significant at the smallest B, or the interval
    excludes :data:`OUTLIER_GAMMA` and contains :data:`EDGE_GAMMA`; :data:`INCONCLUSIVE` otherwise
    (an interval holding both values, or neither, or a shift significant at the smallest B only).
    """
    ev = evidence
    if not ev.significant_at_smallest() or (ev.contains(EDGE_GAMMA) and not ev.contains(OUTLIER_GAMMA)):
        return DOES_NOT_HOLD
    if ev.significant() and ev.contains(OUTLIER_GAMMA) and not ev.contains(EDGE_GAMMA):
        return HOLDS
    return INCONCLUSIVE


def shift_checkpoint_verdict(ends: Mapping[str, ShiftEvidence]) -> str:
    """The shift rule at one checkpoint, over the ends of one matrix ({'top': ..., 'bottom': ...}).

    Only the resolved ends (:meth:`ShiftEvidence.resolved`) are judged, each by
    :func:`shift_end_verdict`, and their words combined by :func:`combine_parts`; with no resolved
    end the checkpoint is :data:`INCONCLUSIVE`.
    """
    if not ends:
        raise ValueError("the shift rule needs at least one end")
    words = [shift_end_verdict(e) for e in ends.values() if e.resolved()]
    return combine_parts(words) if words else INCONCLUSIVE


def shift_claim_verdict(checkpoints: Mapping[int, Mapping[str, ShiftEvidence]]) -> tuple[str, dict[int, str]]:
    """Claims 1 (Hessian, both ends) and 3 (GGN, top end): the verdict over checkpoints after the first.

    ``checkpoints``: epoch -> end -> evidence; the earliest epoch is not judged (the network has
    barely trained). Each later checkpoint gets :func:`shift_checkpoint_verdict`, and the claim
    :func:`combine_parts` of them. Returns the verdict and the per-checkpoint verdicts of the judged epochs.
    """
    epochs = sorted(checkpoints)
    if len(epochs) < 2:
        raise ValueError("the shift claims need at least two checkpoints (the first is not judged)")
    judged = {e: shift_checkpoint_verdict(checkpoints[e]) for e in epochs[1:]}
    return combine_parts(judged.values()), judged


# --- The scoreboard --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreboardRow:
    """One claim on the scoreboard: ``verdict`` is a verdict word, :data:`NOT_RUN` or :data:`NO_CHAPTER`;
    ``evidence`` is a link relative to the chapters' folder (``01_theory.html#anchor``), empty if none;
    ``per_network``: the words of the independently trained networks when the claim was judged per network."""

    claim: int
    statement: str
    verdict: str
    numbers: str
    scale: str
    evidence: str
    per_network: tuple[str, ...] = ()

    def agreement(self) -> str:
        """'2 of 3 networks': in how many networks the pooled word came out; empty when not judged per network."""
        if not self.per_network or self.verdict not in VERDICT_WORDS:
            return ""
        same, k = agreement(self.verdict, self.per_network)
        return f"{same} of {k} networks"


def _chapter_link(evidence: str) -> str:
    return evidence.removeprefix("/").removeprefix("book/")


def scoreboard(store: ResultsStore | str, *, build_id: str, profile: str, seed: int = 0,
               chapters: Any = ()) -> list[ScoreboardRow]:
    """A row per claim, from the verdicts build ``build_id`` wrote; nothing is recomputed.

    ``chapters``: the chapter names in the book (``01_theory``, ...). A claim whose chapter is not
    among them shows :data:`NO_CHAPTER`; one whose chapter wrote no verdict in this build, :data:`NOT_RUN`.
    """
    present = {str(c).rsplit("/", 1)[-1] for c in chapters}
    found = load_verdicts(store, build_id=build_id, profile=profile, seed=seed)
    rows = []
    for claim, statement in CLAIMS.items():
        chapter = CLAIM_CHAPTERS[claim]
        if chapter not in present:
            rows.append(ScoreboardRow(claim, statement, NO_CHAPTER, "", "", ""))
        elif claim not in found:
            rows.append(ScoreboardRow(claim, statement, NOT_RUN, "", "", f"{chapter}.html"))
        else:
            v = found[claim]
            rows.append(ScoreboardRow(claim, statement, v.verdict, v.summary, v.scale,
                                      _chapter_link(v.evidence) or f"{chapter}.html", v.per_network))
    return rows


# --- Claim 6: the SLQ learner (Learner chapter) ----------------------------------------------------

#: Claim 6 holds when the Polyak learner's mean final test accuracy is at most this many percentage points
#: below that of the best validated SGD (inclusive; above it is fine) ...
CLAIM6_GAP_PP = 2.0
#: ... and the lower end of the interval of the seed-paired difference (learner minus SGD, points) lies above
#: minus this many points (strictly). It does not hold when the whole interval lies below ``-CLAIM6_GAP_PP``.
CLAIM6_FLOOR_PP = 4.0
#: Confidence level of that interval (Student's t on the paired differences, one per seed).
CLAIM6_LEVEL = 0.95


def stable_lr_range(lrs: Any, diverged: Any) -> tuple[float, float] | None:
    """``(lowest, highest)`` grid learning rate none of whose runs diverged; ``None`` if every one diverged.

    ``lrs`` and ``diverged`` are parallel sequences, one entry per run (a learning rate may repeat over seeds).
    """
    lrs, diverged = [float(v) for v in lrs], [bool(d) for d in diverged]
    if len(lrs) != len(diverged):
        raise ValueError(f"{len(lrs)} learning rates but {len(diverged)} divergence flags")
    bad = {lr for lr, d in zip(lrs, diverged) if d}
    stable = sorted(set(lrs) - bad)
    return (stable[0], stable[-1]) if stable else None


def t_quantile(pairs: int, level: float = CLAIM6_LEVEL) -> float:
    """Student's t quantile of a two-sided ``level`` interval over ``pairs`` pairs (``pairs - 1`` degrees of freedom).

    >>> round(t_quantile(2), 2), round(t_quantile(3), 2)
    (12.71, 4.3)
    """
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, pairs - 1))


def paired_interval(differences: Any, level: float = CLAIM6_LEVEL) -> tuple[float, float, float]:
    """``(mean, low, high)`` of seed-paired differences: Student's t interval at ``level`` on ``n - 1`` degrees
    of freedom (``n`` >= 2 pairs; with 2 pairs the t quantile is 12.7, so the interval is wide unless the pairs
    agree closely). A NaN difference gives a NaN interval.

    >>> m, lo, hi = paired_interval([-1.0, -1.0, -1.0])
    >>> (m, lo, hi)
    (-1.0, -1.0, -1.0)
    """
    d = np.asarray(differences, dtype=float).reshape(-1)
    if d.size < 2:
        raise ValueError(f"a paired interval needs at least 2 pairs (seeds), got {d.size}")
    if not np.all(np.isfinite(d)):
        return math.nan, math.nan, math.nan
    mean = float(d.mean())
    half = t_quantile(d.size, level) * float(d.std(ddof=1)) / math.sqrt(d.size)
    return mean, mean - half, mean + half


def claim6_verdict(learner_acc: Any, sgd_acc: Any) -> str:
    """Claim 6 from the Polyak learner's and the best validated SGD's final test accuracies (fractions),
    one per seed, paired by seed (same initialisation and data order).

    With :math:`d_s` the difference in points and :func:`paired_interval` ``(low, high)``: :data:`HOLDS`
    when the mean accuracy is at most :data:`CLAIM6_GAP_PP` points below SGD's (mean difference at least -2) and
    ``low`` > -:data:`CLAIM6_FLOOR_PP`; :data:`DOES_NOT_HOLD` when ``high`` < -:data:`CLAIM6_GAP_PP`;
    :data:`INCONCLUSIVE` otherwise (a NaN accuracy, from a run that diverged, makes the whole verdict one
    that does not hold: a learner that diverges is not competitive). Whether its rates lie inside the grid's
    :func:`stable_lr_range` is reported beside the word, not part of it.
    """
    a, b = np.asarray(learner_acc, dtype=float).reshape(-1), np.asarray(sgd_acc, dtype=float).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"{a.size} learner accuracies but {b.size} SGD accuracies: they are paired by seed")
    if np.any(np.isnan(a)):
        return DOES_NOT_HOLD
    mean, low, high = paired_interval(100.0 * (a - b))
    if not math.isfinite(mean):
        return INCONCLUSIVE
    if mean >= -CLAIM6_GAP_PP - 1e-9 and low > -CLAIM6_FLOOR_PP:
        return HOLDS
    if high < -CLAIM6_GAP_PP:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


# --- Claims 4 and 5: largest stable learning rate against batch size (Scaling chapter) -------------

#: Confidence level of every slope interval of claims 4, 5 and 7.
SCALING_LEVEL = 0.95
#: Claim 4 looks for linear scaling in the small-batch regime: the slope over this many smallest batch sizes ...
CLAIM4_SMALL_BATCHES = 3
#: ... must have an interval containing this slope ...
CLAIM4_SLOPE = 1.0
#: ... and excluding this one (the square-root law, which the pure spiked-Wigner edge predicts).
CLAIM4_ALTERNATIVE = 0.5
#: Claim 5: the slope over the whole grid must have an interval containing this slope (square-root rule) ...
CLAIM5_SLOPE = 0.5
#: ... and excluding this one (linear scaling) ...
CLAIM5_ALTERNATIVE = 1.0
#: ... and this one (no growth with B), for holds; an interval that reaches it makes the claim partly at best.
CLAIM5_NULL = 0.0
#: Parity: a scaled run ends within this many percentage points of B0's test accuracy (means over seeds),
#: and a control more than this many below it.
PARITY_POINTS = 2.0
#: Claim 7 (the mechanism): measured over predicted largest stable learning rate is flat in B when the 95%
#: interval of its log-log slope against B lies inside [-CLAIM7_FLAT, CLAIM7_FLAT] (ends included) ...
CLAIM7_FLAT = 0.2
#: ... and it does not hold when that interval excludes this slope (a ratio that drifts with B).
CLAIM7_NULL = 0.0
#: The longer trial horizon of the mechanism check, as a multiple of the profile's trial steps (at least this).
CLAIM7_HORIZON_FACTOR = 4


def _ends(interval: Any) -> tuple[float, float]:
    """``(low, high)`` of an interval given as a pair or an object with ``low`` and ``high``."""
    low, high = (interval.low, interval.high) if hasattr(interval, "low") else interval
    return float(low), float(high)


def _missing(interval: Any) -> bool:
    return not all(math.isfinite(v) for v in _ends(interval))


def interval_contains(interval: Any, value: float) -> bool:
    """``low <= value <= high`` (ends included; a NaN end contains nothing)."""
    low, high = _ends(interval)
    return bool(low <= value <= high)


def interval_above(interval: Any, value: float) -> bool:
    """The whole interval lies strictly above ``value``."""
    return bool(_ends(interval)[0] > value)


def interval_within(interval: Any, low: float, high: float) -> bool:
    """The whole interval lies inside ``[low, high]`` (ends included; a NaN end does not)."""
    a, b = _ends(interval)
    return bool(low <= a and b <= high)


def claim4_conditions(small_slope: Any, critical_batch: Any, grid: Any, saturating_passes: bool,
                      parity: bool) -> dict[str, bool]:
    """The three parts of claim 4, by name.

    ``linear`` (a): the slope over the :data:`CLAIM4_SMALL_BATCHES` smallest batch sizes has an
    interval that contains :data:`CLAIM4_SLOPE` and excludes :data:`CLAIM4_ALTERNATIVE`;
    ``saturating`` (b): the interval of the saturating law's B* (``critical_batch``) lies inside
    the measured grid ``[min(grid), max(grid)]`` and the law passes through the final bracket at
    every grid point (``saturating_passes``); ``parity`` (c): linear-scaling parity
    (:func:`parity_holds`).
    """
    b = [float(v) for v in grid]
    return {
        "linear": interval_contains(small_slope, CLAIM4_SLOPE)
        and not interval_contains(small_slope, CLAIM4_ALTERNATIVE),
        "saturating": interval_within(critical_batch, min(b), max(b)) and bool(saturating_passes),
        "parity": bool(parity),
    }


def claim4_verdict(small_slope: Any, critical_batch: Any, grid: Any, saturating_passes: bool, parity: bool) -> str:
    """Claim 4 (SGD) from its three parts (:func:`claim4_conditions`).

    :data:`HOLDS` when all three pass; :data:`PARTLY` when ``linear`` passes and exactly one of the
    other two fails; :data:`INCONCLUSIVE` when the small-B slope interval contains both
    :data:`CLAIM4_ALTERNATIVE` and :data:`CLAIM4_SLOPE` (or was not measured); :data:`DOES_NOT_HOLD`
    otherwise.
    """
    c = claim4_conditions(small_slope, critical_batch, grid, saturating_passes, parity)
    if c["linear"]:
        failed = [name for name in ("saturating", "parity") if not c[name]]
        return HOLDS if not failed else PARTLY if len(failed) == 1 else DOES_NOT_HOLD
    if _missing(small_slope) or (interval_contains(small_slope, CLAIM4_SLOPE)
                                 and interval_contains(small_slope, CLAIM4_ALTERNATIVE)):
        return INCONCLUSIVE
    return DOES_NOT_HOLD


def claim5_verdict(grid_slope: Any, parity: bool) -> str:
    """Claim 5 (Adam) from the slope over the grid and square-root parity (:func:`parity_holds`).

    :data:`HOLDS` when the slope interval contains :data:`CLAIM5_SLOPE` and excludes
    :data:`CLAIM5_NULL` and :data:`CLAIM5_ALTERNATIVE`, and parity holds; :data:`PARTLY` when it
    contains :data:`CLAIM5_SLOPE` and excludes :data:`CLAIM5_ALTERNATIVE` but parity fails or the
    interval reaches :data:`CLAIM5_NULL`; :data:`INCONCLUSIVE` when it contains both
    :data:`CLAIM5_SLOPE` and :data:`CLAIM5_ALTERNATIVE` (or was not measured);
    :data:`DOES_NOT_HOLD` when it excludes :data:`CLAIM5_SLOPE`.
    """
    if _missing(grid_slope):
        return INCONCLUSIVE
    if not interval_contains(grid_slope, CLAIM5_SLOPE):
        return DOES_NOT_HOLD
    if interval_contains(grid_slope, CLAIM5_ALTERNATIVE):
        return INCONCLUSIVE
    reaches_null = _ends(grid_slope)[0] <= CLAIM5_NULL
    return HOLDS if parity and not reaches_null else PARTLY


def claim7_verdict(ratio_slope: Any) -> str:
    """Claim 7 (the mechanism) from the interval of the log-log slope of measured over predicted against B.

    :data:`HOLDS` when the interval lies inside ``[-CLAIM7_FLAT, CLAIM7_FLAT]``;
    :data:`DOES_NOT_HOLD` when it excludes :data:`CLAIM7_NULL`; :data:`INCONCLUSIVE` otherwise (or
    when it was not measured).
    """
    if _missing(ratio_slope):
        return INCONCLUSIVE
    if interval_within(ratio_slope, -CLAIM7_FLAT, CLAIM7_FLAT):
        return HOLDS
    return DOES_NOT_HOLD if not interval_contains(ratio_slope, CLAIM7_NULL) else INCONCLUSIVE


def parity_holds(base_acc: float, scaled_accs: Any, control_acc: float) -> bool:
    """Training parity (accuracies in percent, each a mean over seeds): every scaled run ends within
    :data:`PARITY_POINTS` of ``base_acc`` (B0) and the control ends more than :data:`PARITY_POINTS`
    below it. A NaN (a diverged run) fails the scaled test and counts as far below for the control."""
    scaled = [float(a) for a in scaled_accs]
    if not scaled:
        raise ValueError("parity needs at least one scaled run")
    within = all(abs(a - base_acc) <= PARITY_POINTS for a in scaled)
    control = float(control_acc)
    below = math.isnan(control) or control < base_acc - PARITY_POINTS
    return bool(within and below and math.isfinite(base_acc))


# --- Claim 8: a perceptron on a Gaussian mixture against a network on natural images (Mixture chapter) ---

#: The near-zero window of a Hessian spectrum: eigenvalues with |lambda| <= CLAIM8_BULK_WINDOW * lambda_max are bulk
#: by definition. The bulk's shape is measured as the spectral mass (Ritz weight) inside it (:func:`bulk_fraction`),
#: and the outlier search (:func:`outlier_count`) looks above it.
CLAIM8_BULK_WINDOW = 0.05
#: The outlier search looks at the top CLAIM8_SEARCH_FACTOR * C + 1 Ritz values (C classes): a count up to 2C.
CLAIM8_SEARCH_FACTOR = 2
#: Outliers are separated from the bulk when the largest ratio of neighbouring top Ritz values, theta_k / theta_(k+1),
#: is at least this (inclusive); the count is then k.
CLAIM8_GAP_RATIO = 1.5
#: A count is resolved when the Ritz values from the top down to the first below the gap have residual bounds at most
#: this fraction of their magnitude (of the window's edge, for a value inside the window).
CLAIM8_RESIDUAL = 0.01
#: The two spectra agree on the count when the sides' counts (medians over their networks) differ by at most this
#: fraction of C, rounded down, and at least one outlier (:func:`count_tolerance`).
CLAIM8_COUNT_TOLERANCE = 0.2
#: The two sides agree on a subspace overlap (a share in [0, 1]) when the interval of the difference of their means
#: lies inside [-CLAIM8_OVERLAP_TOLERANCE, CLAIM8_OVERLAP_TOLERANCE] ...
CLAIM8_OVERLAP_TOLERANCE = 0.2
#: ... and on the bulk's shape when the interval of the difference of the near-zero masses lies inside
#: [-CLAIM8_BULK_TOLERANCE, CLAIM8_BULK_TOLERANCE]. An interval entirely outside the band differs; any other
#: interval (one that crosses the band's edge, or was not measured) is inconclusive (:func:`claim8_equivalence`).
CLAIM8_BULK_TOLERANCE = 0.1
#: Confidence level of those intervals (Welch's t interval of the difference of the two sides' means over networks).
CLAIM8_LEVEL = 0.95
#: What one measure of claim 8 says: the two spectra agree on it, differ, or (:data:`INCONCLUSIVE`) cannot tell.
AGREE, DIFFER = "agree", "differ"
#: The measures besides the outlier count, as :func:`claim8_verdict` takes them.
CLAIM8_MEASURES: tuple[str, ...] = ("overlap", "shift", "bulk")


@dataclass(frozen=True)
class OutlierCount:
    """The gap criterion's reading of one spectrum: ``count`` outliers (0: none separated), the ``ratio``
    theta_k / theta_(k+1) of the largest gap searched, and whether the count is ``resolved``."""

    count: int
    ratio: float
    resolved: bool


def outlier_count(values: Any, residuals: Any, classes: int) -> OutlierCount:
    """The number of outliers separated from the bulk, from the Ritz values (any order) and their residual bounds.

    Sort the values from the top, theta_1 >= theta_2 >= ..., and let the window's edge be
    ``floor = CLAIM8_BULK_WINDOW * theta_1``. For each j from 1 to ``CLAIM8_SEARCH_FACTOR * classes``
    with theta_j above the floor, the ratio is theta_j / max(theta_(j+1), floor) (a value inside the
    window counts as the window's edge). The count is the j of the largest ratio when that ratio is
    at least :data:`CLAIM8_GAP_RATIO`, and 0 otherwise. It is resolved when theta_1, ...,
    theta_(count+1) (every value searched, for a count of 0) have residual bounds at most
    :data:`CLAIM8_RESIDUAL` times max(|theta|, floor). NaN values (Lanczos stopped early) are dropped;
    a spectrum without a positive value, or with a single value, has no outliers and is not resolved.
    """
    pairs = sorted(((float(v), float(r)) for v, r in zip(values, residuals, strict=True) if math.isfinite(float(v))),
                   reverse=True)
    if not pairs or pairs[0][0] <= 0:
        return OutlierCount(0, math.nan, False)
    top = pairs[0][0]
    floor = CLAIM8_BULK_WINDOW * top
    ratios = []
    for j in range(min(CLAIM8_SEARCH_FACTOR * int(classes), len(pairs) - 1)):
        upper = pairs[j][0]
        if upper <= floor:
            break
        ratios.append(upper / max(pairs[j + 1][0], floor))
    if not ratios:
        return OutlierCount(0, math.nan, False)
    best = max(range(len(ratios)), key=lambda j: (ratios[j], -j))
    count = best + 1 if ratios[best] >= CLAIM8_GAP_RATIO else 0
    checked = pairs[:count + 1] if count else pairs[:len(ratios) + 1]
    resolved = all(r <= CLAIM8_RESIDUAL * max(abs(v), floor) for v, r in checked)
    return OutlierCount(count, float(ratios[best]), bool(resolved))


def bulk_fraction(values: Any, weights: Any) -> float:
    """The spectral mass near zero: the total Ritz weight of the values with |theta| <= CLAIM8_BULK_WINDOW * max(theta).

    ``values``, ``weights``: Ritz values and weights of one Lanczos run (weights sum to 1), or exact
    eigenvalues with weights 1/P each. NaN values are dropped.
    """
    kept = [(float(v), float(w)) for v, w in zip(values, weights, strict=True) if math.isfinite(float(v))]
    if not kept:
        return math.nan
    edge = CLAIM8_BULK_WINDOW * max(v for v, _ in kept)
    return float(sum(w for v, w in kept if abs(v) <= edge))


def count_tolerance(classes: int) -> int:
    """The largest difference of outlier counts that still agrees: floor(CLAIM8_COUNT_TOLERANCE * C), at least 1."""
    return max(1, math.floor(CLAIM8_COUNT_TOLERANCE * int(classes) + 1e-9))


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def side_count(counts: Any) -> float:
    """One side's outlier count: the median of its networks' resolved counts (``None`` or NaN: not resolved);
    NaN when fewer than half of its networks have a resolved count."""
    counts = list(counts)
    resolved = [float(c) for c in counts if c is not None and math.isfinite(float(c))]
    if not counts or 2 * len(resolved) < len(counts):
        return math.nan
    return _median(resolved)


def claim8_count_agreement(mixture_counts: Any, network_counts: Any, classes: int) -> str:
    """The count measure: :data:`AGREE` when the two sides' counts (:func:`side_count`) differ by at most
    :func:`count_tolerance`, :data:`DIFFER` when they differ by more, :data:`INCONCLUSIVE` when a side has none."""
    a, b = side_count(mixture_counts), side_count(network_counts)
    if not (math.isfinite(a) and math.isfinite(b)):
        return INCONCLUSIVE
    return AGREE if abs(a - b) <= count_tolerance(classes) else DIFFER


def claim8_equivalence(interval: Any, tolerance: float) -> str:
    """A measure given as the interval of the difference of the two sides' means, against the band [-tol, tol].

    :data:`AGREE` when the interval lies inside the band (ends included); :data:`DIFFER` when it lies
    entirely outside (strictly above ``tolerance`` or strictly below ``-tolerance``); :data:`INCONCLUSIVE`
    otherwise (it crosses an edge of the band, or an end is NaN).
    """
    if _missing(interval):
        return INCONCLUSIVE
    low, high = _ends(interval)
    if -tolerance <= low and high <= tolerance:
        return AGREE
    if low > tolerance or high < -tolerance:
        return DIFFER
    return INCONCLUSIVE


def claim8_overlap_agreement(ggn_interval: Any, class_mean_interval: Any) -> str:
    """The overlap measure from its two parts (the share of the Hessian's top eigenspace explained by the GGN's and
    by the class-mean gradients'), each by :func:`claim8_equivalence` with :data:`CLAIM8_OVERLAP_TOLERANCE`:
    :data:`AGREE` when both agree, :data:`DIFFER` when either differs, :data:`INCONCLUSIVE` otherwise."""
    words = {claim8_equivalence(i, CLAIM8_OVERLAP_TOLERANCE) for i in (ggn_interval, class_mean_interval)}
    return DIFFER if DIFFER in words else AGREE if words == {AGREE} else INCONCLUSIVE


def claim8_shift_agreement(mixture_word: str, network_word: str) -> str:
    """The batch-shift measure from the claim-1 word of each side (:func:`shift_end_verdict` at the top of the
    Hessian, pooled over the side's networks; :data:`INCONCLUSIVE` for an end not resolved).

    :data:`AGREE` when both sides hold, or both do not hold (the same regime of gamma, separated from the other);
    :data:`DIFFER` when one holds and the other does not; :data:`INCONCLUSIVE` when either side is.
    """
    for word in (mixture_word, network_word):
        if word not in VERDICT_WORDS:
            raise ValueError(f"a claim-1 word is one of {VERDICT_WORDS}, got {word!r}")
    decided = {HOLDS, DOES_NOT_HOLD}
    if mixture_word not in decided or network_word not in decided:
        return INCONCLUSIVE
    return AGREE if mixture_word == network_word else DIFFER


def claim8_verdict(count: str, measures: Mapping[str, str]) -> str:
    """Claim 8 from the count measure (:func:`claim8_count_agreement`) and the other three (:data:`CLAIM8_MEASURES`).

    Every argument is :data:`AGREE`, :data:`DIFFER` or :data:`INCONCLUSIVE`. :data:`INCONCLUSIVE` when
    the count is; :data:`DOES_NOT_HOLD` when the counts differ; otherwise (the counts agree)
    :data:`HOLDS` when at least two of the other three measures agree, :data:`PARTLY` when even the
    inconclusive ones could not make two, and :data:`INCONCLUSIVE` when they could (the word depends
    on measures the data cannot decide).
    """
    allowed = {AGREE, DIFFER, INCONCLUSIVE}
    if set(measures) != set(CLAIM8_MEASURES):
        raise ValueError(f"claim 8 needs the measures {CLAIM8_MEASURES}, got {sorted(measures)}")
    if count not in allowed or not set(measures.values()) <= allowed:
        raise ValueError(f"claim-8 measures are among {sorted(allowed)}, got {count!r} and {dict(measures)}")
    if count == INCONCLUSIVE:
        return INCONCLUSIVE
    if count == DIFFER:
        return DOES_NOT_HOLD
    agree = sum(w == AGREE for w in measures.values())
    undecided = sum(w == INCONCLUSIVE for w in measures.values())
    if agree >= 2:
        return HOLDS
    return INCONCLUSIVE if agree + undecided >= 2 else PARTLY
