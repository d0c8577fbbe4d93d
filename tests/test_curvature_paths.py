"""The product paths of the curvature operators, each against the dense references.

``path="linearize"`` (traced forward-over-reverse, residuals kept per batch) and
``path="graph"`` (kept first-order autograd graph) must give the same matrix as
``dense_hessian`` / ``dense_ggn`` in float32 (1e-5 relative) and agree with each other, for
every model kind (MLP, CNN with max-pooling, BatchNorm in eval and train mode), parameter
subsets, weight decay, blocks ``[k, P]``, every supported loss and reduction, without a cache,
and across processes. Also: how ``path="auto"`` chooses, blocks looped or vectorised, SLQ in
lockstep, and stale state after the weights change."""

from __future__ import annotations

import functools
import gc
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hessian_lib.curvature import (
    CurvatureOperator,
    GGNOperator,
    HessianOperator,
    dense_ggn,
    dense_hessian,
    forget_linearizations,
    lanczos,
    slq_density,
)
from hessian_lib.curvature._autotune import PathChooser
from hessian_lib.curvature._cache import graph_walk
from hessian_lib.curvature._linearize import linear_inputs, linearization, model_tensors
from test_curvature import _bn_cnn, _cnn, _data, _mlp, _one_thread, _rel, _split, run_on_two_processes  # noqa: F401

PATHS = ("linearize", "graph")
KINDS = {"hessian": (HessianOperator, dense_hessian), "ggn": (GGNOperator, dense_ggn)}
MODELS = {"mlp": (_mlp, "mlp"), "cnn": (_cnn, "cnn"), "bn": (_bn_cnn, "cnn")}
TOL = 1e-5
LOSS = nn.CrossEntropyLoss()


def _equal_batches(x: Tensor, y: Tensor, size: int = 8) -> list[tuple[Tensor, Tensor]]:
    """Batches of one size: one trace serves them all."""
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


# ------------------------------------------------------------------ every path against the dense matrix
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name,bn_mode", [("mlp", "eval"), ("cnn", "eval"), ("bn", "eval"), ("bn", "train")])
def test_path_matches_dense(path, kind, name, bn_mode):
    make, dkind = MODELS[name]
    model = make()
    x, y = _data(dkind)
    data = _equal_batches(x, y)
    cls, ref = KINDS[kind]
    wd = 0.05
    dense = ref(model, LOSS, data, bn_mode=bn_mode, weight_decay=wd)
    op = cls(model, LOSS, data, path=path, bn_mode=bn_mode, weight_decay=wd)
    V = torch.randn(3, op.dim, generator=torch.Generator().manual_seed(0))
    want = V.double() @ dense
    for _ in range(2):  # the first product builds the state, the second reuses it
        got = op.matvec(V)
        assert got.dtype == torch.float32 and got.shape == V.shape
        assert _rel(got, want) < TOL
    assert _rel(op.matvec(V[1]), want[1]) < TOL
    assert op.path_in_use == path and f"path={path!r}" in repr(op)
    assert op.cache_nbytes > 0 and len(op._cache) == len(data)


@pytest.mark.parametrize("kind", list(KINDS))
def test_paths_agree_with_each_other(kind):
    model = _bn_cnn()
    x, y = _data("cnn", n=32)
    data = _equal_batches(x, y)
    cls, _ = KINDS[kind]
    V = torch.randn(2, sum(p.numel() for p in model.parameters()))
    a, b = (cls(model, LOSS, data, path=p).matvec(V) for p in PATHS)
    assert _rel(a, b) < TOL


@pytest.mark.parametrize("kind", list(KINDS))
def test_linearize_param_subset_is_principal_submatrix(kind):
    model = _cnn()
    x, y = _data("cnn")
    cls, ref = KINDS[kind]
    full = ref(model, LOSS, (x, y))
    sub = [model[0].weight, model[4].bias]
    op = cls(model, LOSS, (x, y), params=sub, path="linearize")
    n0, n1 = model[0].weight.numel(), model[4].bias.numel()
    total = sum(p.numel() for p in model.parameters())
    idx = torch.cat([torch.arange(n0), torch.arange(total - n1, total)])
    V = torch.randn(2, op.dim)
    assert _rel(op.matvec(V), V.double() @ full[idx][:, idx]) < TOL


@pytest.mark.parametrize("path", PATHS)
def test_without_cache_and_with_unequal_batches(path):
    """``cache_bytes=0`` rebuilds every batch on every product; batches of three sizes need
    three traces on the linearised path."""
    model = _cnn()
    x, y = _data("cnn", n=30)
    data = _split(x, y, [4, 13])
    for cls, ref in KINDS.values():
        op = cls(model, LOSS, data, path=path, cache_bytes=0)
        V = torch.randn(2, op.dim)
        assert _rel(op.matvec(V), V.double() @ ref(model, LOSS, data)) < TOL
        assert op.cache_nbytes == 0


# ------------------------------------------------------------------ every loss and reduction on the linearised path
def _mlp64(out_dim: int, log_softmax: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, out_dim)]
    return nn.Sequential(*layers, *([nn.LogSoftmax(dim=1)] if log_softmax else [])).double()


def _targets(family: str, n: int, c: int, g: torch.Generator) -> Tensor:
    if family in ("ce", "nll", "ce-weighted", "ce-smoothing", "callable"):
        return torch.randint(0, c, (n,), generator=g)
    if family == "ce-probabilities":
        return torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64), dim=1)
    if family == "bce":
        return torch.randint(0, 2, (n, c), generator=g).double()
    return torch.randn(n, c, generator=g, dtype=torch.float64)


LOSSES = {
    "ce": lambda r: nn.CrossEntropyLoss(reduction=r),
    "ce-weighted": lambda r: nn.CrossEntropyLoss(weight=torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64),
                                                 ignore_index=1, reduction=r),
    "ce-smoothing": lambda r: nn.CrossEntropyLoss(label_smoothing=0.1, reduction=r),
    "ce-probabilities": lambda r: nn.CrossEntropyLoss(reduction=r),
    "nll": lambda r: nn.NLLLoss(reduction=r),
    "mse": lambda r: nn.MSELoss(reduction=r),
    "mse-functional": lambda r: functools.partial(F.mse_loss, reduction=r),
    "bce": lambda r: nn.BCEWithLogitsLoss(reduction=r),
    "callable": lambda r: (lambda o, t: F.cross_entropy(o, t, reduction=r)),
}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("family", list(LOSSES))
@pytest.mark.parametrize("kind", list(KINDS))
def test_linearize_every_loss_and_reduction(kind, family, reduction):
    if kind == "ggn" and family == "nll":
        pytest.skip("refused by the GGN (see test_curvature_losses.py)")
    model = _mlp64(3, log_softmax=family == "nll")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    data = _equal_batches(x, _targets(family, 16, 3, g))
    loss_fn = LOSSES[family](reduction)
    cls, ref = KINDS[kind]
    told = reduction if family == "callable" else None
    op = cls(model, loss_fn, data, path="linearize", weight_decay=0.1, reduction=told)
    V = torch.randn(2, op.dim, generator=g, dtype=torch.float64)
    want = V @ ref(model, loss_fn, data, weight_decay=0.1)
    assert _rel(op.matvec(V), want) < 1e-10  # float64 model: float64 products


@pytest.fixture
def eager_switch(monkeypatch):
    """Make the auto path's trial due after the first product (no trace-cost estimate)."""
    monkeypatch.setattr(PathChooser, "first_trace_seconds", 0.0)
    monkeypatch.setattr(PathChooser, "trace_rate_guess", 0.0)
    forget_linearizations()  # and the trace rates measured so far
    yield
    forget_linearizations()


