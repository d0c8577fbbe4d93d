"""How ``path="auto"`` chooses (the trial, announced products, what the process remembers) and how blocks are
multiplied (looped or vectorised)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from hessian_lib.curvature import (
    CurvatureOperator,
    HessianOperator,
    _base,
    dense_hessian,
    forget_linearizations,
    lanczos,
    slq_density,
)
from hessian_lib.curvature._autotune import PathChooser

from .cases import KINDS, LOSS, PATHS, TOL, bn_cnn, cnn, equal_batches, make_data, mlp, rel, split


@pytest.mark.parametrize("kind", list(KINDS))
def test_auto_runs_a_trial_then_keeps_the_faster_and_remembers(kind, eager_switch):
    model = cnn()
    x, y = make_data("cnn", n=32)
    data = equal_batches(x, y)
    cls, ref = KINDS[kind]
    op = cls(model, LOSS, data)
    assert op.path == "auto" and op.path_in_use == "graph" and "undecided" in repr(op)
    dense = ref(model, LOSS, data)
    V = torch.randn(2, op.dim)
    for _ in range(3):
        assert rel(op.matvec(V), V.double() @ dense) < TOL
    t = op.path_timings
    assert {"trace", "graph_product", "linearize_product", "linearize_channels_last_product"} <= set(t)
    assert t["relative_difference"] < 1e-4
    setup = "set-up included" in repr(op)  # the graph was not kept yet: each path's build counts, shared by 2
    cost = {n: t[n] + (t[n.replace("_product", "_build")] / 2 if setup else 0.0) for n in t if n.endswith("_product")}
    fastest = min(cost, key=cost.get)
    faster = "graph" if fastest == "graph_product" else "linearize"
    assert op.path_in_use == faster and f"'auto' -> {faster!r}" in repr(op) and "per product" in repr(op)
    assert ("channels-last" in repr(op)) == (fastest == "linearize_channels_last_product")
    assert all(p == faster for p, _ in op._cache.values())
    again = cls(model, LOSS, data)
    assert rel(again.matvec(V), V.double() @ dense) < TOL
    assert again.path_in_use == faster and "chosen earlier" in repr(again)


@pytest.mark.parametrize("kind", list(KINDS))
def test_products_past_the_float_tolerance_are_judged_by_the_float64_product(kind, eager_switch, monkeypatch):
    """float32, no tolerance: every linearised product "differs" from the graph's, so the trial computes the
    batch's product in float64 on a copy of the model, finds both float32 paths within rounding of it and still
    chooses between them, without a warning."""
    monkeypatch.setattr(PathChooser, "agreement_epsilons", 0.0)
    monkeypatch.setattr(PathChooser, "float64_slack", 1e6)  # any candidate near the float64 product is used
    model = cnn()
    x, y = make_data("cnn", n=32)
    data = equal_batches(x, y)
    cls, ref = KINDS[kind]
    op = cls(model, LOSS, data)
    op.expect_products(PathChooser.early_trial_products)
    v = torch.randn(op.dim)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert rel(op.matvec(v), ref(model, LOSS, data) @ v.double()) < TOL
    t = op.path_timings
    assert 0 < t["relative_difference"] < 1e-4
    assert t["graph_float64_error"] < 1e-5 and t["linearize_float64_error"] < 1e-5  # the float64 product is right
    assert op._chooser.decided and "auto:" in repr(op)


def test_a_linearised_product_off_the_float64_product_is_refused(eager_switch, monkeypatch):
    """A linearised product 1% off is far further from the float64 product than the graph's: the trial warns,
    with both distances, and stays on the graph."""
    monkeypatch.setattr(PathChooser, "agreement_epsilons", 0.0)
    apply = _base.apply_linearized
    monkeypatch.setattr(_base, "apply_linearized", lambda *a: [r * 1.01 for r in apply(*a)])
    model = cnn()
    x, y = make_data("cnn", n=32)
    data = equal_batches(x, y)
    op = HessianOperator(model, LOSS, data)
    op.expect_products(PathChooser.early_trial_products)
    v = torch.randn(op.dim)
    with pytest.warns(RuntimeWarning, match=r"differs from the graph product by 1\.0e-02 .* from the product in "
                      r"float64, where the graph's is"):
        out = op.matvec(v)
    assert op.path_in_use == "graph" and rel(out, dense_hessian(model, LOSS, data) @ v.double()) < TOL
    assert op.path_timings["linearize_float64_error"] > 100 * op.path_timings["graph_float64_error"]


def test_auto_starts_on_the_graph_and_small_problems_stay_there():
    forget_linearizations()  # the trace-time estimate from its default, not from earlier tests
    model = mlp()
    x, y = make_data("mlp")
    op = HessianOperator(model, LOSS, (x, y))
    v = torch.randn(op.dim)
    for _ in range(5):
        op.matvec(v)
    assert op.path_in_use == "graph" and op.path_timings == {}


@pytest.mark.parametrize("bn_mode", ["eval", "train"])
def test_first_unannounced_product_is_one_forward_over_reverse_pass_keeping_nothing(bn_mode):
    """The first product of an auto Hessian operator (one vector, nothing announced) runs one eager
    forward-over-reverse pass per batch and keeps nothing; the next starts on the graph and keeps it. Both
    equal the dense Hessian, with the batches weighted and weight decay added."""
    model = bn_cnn().double()
    x, y = make_data("cnn", n=30)
    x = x.double()
    data = split(x, y, [11])
    op = HessianOperator(model, LOSS, data, bn_mode=bn_mode, weight_decay=0.1)
    want_matrix = dense_hessian(model, LOSS, data, bn_mode=bn_mode, weight_decay=0.1)
    v = torch.randn(op.dim, dtype=torch.float64)
    assert rel(op.matvec(v), want_matrix @ v) < 1e-10
    assert op._chooser.single_passes == 1 and len(op._cache) == 0
    assert rel(op.matvec(v), want_matrix @ v) < 1e-10
    assert op._chooser.single_passes == 1 and len(op._cache) > 0 and op.path_in_use == "graph"
    announced = HessianOperator(model, LOSS, data, bn_mode=bn_mode)  # a caller that says more will follow
    announced.expect_products(3)
    announced.matvec(v)
    assert announced._chooser.single_passes == 0 and len(announced._cache) > 0
    block = HessianOperator(model, LOSS, data, bn_mode=bn_mode)  # a block: one graph serves its vectors
    block.matvec(torch.randn(2, op.dim, dtype=torch.float64))
    assert block._chooser.single_passes == 0


@pytest.mark.parametrize("cache_bytes", [None, 0])
def test_single_pass_goes_in_its_own_chunks(cache_bytes):
    """With a cache, chunked batches take the single pass in chunks of ``single_pass_chunk`` (it keeps
    nothing); with ``cache_bytes=0`` in those of ``least_memory_chunk``. Either way the product is the dense
    Hessian's, and an operator on a model whose path was chosen before starts on that path, not this pass."""
    forget_linearizations()
    model = bn_cnn().double()
    x, y = make_data("cnn", n=30)
    data = split(x.double(), y, [11])
    kw = {} if cache_bytes is None else {"cache_bytes": cache_bytes}

    def operator() -> HessianOperator:
        op = HessianOperator(model, LOSS, data, bn_mode="eval", **kw)
        op.kept_chunk, op.single_pass_chunk, op.least_memory_chunk = 4, 7, 3
        return op

    op, sizes = operator(), []
    single_pass = op._single_pass
    op._single_pass = lambda xb, yb, v: sizes.append(len(yb)) or single_pass(xb, yb, v)
    v = torch.randn(op.dim, dtype=torch.float64)
    want = dense_hessian(model, LOSS, data, bn_mode="eval") @ v
    assert rel(op.matvec(v), want) < 1e-10 and op._chooser.single_passes == 1
    assert sizes == ([7, 4, 7, 7, 5] if cache_bytes is None else [3, 3, 3, 2, 3, 3, 3, 3, 3, 3, 1])
    chosen = operator()
    chosen._chooser.first_trace_seconds = chosen._chooser.trace_rate_guess = 0.0  # a trial that pays at once
    chosen.expect_products(PathChooser.early_trial_products)  # so its first product is the trial, remembered
    assert rel(chosen.matvec(v), want) < 1e-10 and chosen._chooser.decided
    later = operator()
    assert rel(later.matvec(v), want) < 1e-10
    assert later._chooser.single_passes == 0 and later._chooser.decided


