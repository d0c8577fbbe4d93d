"""What the algorithms (Lanczos, SLQ, trace estimators) ask of an operator, and their progress bars."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["LinearOperator", "MatrixOperator", "expect_products", "progress_bar"]


class LinearOperator(Protocol):
    """Anything with ``dim``, ``device`` and ``matvec([P]) -> [P]``."""

    dim: int
    device: torch.device

    def matvec(self, v: Tensor) -> Tensor: ...


class MatrixOperator:
    """A dense symmetric matrix ``[P, P]`` as a :class:`LinearOperator` (matrices with a known spectrum)."""

    def __init__(self, matrix: Tensor) -> None:
        self.matrix = matrix
        self.dim = int(matrix.shape[0])
        self.device = matrix.device
        self.dtype = matrix.dtype

    def matvec(self, v: Tensor) -> Tensor:
        """``A v`` for ``v`` of shape ``[P]``, or ``V A`` for a block ``[k, P]`` (A is symmetric)."""
        return v.to(self.matrix.dtype) @ self.matrix.T


def expect_products(op: object, n: int) -> None:
    """Tell ``op`` that about ``n`` products will follow, if it takes the hint (the curvature
    operators do: :meth:`~hessian_lib.curvature.CurvatureOperator.expect_products`)."""
    hint = getattr(op, "expect_products", None)
    if callable(hint):
        hint(int(n))


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A tqdm bar of ``total`` steps when ``enabled``, else ``None``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc)
