"""Choosing the compute device: ``auto`` means CUDA when present (the local rank's GPU under torchrun), else the CPU.

Also whether a device trains fast in bfloat16 (:func:`bf16_native`), which decides whether a
recipe's ``mixed_precision`` is honoured there.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch

__all__ = ["bf16_native", "resolve_device"]

#: CPU feature flags (as in /proc/cpuinfo) of native bfloat16 arithmetic: x86 AVX512-BF16 and AMX, Arm BF16.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where that file does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


@functools.lru_cache(maxsize=None)
def bf16_native(device: torch.device) -> bool:
    """True where bf16 autocast makes training faster: CUDA GPUs with bf16, CPUs with native bf16 instructions.

    Elsewhere bf16 would be emulated (slower than float32), so the caller trains in float32;
    the first such call on a CPU warns once, naming the missing flags.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu" and _cpu_flags() & BF16_CPU_FLAGS:
        return True
    warnings.warn(f"mixed_precision: no native bfloat16 on this {device.type} (none of the CPU flags "
                  f"{', '.join(sorted(BF16_CPU_FLAGS))}); training in float32 instead", RuntimeWarning, stacklevel=2)
    return False


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None``: CUDA when present (the local rank's GPU under torchrun), else CPU.

    ``"cuda"`` on a machine without CUDA raises ``ValueError``.
    """
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        elif dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev
