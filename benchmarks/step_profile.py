"""Where one training step of a recipe spends its time, phase by phase, as the trainer's ``run_epoch`` takes it.

    python benchmarks/step_profile.py                  # the cpu recipe, bf16 and float32, 32- and 24-pixel crops

Phases: *data* (the batch's indices, gather, crop + flip, normalise, channels_last), *forward*
(under the recipe's autocast), *loss* (cross-entropy and the per-step statistics read back for the
divergence check), *backward*, *optimiser* (``zero_grad`` and ``step``). Each phase is timed with the
wall clock over ``steps`` steps after ``warmup`` steps (CPU only: on CUDA the phases would need a
synchronisation each). :func:`top_ops` lists the operators that take the most time (torch.profiler,
self time). Used by ``bench_train.py`` for the table in ``train_results.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch
import torch.nn.functional as F

from hessian_lib.augment import apply_crop_flip, draw_crop_flip
from hessian_lib.data import normalize
from hessian_lib.device import bf16_native
from hessian_lib.experiments import model_from_profile
from hessian_lib.profiles import TrainSizes, load_profile
from hessian_lib.trainer import derive_seed, make_optimizer

PHASES = ("data", "forward", "loss", "backward", "optimiser")


def _stepper(recipe: TrainSizes, size: int, bf16: bool):
    """A closure taking one training step of ``recipe`` on random uint8 images, timing its phases into a dict."""
    torch.manual_seed(derive_seed(0, "init"))
    model = model_from_profile(recipe).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), recipe)
    model.train()
    gen = torch.Generator().manual_seed(0)
    n = 50 * recipe.batch_size
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 100, (n,), generator=gen)
    perm = torch.randperm(n, generator=gen)
    padding = 4 if size == 32 else (32 - size) // 2
    offsets, flips = draw_crop_flip(n, gen, padding=padding)
    totals = dict.fromkeys(PHASES, 0.0)
    state = {"s": 0}

    def step() -> None:
        s = state["s"] % (n // recipe.batch_size)
        state["s"] += 1
        t0 = time.perf_counter()
        pos = torch.arange(s * recipe.batch_size, (s + 1) * recipe.batch_size)
        idx = perm[pos]
        x = apply_crop_flip(images[idx], offsets[pos], flips[pos], padding=4 if size == 32 else 0,
                            size=None if size == 32 else size)
        x = normalize(x).contiguous(memory_format=torch.channels_last)
        y = labels[idx]
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        t2 = time.perf_counter()
        loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
        stats = torch.stack([loss.detach().double(), (logits.detach().argmax(1) == y).sum().double()])
        stats[0].item()
        t3 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        optimizer.step()
        t5 = time.perf_counter()
        for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            totals[phase] += seconds

    return step, totals


def step_phases(recipe: TrainSizes, size: int = 32, bf16: bool = True, steps: int = 20,
                warmup: int = 3) -> dict[str, float]:
    """Milliseconds per step of each phase (and ``total``) of ``recipe`` on ``size``-pixel crops, on the CPU."""
    step, totals = _stepper(recipe, size, bf16)
    for _ in range(warmup):
        step()
    for phase in PHASES:
        totals[phase] = 0.0
    for _ in range(steps):
        step()
    out = {phase: 1000 * totals[phase] / steps for phase in PHASES}
    out["total"] = sum(out.values())
    return out


def top_ops(recipe: TrainSizes, size: int = 32, bf16: bool = True, steps: int = 10,
            count: int = 8) -> list[tuple[str, float]]:
    """The ``count`` operators with the most self CPU time: (name, milliseconds per step)."""
    from torch.profiler import ProfilerActivity, profile

    step, _ = _stepper(recipe, size, bf16)
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1000 / steps) for e in ops[:count]]


def phase_table(recipe: TrainSizes, steps: int = 20, warmup: int = 3) -> list[str]:
    """Markdown rows: each phase's ms per step for bf16 and float32 at 32 and the recipe's low-res crop size,
    the four measured alternately (bf16, float32, bf16, float32, ...) so that load changes hit them alike."""
    sizes = sorted({32, recipe.low_res_size}, reverse=True)
    settings = [(size, bf16) for size in sizes for bf16 in (True, False)]
    runs: dict[tuple[int, bool], list[dict[str, float]]] = {k: [] for k in settings}
    for _ in range(2):
        for size, bf16 in settings:
            runs[(size, bf16)].append(step_phases(recipe, size, bf16, steps, warmup))
    best = {k: min(v, key=lambda r: r["total"]) for k, v in runs.items()}
    head = " | ".join(f"{size} px {'bf16' if bf16 else 'float32'}" for size, bf16 in settings)
    lines = [f"| phase (ms per step) | {head} |", "|---|" + "---:|" * len(settings)]
    for phase in (*PHASES, "total"):
        cells = " | ".join(f"{best[k][phase]:.1f} ({100 * best[k][phase] / best[k]['total']:.0f}%)"
                           if phase != "total" else f"**{best[k][phase]:.1f}**" for k in settings)
        lines.append(f"| {phase} | {cells} |")
    speedups = ", ".join(f"{size} px {best[(size, False)]['total'] / best[(size, True)]['total']:.2f}x"
                         for size in sizes)
    lines += ["", f"bf16 autocast against float32, whole step: {speedups} (the faster of two alternating "
              "measurements of each)."]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = dataclasses.replace(load_profile(args.profile).train)
    print(f"{torch.get_num_threads()} threads; native bf16 on this CPU: {bf16_native(torch.device('cpu'))}")
    print("\n".join(phase_table(recipe, args.steps)))
    for name, ms in top_ops(recipe):
        print(f"{ms:7.2f} ms  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
