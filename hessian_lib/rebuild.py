"""Rebuilds without re-execution: decide whether a chapter's last executed copy is still valid.

A chapter executed by the pipeline leaves two files next to its executed notebook in the staging folder:

* ``<name>.fingerprint.json``: what its output depended on: the digest of its code cells, of the whole
  source notebook, the injected parameters, the library source, and every results-store entry it looked
  up (``has``/``load``, noted through :data:`hessian_lib.store.READ_LOG_ENV`) with a digest of that entry;
* ``<name>.unnumbered.ipynb``: the executed notebook before its figures were numbered.

On the next build :func:`decide` compares them with the present state and answers ``reuse`` (nothing
changed), ``merge`` (only prose changed: markdown cells or cell tags; :func:`merge_prose` puts the new
prose around the previous code-cell outputs, no kernel runs) or ``execute``, each with a reason.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from hessian_lib.store import RESULT_FILE, atomic_write_bytes, canonical_json

__all__ = ["Decision", "decide", "write_fingerprint", "load_fingerprint", "library_digest", "entry_digest",
           "read_log_entries", "merge_prose", "fingerprint_path", "unnumbered_path", "forget", "start_read_log",
           "stop_read_log", "staging_digest"]

FINGERPRINT_VERSION = 1
_INJECTED = "injected-parameters"


@dataclass(frozen=True)
class Decision:
    """``action``: ``reuse``, ``merge`` or ``execute``; ``reason``: one line saying why."""

    action: str
    reason: str


def fingerprint_path(executed: Path) -> Path:
    """``book/01_theory.ipynb`` -> ``book/01_theory.fingerprint.json`` (next to the executed notebook)."""
    return executed.with_name(executed.stem + ".fingerprint.json")


def unnumbered_path(executed: Path) -> Path:
    """The executed notebook before figure numbering, kept for :func:`merge_prose`."""
    return executed.with_name(executed.stem + ".unnumbered.ipynb")


def forget(executed: Path) -> None:
    """Remove a chapter's fingerprint (before it executes: a failed run must never be reused)."""
    fingerprint_path(executed).unlink(missing_ok=True)


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def _code_digest(nb: Any) -> str:
    """Digest of the code cells' sources, in order (what a kernel would run)."""
    return _sha("\0".join(cell.source for cell in nb.cells if cell.cell_type == "code"))