def test_first_product_without_forward_mode_rules_goes_on_the_graph():
    """``huber_loss_backward`` has no forward-mode derivative: the first product falls back to the graph
    and the operator does not try the single pass again."""
    forget_linearizations()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    loss_fn = nn.HuberLoss(delta=0.5)
    op = HessianOperator(model, loss_fn, (x, y))
    v = torch.randn(op.dim, dtype=torch.float64)
    want = dense_hessian(model, loss_fn, (x, y)) @ v
    assert rel(op.matvec(v), want) < 1e-10 and op._chooser.single_passes is None and len(op._cache) == 1
    assert rel(op.matvec(v), want) < 1e-10


class _DataDependent(nn.Module):
    """A forward pass that branches on a value: cannot be traced on fake tensors."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.lin(x)
        return torch.tanh(h) if bool(h.sum() > 0) else h


def test_auto_stays_on_the_graph_when_the_model_cannot_be_traced(eager_switch):
    model = _DataDependent()
    x, y = make_data("mlp")
    op = HessianOperator(model, LOSS, equal_batches(x, y))
    V = torch.randn(2, op.dim)
    want = V.double() @ dense_hessian(model, LOSS, equal_batches(x, y))
    for _ in range(3):
        assert rel(op.matvec(V), want) < TOL
    assert op.path_in_use == "graph" and "cannot linearise" in repr(op)
    with pytest.raises(RuntimeError, match="cannot linearise"):
        HessianOperator(model, LOSS, (x, y), path="linearize").matvec(V[0])


@pytest.mark.parametrize("path", PATHS)
def test_block_looped_and_vectorised_agree(path):
    model = cnn()
    x, y = make_data("cnn")
    data = equal_batches(x, y)
    for cls, ref in KINDS.values():
        op = cls(model, LOSS, data, path=path)
        V = torch.randn(4, op.dim)
        first = op.matvec(V)  # measures both ways on the first batch
        looped, vectorised = op.block_timings[path]
        assert looped > 0 and vectorised > 0
        want = V.double() @ ref(model, LOSS, data)
        assert rel(first, want) < TOL and rel(op.matvec(V), want) < TOL
        op._chooser.batched[(path, 4)] = not op._chooser.batched[(path, 4)]  # the other way
        assert rel(op.matvec(V), want) < TOL


def test_undecided_graph_does_not_time_blocks():
    """Before the auto trial the graph multiplies blocks vector by vector, timing nothing: the
    block measurement belongs to the path that stays."""
    model = cnn()
    x, y = make_data("cnn")
    op = HessianOperator(model, LOSS, equal_batches(x, y))
    V = torch.randn(2, op.dim)
    op.matvec(V)
    assert not op._chooser.decided and op.block_timings == {}
    assert rel(op.matvec(V), V.double() @ dense_hessian(model, LOSS, equal_batches(x, y))) < TOL


@pytest.mark.parametrize("kind", list(KINDS))
def test_announced_products_run_the_trial_on_the_first_product(kind, eager_switch):
    """``expect_products(n >= PathChooser.early_trial_products)``: the first product is the trial (no graph
    rental first), the block's other vectors go on the winner, and the products are right."""
    model = cnn()
    x, y = make_data("cnn", n=32)
    data = equal_batches(x, y)
    cls, ref = KINDS[kind]
    dense = ref(model, LOSS, data)
    V = torch.randn(3, sum(p.numel() for p in model.parameters()))
    op = cls(model, LOSS, data)
    op.expect_products(PathChooser.early_trial_products)
    assert rel(op.matvec(V), V.double() @ dense) < TOL
    assert {"graph_product", "linearize_product", "trace"} <= set(op.path_timings)
    assert "per product on the first batch]" in repr(op)  # the graph was kept for the trial: no set-up term
    assert len(op._cache) == len(data) and all(p == op.path_in_use for p, _ in op._cache.values())
    assert rel(op.matvec(V), V.double() @ dense) < TOL
    with pytest.raises(ValueError, match=">= 0"):
        op.expect_products(-1)


