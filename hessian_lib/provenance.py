"""Provenance of a book build: the "About this build" page.

The pipeline (:func:`hessian_lib.book.run_book`) calls :func:`write_about_page` after the chapters
ran. The page states when the book was built, from which commit, under which profile with every size
it set, the seed, the device, the library versions, a checksum of the data root and each chapter's
execution time; it is added to the staged table of contents as the book's last page.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import yaml

from hessian_lib.figures import table_directive, table_markdown

__all__ = ["data_checksums", "git_commit", "write_about_page", "append_to_toc"]

_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def data_checksums(root: str | os.PathLike, cache: str | os.PathLike | None = None) -> tuple[str, dict[str, str]]:
    """SHA-256 of every file under the data root, and one checksum over all of them.

    Returns ``(combined, {relative path: sha256})``; ``combined`` is the SHA-256 of the sorted
    ``"<sha256>  <relative path>"`` lines (as ``sha256sum`` prints them). With ``cache`` (a JSON
    file), a file whose size and modification time are unchanged is not read again.
    """
    root = Path(root).resolve()
    cache_path = Path(cache) if cache else None
    known: dict[str, Any] = {}
    if cache_path and cache_path.exists():
        try:
            known = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            known = {}
    sums: dict[str, str] = {}
    fresh: dict[str, Any] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        entry = known.get(str(path))
        digest = entry["sha256"] if entry and entry.get("stamp") == stamp else _sha256(path)
        fresh[str(path)] = {"stamp": stamp, "sha256": digest}
        sums[path.relative_to(root).as_posix()] = digest
    if cache_path:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**known, **fresh}, indent=1))
        tmp.replace(cache_path)
    lines = "".join(f"{digest}  {name}\n" for name, digest in sums.items())
    return hashlib.sha256(lines.encode()).hexdigest(), sums


def git_commit(root: str | os.PathLike) -> str:
    """``<commit hash>`` of the checkout at ``root``, with a note when files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + (" (with uncommitted changes)" if dirty else "")


def _versions(device: str) -> dict[str, str]:
    import numpy
    import torch
    import torchvision

    versions = {"Python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "numpy": numpy.__version__}
    try:
        from importlib.metadata import version

        versions["jupyter-book"] = version("jupyter-book")
    except Exception:  # noqa: BLE001 - informative only
        pass
    versions["machine"] = f"{platform.platform()}, {os.cpu_count()} CPU cores"
    if device.startswith("cuda") and torch.cuda.is_available():
        versions["GPU"] = f"{torch.cuda.get_device_name(torch.device(device))}, CUDA {torch.version.cuda}"
    return versions


def _table(rows: list[tuple[str, Any]], columns: tuple[str, str], caption: str, name: str) -> str:
    frame = pd.DataFrame([(k, str(v)) for k, v in rows], columns=list(columns))
    return table_directive(table_markdown(frame), name, caption) + "\n"


def _sizes(profile: Any, overrides: Mapping[str, Any]) -> list[tuple[str, Any]]:
    rows = []
    for section, fields in profile.to_dict().items():
        if not isinstance(fields, dict):
            continue
        for key, value in fields.items():
            name = f"{section}.{key}"
            shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
            rows.append((name + (" (set for this build)" if name in overrides else ""), shown))
    return rows


def _where_computed(results: Sequence[Mapping[str, Any]]) -> list[str]:
    if not results:
        return []
    frame = pd.DataFrame([{"chapter": Path(r["chapter"]).name, "experiment": r["experiment"], "key": r["key"],
                           "host": r.get("host", "-"), "device": r.get("device", "-"),
                           "computed (UTC)": r.get("saved", "-")} for r in results])
    return ["## Where the results were computed", "",
            "Each experiment the chapters read from the results store, with the machine that computed it and when "
            "its result was stored (`python -m hessian_lib plan` lists them; `run` computes them anywhere).", "",
            table_directive(table_markdown(frame), "about-results",
                            "The experiments of this build: host, device and time of each stored result "
                            "(-: not stored, or stored before results recorded their provenance).") + "\n"]


def write_about_page(staging: str | os.PathLike, page: str, *, root: str | os.PathLike, profile: Any,
                     overrides: Mapping[str, Any], seed: int, device: str, data_root: str | os.PathLike,
                     build_id: str, timings: Mapping[str, float], rerun: set[str],
                     checksum_cache: str | os.PathLike | None = None,
                     results: Sequence[Mapping[str, Any]] = ()) -> Path:
    """Write ``<staging>/<page>.md`` and add it to the end of the staged ``_toc.yml``; return its path.

    ``results``: one mapping per planned experiment (``chapter``, ``experiment``, ``key`` and, when stored,
    ``host``, ``device``, ``saved``: :meth:`~hessian_lib.store.ResultsStore.provenance`)."""
    staging = Path(staging)
    combined, sums = data_checksums(data_root, checksum_cache)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    build = [("date", now), ("build", build_id), ("git commit", git_commit(root)),
             ("profile", f"{profile.name}: {profile.description}"),
             ("overrides", ", ".join(f"{k}={v}" for k, v in overrides.items()) or "none"),
             ("seed", seed), ("device", device), *_versions(device).items()]
    data = [("data root", str(Path(data_root))), ("checksum of all files (SHA-256)", combined),
            *((f"{name} (SHA-256)", digest) for name, digest in sums.items())]
    times = [(Path(c).name, f"{t:.1f} s" + ("" if c in rerun else " (kept from an earlier run)"))
             for c, t in timings.items()]
    total = sum(timings.values())
    text = "\n".join([
        "# About this build",
        "",
        "This page is written by the pipeline (`python -m hessian_lib book`) each time the book is built. Every "
        "figure and number in the book was computed in the run described here.",
        "",
        _table(build, ("item", "value"), "The build: when, from which commit, under which settings.", "about-build"),
        "## Every size the profile set",
        "",
        _table(_sizes(profile, overrides), ("profile key", "value"),
               f"The sizes of profile `{profile.name}` in this build.", "about-sizes"),
        "## The data",
        "",
        "The checksum over all files is the SHA-256 of the `sha256sum`-style list of the files below.",
        "",
        _table(data, ("item", "value"), "CIFAR-100 as the chapters read it.", "about-data"),
        "## Execution time",
        "",
        _table([*times, ("all chapters", f"{total:.1f} s")], ("chapter", "execution time"),
               "Wall-clock time of each chapter (papermill, one kernel each).", "about-times"),
        *_where_computed(results),
    ])
    out = staging / f"{page}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    append_to_toc(staging / "_toc.yml", page)
    return out


def append_to_toc(toc_path: Path, page: str) -> None:
    """Add ``page`` at the end of the staged table of contents (once)."""
    toc = yaml.safe_load(toc_path.read_text())
    holder = toc["parts"][-1] if "parts" in toc else toc
    chapters = holder.setdefault("chapters", [])
    if {"file": page} not in chapters:
        chapters.append({"file": page})
    toc_path.write_text(yaml.safe_dump(toc, sort_keys=False))
