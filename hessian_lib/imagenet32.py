"""Downsampled ImageNet 32x32 (Chrabaszcz, Loshchilov and Hutter, 2017) from its published files.

The paper's Adam experiments train WideResNet-28-10 on this data set (the ``imagenet32`` profile section,
:class:`~hessian_lib.profile_sections.ImageNet32Sizes`). Its published format is one folder of pickled
batches:

* ``train_data_batch_1`` ... ``train_data_batch_10`` (1,281,167 images in all) and ``val_data`` (50,000);
* each a dict with ``data``: uint8 [n, 3072], one image per row in channel-major (CHW) order (the 1,024
  red pixels row by row, then green, then blue); ``labels``: n integers in 1..1000; optionally ``mean``:
  the mean training image, float [3072].

The data root is the ``data_root`` argument, else ``$HESSIAN_LIB_IMAGENET32``, else
``~/.cache/hessian_lib/imagenet32``. Anything missing or malformed raises :class:`~hessian_lib.data.DataError`
saying which file and how to fix it. Images come back as uint8 [N, 3, 32, 32] (CHW, as
:class:`~hessian_lib.data.CIFAR100Split`) with labels shifted to 0..999.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hessian_lib.data import DataError

__all__ = ["IMAGENET32_ENV", "IMAGENET32_FILES", "ImageNet32Split", "load_imagenet32", "read_batch_file",
           "write_batch_file"]

IMAGENET32_ENV = "HESSIAN_LIB_IMAGENET32"
DEFAULT_ROOT = Path.home() / ".cache" / "hessian_lib" / "imagenet32"
#: The files of each split, in the order their images are concatenated.
IMAGENET32_FILES = {"train": tuple(f"train_data_batch_{i}" for i in range(1, 11)), "val": ("val_data",)}
NUM_CLASSES = 1000
_SIDE = 32


@dataclass(frozen=True)
class ImageNet32Split:
    """One split in memory: ``images`` uint8 [N, 3, 32, 32] (CHW, RGB), ``labels`` int64 [N] in 0..999,
    ``mean`` the published mean training image float32 [3, 32, 32] on the 0..255 scale (``None`` when the
    files have none), ``source`` the folder."""

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor | None
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def _fix_hint() -> str:
    return (f"Point the data root at the folder of the downsampled ImageNet 32x32 files (train_data_batch_1..10, "
            f"val_data): pass data_root=... or set {IMAGENET32_ENV}.")


def read_batch_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """One published batch file: images uint8 [n, 3, 32, 32], labels int64 [n] in 0..999, mean [3, 32, 32] or None."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        data, labels = np.asarray(entry["data"]), np.asarray(entry["labels"])
        mean = entry.get("mean")
    except Exception as err:  # a missing key, a truncated or foreign pickle...
        raise DataError(f"cannot read the ImageNet 32x32 batch file {path} ({type(err).__name__}: {err}). "
                        f"{_fix_hint()}") from err
    n = labels.shape[0] if labels.ndim == 1 else -1
    if data.dtype != np.uint8 or data.shape != (n, 3 * _SIDE * _SIDE):
        raise DataError(f"malformed ImageNet 32x32 file {path}: 'data' should be uint8 [{max(n, 0)}, 3072] "
                        f"(one row per label), found {data.dtype} {list(data.shape)}")
    if not np.issubdtype(labels.dtype, np.integer) or (n and (labels.min() < 1 or labels.max() > NUM_CLASSES)):
        raise DataError(f"malformed ImageNet 32x32 file {path}: 'labels' should be integers in 1..1000, found "
                        f"{labels.dtype} in {labels.min() if n else '-'}..{labels.max() if n else '-'}")
    if mean is not None:
        mean = np.asarray(mean, dtype=np.float32).reshape(3, _SIDE, _SIDE)
    return data.reshape(n, 3, _SIDE, _SIDE), labels.astype(np.int64) - 1, mean


def write_batch_file(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray,
                     mean: np.ndarray | None = None) -> Path:
    """Write images uint8 [n, 3, 32, 32] and labels in 0..999 as one published batch file (labels stored 1-based)."""
    from hessian_lib.store import atomic_write_bytes

    images = np.asarray(images, dtype=np.uint8)
    entry = {"data": images.reshape(len(images), -1), "labels": [int(v) + 1 for v in labels]}
    if mean is not None:
        entry["mean"] = np.asarray(mean, dtype=np.float64).reshape(-1)
    return atomic_write_bytes(path, pickle.dumps(entry))


def resolve_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data root: the argument, else ``$HESSIAN_LIB_IMAGENET32``, else the user cache."""
    if data_root not in (None, ""):
        return Path(data_root).expanduser()
    env = os.environ.get(IMAGENET32_ENV)
    return Path(env).expanduser() if env else DEFAULT_ROOT


def load_imagenet32(split: str = "train", data_root: str | os.PathLike | None = None) -> ImageNet32Split:
    """Load one split (``"train"`` or ``"val"``) into memory (the train split is 3.9 GB of uint8).

    Every file of the split is checked to exist before any is read.
    """
    if split not in IMAGENET32_FILES:
        raise ValueError(f"unknown ImageNet 32x32 split {split!r}; valid splits: {', '.join(IMAGENET32_FILES)}")
    root = resolve_root(data_root)
    if not root.is_dir():
        raise DataError(f"no ImageNet 32x32 found: the data root {root} does not exist. {_fix_hint()}")
    missing = [name for name in IMAGENET32_FILES[split] if not (root / name).is_file()]
    if missing:
        raise DataError(f"the ImageNet 32x32 {split} split in {root} lacks the files {missing}. {_fix_hint()}")
    parts = [read_batch_file(root / name) for name in IMAGENET32_FILES[split]]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    mean = next((p[2] for p in parts if p[2] is not None), None)
    return ImageNet32Split(name=split, images=torch.from_numpy(images), labels=torch.from_numpy(labels),
                           mean=None if mean is None else torch.from_numpy(mean), source=str(root))
