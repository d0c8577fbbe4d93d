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
    .venv/bin/python benchmarks/bench_curvature.py --images 256 --batch-size 128 --cap 120   # quick"""

# The phases live in _bench_products.py (paths, profile, cold, lanczos, blocks) and _bench_spectra.py (top5, slq);
# what they share in _bench_common.py.

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import LIBC, Workload, load, make_model, patch_pyhessian  # noqa: E402
from _bench_products import blocks_phase, cold_phase, lanczos_phase, paths_phase, profile_phase  # noqa: E402
from _bench_spectra import slq_phase, top5_phase  # noqa: E402

from hessian_lib.data import load_cifar100, normalize  # noqa: E402

PHASES = ("paths", "profile", "cold", "lanczos", "blocks", "top5", "slq")
RUNS = {"paths": paths_phase, "profile": profile_phase, "cold": cold_phase, "lanczos": lanczos_phase,
        "blocks": blocks_phase, "top5": top5_phase, "slq": slq_phase}


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
        if LIBC is None or not LIBC.mallopt(-3, args.mmap_threshold):  # M_MMAP_THRESHOLD
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
    v = torch.randn(P, generator=torch.Generator().manual_seed(0))
    v_list = [c.view_as(p) for c, p in zip(v.split([p.numel() for p in params]), params)]
    w = Workload(args, model, crit, batches, slq_batches, n_slq, B, P, v, v_list, anchors)
    w.loads.append(os.getloadavg()[0])
    w.grad_once(batches)
    g0 = w.grad_ref(n=3)
    print(f"full-data gradient: {g0:.3f} s")
    t = time.perf_counter()
    importlib.import_module("torch._dynamo")  # what make_fx imports on the first trace of a process

    t_import = time.perf_counter() - t
    print(f"one-time import of torch._dynamo (the tracer's, once per process): {t_import:.1f} s")
    for name in PHASES:
        if name in phases:
            RUNS[name](w)

    rows, notes, loads = w.rows, w.notes, w.loads
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
