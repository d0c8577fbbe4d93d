"""The trainer: optimisers, the authors' learning-rate schedule, divergence, checkpoints and DDP.

:func:`fit` trains a network on in-memory uint8 CIFAR images with the recipe of a
:class:`~hessian_lib.profiles.TrainSizes`. The data pipeline is batched: each epoch draws one
permutation (the data order) and one set of crop offsets and flips (the augmentation) from
two seeded CPU generators, then every step gathers its images, augments them in one call and
normalises them on the training device. Batches have exactly ``batch_size`` images (the last,
incomplete batch of an epoch is dropped), so the batch size of the paper's laws is exact.

Learning rate at step ``s`` of ``S`` (``t = s / S``, the fraction of training done), for the
``authors`` schedule of the paper's public scripts:

.. math::
    \\eta(t) = \\eta_0 \\cdot \\begin{cases} 1 & t \\le 0.5 \\\\
    1 - 0.99\\,(t - 0.5)/0.4 & 0.5 < t \\le 0.9 \\\\ 0.01 & t > 0.9 \\end{cases}

(the scripts evaluate it once per epoch at ``t = epoch / epochs``; here it is evaluated at
every step, which agrees at epoch starts), times a linear warm-up factor
``min(1, (s + 1) / warmup_steps)`` when ``warmup_epochs > 0``.

Divergence: a training loss that is NaN/inf or above ``divergence_loss`` stops the run before
the update; the result records ``diverged=True`` and the step. Nothing is raised.

Checkpoints (every ``checkpoint_every`` epochs and at the end) hold the weights, the optimiser
state, the history and every RNG state (data order, augmentation, torch's global generator,
CUDA's), so ``resume=True`` continues an interrupted run exactly where its last checkpoint left
it: on CPU the final weights equal an uninterrupted run's bit for bit.

Data parallel: under ``torch.distributed`` (started with ``torchrun``; see
:func:`init_distributed`) each of the W processes takes its 1/W share of every global batch,
DDP averages the gradients, so the run matches a single process with the same global batch
(up to floating-point summation order) as long as the model has no BatchNorm or dropout
randomness that depends on the split. Only rank 0 prints and writes checkpoints.

On CUDA, training runs under bf16 autocast (``mixed_precision``) with channels_last tensors;
evaluation and anything curvature-related stay float32.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from hessian_lib.augment import apply_crop_flip, draw_crop_flip
from hessian_lib.data import normalize
from hessian_lib.device import resolve_device
from hessian_lib.profiles import TrainSizes
from hessian_lib.store import atomic_torch_save

__all__ = [
    "FitResult",
    "StepInfo",
    "check_batch_size",
    "evaluate",
    "fit",
    "init_distributed",
    "is_main_process",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_factor",
    "make_optimizer",
    "resolve_device",
]


class LabelledImages(Protocol):
    images: torch.Tensor  # uint8 [N, 3, 32, 32]
    labels: torch.Tensor  # int64 [N]


# ----------------------------------------------------------------------------- devices and DDP


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True outside ``torch.distributed`` and on rank 0 inside it."""
    return _world()[0] == 0


def init_distributed(device: str | torch.device | None = "auto") -> tuple[int, int]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); return ``(rank, world_size)``.

    NCCL on CUDA, gloo on CPU. A no-op returning ``(0, 1)`` outside torchrun.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        dev = resolve_device(device)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


# ----------------------------------------------------------------------------- recipe pieces


def lr_factor(step: int, total_steps: int, schedule: str = "authors", warmup_steps: int = 0) -> float:
    """Multiplier of the initial learning rate at ``step`` (0-based) of ``total_steps``; see the module doc."""
    t = step / max(1, total_steps)
    if schedule == "authors":
        if t <= 0.5:
            factor = 1.0
        elif t <= 0.9:
            factor = 1.0 - 0.99 * (t - 0.5) / 0.4
        else:
            factor = 0.01
    elif schedule == "constant":
        factor = 1.0
    else:
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules: authors, constant")
    if warmup_steps > 0:
        factor *= min(1.0, (step + 1) / warmup_steps)
    return factor


def make_optimizer(params: Any, cfg: TrainSizes) -> torch.optim.Optimizer:
    """SGD with momentum (L2 weight decay), Adam (L2) or AdamW (decoupled weight decay), at ``cfg.lr``."""
    if cfg.lr <= 0:
        raise ValueError(f"the learning rate must be positive, got {cfg.lr}")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; valid optimizers: sgd, adam, adamw")


