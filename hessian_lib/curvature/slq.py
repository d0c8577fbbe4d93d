r"""Stochastic Lanczos quadrature (SLQ): the spectral density of a curvature operator.

For a symmetric :math:`A` with eigenvalues :math:`\lambda_1..\lambda_P`, the spectral
density is :math:`\rho(\lambda) = \frac1P\sum_i \delta(\lambda - \lambda_i)`. For a unit
random vector :math:`v`, :math:`v^\top f(A) v \approx \sum_k \gamma_k f(\theta_k)` with the
Ritz values :math:`\theta_k` and weights :math:`\gamma_k` of :math:`m` Lanczos steps from
:math:`v` (exact for polynomials of degree :math:`\le 2m-1`), and
:math:`\mathbb{E}[v^\top f(A) v] = \frac1P \operatorname{tr} f(A)`. Averaging over
``num_probes`` vectors and broadening each Ritz value by a Gaussian of width
:math:`\sigma` gives the smoothed density

.. math:: \hat\rho(\lambda) = \frac{1}{n_v}\sum_{p=1}^{n_v}\sum_{k=1}^{m} \gamma^{(p)}_k
    \,\mathcal N(\lambda;\theta^{(p)}_k, \sigma^2),

which integrates to 1 over the real line.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hessian_lib.curvature._protocol import LinearOperator, expect_products, progress_bar
from hessian_lib.curvature.lanczos import LanczosProcess, LanczosResult, lanczos

__all__ = ["SLQResult", "gaussian_density", "slq_density"]


@dataclass
class SLQResult:
    """Output of :func:`slq_density`.

    Attributes:
        grid: ``[G]`` float64 points where the density is evaluated.
        density: ``[G]`` the Gaussian-broadened density on ``grid`` (integrates to 1 over
            the real line; over the default grid, to 1 within ~1e-6).
        sigma: the broadening width used.
        ritz_values: list of ``num_probes`` tensors ``[m_p]`` (``m_p < num_iters`` only after a
            breakdown), for stem plots.
        ritz_weights: matching list of weights ``[m_p]``, each summing to 1.
        num_products: operator products used in total.
    """

    grid: Tensor
    density: Tensor
    sigma: float
    ritz_values: list[Tensor]
    ritz_weights: list[Tensor]
    num_products: int

    def moments_per_probe(self, order: int) -> Tensor:
        r"""``[num_probes]`` quadrature estimates :math:`\sum_k \gamma_k \theta_k^{j}` of
        :math:`v^\top A^j v` (exact for ``order <= 2m-1``)."""
        return torch.stack([(w * t**order).sum() for t, w in zip(self.ritz_values, self.ritz_weights)])

    def moment(self, order: int) -> tuple[float, float]:
        r"""Estimate of :math:`\operatorname{tr}(A^j)/P` and its standard error over probes."""
        m = self.moments_per_probe(order)
        se = float(m.std(unbiased=True) / math.sqrt(m.numel())) if m.numel() > 1 else float("nan")
        return float(m.mean()), se


def gaussian_density(
    grid: Tensor, ritz_values: list[Tensor], ritz_weights: list[Tensor], sigma: float
) -> Tensor:
    """The broadened density ``[G]`` of Ritz values and weights on ``grid`` (see module doc)."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    grid = grid.to(torch.float64)
    out = torch.zeros_like(grid)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    for t, w in zip(ritz_values, ritz_weights):
        z = (grid[:, None] - t[None, :].to(torch.float64)) / sigma
        out += (torch.exp(-0.5 * z * z) * w[None, :].to(torch.float64)).sum(1) * norm
    return out / max(len(ritz_values), 1)


def _lockstep(
    op: LinearOperator,
    num_iters: int,
    seeds: list[int],
    reorthogonalize: bool,
    bar: Any,
    basis_dtype: torch.dtype | None,
) -> list[LanczosResult]:
    """Independent Lanczos runs from the start vectors of ``seeds``, advanced together while
    a block pays: each step multiplies the runs' current vectors as one block ``[k, P]``.
    Once the operator says a block of ``k`` costs as much as ``k`` single products
    (``op.blocks_pay(k)`` false), the runs finish one after the other, so that one basis at a
    time is held in full. The Ritz values are the same either way."""
    steps = min(num_iters, int(op.dim))
    procs: list[LanczosProcess | None] = [
        LanczosProcess(op, seed=s, reorthogonalize=reorthogonalize, capacity=num_iters, basis_dtype=basis_dtype)
        for s in seeds
    ]
    results: list[LanczosResult | None] = [None] * len(procs)
    pays = getattr(op, "blocks_pay", None)
    while True:
        active = [p for p in procs if p is not None and p.can_step() and p.num_iters < steps]
        if not active:
            break
        if len(active) > 1 and callable(pays) and not pays(len(active)):
            break
        start = time.perf_counter()
        W = op.matvec(torch.stack([p.current() for p in active]))
        share = (time.perf_counter() - start) / len(active)
        for p, w in zip(active, W.unbind(0)):
            p.product_seconds += share
            p.advance(w)
        if bar is not None:
            bar.update(len(active))
    for p in procs:
        if p is not None:
            p.trim()
    for j, p in enumerate(procs):  # one after the other (nothing left to do if the loop ran to the end)
        assert p is not None
        while p.can_step() and p.num_iters < steps:
            p.step()
            if bar is not None:
                bar.update(1)
        results[j] = p.result()
        procs[j] = None  # its basis goes
    return [r for r in results if r is not None]


