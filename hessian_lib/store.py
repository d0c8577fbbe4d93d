"""Results store: experiment results on disk, keyed by a hash of their config.

Each result lives in ``<root>/<key>/``: ``result.json`` (the config, the key and every scalar,
string or list), ``arrays.npz`` (every NumPy array / torch tensor), and any artefacts the
experiment keeps there (checkpoints). ``key`` is the first 16 hex digits of the SHA-256 of the
config as canonical JSON, so the same config always finds the same folder.

Every file is written atomically (a temporary file in the same folder, then ``os.replace``),
and ``result.json`` is written last: a result is either complete or absent, and an interrupted
sweep keeps every finished point. ``result.json`` also records where and when the result was
computed (``provenance``: host, device, UTC time), which :meth:`ResultsStore.provenance` returns.

>>> store = ResultsStore(tmp)                                  # doctest: +SKIP
>>> out = store.cached({"kind": "demo", "n": 3}, lambda: {"mean": 1.5, "xs": np.arange(3)})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import socket
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

__all__ = ["ResultsStore", "config_key", "canonical_json", "atomic_write_bytes", "atomic_torch_save", "READ_LOG_ENV"]

RESULT_FILE = "result.json"
ARRAYS_FILE = "arrays.npz"
#: When this environment variable names a file, every look-up (``has``, ``load``) appends the entry's folder to
#: it, one per line: the book pipeline learns which entries a chapter read (:mod:`hessian_lib.rebuild`).
READ_LOG_ENV = "HESSIAN_LIB_READ_LOG"


def _note_lookup(folder: Path) -> None:
    log = os.environ.get(READ_LOG_ENV)
    if log:
        with open(log, "a") as fh:
            fh.write(f"{folder.resolve()}\n")


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (Path, os.PathLike)):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} in JSON")


def canonical_json(config: Any) -> str:
    """Config -> JSON with sorted keys and no whitespace (tuples become lists)."""
    return json.dumps(config, sort_keys=True, separators=(",", ":"), default=_jsonable, allow_nan=True)


def config_key(config: Any) -> str:
    """16 hex digits identifying ``config`` (SHA-256 of its canonical JSON)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _is_array(value: Any) -> bool:
    if isinstance(value, np.ndarray):
        return True
    try:
        import torch

        return isinstance(value, torch.Tensor)
    except ImportError:  # pragma: no cover
        return False


def _clean_floats(obj: Any) -> Any:
    """NaN/inf are not JSON: store them as strings and read them back as floats."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


def _restore_floats(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__float__"}:
            return float(obj["__float__"])
        return {k: _restore_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_floats(v) for v in obj]
    return obj


def compute_device() -> str:
    """The device this process computes on: the GPU's name once CUDA is in use, else the CPU and its cores."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return f"CPU ({os.cpu_count()} cores)"


def provenance_now() -> dict[str, str]:
    """``{"host", "device", "saved"}`` of a result saved now by this process (``saved``: UTC, ISO 8601)."""
    return {"host": socket.gethostname(), "device": compute_device(),
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds")}


class ResultsStore:
    """A folder of results keyed by config hash. See the module docstring for the layout."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.root)!r})"

    key = staticmethod(config_key)

    def path(self, config: Any) -> Path:
        """The folder of ``config``'s result (not created)."""
        return self.root / config_key(config)

    def artifact_dir(self, config: Any, name: str = "") -> Path:
        """A folder inside ``config``'s result folder for large artefacts (created)."""
        folder = self.path(config) / name if name else self.path(config)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def has(self, config: Any) -> bool:
        """Whether a complete result for ``config`` is stored."""
        _note_lookup(self.path(config))
        return (self.path(config) / RESULT_FILE).is_file()

    def save(self, config: Any, result: Mapping[str, Any]) -> Path:
        """Store ``result`` (a mapping): arrays to ``arrays.npz``, everything else to ``result.json``."""
        folder = self.artifact_dir(config)
        arrays = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v)
                  for k, v in result.items() if _is_array(v)}
        scalars = {k: v for k, v in result.items() if not _is_array(v)}
        if arrays:
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            atomic_write_bytes(folder / ARRAYS_FILE, buf.getvalue())
        elif (folder / ARRAYS_FILE).exists():
            (folder / ARRAYS_FILE).unlink()
        doc = {"key": config_key(config), "config": json.loads(canonical_json(config)),
               "result": _clean_floats(json.loads(canonical_json(scalars))), "provenance": provenance_now()}
        atomic_write_bytes(folder / RESULT_FILE, json.dumps(doc, indent=1, sort_keys=True).encode())
        return folder

    def load(self, config: Any) -> dict[str, Any]:
        """The stored result of ``config`` (scalars and arrays in one dict); ``KeyError`` if absent."""
        folder = self.path(config)
        _note_lookup(folder)
        if not (folder / RESULT_FILE).is_file():
            raise KeyError(f"no stored result for config key {config_key(config)} in {self.root}")
        doc = json.loads((folder / RESULT_FILE).read_text())
        result = _restore_floats(doc["result"])
        if (folder / ARRAYS_FILE).is_file():
            with np.load(folder / ARRAYS_FILE) as archive:
                result.update({k: archive[k] for k in archive.files})
        return result

    def provenance(self, config: Any) -> dict[str, str] | None:
        """Where and when ``config``'s result was computed (:func:`provenance_now`); None if absent or not recorded."""
        file = self.path(config) / RESULT_FILE
        if not file.is_file():
            return None
        return json.loads(file.read_text()).get("provenance")

    def cached(
        self, config: Any, compute: Callable[[], Mapping[str, Any]], *, recompute: bool = False
    ) -> dict[str, Any]:
        """The stored result of ``config``, or ``compute()`` stored first. Returns what :meth:`load` returns."""
        if recompute or not self.has(config):
            self.save(config, compute())
        return self.load(config)

    def delete(self, config: Any) -> None:
        """Remove ``config``'s result folder and everything in it."""
        shutil.rmtree(self.path(config), ignore_errors=True)

    def entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(key, config)`` of every complete stored result."""
        if not self.root.is_dir():
            return
        for folder in sorted(self.root.iterdir()):
            file = folder / RESULT_FILE
            if file.is_file():
                doc = json.loads(file.read_text())
                yield doc["key"], doc["config"]
