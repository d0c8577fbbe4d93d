"""Stages: the units a book build's computation is planned, sharded and checked in.

A stage is a call of a chapter's experiment code that caches its own parts in the results store
(training runs, trials, spectra). When the stage finishes, :func:`run_stage` stores a small
record under :func:`stage_config`, so that whether a stage is done is one look-up, whatever its
parts were (a sweep's trials depend on its earlier outcomes, so they cannot be listed beforehand).
The chapters and :mod:`hessian_lib.plan` call the same stage functions, so the plan's keys are the
keys a build writes. A record hashes every size of the profile: after an override that a stage
does not read, the stage runs again, loading its parts from the store.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from hessian_lib.profiles import Profile
from hessian_lib.store import ResultsStore

__all__ = ["stage_config", "run_stage"]

T = TypeVar("T")
#: Changes when what a stage computes changes.
STAGE_VERSION = 1


def stage_config(chapter: str, stage: str, profile: Profile, seed: int) -> dict[str, Any]:
    """The config of the record of ``stage`` of ``chapter`` under ``profile`` (every size) and base ``seed``."""
    return {"experiment": "stage", "version": STAGE_VERSION, "chapter": chapter, "stage": stage,
            "profile": profile.to_dict(), "seed": int(seed)}


def run_stage(store: ResultsStore | None, config: dict[str, Any], compute: Callable[[], T]) -> T:
    """``compute()`` (which caches its parts in ``store``), then the stage's record stored; returns what it returned."""
    out = compute()
    if store is not None and not store.has(config):
        store.save(config, {"stage": config["stage"], "chapter": config["chapter"]})
    return out