def library_digest(package: Path | None = None) -> str:
    """Digest of every source file of the package (``hessian_lib`` by default), by relative path and content."""
    package = package or Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def entry_digest(folder: Path) -> str:
    """Digest of one store entry: the content of its ``result.json``, and the size and modification time of
    every other file in it (arrays, checkpoints: rewritten atomically, so a change moves the time);
    ``absent`` when it holds no complete result."""
    folder = Path(folder)
    if not (folder / RESULT_FILE).is_file():
        return "absent"
    digest = hashlib.sha256((folder / RESULT_FILE).read_bytes())
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != RESULT_FILE:
            stat = path.stat()
            digest.update(f"{path.relative_to(folder)}:{stat.st_size}:{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


def read_log_entries(log: Path) -> dict[str, str]:
    """The store entries named in a read log (one folder per line) with their present digests."""
    if not log.exists():
        return {}
    folders = dict.fromkeys(line.strip() for line in log.read_text().splitlines() if line.strip())
    return {folder: entry_digest(Path(folder)) for folder in folders}


def write_fingerprint(executed: Path, source: Path, parameters: Mapping[str, Any], *, library: str,
                      entries: Mapping[str, str], seconds: float) -> dict[str, Any]:
    """Save the fingerprint of a chapter that just executed (or was merged) into ``executed``'s folder;
    ``entries``: the store entries it read with their digests (:func:`read_log_entries`)."""
    import nbformat

    nb = nbformat.read(source, as_version=4)
    record = {
        "version": FINGERPRINT_VERSION,
        "code": _code_digest(nb),
        "page": _sha(source.read_bytes()),
        "parameters": json.loads(canonical_json(dict(parameters))),
        "library": library,
        "entries": dict(entries),
        "seconds": round(float(seconds), 1),
    }
    atomic_write_bytes(fingerprint_path(executed), json.dumps(record, indent=1, sort_keys=True).encode())
    return record


def load_fingerprint(executed: Path) -> dict[str, Any] | None:
    """The saved fingerprint of ``executed``, or None (absent, unreadable or of an older format)."""
    try:
        record = json.loads(fingerprint_path(executed).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("version") == FINGERPRINT_VERSION else None


def decide(executed: Path, source: Path, parameters: Mapping[str, Any], *, library: str) -> Decision:
    """Whether the executed copy ``executed`` of ``source`` can be reused under ``parameters``; see the module doc."""
    import nbformat

    saved = load_fingerprint(executed)
    if saved is None or not executed.exists() or not unnumbered_path(executed).exists():
        return Decision("execute", "no earlier executed copy")
    params = json.loads(canonical_json(dict(parameters)))
    changed = sorted(k for k in set(params) | set(saved["parameters"])
                     if params.get(k) != saved["parameters"].get(k))
    if changed:
        return Decision("execute", "parameters changed: " + ", ".join(changed))
    if saved["library"] != library:
        return Decision("execute", "library source changed")
    moved = [Path(folder).name for folder, digest in saved["entries"].items() if entry_digest(Path(folder)) != digest]
    if moved:
        shown = ", ".join(moved[:3]) + (f" and {len(moved) - 3} more" if len(moved) > 3 else "")
        return Decision("execute", f"{len(moved)} store entr{'y' if len(moved) == 1 else 'ies'} changed ({shown})")
    if saved["code"] != _code_digest(nbformat.read(source, as_version=4)):
        return Decision("execute", "code cells changed")
    n = len(saved["entries"])
    if saved["page"] != _sha(source.read_bytes()):
        return Decision("merge", f"only prose changed; code cells, parameters, library and {n} store entries unchanged")
    return Decision("reuse", f"unchanged: notebook, parameters, library and {n} store entries")


def merge_prose(source: Path, unnumbered: Path, output: Path) -> None:
    """Write ``output``: the cells of ``source`` (new prose and tags) with the outputs of the previously executed
    code cells from ``unnumbered`` (same code, in order) and its injected-parameters cell; also refresh
    ``unnumbered``. The caller numbers the figures of ``output`` afterwards."""
    import nbformat

    new = nbformat.read(source, as_version=4)
    old = nbformat.read(unnumbered, as_version=4)
    injected = [c for c in old.cells if _INJECTED in c.metadata.get("tags", [])]
    executed = iter([c for c in old.cells if c.cell_type == "code" and _INJECTED not in c.metadata.get("tags", [])])
    cells = []
    for cell in new.cells:
        if cell.cell_type != "code":
            cells.append(cell)
            continue
        done = next(executed)
        if done.source != cell.source:
            raise ValueError(f"{source.name}: the code cells differ from the executed copy; execute it again")
        done.metadata["tags"] = list(cell.metadata.get("tags", []))
        if not done.metadata["tags"]:
            del done.metadata["tags"]
        cells.append(done)
        if "parameters" in cell.metadata.get("tags", []):
            cells.extend(injected)
    old.cells = cells
    text = nbformat.writes(old)
    atomic_write_bytes(unnumbered, text.encode())
    atomic_write_bytes(output, text.encode())


def read_log_for(executed: Path) -> Path:
    """Where the store notes the entries a chapter looks up while it executes (emptied before each run)."""
    return executed.with_name(executed.stem + ".reads.txt")


def start_read_log(executed: Path) -> Path:
    """Empty the chapter's read log and point the store at it (the kernel inherits the environment)."""
    from hessian_lib.store import READ_LOG_ENV

    log = read_log_for(executed)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    os.environ[READ_LOG_ENV] = str(log)
    return log


def stop_read_log() -> None:
    """Stop noting store look-ups in this process (and kernels started later)."""
    from hessian_lib.store import READ_LOG_ENV

    os.environ.pop(READ_LOG_ENV, None)


#: Files of the staging folder that are bookkeeping, not pages: they never make the HTML stale.
_BOOKKEEPING = (".fingerprint.json", ".unnumbered.ipynb", ".reads.txt")
_BOOKKEEPING_NAMES = ("timings.json", "build.json", "html.json", "vendor.stamp")


def staging_digest(staging: Path) -> str:
    """Digest of every staged file the HTML is built from (paths and contents; ``_build`` and bookkeeping left out)."""
    digest = hashlib.sha256()
    for path in sorted(staging.rglob("*")):
        rel = path.relative_to(staging)
        if (not path.is_file() or rel.parts[0] == "_build" or path.name in _BOOKKEEPING_NAMES
                or path.name.endswith(_BOOKKEEPING)):
            continue
        digest.update(str(rel).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
