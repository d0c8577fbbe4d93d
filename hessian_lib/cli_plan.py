"""The ``plan`` and ``run`` commands: list the experiments of a book build, and compute a shard of them."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hessian_lib.profiles import load_profile

__all__ = ["add_plan_commands", "plan_table"]

PLAN_HELP = """\
List every experiment a book build needs under a profile: its chapter, its store key, the keys it
depends on (a chapter's analysis needs its networks), an estimated cost in seconds on the profile's
device, and whether the results folder already holds it. The estimate's model and calibration are
described in hessian_lib/plan.py.

Examples:
  python -m hessian_lib plan --profile paper
  python -m hessian_lib plan --profile smoke --results /scratch/results --json
"""

RUN_HELP = """\
Compute shard k of n of the plan into a results folder, dependencies first. Shards may run at once,
on one machine or many sharing the folder: each result is claimed before it is computed, so no two
processes compute the same one, and a claim whose process died is taken over. A shard whose inputs
another shard has not stored yet waits (--wait seconds without progress), then stops naming them.

Without --shard, the shard comes from a SLURM array (SLURM_ARRAY_TASK_ID of SLURM_ARRAY_TASK_COUNT)
or, under torchrun, from the rank (RANK of WORLD_SIZE, on GPU LOCAL_RANK); otherwise the whole plan.

Examples:
  python -m hessian_lib run --profile paper --shard 3/32 --results /scratch/results
  sbatch --array=0-31 run.sbatch        (runs: python -m hessian_lib run --profile paper --results DIR)
  torchrun --nproc-per-node=8 -m hessian_lib run --profile paper --results /scratch/results
"""


def _settings(args: argparse.Namespace) -> tuple[Any, dict[str, str]]:
    from hessian_lib.cli import parse_overrides

    overrides = parse_overrides(args.overrides)
    return load_profile(args.profile, overrides), overrides


def plan_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of :func:`~hessian_lib.plan.plan_rows`, then the estimated time per chapter."""
    lines = [f"{'chapter':<11} {'key':<16} {'stored':<6} {'est. s':>10} {'deps':>4}  experiment"]
    for r in rows:
        stored = "-" if r["stored"] is None else ("yes" if r["stored"] else "no")
        lines.append(f"{r['chapter']:<11} {r['key']:<16} {stored:<6} {r['seconds']:>10.0f} {len(r['deps']):>4}  "
                     f"{r['name']}")
    lines += ["", "Estimated time per chapter (one device, jobs one after another):", ""]
    lines += ["| chapter | jobs | estimated hours |", "| --- | ---: | ---: |"]
    chapters = list(dict.fromkeys(r["chapter"] for r in rows))
    for c in chapters:
        mine = [r for r in rows if r["chapter"] == c]
        lines.append(f"| {c} | {len(mine)} | {sum(r['seconds'] for r in mine) / 3600:.2f} |")
    lines.append(f"| all | {len(rows)} | {sum(r['seconds'] for r in rows) / 3600:.2f} |")
    finish: dict[str, float] = {}
    for r in rows:  # dependencies come first
        finish[r["key"]] = r["seconds"] + max((finish.get(d, 0.0) for d in r["deps"]), default=0.0)
    lines += ["", f"Longest chain of dependent jobs: {max(finish.values(), default=0.0) / 3600:.2f} hours "
              f"(the least wall-clock time, with a device per job)."]
    return "\n".join(lines)


def _cmd_plan(args: argparse.Namespace) -> int:
    from hessian_lib.plan import build_plan, plan_rows
    from hessian_lib.store import ResultsStore

    profile, _ = _settings(args)
    rows = plan_rows(build_plan(profile, seed=args.seed, chapters=args.chapter or None), profile,
                     ResultsStore(args.results))
    print(json.dumps(rows, indent=1) if args.json else plan_table(rows))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from hessian_lib.data import check_data_root
    from hessian_lib.device import resolve_device
    from hessian_lib.shard import ShardError, parse_shard, rank_device, run_shard, shard_from_env

    _, overrides = _settings(args)
    shard = parse_shard(args.shard) if args.shard else (shard_from_env() or (0, 1))
    device = rank_device(args.device)
    resolve_device(device)
    data_root = check_data_root(args.data_root)
    try:
        run_shard(args.profile, shard=shard, overrides=overrides, seed=args.seed, results=args.results,
                  data_root=data_root, device=device, chapters=args.chapter or None, keys=args.key or None,
                  wait=args.wait, poll=args.poll)
    except ShardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def add_plan_commands(sub: Any) -> None:
    """Register ``plan`` and ``run`` on the subparsers ``sub`` of ``python -m hessian_lib``."""
    from hessian_lib.cli import add_common_options

    raw = argparse.RawDescriptionHelpFormatter
    plan = sub.add_parser("plan", help="list every experiment a book build needs, with its cost and status",
                          description=PLAN_HELP, formatter_class=raw)
    add_common_options(plan)
    plan.add_argument("--results", default="_build/results",
                      help="results folder to check (default: _build/results, the book's own)")
    plan.add_argument("--chapter", action="append", default=[], help="only this chapter's experiments (repeatable)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON (one object per experiment)")
    plan.set_defaults(func=_cmd_plan)

    run = sub.add_parser("run", help="compute one shard of the plan into a results folder",
                         description=RUN_HELP, formatter_class=raw)
    add_common_options(run)
    run.add_argument("--shard", default=None, metavar="K/N", help="compute shard K of N (0 <= K < N)")
    run.add_argument("--results", default="_build/results", help="results folder (default: _build/results)")
    run.add_argument("--chapter", action="append", default=[], help="only this chapter's experiments (repeatable)")
    run.add_argument("--key", action="append", default=[],
                     help="only the experiment with this store key, e.g. to redo one (repeatable; see plan)")
    run.add_argument("--wait", type=float, default=3600.0,
                     help="seconds to wait without progress for inputs other shards compute (default: 3600)")
    run.add_argument("--poll", type=float, default=10.0, help="seconds between looks at the store (default: 10)")
    run.set_defaults(func=_cmd_run)
