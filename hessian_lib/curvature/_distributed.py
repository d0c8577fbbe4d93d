"""Sums across the processes of ``torch.distributed``, for operators whose data is sharded."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["comm_device", "is_active", "sum_floats", "sum_tensor"]


def is_active(distributed: bool | None) -> bool:
    """Whether to sum across processes: ``distributed`` if given (``True`` needs an initialised
    process group), else whenever one is initialised."""
    available = dist.is_available() and dist.is_initialized()
    if distributed is None:
        return available
    if distributed and not available:
        raise RuntimeError("distributed=True but torch.distributed is not initialised")
    return distributed


def comm_device(active: bool) -> torch.device:
    """Where the sums run: the current GPU under NCCL, else the CPU."""
    if active and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_floats(values: list[float], active: bool) -> list[float]:
    """``values`` summed over the processes (unchanged when not ``active``)."""
    if not active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=comm_device(active))
    dist.all_reduce(t)
    return t.tolist()


def sum_tensor(t: Tensor, active: bool) -> Tensor:
    """``t`` summed over the processes, on ``t``'s device (``t`` itself when not ``active``)."""
    if not active:
        return t
    comm = t.to(comm_device(active))
    dist.all_reduce(comm)
    return comm.to(t.device)
