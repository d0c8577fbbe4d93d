"""Curvature products on three architectures against PyHessian 0.1, hessian-eigenthings 1.0.0a5 and
curvlinops 3.0.1, side by side in one process, as ratios to a full-data gradient.

Architectures (CIFAR-100 images, 100 classes, mean cross-entropy, float32, models in eval mode):

* ``relu``: the ReLU / max-pool CNN of ``bench_curvature.py`` (``_bench_common.make_model``) (P = 158,820);
* ``smooth``: tanh activations and average pooling, global average pool (P = 48,980);
* ``resnet``: a residual network with BatchNorm (running statistics; P = 83,892).

Every figure is CPU time of this process (``time.process_time``, all threads), gradient and products alike, so
that other work on a shared machine does not stretch one call and not another. Per architecture, the unit (one
full-data gradient) is re-timed before each figure, and:

* first product of a process: a fresh operator on a model the process has forgotten
  (``forget_linearizations``), nothing announced, against each anchor's construction and first product;
  ours and PyHessian alternate ``--repeats`` times (hessian-eigenthings and curvlinops in the first round
  only) and the medians are given. ``torch._dynamo``, which the tracer imports once per process, is imported
  first and reported on its own.
* amortised products: ours inside a 20-step Lanczos (trace and trial included), each anchor's mean over
  two more products on the object it built (none of them keeps anything between products).
* first product of a second operator: a new operator (and a new loss object) on the model and batch shape
  the Lanczos run has seen, default cache and ``cache_bytes=0``.

The ``memory`` phase (the ReLU CNN, ``--mem-images`` in batches of ``--mem-batch``): peak resident-set growth of
one product with ``cache_bytes=0`` for several chunk sizes (where the peak comes from), then SLQ
(``--slq-steps`` x 2 probes) with ``cache_bytes=0``, with the default cache (chunks of ``kept_chunk`` samples on the
CPU) and with the default cache on whole batches (``kept_chunk=None``) against PyHessian's ``density``.

    .venv/bin/python benchmarks/bench_architectures.py                    # every phase
    .venv/bin/python benchmarks/bench_architectures.py --archs smooth --phases products --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import (  # noqa: E402
    Cap,
    PeakRSS,
    capped_curvlinops,
    capped_eigenthings,
    capped_pyhessian,
    load,
    make_model,
    patch_pyhessian,
    run_capped,
)

from hessian_lib.curvature import (  # noqa: E402
    CurvatureOperator,
    HessianOperator,
    forget_linearizations,
    lanczos,
    slq_density,
)
from hessian_lib.data import load_cifar100, normalize  # noqa: E402

ANCHORS = ("pyhessian", "eigenthings", "curvlinops")
#: Every time here is this process's CPU time (all its threads): other processes on a shared machine stretch the
#: wall time of whichever call they overlap, but not the work a call does.
clock = time.process_time


def smooth_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(32, 48, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(48, 64, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 100),
    )


class Block(nn.Module):
    """A basic residual block: two 3x3 convolutions with BatchNorm, a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.skip(x))


def resnet(x: torch.Tensor, seed: int = 0) -> nn.Module:
    """A small ResNet with running statistics set on ``x`` (then in eval mode)."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 100),
    )
    m.train()
    with torch.no_grad():
        for i in range(0, len(x), 128):
            m(x[i : i + 128])
    return m.eval()


def gradient_seconds(model: nn.Module, batches: list, n: int = 2) -> float:
    """Best of ``n`` full-data gradients (seconds)."""
    total = sum(len(b[1]) for b in batches)
    best = float("inf")
    for _ in range(n):
        t = clock()
        model.zero_grad()
        for x, y in batches:
            (F.cross_entropy(model(x), y) * (len(y) / total)).backward()
        best = min(best, clock() - t)
    model.zero_grad(set_to_none=True)
    return best


def anchor_products(name: str, model: nn.Module, batches: list, v: torch.Tensor, count: int) -> list[float]:
    """Seconds of the anchor's construction plus first product, then of ``count - 1`` more products."""
    crit = nn.CrossEntropyLoss()
    params = list(model.parameters())
    v_list = [c.view_as(p) for c, p in zip(v.split([p.numel() for p in params]), params)]
    free = Cap(1e9)  # never stops: the anchors run a few products here
    out, t = [], clock()
    if name == "pyhessian":
        obj = capped_pyhessian(model, crit, batches, free)
        for _ in range(count):
            obj.dataloader_hv_product(v_list)
            out.append(clock() - t)
            t = clock()
    elif name == "eigenthings":
        obj = capped_eigenthings(model, batches, free)
        for _ in range(count):
            obj.matvec(v)
            out.append(clock() - t)
            t = clock()
    else:
        obj = capped_curvlinops(model, crit, batches, free)
        vn = v.double().numpy()
        for _ in range(count):
            obj.matvec(vn)
            out.append(clock() - t)
            t = clock()
    return out


