"""Time the paper profile's spectrum on one device: WRN-28-10, Lanczos over all of CIFAR-100.

The paper profile's spectrum is one Lanczos run of 100 steps on the empirical Hessian of
WRN-28-10 (``hessian_lib.models.build_model("wideresnet28")``, 36.5 M parameters, BatchNorm
with running statistics) over the 50,000 training images, mean cross-entropy, float32. A full
run may not fit a short GPU slot, so this script times ``--steps`` Lanczos steps (default 3)
over ``--images`` images (default 50,000) with the library's default operator
(``HessianOperator``, ``path="auto"``, ``cache_bytes`` 2 GiB) and extrapolates to
``--target-steps`` (default 100): the steps measured, plus the last measured step's time for
each step not run (the first steps carry the one-time set-up: the first-order graph products
before the auto trial, the trace, the trial). Measured and extrapolated figures are printed
apart. It stops early, and extrapolates from what it measured, when the next step would
pass ``--budget`` seconds (default 210), so the defaults finish within about 4 minutes.

``--synthetic`` uses random uint8 images of CIFAR shape and random labels (for a machine
without the data; the time of a product does not depend on pixel values). Convolutions use
PyTorch's default precision on the device (on NVIDIA GPUs cuDNN allows TF32 unless
``--no-tf32``); the products are float32 tensors either way. Figures go to stdout and, as a
dated section, to ``benchmarks/curvature_results.md`` (``--no-write`` to skip).

    .venv/bin/python benchmarks/bench_paper_spectrum.py --device cuda             # the paper's sizes, one GPU
    .venv/bin/python benchmarks/bench_paper_spectrum.py --device cpu --synthetic \\
        --images 64 --batch-size 32 --steps 2 --width 0.125 --depth 10 --no-write  # a check on CPU
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hessian_lib.curvature import DEFAULT_CACHE_BYTES, HessianOperator, LanczosProcess  # noqa: E402
from hessian_lib.data import load_cifar100, normalize  # noqa: E402
from hessian_lib.models import build_model, count_parameters  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "curvature_results.md"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gradient_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """FLOPs of one gradient (forward and backward) on ``x``, counted by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--data-root", default=None, help="CIFAR-100 folder (default: $HESSIAN_LIB_DATA or the user cache)")
    ap.add_argument("--synthetic", action="store_true", help="random uint8 images of CIFAR shape instead of the data")
    ap.add_argument("--images", type=int, default=50_000, help="images in the empirical Hessian (default 50,000)")
    ap.add_argument("--batch-size", type=int, default=250, help="images per batch of the operator (memory)")
    ap.add_argument("--steps", type=int, default=3, help="Lanczos steps to time (default 3)")
    ap.add_argument("--target-steps", type=int, default=100, help="steps to extrapolate to (the paper's 100)")
    ap.add_argument(
        "--width", type=float, default=1.0, help="channel multiplier of WRN-28-10 (small versions for a check)"
    )
    ap.add_argument("--depth", type=int, default=28)
    ap.add_argument("--cache-gib", type=float, default=DEFAULT_CACHE_BYTES / 2**30, help="operator cache budget (GiB)")
    ap.add_argument("--path", default="auto", choices=["auto", "linearize", "graph"])
    ap.add_argument("--budget", type=float, default=210.0, help="stop before a step that would pass this many seconds")
    ap.add_argument("--no-tf32", action="store_true", help="strict float32 convolutions and matmuls on NVIDIA GPUs")
    ap.add_argument("--no-write", action="store_true", help=f"do not append to {RESULTS.name}")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started_wall = time.perf_counter()
    started = datetime.datetime.now()
    device = torch.device(args.device)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False

    # ---------------------------------------------------------------- model and data
    torch.manual_seed(args.seed)
    model = build_model("wideresnet28", width=args.width, depth=args.depth).to(device).eval()
    P = count_parameters(model)
    if args.synthetic:
        g = torch.Generator().manual_seed(args.seed)
        images = torch.randint(0, 256, (args.images, 3, 32, 32), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 100, (args.images,), generator=g)
        source = "random uint8 images of CIFAR shape (--synthetic)"
    else:
        split = load_cifar100("train", args.data_root)
        if args.images > len(split.labels):
            ap.error(f"--images {args.images} exceeds the {len(split.labels)} training images")
        images, labels = split.images[: args.images], split.labels[: args.images]
        source = f"the first {args.images:,} CIFAR-100 training images"
    x_all = normalize(images.to(device))
    y_all = labels.to(device)
    B = args.batch_size
    batches = [(x_all[i : i + B], y_all[i : i + B]) for i in range(0, args.images, B)]
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        precision = (f"cuDNN TF32 {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, "
                     f"matmul TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        precision = "float32"
    head = (f"WRN-{args.depth}-10 at width {args.width:g}: P = {P:,}; {source}, {len(batches)} batches of {B}; "
            f"device {name}; {precision}; torch {torch.__version__}")
    print(head)

    # ---------------------------------------------------------------- the unit: one full-data gradient
    flops_per_image = gradient_flops(model, x_all[:2], y_all[:2]) / 2

    def full_gradient() -> float:
        sync(device)
        t = time.perf_counter()
        model.zero_grad(set_to_none=True)
        for x, y in batches:
            (F.cross_entropy(model(x), y) * (len(y) / args.images)).backward()
        sync(device)
        return time.perf_counter() - t

    full_gradient()  # warm-up (cuDNN autotuning, allocator)
    t_grad = full_gradient()
    model.zero_grad(set_to_none=True)
    tflops = flops_per_image * args.images / t_grad / 1e12
    print(f"one full-data gradient: {t_grad:.2f} s ({flops_per_image / 1e9:.1f} GFLOP per image counted; "
          f"{tflops:.1f} TFLOP/s achieved)")

    # ---------------------------------------------------------------- Lanczos steps
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    op = HessianOperator(model, nn.CrossEntropyLoss(), batches, bn_mode="eval", path=args.path,
                         cache_bytes=int(args.cache_gib * 2**30))
    proc = LanczosProcess(op, seed=args.seed)
    steps: list[float] = []
    settled: list[bool] = []  # whether the path was already chosen when the step began
    for k in range(args.steps):
        elapsed = time.perf_counter() - started_wall
        if steps and elapsed + steps[-1] > args.budget:
            print(f"stopping after {len(steps)} steps: the next would pass the {args.budget:.0f} s budget")
            break
        settled.append(op._chooser.decided)
        sync(device)
        t = time.perf_counter()
        proc.step()
        sync(device)
        steps.append(time.perf_counter() - t)
        print(
            f"Lanczos step {k + 1}: {steps[-1]:.2f} s ({steps[-1] / t_grad:.2f}x the gradient); alpha "
            f"{proc.alphas[-1]:.6g}, "
            f"beta {proc.betas[-1]:.6g}; path now {op.path_in_use!r}"
        )
    measured = sum(steps)
    last = steps[-1]
    rest = max(args.target_steps - len(steps), 0)
    total = measured + rest * last
    basis_gib = args.target_steps * P * 8 / 2**30
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB peak allocated" if device.type == "cuda" else ""
    print(f"\n{op!r}")
    if op.path_timings:
        print(f"auto trial on the first batch: { {k: round(v, 4) for k, v in op.path_timings.items()} }")
    caveat = "" if settled[-1] else (" (the last step measured still carried the set-up of the auto path: "
                                     "the extrapolation is an upper bound)")
    lines = [
        f"measured: {len(steps)} Lanczos steps over {args.images:,} images in {measured:.1f} s "
        f"({', '.join(f'{s:.1f}' for s in steps)} s); the last {last:.2f} s = {last / t_grad:.2f}x a full-data "
        "gradient "
        f"({t_grad:.2f} s); {peak or 'no GPU'}",
        f"extrapolated: {args.target_steps} steps = measured + {rest} x {last:.2f} s = {total:.0f} s "
        f"({total / 60:.1f} min); "
        f"the float64 Lanczos basis of {args.target_steps} steps needs {basis_gib:.1f} GiB on the device{caveat}",
        f"script wall time {time.perf_counter() - started_wall:.0f} s",
    ]
    print("\n".join(lines))
    if not args.no_write:
        cmd = "    .venv/bin/python benchmarks/bench_paper_spectrum.py " + " ".join(sys.argv[1:])
        with open(RESULTS, "a") as f:
            f.write(f"\n## Paper-profile spectrum timing, {started:%Y-%m-%d %H:%M}\n\n{cmd}\n\n{head}\n\n")
            f.write(f"- operator: `{op!r}`\n")
            f.write("".join(f"- {line}\n" for line in lines))
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
