"""Stochastic Lanczos quadrature: the density, its moments, probes in lockstep or one after the other."""

from __future__ import annotations

import pytest
import torch

from hessian_lib.curvature import HessianOperator, slq_density

from .cases import LOSS, PATHS, cnn, equal_batches, make_data, split


def test_slq_density_and_moments(cnn_problem):
    model, data, H, ev = cnn_problem
    op = HessianOperator(model, LOSS, data)
    res = slq_density(op, 20, 12, seed=0)
    assert abs(float(torch.trapezoid(res.density, res.grid)) - 1) < 1e-3
    assert float(res.density.min()) >= 0
    assert len(res.ritz_values) == 12 and all(abs(float(w.sum()) - 1) < 1e-10 for w in res.ritz_weights)
    for order in (1, 2, 3):
        est, se = res.moment(order)
        exact = float((ev**order).mean())
        assert abs(est - exact) < 4 * se + 1e-6 * abs(exact), (order, est, exact, se)
    # a user grid: density integrates to 1 when the grid covers the spectrum
    grid = torch.linspace(float(ev.min()) - 1, float(ev.max()) + 1, 4001, dtype=torch.float64)
    res2 = slq_density(op, 20, 2, seed=0, grid=grid, sigma=0.05)
    assert abs(float(torch.trapezoid(res2.density, grid)) - 1) < 1e-3


class _Spy:
    """Forwards to an operator and records the shape of every product asked of it."""

    def __init__(self, op: HessianOperator) -> None:
        self.op, self.dim, self.device, self.dtype, self.accepts_blocks = op, op.dim, op.device, op.dtype, True
        self.shapes: list[tuple[int, ...]] = []

    def expect_products(self, n: int) -> None:
        self.op.expect_products(n)

    def blocks_pay(self, k: int) -> bool:
        return self.op.blocks_pay(k)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(v.shape))
        return self.op.matvec(v)


@pytest.mark.parametrize(
    "cache_bytes,vectorised,expect",
    [(None, False, "switch"), (None, True, "blocks"), (None, None, "measured"), (0, None, "single"),
     (1, None, "blocks")],
)
def test_slq_runs_probes_in_lockstep_only_while_blocks_pay(cache_bytes, vectorised, expect):
    """Default cache: every state is kept, so once a looped block is known to cost two products
    the probes finish one after the other (one basis at a time); a vectorised block measured
    faster keeps them in lockstep (``vectorised`` presets that timing; ``None``: measured here,
    either way). cache_bytes=0 (least memory): one after the other from the start. A cache too
    small to keep any state: each block builds a batch's state once for both probes, so
    lockstep throughout."""
    model = cnn()
    x, y = make_data("cnn")
    kw = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    spy = _Spy(HessianOperator(model, LOSS, split(x, y, [9]), path="linearize", **kw))
    if vectorised is not None:
        spy.op._chooser.batched[("linearize", 2)] = vectorised
    res = slq_density(spy, 8, 2, seed=3)
    blocks = sum(len(s) == 2 for s in spy.shapes)
    assert spy.op.num_products == 16 == blocks * 2 + (len(spy.shapes) - blocks)
    assert all(len(s) == 2 for s in spy.shapes[:blocks])  # blocks first, then single products
    if expect == "measured":
        expect = "blocks" if spy.op._chooser.batched[("linearize", 2)] else "switch"
    if expect == "switch":
        assert 1 <= blocks <= 2 and not spy.op.blocks_pay(2)
    elif expect == "single":
        assert blocks == 0
    else:
        assert blocks == 8
    ref = slq_density(HessianOperator(model, LOSS, split(x, y, [9]), path="linearize"), 8, 2, seed=3, block=False)
    for a, b in zip(res.ritz_values, ref.ritz_values):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


@pytest.mark.parametrize("path", PATHS)
def test_slq_lockstep_equals_probe_after_probe(path):
    model = cnn(3)
    x, y = make_data("cnn", n=40, seed=5)
    op = HessianOperator(model, LOSS, equal_batches(x, y, 20), path=path)
    op._chooser.batched[(path, 3)] = False  # looped blocks: the very same products as single vectors
    a = slq_density(op, 10, 3, seed=4, block=True)
    b = slq_density(op, 10, 3, seed=4, block=False)
    for ta, tb in zip(a.ritz_values, b.ritz_values):
        assert torch.equal(ta, tb)
    op._chooser.batched[(path, 3)] = True
    c = slq_density(op, 10, 3, seed=4, block=True)
    for tc, tb in zip(c.ritz_values, b.ritz_values):
        assert torch.allclose(tc, tb, rtol=1e-4, atol=1e-6 * float(tb.abs().max()))