def products_phase(arch: str, model: nn.Module, batches: list, args: argparse.Namespace, rows: list) -> None:
    P = sum(p.numel() for p in model.parameters())
    v = torch.randn(P, generator=torch.Generator().manual_seed(0))
    print(f"\n== {arch}: P={P:,}, {sum(len(b[1]) for b in batches)} images in {len(batches)} batches ({load()})")
    g = gradient_seconds(model, batches, 3)
    print(f"gradient {g:.3f} s")
    first: dict[str, list[float]] = {"ours": []}
    amort: dict[str, list[float]] = {}
    ref = None
    for rep in range(args.repeats):
        forget_linearizations()
        g_rep = gradient_seconds(model, batches)
        t = clock()
        op = HessianOperator(model, nn.CrossEntropyLoss(), batches)
        ref = op.matvec(v)
        first["ours"].append((clock() - t) / g_rep)
        print(f"  run {rep + 1}: ours first product {first['ours'][-1]:.2f}x grad ({op._chooser.why})")
        for name in args.anchors if rep == 0 else [a for a in args.anchors if a == "pyhessian"]:
            g_rep = gradient_seconds(model, batches)
            try:
                secs = anchor_products(name, model, batches, v, 3 if rep == 0 else 1)
            except (NotImplementedError, RuntimeError) as err:
                print(f"  run {rep + 1}: {name} fails: {type(err).__name__}: {str(err)[:120]}")
                continue
            first.setdefault(name, []).append(secs[0] / g_rep)
            if len(secs) > 1:
                amort[name] = [s / g_rep for s in secs[1:]]
            print(f"  run {rep + 1}: {name} construction + first product {secs[0] / g_rep:.2f}x grad")
    # amortised: ours inside Lanczos, trace and trial included (a model the process has forgotten)
    forget_linearizations()
    g_l = gradient_seconds(model, batches)
    op = HessianOperator(model, nn.CrossEntropyLoss(), batches)
    t = clock()
    lanczos(op, args.lanczos_steps, seed=0)
    total = clock() - t
    ours_amort = total / op.num_products / g_l  # the whole run per product (outside them: well under 1%)
    print(f"  ours Lanczos {args.lanczos_steps} steps: {total:.1f} s, {ours_amort:.2f}x grad per product; {op!r}")
    # a second operator on the model and batch shape seen before, with a new loss object
    g2 = gradient_seconds(model, batches)
    second = {}
    for label, kw in (("default cache", {}), ("cache_bytes=0", {"cache_bytes": 0})):
        t = clock()
        op2 = HessianOperator(model, nn.CrossEntropyLoss(), batches, **kw)
        out = op2.matvec(v)
        second[label] = (clock() - t) / g2
        diff = float((out - ref).norm() / ref.norm())
        print(f"  second operator ({label}): {second[label]:.2f}x grad, path {op2.path_in_use!r} ({op2._chooser.why});"
              f" rel diff to the first product {diff:.1e}")
    med = {k: statistics.median(x) for k, x in first.items()}
    cells = [f"{med[a]:.2f}x (ours {med['ours'] / med[a]:.2f}x it)" if a in med else "" for a in ANCHORS]
    rows.append((f"{arch}: first product of a process (construction included)", f"{med['ours']:.2f}x", *cells,
                 "ours <= 0.8x PyHessian"))
    cells = [f"{statistics.mean(amort[a]):.2f}x" if a in amort else "" for a in ANCHORS]
    rows.append((f"{arch}: amortised product (ours: Lanczos {args.lanczos_steps})", f"{ours_amort:.2f}x", *cells, ""))
    rows.append((f"{arch}: first product of a second operator (default / cache_bytes=0)",
                 f"{second['default cache']:.2f}x / {second['cache_bytes=0']:.2f}x", "", "", "", "<= 2.0x"))


