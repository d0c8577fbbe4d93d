"""A network small enough to hold its Hessian as a dense matrix: the Spectra chapter's validation model.

>>> model = PooledMLP(hidden=16)
>>> sum(p.numel() for p in model.parameters())
2484
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PooledMLP"]


class PooledMLP(nn.Module):
    r"""CIFAR images average-pooled to 4x4 (48 inputs), one tanh hidden layer, ``num_classes`` logits.

    ``forward(x [N, 3, 32, 32]) -> logits [N, num_classes]``. With ``hidden`` units it has
    :math:`P = 49\,h + (h + 1)\,C` parameters (2,484 for h = 16, C = 100), so its Hessian and
    Gauss-Newton matrices fit in memory and can be diagonalised exactly. tanh keeps the network
    twice differentiable everywhere, so its Hessian has no ReLU kinks.
    """

    def __init__(self, hidden: int, num_classes: int = 100) -> None:
        super().__init__()
        if hidden < 1 or num_classes < 2:
            raise ValueError(f"need hidden >= 1 and num_classes >= 2, got {hidden}, {num_classes}")
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(48, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.pool(x))
