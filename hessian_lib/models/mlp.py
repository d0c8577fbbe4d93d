"""Networks small enough to hold their Hessians as dense matrices.

:class:`PooledMLP` is the Spectra chapter's validation model; :class:`VectorMLP` the multi-layer
perceptron the Mixture chapter trains on Gaussian-mixture data.

>>> model = PooledMLP(hidden=16)
>>> sum(p.numel() for p in model.parameters())
2484
>>> sum(p.numel() for p in VectorMLP(32, (32, 32), num_classes=10).parameters())
2442
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PooledMLP", "VectorMLP"]


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
        """Inputs to logits ``[N, num_classes]``."""
        return self.net(self.pool(x))


class VectorMLP(nn.Module):
    r"""A ReLU multi-layer perceptron on vectors: ``forward(x [N, dim]) -> logits [N, num_classes]``.

    ``hidden``: the widths of the hidden layers (each a linear map and a ReLU, as in the
    convolutional networks it is compared with). With widths :math:`h_1, \dots, h_L` it has
    :math:`P = \sum_l (h_{l-1} + 1) h_l` parameters, :math:`h_0` = ``dim`` and
    :math:`h_{L+1} = C`; 2,442 for ``dim`` 32, widths (32, 32) and C = 10.
    """

    def __init__(self, dim: int, hidden: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        if dim < 1 or num_classes < 2 or not hidden or min(hidden) < 1:
            raise ValueError(f"need dim >= 1, num_classes >= 2 and positive hidden widths, got {dim}, "
                             f"{num_classes}, {hidden}")
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            layers += [nn.Linear(width, int(h)), nn.ReLU()]
            width = int(h)
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs to logits ``[N, num_classes]``."""
        return self.net(x)
