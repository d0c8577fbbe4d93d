"""The product paths of the curvature operators, each against the dense references.

``path="linearize"`` (traced forward-over-reverse, residuals kept per batch) and
``path="graph"`` (kept first-order autograd graph) must give the same matrix as
``dense_hessian`` / ``dense_ggn`` in float32 (1e-5 relative) and agree with each other, for
every model kind (MLP, CNN with max-pooling, BatchNorm in eval and train mode), parameter
subsets, weight decay, every supported loss and reduction, channels-last, and across processes."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hessian_lib.curvature import HessianOperator, dense_hessian, lanczos, slq_density

from .cases import (
    KINDS,
    LOSS,
    MODELS,
    PATHS,
    TOL,
    bn_cnn,
    cnn,
    equal_batches,
    make_data,
    mlp,
    rel,
    run_on_two_processes,
)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name,bn_mode", [("mlp", "eval"), ("cnn", "eval"), ("bn", "eval"), ("bn", "train")])
def test_path_matches_dense(path, kind, name, bn_mode):
    make, dkind = MODELS[name]
    model = make()
    x, y = make_data(dkind)
    data = equal_batches(x, y)
    cls, ref = KINDS[kind]
    wd = 0.05
    dense = ref(model, LOSS, data, bn_mode=bn_mode, weight_decay=wd)
    op = cls(model, LOSS, data, path=path, bn_mode=bn_mode, weight_decay=wd)
    V = torch.randn(3, op.dim, generator=torch.Generator().manual_seed(0))
    want = V.double() @ dense
    for _ in range(2):  # the first product builds the state, the second reuses it
        got = op.matvec(V)
        assert got.dtype == torch.float32 and got.shape == V.shape
        assert rel(got, want) < TOL
    assert rel(op.matvec(V[1]), want[1]) < TOL
    assert op.path_in_use == path and f"path={path!r}" in repr(op)
    assert op.cache_nbytes > 0 and len(op._cache) == len(data)


@pytest.mark.parametrize("kind", list(KINDS))
def test_paths_agree_with_each_other(kind):
    model = bn_cnn()
    x, y = make_data("cnn", n=32)
    data = equal_batches(x, y)
    cls, _ = KINDS[kind]
    V = torch.randn(2, sum(p.numel() for p in model.parameters()))
    a, b = (cls(model, LOSS, data, path=p).matvec(V) for p in PATHS)
    assert rel(a, b) < TOL


@pytest.mark.parametrize("kind", list(KINDS))
def test_linearize_param_subset_is_principal_submatrix(kind):
    model = cnn()
    x, y = make_data("cnn")
    cls, ref = KINDS[kind]
    full = ref(model, LOSS, (x, y))
    sub = [model[0].weight, model[4].bias]
    op = cls(model, LOSS, (x, y), params=sub, path="linearize")
    n0, n1 = model[0].weight.numel(), model[4].bias.numel()
    total = sum(p.numel() for p in model.parameters())
    idx = torch.cat([torch.arange(n0), torch.arange(total - n1, total)])
    V = torch.randn(2, op.dim)
    assert rel(op.matvec(V), V.double() @ full[idx][:, idx]) < TOL


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
        pytest.skip("refused by the GGN (see test_losses.py)")
    model = _mlp64(3, log_softmax=family == "nll")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 5, generator=g, dtype=torch.float64)
    data = equal_batches(x, _targets(family, 16, 3, g))
    loss_fn = LOSSES[family](reduction)
    cls, ref = KINDS[kind]
    told = reduction if family == "callable" else None
    op = cls(model, loss_fn, data, path="linearize", weight_decay=0.1, reduction=told)
    V = torch.randn(2, op.dim, generator=g, dtype=torch.float64)
    want = V @ ref(model, loss_fn, data, weight_decay=0.1)
    assert rel(op.matvec(V), want) < 1e-10  # float64 model: float64 products


def test_a_loss_without_forward_mode_rules_is_refused_by_linearize_and_kept_on_graph_by_auto(eager_switch):
    """``huber_loss_backward`` has no forward-mode derivative in PyTorch: its Hessian cannot be
    linearised. ``path="linearize"`` says so; ``path="auto"`` keeps the graph."""
    model = _mlp64(3)
    g = torch.Generator().manual_seed(1)
    data = equal_batches(torch.randn(16, 5, generator=g, dtype=torch.float64), _targets("mse", 16, 3, g))
    loss_fn = nn.HuberLoss(reduction="sum", delta=0.5)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"cannot linearise the Hessian .*HuberLoss.*path='graph'"):
        HessianOperator(model, loss_fn, data, path="linearize").matvec(v)
    op = HessianOperator(model, loss_fn, data)
    want = dense_hessian(model, loss_fn, data) @ v
    for _ in range(3):
        assert rel(op.matvec(v), want) < 1e-10
    assert op.path_in_use == "graph" and "cannot linearise: NotImplementedError" in repr(op)


def test_bad_path_is_refused():
    model = mlp()
    x, y = make_data("mlp")
    with pytest.raises(ValueError, match="path must be one of"):
        HessianOperator(model, LOSS, (x, y), path="fast")


@pytest.mark.parametrize("kind", list(KINDS))
def test_linearize_channels_last_matches_dense(kind):
    model = bn_cnn()
    x, y = make_data("cnn")
    data = equal_batches(x, y)
    cls, ref = KINDS[kind]
    op = cls(model, LOSS, data, path="linearize", channels_last=True)
    V = torch.randn(3, op.dim)
    want = V.double() @ ref(model, LOSS, data)
    assert rel(op.matvec(V), want) < TOL and rel(op.matvec(V[0]), want[0]) < TOL
    assert "channels-last" in repr(op)


def test_same_seed_and_path_bit_identical():
    model = cnn()
    x, y = make_data("cnn")
    runs = []
    for _ in range(2):
        op = HessianOperator(model, LOSS, equal_batches(x, y, 12), path="linearize")
        runs.append((lanczos(op, 10, seed=7).alphas, slq_density(op, 6, 2, seed=3).density))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def _linearized_shard_products(rank: int) -> dict:
    model = bn_cnn()
    x, y = make_data("cnn", n=32)
    shard = equal_batches(x[:16], y[:16]) if rank == 0 else equal_batches(x[16:], y[16:])
    V = torch.randn(2, sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    return {k: cls(model, LOSS, shard, path="linearize", weight_decay=0.1).matvec(V) for k, (cls, _) in KINDS.items()}


def test_distributed_linearize_equals_dense():
    model = bn_cnn()
    x, y = make_data("cnn", n=32)
    V = torch.randn(2, sum(p.numel() for p in model.parameters()), generator=torch.Generator().manual_seed(0))
    outs = run_on_two_processes(_linearized_shard_products)
    for kind, (_, ref) in KINDS.items():
        want = V.double() @ ref(model, LOSS, equal_batches(x, y), weight_decay=0.1)
        for o in outs:
            assert rel(o[kind], want) < TOL, kind
        assert torch.equal(outs[0][kind], outs[1][kind])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("path", PATHS)
def test_cuda_path_matches_dense(path):
    model = bn_cnn()
    x, y = make_data("cnn")
    data = equal_batches(x, y)
    dense = dense_hessian(model, LOSS, data)
    V = torch.randn(2, dense.shape[0])
    model.cuda()
    op = HessianOperator(model, LOSS, [(a.cuda(), b.cuda()) for a, b in data], path=path)
    assert rel(op.matvec(V.cuda()).cpu(), V.double() @ dense) < 1e-4


@pytest.mark.parametrize("kind", list(KINDS))
def test_inplace_relu_channels_last_blocks_match_dense_without_copies(kind):
    """An in-place ReLU under forward mode writes its tangent into a fresh buffer (``aten.copy``, which
    ``vmap`` has no batching rule for). The trace drops those copies; vectorised blocks stay exact."""
    from hessian_lib.curvature._linearize import apply_linearized, build_linearized

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(3, 3, 3, padding=1),
        nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4),
    ).to(memory_format=torch.channels_last)
    x, y = make_data("cnn")
    cls, ref = KINDS[kind]
    op = cls(model, LOSS, (x, y), path="linearize", channels_last=True)
    state, _ = build_linearized(op, x, y, cl=True, measure=False)
    lin = state[0]
    assert torch.ops.aten.copy.default not in [n.target for n in lin.tangent.graph.nodes]
    V = torch.randn(3, op.dim)
    got = torch.stack(apply_linearized(op, state, [op.unflatten(v) for v in V], keep=True, batched=True))
    want = V.double() @ ref(model, LOSS, (x, y))
    assert rel(got, want) < TOL
    assert rel(op.matvec(V), want) < TOL