def test_a_loss_without_forward_mode_rules_is_refused_by_linearize_and_kept_on_graph_by_auto(eager_switch):
    """``huber_loss_backward`` has no forward-mode derivative in PyTorch: its Hessian cannot be
    linearised. ``path="linearize"`` says so; ``path="auto"`` keeps the graph."""
    model = _mlp64(3)
    g = torch.Generator().manual_seed(1)
    data = _equal_batches(torch.randn(16, 5, generator=g, dtype=torch.float64), _targets("mse", 16, 3, g))
    loss_fn = nn.HuberLoss(reduction="sum", delta=0.5)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"cannot linearise the Hessian .*HuberLoss.*path='graph'"):
        HessianOperator(model, loss_fn, data, path="linearize").matvec(v)
    op = HessianOperator(model, loss_fn, data)
    want = dense_hessian(model, loss_fn, data) @ v
    for _ in range(3):
        assert _rel(op.matvec(v), want) < 1e-10
    assert op.path_in_use == "graph" and "cannot linearise: NotImplementedError" in repr(op)


# ------------------------------------------------------------------ path="auto"
@pytest.mark.parametrize("kind", list(KINDS))
def test_auto_runs_a_trial_then_keeps_the_faster_and_remembers(kind, eager_switch):
    model = _cnn()
    x, y = _data("cnn", n=32)
    data = _equal_batches(x, y)
    cls, ref = KINDS[kind]
    op = cls(model, LOSS, data)
    assert op.path == "auto" and op.path_in_use == "graph" and "undecided" in repr(op)
    dense = ref(model, LOSS, data)
    V = torch.randn(2, op.dim)
    for _ in range(3):
        assert _rel(op.matvec(V), V.double() @ dense) < TOL
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
    assert _rel(again.matvec(V), V.double() @ dense) < TOL
    assert again.path_in_use == faster and "chosen earlier" in repr(again)


def test_auto_starts_on_the_graph_and_small_problems_stay_there():
    forget_linearizations()  # the trace-time estimate from its default, not from earlier tests
    model = _mlp()
    x, y = _data("mlp")
    op = HessianOperator(model, LOSS, (x, y))
    v = torch.randn(op.dim)
    for _ in range(5):
        op.matvec(v)
    assert op.path_in_use == "graph" and op.path_timings == {}


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
    x, y = _data("mlp")
    op = HessianOperator(model, LOSS, _equal_batches(x, y))
    V = torch.randn(2, op.dim)
    want = V.double() @ dense_hessian(model, LOSS, _equal_batches(x, y))
    for _ in range(3):
        assert _rel(op.matvec(V), want) < TOL
    assert op.path_in_use == "graph" and "cannot linearise" in repr(op)
    with pytest.raises(RuntimeError, match="cannot linearise"):
        HessianOperator(model, LOSS, (x, y), path="linearize").matvec(V[0])


def test_bad_path_is_refused():
    model = _mlp()
    x, y = _data("mlp")
    with pytest.raises(ValueError, match="path must be one of"):
        HessianOperator(model, LOSS, (x, y), path="fast")


def test_linearized_state_is_stale_after_the_weights_change():
    model = _mlp()
    x, y = _data("mlp")
    op = HessianOperator(model, LOSS, (x, y), path="linearize")
    v = torch.randn(op.dim)
    op.matvec(v)
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    with pytest.raises(RuntimeError, match="clear_cache"):
        op.matvec(v)
    op.clear_cache()
    assert _rel(op.matvec(v), dense_hessian(model, LOSS, (x, y)) @ v.double()) < TOL


@pytest.mark.parametrize("kind", list(KINDS))
def test_linearize_channels_last_matches_dense(kind):
    model = _bn_cnn()
    x, y = _data("cnn")
    data = _equal_batches(x, y)
    cls, ref = KINDS[kind]
    op = cls(model, LOSS, data, path="linearize", channels_last=True)
    V = torch.randn(3, op.dim)
    want = V.double() @ ref(model, LOSS, data)
    assert _rel(op.matvec(V), want) < TOL and _rel(op.matvec(V[0]), want[0]) < TOL
    assert "channels-last" in repr(op)