def slq_density(
    op: LinearOperator,
    num_iters: int,
    num_probes: int,
    *,
    grid: Tensor | None = None,
    sigma: float | None = None,
    num_points: int = 2001,
    seed: int = 0,
    reorthogonalize: bool = True,
    block: bool | None = None,
    progress: bool = False,
    basis_dtype: torch.dtype | None = None,
) -> SLQResult:
    r"""The SLQ spectral density of ``op``.

    Args:
        op: symmetric operator (``dim``, ``device``, ``matvec``).
        num_iters: Lanczos steps per probe, :math:`m` (e.g. 30-100).
        num_probes: number of random start vectors, :math:`n_v`; probe ``p`` uses seed
            ``seed + p``.
        grid: ``[G]`` evaluation points; default ``num_points`` points spanning the Ritz
            values padded by ``5 sigma`` on each side.
        sigma: Gaussian width; default 1% of the Ritz-value range (at least ``1e-12``).
        num_points: size of the default grid.
        seed: seed of the first probe's start vector.
        reorthogonalize: full re-orthogonalisation in each Lanczos run.
        block: run the probes in lockstep, one block product ``[num_probes, P]`` per step
            (one pass over the data per step for all probes; the operator multiplies the
            block vector by vector or vectorised, whichever it measured faster), or one
            probe after the other. Default: lockstep when the operator takes blocks
            (``op.accepts_blocks``, true for the curvature operators), for as long as the
            operator says a block pays (``op.blocks_pay``: one state built per block, or a
            vectorised block measured faster), then one probe after the other, so that one
            basis at a time is held in full. The Ritz values are the same either way (the
            same products of the same vectors).
        progress: tqdm bar over products (lockstep) or probes.
        basis_dtype: dtype of the Lanczos bases (default: float32 for float32 operators, see
            :func:`~hessian_lib.curvature.lanczos.default_basis_dtype`). In lockstep every
            probe holds its basis, ``num_probes x num_iters x P`` entries at the end.

    Returns:
        :class:`SLQResult` with the grid, the density, and the raw Ritz values and weights.

    Example: the density of the eigenvalues 1, ..., 100 integrates to one over its grid.

    >>> import torch
    >>> from hessian_lib.curvature import MatrixOperator
    >>> A = MatrixOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
    >>> result = slq_density(A, num_iters=30, num_probes=2, seed=0)
    >>> result.density.shape, round(float(torch.trapezoid(result.density, result.grid)), 4)
    (torch.Size([2001]), 1.0)
    """
    if num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    if block is None:
        block = bool(getattr(op, "accepts_blocks", False))
    seeds = [seed + p for p in range(num_probes)]
    expect_products(op, num_probes * min(num_iters, int(op.dim)))
    if block and num_probes > 1:
        bar = progress_bar(num_probes * min(num_iters, int(op.dim)), progress, "SLQ products")
        runs = _lockstep(op, num_iters, seeds, reorthogonalize, bar, basis_dtype)
    else:
        bar = progress_bar(num_probes, progress, "SLQ probes")
        runs = []
        for s in seeds:
            runs.append(lanczos(op, num_iters, seed=s, reorthogonalize=reorthogonalize, basis_dtype=basis_dtype))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    values = [r.ritz_values for r in runs]
    weights = [r.ritz_weights / r.ritz_weights.sum() for r in runs]
    products = sum(r.num_iters for r in runs)
    lo = min(float(v.min()) for v in values)
    hi = max(float(v.max()) for v in values)
    if sigma is None:
        sigma = max(0.01 * (hi - lo), 1e-12 * max(abs(lo), abs(hi), 1.0))
    if grid is None:
        grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, num_points, dtype=torch.float64)
    density = gaussian_density(grid, values, weights, sigma)
    return SLQResult(
        grid=grid.to(torch.float64),
        density=density,
        sigma=float(sigma),
        ritz_values=values,
        ritz_weights=weights,
        num_products=products,
    )
