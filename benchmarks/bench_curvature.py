"""Curvature engine against PyHessian 0.1, hessian-eigenthings 1.0.0a5 and curvlinops 3.0.1,
every figure in this one process run, on one workload.

Workload: a CNN for 100 classes (3x3 convs 3->32->64->64, each + ReLU + 2x2 max-pool, one
linear layer; 158,820 parameters, no BatchNorm), the first ``--images`` CIFAR-100 training
images (normalised, no augmentation) in batches of ``--batch-size``, mean cross-entropy,
float32, ``--threads`` torch threads. The unit is one full-data gradient, re-timed right before
each phase (the machine may be shared).

The anchors, each used the way its README shows:

* PyHessian 0.1: ``hessian(model, criterion, dataloader=batches, cuda=False)``, then
  ``dataloader_hv_product``, ``eigenvalues(top_n=5)`` and ``density(iter, n_v)`` (its
  ``density()`` calls ``torch.eig``, removed from PyTorch: this script substitutes
  ``torch.linalg.eigh``, the tridiagonal matrix being symmetric).
* hessian-eigenthings 1.0.0a5: ``HessianOperator(model, batches, supervised_loss(F.cross_entropy))``,
  then ``matvec``, ``lanczos(H, k=5, seed=0)`` and ``spectral_density(H, num_runs, lanczos_steps)``.
* curvlinops 3.0.1: ``HessianLinearOperator(model, loss, params, batches)``, ``@ v``, and
  ``scipy.sparse.linalg.eigsh(H.to_scipy(), k=5, which="LA", tol=--eigsh-tol)``, whose
  eigenvalues are also the reference for ours.

An anchor that does not finish within ``--cap`` seconds is stopped at its next product and
reported as ``> cap`` (a lower bound); curvlinops' ``eigsh``, the reference, gets
``--reference-cap``. An anchor's cold product includes its construction (curvlinops checks
by default that model and data are deterministic). Memory: peak resident-set growth during each call,
sampled from ``/proc/self/statm`` every 5 ms by a thread (torch's CPU allocations are
invisible to tracemalloc), from a heap trimmed (``malloc_trim``) just before the call; with
``--mmap-threshold`` the C allocator returns large freed blocks at once, so that the resident set
follows the live tensors instead of what the allocator keeps. SLQ runs ours and PyHessian
alternately ``--slq-repeats`` times and reports the medians. Load averages are printed with every phase.

    .venv/bin/python benchmarks/bench_curvature.py                        # full workload
    .venv/bin/python benchmarks/bench_curvature.py --images 256 --batch-size 128 --cap 120   # quick
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import gc
import importlib
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessian_lib.curvature import (  # noqa: E402
    GGNOperator,
    HessianOperator,
    default_basis_dtype,
    forget_linearizations,
    lanczos,
    slq_density,
    top_eigenvalues,
)
from hessian_lib.data import load_cifar100, normalize  # noqa: E402

PHASES = ("paths", "profile", "cold", "lanczos", "blocks", "top5", "slq")


def make_model(seed: int = 0) -> nn.Module:
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


_LIBC = _libc()


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
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None, help="CIFAR-100 folder (default: $HESSIAN_LIB_DATA or the user cache)")
    ap.add_argument("--images", type=int, default=2048, help="full-data size (default 2048)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--slq-images", type=int, default=None, help="SLQ data size (default images/2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cap", type=float, default=900.0, help="seconds an anchor may run before it is stopped")
    ap.add_argument("--eigsh-tol", type=float, default=1e-6, help="curvlinops eigsh tolerance (the reference)")
    ap.add_argument("--reference-cap", type=float, default=2400.0,
                    help="seconds curvlinops' eigsh may run: it is also the reference for our eigenvalues")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    ap.add_argument("--anchors", default="pyhessian,eigenthings,curvlinops")
    ap.add_argument("--slq-repeats", type=int, default=2,
                    help="SLQ runs of ours and of PyHessian, alternating; the table gives the medians (default 2)")
    ap.add_argument("--mmap-threshold", type=int, default=None,
                    help="bytes above which the C allocator maps blocks of their own and returns them when freed "
                         "(mallopt M_MMAP_THRESHOLD): the resident set then follows the live tensors")
    ap.add_argument("--markdown", default=None, help="append a dated section with the table to this file")
    args = ap.parse_args()
    phases = set(args.phases.split(","))
    anchors = set(args.anchors.split(",")) if args.anchors else set()
    unknown = (phases - set(PHASES)) | (anchors - {"pyhessian", "eigenthings", "curvlinops"})
    if unknown:
        ap.error(f"unknown phase or anchor: {sorted(unknown)}")
    if args.slq_repeats < 1:
        ap.error("--slq-repeats must be >= 1")
    torch.set_num_threads(args.threads)
    if args.mmap_threshold is not None:
        if _LIBC is None or not _LIBC.mallopt(-3, args.mmap_threshold):  # M_MMAP_THRESHOLD
            ap.error("--mmap-threshold needs glibc's mallopt")
    patch_pyhessian()

    split = load_cifar100("train", args.data_root)
    x_all = normalize(split.images[: args.images])
    y_all = split.labels[: args.images]
    B = args.batch_size
    batches = [(x_all[i : i + B], y_all[i : i + B]) for i in range(0, args.images, B)]
    n_slq = args.slq_images or args.images // 2
    slq_batches = [(x_all[i : i + B], y_all[i : i + B]) for i in range(0, n_slq, B)]
    model = make_model()
    params = list(model.parameters())
    P = sum(p.numel() for p in params)
    crit = nn.CrossEntropyLoss()
    started = datetime.datetime.now()
    t_start = time.perf_counter()
    head = (
        f"model P={P:,}; {args.images} images in {len(batches)} batches of {B}; SLQ on {n_slq}; "
        f"threads={args.threads}; cap {args.cap:.0f} s; torch {torch.__version__}; "
        f"{platform.processor() or platform.machine()}"
    )
    print(head)
    print(f"start {started:%Y-%m-%d %H:%M}, {load()}")
    loads = [os.getloadavg()[0]]
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []

    def grad_once(data: list) -> float:
        n = sum(len(b[1]) for b in data)
        t = time.perf_counter()
        model.zero_grad()
        for x, y in data:
            (F.cross_entropy(model(x), y) * (len(y) / n)).backward()
        return time.perf_counter() - t

    def grad_ref(data: list = batches, n: int = 2) -> float:
        t = min(grad_once(data) for _ in range(n))
        model.zero_grad(set_to_none=True)
        loads.append(os.getloadavg()[0])
        return t

    grad_once(batches)
    g0 = grad_ref(n=3)
    print(f"full-data gradient: {g0:.3f} s")
    t = time.perf_counter()
    importlib.import_module("torch._dynamo")  # what make_fx imports on the first trace of a process

    t_import = time.perf_counter() - t
    print(f"one-time import of torch._dynamo (the tracer's, once per process): {t_import:.1f} s")
    v = torch.randn(P, generator=torch.Generator().manual_seed(0))
    v_list = [c.view_as(p) for c, p in zip(v.split([p.numel() for p in params]), params)]

    # ---------------------------------------------------------------- product paths, side by side
    if "paths" in phases:
        print(f"\n== product paths, each forced ({load()})")
        g = grad_ref()
        c = time.process_time()
        grad_once(batches)
        g_cpu = time.process_time() - c
        for cls in (HessianOperator, GGNOperator):
            for path, cl in (("linearize", False), ("linearize", True), ("graph", None)):
                name = path + (", channels-last" if cl else "")
                forget_linearizations()
                op = cls(model, crit, batches, path=path, channels_last=cl)
                t = time.perf_counter()
                op.matvec(v)
                first = time.perf_counter() - t
                amort, amort_cpu = [], []
                for _ in range(3):
                    t, c = time.perf_counter(), time.process_time()
                    op.matvec(v)
                    amort.append(time.perf_counter() - t)
                    amort_cpu.append(time.process_time() - c)
                cold_op = cls(model, crit, batches, path=path, channels_last=cl, cache_bytes=0)  # trace now in memory
                t, c = time.perf_counter(), time.process_time()
                cold_op.matvec(v)
                cold, cold_cpu = time.perf_counter() - t, time.process_time() - c
                a = min(amort)
                print(
                    f"{cls.kind:7s} {name:24s}: first product {first:.2f} s (state "
                    f"built{', traced' if path == 'linearize' else ''}), "
                    f"amortised {a:.3f} s = {a / g:.2f}x grad (CPU time {min(amort_cpu) / g_cpu:.2f}x), "
                    f"cold {cold:.3f} s = {cold / g:.2f}x (CPU {cold_cpu / g_cpu:.2f}x), cache "
                    f"{op.cache_nbytes / 2**20:.0f} MiB"
                )
                rows.append(
                    (
                        f"{cls.kind} product, path={name}: amortised / cold (trace in memory)",
                        f"{a / g:.2f}x / {cold / g:.2f}x grad (CPU time {min(amort_cpu) / g_cpu:.2f}x / "
                        f"{cold_cpu / g_cpu:.2f}x)",
                        "",
                        "",
                        "",
                        f"cache {op.cache_nbytes / 2**20:.0f} MiB",
                    )
                )
        g = grad_ref()

    # ---------------------------------------------------------------- profile of one batch
    if "profile" in phases:
        from torch.profiler import ProfilerActivity, profile

        print(f"\n== where the time goes, one batch of {B} (self CPU ms per op; {load()})")
        xb, yb = batches[0]
        op = HessianOperator(model, crit, (xb, yb), path="linearize")
        opg = HessianOperator(model, crit, (xb, yb), path="graph")
        op.matvec(v)
        opg.matvec(v)

        def grad1() -> None:
            model.zero_grad()
            F.cross_entropy(model(xb), yb).backward()

        tables = {}
        for name, f in [
            ("gradient", grad1),
            ("linearize product", lambda: op.matvec(v)),
            ("graph product", lambda: opg.matvec(v)),
        ]:
            f()
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                f()
            tables[name] = {e.key: (e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()}
        keys = sorted(
            {k for t in tables.values() for k in t}, key=lambda k: -max(t.get(k, (0, 0))[0] for t in tables.values())
        )
        print(f"{'op':42s}" + "".join(f"{n:>22s}" for n in tables))
        for k in keys[:12]:
            print(
                f"{k[:42]:42s}"
                + "".join(f"{tables[n].get(k, (0, 0))[0]:14.0f} ms x{tables[n].get(k, (0, 0))[1]:<4d}" for n in tables)
            )
        print(f"{'total':42s}" + "".join(f"{sum(a for a, _ in t.values()):14.0f} ms      " for t in tables.values()))
        model.zero_grad(set_to_none=True)

    # ---------------------------------------------------------------- cold full-data product
    if "cold" in phases:
        print(f"\n== cold full-data Hessian-vector product ({load()})")
        g = grad_ref()
        forget_linearizations()
        op = HessianOperator(model, crit, batches, cache_bytes=0)
        t = time.perf_counter()
        hv = op.matvec(v)
        first = time.perf_counter() - t
        t = time.perf_counter()
        HessianOperator(model, crit, batches, cache_bytes=0, path="linearize").matvec(v)
        traced = time.perf_counter() - t
        lin_cold = []
        for _ in range(2):
            t = time.perf_counter()
            HessianOperator(model, crit, batches, cache_bytes=0, path="linearize").matvec(v)
            lin_cold.append(time.perf_counter() - t)
        t_lin = min(lin_cold)
        g = (g + grad_ref()) / 2
        warm = HessianOperator(model, crit, batches, cache_bytes=0)  # products until its trial has chosen
        while not warm._chooser.decided:
            warm.matvec(v)
        chosen = []
        for _ in range(2):
            t = time.perf_counter()
            HessianOperator(model, crit, batches, cache_bytes=0).matvec(v)
            chosen.append(time.perf_counter() - t)
        t_auto = min(chosen)
        g = (g + grad_ref()) / 2
        print(f"ours, first operator of the process (auto: graph): {first:.3f} s ({first / g:.2f}x grad)")
        print(
            f"ours, linearize incl. its trace: {traced:.3f} s; with the trace in memory: {t_lin:.3f} s "
            f"({t_lin / g:.2f}x grad)"
        )
        print(
            "ours, auto once the process has chosen "
            f"({warm.path_in_use}{', channels-last' if warm._chooser.cl else ''}): "
            f"{t_auto:.3f} s ({t_auto / g:.2f}x grad); {warm._chooser.why}"
        )
        res = {}
        for name in sorted(anchors):
            def one(cap: Cap, name: str = name) -> torch.Tensor:
                if name == "pyhessian":
                    out = capped_pyhessian(model, crit, batches, cap).dataloader_hv_product(v_list)[1]
                    return torch.cat([h.reshape(-1) for h in out])
                if name == "eigenthings":
                    return capped_eigenthings(model, batches, cap).matvec(v)
                return torch.as_tensor(
                    capped_curvlinops(model, crit, batches, cap).matvec(v.double().numpy()), dtype=torch.float32
                )

            runs = [run_capped(one, args.cap) for _ in range(2)]
            res[name] = min(runs, key=lambda r: r["seconds"])
            r = res[name]
            agree = float((r["result"] - hv).norm() / hv.norm()) if r["done"] else float("nan")
            print(
                f"{name}: {fmt_time(r, args.cap)} ({r['seconds'] / g:.2f}x grad), rel diff to ours {agree:.1e}, peak "
                f"+{r['mib']:.0f} MiB"
            )
        cells = [
            f"{res[n]['seconds']:.2f} s ({res[n]['seconds'] / g:.2f}x)" if n in res else ""
            for n in ("pyhessian", "eigenthings", "curvlinops")
        ]
        rows.append(
            (
                "cold Hessian product / gradient (auto, once chosen)",
                f"{t_auto:.2f} s ({t_auto / g:.2f}x)",
                *cells,
                "target <= 2.3x",
            )
        )
        rows.append(
            (
                "cold Hessian product, path=linearize (trace in memory)",
                f"{t_lin:.2f} s ({t_lin / g:.2f}x)",
                "",
                "",
                "",
                "",
            )
        )
        rows.append(
            (
                "cold Hessian product, first operator of a process (graph)",
                f"{first:.2f} s ({first / g:.2f}x)",
                "",
                "",
                "",
                "",
            )
        )
        rows.append(
            (
                "trace of the linearised product (once per model and batch shape)",
                f"{traced - t_lin:.1f} s",
                "",
                "",
                "",
                "",
            )
        )

    # ---------------------------------------------------------------- amortised products inside Lanczos
    if "lanczos" in phases:
        for cls in (HessianOperator, GGNOperator):
            print(f"\n== {cls.kind}: Lanczos, 20 steps, default operator ({load()})")
            g = grad_ref()
            forget_linearizations()
            op = cls(model, crit, batches)
            timed = Timed(op)
            with PeakRSS() as mem:
                t = time.perf_counter()
                lanczos(timed, 20, seed=0)
                t_l = time.perf_counter() - t
            per = timed.seconds / timed.calls
            g = (g + grad_ref()) / 2
            outside = 1 - timed.seconds / t_l
            pt = op.path_timings
            print(
                f"{t_l:.1f} s, {per:.3f} s per product ({per / g:.2f}x grad) including the trace and the trial "
                "(Lanczos "
                "announces its 20 products, so the trial is the first product); outside products "
                f"{100 * outside:.1f}%; cache {op.cache_nbytes / 2**20:.0f} MiB; "
                f"peak +{mem.mib:.0f} MiB"
            )
            print(f"  {op!r}")
            print(f"  trial on the first batch: {pt}")
            op2 = cls(model, crit, batches)  # a second operator: the path chosen is remembered
            timed2 = Timed(op2)
            t = time.perf_counter()
            lanczos(timed2, 20, seed=1)
            t_l2 = time.perf_counter() - t
            per2 = timed2.seconds / timed2.calls
            g = (g + grad_ref()) / 2
            print(
                f"  second operator on this model and batch shape: {t_l2:.1f} s, {per2:.3f} s per product "
                f"({per2 / g:.2f}x grad); "
                f"{op2._chooser.why}"
            )
            target = "target <= 1.3x" if cls is HessianOperator else "target <= 1.3x (GGN)"
            rows.append(
                (
                    f"amortised {cls.kind} product in Lanczos (20 steps) / gradient, operator on a model and batch "
                    f"shape seen before",
                    f"{per2:.2f} s ({per2 / g:.2f}x)",
                    "",
                    "",
                    "",
                    target,
                )
            )
            rows.append(("the same, first operator of the process (trace and trial included)",
                         f"{per:.2f} s ({per / g:.2f}x)", "", "", "", ""))
            rows.append(
                (f"time outside products ({cls.kind} Lanczos 20)", f"{100 * outside:.1f}%", "", "", "", "target <= 5%")
            )
            notes.append(
                f"{cls.kind} Lanczos, first operator: path "
                f"{op.path_in_use!r}{' (channels-last)' if op._chooser.cl else ''}, "
                f"{op._chooser.why}; traces {pt.get('trace', float('nan')):.1f} s"
            )

    # ---------------------------------------------------------------- blocks against vector by vector
    if "blocks" in phases:
        print(f"\n== blocks [2, P] against vector by vector, per vector ({load()})")
        g = grad_ref()
        V = torch.randn(2, P, generator=torch.Generator().manual_seed(1))
        for path in ("linearize", "graph"):
            op = HessianOperator(model, crit, batches, path=path)
            op.matvec(v)
            op.matvec(V)  # measures looped and vectorised on the first batch
            looped, vectorised = op.block_timings[path]
            cold = HessianOperator(model, crit, batches, path=path, cache_bytes=0)
            t = time.perf_counter()
            cold.matvec(V[0])
            cold.matvec(V[1])
            seq = (time.perf_counter() - t) / 2
            t = time.perf_counter()
            cold.matvec(V)
            blk = (time.perf_counter() - t) / 2
            print(
                f"{path:9s} kept state: looped {looped:.3f} s, vectorised {vectorised:.3f} s per vector (first batch, "
                "CPU s); "
                f"no cache: two single products {seq:.3f} s, one block {blk:.3f} s per vector ({seq / blk:.2f}x)"
            )
            rows.append(
                (
                    f"block of 2 vs 2 single products, path={path}, per vector",
                    f"kept: {vectorised / looped:.2f}x the looped time vectorised; no cache: block {blk / g:.2f}x vs "
                    f"{seq / g:.2f}x grad",
                    "",
                    "",
                    "",
                    "block where it pays",
                )
            )

    # ---------------------------------------------------------------- top-5 eigenvalues
    ref_top: torch.Tensor | None = None
    if "top5" in phases:
        print(f"\n== top-5 eigenvalues ({load()})")
        g_top = grad_ref()
        forget_linearizations()
        op = HessianOperator(model, crit, batches)
        timed = Timed(op)
        with PeakRSS() as mem_t:
            t = time.perf_counter()
            top = top_eigenvalues(timed, 5, tol=1e-4, max_iters=300)
            t_top = time.perf_counter() - t
        out_top = 1 - timed.seconds / t_top
        print(
            f"ours: {t_top:.1f} s, {top.num_products} products ({timed.seconds / timed.calls / g_top:.2f}x grad per "
            "product), "
            f"outside products {100 * out_top:.1f}%, peak +{mem_t.mib:.0f} MiB"
        )
        print(f"  {op!r}")
        print("  eigenvalues", [f"{e:.6f}" for e in top.eigenvalues.tolist()])
        res = {}
        if "curvlinops" in anchors:
            from scipy.sparse.linalg import eigsh

            def cl(cap: Cap) -> np.ndarray:
                return eigsh(capped_curvlinops(model, crit, batches, cap), k=5, which="LA", tol=args.eigsh_tol)[0]

            ref_cap = max(args.cap, args.reference_cap)
            res["curvlinops"] = r = run_capped(cl, ref_cap)
            if r["done"]:
                ref_top = torch.tensor(np.sort(r["result"])[::-1].copy(), dtype=torch.float64)
                diff = ((top.eigenvalues - ref_top).abs() / ref_top.abs())
                print(
                    f"curvlinops eigsh (tol {args.eigsh_tol:g}): {fmt_time(r, args.cap)}, {r['products']} products, "
                    f"peak +{r['mib']:.0f} MiB"
                )
                print("  eigenvalues", [f"{e:.6f}" for e in ref_top.tolist()])
                print("  relative difference ours - curvlinops:", [f"{d:.1e}" for d in diff.tolist()])
                rows.append(
                    (
                        "top-5: max relative difference ours (tol 1e-4) vs curvlinops eigsh",
                        f"{float(diff.max()):.1e}",
                        "",
                        "",
                        f"tol {args.eigsh_tol:g}",
                        "<= 1e-4",
                    )
                )
            else:
                print(f"curvlinops eigsh: {fmt_time(r, ref_cap)} after {r['products']} products: no reference")
        if "pyhessian" in anchors:
            def ph_top(cap: Cap) -> list:
                torch.manual_seed(0)
                return capped_pyhessian(model, crit, batches, cap).eigenvalues(top_n=5)[0]

            res["pyhessian"] = r = run_capped(ph_top, args.cap)
            extra = ""
            if r["done"] and ref_top is not None:
                e = torch.tensor(sorted(r["result"], reverse=True), dtype=torch.float64)
                extra = f", max rel err vs curvlinops {float(((e - ref_top).abs() / ref_top.abs()).max()):.1e}"
            print(
                f"PyHessian eigenvalues(top_n=5): {fmt_time(r, args.cap)}, {r['products']} products "
                f"({r['seconds'] / max(r['products'], 1) / g_top:.2f}x grad per product), peak +{r['mib']:.0f} "
                f"MiB{extra}"
            )
        if "eigenthings" in anchors:
            from hessian_eigenthings import lanczos as et_lanczos

            def et_top(cap: Cap) -> Any:
                return et_lanczos(capped_eigenthings(model, batches, cap), k=5, seed=0)

            res["eigenthings"] = r = run_capped(et_top, args.cap)
            extra = ""
            if r["done"]:
                e = r["result"].eigenvalues.double()
                conv = int(r["result"].converged.sum())
                extra = f", {conv}/5 converged by its own test"
                if ref_top is not None:
                    extra += f", max rel err vs curvlinops {float(((e - ref_top).abs() / ref_top.abs()).max()):.1e}"
            print(
                f"eigenthings lanczos(H, k=5): {fmt_time(r, args.cap)}, {r['products']} products, peak "
                f"+{r['mib']:.0f} MiB{extra}"
            )
        ratio = ""
        if "pyhessian" in res:
            r = res["pyhessian"]
            ratio = f"{r['seconds'] / t_top:.2f}x faster than PyHessian" + ("" if r["done"] else " (lower bound)")
        cells = [
            fmt_time(res[n], args.cap if n != "curvlinops" else max(args.cap, args.reference_cap)) if n in res else ""
            for n in ("pyhessian", "eigenthings", "curvlinops")
        ]
        rows.append(
            (
                "top-5 eigenvalues (ours to 1e-4)",
                f"{t_top:.1f} s, {top.num_products} products",
                *cells,
                f"{ratio}; target >= 4x",
            )
        )
        mems = [f"+{res[n]['mib']:.0f} MiB" if n in res else "" for n in ("pyhessian", "eigenthings", "curvlinops")]
        rows.append(("peak RSS growth, top-5", f"+{mem_t.mib:.0f} MiB", *mems, ""))
        rows.append(("time outside products (top-5)", f"{100 * out_top:.1f}%", "", "", "", "target <= 5%"))

    # ---------------------------------------------------------------- SLQ
    if "slq" in phases:
        print(f"\n== SLQ, 30 steps x 2 probes on {n_slq} images ({load()})")
        g = grad_ref(slq_batches)
        ours_runs: list[dict[str, Any]] = []
        ph_runs: list[dict[str, Any]] = []

        def ph_slq(cap: Cap) -> Any:
            torch.manual_seed(0)
            return capped_pyhessian(model, crit, slq_batches, cap).density(iter=30, n_v=2)

        # ours and PyHessian alternate (ours, PyHessian, ours, PyHessian, ...): a slow spell of the
        # machine then touches both, and the ratio is that of the medians
        for rep in range(args.slq_repeats):
            forget_linearizations()  # each run traces and chooses afresh, as a new process would
            op = HessianOperator(model, crit, slq_batches)
            timed = Timed(op)
            with PeakRSS() as mem_s:
                t = time.perf_counter()
                slq_density(timed, 30, 2, seed=0)
                t_s = time.perf_counter() - t
            ours_runs.append({"seconds": t_s, "mib": mem_s.mib, "outside": 1 - timed.seconds / t_s})
            print(f"ours, run {rep + 1}: {t_s:.1f} s ({timed.seconds / timed.calls / g:.2f}x grad per product), "
                  f"outside products {100 * (1 - timed.seconds / t_s):.1f}%, peak +{mem_s.mib:.0f} MiB, "
                  f"cache {op.cache_nbytes / 2**20:.0f} MiB")
            print(f"  {op!r}")
            if "pyhessian" in anchors:
                ph_runs.append(r := run_capped(ph_slq, args.cap))
                print(
                    f"PyHessian density(iter=30, n_v=2), run {rep + 1}: {fmt_time(r, args.cap)}, {r['products']} "
                    "products "
                    f"({r['seconds'] / max(r['products'], 1) / g:.2f}x grad per product), peak +{r['mib']:.0f} MiB"
                )
        t_s = float(np.median([r["seconds"] for r in ours_runs]))
        mem_s_mib = float(np.median([r["mib"] for r in ours_runs]))
        out_s = float(np.median([r["outside"] for r in ours_runs]))
        forget_linearizations()
        op0 = HessianOperator(model, crit, slq_batches, cache_bytes=0)
        with PeakRSS() as mem_0:
            t = time.perf_counter()
            slq_density(op0, 30, 2, seed=0)
            t_0 = time.perf_counter() - t
        print(f"ours, cache_bytes=0: {t_0:.1f} s, peak +{mem_0.mib:.0f} MiB; {op0!r}")
        res = {}
        if ph_runs:
            res["pyhessian"] = {
                "seconds": float(np.median([r["seconds"] for r in ph_runs])),
                "mib": float(np.median([r["mib"] for r in ph_runs])),
                "done": all(r["done"] for r in ph_runs),
                "products": ph_runs[0]["products"],
            }
            each = ", ".join(f"{o['seconds']:.1f} / {p['seconds']:.1f} s" for o, p in zip(ours_runs, ph_runs))
            mib_ours = ", ".join("+%.0f" % r["mib"] for r in ours_runs)
            mib_ph = ", ".join("+%.0f" % r["mib"] for r in ph_runs)
            notes.append(
                f"SLQ, ours / PyHessian in alternating runs: {each}; medians {t_s:.1f} / "
                f"{res['pyhessian']['seconds']:.1f} s; peak RSS growth ours {mib_ours} MiB, PyHessian {mib_ph} MiB"
            )
        if "eigenthings" in anchors:
            from hessian_eigenthings import spectral_density

            def et_slq(cap: Cap) -> Any:
                return spectral_density(
                    capped_eigenthings(model, slq_batches, cap), num_runs=2, lanczos_steps=30, seed=0
                )

            res["eigenthings"] = r = run_capped(et_slq, args.cap)
            print(
                f"eigenthings spectral_density(num_runs=2, lanczos_steps=30): {fmt_time(r, args.cap)}, "
                f"{r['products']} products, "
                f"peak +{r['mib']:.0f} MiB"
            )
        ratio = ""
        if "pyhessian" in res:
            r = res["pyhessian"]
            ratio = f"{r['seconds'] / t_s:.2f}x faster than PyHessian" + ("" if r["done"] else " (lower bound)")
        cells = [fmt_time(res[n], args.cap) if n in res else "" for n in ("pyhessian", "eigenthings")]
        label = f"SLQ 30 steps x 2 probes ({n_slq} images)" + (
            f", median of {args.slq_repeats} alternating runs" if args.slq_repeats > 1 else ""
        )
        rows.append((label, f"{t_s:.1f} s", *cells, "not an anchor", f"{ratio}; target >= 2.5x"))
        rows.append(("time outside products (SLQ)", f"{100 * out_s:.1f}%", "", "", "", "target <= 5%"))
        mems = [f"+{res[n]['mib']:.0f} MiB" if n in res else "" for n in ("pyhessian", "eigenthings")]
        mem_ratio = (
            f"{mem_s_mib / res['pyhessian']['mib']:.2f}x / {mem_0.mib / res['pyhessian']['mib']:.2f}x PyHessian"
            if "pyhessian" in res
            else ""
        )
        rows.append(
            (
                "peak RSS growth, SLQ (default cache / cache_bytes=0)",
                f"+{mem_s_mib:.0f} / +{mem_0.mib:.0f} MiB",
                *mems,
                "",
                f"{mem_ratio}; target <= 1.0x, or the extra is the cache",
            )
        )
        # What each keeps of its Lanczos runs by the end. Ours: the basis of one probe in the products' precision
        # (the probes run in lockstep only while a block pays, then one after the other; with cache_bytes=0 one
        # after the other from the start). PyHessian 0.1: the float32 vectors of one probe at a time (its
        # density() runs the probes one after the other).
        dt = str(default_basis_dtype(op0)).removeprefix("torch.")
        basis_ours, basis_ph = 30 * P * default_basis_dtype(op0).itemsize / 2**20, 30 * P * 4 / 2**20
        print(f"Lanczos vectors held at the end: ours {basis_ours:.0f} MiB (1 probe x 30 {dt}), "
              f"PyHessian {basis_ph:.0f} MiB (1 probe x 30 float32)")
        rows.append(("of which Lanczos vectors held at the end (computed)", f"{basis_ours:.0f} MiB (1 x 30 {dt})",
                     f"{basis_ph:.0f} MiB (1 x 30 float32)", "", "", ""))

    loads.append(os.getloadavg()[0])
    rows.insert(0, ("full-data gradient (unit; re-timed before each phase)", f"{g0:.2f} s", "", "", "", "1.00x"))
    table = ["| figure | ours | PyHessian 0.1 | hessian-eigenthings 1.0.0a5 | curvlinops 3.0.1 | ratio / target |",
             "| --- | --- | --- | --- | --- | --- |"] + ["| " + " | ".join(r) + " |" for r in rows]
    one, five, fifteen = os.getloadavg()
    summary = (f"1-minute load average sampled before each phase: min {min(loads):.2f}, max {max(loads):.2f}; "
               f"at the end {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min)")
    print("\n" + "\n".join(table))
    for n in notes:
        print("- " + n)
    print(summary)
    if args.markdown:
        cmd = "    .venv/bin/python benchmarks/bench_curvature.py " + " ".join(sys.argv[1:])
        with open(args.markdown, "a") as f:
            f.write(
                f"\n## Run of {started:%Y-%m-%d %H:%M} ({(time.perf_counter() - t_start) / 60:.0f} "
                f"min)\n\n{cmd}\n\n{head}\n\n"
            )
            f.write("\n".join(table) + "\n\n" + "".join(f"- {n}\n" for n in notes) + f"- {summary}\n")


if __name__ == "__main__":
    main()
