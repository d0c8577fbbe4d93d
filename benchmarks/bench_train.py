"""Training speed: our trainer against the loop a user would write, and time to accuracy.

    python benchmarks/bench_train.py                       # 2 CPU cores: throughput + time to accuracy
    python benchmarks/bench_train.py --device cuda         # the same on a GPU
    python benchmarks/bench_train.py --skip-accuracy       # throughput only

Throughput, measured side by side in one run for each network (the cpu profile's network
and VGG-16-BN at width 1/4), at the profile's batch size and recipe:

* **ours**: :func:`hessian_lib.trainer.fit` (in-memory uint8 images, one permutation and one
  draw of crops/flips per epoch, a batched gather + crop + flip + normalise per step,
  channels_last);
* **baseline**: what a user would write: a torchvision-style CIFAR-100 ``Dataset`` (PIL images,
  ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``), a
  ``DataLoader`` with ``num_workers`` 0 and 2, and a standard step (forward, cross-entropy with
  the same label smoothing, backward, the same optimiser).

Each times ``--steps`` steps after ``--warmup`` steps and reports images per second; the
ratio is ours over the faster baseline. A third figure, the **step alone** (the same step on one
fixed batch, no data pipeline), is the ceiling of any loader. Time to accuracy: one full run of the profile's recipe
through :func:`hessian_lib.experiments.train_experiment`, test accuracy on the full test set at
every epoch boundary, and the cumulative training time (evaluation excluded) at which it
first reaches 30%, 40% and 48%. The figures go to stdout and into ``--out`` (Markdown; the
section of this device is replaced).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import re
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from step_profile import phase_table  # beside this script

from hessian_lib.data import CIFAR100_MEAN, CIFAR100_STD, load_cifar100
from hessian_lib.device import bf16_native
from hessian_lib.experiments import model_from_profile, train_experiment
from hessian_lib.models import count_parameters
from hessian_lib.profiles import TrainSizes, load_profile
from hessian_lib.trainer import derive_seed, fit, make_optimizer, resolve_device

THRESHOLDS = (0.30, 0.40, 0.48)


def networks(profile_name: str, device: torch.device) -> dict[str, TrainSizes]:
    """The recipes benchmarked: the profile's own, and VGG-16-BN at width 1/4 with the same optimiser; each
    again in float32 where the recipe trains under bf16 autocast (the cost of a device without native bf16)."""
    recipe = load_profile(profile_name).train
    vgg = dataclasses.replace(recipe, model="vgg16_bn", width=0.25, depth=0, dropout=0.0)
    out = {}
    for name, net in ((f"{recipe.model} (profile)", recipe), ("vgg16_bn width 1/4", vgg)):
        out[f"{name}, {precision(net, device)}"] = net
        if net.mixed_precision and bf16_native(device):
            out[f"{name}, float32"] = dataclasses.replace(net, mixed_precision=False)
    return out


def precision(recipe: TrainSizes, device: torch.device) -> str:
    """What the trainer runs ``recipe`` in on ``device``: ``bf16 autocast`` or ``float32``."""
    return "bf16 autocast" if recipe.mixed_precision and bf16_native(device) else "float32"


def _timed(step, steps: int, warmup: int, sync) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t0


def ours(recipe: TrainSizes, images, labels, steps: int, warmup: int, device: torch.device) -> float:
    """Images per second of :func:`fit` (marks taken in ``on_step``)."""
    n = recipe.batch_size * (steps + warmup + 1)
    torch.manual_seed(derive_seed(0, "init"))
    model = model_from_profile(recipe)
    marks: list[float] = []
    timed = (warmup - 1, warmup + steps - 1)  # the clock reads at the end of these steps only

    def on_step(info):
        if info.step in timed:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks.append(time.perf_counter())

    data = SimpleNamespace(images=images[:n], labels=labels[:n])
    cfg = dataclasses.replace(
        recipe, epochs=1, divergence_loss=1e9, low_res_epochs=0
    )  # full resolution, as the baseline
    fit(model, data, cfg, device=device, quiet=True, on_step=on_step)
    return recipe.batch_size * steps / (marks[1] - marks[0])


def step_alone(recipe: TrainSizes, steps: int, warmup: int, device: torch.device) -> float:
    """Images per second of the training step alone (no data pipeline): one fixed normalised batch, the
    model in channels_last (and bf16 autocast where the trainer uses it), the same loss and optimiser.
    The ceiling any data pipeline can approach."""
    torch.manual_seed(derive_seed(0, "init"))
    model = model_from_profile(recipe).to(device, memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), recipe)
    model.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(recipe.batch_size, 3, 32, 32, generator=gen).to(device, memory_format=torch.channels_last)
    y = torch.randint(0, 100, (recipe.batch_size,), generator=gen).to(device)
    autocast = precision(recipe, device) != "float32"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    return recipe.batch_size * steps / _timed(step, steps, warmup, sync)


class TorchvisionStyleCIFAR(torch.utils.data.Dataset):
    """What ``torchvision.datasets.CIFAR100`` does per item: a PIL image of the HWC array, then ``transform``."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform) -> None:
        self.data, self.targets, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[i])), int(self.targets[i])


