"""Batched training augmentation on uint8 image tensors: random crop with padding + horizontal flip.

The standard CIFAR augmentation (pad 4 pixels with zeros, take a random 32x32 crop, flip
left-right with probability 1/2) done for a whole batch with one gather, on whatever device
the images live, with the random draws taken from a CPU :class:`torch.Generator`, so the same
generator state gives the same images on CPU and GPU.

>>> g = torch.Generator().manual_seed(0)
>>> out = random_crop_flip(torch.zeros(8, 3, 32, 32, dtype=torch.uint8), g)
>>> out.shape, out.dtype
(torch.Size([8, 3, 32, 32]), torch.uint8)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["random_crop_flip", "draw_crop_flip", "apply_crop_flip"]


def draw_crop_flip(n: int, generator: torch.Generator, padding: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """The random choices for ``n`` images: offsets int64 [n, 2] in ``0..2*padding`` and flips bool [n]."""
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.randint(0, 2, (n,), generator=generator).bool()
    return offsets, flips


def apply_crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int = 4,
                    size: int | None = None) -> torch.Tensor:
    """Crop ``images`` [N, C, H, W] (any dtype) at ``offsets`` of the zero-padded image, flip where ``flips``.

    The crops are ``size`` x ``size`` (default: the input's H x W), so ``padding=0, size=24`` with
    offsets in ``0..8`` takes random 24-pixel crops of 32-pixel images: [N, C, size, size].
    One :func:`torch.gather` per batch through a flat index in (image, row, column, channel) order,
    so the result comes out in channels_last memory layout (what the trainer's convolutions want).
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {list(images.shape)}")
    n, c, h, w = images.shape
    if size is not None:
        if not 0 < size <= min(h, w) + 2 * padding:
            raise ValueError(f"crop size {size} does not fit {h}x{w} images with padding {padding}")
        h = w = size
    dev = images.device
    padded = F.pad(images, (padding, padding, padding, padding)) if padding else images
    ph, pw = padded.shape[-2:]
    offsets = offsets.to(dev)
    flips = flips.to(dev)
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = offsets[:, 0:1] + ar_h                                        # [N, H]
    cols = offsets[:, 1:2] + torch.where(flips[:, None], w - 1 - ar_w, ar_w)  # [N, W]
    chan = torch.arange(c, device=dev) * (ph * pw)                       # [C]
    flat = (rows[:, :, None, None] * pw + cols[:, None, :, None]) + chan  # [N, H, W, C]
    out = torch.gather(padded.reshape(n, -1), 1, flat.reshape(n, -1))
    return out.view(n, h, w, c).permute(0, 3, 1, 2)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random ``padding``-pixel crop and horizontal flip of a batch: [N, C, H, W] -> [N, C, H, W], same dtype.

    Deterministic given the generator's state; advances the generator by one draw of offsets
    and one of flips.
    """
    offsets, flips = draw_crop_flip(images.shape[0], generator, padding)
    return apply_crop_flip(images, offsets, flips, padding)
