"""Book build times: cold, unchanged, after a prose-only edit, and every chapter again from a warm store.

    python benchmarks/bench_book.py --profile smoke          # about 10 minutes on 2 cores
    python benchmarks/bench_book.py --profile cpu --build-dir _build   # reuse a filled store (cold = a --rerun)

The book's sources (``_config.yml``, ``_toc.yml``, ``references.bib``, ``book/``) are copied into a temporary
project root, so the prose edit never touches the checkout; the build folder is ``--build-dir`` (default: a
fresh temporary one, so the first build is cold: every chapter executes and computes its results). Then, in one
process, one after the other, each a full ``run_book`` with the HTML:

1. **cold**: the first build (with ``--build-dir`` and a filled store: every chapter executes, loading);
2. **unchanged**: the same again, nothing edited (chapters reused; HTML step skipped);
3. **prose edit**: one sentence added to a markdown cell of ``--edit`` (that chapter's outputs reused with the
   new prose; the HTML of the changed page rebuilt);
4. **all chapters from the store**: ``rerun=True``, what an edit of the library costs: every chapter executes,
   loading its results from the now warm store.

Wall-clock seconds of each build are printed, with the console lines saying what each chapter did.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hessian_lib.book import ROOT_FILES, run_book  # noqa: E402


def _copy_sources(root: Path) -> None:
    for name in ROOT_FILES:
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "book", root / "book", ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    (root / ".vendor").symlink_to(REPO / ".vendor")


def _edit_prose(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "markdown" and len(c.source) > 200)
    cell.source += "\n\nThis sentence was added to time a prose-only rebuild."
    nbformat.write(nb, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--build-dir", default=None, help="build folder (default: a fresh temporary one)")
    parser.add_argument("--edit", default="01_theory", help="the chapter whose prose is edited")
    parser.add_argument("--skip-rerun", action="store_true", help="leave out step 4")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-book-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        _copy_sources(root)
        build_dir = Path(args.build_dir).resolve() if args.build_dir else Path(tmp) / "build"
        os.chdir(root)
        steps = [("cold", {"rerun": args.build_dir is not None}), ("unchanged", {}), ("prose edit", {}),
                 ("all chapters from the store", {"rerun": True})]
        if args.skip_rerun:
            steps = steps[:-1]
        times = {}
        for name, kwargs in steps:
            if name == "prose edit":
                _edit_prose(root / "book" / f"{args.edit}.ipynb")
            print(f"=== {name}", flush=True)
            start = time.perf_counter()
            run_book(args.profile, build_dir=build_dir, device="cpu", **kwargs)
            times[name] = time.perf_counter() - start
            print(f"=== {name}: {times[name]:.1f} s", flush=True)
        print(f"\nprofile {args.profile}, {os.cpu_count()} CPUs, build folder {build_dir}")
        for name, seconds in times.items():
            print(f"{name:<30} {seconds:8.1f} s")


if __name__ == "__main__":
    main()
