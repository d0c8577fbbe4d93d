"""Training throughput (images per second) of each network, through the library's own trainer.

    python benchmarks/bench_train.py                      # CPU-profile sizes on this machine's cores
    python benchmarks/bench_train.py --device cuda        # paper-scale networks on a GPU (bf16 + channels_last)

Each measurement trains for ``--warmup`` steps, then times ``--steps`` steps of
:func:`hessian_lib.train.fit` (data gather, batched augmentation, normalisation, forward,
backward, SGD step; no evaluation) on real CIFAR-100 images, and reports images per second.
The figures go to stdout and into ``--out`` (a Markdown file; the section of this device is replaced).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

from hessian_lib.data import load_cifar100, stratified_indices
from hessian_lib.models import build_model, count_parameters
from hessian_lib.profiles import TrainSizes, load_profile
from hessian_lib.train import fit, resolve_device

#: Small versions of every architecture (what a CPU profile can afford); the first is the cpu profile's.
CPU_SIZES = {
    "vgg16": dict(width=0.125),
    "vgg16_bn": dict(width=0.125),
    "wideresnet28": dict(depth=10, widen_factor=2, width=0.5),
    "preresnet110": dict(depth=11, width=0.5),
    "preresnet164": dict(depth=20, width=0.5),
}
#: The paper's sizes.
PAPER_SIZES = {
    "vgg16": {},
    "vgg16_bn": {},
    "wideresnet28": dict(widen_factor=10),
    "preresnet110": {},
    "preresnet164": {},
}


def measure(name: str, knobs: dict, batch_size: int, steps: int, warmup: int, device: torch.device,
            data_root: str | None) -> dict:
    train = load_cifar100("train", data_root)
    n = batch_size * (steps + warmup)
    subset = train.subset(stratified_indices(train.labels, min(n, len(train))))
    torch.manual_seed(0)
    model = build_model(name, **knobs)
    cfg = TrainSizes(model=name, epochs=1, batch_size=batch_size, lr=1e-3, schedule="constant",
                     checkpoint_every=1, divergence_loss=1e9)
    marks: list[float] = []

    def on_step(info):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())

    fit(model, subset, cfg, device=device, quiet=True, on_step=on_step)
    timed = marks[warmup - 1:] if warmup > 0 else marks
    seconds = timed[-1] - timed[0]
    images = batch_size * (len(timed) - 1)
    return {"model": name, "knobs": knobs, "params": count_parameters(model), "batch_size": batch_size,
            "images_per_s": images / seconds, "ms_per_step": 1000 * seconds / (len(timed) - 1)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--sizes", choices=["cpu", "paper"], default=None,
                        help="network sizes (default: cpu on CPU, paper on CUDA)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the profile's (cpu on CPU, paper on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CPU, 50 on CUDA)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("train_results.md")))
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes_name = args.sizes or ("paper" if device.type == "cuda" else "cpu")
    sizes = PAPER_SIZES if sizes_name == "paper" else CPU_SIZES
    profile = load_profile("paper" if sizes_name == "paper" else "cpu")
    batch = args.batch_size or profile.train.batch_size
    steps = args.steps or (50 if device.type == "cuda" else 20)
    models = args.models or list(sizes)

    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, bf16 autocast, channels_last"
    else:
        where = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads, float32"
    rows = []
    load_before = os.getloadavg()[0]
    for name in models:
        row = measure(name, sizes[name], batch, steps, args.warmup, device, args.data_root)
        rows.append(row)
        print(f"{name:14s} {row['params']:>11,d} params  B={batch}  {row['images_per_s']:9.1f} img/s  "
              f"{row['ms_per_step']:8.1f} ms/step", flush=True)

    load_after = os.getloadavg()[0]
    busy = (" (above the core count: other work shared the cores, so the figures are low)"
            if max(load_before, load_after) > (os.cpu_count() or 1) else "")
    title = f"## {sizes_name} sizes on {device.type}"
    lines = [title, "", f"{where}; torch {torch.__version__}; batch size {batch}; {steps} timed steps after "
             f"{args.warmup} warm-up steps; measured {time.strftime('%Y-%m-%d')}, 1-minute load average "
             f"{load_before:.1f} before and {load_after:.1f} after{busy}.", "",
             "| model | knobs | parameters | images/s | ms/step |", "|---|---|---:|---:|---:|"]
    for r in rows:
        knobs = ", ".join(f"{k}={v}" for k, v in r["knobs"].items()) or "paper size"
        lines.append(f"| {r['model']} | {knobs} | {r['params']:,} | {r['images_per_s']:.0f} | {r['ms_per_step']:.1f} |")
    section = "\n".join(lines) + "\n"
    out = Path(args.out)
    text = out.read_text() if out.exists() else "# Training throughput\n\nWritten by `benchmarks/bench_train.py`.\n\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