def check_batch_size(batch_size: int, n_train: int, world_size: int = 1) -> None:
    """``ValueError`` unless ``1 <= batch_size <= n_train`` and the batch splits evenly over processes."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    if batch_size > n_train:
        raise ValueError(f"batch size {batch_size} is larger than the training subset ({n_train} images)")
    if batch_size % world_size:
        raise ValueError(f"batch size {batch_size} does not split evenly over {world_size} processes")


# ----------------------------------------------------------------------------- evaluation


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             device: str | torch.device | None = None, batch_size: int = 500) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) of ``model`` on uint8 ``images`` [N,3,32,32], float32, eval mode.

    Under ``torch.distributed`` every process evaluates its share and the totals are summed.
    """
    net = _unwrap(model)
    dev = torch.device(device) if device is not None else next(net.parameters()).device
    rank, world = _world()
    n = labels.shape[0]
    lo, hi = rank * n // world, (rank + 1) * n // world
    was_training = net.training
    net.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=dev)
    for start in range(lo, hi, batch_size):
        stop = min(hi, start + batch_size)
        x = normalize(images[start:stop].to(dev, non_blocking=True))
        y = labels[start:stop].to(dev, non_blocking=True)
        logits = net(x).float()
        totals[0] += F.cross_entropy(logits, y, reduction="sum").double()
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += stop - start
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(totals)
    net.train(was_training)
    count = max(1.0, totals[2].item())
    return totals[0].item() / count, totals[1].item() / count


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def latest_checkpoint(checkpoint_dir: str | os.PathLike | None) -> Path | None:
    """The checkpoint of the latest epoch in ``checkpoint_dir``, or ``None``."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    found = sorted(Path(checkpoint_dir).glob("epoch_*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`fit`; load its weights into ``model`` when given.

    Keys: ``model`` (state dict), ``optimizer``, ``epoch``, ``step``, ``history``, ``rng``, ``config``.
    """
    state = torch.load(path, map_location=map_location, weights_only=False)
    if model is not None:
        _unwrap(model).load_state_dict(state["model"])
    return state


# ----------------------------------------------------------------------------- the trainer


@dataclass
class StepInfo:
    """What a step callback sees: 0-based global ``step``, 1-based ``epoch``, the batch ``loss`` and ``lr``."""

    step: int
    epoch: int
    loss: float
    lr: float


@dataclass
class FitResult:
    """What :func:`fit` returns.

    ``history``: one dict per finished epoch (``epoch``, ``step``, ``lr``, ``train_loss``,
    ``train_acc``, ``test_loss``, ``test_acc``, ``seconds``); ``diverged`` with the 0-based
    ``diverged_step`` and its ``diverged_loss``; ``checkpoints``: epoch -> path of every
    checkpoint on disk; ``seconds``: wall time of this call; ``resumed_from``: the epoch a resumed
    run started after (0 for a fresh run).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    diverged: bool = False
    diverged_step: int | None = None
    diverged_loss: float | None = None
    steps: int = 0
    checkpoints: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_from: int = 0

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's record (empty if no epoch finished)."""
        return dict(self.history[-1]) if self.history else {}


