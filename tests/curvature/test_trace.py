"""Hutchinson and Hutch++ trace estimates."""

from __future__ import annotations

from hessian_lib.curvature import HessianOperator, hutchinson_trace, hutchpp_trace

from .cases import LOSS


def test_trace_estimators_within_stated_error(cnn_problem):
    model, data, H, ev = cnn_problem
    op = HessianOperator(model, LOSS, data)
    exact = float(ev.sum())
    t = hutchinson_trace(op, 60, seed=0)
    assert t.num_products == 60 and t.stderr > 0
    assert abs(t.estimate - exact) < 4 * t.stderr
    pp = hutchpp_trace(op, 60, seed=0)
    assert abs(pp.estimate - exact) < 4 * pp.stderr + 1e-6 * abs(exact)


def test_trace_estimators_on_a_dense_matrix_in_blocks():
    """MatrixOperator takes the [k, P] blocks the estimators pass; a diagonal gives its trace exactly."""
    import torch

    from hessian_lib.curvature import MatrixOperator

    torch.manual_seed(0)
    root = torch.randn(40, 40, dtype=torch.float64)
    A = MatrixOperator(root @ root.T)
    block = torch.randn(5, 40, dtype=torch.float64)
    torch.testing.assert_close(A.matvec(block), torch.stack([A.matvec(v) for v in block]))
    diagonal = MatrixOperator(torch.diag(torch.arange(1.0, 41.0, dtype=torch.float64)))
    for block_size in (1, 3, 8):
        assert hutchinson_trace(diagonal, 10, seed=0, block_size=block_size).estimate == 820.0
    exact = float(torch.trace(A.matrix))
    pp = hutchpp_trace(A, 60, seed=0, block_size=8)
    assert abs(pp.estimate - exact) < 4 * pp.stderr + 1e-9 * exact
