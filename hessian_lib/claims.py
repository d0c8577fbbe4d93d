"""Claim files: at most one process computes a given store key at a time, across hosts sharing a filesystem.

A claim is ``<store>/.claims/<key>.claim``, created with ``O_CREAT | O_EXCL`` (atomic on local
filesystems and on NFSv3+), holding the owner's host, pid and a random token. While the owner
works, a thread touches the file every ``heartbeat`` seconds. A claim is *stale*, and may be
broken, when its owner is on this host and its pid no longer runs (a SIGKILLed shard), or when it
has not been touched for ``stale_after`` seconds (a dead host). Breaking renames the file to a
unique name first, so two processes cannot both break one claim and both proceed.

>>> with Claim(tmp, "0123abcd") as claim:   # doctest: +SKIP
...     if claim.held: compute()
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["Claim", "CLAIMS_DIR"]

CLAIMS_DIR = ".claims"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class Claim:
    """A claim on ``key`` in the store at ``root``; ``held`` says whether this process got it.

    Use as a context manager: entering tries once (breaking a stale claim), leaving releases it.
    ``heartbeat``, ``stale_after``: seconds (see the module docstring).
    """

    def __init__(self, root: str | os.PathLike, key: str, *, heartbeat: float = 30.0,
                 stale_after: float = 300.0) -> None:
        self.path = Path(root) / CLAIMS_DIR / f"{key}.claim"
        self.heartbeat, self.stale_after = float(heartbeat), float(stale_after)
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": secrets.token_hex(8),
                      "since": time.time()}
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner_of(self) -> dict[str, Any] | None:
        """The current claim file's owner record (None if there is no readable claim)."""
        return _read(self.path)

    def stale(self) -> bool:
        """Whether the existing claim may be broken (owner dead on this host, or no heartbeat for ``stale_after``)."""
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        owner = _read(self.path)
        if owner and owner.get("host") == self.owner["host"] and not _alive(int(owner.get("pid", -1))):
            return True
        return age > self.stale_after

    def _create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            json.dump(self.owner, fh)
        return True

    def _break(self) -> None:
        judged = _read(self.path)
        aside = self.path.with_name(f"{self.path.name}.stale-{self.owner['token']}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else broke it first
        if _read(aside) != judged:  # a fresh claim slipped in between: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def acquire(self) -> bool:
        """Try to take the claim (once, after breaking a stale one); return ``held``."""
        if not self._create() and self.stale():
            self._break()
            self._create()
        self.held = _read(self.path) == self.owner
        if self.held:
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self.held

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the claim if this process still holds it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.held and _read(self.path) == self.owner:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> "Claim":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
