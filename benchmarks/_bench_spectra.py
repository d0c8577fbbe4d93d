"""The spectrum phases of ``bench_curvature.py``: the top-5 eigenvalues (curvlinops' ``eigsh`` the reference)
and SLQ (ours and PyHessian alternating), each phase a function of the run's :class:`~_bench_common.Workload`."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from _bench_common import (
    Cap,
    PeakRSS,
    Timed,
    Workload,
    capped_curvlinops,
    capped_eigenthings,
    capped_pyhessian,
    faster_than_pyhessian,
    fmt_time,
    load,
    run_capped,
)

from hessian_lib.curvature import (
    HessianOperator,
    default_basis_dtype,
    forget_linearizations,
    slq_density,
    top_eigenvalues,
)


def top5_phase(w: Workload) -> None:
    """Top-5 eigenvalues: ours to 1e-4 against curvlinops' ``eigsh`` (the reference) and the anchors."""
    model, crit, batches, rows, grad_ref, args, anchors = (
        w.model, w.crit, w.batches, w.rows, w.grad_ref, w.args, w.anchors
    )
    ref_top: torch.Tensor | None = None
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
    ratio = faster_than_pyhessian(res, t_top)
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


def slq_phase(w: Workload) -> None:
    """SLQ, 30 steps x 2 probes: ours and PyHessian alternating (medians), ``cache_bytes=0``, hessian-eigenthings."""
    model, crit, slq_batches, n_slq, P, rows, notes, grad_ref, args, anchors = (
        w.model, w.crit, w.slq_batches, w.n_slq, w.P, w.rows, w.notes, w.grad_ref, w.args, w.anchors
    )
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
    ratio = faster_than_pyhessian(res, t_s)
    cells = [fmt_time(res[n], args.cap) if n in res else "" for n in ("pyhessian", "eigenthings")]
    label = f"SLQ 30 steps x 2 probes ({n_slq} images)" + (
        f", median of {args.slq_repeats} alternating runs" if args.slq_repeats > 1 else ""
    )
    rows.append((label, f"{t_s:.1f} s", *cells, "not an anchor", f"{ratio}; target >= 3x"))
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
