r"""The trainer: optimisers, the authors' learning-rate schedule, divergence, checkpoints and DDP.

:func:`fit` trains a network on in-memory uint8 CIFAR images with the recipe of a
:class:`~hessian_lib.profiles.TrainSizes`. The data pipeline is batched: each epoch draws one
permutation (the data order) and one set of crop offsets and flips (the augmentation) from
two seeded CPU generators, then every step gathers its images, augments them in one call and
normalises them on the training device. Batches have exactly ``batch_size`` images (the last,
incomplete batch of an epoch is dropped), so the batch size of the paper's laws is exact.

Learning rate at step ``s`` of ``S`` (``t = s / S``, the fraction of training done), for the
``authors`` schedule of the paper's public scripts:

.. math::
    \eta(t) = \eta_0 \cdot \begin{cases} 1 & t \le 0.5 \\
    1 - 0.99\,(t - 0.5)/0.4 & 0.5 < t \le 0.9 \\ 0.01 & t > 0.9 \end{cases}

(the scripts evaluate it once per epoch at ``t = epoch / epochs``; here it is evaluated at
every step, which agrees at epoch starts); ``linear`` decays as :math:`1 - t` to zero at the
end (the fast-training recipes' triangle); ``constant`` stays at :math:`\eta_0`. Each is
multiplied by a linear warm-up factor ``min(1, (s + 1) / warmup_steps)`` when ``warmup_epochs > 0``.

Seeds: every random stream of a run (initialisation, data order, augmentation, dropout) has
its own seed, :func:`derive_seed` ``(seed, stream)``, so two runs that differ in one recipe
field still see the same data order and augmentation.

Hooks: ``callbacks`` (:class:`TrainCallback`) see the optimiser at the start of training and
before every step (after the schedule has set the learning rate, so a callback may override
it, as the SLQ learner does); their ``state_dict()`` is saved in every checkpoint and handed
back on resume.

Divergence: a training loss that is NaN/inf or above ``divergence_loss`` stops the run before
the update; the result records ``diverged=True`` and the step. Nothing is raised.

Checkpoints (every ``checkpoint_every`` epochs and at the end) hold the weights, the optimiser
state, the history, the callbacks' states, the recipe and every RNG state (data order,
augmentation, torch's global generator, CUDA's), so ``resume=True`` continues an interrupted
run exactly where its last checkpoint left it: on CPU the final weights equal an uninterrupted
run's bit for bit. A checkpoint written under another recipe (any field of the
:class:`~hessian_lib.profiles.TrainSizes` differs) is refused with :class:`~hessian_lib.checkpoints.CheckpointMismatch`
(the checkpoint machinery is in :mod:`hessian_lib.checkpoints`).

Data parallel: under ``torch.distributed`` (started with ``torchrun``; see
:func:`init_distributed`) each of the W processes takes its 1/W share of every global batch,
DDP averages the gradients, so the run matches a single process with the same global batch
(up to floating-point summation order) as long as the model has no BatchNorm or dropout
randomness that depends on the split. Only rank 0 prints and writes checkpoints.

Training uses channels_last tensors (faster convolutions on CPU and GPU) and, with the recipe's
``mixed_precision``, bf16 autocast on every device with native bf16 (CUDA GPUs; CPUs with AVX512-BF16
or AMX, see :func:`~hessian_lib.device.bf16_native`; elsewhere float32, with a warning). Only forward
passes run under autocast, the training steps' and the per-epoch test evaluation's (0.02-0.07 points of
accuracy from a float32 evaluation of the same weights): the loss, the weights, the optimiser state and
anything curvature-related (callbacks included) stay float32.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from hessian_lib.augment import apply_crop_flip, draw_crop_flip
from hessian_lib.checkpoints import (
    CheckpointMismatch,
    _unwrap,
    check_recipe,
    latest_checkpoint,
    load_checkpoint,
    restore_or_reset,
    save_checkpoint,
)
from hessian_lib.data import normalize
from hessian_lib.device import bf16_native, resolve_device
from hessian_lib.profiles import TrainSizes

__all__ = [
    "CheckpointMismatch",
    "FitResult",
    "SEED_STREAMS",
    "StepInfo",
    "TrainCallback",
    "check_batch_size",
    "derive_seed",
    "evaluate",
    "fit",
    "init_distributed",
    "is_main_process",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_factor",
    "make_optimizer",
    "check_recipe",
    "epoch_record",
    "restore_or_reset",
    "save_checkpoint",
    "resolve_device",
    "run_epoch",
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
    elif schedule == "linear":
        factor = 1.0 - t
    elif schedule == "constant":
        factor = 1.0
    else:
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules: authors, linear, constant")
    if warmup_steps > 0:
        factor *= min(1.0, (step + 1) / warmup_steps)
    return factor


#: The random streams of a run, each seeded by :func:`derive_seed`.
SEED_STREAMS: dict[str, int] = {"init": 0, "order": 1, "augment": 2, "dropout": 3}


def derive_seed(seed: int, stream: str) -> int:
    """The seed of one random stream (a key of :data:`SEED_STREAMS`) of the run seeded ``seed``."""
    if stream not in SEED_STREAMS:
        raise ValueError(f"unknown random stream {stream!r}; valid streams: {', '.join(SEED_STREAMS)}")
    return 1_000_003 * int(seed) + SEED_STREAMS[stream]


def make_optimizer(params: Any, cfg: TrainSizes) -> torch.optim.Optimizer:
    """SGD with momentum (L2 weight decay; Nesterov if ``cfg.nesterov``), Adam (L2) or AdamW (decoupled), at ``lr``."""
    if cfg.lr <= 0:
        raise ValueError(f"the learning rate must be positive, got {cfg.lr}")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov and cfg.momentum > 0)
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


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
             device: str | torch.device | None = None, batch_size: int = 500,
             flip: bool = False, bf16: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) of ``model`` on uint8 ``images`` [N,3,32,32], eval mode.

    ``flip``: average the logits of each image and its mirror image (test-time flip). ``bf16``: the
    forward passes under bf16 autocast (the loss and the sums stay float32; default float32 throughout).
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
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net(x).float()
            if flip:
                logits = 0.5 * (logits + net(torch.flip(x, dims=[3])).float())
        totals[0] += F.cross_entropy(logits, y, reduction="sum").double()
        totals[1] += (logits.argmax(1) == y).sum()
        totals[2] += stop - start
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(totals)
    net.train(was_training)
    count = max(1.0, totals[2].item())
    return totals[0].item() / count, totals[1].item() / count


# ----------------------------------------------------------------------------- the trainer's pieces


class TrainCallback:
    """Hooks into :func:`fit`; subclass and override what you need (every hook is optional).

    ``on_train_start(model, optimizer)``: once, after a resumed run's state is restored.
    ``on_step_start(step, model, optimizer)``: before every optimiser step (0-based global
    ``step``), after the schedule has set each group's ``lr``, so a callback may override it.
    ``state_dict()`` / ``load_state_dict(state)``: saved in every checkpoint, handed back on resume.
    """

    def on_train_start(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called once before the first step of this call to :func:`fit`."""

    def on_step_start(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called before every optimiser step."""

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of this callback."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


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
    ``train_acc``, ``test_loss``, ``test_acc``, ``train_seconds`` (the epoch's training steps
    alone), ``seconds`` (with evaluation)); ``diverged`` with the 0-based ``diverged_step`` and its
    ``diverged_loss``; ``checkpoints``: epoch -> path of every checkpoint on disk; ``seconds``:
    wall time of this call; ``resumed_from``: the epoch a resumed run started after (0 for a
    fresh run); ``steps``: optimiser steps taken in all.
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


@dataclass
class _Run:
    """The mutable state of one training run: network, optimiser, random streams, position, result."""

    net: nn.Module
    model: nn.Module  # ``net`` or its DDP wrapper: what the forward pass calls
    optimizer: torch.optim.Optimizer
    cfg: TrainSizes
    seed: int
    order_gen: torch.Generator
    aug_gen: torch.Generator
    callbacks: list[TrainCallback]
    device: torch.device
    epoch: int = 0
    step: int = 0
    result: FitResult = field(default_factory=FitResult)


def run_epoch(run: _Run, images: torch.Tensor, labels: torch.Tensor, *, steps_per_epoch: int, total_steps: int,
              warmup_steps: int = 0, max_steps: int | None = None,
              on_step: Callable[[StepInfo], None] | None = None, bar: Any = None) -> dict[str, float]:
    """One epoch of ``run`` on in-memory uint8 ``images`` [N,3,32,32] and ``labels`` [N] (on the device).

    Draws the epoch's data order and augmentation, then takes up to ``steps_per_epoch`` steps
    (fewer when the run diverges or reaches ``max_steps``). Returns the running sums
    ``loss_sum``, ``correct``, ``seen`` and ``steps`` of the steps taken.
    """
    cfg, rank, world = run.cfg, *_world()
    dev = run.device
    n_train = labels.shape[0]
    local_batch = cfg.batch_size // world
    perm = torch.randperm(n_train, generator=run.order_gen)
    low_res = run.epoch < cfg.low_res_epochs  # progressive resizing: random low_res_size crops, no padding
    margin = (images.shape[-1] - cfg.low_res_size) // 2 if low_res else 4
    offsets, flips = draw_crop_flip(n_train, run.aug_gen, padding=margin)
    autocast = cfg.mixed_precision and bf16_native(dev)
    run.net.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.float64, device=dev)
    seen = taken = 0
    for s in range(steps_per_epoch):
        if max_steps is not None and run.step >= max_steps:
            break
        pos = torch.arange(s * cfg.batch_size + rank * local_batch, s * cfg.batch_size + (rank + 1) * local_batch)
        idx = perm[pos].to(dev, non_blocking=True)
        x = images[idx]
        if low_res:
            x = apply_crop_flip(x, offsets[pos], flips[pos], padding=0, size=cfg.low_res_size)
        elif cfg.augment:
            x = apply_crop_flip(x, offsets[pos], flips[pos])
        x = normalize(x)  # keeps the channels_last layout the augmentation's gather produces
        x = x.contiguous(memory_format=torch.channels_last if cfg.channels_last else torch.contiguous_format)
        y = labels[idx]
        lr_now = cfg.lr * lr_factor(run.step, total_steps, cfg.schedule, warmup_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr_now
        for callback in run.callbacks:
            callback.on_step_start(run.step, run.net, run.optimizer)
        lr_now = run.optimizer.param_groups[0]["lr"]
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=autocast):
            logits = run.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
        stats = torch.stack([loss.detach().double(), (logits.detach().argmax(1) == y).sum().double()])
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(stats)
            stats[0] /= world
        batch_loss = stats[0].item()
        if not math.isfinite(batch_loss) or batch_loss > cfg.divergence_loss:
            run.result.diverged, run.result.diverged_step, run.result.diverged_loss = True, run.step, batch_loss
            break
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        loss_sum += stats[0]
        correct += stats[1]
        seen += cfg.batch_size
        taken += 1
        run.step += 1
        if bar is not None:
            bar.update(1)
            if s % 10 == 0 or s == steps_per_epoch - 1:
                bar.set_postfix(loss=f"{loss_sum.item() / taken:.3f}", acc=f"{correct.item() / seen:.3f}",
                                lr=f"{lr_now:.3g}")
        if on_step is not None:
            on_step(StepInfo(step=run.step - 1, epoch=run.epoch + 1, loss=batch_loss, lr=lr_now))
    return {"loss_sum": loss_sum.item(), "correct": correct.item(), "seen": seen, "steps": taken, "lr": lr_now
            if seen else run.optimizer.param_groups[0]["lr"]}


def epoch_record(run: _Run, sums: dict[str, float], train_seconds: float, test: LabelledImages | None,
                 eval_batch_size: int = 500) -> dict[str, float]:
    """The history entry of the epoch just finished: training means, test loss and accuracy, timings."""
    record = {"epoch": run.epoch, "step": run.step, "lr": sums["lr"],
              "train_loss": sums["loss_sum"] / max(1, sums["steps"]),
              "train_acc": sums["correct"] / max(1, sums["seen"])}
    t0 = time.perf_counter()
    if test is not None:
        record["test_loss"], record["test_acc"] = evaluate(run.model, test.images, test.labels, device=run.device,
                                                           batch_size=eval_batch_size, flip=run.cfg.eval_flip,
                                                           bf16=run.cfg.mixed_precision and bf16_native(run.device))
    record["train_seconds"] = train_seconds
    record["seconds"] = train_seconds + time.perf_counter() - t0
    return record


# ----------------------------------------------------------------------------- the trainer


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
    callbacks: Sequence[TrainCallback] = (),
    max_steps: int | None = None,
    eval_batch_size: int = 500,
) -> FitResult:
    """Train ``model`` in place on ``train`` (uint8 images, int64 labels) with the recipe ``cfg``.

    ``seed`` seeds the data order, the augmentation and dropout (:func:`derive_seed`); seed
    torch with ``derive_seed(seed, "init")`` before building ``model`` for a reproducible
    initialisation. With ``checkpoint_dir``, checkpoints go there; ``resume=True`` continues
    from the latest one (a finished run returns at once). ``quiet`` hides the progress bars and
    epoch lines. ``on_step`` is called after every optimiser step, ``callbacks`` around them
    (:class:`TrainCallback`). ``max_steps`` stops after that many optimiser steps in all (the
    schedule still spans ``cfg.epochs``; an unfinished epoch leaves no record). Returns a
    :class:`FitResult`; divergence is a result, not an error.
    """
    rank, world = _world()
    main = rank == 0
    dev = resolve_device(device)
    n_train = int(train.labels.shape[0])
    check_batch_size(cfg.batch_size, n_train, world)
    steps_per_epoch = n_train // cfg.batch_size
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))

    net = model.to(dev)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    run = _Run(net=net, model=net, optimizer=make_optimizer(net.parameters(), cfg), cfg=cfg, seed=seed,
               order_gen=torch.Generator().manual_seed(derive_seed(seed, "order")),
               aug_gen=torch.Generator().manual_seed(derive_seed(seed, "augment")),
               callbacks=list(callbacks), device=dev)
    torch.manual_seed(derive_seed(seed, "dropout"))
    if dev.type == "cuda":
        torch.cuda.manual_seed_all(derive_seed(seed, "dropout"))
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if restore_or_reset(run, ckpt_dir, resume, main):
        run.result.steps = run.step
        return run.result
    if world > 1:
        run.model = nn.parallel.DistributedDataParallel(net, device_ids=[dev.index] if dev.type == "cuda" else None)
    for callback in run.callbacks:
        callback.on_train_start(net, run.optimizer)

    images = train.images.to(dev, non_blocking=True)
    labels = train.labels.to(dev, non_blocking=True)
    show = main and not quiet
    t0 = time.perf_counter()
    while run.epoch < cfg.epochs and not run.result.diverged:
        if max_steps is not None and run.step >= max_steps:
            break
        epoch = run.epoch + 1
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        epoch_t0 = time.perf_counter()
        sums = run_epoch(run, images, labels, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                         warmup_steps=warmup_steps, max_steps=max_steps, on_step=on_step, bar=bar)
        train_seconds = time.perf_counter() - epoch_t0
        if bar is not None:
            bar.close()
        if run.result.diverged:
            if show:
                print(f"diverged at step {run.result.diverged_step} (epoch {epoch}): "
                      f"loss {run.result.diverged_loss:.4g}", flush=True)
            break
        if sums["steps"] < steps_per_epoch:  # stopped by max_steps inside the epoch
            break
        run.epoch = epoch
        record = epoch_record(run, sums, train_seconds, test, eval_batch_size)
        run.result.history.append(record)
        if show:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in ("epoch", "step"))
            print(f"epoch {epoch}/{cfg.epochs}: {shown}", flush=True)
        if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
            save_checkpoint(run, ckpt_dir, main=main)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    run.result.steps = run.step
    run.result.seconds = time.perf_counter() - t0
    return run.result