def _rng_state(order_gen: torch.Generator, aug_gen: torch.Generator) -> dict[str, Any]:
    return {
        "order": order_gen.get_state(),
        "augment": aug_gen.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any], order_gen: torch.Generator, aug_gen: torch.Generator) -> None:
    order_gen.set_state(state["order"])
    aug_gen.set_state(state["augment"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def fit(
    model: nn.Module,
    train: LabelledImages,
    cfg: TrainSizes,
    *,
    test: LabelledImages | None = None,
    seed: int = 0,
    device: str | torch.device | None = "auto",
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    quiet: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    eval_batch_size: int = 500,
) -> FitResult:
    """Train ``model`` in place on ``train`` (uint8 images, int64 labels) with the recipe ``cfg``.

    ``seed`` seeds the data order, the augmentation and torch's global generator (dropout);
    seed torch before building ``model`` for a reproducible initialisation. With
    ``checkpoint_dir``, checkpoints go there; ``resume=True`` continues from the latest one
    (a finished run returns at once). ``quiet`` hides the progress bars. ``on_step`` is called
    after every optimiser step. Returns a :class:`FitResult`; divergence is a result, not an error.
    """
    rank, world = _world()
    main = rank == 0
    dev = resolve_device(device)
    n_train = int(train.labels.shape[0])
    check_batch_size(cfg.batch_size, n_train, world)
    local_batch = cfg.batch_size // world
    steps_per_epoch = n_train // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
    on_cuda = dev.type == "cuda"
    autocast = on_cuda and cfg.mixed_precision

    net = model.to(dev)
    if on_cuda:
        net = net.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(net.parameters(), cfg)
    order_gen = torch.Generator().manual_seed(1_000_003 * seed + 1)
    aug_gen = torch.Generator().manual_seed(1_000_003 * seed + 2)
    torch.manual_seed(1_000_003 * seed + 3)
    if on_cuda:
        torch.cuda.manual_seed_all(1_000_003 * seed + 3)

    result = FitResult()
    start_epoch, step = 0, 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        for path in sorted(ckpt_dir.glob("epoch_*.pt")):
            result.checkpoints[int(path.stem.split("_")[1])] = str(path)
    last = latest_checkpoint(ckpt_dir) if resume else None
    if last is not None:
        state = load_checkpoint(last, net, map_location=dev)
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], order_gen, aug_gen)
        start_epoch, step = int(state["epoch"]), int(state["step"])
        result.history = list(state["history"])
        result.resumed_from = start_epoch
        if state.get("diverged"):
            result.diverged, result.diverged_step, result.diverged_loss = True, state["diverged_step"], state["diverged_loss"]
            result.steps = step
            return result
    elif ckpt_dir is not None and main:
        for path in ckpt_dir.glob("epoch_*.pt"):  # a fresh run replaces an old run's checkpoints
            path.unlink()
        result.checkpoints.clear()

    if world > 1:
        ddp = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if on_cuda else None)
    else:
        ddp = net

    images = train.images.to(dev, non_blocking=True)
    labels = train.labels.to(dev, non_blocking=True)
    t0 = time.perf_counter()
    if main and not quiet:
        from tqdm.auto import tqdm
    lr_now = cfg.lr

    def save(epoch: int, diverged: bool = False) -> None:
        if ckpt_dir is None:
            return
        path = ckpt_dir / _checkpoint_name(epoch)
        if main:
            atomic_torch_save({
                "model": _unwrap(net).state_dict(), "optimizer": optimizer.state_dict(),
                "epoch": epoch, "step": step, "history": result.history, "rng": _rng_state(order_gen, aug_gen),
                "config": cfg.__dict__.copy(), "seed": seed, "diverged": diverged,
                "diverged_step": result.diverged_step, "diverged_loss": result.diverged_loss,
            }, path)
        result.checkpoints[epoch] = str(path)

    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        epoch_t0 = time.perf_counter()
        perm = torch.randperm(n_train, generator=order_gen)
        offsets, flips = draw_crop_flip(n_train, aug_gen)
        net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.float64, device=dev)
        seen = 0
        bar = None
        if main and not quiet:
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        for s in range(steps_per_epoch):
            pos = torch.arange(s * cfg.batch_size + rank * local_batch, s * cfg.batch_size + (rank + 1) * local_batch)
            idx = perm[pos].to(dev, non_blocking=True)
            x = images[idx]
            if cfg.augment:
                x = apply_crop_flip(x, offsets[pos], flips[pos])
            x = normalize(x)
            if on_cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            lr_now = cfg.lr * lr_factor(step, total_steps, cfg.schedule, warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr_now
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=autocast):
                logits = ddp(x)
            loss = F.cross_entropy(logits.float(), y)
            stats = torch.stack([loss.detach().double(), (logits.detach().argmax(1) == y).sum().double()])
            if world > 1:
                import torch.distributed as dist

                dist.all_reduce(stats)
                stats[0] /= world
            batch_loss = stats[0].item()
            if not math.isfinite(batch_loss) or batch_loss > cfg.divergence_loss:
                result.diverged, result.diverged_step, result.diverged_loss = True, step, batch_loss
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += stats[0]
            correct += stats[1]
            seen += cfg.batch_size
            step += 1
            if bar is not None:
                bar.update(1)
                if s % 10 == 0 or s == steps_per_epoch - 1:
                    bar.set_postfix(loss=f"{loss_sum.item() / (s + 1):.3f}", acc=f"{correct.item() / seen:.3f}",
                                    lr=f"{lr_now:.3g}")
            if on_step is not None:
                on_step(StepInfo(step=step - 1, epoch=epoch, loss=batch_loss, lr=lr_now))
        if bar is not None:
            bar.close()
        if result.diverged:
            if main and not quiet:
                print(f"diverged at step {result.diverged_step} (epoch {epoch}): loss {result.diverged_loss:.4g}")
            break
        record = {"epoch": epoch, "step": step, "lr": lr_now,
                  "train_loss": loss_sum.item() / max(1, steps_per_epoch), "train_acc": correct.item() / max(1, seen)}
        if test is not None:
            record["test_loss"], record["test_acc"] = evaluate(ddp, test.images, test.labels, device=dev,
                                                               batch_size=eval_batch_size)
        record["seconds"] = time.perf_counter() - epoch_t0
        result.history.append(record)
        if main and not quiet:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "step"))
            print(f"epoch {epoch}/{cfg.epochs}: {shown}", flush=True)
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            save(epoch)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    result.steps = step
    result.seconds = time.perf_counter() - t0
    return result
