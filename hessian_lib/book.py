"""The book pipeline: execute every chapter with papermill, then build the HTML.

1. Validate everything cheap first: profile and overrides, seed, device, data
   root, chapter names, the vendored JavaScript.
2. Copy the book sources (``_config.yml``, ``_toc.yml``, ``book/``) into a
   staging folder, so ``book/`` itself stays clean.
3. Run each chapter notebook with papermill, injecting the parameters
   ``profile``, ``overrides``, ``seed``, ``data_root``, ``device``,
   ``results_dir`` (a results store shared by the chapters, kept between runs) and
   ``build_id`` (unique to this build: chapters write their verdicts under it and the
   scoreboard reads exactly this build's); the injected cell is tagged ``remove-cell``
   so the rendered page hides it, and the figures and tables shown with
   :mod:`hessian_lib.figures` become numbered, captioned figures and tables. The
   console shows a line per code cell with its time, and each chapter's time.
   A failing chapter raises :class:`ChapterError` naming the chapter and cell.
4. Write the "About this build" page (:mod:`hessian_lib.provenance`), build the
   staging copy with Jupyter Book (it does not execute again) and copy the HTML
   to ``<build_dir>/html``.

A chapter whose notebook, parameters, library source and the store entries it read are unchanged since
its last executed copy is not executed again, and one whose prose alone changed gets the new prose around
its previous outputs (:mod:`hessian_lib.rebuild`); ``rerun=True`` executes every chapter. The HTML step is
skipped when no staged page changed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import yaml

from hessian_lib import rebuild
from hessian_lib.data import check_data_root
from hessian_lib.device import resolve_device
from hessian_lib.profiles import load_profile
from hessian_lib.rebuild import Decision

__all__ = ["ChapterError", "BookError", "list_chapters", "execute_chapter", "run_book", "project_root",
           "new_build_id", "build_identity", "build_html_if_changed"]

STATIC_DIR_NAME = "_vendor_static"
#: Files at the repository root that the book build needs besides ``book/``.
ROOT_FILES = ("_config.yml", "_toc.yml", "references.bib")
#: The generated "About this build" page, relative to the staging root (no suffix).
ABOUT_PAGE = "book/about"
#: The chapter that reads every other chapter's verdicts: run again whenever any chapter runs.
SCOREBOARD = "book/scoreboard"
#: In the staging folder: the identity of the build its executed notebooks belong to.
BUILD_FILE = "build.json"
#: In the staging folder: the digest of the staged pages the HTML was last built from.
HTML_FILE = "html.json"


def new_build_id() -> str:
    """A build identifier unique to one run of the pipeline: UTC time plus a short random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def build_identity(staging: Path, settings: Mapping[str, Any], partial: bool) -> str:
    """The build id for a run: a new one, unless the run re-executes only some chapters of a staged build
    made with the same ``settings`` (profile, overrides, seed), whose id it continues: the kept chapters'
    verdicts then still count on the scoreboard. With other settings the kept chapters show "not run"."""
    previous = staging / BUILD_FILE
    if partial and previous.exists():
        try:
            record = json.loads(previous.read_text())
        except (OSError, ValueError):
            record = {}
        if record.get("settings") == json.loads(json.dumps(dict(settings))) and record.get("build_id"):
            return str(record["build_id"])
    return new_build_id()


class BookError(RuntimeError):
    """The book could not be built (missing tool, failed Sphinx build)."""


class ChapterError(RuntimeError):
    """A chapter notebook failed while executing."""

    def __init__(self, chapter: str, cell_index: int | None, ename: str, evalue: str, source: str, output: Path):
        self.chapter, self.cell_index, self.ename, self.evalue = chapter, cell_index, ename, evalue
        self.source, self.output = source, output
        where = f"cell {cell_index}" if cell_index is not None else "an unknown cell"
        snippet = "\n".join("    " + line for line in source.strip().splitlines()[:12])
        super().__init__(
            f"chapter {chapter} failed in {where}: {ename}: {evalue}\n{snippet}\n"
            f"(the partly executed notebook is at {output})"
        )