def memory_phase(args: argparse.Namespace, rows: list) -> None:
    split = load_cifar100("train", args.data_root)
    x, y = normalize(split.images[: args.mem_images]), split.labels[: args.mem_images]
    B = args.mem_batch
    batches = [(x[i : i + B], y[i : i + B]) for i in range(0, len(y), B)]
    model = make_model().eval()
    P = sum(p.numel() for p in model.parameters())
    v = torch.randn(P, generator=torch.Generator().manual_seed(0))
    print(f"\n== memory: ReLU CNN, {len(y)} images in batches of {B} ({load()})")
    crit = nn.CrossEntropyLoss()
    HessianOperator(model, crit, batches, path="linearize").matvec(v)  # traces and allocator warm
    g, default_chunk = gradient_seconds(model, batches), CurvatureOperator.least_memory_chunk
    for chunk in (B, B // 2, B // 4, B // 8):
        CurvatureOperator.least_memory_chunk = chunk
        HessianOperator(model, crit, batches, path="linearize", cache_bytes=0).matvec(v)  # this chunk's trace
        with PeakRSS() as mem:
            t = clock()
            HessianOperator(model, crit, batches, path="linearize", cache_bytes=0).matvec(v)
            t = clock() - t
        print(f"  one product, cache_bytes=0, linearised path, chunks of {chunk}: peak +{mem.mib:.0f} MiB, "
              f"{t / g:.2f}x grad")
    CurvatureOperator.least_memory_chunk = default_chunk
    found: dict[str, list[float]] = {}
    kept_chunk, cache = CurvatureOperator.kept_chunk, {}
    runs = (("cache_bytes=0", {"cache_bytes": 0}, kept_chunk), ("default", {}, kept_chunk),
            ("default, whole batches", {}, None))  # the last: kept_chunk=None, a cache per batch as before
    for _ in range(args.repeats):
        forget_linearizations()
        for label, kw, chunk in runs:
            CurvatureOperator.kept_chunk = chunk
            op = HessianOperator(model, crit, batches, **kw)
            with PeakRSS() as mem:
                slq_density(op, args.slq_steps, 2, seed=0)
            found.setdefault(label, []).append(mem.mib)
            print(f"  ours SLQ {args.slq_steps} x 2, {label}: peak +{mem.mib:.0f} MiB, cache "
                  f"{op.cache_nbytes / 2**20:.0f} MiB; {op!r}")
            cache[label] = op.cache_nbytes / 2**20
        CurvatureOperator.kept_chunk = kept_chunk
        r = run_capped(lambda c: capped_pyhessian(model, crit, batches, c).density(iter=args.slq_steps, n_v=2), 1e9)
        found.setdefault("pyhessian", []).append(r["mib"])
        print(f"  PyHessian density(iter={args.slq_steps}, n_v=2): peak +{r['mib']:.0f} MiB")
    med = {k: statistics.median(x) for k, x in found.items()}
    over = med["default"] - cache["default"] - med["cache_bytes=0"]
    side = "over" if over > 0 else "under"
    rows.append(("peak RSS growth, SLQ (cache_bytes=0 / default; cache)",
                 f"+{med['cache_bytes=0']:.0f} / +{med['default']:.0f} MiB (cache {cache['default']:.0f} MiB)",
                 f"+{med['pyhessian']:.0f} MiB", "", "",
                 f"{med['cache_bytes=0'] / med['pyhessian']:.2f}x / {med['default'] / med['pyhessian']:.2f}x PyHessian;"
                 f" target <= 0.75x / cache_bytes=0 plus the cache ({abs(over):.0f} MiB {side} it)"))
    rows.append(("the same, default cache on whole batches (kept_chunk=None)",
                 f"+{med['default, whole batches']:.0f} MiB (cache {cache['default, whole batches']:.0f} MiB)",
                 "", "", "", f"{med['default, whole batches'] / med['pyhessian']:.2f}x PyHessian"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--archs", default="relu,smooth,resnet")
    ap.add_argument("--phases", default="products,memory")
    ap.add_argument("--anchors", default=",".join(ANCHORS))
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--lanczos-steps", type=int, default=20)
    ap.add_argument("--mem-images", type=int, default=1024)
    ap.add_argument("--mem-batch", type=int, default=512)
    ap.add_argument("--slq-steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    args.anchors = [a for a in args.anchors.split(",") if a]
    if set(args.anchors) - set(ANCHORS):
        ap.error(f"anchors are {ANCHORS}")
    torch.set_num_threads(args.threads)
    patch_pyhessian()
    for mod in ("pyhessian", "hessian_eigenthings", "curvlinops"):
        importlib.import_module(mod)
    t = clock()
    importlib.import_module("torch._dynamo")
    print(f"torch {torch.__version__}; {platform.processor() or platform.machine()}; threads {args.threads}; "
          f"start {datetime.datetime.now():%Y-%m-%d %H:%M}; {load()}")
    print(f"one-time import of torch._dynamo (the tracer's, once per process): {clock() - t:.1f} s")
    split = load_cifar100("train", args.data_root)
    x, y = normalize(split.images[: args.images]), split.labels[: args.images]
    B = args.batch_size
    batches = [(x[i : i + B], y[i : i + B]) for i in range(0, args.images, B)]
    rows: list[tuple[str, ...]] = []
    phases = args.phases.split(",")
    if "products" in phases:
        models = {"relu": make_model, "smooth": smooth_cnn, "resnet": lambda: resnet(x)}
        for arch in args.archs.split(","):
            products_phase(arch, models[arch]().eval(), batches, args, rows)
    if "memory" in phases:
        memory_phase(args, rows)
    print("\n| figure (x a full-data gradient) | ours | PyHessian 0.1 | hessian-eigenthings 1.0.0a5 | curvlinops 3.0.1 "
          "| target |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    one, five, fifteen = os.getloadavg()
    print(f"end {datetime.datetime.now():%Y-%m-%d %H:%M}; load {one:.2f} / {five:.2f} / {fifteen:.2f}")


if __name__ == "__main__":
    main()
