"""Command line of hessian_lib: python -m hessian_lib COMMAND [options]; COMMAND --help for each.

Commands:
  book      execute every chapter with papermill under a profile, then build the HTML book
  profiles  list the profiles and their sizes
  train     train the profile's network on its CIFAR-100 subset (results and checkpoints in --out)
  sweep     train over a grid of overrides, e.g. --grid train.lr=0.01,0.1 --grid train.batch_size=32,128
  spectrum  top eigenvalues or spectral density of a checkpoint's Hessian or Gauss-Newton matrix
  plan      list every experiment a book build needs, with its store key, cost and status
  run       compute one shard of the plan into a results folder (SLURM arrays, torchrun)

Every command validates its arguments (profile, overrides, data root, device)
before any heavy work starts and exits with status 2 and a one-line reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from hessian_lib.cli_plan import add_plan_commands
from hessian_lib.profiles import ProfileError, load_profile, profile_names
from hessian_lib.spectrum_command import add_spectrum_command

BOOK_HELP = """\
Execute every chapter with papermill under a profile, then build the HTML book. The chapters cache
their experiments in a results folder (default: <build-dir>/results). With --results, the book is
rendered from a folder computed elsewhere ('plan' lists what it needs, 'run' computes it): nothing is
computed, and a missing result stops the build before any chapter runs, naming it and the command
that computes it.

Examples:
  python -m hessian_lib book --profile cpu
  python -m hessian_lib book --profile paper --results /scratch/results
"""


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options every experiment command shares: profile, overrides, seed, data root, device."""
    parser.add_argument(
        "--profile", default="cpu", help=f"named sizes: one of {', '.join(profile_names())} (default: cpu)"
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
        help="override one size of the profile, e.g. --set theory.dim=400 (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--data-root", default=None,
                        help="folder holding CIFAR-100 (default: $HESSIAN_LIB_DATA or ~/.cache/hessian_lib/cifar100)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["theory.dim=400"]`` -> ``{"theory.dim": "400"}``; a malformed item raises ProfileError."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ProfileError(f"override {item!r} is not of the form SECTION.FIELD=VALUE")
        overrides[key.strip()] = value.strip()
    return overrides


def _cmd_profiles(args: argparse.Namespace) -> int:
    for name in profile_names():
        profile = load_profile(name)
        print(f"{name}: {profile.description}")
        if args.verbose:
            print(json.dumps(profile.to_dict(), indent=2))
    return 0


def _cmd_book(args: argparse.Namespace) -> int:
    from hessian_lib.book import run_book

    html = run_book(
        profile=args.profile,
        overrides=parse_overrides(args.overrides),
        seed=args.seed,
        data_root=args.data_root,
        device=args.device,
        chapters=args.chapter or None,
        build_dir=args.build_dir,
        build=not args.no_build,
        cell_timeout=args.cell_timeout or None,
        results_dir=args.results,
        compute_missing=args.compute_missing,
        rerun=args.rerun,
    )
    if html is not None:
        print(f"The book is at {html / 'index.html'}")
        print(f"How this build ran (commit, sizes, versions, data checksum, chapter times): "
              f"{html / 'book' / 'about.html'}")
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="results", help="results store folder (default: results)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its last checkpoint (default: start it over)")
    parser.add_argument("--recompute", action="store_true", help="train again even if the store holds the result")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        parts = [v for v in values.replace(",", " ").split() if v]
        if not sep or not key.strip() or not parts:
            raise ProfileError(f"grid item {item!r} is not of the form SECTION.FIELD=V1,V2,...")
        grid[key.strip()] = parts
    return grid


