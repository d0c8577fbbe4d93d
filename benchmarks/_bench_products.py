"""The product phases of ``bench_curvature.py``: each product path forced, a profile of one batch, the cold
full-data product against the anchors, amortised products inside Lanczos and blocks against single products.

Every function takes the run's :class:`~_bench_common.Workload`, prints its figures and appends its table rows.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _bench_common import (
    Cap,
    PeakRSS,
    Timed,
    Workload,
    capped_curvlinops,
    capped_eigenthings,
    capped_pyhessian,
    fmt_time,
    load,
    run_capped,
)

from hessian_lib.curvature import GGNOperator, HessianOperator, forget_linearizations, lanczos


def paths_phase(w: Workload) -> None:
    """Every product path forced in turn, Hessian and GGN: first, amortised and cold products."""
    model, crit, batches, v, rows, grad_ref = w.model, w.crit, w.batches, w.v, w.rows, w.grad_ref
    grad_once = w.grad_once
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
    grad_ref()


def profile_phase(w: Workload) -> None:
    """Self CPU time per aten op of a gradient and of one product per path, one batch."""
    model, crit, batches, v, B = w.model, w.crit, w.batches, w.v, w.B
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


def cold_phase(w: Workload) -> None:
    """The cold full-data Hessian-vector product: ours on each path and every anchor, with its construction."""
    model, crit, batches, v, v_list, rows, grad_ref, args, anchors = (
        w.model, w.crit, w.batches, w.v, w.v_list, w.rows, w.grad_ref, w.args, w.anchors
    )
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


def lanczos_phase(w: Workload) -> None:
    """Amortised products inside a 20-step Lanczos, Hessian and GGN, first and second operator."""
    model, crit, batches, rows, notes, grad_ref = w.model, w.crit, w.batches, w.rows, w.notes, w.grad_ref
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


def blocks_phase(w: Workload) -> None:
    """Blocks ``[2, P]`` against two single products, per vector, on each path."""
    model, crit, batches, v, P, rows, grad_ref = w.model, w.crit, w.batches, w.v, w.P, w.rows, w.grad_ref
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
