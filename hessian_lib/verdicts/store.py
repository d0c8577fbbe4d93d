"""The claims, one claim's verdict, how verdicts are written to and read from the results store, and the
scoreboard built from them (nothing is recomputed)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from hessian_lib.store import ResultsStore
from hessian_lib.verdicts._words import NO_CHAPTER, NOT_RUN, VERDICT_WORDS, agreement

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