def _cmd_train(args: argparse.Namespace) -> int:
    from hessian_lib.experiments import train_experiment
    from hessian_lib.trainer import init_distributed, is_main_process

    profile = load_profile(args.profile, parse_overrides(args.overrides))
    init_distributed(args.device)
    run = train_experiment(profile, seed=args.seed, data_root=args.data_root, device=args.device, store=args.out,
                           resume=args.resume, recompute=args.recompute, quiet=args.quiet)
    if is_main_process():
        if run.diverged:
            print(f"diverged at step {run.diverged_step} (loss {run.diverged_loss:.4g})")
        else:
            print(f"test accuracy {run.test_acc:.4f}, train loss {run.train_loss:.4f}, {run.seconds:.1f} s")
        print(f"result {run.key} in {args.out}; checkpoints at epochs {sorted(run.checkpoints)}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from hessian_lib.experiments import sweep
    from hessian_lib.trainer import init_distributed, is_main_process

    grid = _parse_grid(args.grid)
    if not grid:
        raise ProfileError("sweep needs at least one --grid SECTION.FIELD=V1,V2,...")
    init_distributed(args.device)
    result = sweep(args.profile, grid, overrides=parse_overrides(args.overrides), seed=args.seed,
                   data_root=args.data_root, device=args.device, store=args.out, resume=args.resume,
                   quiet=args.quiet, progress=not args.quiet)
    if is_main_process():
        print(result.table())
        if "train.lr" in grid:
            group = "train.batch_size" if "train.batch_size" in grid else None
            stable = result.max_stable("train.lr", group or "train.batch_size")
            for g, lr in stable.items():
                print(f"largest stable lr{'' if g is None else f' at batch size {g}'}: {lr:.4g}")
    return 0


#: One example per command, shown at the end of its --help (plain text: argparse prints it as written).
_EXAMPLES = {
    None: "examples:\n  python -m hessian_lib profiles -v\n  python -m hessian_lib book --profile cpu\n"
          "  python -m hessian_lib train --help",
    "book": "example:\n  python -m hessian_lib book --profile smoke --chapter 01_theory --no-build",
    "train": "example:\n  python -m hessian_lib train --profile cpu --set train.epochs=3 --out results",
    "sweep": "example:\n  python -m hessian_lib sweep --profile cpu --grid train.lr=0.1,0.4,1.6 "
             "--grid train.batch_size=64,256",
    "profiles": "example:\n  python -m hessian_lib profiles --verbose",
}


def _plain_help(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction) -> None:
    """Give the main parser and every subcommand its example and a description printed as written."""
    parser.epilog = _EXAMPLES[None]
    for name, command in sub.choices.items():
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        if command.description is None:
            command.description = next(a.help for a in sub._choices_actions if a.dest == name) + "."
        if command.epilog is None and name in _EXAMPLES:
            command.epilog = _EXAMPLES[name]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m hessian_lib`` and its subcommands."""
    parser = argparse.ArgumentParser(prog="python -m hessian_lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    book = sub.add_parser("book", help="execute the chapters with papermill and build the HTML book",
                          description=BOOK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_options(book)
    book.add_argument("--chapter", action="append", default=[],
                      help="run only this chapter (name like 01_theory; repeatable); the others keep their last run")
    book.add_argument("--build-dir", default="_build", help="where the staging copy and the HTML go (default: _build)")
    book.add_argument("--no-build", action="store_true", help="execute the chapters but do not build the HTML")
    book.add_argument("--cell-timeout", type=float, default=0,
                      help="fail a chapter whose cell runs longer than this many seconds (default 0: no limit)")
    book.add_argument("--results", default=None,
                      help="render from this results folder (computed by 'run'); a missing result fails at once")
    book.add_argument("--compute-missing", action="store_true",
                      help="with --results: compute what the folder lacks instead of failing")
    book.add_argument("--rerun", action="store_true",
                      help="execute every chapter again, even those whose notebook, parameters, library and "
                           "stored results are unchanged since their last run (default: reuse those)")
    book.set_defaults(func=_cmd_book)

    train = sub.add_parser("train", help="train the profile's network on its CIFAR-100 subset")
    add_common_options(train)
    _add_run_options(train)
    train.set_defaults(func=_cmd_train)

    sweep = sub.add_parser("sweep", help="train over a grid of profile overrides (divergence is a data point)")
    add_common_options(sweep)
    _add_run_options(sweep)
    sweep.add_argument("--grid", action="append", default=[], metavar="SECTION.FIELD=V1,V2,...",
                       help="values of one profile key to sweep (repeatable; the grid is their product)")
    sweep.set_defaults(func=_cmd_sweep)

    add_plan_commands(sub)

    profiles = sub.add_parser("profiles", help="list the profiles")
    profiles.add_argument("-v", "--verbose", action="store_true", help="print every size")
    profiles.set_defaults(func=_cmd_profiles)
    add_spectrum_command(sub)
    _plain_help(parser, sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    from hessian_lib.book import BookError, ChapterError
    from hessian_lib.data import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ProfileError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ChapterError, BookError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
