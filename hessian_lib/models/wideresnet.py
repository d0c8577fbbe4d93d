"""Wide residual networks for CIFAR (Zagoruyko & Komodakis, 2016): WRN-d-k.

``depth = 6n + 4``: three groups of ``n`` pre-activation basic blocks with ``16k, 32k, 64k``
channels (``k`` = ``widen_factor``), strides 1, 2, 2, after a 16-channel 3x3 stem; then
BatchNorm-ReLU, global average pooling and a linear classifier. Convolutions have no bias; a
1x1 convolution shortcut joins blocks whose channel counts differ. WRN-28-10 on CIFAR-100 has
36,546,980 parameters. ``width`` multiplies every channel count on top of ``widen_factor``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WideResNet"]


class _WideBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.equal = in_planes == planes and stride == 1
        self.shortcut = None if self.equal else nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        skip = x if self.equal else self.shortcut(o)
        y = self.conv1(o)
        y = F.relu(self.bn2(y))
        if self.dropout > 0:
            y = F.dropout(y, p=self.dropout, training=self.training)
        return self.conv2(y) + skip


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: ``forward(x [N,3,32,32]) -> logits [N, num_classes]``."""

    def __init__(self, num_classes: int = 100, depth: int = 28, widen_factor: int = 10,
                 width: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if not width > 0 or widen_factor < 1:
            raise ValueError(f"width must be positive and widen_factor >= 1, got {width}, {widen_factor}")
        n = (depth - 4) // 6
        chans = [max(1, int(round(c * width))) for c in (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)]
        self.conv1 = nn.Conv2d(3, chans[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = chans[0]
        for group, stride in zip(chans[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(_WideBlock(in_planes, group, stride if i == 0 else 1, dropout))
                in_planes = group
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(in_planes)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 3, H, W]`` (normalised) to logits ``[N, num_classes]``."""
        x = self.blocks(self.conv1(x))
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