def project_root() -> Path:
    """The folder holding ``_config.yml``, ``_toc.yml`` and ``book/`` (the repository root)."""
    # The working directory, its parent (a chapter runs inside book/), then the package's checkout.
    candidates = [Path.cwd(), Path.cwd().parent, Path(__file__).resolve().parent.parent]
    for folder in candidates:
        if (folder / "_toc.yml").exists() and (folder / "book").is_dir():
            return folder
    raise BookError("cannot find the book sources (_toc.yml and book/); run from the repository root")


def list_chapters(root: Path | None = None) -> list[str]:
    """Chapter notebooks in table-of-contents order, as paths relative to the root without suffix."""
    root = root or project_root()
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "file" in node:
                entries.append(str(node["file"]))
            for value in node.values():
                if isinstance(value, (list, dict)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({"root": {"file": toc["root"]}, **{k: v for k, v in toc.items() if k != "root"}})
    return [e.removesuffix(".ipynb") for e in entries if (root / f"{e.removesuffix('.ipynb')}.ipynb").exists()]


def _chapter_name(path: str) -> str:
    return Path(path).name


def _select(all_chapters: list[str], wanted: Sequence[str] | None) -> list[str]:
    if not wanted:
        return all_chapters
    by_name = {_chapter_name(c): c for c in all_chapters}
    unknown = [w for w in wanted if _chapter_name(w.removesuffix(".ipynb")) not in by_name]
    if unknown:
        raise ValueError(f"unknown chapter(s) {', '.join(unknown)}; valid chapters: {', '.join(by_name)}")
    return [by_name[_chapter_name(w.removesuffix(".ipynb"))] for w in wanted]


def _hide_injected_parameters(notebook_path: Path) -> None:
    import nbformat

    nb = nbformat.read(notebook_path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    nbformat.write(nb, notebook_path)


_ENGINE = "hessian_lib"


def _register_progress_engine() -> None:
    """A papermill engine that reports each finished code cell through ``on_cell`` (a keyword argument)."""
    from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines

    if _ENGINE in papermill_engines._engines:
        return

    class Manager(NotebookExecutionManager):
        on_cell: Callable[[int, int, int, float], None] | None = None

        def cell_complete(self, cell, cell_index=None, **kwargs):
            super().cell_complete(cell, cell_index=cell_index, **kwargs)
            if self.on_cell is not None and cell.cell_type == "code":
                code = [i for i, c in enumerate(self.nb.cells) if c.cell_type == "code"]
                self.on_cell(cell_index, code.index(cell_index) + 1, len(code),
                             cell.metadata.papermill.get("duration") or 0.0)

    class Engine(NBClientEngine):
        @classmethod
        def execute_notebook(cls, nb, kernel_name, output_path=None, progress_bar=True, log_output=False,
                             autosave_cell_every=30, on_cell=None, **kwargs):
            manager = Manager(nb, output_path=output_path, progress_bar=progress_bar, log_output=log_output,
                              autosave_cell_every=autosave_cell_every)
            manager.on_cell = on_cell
            manager.notebook_start()
            try:
                cls.execute_managed_notebook(manager, kernel_name, log_output=log_output, **kwargs)
            finally:
                manager.cleanup_pbar()
                manager.notebook_complete()
            return manager.nb

    papermill_engines.register(_ENGINE, Engine)


def _ipc_kernel_manager() -> type:
    """A kernel manager talking to the kernel over local sockets (IPC), not TCP: nothing listens on a port, and
    the kernel prints no warning about unencrypted TCP into the build's console."""
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import CaselessStrEnum

    class IPCKernelManager(AsyncKernelManager):
        transport = CaselessStrEnum(["tcp", "ipc"], default_value="ipc", config=True)

    return IPCKernelManager


def execute_chapter(
    source: Path,
    output: Path,
    parameters: Mapping[str, Any],
    *,
    progress_bar: bool = False,
    cell_timeout: float | None = None,
    on_cell: Callable[[int, int, int, float], None] | None = None,
    keep_unnumbered: Path | None = None,
) -> float:
    """Run one chapter notebook with papermill into ``output``; return seconds taken.

    ``cell_timeout``: seconds any one cell may run (None: no limit). ``on_cell(index, k, n, seconds)`` is
    called as cell ``index`` (the k-th of n code cells) finishes. Afterwards the injected parameters are hidden and
    the figures and tables shown with :mod:`hessian_lib.figures` numbered (``keep_unnumbered``: where to keep a
    copy from before the numbering). Raises :class:`ChapterError` with the chapter name, failing cell and error
    (a timeout included).
    """
    import papermill
    from nbclient.exceptions import CellTimeoutError
    from papermill.exceptions import PapermillExecutionError

    from hessian_lib.figures import number_figures

    _register_progress_engine()
    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source),
            str(output),
            parameters=dict(parameters),
            engine_name=_ENGINE,
            kernel_name="python3",
            cwd=str(output.parent),
            progress_bar=progress_bar,
            log_output=False,
            execution_timeout=cell_timeout,
            on_cell=on_cell,
            kernel_manager_class=_ipc_kernel_manager(),
        )
    except PapermillExecutionError as err:
        raise ChapterError(source.stem, err.cell_index, err.ename, err.evalue, err.source or "", output) from None
    except CellTimeoutError as err:
        lines = str(err).splitlines()
        raise ChapterError(source.stem, None, "CellTimeoutError", lines[0], "\n".join(lines[4:]), output) from None
    finally:
        if output.exists():
            _hide_injected_parameters(output)
    if keep_unnumbered is not None:
        shutil.copy2(output, keep_unnumbered)
    try:
        number_figures(str(output))
    except ValueError as err:
        raise BookError(f"chapter {source.stem}: {err}") from None
    return time.perf_counter() - start


