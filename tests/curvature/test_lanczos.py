"""Lanczos and the extremal eigensolvers."""

from __future__ import annotations

import pytest
import torch

from hessian_lib.curvature import (
    HessianOperator,
    LanczosProcess,
    MatrixOperator,
    bottom_eigenvalues,
    default_basis_dtype,
    lanczos,
    slq_density,
    top_eigenvalues,
)

from .cases import LOSS


def test_lanczos_top_and_bottom_eigenvalues(cnn_problem):
    model, data, H, ev = cnn_problem
    op = HessianOperator(model, LOSS, data)
    k = 4
    top = top_eigenvalues(op, k, tol=1e-6, max_iters=op.dim)
    bot = bottom_eigenvalues(op, k, tol=1e-6, max_iters=op.dim)
    assert top.converged and bot.converged
    assert torch.allclose(top.eigenvalues, ev[-k:].flip(0), rtol=1e-4, atol=1e-4 * float(ev.abs().max()))
    assert torch.allclose(bot.eigenvalues, ev[:k], rtol=1e-4, atol=1e-4 * float(ev.abs().max()))
    assert torch.all(top.eigenvalues[:-1] > top.eigenvalues[1:])  # no duplicates
    assert torch.all(bot.eigenvalues[:-1] < bot.eigenvalues[1:])
    vec = top_eigenvalues(op, 2, tol=1e-6, max_iters=op.dim, return_eigenvectors=True)
    for lam, u in zip(vec.eigenvalues, vec.eigenvectors):
        assert float((H @ u - lam * u).norm()) < 1e-3 * float(ev.abs().max())


def test_lanczos_full_run_has_no_ghosts(cnn_problem):
    model, data, H, ev = cnn_problem
    op = HessianOperator(model, LOSS, data)
    res = lanczos(op, op.dim, seed=0)
    assert res.num_iters <= op.dim
    assert abs(float(res.ritz_weights.sum()) - 1) < 1e-10
    scale = float(ev.abs().max())
    # every Ritz value is an eigenvalue, and the extremes are found exactly once
    dist = (res.ritz_values[:, None] - ev[None, :]).abs().min(1).values
    assert float(dist.max()) < 1e-4 * scale
    for j in range(3):
        assert int(((res.ritz_values - ev[-1 - j]).abs() < 1e-4 * scale).sum()) == 1
    # the tridiagonal matrix reproduces the Ritz values
    assert torch.allclose(torch.linalg.eigvalsh(res.tridiagonal()), res.ritz_values)


def test_lanczos_basis_is_kept_in_the_products_precision(cnn_problem):
    """A float32 operator gets a float32 basis (half the memory), a float64 one float64; the Ritz
    values agree with a float64 basis to the products' rounding."""
    model, data, H, ev = cnn_problem
    op = HessianOperator(model, LOSS, data)
    assert default_basis_dtype(op) == torch.float32
    assert default_basis_dtype(MatrixOperator(H)) == torch.float64
    assert default_basis_dtype(object()) == torch.float64
    assert LanczosProcess(op).dtype == torch.float32 and LanczosProcess(MatrixOperator(H)).dtype == torch.float64
    runs = {dt: lanczos(op, 30, seed=2, basis_dtype=dt, return_vectors=True) for dt in (torch.float32, torch.float64)}
    scale = float(ev.abs().max())
    assert float((runs[torch.float32].ritz_values - runs[torch.float64].ritz_values).abs().max()) < 1e-5 * scale
    assert runs[torch.float32].ritz_vectors.dtype == torch.float64
    dens = [slq_density(op, 12, 2, seed=0, basis_dtype=dt).density for dt in (torch.float32, torch.float64)]
    torch.testing.assert_close(dens[0], dens[1], rtol=1e-4, atol=1e-5 * float(dens[1].max()))
    with pytest.raises(ValueError, match="basis dtype"):
        LanczosProcess(op, basis_dtype=torch.float16)


class _Diagonal:
    """A float32 diagonal operator of large dimension (known eigenvalues, cheap products)."""

    def __init__(self, d: torch.Tensor) -> None:
        self.d, self.dim, self.device, self.dtype = d, d.numel(), d.device, d.dtype

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.d * v.to(self.dtype)


def test_float32_basis_stays_orthogonal_at_a_million_parameters():
    """Projections onto a float32 basis accumulate in float64: a float32 dot product over 1e6
    entries would leave the basis about 2e-4 from orthogonal and the top eigenvalue ~1e-4 off."""
    d = torch.rand(1_000_000, generator=torch.Generator().manual_seed(0))
    d[:5] = torch.tensor([5.0, 8.0, 12.0, 20.0, 40.0])
    proc = LanczosProcess(_Diagonal(d), seed=1, capacity=40)
    for _ in range(40):
        proc.step()
    Q = proc._basis[:40].double()
    assert proc._basis.dtype == torch.float32
    assert float((Q @ Q.T - torch.eye(40, dtype=torch.float64)).abs().max()) < 1e-6
    top = proc.result().ritz_values[-3:]
    exact = torch.tensor([12.0, 20.0, 40.0], dtype=torch.float64)
    assert float(((top - exact).abs() / exact).max()) < 1e-6


@pytest.mark.parametrize("which", ["top", "bottom"])
def test_a_single_extreme_eigenvalue_is_not_accepted_after_one_product(which):
    """With one Ritz value there is no gap to bound the error by: the residual alone decides."""
    gen = torch.Generator().manual_seed(3)
    Q, _ = torch.linalg.qr(torch.randn(60, 60, generator=gen, dtype=torch.float64))
    ev = torch.linspace(-1.0, 1.0, 60, dtype=torch.float64)
    ev[-1], ev[0] = 3.0, -2.5  # one outlier at each end
    op = MatrixOperator(Q @ torch.diag(ev) @ Q.T)
    find = top_eigenvalues if which == "top" else bottom_eigenvalues
    res = find(op, 1, tol=1e-8, max_iters=60)
    assert res.num_products > 1 and res.converged
    expected = 3.0 if which == "top" else -2.5
    assert abs(float(res.eigenvalues[0]) - expected) <= 1e-6
    assert float(res.errors[0]) <= 1e-8 * abs(expected)
