r"""Stochastic trace estimators: Hutchinson and Hutch++.

Hutchinson: for Rademacher probes :math:`z` (:math:`\mathbb E[zz^\top] = I`),
:math:`\operatorname{tr} A = \mathbb E[z^\top A z]`; the estimate is the mean of
``num_probes`` samples and its standard error the sample standard deviation over
:math:`\sqrt{n}`.

Hutch++ (Meyer, Musco, Musco, Williams 2021): spend a third of the products on a sketch
:math:`Q = \operatorname{orth}(A S)`, take :math:`\operatorname{tr}(Q^\top A Q)` exactly and
apply Hutchinson only to the deflated remainder :math:`(I - QQ^\top) A (I - QQ^\top)`. It
wins when a few eigenvalues dominate the trace (spiked Hessian spectra).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from hessian_lib.curvature._protocol import LinearOperator, expect_products, progress_bar

__all__ = ["TraceEstimate", "hutchinson_trace", "hutchpp_trace"]


@dataclass
class TraceEstimate:
    r"""A stochastic trace estimate.

    Attributes:
        estimate: the estimate of :math:`\operatorname{tr} A`.
        stderr: its standard error (sample standard deviation of the stochastic part over
            :math:`\sqrt{n}`; ``nan`` with a single probe).
        samples: ``[n]`` the per-probe values of the stochastic part (float64).
        num_products: operator products used.
    """

    estimate: float
    stderr: float
    samples: Tensor
    num_products: int


def _rademacher(n: int, dim: int, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, (n, dim), generator=gen, dtype=torch.int8).to(torch.float64).mul_(2).sub_(1)


def _products(op: LinearOperator, Z: Tensor, block_size: int, bar: object | None = None) -> Tensor:
    out = []
    for start in range(0, Z.shape[0], block_size):
        block = Z[start : start + block_size]
        out.append(op.matvec(block.to(op.device)).to(torch.float64).cpu())
        if bar is not None:
            bar.update(block.shape[0])  # type: ignore[attr-defined]
    return torch.cat(out)


def hutchinson_trace(
    op: LinearOperator,
    num_probes: int,
    *,
    seed: int = 0,
    block_size: int = 8,
    progress: bool = False,
) -> TraceEstimate:
    r"""Hutchinson's estimate of :math:`\operatorname{tr} A` with ``num_probes`` Rademacher
    probes (drawn on the CPU from ``seed``), in blocks of ``block_size`` products (one
    pass over the data per block).

    Rademacher probes give a diagonal matrix's trace exactly (:math:`z_i^2 = 1`):

    >>> import torch
    >>> from hessian_lib.curvature import MatrixOperator
    >>> A = MatrixOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
    >>> estimate = hutchinson_trace(A, num_probes=10, seed=0)
    >>> estimate.estimate, estimate.stderr
    (5050.0, 0.0)
    """
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    gen = torch.Generator().manual_seed(int(seed))
    Z = _rademacher(num_probes, op.dim, gen)
    expect_products(op, num_probes)
    bar = progress_bar(num_probes, progress, "Hutchinson")
    AZ = _products(op, Z, block_size, bar)
    if bar is not None:
        bar.close()
    samples = (Z * AZ).sum(1)
    se = float(samples.std(unbiased=True) / math.sqrt(num_probes)) if num_probes > 1 else float("nan")
    return TraceEstimate(float(samples.mean()), se, samples, num_probes)


def hutchpp_trace(
    op: LinearOperator,
    num_products: int,
    *,
    seed: int = 0,
    block_size: int = 8,
    progress: bool = False,
) -> TraceEstimate:
    r"""Hutch++ with about ``num_products`` products: ``s = num_products // 3`` for the
    sketch, ``s`` for :math:`AQ`, the rest for Hutchinson on the deflated remainder. The
    standard error covers the Hutchinson part (the low-rank part is exact given :math:`Q`)."""
    s = num_products // 3
    if s < 1:
        raise ValueError(f"num_products must be >= 3 for Hutch++, got {num_products}")
    n_rest = num_products - 2 * s
    gen = torch.Generator().manual_seed(int(seed))
    S = _rademacher(s, op.dim, gen)
    G = _rademacher(n_rest, op.dim, gen)
    expect_products(op, 2 * s + n_rest)
    bar = progress_bar(num_products, progress, "Hutch++")
    AS = _products(op, S, block_size, bar)
    Q, _ = torch.linalg.qr(AS.T)  # [P, s]
    AQ = _products(op, Q.T.contiguous(), block_size, bar)  # [s, P]
    low = float(torch.trace(Q.T @ AQ.T))
    Gp = G - (G @ Q) @ Q.T
    AGp = _products(op, Gp, block_size, bar)
    if bar is not None:
        bar.close()
    samples = (Gp * AGp).sum(1)
    se = float(samples.std(unbiased=True) / math.sqrt(n_rest)) if n_rest > 1 else float("nan")
    return TraceEstimate(low + float(samples.mean()), se, samples, 2 * s + n_rest)
