"""Compute one shard of the plan (:mod:`hessian_lib.plan`) into a results store.

Shard k of n holds the jobs at positions k, k + n, k + 2n, ... of the plan (dependencies first).
A shard runs each of its jobs whose dependencies are stored, under a claim
(:class:`~hessian_lib.claims.Claim`), so that processes sharing a store never compute one result
at once; a job claimed elsewhere is left to its claimant. Jobs whose inputs another shard has not
stored yet are retried every ``poll`` seconds, up to ``wait`` seconds without progress, then
:class:`ShardError` names them and what they wait for.

Where the shard comes from: ``--shard k/n``, else ``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``
(minus ``SLURM_ARRAY_TASK_MIN``), and under ``torchrun`` each rank (``RANK`` of ``WORLD_SIZE``) is
a shard of its own, on GPU ``LOCAL_RANK``; with both, a SLURM task's ranks split its shard further.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from hessian_lib.claims import Claim
from hessian_lib.plan import Job, RunContext, build_plan
from hessian_lib.profiles import ProfileError, load_profile
from hessian_lib.store import ResultsStore

__all__ = ["ShardError", "ShardReport", "parse_shard", "shard_from_env", "shard_jobs", "run_shard", "run_command"]


class ShardError(RuntimeError):
    """A shard could not finish: inputs still missing after the wait, or a job stored no result."""


@dataclass
class ShardReport:
    """What a shard did: keys it ``computed``, found ``stored`` already, or saw stored by ``others``."""

    shard: tuple[int, int]
    computed: list[str] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)
    others: list[str] = field(default_factory=list)


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)``; ProfileError unless 0 <= k < n."""
    k, sep, n = str(text).partition("/")
    try:
        k_i, n_i = int(k), int(n)
    except ValueError:
        k_i = n_i = -1
    if not sep or not 0 <= k_i < n_i:
        raise ProfileError(f"--shard {text!r} is not of the form k/n with 0 <= k < n, e.g. 0/4")
    return k_i, n_i


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """The shard given by SLURM array and torchrun variables (module docstring); None when neither is set."""
    env = os.environ if env is None else env
    k, n = 0, 1
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        k = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        n = int(env["SLURM_ARRAY_TASK_COUNT"])
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        k, n = k * world + int(env["RANK"]), n * world
    if (k, n) == (0, 1) and "SLURM_ARRAY_TASK_ID" not in env and "RANK" not in env:
        return None
    return parse_shard(f"{k}/{n}")


def rank_device(device: str, env: Mapping[str, str] | None = None) -> str:
    """``device``, or ``cuda:LOCAL_RANK`` under torchrun when ``device`` is ``auto`` or ``cuda`` and a GPU is seen."""
    env = os.environ if env is None else env
    if "LOCAL_RANK" in env and device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            return f"cuda:{int(env['LOCAL_RANK'])}"
    return device


def shard_jobs(jobs: Sequence[Job], k: int, n: int) -> list[Job]:
    """The jobs of shard k of n: positions k, k + n, ... of ``jobs``."""
    return [job for i, job in enumerate(jobs) if i % n == k]


def run_command(profile: str, overrides: Mapping[str, Any], seed: int, results: str) -> str:
    """The ``run`` command line that computes the plan of these settings into ``results``."""
    sets = "".join(f" --set {k}={v}" for k, v in overrides.items())
    return f"python -m hessian_lib run --profile {profile}{sets}{f' --seed {seed}' if seed else ''} --results {results}"


def _has(store: ResultsStore, key: str) -> bool:
    return (store.root / key / "result.json").is_file()


def run_shard(profile: str = "cpu", *, shard: tuple[int, int] = (0, 1), overrides: Mapping[str, Any] | None = None,
              seed: int = 0, results: str | os.PathLike = "results", data_root: Any = None, device: str = "auto",
              chapters: Sequence[str] | None = None, keys: Sequence[str] | None = None,
              wait: float = 3600.0, poll: float = 10.0,
              heartbeat: float = 30.0, stale_after: float = 300.0,
              log: Callable[[str], None] | None = None) -> ShardReport:
    """Compute shard ``(k, n)`` of the plan of ``chapters`` (default: all) into the store at ``results``.

    ``keys``: only the jobs with these store keys (their dependencies must be stored or computed elsewhere).
    Returns a :class:`ShardReport`; raises :class:`ShardError` (see the module docstring)."""
    log = log or (lambda message: print(message, flush=True))
    p = load_profile(profile, overrides)
    k, n = shard
    store = ResultsStore(results)
    jobs = build_plan(p, seed=seed, chapters=chapters)
    names = {j.key: j.name for j in jobs}
    if keys is not None:
        unknown = sorted(set(keys) - {j.key for j in jobs})
        if unknown:
            raise ProfileError(f"not in the plan of these settings: {', '.join(unknown)} "
                               "(python -m hessian_lib plan lists it)")
        jobs = [j for j in jobs if j.key in set(keys)]
    ctx = RunContext(profile=p, seed=seed, store=store, data_root=data_root, device=device)
    report = ShardReport(shard=(k, n))
    pending = shard_jobs(jobs, k, n)
    log(f"shard {k}/{n}: {len(pending)} of {len(jobs)} jobs, store {store.root}")
    idle_since = time.monotonic()
    while pending:
        progressed = False
        for job in list(pending):
            if _has(store, job.key):
                if job.key not in report.others:
                    report.stored.append(job.key)
                pending.remove(job)
                progressed = True
                continue
            if any(not _has(store, d) for d in job.deps):
                continue
            with Claim(store.root, job.key, heartbeat=heartbeat, stale_after=stale_after) as claim:
                if not claim.held:
                    if job.key not in report.others:
                        report.others.append(job.key)
                    continue
                if not _has(store, job.key):
                    log(f"computing {job.chapter}: {job.name} ({job.key}) ...")
                    start = time.perf_counter()
                    job.run(ctx)
                    if not _has(store, job.key):
                        raise ShardError(f"{job.chapter}: {job.name} ({job.key}) finished without storing its result")
                    report.computed.append(job.key)
                    log(f"computed {job.key} in {time.perf_counter() - start:.1f} s")
            pending.remove(job)
            progressed = True
        if progressed:
            idle_since = time.monotonic()
        elif pending:
            if time.monotonic() - idle_since >= wait:
                lines = [f"  {j.chapter}: {j.name} ({j.key}) waits for "
                         + (", ".join(f"{names.get(d, d)} ({d})" for d in j.deps if not _has(store, d))
                            or "its claimant to finish") for j in pending]
                raise ShardError(f"shard {k}/{n}: {len(pending)} job(s) still wait after {wait:g} s:\n"
                                 + "\n".join(lines) + "\nRun the shards that hold them first, or all at once: "
                                 + run_command(p.name, dict(overrides or {}), seed, str(results)) + " --shard i/"
                                 + str(n))
            time.sleep(poll)
    log(f"shard {k}/{n} done: computed {len(report.computed)}, already stored {len(report.stored)}, "
        f"stored by other processes {len(report.others)}")
    return report
