"""Operator base: products against the dense references, batch weighting, BatchNorm modes, parameter subsets, bad
input, determinism on one path, distributed and CUDA products."""

from __future__ import annotations

import pytest
import torch

from hessian_lib.curvature import (
    GGNOperator,
    HessianOperator,
    dense_ggn,
    dense_hessian,
    dense_matrix,
    hutchinson_trace,
    lanczos,
    slq_density,
    top_eigenvalues,
)

from .cases import LOSS, MODELS, bn_cnn, cnn, make_data, mlp, rel, run_on_two_processes, split


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("cls,ref", [(HessianOperator, dense_hessian), (GGNOperator, dense_ggn)])
def test_products_match_dense_reference(name, cls, ref):
    make, dkind = MODELS[name]
    model = make()
    x, y = make_data(dkind)
    data = split(x, y, [5, 17])
    dense = ref(model, LOSS, data)  # float64 copy of the model
    assert dense.dtype == torch.float64
    op = cls(model, LOSS, data)
    assert op.dim == dense.shape[0] == sum(p.numel() for p in model.parameters())
    assert rel(dense_matrix(op, dtype=torch.float64), dense) < 1e-5
    wd = 0.05
    op_wd = cls(model, LOSS, data, weight_decay=wd)
    V = torch.randn(3, op.dim)
    want = V.double() @ dense + wd * V.double()
    assert rel(op_wd.matvec(V), want) < 1e-5
    assert rel(op_wd.matvec(V[0]), want[0]) < 1e-5
    if name == "mlp":
        assert rel(ref(model, LOSS, data, weight_decay=wd), dense + wd * torch.eye(op.dim, dtype=torch.float64)) < 1e-12
    if cls is GGNOperator:
        assert float(torch.linalg.eigvalsh(dense).min()) > -1e-8


