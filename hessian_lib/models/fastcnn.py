"""A small VGG-style BatchNorm network that learns CIFAR-100 in minutes on two CPU cores.

Not one of the paper's networks. It is the VGG recipe (3x3 convolutions, BatchNorm, ReLU,
2x2 max-pooling) cut to five convolutions with global average pooling and one linear layer,
so that most of its compute sits at low resolution. On two CPU cores VGG-16-BN at the widths
that fit the budget was far from learning in the trials that chose the recipe (no side-by-side
time-to-accuracy benchmark yet; ``benchmarks/train_results.md`` has the throughputs); the book uses this
network wherever it needs a network that has actually learned within the cpu profile's budget, and the paper
profile keeps the authors' networks.

Layer plan (channels, ``"M"`` = max-pool), times ``width``:
``24, M, 48, 48, M, 96, M, 192``, then global average pooling and ``Linear(192, C)``:
about 0.26M parameters at ``width=1``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FastCNN", "FAST_CNN_PLAN"]

#: The layer plan: channel counts and ``"M"`` for a 2x2 max-pool.
FAST_CNN_PLAN: tuple[int | str, ...] = (24, "M", 48, 48, "M", 96, "M", 192)


class FastCNN(nn.Module):
    """``forward(x [N, 3, 32, 32]) -> logits [N, num_classes]``; ``width`` multiplies every channel count."""

    def __init__(self, num_classes: int = 100, width: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        layers: list[nn.Module] = []
        channels = 3
        for item in FAST_CNN_PLAN:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            out = max(1, int(round(int(item) * width)))
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 3, H, W]`` (normalised) to logits ``[N, num_classes]``."""
        return self.classifier(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))