# ------------------------------------------------------------------ blocks
@pytest.mark.parametrize("path", PATHS)
def test_block_looped_and_vectorised_agree(path):
    model = _cnn()
    x, y = _data("cnn")
    data = _equal_batches(x, y)
    for cls, ref in KINDS.values():
        op = cls(model, LOSS, data, path=path)
        V = torch.randn(4, op.dim)
        first = op.matvec(V)  # measures both ways on the first batch
        looped, vectorised = op.block_timings[path]
        assert looped > 0 and vectorised > 0
        want = V.double() @ ref(model, LOSS, data)
        assert _rel(first, want) < TOL and _rel(op.matvec(V), want) < TOL
        op._chooser.batched[(path, 4)] = not op._chooser.batched[(path, 4)]  # the other way
        assert _rel(op.matvec(V), want) < TOL


@pytest.mark.parametrize("path", PATHS)
def test_slq_lockstep_equals_probe_after_probe(path):
    model = _cnn(3)
    x, y = _data("cnn", n=40, seed=5)
    op = HessianOperator(model, LOSS, _equal_batches(x, y, 20), path=path)
    op._chooser.batched[(path, 3)] = False  # looped blocks: the very same products as single vectors
    a = slq_density(op, 10, 3, seed=4, block=True)
    b = slq_density(op, 10, 3, seed=4, block=False)
    for ta, tb in zip(a.ritz_values, b.ritz_values):
        assert torch.equal(ta, tb)
    op._chooser.batched[(path, 3)] = True
    c = slq_density(op, 10, 3, seed=4, block=True)
    for tc, tb in zip(c.ritz_values, b.ritz_values):
        assert torch.allclose(tc, tb, rtol=1e-4, atol=1e-6 * float(tb.abs().max()))


def test_same_seed_and_path_bit_identical():
    model = _cnn()
    x, y = _data("cnn")
    runs = []
    for _ in range(2):
        op = HessianOperator(model, LOSS, _equal_batches(x, y, 12), path="linearize")
        runs.append((lanczos(op, 10, seed=7).alphas, slq_density(op, 6, 2, seed=3).density))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


