"""The curvature of one batch drawn from a dataset: :func:`batch_operator`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from hessian_lib.curvature._base import CurvatureOperator
from hessian_lib.curvature._data import Batch, LossFn, is_single_batch
from hessian_lib.curvature.ggn import GGNOperator
from hessian_lib.curvature.hessian import HessianOperator

__all__ = ["batch_operator"]


def _dataset_tensors(dataset: Any) -> tuple[int, Callable[[Tensor], Batch]]:
    if is_single_batch(dataset):
        x, y = dataset
        n = int(y.shape[0])
        return n, lambda idx: (x[idx], y[idx])
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        n = len(dataset)

        def take(idx: Tensor) -> Batch:
            items = [dataset[int(i)] for i in idx]
            xs = torch.stack([torch.as_tensor(it[0]) for it in items])
            ys = torch.stack([torch.as_tensor(it[1]) for it in items])
            return xs, ys

        return n, take
    raise TypeError("dataset must be a pair of tensors (x, y) or a map-style torch Dataset")


def batch_operator(
    kind: str,
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Any,
    batch_size: int,
    *,
    seed: int,
    **kwargs: Any,
) -> CurvatureOperator:
    r"""The batch Hessian or batch GGN of one batch of ``batch_size`` samples drawn without
    replacement from ``dataset`` (the paper's :math:`H_{\mathrm{batch}} = H_{\mathrm{emp}} +
    \varepsilon(w)` for a mean loss; for a sum loss, the curvature of the sum over the batch).

    Args:
        kind: ``"hessian"`` or ``"ggn"``.
        model: the network (its parameters are the operator's coordinates).
        loss_fn: the loss, as for :class:`HessianOperator`.
        dataset: a pair of tensors ``(x [N, ...], y [N])`` or a map-style ``Dataset`` whose
            items are ``(x, y)``.
        batch_size: :math:`B`, ``1 <= B <= N``; ``B = N`` gives the empirical matrix.
        seed: the draw is ``torch.randperm(N, generator=seed)[:B]`` (reproducible).
        **kwargs: passed to the operator (``params``, ``weight_decay``, ``bn_mode``, ...).
    """
    classes = {"hessian": HessianOperator, "ggn": GGNOperator}
    if kind.lower() not in classes:
        raise ValueError(f"kind must be 'hessian' or 'ggn', got {kind!r}")
    n, take = _dataset_tensors(dataset)
    if n == 0:
        raise ValueError("the dataset is empty")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be between 1 and the dataset size {n}, got {batch_size}")
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(n, generator=gen)[:batch_size].sort().values
    return classes[kind.lower()](model, loss_fn, take(idx), **kwargs)
