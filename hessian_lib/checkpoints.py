"""Checkpoints of a training run (:func:`~hessian_lib.trainer.fit`): written at epoch ends, found, loaded and
restored for an exact resume; one written under another recipe is refused with :class:`CheckpointMismatch`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hessian_lib.profiles import TrainSizes
from hessian_lib.store import atomic_torch_save

if TYPE_CHECKING:
    from hessian_lib.trainer import _Run

__all__ = [
    "CheckpointMismatch",
    "check_recipe",
    "latest_checkpoint",
    "load_checkpoint",
    "restore_or_reset",
    "save_checkpoint",
]


def _unwrap(model: nn.Module) -> nn.Module:
    # the network inside a DistributedDataParallel wrapper (the trainer's evaluate uses it too)
    return (
        model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model
    )


def _checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.pt"


def latest_checkpoint(checkpoint_dir: str | os.PathLike | None) -> Path | None:
    """The checkpoint of the latest epoch in ``checkpoint_dir``, or ``None``."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return None
    found = sorted(Path(checkpoint_dir).glob("epoch_*.pt"))
    return found[-1] if found else None


def load_checkpoint(path: str | os.PathLike, model: nn.Module | None = None, map_location: Any = "cpu",
                    cfg: TrainSizes | None = None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`~hessian_lib.trainer.fit`; load its weights into ``model`` when given.

    With ``cfg``, a checkpoint written under another recipe raises :class:`CheckpointMismatch`.

    Keys: ``model`` (state dict), ``optimizer``, ``epoch``, ``step``, ``history``, ``rng``, ``callbacks``,
    ``config`` (the recipe as a dict).
    """
    state = torch.load(path, map_location=map_location, weights_only=False)
    if cfg is not None:
        check_recipe(state, cfg, path)
    if model is not None:
        _unwrap(model).load_state_dict(state["model"])
    return state


class CheckpointMismatch(ValueError):
    """A checkpoint was written under another recipe than the one asked for."""


def _rng_state(run: _Run) -> dict[str, Any]:
    return {
        "order": run.order_gen.get_state(),
        "augment": run.aug_gen.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any], run: _Run) -> None:
    run.order_gen.set_state(state["order"])
    run.aug_gen.set_state(state["augment"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_recipe(state: dict[str, Any], cfg: TrainSizes, path: str | os.PathLike) -> None:
    """:class:`CheckpointMismatch` unless the checkpoint ``state`` was written under the recipe ``cfg``."""
    saved = state.get("config") or {}
    wanted = dataclasses.asdict(cfg)
    differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k, "<absent>") != wanted.get(k, "<absent>"))
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k, '<absent>')!r} in the checkpoint, {wanted.get(k, '<absent>')!r} now"
                          for k in differ[:6])
        raise CheckpointMismatch(f"checkpoint {os.fspath(path)} was written by another training recipe ({shown}); "
                                 "delete it or train from scratch (resume=False)")


def restore_or_reset(run: _Run, checkpoint_dir: Path | None, resume: bool, main: bool = True) -> bool:
    """Resume ``run`` from the latest checkpoint in ``checkpoint_dir`` or clear the folder for a fresh run.

    Returns True when the restored run had already diverged (nothing left to do).
    """
    result = run.result
    if checkpoint_dir is not None:
        for path in sorted(checkpoint_dir.glob("epoch_*.pt")):
            result.checkpoints[int(path.stem.split("_")[1])] = str(path)
    last = latest_checkpoint(checkpoint_dir) if resume else None
    if last is not None:
        state = torch.load(last, map_location=run.device, weights_only=False)
        check_recipe(state, run.cfg, last)
        run.net.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], run)
        for callback, cb_state in zip(run.callbacks, state.get("callbacks", [])):
            callback.load_state_dict(cb_state)
        run.epoch, run.step = int(state["epoch"]), int(state["step"])
        result.history = list(state["history"])
        result.resumed_from = run.epoch
        if state.get("diverged"):
            result.diverged, result.diverged_step, result.diverged_loss = (
                True,
                state["diverged_step"],
                state["diverged_loss"],
            )
            return True
    elif checkpoint_dir is not None and main:
        for path in checkpoint_dir.glob("epoch_*.pt"):  # a fresh run replaces an old run's checkpoints
            path.unlink()
        result.checkpoints.clear()
    return False


def save_checkpoint(run: _Run, checkpoint_dir: Path | None, diverged: bool = False, main: bool = True) -> None:
    """Write ``run``'s state at the end of its current epoch (atomically; rank 0 only)."""
    if checkpoint_dir is None:
        return
    path = checkpoint_dir / _checkpoint_name(run.epoch)
    if main:
        atomic_torch_save({
            "model": run.net.state_dict(), "optimizer": run.optimizer.state_dict(),
            "epoch": run.epoch, "step": run.step, "history": run.result.history, "rng": _rng_state(run),
            "callbacks": [cb.state_dict() for cb in run.callbacks],
            "config": dataclasses.asdict(run.cfg), "seed": run.seed, "diverged": diverged,
            "diverged_step": run.result.diverged_step, "diverged_loss": run.result.diverged_loss,
        }, path)
    run.result.checkpoints[run.epoch] = str(path)