# ------------------------------------------------------------------ distributed (gloo, 2 processes)
def _linearized_shard_products(rank: int) -> dict:
    model = _bn_cnn()
    x, y = _data("cnn", n=32)
    shard = _equal_batches(x[:16], y[:16]) if rank == 0 else _equal_batches(x[16:], y[16:])
    V = torch.randn(2, sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    return {k: cls(model, LOSS, shard, path="linearize", weight_decay=0.1).matvec(V) for k, (cls, _) in KINDS.items()}


def test_distributed_linearize_equals_dense():
    model = _bn_cnn()
    x, y = _data("cnn", n=32)
    V = torch.randn(2, sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    outs = run_on_two_processes(_linearized_shard_products)
    for kind, (_, ref) in KINDS.items():
        want = V.double() @ ref(model, LOSS, _equal_batches(x, y), weight_decay=0.1)
        for o in outs:
            assert _rel(o[kind], want) < TOL, kind
        assert torch.equal(outs[0][kind], outs[1][kind])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("path", PATHS)
def test_cuda_path_matches_dense(path):
    model = _bn_cnn()
    x, y = _data("cnn")
    data = _equal_batches(x, y)
    dense = dense_hessian(model, LOSS, data)
    V = torch.randn(2, dense.shape[0])
    model.cuda()
    op = HessianOperator(model, LOSS, [(a.cuda(), b.cuda()) for a, b in data], path=path)
    assert _rel(op.matvec(V.cuda()).cpu(), V.double() @ dense) < 1e-4


# ------------------------------------------------------------------ memory of the kept state
@pytest.mark.parametrize("kind", list(KINDS))
def test_graph_bytes_are_what_autograd_saved(kind):
    """The kept graph's size, read from its nodes, is what a pack hook sees being saved."""
    model = _bn_cnn()
    x, y = _data("cnn")
    cls, _ = KINDS[kind]
    op = cls(model, LOSS, (x, y), path="graph")
    sizes: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        state = op._build(x, y)
    skip = {t.untyped_storage().data_ptr() for t in (*model_tensors(op), x, y)}
    tensors = state if isinstance(state, tuple) else tuple(state)
    for t in tensors:
        if isinstance(t, Tensor):
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    want = sum(n for p, n in sizes.items() if p not in skip)
    nodes, got = graph_walk(tensors, exclude=[*model_tensors(op), x, y])
    # up to a few 0-d scalars (4 bytes each) that some backward nodes keep out of their saved attributes
    assert nodes > 5 and want > 0 and 0 <= want - got <= 16


@pytest.mark.parametrize("kind", list(KINDS))
def test_kept_graph_is_freed_with_its_operator(kind):
    """Measuring a kept graph must not tie it to itself: once the operator goes, so do its
    saved activations (a pack hook returning its tensor made ReLU outputs hold themselves)."""
    import gc

    def graph_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if isinstance(o, Tensor) and o.grad_fn is not None)

    model = _cnn()
    x, y = _data("cnn")
    before = graph_tensors()
    op = KINDS[kind][0](model, LOSS, _equal_batches(x, y), path="graph")
    op.matvec(torch.randn(op.dim))
    assert op.cache_nbytes > 0 and len(op._cache) > 0
    del op
    assert graph_tensors() == before


@pytest.mark.parametrize("path", PATHS)
def test_no_cache_loops_blocks(path):
    """With cache_bytes=0 a block is multiplied vector by vector (no k products' tensors at once)."""
    model = _cnn()
    x, y = _data("cnn")
    data = _equal_batches(x, y)
    for cls, ref in KINDS.values():
        op = cls(model, LOSS, data, path=path, cache_bytes=0)
        V = torch.randn(3, op.dim)
        assert _rel(op.matvec(V), V.double() @ ref(model, LOSS, data)) < TOL
        assert op.block_timings == {}


def test_undecided_graph_does_not_time_blocks():
    """Before the auto trial the graph multiplies blocks vector by vector, timing nothing: the
    block measurement belongs to the path that stays."""
    model = _cnn()
    x, y = _data("cnn")
    op = HessianOperator(model, LOSS, _equal_batches(x, y))
    V = torch.randn(2, op.dim)
    op.matvec(V)
    assert not op._chooser.decided and op.block_timings == {}
    assert _rel(op.matvec(V), V.double() @ dense_hessian(model, LOSS, _equal_batches(x, y))) < TOL


@pytest.mark.parametrize("kind", list(KINDS))
def test_announced_products_run_the_trial_on_the_first_product(kind, eager_switch):
    """``expect_products(n >= PathChooser.early_trial_products)``: the first product is the trial (no graph
    rental first), the block's other vectors go on the winner, and the products are right."""
    model = _cnn()
    x, y = _data("cnn", n=32)
    data = _equal_batches(x, y)
    cls, ref = KINDS[kind]
    dense = ref(model, LOSS, data)
    V = torch.randn(3, sum(p.numel() for p in model.parameters()))
    op = cls(model, LOSS, data)
    op.expect_products(PathChooser.early_trial_products)
    assert _rel(op.matvec(V), V.double() @ dense) < TOL
    assert {"graph_product", "linearize_product", "trace"} <= set(op.path_timings)
    assert "per product on the first batch]" in repr(op)  # the graph was kept for the trial: no set-up term
    assert len(op._cache) == len(data) and all(p == op.path_in_use for p, _ in op._cache.values())
    assert _rel(op.matvec(V), V.double() @ dense) < TOL
    with pytest.raises(ValueError, match=">= 0"):
        op.expect_products(-1)


def test_announced_products_that_would_not_pay_for_a_trial_stay_on_the_graph():
    """On a problem this small the graph's products over the announced run cost less than the
    trace would: the first product stays on the graph, undecided, and says why. An announcement
    below ``PathChooser.early_trial_products`` does not even check."""
    forget_linearizations()  # the trace-time estimate from its default
    model = _mlp()
    x, y = _data("mlp")
    want = dense_hessian(model, LOSS, (x, y))
    v = torch.randn(want.shape[0])
    early = PathChooser.early_trial_products
    for n, why in [(early - 1, "until the products pay"), (early, "would not pay")]:
        op = HessianOperator(model, LOSS, (x, y))
        op.expect_products(n)
        assert _rel(op.matvec(v), want @ v.double()) < TOL
        assert op.path_in_use == "graph" and op.path_timings == {} and why in repr(op)


def test_lanczos_and_slq_announce_their_products(monkeypatch):
    """The algorithms tell the operator how many products follow (SLQ: steps x probes)."""
    heard: list[int] = []
    monkeypatch.setattr(CurvatureOperator, "expect_products", lambda self, n: heard.append(n))
    model = _mlp()
    x, y = _data("mlp")
    op = HessianOperator(model, LOSS, (x, y), path="graph")
    lanczos(op, 7)
    slq_density(op, 5, 3)
    assert heard == [7, 15]


def test_first_block_after_the_trial_is_compared_with_its_single_product(eager_switch):
    """After the trial, the first block on the trial's batch is multiplied vectorised and its time
    per vector compared with the trial's single product; the other batches loop until then."""
    model = _cnn()
    x, y = _data("cnn", n=32)
    data = _equal_batches(x, y)
    op = HessianOperator(model, LOSS, data, path="auto")
    op.expect_products(PathChooser.early_trial_products)
    V = torch.randn(2, op.dim)
    dense = dense_hessian(model, LOSS, data)
    op.matvec(V)
    assert op.block_timings == {}  # the trial's block: batch 0 by the trial, the others looped
    assert _rel(op.matvec(V), V.double() @ dense) < TOL
    single, vectorised = op.block_timings[op.path_in_use]
    assert single == op._chooser.single_seconds[(op.path_in_use, 0)] and vectorised > 0
    assert op._chooser.batched[(op.path_in_use, 2)] == (vectorised < single)


def test_a_state_not_kept_is_released_during_its_last_product():
    """``free=True`` gives the same product and empties the residual list it was given."""
    model = _cnn()
    x, y = _data("cnn")
    op = HessianOperator(model, LOSS, (x, y), path="linearize", cache_bytes=0)
    lin = linearization(op, x, y, False)
    residuals = lin.build(linear_inputs(op, x, y, False))
    tangents = op.unflatten(torch.randn(op.dim))
    kept = lin.apply(residuals, tangents)
    assert len(residuals) > 0
    freed = lin.apply(residuals, tangents, free=True)
    assert residuals == []
    assert all(torch.equal(a, b) for a, b in zip(kept, freed))


def _live_tensors(shape: tuple[int, ...]) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some module objects warn when asked for their class
        return sum(1 for o in gc.get_objects() if isinstance(o, Tensor) and tuple(o.shape) == shape)


def test_a_graph_that_goes_needs_no_cyclic_collection():
    """A graph state that is not kept is gone after its product, and one dropped by clear_cache
    right away, even with Python's cyclic collector off (reading a graph's saved outputs to
    measure it ties them into reference cycles: the operator then collects once itself)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(45, 4))
    x, y = torch.randn(24, 2, 6, 6), torch.randint(0, 4, (24,))
    activation = (24, 5, 6, 6)  # the ReLU's output, saved by the graph
    gc.collect()
    gc.disable()
    try:
        op = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), path="graph", cache_bytes=0)
        op.matvec(torch.randn(op.dim))
        assert _live_tensors(activation) == 0
        kept = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), path="graph")
        kept.matvec(torch.randn(kept.dim))
        assert kept.cache_nbytes > 0 and _live_tensors(activation) > 0
        kept.clear_cache()
        assert _live_tensors(activation) == 0
    finally:
        gc.enable()