def test_announced_products_that_would_not_pay_for_a_trial_stay_on_the_graph():
    """On a problem this small the graph's products over the announced run cost less than the
    trace would: the first product stays on the graph, undecided, and says why. An announcement
    below ``PathChooser.early_trial_products`` does not even check."""
    forget_linearizations()  # the trace-time estimate from its default
    model = mlp()
    x, y = make_data("mlp")
    want = dense_hessian(model, LOSS, (x, y))
    v = torch.randn(want.shape[0])
    early = PathChooser.early_trial_products
    for n, why in [(early - 1, "until the products pay"), (early, "would not pay")]:
        op = HessianOperator(model, LOSS, (x, y))
        op.expect_products(n)
        assert rel(op.matvec(v), want @ v.double()) < TOL
        assert op.path_in_use == "graph" and op.path_timings == {} and why in repr(op)


def test_lanczos_and_slq_announce_their_products(monkeypatch):
    """The algorithms tell the operator how many products follow (SLQ: steps x probes)."""
    heard: list[int] = []
    monkeypatch.setattr(CurvatureOperator, "expect_products", lambda self, n: heard.append(n))
    model = mlp()
    x, y = make_data("mlp")
    op = HessianOperator(model, LOSS, (x, y), path="graph")
    lanczos(op, 7)
    slq_density(op, 5, 3)
    assert heard == [7, 15]


