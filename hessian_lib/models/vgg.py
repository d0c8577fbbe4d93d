"""VGG networks for 32x32 inputs, as in the authors' code lineage (Garipov et al., Izmailov et al.).

The convolutional stack of VGG-16 is ``64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512,M``
(3x3 convolutions with bias, ReLU, optional BatchNorm before the ReLU, 2x2 max-pooling at ``M``),
so a 32x32 image leaves it as a 512-vector; the classifier is
``Dropout-Linear(512,512)-ReLU-Dropout-Linear(512,512)-ReLU-Linear(512,C)``. On CIFAR-100 (C=100)
VGG-16 without BatchNorm has 14,714,688 + 525,312 + 51,300 = 15,291,300 parameters, the number the
paper reports; with BatchNorm 8,448 more (15,299,748).

``width`` multiplies every channel count and the classifier's hidden size (rounded, at least 1),
so ``width=0.125`` is the same architecture with 8..64 channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["VGG", "VGG_CONFIGS"]

#: Layer plans by depth (number of weight layers): channel counts, ``"M"`` = 2x2 max-pool.
VGG_CONFIGS: dict[int, list[int | str]] = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class VGG(nn.Module):
    """VGG-``depth`` for 3x32x32 inputs: ``forward(x [N,3,32,32]) -> logits [N, num_classes]``.

    Convolutions use He-normal initialisation (std ``sqrt(2 / (9 * out_channels))``) and zero
    bias, as in the authors' lineage; linear layers keep PyTorch's default initialisation.
    """

    def __init__(self, num_classes: int = 100, depth: int = 16, batch_norm: bool = False,
                 width: float = 1.0, dropout: float = 0.5) -> None:
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONFIGS)}, got {depth}")
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        layers: list[nn.Module] = []
        in_channels = 3
        for v in VGG_CONFIGS[depth]:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            out = _scaled(int(v), width)
            layers.append(nn.Conv2d(in_channels, out, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out
        self.features = nn.Sequential(*layers)
        hidden = _scaled(512, width)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(in_channels, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 3, H, W]`` (normalised) to logits ``[N, num_classes]``."""
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))