def test_bn_train_mode_matches_reference_and_keeps_running_stats():
    model = bn_cnn()
    x, y = make_data("cnn")
    data = split(x, y, [10])
    bn = model[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for training in (True, False):
        model.train(training)
        for cls, ref in [(HessianOperator, dense_hessian), (GGNOperator, dense_ggn)]:
            op = cls(model, LOSS, data, bn_mode="train")
            v = torch.randn(op.dim)
            got = op.matvec(v)
            want = ref(model, LOSS, data, bn_mode="train") @ v.double()
            assert rel(got, want) < 1e-5
            assert all(m.training == training for m in model.modules())
            assert bn.track_running_stats
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # train-mode statistics give a different matrix from eval mode
    v = torch.randn(HessianOperator(model, LOSS, data).dim)
    a = HessianOperator(model, LOSS, data, bn_mode="eval").matvec(v)
    b = HessianOperator(model, LOSS, data, bn_mode="train").matvec(v)
    assert rel(a, b) > 1e-3


def test_full_operator_is_size_weighted_average_of_batches():
    model = cnn()
    x, y = make_data("cnn", n=30)
    parts = split(x, y, [4, 13, 22])  # sizes 4, 9, 9, 8
    v = torch.randn(HessianOperator(model, LOSS, (x, y)).dim)
    for cls in (HessianOperator, GGNOperator):
        full = cls(model, LOSS, (x, y)).matvec(v)
        batched = cls(model, LOSS, parts).matvec(v)
        avg = sum(len(b[1]) * cls(model, LOSS, b).matvec(v) for b in parts) / len(y)
        assert rel(batched, full) < 1e-5
        assert rel(avg, full) < 1e-5


def test_param_subset_is_principal_submatrix():
    model = cnn()
    x, y = make_data("cnn")
    H = dense_hessian(model, LOSS, (x, y))
    sub = [model[0].weight, model[4].bias]
    op = HessianOperator(model, LOSS, (x, y), params=sub)
    n0, n1 = model[0].weight.numel(), model[4].bias.numel()
    total = sum(p.numel() for p in model.parameters())
    idx = torch.cat([torch.arange(n0), torch.arange(total - n1, total)])
    assert op.dim == n0 + n1
    assert rel(dense_matrix(op, dtype=torch.float64), H[idx][:, idx]) < 1e-5
    op_names = HessianOperator(model, LOSS, (x, y), params=["0.weight", "4.bias"])
    op_tensors = HessianOperator(model, LOSS, (x, y), params=sub)
    v = torch.randn(op.dim)
    assert torch.equal(op_tensors.matvec(v), op_names.matvec(v))


def test_same_seed_bit_identical():
    """On one path (the graph here; the linearised path in test_paths.py)."""
    path = "graph"
    model = cnn()
    x, y = make_data("cnn")
    runs = []
    for _ in range(2):
        op = HessianOperator(model, LOSS, split(x, y, [9]), path=path)
        r = lanczos(op, 12, seed=7)
        s = slq_density(op, 8, 2, seed=3)
        t = hutchinson_trace(op, 4, seed=2)
        runs.append((r.alphas, r.betas, r.ritz_values, s.density, torch.tensor(t.estimate)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    other = lanczos(HessianOperator(model, LOSS, (x, y), path=path), 12, seed=8)
    assert not torch.equal(other.alphas, runs[0][0])


def test_bad_input():
    model = mlp()
    x, y = make_data("mlp")
    op = HessianOperator(model, LOSS, (x, y))
    with pytest.raises(ValueError, match="dim"):
        op.matvec(torch.randn(op.dim + 1))
    with pytest.raises(ValueError):
        op.matvec(torch.randn(2, 3, op.dim))
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(model, LOSS, [])
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(model, LOSS, (x[:0], y[:0]))
    frozen = mlp()
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        HessianOperator(frozen, LOSS, (x, y))
    with pytest.raises(ValueError, match="bn_mode"):
        HessianOperator(model, LOSS, (x, y), bn_mode="batch")
    xn = x.clone()
    xn[3, 2] = float("nan")
    for cls in (HessianOperator, GGNOperator):
        with pytest.raises(FloatingPointError, match="NaN"):
            cls(model, LOSS, (xn, y)).matvec(torch.randn(op.dim))
    v = torch.randn(op.dim)
    v[0] = float("nan")
    with pytest.raises(FloatingPointError):
        op.matvec(v)
    with pytest.raises(ValueError, match="inputs"):
        HessianOperator(model, LOSS, (x[:5], y[:6]))


def test_restores_train_mode_after_products_and_errors():
    model = bn_cnn()
    model.train()
    x, y = make_data("cnn")
    op = HessianOperator(model, LOSS, (x, y), bn_mode="eval")
    op.matvec(torch.randn(op.dim))
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError):
        op.matvec(torch.randn(3))
    assert all(m.training for m in model.modules())


def _shard_products(rank: int) -> dict:
    model = cnn()
    x, y = make_data("cnn", n=30)
    shards = {0: split(x[:13], y[:13], [6]), 1: [(x[13:], y[13:])]}  # unequal shards
    op = HessianOperator(model, LOSS, shards[rank])
    assert op.num_samples == 30
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
    hv = op.matvec(v)
    gv = GGNOperator(model, LOSS, shards[rank], weight_decay=0.1).matvec(v)
    return {"hv": hv, "gv": gv, "ritz": lanczos(op, 10, seed=1).ritz_values}


def test_distributed_equals_single_process():
    model = cnn()
    x, y = make_data("cnn", n=30)
    op = HessianOperator(model, LOSS, (x, y), distributed=False)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
    hv = op.matvec(v)
    gv = GGNOperator(model, LOSS, (x, y), weight_decay=0.1, distributed=False).matvec(v)
    ritz = lanczos(op, 10, seed=1).ritz_values
    outs = run_on_two_processes(_shard_products)
    for o in outs:
        assert rel(o["hv"], hv) < 1e-5
        assert rel(o["gv"], gv) < 1e-5
        assert torch.allclose(o["ritz"], ritz, rtol=1e-4, atol=1e-6)
    assert torch.equal(outs[0]["ritz"], outs[1]["ritz"])  # all ranks agree exactly


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = cnn()
    x, y = make_data("cnn")
    v = torch.randn(sum(p.numel() for p in model.parameters()))
    cpu = HessianOperator(model, LOSS, (x, y)).matvec(v)
    top_cpu = top_eigenvalues(HessianOperator(model, LOSS, (x, y)), 2).eigenvalues
    model.cuda()
    op = HessianOperator(model, LOSS, (x, y))
    assert rel(op.matvec(v).cpu(), cpu) < 1e-4
    assert torch.allclose(top_eigenvalues(op, 2).eigenvalues, top_cpu, rtol=1e-4)
