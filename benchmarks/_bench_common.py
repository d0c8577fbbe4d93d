"""What the curvature benchmarks share: the workload's CNN, peak-memory sampling, capped anchors, the
timing wrapper of our operators and the :class:`Workload` every phase of ``bench_curvature.py`` reads.

Memory: peak resident-set growth during a call, sampled from ``/proc/self/statm`` every 5 ms by a thread
(torch's CPU allocations are invisible to tracemalloc), from a heap trimmed (``malloc_trim``) just before.
An anchor is stopped at its first product after its cap (:class:`Cap`) and reported as a lower bound.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def make_model(seed: int = 0) -> nn.Module:
    """The workload's CNN for 100 classes (P = 158,820): three 3x3 convs with ReLU and 2x2 max-pool, one linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 100),
    )


def _libc() -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.malloc_trim  # glibc only
        return lib
    except (OSError, AttributeError):
        return None


#: glibc (for ``malloc_trim`` and ``mallopt``), or None elsewhere.
LIBC = _libc()


class PeakRSS:
    """Peak RSS growth (MiB) over a ``with`` block, sampled by a thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self) -> "PeakRSS":
        # Start from a trimmed heap: memory an earlier call freed but the C allocator kept would
        # otherwise be reused here for free and flatter whichever call runs later.
        gc.collect()
        if LIBC is not None:
            LIBC.malloc_trim(0)
        self.base = self._rss()
        self.peak = self.base
        self._stop = False

        def run() -> None:
            while not self._stop:
                self.peak = max(self.peak, self._rss())
                time.sleep(self.interval)

        self._t = threading.Thread(target=run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.mib = (self.peak - self.base) / 2**20


class Capped(Exception):
    """An anchor ran past the cap."""


class Cap:
    """Counts an anchor's products and stops it at the first one after ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = time.perf_counter()
        self.products = 0

    def check(self) -> None:
        if time.perf_counter() - self.start > self.seconds:
            raise Capped
        self.products += 1


class Timed:
    """Wraps one of our operators to time its products (blocks count as k products)."""

    def __init__(self, op: Any) -> None:
        self.op, self.dim, self.device, self.seconds, self.calls = op, op.dim, op.device, 0.0, 0
        self.accepts_blocks = getattr(op, "accepts_blocks", False)

    def __getattr__(self, name: str) -> Any:
        # dtype, expect_products, blocks_pay: what the algorithms ask of the operator when it is not wrapped
        return getattr(self.op, name)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        t = time.perf_counter()
        out = self.op.matvec(v)
        self.seconds += time.perf_counter() - t
        self.calls += 1 if v.dim() == 1 else v.shape[0]
        return out


def run_capped(fn: Callable[[Cap], Any], cap: float) -> dict[str, Any]:
    """``fn(cap)`` timed with its peak memory; ``done`` False when it hit the cap."""
    c = Cap(cap)
    with PeakRSS() as mem:
        t = time.perf_counter()
        try:
            result, done = fn(c), True
        except Capped:
            result, done = None, False
        seconds = time.perf_counter() - t
    return {"seconds": seconds, "done": done, "mib": mem.mib, "result": result, "products": c.products}


def fmt_time(r: dict[str, Any], cap: float) -> str:
    return f"{r['seconds']:.1f} s" if r["done"] else f"> {cap:.0f} s (cap)"


def faster_than_pyhessian(res: dict[str, Any], seconds: float) -> str:
    """How many times PyHessian's run in ``res`` (from :func:`run_capped`) took ``seconds``; a lower bound when it
    hit the cap; empty without one."""
    if "pyhessian" not in res:
        return ""
    r = res["pyhessian"]
    return f"{r['seconds'] / seconds:.2f}x faster than PyHessian" + ("" if r["done"] else " (lower bound)")


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def patch_pyhessian() -> None:
    """PyHessian 0.1 calls torch.eig (removed); give it an eigh-based stand-in."""

    def eig(T: torch.Tensor, eigenvectors: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        vals, vecs = torch.linalg.eigh(T)
        return torch.stack([vals, torch.zeros_like(vals)], 1), vecs

    torch.eig = eig  # type: ignore[attr-defined]


def capped_pyhessian(model: nn.Module, crit: nn.Module, batches: list, cap: Cap) -> Any:
    from pyhessian import hessian as PyHessian

    ph = PyHessian(model, crit, dataloader=batches, cuda=False)
    inner = ph.dataloader_hv_product

    def hv(v: Any) -> Any:
        cap.check()
        return inner(v)

    ph.dataloader_hv_product = hv  # eigenvalues() and density() call it for every product
    return ph


def capped_eigenthings(model: nn.Module, batches: list, cap: Cap) -> Any:
    from hessian_eigenthings import HessianOperator as ETHessian
    from hessian_eigenthings import supervised_loss

    H = ETHessian(model, batches, supervised_loss(F.cross_entropy))
    inner = H.matvec

    def mv(v: torch.Tensor) -> torch.Tensor:
        cap.check()
        return inner(v)

    H.matvec = mv
    return H


def capped_curvlinops(model: nn.Module, crit: nn.Module, batches: list, cap: Cap) -> Any:
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import LinearOperator

    Hs = HessianLinearOperator(model, crit, [p for p in model.parameters() if p.requires_grad], batches).to_scipy()

    def mv(v: np.ndarray) -> np.ndarray:
        cap.check()
        return Hs.matvec(v)

    return LinearOperator(Hs.shape, matvec=mv, dtype=Hs.dtype)


@dataclass
class Workload:
    """One run's model, data and what its phases print: ``batches`` of ``B`` images (``[B, 3, 32, 32]``,
    labels ``[B]``), the first ``n_slq`` images for SLQ, a probe vector ``v`` ``[P]`` (``v_list`` per
    parameter), the table's ``rows``, ``notes`` and the 1-minute load averages sampled (``loads``)."""

    args: argparse.Namespace
    model: nn.Module
    crit: nn.Module
    batches: list
    slq_batches: list
    n_slq: int
    B: int
    P: int
    v: torch.Tensor
    v_list: list[torch.Tensor]
    anchors: set[str]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    def grad_once(self, data: list) -> float:
        """Seconds (wall) of one full gradient over ``data``."""
        n = sum(len(b[1]) for b in data)
        t = time.perf_counter()
        self.model.zero_grad()
        for x, y in data:
            (F.cross_entropy(self.model(x), y) * (len(y) / n)).backward()
        return time.perf_counter() - t

    def grad_ref(self, data: list | None = None, n: int = 2) -> float:
        """The unit: the best of ``n`` full gradients over ``data`` (default all batches), seconds."""
        t = min(self.grad_once(self.batches if data is None else data) for _ in range(n))
        self.model.zero_grad(set_to_none=True)
        self.loads.append(os.getloadavg()[0])
        return t
