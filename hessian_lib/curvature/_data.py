"""Batches ``(x, y)``, the parameters an operator is taken over, and the BatchNorm mode of its products."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BN_MODES",
    "Batch",
    "LossFn",
    "as_batches",
    "batch_size",
    "batchnorm_mode",
    "is_single_batch",
    "select_params",
    "to_device",
]

#: Accepted values of ``bn_mode``.
BN_MODES = ("eval", "train")

Batch = tuple[Any, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


@contextlib.contextmanager
def batchnorm_mode(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """Put ``model`` in the state used for curvature products; restore it afterwards.

    * ``"eval"``: the whole model in eval mode. BatchNorm normalises with its running
      statistics, so the network is a fixed function of the weights and every sample
      contributes independently of its batch. Dropout is off.
    * ``"train"``: BatchNorm normalises with the statistics of the current batch (as the
      authors' scripts did when they called ``model.train()``), so the curvature of a batch
      includes the coupling through the batch mean and variance and depends on how the data
      is batched. The running statistics are *not* updated (``track_running_stats`` is
      switched off for the duration). All other modules (e.g. dropout) are in eval mode so
      that products are deterministic.

    On exit every module's ``training`` flag and every BatchNorm's ``track_running_stats``
    are restored, even on error.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    modes = [(m, m.training) for m in model.modules()]
    tracked: list[tuple[nn.Module, bool]] = []
    try:
        model.eval()
        if bn_mode == "train":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    tracked.append((m, m.track_running_stats))
                    m.train(True)
                    m.track_running_stats = False
        yield
    finally:
        for m, t in tracked:
            m.track_running_stats = t
        for m, t in modes:
            m.training = t


def is_single_batch(data: Any) -> bool:
    """Whether ``data`` is one batch ``(x, y)`` rather than an iterable of batches."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[1], Tensor)
        and not isinstance(data[0], (tuple, list))
    )


def batch_size(batch: Batch) -> int:
    """The number of samples of ``(x, y)``: ``y.shape[0]`` (1 for a 0-d target)."""
    x, y = batch
    n = int(y.shape[0]) if y.dim() > 0 else 1
    if isinstance(x, Tensor) and x.dim() > 0 and int(x.shape[0]) != n:
        raise ValueError(f"a batch has {int(x.shape[0])} inputs but {n} targets")
    return n


def as_batches(data: Batch | Iterable[Batch]) -> Iterable[Batch]:
    """One batch -> a list of it; a one-shot iterator -> a list; any other iterable as it is."""
    if is_single_batch(data):
        return [tuple(data)]  # type: ignore[list-item]
    if isinstance(data, Iterator):
        return list(data)
    return data  # type: ignore[return-value]


def select_params(model: nn.Module, params: Sequence[Tensor] | Sequence[str] | None) -> list[tuple[str, Tensor]]:
    """``(name, parameter)`` pairs of ``params`` (tensors of ``model`` or their names), default every
    parameter with ``requires_grad``."""
    named = dict(model.named_parameters())
    if params is None:
        chosen = [(n, p) for n, p in named.items() if p.requires_grad]
    else:
        by_id = {id(p): n for n, p in named.items()}
        chosen = []
        for p in params:
            if isinstance(p, str):
                if p not in named:
                    raise ValueError(f"model has no parameter named {p!r}")
                chosen.append((p, named[p]))
            elif id(p) in by_id:
                chosen.append((by_id[id(p)], p))
            else:
                raise ValueError("params must be parameters of model (or their names)")
    if not chosen:
        raise ValueError("the model has no trainable parameters to take the curvature over")
    return chosen


def to_device(batch: Batch, device: torch.device) -> Batch:
    """``(x, y)`` on ``device`` (``x`` only if it is a tensor)."""
    x, y = batch
    if isinstance(x, Tensor):
        x = x.to(device, non_blocking=True)
    return x, y.to(device, non_blocking=True)
