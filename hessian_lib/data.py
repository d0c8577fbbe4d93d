"""CIFAR-100 from one data-root folder, kept in memory as uint8 tensors.

The data root is a folder named by (in order) the ``data_root`` argument, the
``HESSIAN_LIB_DATA`` environment variable, or ``~/.cache/hessian_lib/cifar100``.
It may hold either

* the offline copy format: ``train.npz``, ``test.npz`` and ``meta.json``
  (``images`` uint8 [N, 32, 32, 3] HWC RGB, ``fine_labels``, ``coarse_labels``), or
* torchvision's own files: ``cifar-100-python/{train,test,meta}``.

With ``download=True`` (or ``HESSIAN_LIB_DOWNLOAD=1``) and neither present,
torchvision fetches its files into the data root. Anything missing or malformed
raises :class:`DataError` saying where it looked and how to fix it.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "DATA_ROOT_ENV",
    "CIFAR100Split",
    "DataError",
    "load_cifar100",
    "normalize",
    "resolve_data_root",
    "stratified_indices",
]

DATA_ROOT_ENV = "HESSIAN_LIB_DATA"
DOWNLOAD_ENV = "HESSIAN_LIB_DOWNLOAD"
DEFAULT_DATA_ROOT = Path.home() / ".cache" / "hessian_lib" / "cifar100"

#: Per-channel mean and standard deviation of the CIFAR-100 training images on the [0, 1] scale.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

_SPLIT_SIZES = {"train": 50_000, "test": 10_000}
NUM_CLASSES = 100


class DataError(RuntimeError):
    """CIFAR-100 is missing or malformed under the data root."""


@dataclass(frozen=True)
class CIFAR100Split:
    """One split of CIFAR-100 in memory.

    ``images``: uint8 [N, 3, 32, 32] (CHW, RGB); ``labels``: int64 [N] fine labels in 0..99;
    ``coarse_labels``: int64 [N] in 0..19; ``classes``: the 100 fine label names.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    coarse_labels: torch.Tensor
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor | np.ndarray) -> "CIFAR100Split":
        """The images at ``indices`` (a view-free copy), same class names."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return CIFAR100Split(
            name=self.name,
            images=self.images[idx].clone(),
            labels=self.labels[idx].clone(),
            coarse_labels=self.coarse_labels[idx].clone(),
            classes=self.classes,
            source=self.source,
        )


def resolve_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """The data-root folder: the argument, else ``$HESSIAN_LIB_DATA``, else the user cache."""
    if data_root not in (None, ""):
        return Path(data_root).expanduser()
    env = os.environ.get(DATA_ROOT_ENV)
    if env:
        return Path(env).expanduser()
    return DEFAULT_DATA_ROOT


def _fix_hint(root: Path) -> str:
    return (
        f"Point the data root at a folder holding CIFAR-100: pass --data-root (or data_root=...), "
        f"or set {DATA_ROOT_ENV}. The folder may hold train.npz/test.npz/meta.json (the offline copy) "
        f"or torchvision's cifar-100-python/ folder; on a machine with internet, set {DOWNLOAD_ENV}=1 "
        f"(or download=True) to let torchvision fetch it into {root}."
    )


def _check_arrays(path: Path, split: str, images: np.ndarray, fine: np.ndarray, coarse: np.ndarray) -> None:
    n = _SPLIT_SIZES[split]
    problems = []
    if images.dtype != np.uint8 or images.shape != (n, 32, 32, 3):
        problems.append(f"images should be uint8 [{n}, 32, 32, 3], found {images.dtype} {list(images.shape)}")
    if fine.shape != (n,) or (fine.size and (fine.min() < 0 or fine.max() >= NUM_CLASSES)):
        problems.append(f"fine labels should be {n} integers in 0..99, found shape {list(fine.shape)}")
    if coarse.shape != (n,) or (coarse.size and (coarse.min() < 0 or coarse.max() >= 20)):
        problems.append(f"coarse labels should be {n} integers in 0..19, found shape {list(coarse.shape)}")
    if problems:
        raise DataError(f"malformed CIFAR-100 {split} split in {path}: " + "; ".join(problems))


def _load_npz(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    path = root / f"{split}.npz"
    try:
        with np.load(path) as archive:
            missing = {"images", "fine_labels", "coarse_labels"} - set(archive.files)
            if missing:
                raise DataError(f"{path} lacks the arrays {sorted(missing)}. {_fix_hint(root)}")
            images = archive["images"]
            fine = archive["fine_labels"].astype(np.int64)
            coarse = archive["coarse_labels"].astype(np.int64)
        meta = json.loads((root / "meta.json").read_text())
        classes = tuple(meta["fine_label_names"])
    except DataError:
        raise
    except Exception as err:  # zip errors, truncated files, bad JSON...
        raise DataError(f"cannot read CIFAR-100 from {path} ({type(err).__name__}: {err}). {_fix_hint(root)}") from err
    if len(classes) != NUM_CLASSES:
        raise DataError(f"{root / 'meta.json'} should name 100 fine classes, found {len(classes)}")
    _check_arrays(path, split, images, fine, coarse)
    return images, fine, coarse, classes


def _load_torchvision_files(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    path = folder / split
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        with open(folder / "meta", "rb") as fh:
            meta = pickle.load(fh, encoding="latin1")
        images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        fine = np.asarray(entry["fine_labels"], dtype=np.int64)
        coarse = np.asarray(entry["coarse_labels"], dtype=np.int64)
        classes = tuple(meta["fine_label_names"])
    except Exception as err:
        raise DataError(f"cannot read torchvision's CIFAR-100 file {path} ({type(err).__name__}: {err}). "
                        f"{_fix_hint(folder.parent)}") from err
    _check_arrays(path, split, images, fine, coarse)
    return images, fine, coarse, classes


def _download(root: Path) -> None:
    import torchvision

    root.mkdir(parents=True, exist_ok=True)
    try:
        torchvision.datasets.CIFAR100(str(root), train=True, download=True)
    except Exception as err:
        raise DataError(f"downloading CIFAR-100 into {root} failed ({err}). {_fix_hint(root)}") from err


def _find_format(root: Path) -> str:
    if (root / "train.npz").exists() or (root / "test.npz").exists():
        return "npz"
    if (root / "cifar-100-python").is_dir():
        return "torchvision"
    if root.name == "cifar-100-python" and (root / "meta").exists():
        return "torchvision-inner"
    return "none"


@functools.lru_cache(maxsize=4)
def _load_cached(root: str, split: str, download: bool) -> CIFAR100Split:
    folder = Path(root)
    fmt = _find_format(folder)
    if fmt == "none" and download:
        _download(folder)
        fmt = _find_format(folder)
    if fmt == "none":
        what = "does not exist" if not folder.exists() else "holds neither train.npz/test.npz nor cifar-100-python/"
        raise DataError(f"no CIFAR-100 found: the data root {folder} {what}. {_fix_hint(folder)}")
    if fmt == "npz":
        images, fine, coarse, classes = _load_npz(folder, split)
    else:
        inner = folder / "cifar-100-python" if fmt == "torchvision" else folder
        images, fine, coarse, classes = _load_torchvision_files(inner, split)
    return CIFAR100Split(
        name=split,
        images=torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        labels=torch.from_numpy(fine),
        coarse_labels=torch.from_numpy(coarse),
        classes=classes,
        source=f"{fmt}:{folder}",
    )


def load_cifar100(
    split: str = "train",
    data_root: str | os.PathLike | None = None,
    *,
    download: bool | None = None,
) -> CIFAR100Split:
    """Load one CIFAR-100 split (``"train"`` or ``"test"``) into memory as uint8 tensors.

    Cached per process: loading the same split twice is free. ``download=None``
    follows ``$HESSIAN_LIB_DOWNLOAD``.
    """
    if split not in _SPLIT_SIZES:
        raise ValueError(f"unknown CIFAR-100 split {split!r}; valid splits: train, test")
    if download is None:
        download = os.environ.get(DOWNLOAD_ENV, "").lower() in {"1", "true", "yes"}
    root = resolve_data_root(data_root).resolve()
    return _load_cached(str(root), split, bool(download))


def check_data_root(data_root: str | os.PathLike | None = None) -> Path:
    """Fail fast (:class:`DataError`) unless the data root holds a readable CIFAR-100; return it."""
    root = resolve_data_root(data_root).resolve()
    load_cifar100("test", root)
    return root


def stratified_indices(labels: torch.Tensor | np.ndarray, size: int, *, seed: int = 0) -> np.ndarray:
    """A deterministic, class-stratified subset of ``size`` indices (sorted), int64 [size].

    Every class gets ``size // C`` images, and the first ``size % C`` classes of a
    seeded class order one more; within a class the images are a seeded random
    choice. The same (labels, size, seed) always gives the same indices.
    """
    labels = np.asarray(labels)
    if not 0 < size <= len(labels):
        raise ValueError(f"subset size must be in 1..{len(labels)}, got {size}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per_class, extra = divmod(size, len(classes))
    bonus = set(rng.permutation(classes)[:extra].tolist())
    chosen = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        take = per_class + (1 if int(c) in bonus else 0)
        if take > len(members):
            raise ValueError(f"class {c} has only {len(members)} images, {take} requested")
        chosen.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def normalize(images: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> float [N, 3, H, W] with the CIFAR-100 mean and std (test-time transform)."""
    mean = torch.tensor(CIFAR100_MEAN, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD, dtype=dtype, device=images.device).view(1, 3, 1, 1)
    return (images.to(dtype) / 255.0 - mean) / std
