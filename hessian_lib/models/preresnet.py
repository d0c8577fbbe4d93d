"""Pre-activation ResNets for CIFAR (He et al., 2016), as in the authors' code lineage.

Three stages of ``n`` blocks with 16, 32, 64 base channels, strides 1, 2, 2, after a
16-channel 3x3 stem; then BatchNorm-ReLU, global average pooling and a linear classifier.
Following the lineage the authors used (Izmailov et al.'s ``PreResNet``), depths >= 44 use
bottleneck blocks (``depth = 9n + 2``, expansion 4: PreResNet-110 has n = 12, PreResNet-164
n = 18) and smaller depths basic blocks (``depth = 6n + 2``); ``bottleneck`` overrides the
rule (``bottleneck=False, depth=110`` is He et al.'s basic-block PreResNet-110). The
shortcut of a block that changes shape is a 1x1 convolution. ``width`` multiplies every
channel count.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PreResNet"]


class _PreBasic(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        out = planes * self.expansion
        self.downsample = (nn.Conv2d(inplanes, out, 1, stride=stride, bias=False)
                           if stride != 1 or inplanes != out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (x if self.downsample is None else self.downsample(o))


class _PreBottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        out = planes * self.expansion
        self.downsample = (nn.Conv2d(inplanes, out, 1, stride=stride, bias=False)
                           if stride != 1 or inplanes != out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        y = self.conv3(F.relu(self.bn3(y)))
        return y + (x if self.downsample is None else self.downsample(o))


class PreResNet(nn.Module):
    """PreResNet-``depth``: ``forward(x [N,3,32,32]) -> logits [N, num_classes]``."""

    def __init__(self, num_classes: int = 100, depth: int = 110, width: float = 1.0,
                 bottleneck: bool | None = None) -> None:
        super().__init__()
        if bottleneck is None:
            bottleneck = depth >= 44
        step = 9 if bottleneck else 6
        if depth < step + 2 or (depth - 2) % step:
            kind = "bottleneck" if bottleneck else "basic-block"
            raise ValueError(f"a {kind} PreResNet needs depth = {step}n+2 with n >= 1, got {depth}")
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        n = (depth - 2) // step
        block = _PreBottleneck if bottleneck else _PreBasic
        base = [max(1, int(round(c * width))) for c in (16, 32, 64)]
        self.inplanes = base[0]
        self.conv1 = nn.Conv2d(3, base[0], 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        for planes, stride in zip(base, (1, 2, 2)):
            for i in range(n):
                layers.append(block(self.inplanes, planes, stride if i == 0 else 1))
                self.inplanes = planes * block.expansion
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(self.inplanes)
        self.fc = nn.Linear(self.inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 3, H, W]`` (normalised) to logits ``[N, num_classes]``."""
        x = self.layers(self.conv1(x))
        x = F.relu(self.bn(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