def _stage_sources(root: Path, staging: Path, keep_notebooks: set[str]) -> None:
    """Copy the book sources into ``staging``; keep previously executed notebooks named in ``keep_notebooks``."""
    staging.mkdir(parents=True, exist_ok=True)
    for name in ROOT_FILES:
        if (root / name).exists():
            shutil.copy2(root / name, staging / name)
    for src in (root / "book").rglob("*"):
        if src.is_dir() or "__pycache__" in src.parts or ".ipynb_checkpoints" in src.parts:
            continue
        rel = src.relative_to(root)
        dst = staging / rel
        if src.suffix == ".ipynb" and str(rel.with_suffix("")) in keep_notebooks and dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _jupyter_book_executable() -> str:
    candidate = Path(sys.executable).parent / "jupyter-book"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("jupyter-book")
    if not found:
        raise BookError(
            "jupyter-book is not installed; install the project with its book extra: pip install -e '.[book]'"
        )
    return found


def build_html(staging: Path, html_dir: Path) -> Path:
    """Build the staged (already executed) book with Jupyter Book; copy the HTML to ``html_dir``."""
    cmd = [
        _jupyter_book_executable(),
        "build",
        str(staging),
        "--builder",
        "html",
        "-W",
        "-n",
        "--keep-going",
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise BookError(f"jupyter-book build failed (exit {proc.returncode}):\n{tail}")
    built = staging / "_build" / "html"
    if html_dir.exists():
        shutil.rmtree(html_dir)
    shutil.copytree(built, html_dir)
    return html_dir


def _check_stored(profile: Any, overrides: dict[str, Any], seed: int, chapters: Sequence[str], results: Path) -> None:
    """BookError naming the first missing results of the plan of ``chapters`` and the command that computes them."""
    from hessian_lib.plan import build_plan
    from hessian_lib.shard import run_command
    from hessian_lib.store import ResultsStore

    store = ResultsStore(results)
    missing = [job for job in build_plan(profile, seed=seed, chapters=chapters) if not store.has(job.config)]
    if missing:
        shown = "\n".join(f"  {j.chapter}: {j.name} ({j.key})" for j in missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise BookError(f"{len(missing)} result(s) the chapters need are not in {results}:\n{shown}{more}\n"
                        f"Compute them with: {run_command(profile.name, overrides, seed, str(results))}\n"
                        f"(or add --compute-missing to compute them during the build)")


def _where_computed(profile: Any, seed: int, results: Path) -> list[dict[str, Any]]:
    from hessian_lib.plan import build_plan
    from hessian_lib.store import ResultsStore

    store = ResultsStore(results)
    return [{"chapter": j.chapter, "experiment": j.name, "key": j.key, **(store.provenance(j.config) or {})}
            for j in build_plan(profile, seed=seed)]


def _bring_up_to_date(chapter: str, source: Path, output: Path, parameters: Mapping[str, Any], *, library: str,
                      decision: Decision, cell_timeout: float | None, log: Callable[[str], None]) -> float | None:
    """Execute, merge or reuse one chapter as ``decision`` says; return the seconds executed (None if not)."""
    from hessian_lib.figures import number_figures

    if decision.action == "reuse":
        return None
    if decision.action == "merge":
        start = time.perf_counter()
        rebuild.merge_prose(source, rebuild.unnumbered_path(output), output)
        number_figures(str(output))
        saved = rebuild.load_fingerprint(output) or {}
        rebuild.write_fingerprint(output, source, parameters, library=library, entries=saved.get("entries", {}),
                                  seconds=saved.get("seconds", 0.0))
        log(f"    {_chapter_name(chapter)}: new prose around the earlier outputs, {time.perf_counter() - start:.1f} s")
        return None
    chapter_start = time.perf_counter()

    def on_cell(index: int, k: int, n: int, seconds: float) -> None:
        log(f"    {_chapter_name(chapter)}: cell {index} (code cell {k} of {n}) took {seconds:.1f} s, "
            f"{time.perf_counter() - chapter_start:.0f} s so far")

    rebuild.forget(output)
    read_log = rebuild.start_read_log(output)
    try:
        seconds = execute_chapter(source, output, parameters, cell_timeout=cell_timeout, on_cell=on_cell,
                                  keep_unnumbered=rebuild.unnumbered_path(output))
    finally:
        rebuild.stop_read_log()
    rebuild.write_fingerprint(output, source, parameters, library=library,
                              entries=rebuild.read_log_entries(read_log), seconds=seconds)
    return seconds


def build_html_if_changed(staging: Path, html_dir: Path, log: Callable[[str], None]) -> Path:
    """:func:`build_html`, unless no staged page changed since the last HTML build and ``html_dir`` holds it."""
    marker = staging / HTML_FILE
    digest = rebuild.staging_digest(staging)
    if (html_dir / "index.html").is_file() and marker.is_file() and marker.read_text() == digest:
        log("HTML: no staged page changed since the last build; kept")
        return html_dir
    marker.unlink(missing_ok=True)
    start = time.perf_counter()
    build_html(staging, html_dir)
    marker.write_text(digest)
    log(f"Built the HTML in {time.perf_counter() - start:.1f} s")
    return html_dir


def run_book(
    profile: str = "cpu",
    *,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    device: str = "auto",
    chapters: Sequence[str] | None = None,
    build_dir: str | os.PathLike = "_build",
    build: bool = True,
    cell_timeout: float | None = None,
    build_id: str | None = None,
    results_dir: str | os.PathLike | None = None,
    compute_missing: bool = False,
    rerun: bool = False,
    log=None,
) -> Path | None:
    """Execute the chapters under ``profile`` and build the book; return the HTML folder (None if not built).

    ``build_id`` is injected into every chapter; the verdicts they write and the scoreboard reads carry
    it. Default: the id of the staged build when its settings (profile, overrides, seed) are the same
    (:func:`build_identity`), else a new :func:`new_build_id`. A chapter whose last executed copy is still
    valid is reused (:mod:`hessian_lib.rebuild`), unless ``rerun``, which also starts a new build id. The
    scoreboard runs again whenever any chapter does. A line per chapter says "executing", "prose updated" or
    "reused", and why.
    ``results_dir``: a results store computed elsewhere (``python -m hessian_lib run``) to render from; unless
    ``compute_missing``, every result the chapters need must be in it (:class:`BookError` before any chapter runs).
    """
    log = log or (lambda message: print(message, flush=True))
    # 1. Cheap validation, before any chapter runs.
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if cell_timeout is not None and not cell_timeout > 0:
        raise ValueError(f"cell_timeout must be positive seconds (or None for no limit), got {cell_timeout!r}")
    resolved_profile = load_profile(profile, overrides)
    resolved_device = resolve_device(device)
    root = project_root()
    all_chapters = list_chapters(root)
    selected = _select(all_chapters, chapters)
    partial = len(selected) < len(all_chapters)
    if partial and SCOREBOARD in all_chapters:
        selected = [c for c in all_chapters if c in selected or c == SCOREBOARD]  # in reading order
    data_path = check_data_root(data_root)
    build_path = Path(build_dir).resolve()
    staging = build_path / "staging"
    settings = {"profile": resolved_profile.name, "overrides": {str(k): str(v) for k, v in (overrides or {}).items()},
                "seed": seed}
    build_id = build_id or (new_build_id() if rerun else build_identity(staging, settings, partial=True))
    results = Path(results_dir).resolve() if results_dir is not None else build_path / "results"
    if results_dir is not None and not compute_missing:
        _check_stored(resolved_profile, dict(overrides or {}), seed, selected, results)

    from hessian_lib.vendor import install_static_assets

    log(f"Profile {resolved_profile.name!r}: {resolved_profile.description}")
    log(f"Data root {data_path}; device {resolved_device}; seed {seed}; build {build_id}")
    # Staged notebooks are only ever replaced by executing or merging their chapter.
    _stage_sources(root, staging, keep_notebooks=set(all_chapters))
    install_static_assets(staging / STATIC_DIR_NAME, cache_dir=root / ".vendor")
    (staging / BUILD_FILE).write_text(json.dumps({"build_id": build_id, "settings": settings}, indent=2))

    parameters = {
        "profile": resolved_profile.name,
        "overrides": dict(overrides or {}),
        "seed": seed,
        "data_root": str(data_path),
        "device": str(resolved_device),
        "results_dir": str(results),
        "build_id": build_id,
        # Live (kernel-driven) widgets are for readers running the notebook; a build has no reader,
        # and nbclient can stall on their Output-widget traffic.
        "live_widgets": False,
    }
    # 2. Execute what changed.
    library = rebuild.library_digest()
    timings: dict[str, float] = {}
    timings_file = staging / "timings.json"
    if timings_file.exists():
        timings.update(json.loads(timings_file.read_text()))
    total_start = time.perf_counter()
    executed: list[str] = []
    changed_pages = False
    for i, chapter in enumerate(selected, 1):
        source = root / f"{chapter}.ipynb"
        output = staging / f"{chapter}.ipynb"
        if rerun:
            decision = rebuild.Decision("execute", "--rerun")
        else:
            decision = rebuild.decide(output, source, parameters, library=library)
            if chapter == SCOREBOARD and executed and decision.action != "execute":
                decision = rebuild.Decision("execute", "it reads the verdicts of "
                                            + ", ".join(_chapter_name(c) for c in executed))
        word = {"execute": "executing", "merge": "prose updated", "reuse": "reused"}[decision.action]
        log(f"[{i}/{len(selected)}] {chapter}: {word} ({decision.reason})")
        seconds = _bring_up_to_date(chapter, source, output, parameters, library=library, decision=decision,
                                    cell_timeout=cell_timeout, log=log)
        changed_pages = changed_pages or decision.action != "reuse"
        if seconds is None:
            continue
        executed.append(chapter)
        timings[chapter] = round(seconds, 1)
        tmp = timings_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(timings, indent=2))
        tmp.replace(timings_file)
        log(f"[{i}/{len(selected)}] {chapter} done in {seconds:.1f} s")
    log(f"Executed {len(executed)} of {len(selected)} chapter(s) in {time.perf_counter() - total_start:.1f} s:")
    for chapter in all_chapters:
        if chapter in timings:
            note = "" if chapter in executed else " (kept from an earlier run)"
            log(f"    {_chapter_name(chapter):<24} {timings[chapter]:8.1f} s{note}")
    if not build:
        return None
    # 3. Build.
    from hessian_lib.provenance import append_to_toc, write_about_page

    about = staging / f"{ABOUT_PAGE}.md"
    if changed_pages or not about.exists():
        write_about_page(
            staging, ABOUT_PAGE, root=root, profile=resolved_profile, overrides=dict(overrides or {}), seed=seed,
            device=str(resolved_device), data_root=data_path, build_id=build_id,
            timings={c: timings[c] for c in all_chapters if c in timings}, rerun=set(executed),
            checksum_cache=build_path / "data-checksums.json",
            results=_where_computed(resolved_profile, seed, results),
        )
    else:  # nothing changed: the page still describes the run that computed every figure
        append_to_toc(staging / "_toc.yml", ABOUT_PAGE)
    return build_html_if_changed(staging, build_path / "html", log)