def baseline(recipe: TrainSizes, images, labels, steps: int, warmup: int, device: torch.device,
             workers: int) -> float:
    """Images per second of a plain torchvision + DataLoader loop with the same augmentation, optimiser and
    precision (bf16 autocast where ours uses it: the ratio is then the data pipeline's and bookkeeping's)."""
    import torchvision.transforms as T

    n = recipe.batch_size * (steps + warmup + 1)
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(CIFAR100_MEAN, CIFAR100_STD)])
    dataset = TorchvisionStyleCIFAR(images[:n].permute(0, 2, 3, 1).numpy(), labels[:n].numpy(), transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=recipe.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    torch.manual_seed(derive_seed(0, "init"))
    model = model_from_profile(recipe).to(device)
    optimizer = make_optimizer(model.parameters(), recipe)
    model.train()
    batches = iter(loader)
    autocast = precision(recipe, device) != "float32"

    def step():
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.label_smoothing)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    seconds = _timed(step, steps, warmup, sync)
    return recipe.batch_size * steps / seconds


def time_to_accuracy(profile_name: str, data_root, device: torch.device) -> dict:
    """One full run of the profile's recipe; cumulative training seconds at each threshold (None: not reached)."""
    run = train_experiment(profile_name, data_root=data_root, device=device, store=None, quiet=False)
    elapsed = np.cumsum([h["train_seconds"] for h in run.history])
    acc = [h["test_acc"] for h in run.history]
    reached = {}
    for t in THRESHOLDS:
        hit = [e for e, a in zip(elapsed, acc) if a >= t]
        reached[t] = float(hit[0]) if hit else None
    return {"history": run.history, "reached": reached, "total": float(elapsed[-1]), "final": acc[-1]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    parser.add_argument("--profile", default="cpu", help="whose recipe to benchmark (default: cpu)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CPU, 100 on CUDA)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 2], help="DataLoader workers to try")
    parser.add_argument("--skip-accuracy", action="store_true", help="throughput only")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--synthetic", action="store_true",
                        help="random uint8 images instead of CIFAR-100 (throughput only: speed does not depend "
                             "on pixel values; implies --skip-accuracy)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=str(Path(__file__).with_name("train_results.md")))
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (100 if device.type == "cuda" else 20)
    if args.synthetic:
        gen = torch.Generator().manual_seed(0)
        train = SimpleNamespace(images=torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=gen),
                                labels=torch.randint(0, 100, (50_000,), generator=gen))
        args.skip_accuracy = True
    else:
        train = load_cifar100("train", args.data_root)
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)}, channels_last"
    else:
        where = (f"CPU ({platform.processor() or platform.machine()}, native bf16: "
                 f"{'yes' if bf16_native(device) else 'no'}), torch threads: {torch.get_num_threads()}")
    load_before = os.getloadavg()[0]
    rows = []
    for name, recipe in networks(args.profile, device).items():
        torch.manual_seed(0)
        params = count_parameters(model_from_profile(recipe))
        ours_ips = ours(recipe, train.images, train.labels, steps, args.warmup, device)
        base = {w: baseline(recipe, train.images, train.labels, steps, args.warmup, device, w) for w in args.workers}
        alone = step_alone(recipe, steps, args.warmup, device)
        best = max(base.values())
        rows.append((name, recipe, params, ours_ips, base, ours_ips / best, alone))
        shown = ", ".join(f"{v:.0f} ({w} workers)" for w, v in base.items())
        print(f"{name:22s} {params:>10,d} params  B={recipe.batch_size}  ours {ours_ips:7.0f} img/s  "
              f"baseline {shown}  ratio {ours_ips / best:.2f}x  step alone {alone:.0f} img/s "
              f"({alone / best:.2f}x the best baseline)", flush=True)
    phases = phase_table(load_profile(args.profile).train) if device.type == "cpu" else None
    accuracy = None if args.skip_accuracy else time_to_accuracy(args.profile, args.data_root, device)
    load_after = os.getloadavg()[0]

    busy = (" (above the core count: other work shared the cores, so the figures are low)"
            if device.type == "cpu" and max(load_before, load_after) > (os.cpu_count() or 1) else "")
    title = f"## {args.profile} recipe on {device.type}"
    source = "random uint8 images (--synthetic)" if args.synthetic else "CIFAR-100"
    lines = [
        title,
        "",
        f"{where}; torch {torch.__version__}; {source}; {steps} timed steps after {args.warmup} warm-up "
        f"steps; measured {time.strftime('%Y-%m-%d')}, 1-minute load average {load_before:.1f} before and "
        f"{load_after:.1f} after{busy}.",
        "",
        "| network | parameters | batch | ours (img/s) | baseline (img/s) | ours / best baseline "
        "| step alone (img/s) | step alone / best baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, recipe, params, ours_ips, base, ratio, alone in rows:
        shown = ", ".join(f"{v:.0f} ({w} workers)" for w, v in base.items())
        lines.append(f"| {name} | {params:,} | {recipe.batch_size} | {ours_ips:.0f} | {shown} | {ratio:.2f}x "
                     f"| {alone:.0f} | {alone / max(base.values()):.2f}x |")
    lines += ["", "*Step alone*: the training step on one fixed batch, without any data pipeline: the ceiling of "
              "every loader, ours included. Where it is below 1.5x the best baseline, no data pipeline can be 1.5x "
              "faster than the baseline with this network on this device."]
    if phases is not None:
        lines += ["", "One step of the profile's network, phase by phase (`benchmarks/step_profile.py`: data = gather, "
                  "crop + flip, normalise; loss includes the statistics read back for the divergence check; in "
                  "brackets the share of the step):", "", *phases]
    if accuracy is not None:
        lines += ["", f"Time to accuracy, the {args.profile} profile's recipe (full 10,000-image test set at every "
                  "epoch boundary; cumulative training time, evaluation excluded):", "",
                  "| epoch | training time (s) | train loss | test accuracy |", "|---:|---:|---:|---:|"]
        elapsed = np.cumsum([h["train_seconds"] for h in accuracy["history"]])
        for h, e in zip(accuracy["history"], elapsed):
            lines.append(f"| {h['epoch']} | {e:.1f} | {h['train_loss']:.3f} | {100 * h['test_acc']:.2f}% |")
        reached = ", ".join(f"{100 * t:.0f}%: " + (f"{s:.0f} s" if s is not None else "not reached")
                            for t, s in accuracy["reached"].items())
        lines += ["", f"Reached {reached}. Final test accuracy {100 * accuracy['final']:.2f}% after "
                  f"{accuracy['total']:.0f} s of training."]
        print(f"time to accuracy: {reached}; final {100 * accuracy['final']:.2f}% in {accuracy['total']:.0f} s")
    section = "\n".join(lines) + "\n"
    out = Path(args.out)
    text = out.read_text() if out.exists() else "# Training speed\n\nWritten by `benchmarks/bench_train.py`.\n\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    out.write_text(text)
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
