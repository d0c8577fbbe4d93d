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