def test_first_block_after_the_trial_is_compared_with_its_single_product(eager_switch):
    """After the trial, the first block on the trial's batch is multiplied vectorised and its time
    per vector compared with the trial's single product; the other batches loop until then."""
    model = cnn()
    x, y = make_data("cnn", n=32)
    data = equal_batches(x, y)
    op = HessianOperator(model, LOSS, data, path="auto")
    op.expect_products(PathChooser.early_trial_products)
    V = torch.randn(2, op.dim)
    dense = dense_hessian(model, LOSS, data)
    op.matvec(V)
    assert op.block_timings == {}  # the trial's block: batch 0 by the trial, the others looped
    assert rel(op.matvec(V), V.double() @ dense) < TOL
    single, vectorised = op.block_timings[op.path_in_use]
    assert single == op._chooser.single_seconds[(op.path_in_use, 0)] and vectorised > 0
    assert op._chooser.batched[(op.path_in_use, 2)] == (vectorised < single)


def test_auto_path_announced_run_repeats_on_the_same_path():
    """An SLQ long enough to announce its products decides the path before its first product, so
    a second run (which recalls the choice) multiplies on the same path. Only the first run's first
    blocks may differ in how a block is multiplied (looped or vectorised): float rounding."""
    forget_linearizations()
    model = cnn()
    x, y = make_data("cnn")
    dens, paths = [], []
    for _ in range(2):
        op = HessianOperator(model, LOSS, split(x, y, [9]))
        dens.append(slq_density(op, 8, 2, seed=3).density)
        paths.append(op.path_in_use)
        assert op.num_products == 16
    assert paths[0] == paths[1]
    torch.testing.assert_close(dens[0], dens[1], rtol=1e-5, atol=1e-6 * float(dens[0].max()))
