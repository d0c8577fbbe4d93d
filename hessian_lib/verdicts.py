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

from hessian_lib.store import ResultsStore

__all__ = [
    "CLAIMS",
    "DOES_NOT_HOLD",
    "HOLDS",
    "NOT_RUN",
    "NO_CHAPTER",
    "PARTLY",
    "VERDICT_WORDS",
    "Verdict",
    "load_verdicts",
    "record_verdict",
    "verdict_config",
]

#: The three verdict words a rule may return.
HOLDS, PARTLY, DOES_NOT_HOLD = "holds", "partly", "does not hold"
VERDICT_WORDS: tuple[str, ...] = (HOLDS, PARTLY, DOES_NOT_HOLD)
#: What the scoreboard shows for a claim whose chapter did not write a verdict in this build.
NOT_RUN = "not run"
#: What the scoreboard shows for a claim no chapter tests yet.
NO_CHAPTER = "no chapter yet"

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
}


@dataclass(frozen=True)
class Verdict:
    """One claim's verdict in one build.

    ``claim``: a key of :data:`CLAIMS`; ``verdict``: one of :data:`VERDICT_WORDS`; ``summary``: one
    sentence with the key numbers; ``numbers``: the numbers behind it (name -> value);
    ``scale``: what it was tested at (profile, network, images); ``evidence``: the page and
    anchor of the section with the evidence, relative to the book's root (``02_spectra.html#...``
    or ``book/02_spectra.html#...``, as the page is built).
    """

    claim: int
    verdict: str
    summary: str
    numbers: Mapping[str, Any] = field(default_factory=dict)
    scale: str = ""
    evidence: str = ""

    def __post_init__(self) -> None:
        if self.claim not in CLAIMS:
            raise ValueError(f"unknown claim {self.claim!r}; the claims are {sorted(CLAIMS)}")
        if self.verdict not in VERDICT_WORDS:
            raise ValueError(f"verdict must be one of {VERDICT_WORDS}, got {self.verdict!r}")


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
                               evidence=record.get("evidence", ""))
    return found
