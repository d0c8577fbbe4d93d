"""Tests of hessian_lib.curvature: operators against dense torch.func references, Lanczos,
SLQ, trace estimators, BatchNorm handling, determinism, bad input and distributed products."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from hessian_lib.curvature import (
    GGNOperator,
    HessianOperator,
    MatrixOperator,
    batch_operator,
    LanczosProcess,
    bottom_eigenvalues,
    default_basis_dtype,
    dense_ggn,
    dense_hessian,
    dense_matrix,
    forget_linearizations,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    slq_density,
    top_eigenvalues,
)

LOSS = nn.CrossEntropyLoss()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is much faster than several on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4))


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)
    )


def _bn_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)
    )
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 2, 6, 6))
    m.eval()
    return m


def _data(kind: str, n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g) if kind == "mlp" else torch.randn(n, 2, 6, 6, generator=g)
    return x, torch.randint(0, 4, (n,), generator=g)


def _split(x: torch.Tensor, y: torch.Tensor, cuts: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    edges = [0, *cuts, len(y)]
    return [(x[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


MODELS = {"mlp": (_mlp, "mlp"), "cnn": (_cnn, "cnn"), "bn": (_bn_cnn, "cnn")}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("cls,ref", [(HessianOperator, dense_hessian), (GGNOperator, dense_ggn)])
def test_products_match_dense_reference(name, cls, ref):
    make, dkind = MODELS[name]
    model = make()
    x, y = _data(dkind)
    data = _split(x, y, [5, 17])
    dense = ref(model, LOSS, data)  # float64 copy of the model
    assert dense.dtype == torch.float64
    op = cls(model, LOSS, data)
    assert op.dim == dense.shape[0] == sum(p.numel() for p in model.parameters())
    assert _rel(dense_matrix(op, dtype=torch.float64), dense) < 1e-5
    wd = 0.05
    op_wd = cls(model, LOSS, data, weight_decay=wd)
    V = torch.randn(3, op.dim)
    want = V.double() @ dense + wd * V.double()
    assert _rel(op_wd.matvec(V), want) < 1e-5
    assert _rel(op_wd.matvec(V[0]), want[0]) < 1e-5
    if name == "mlp":
        assert _rel(ref(model, LOSS, data, weight_decay=wd), dense + wd * torch.eye(op.dim, dtype=torch.float64)) < 1e-12
    if cls is GGNOperator:
        assert float(torch.linalg.eigvalsh(dense).min()) > -1e-8


def test_bn_train_mode_matches_reference_and_keeps_running_stats():
    model = _bn_cnn()
    x, y = _data("cnn")
    data = _split(x, y, [10])
    bn = model[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for training in (True, False):
        model.train(training)
        for cls, ref in [(HessianOperator, dense_hessian), (GGNOperator, dense_ggn)]:
            op = cls(model, LOSS, data, bn_mode="train")
            v = torch.randn(op.dim)
            got = op.matvec(v)
            want = ref(model, LOSS, data, bn_mode="train") @ v.double()
            assert _rel(got, want) < 1e-5
            assert all(m.training == training for m in model.modules())
            assert bn.track_running_stats
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # train-mode statistics give a different matrix from eval mode
    v = torch.randn(HessianOperator(model, LOSS, data).dim)
    a = HessianOperator(model, LOSS, data, bn_mode="eval").matvec(v)
    b = HessianOperator(model, LOSS, data, bn_mode="train").matvec(v)
    assert _rel(a, b) > 1e-3


def test_full_operator_is_size_weighted_average_of_batches():
    model = _cnn()
    x, y = _data("cnn", n=30)
    parts = _split(x, y, [4, 13, 22])  # sizes 4, 9, 9, 8
    v = torch.randn(HessianOperator(model, LOSS, (x, y)).dim)
    for cls in (HessianOperator, GGNOperator):
        full = cls(model, LOSS, (x, y)).matvec(v)
        batched = cls(model, LOSS, parts).matvec(v)
        avg = sum(len(b[1]) * cls(model, LOSS, b).matvec(v) for b in parts) / len(y)
        assert _rel(batched, full) < 1e-5
        assert _rel(avg, full) < 1e-5


def test_param_subset_is_principal_submatrix():
    model = _cnn()
    x, y = _data("cnn")
    H = dense_hessian(model, LOSS, (x, y))
    sub = [model[0].weight, model[4].bias]
    op = HessianOperator(model, LOSS, (x, y), params=sub)
    n0, n1 = model[0].weight.numel(), model[4].bias.numel()
    total = sum(p.numel() for p in model.parameters())
    idx = torch.cat([torch.arange(n0), torch.arange(total - n1, total)])
    assert op.dim == n0 + n1
    assert _rel(dense_matrix(op, dtype=torch.float64), H[idx][:, idx]) < 1e-5
    op_names = HessianOperator(model, LOSS, (x, y), params=["0.weight", "4.bias"])
    v = torch.randn(op.dim)
    assert torch.equal(op.matvec(v), op_names.matvec(v))


def test_cache_gives_same_products_and_block_matches_single():
    model = _cnn()
    x, y = _data("cnn")
    data = _split(x, y, [11])
    cached = HessianOperator(model, LOSS, data)
    fresh = HessianOperator(model, LOSS, data, cache_bytes=0)
    V = torch.randn(3, cached.dim)
    a = cached.matvec(V)
    assert cached.cache_nbytes > 0 and fresh.cache_nbytes == 0
    b = cached.matvec(V)
    c = fresh.matvec(V)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-7) and torch.allclose(a, c, rtol=1e-5, atol=1e-7)
    single = torch.stack([fresh.matvec(v) for v in V])
    assert torch.allclose(single, c, rtol=1e-5, atol=1e-7)
    cached.clear_cache()
    assert cached.cache_nbytes == 0


@pytest.fixture(scope="module")
def cnn_problem():
    model = _cnn(3)
    x, y = _data("cnn", n=40, seed=5)
    data = _split(x, y, [16])
    H = dense_hessian(model, LOSS, data)
    return model, data, H, torch.linalg.eigvalsh(H)


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
    [(None, False, "switch"), (None, True, "blocks"), (None, None, "measured"), (0, None, "single"), (1, None, "blocks")],
)
def test_slq_runs_probes_in_lockstep_only_while_blocks_pay(cache_bytes, vectorised, expect):
    """Default cache: every state is kept, so once a looped block is known to cost two products
    the probes finish one after the other (one basis at a time); a vectorised block measured
    faster keeps them in lockstep (``vectorised`` presets that timing; ``None``: measured here,
    either way). cache_bytes=0 (least memory): one after the other from the start. A cache too
    small to keep any state: each block builds a batch's state once for both probes, so
    lockstep throughout."""
    model = _cnn()
    x, y = _data("cnn")
    kw = {} if cache_bytes is None else {"cache_bytes": cache_bytes}
    spy = _Spy(HessianOperator(model, LOSS, _split(x, y, [9]), path="linearize", **kw))
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
    ref = slq_density(HessianOperator(model, LOSS, _split(x, y, [9]), path="linearize"), 8, 2, seed=3, block=False)
    for a, b in zip(res.ritz_values, ref.ritz_values):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


def test_trace_estimators_within_stated_error(cnn_problem):
    model, data, H, ev = cnn_problem
    op = HessianOperator(model, LOSS, data)
    exact = float(ev.sum())
    t = hutchinson_trace(op, 60, seed=0)
    assert t.num_products == 60 and t.stderr > 0
    assert abs(t.estimate - exact) < 4 * t.stderr
    pp = hutchpp_trace(op, 60, seed=0)
    assert abs(pp.estimate - exact) < 4 * pp.stderr + 1e-6 * abs(exact)


def test_same_seed_bit_identical():
    """On one path (the graph here; the linearised path in test_curvature_paths.py)."""
    path = "graph"
    model = _cnn()
    x, y = _data("cnn")
    runs = []
    for _ in range(2):
        op = HessianOperator(model, LOSS, _split(x, y, [9]), path=path)
        r = lanczos(op, 12, seed=7)
        s = slq_density(op, 8, 2, seed=3)
        t = hutchinson_trace(op, 4, seed=2)
        runs.append((r.alphas, r.betas, r.ritz_values, s.density, torch.tensor(t.estimate)))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    other = lanczos(HessianOperator(model, LOSS, (x, y), path=path), 12, seed=8)
    assert not torch.equal(other.alphas, runs[0][0])


def test_auto_path_announced_run_repeats_on_the_same_path():
    """An SLQ long enough to announce its products decides the path before its first product, so
    a second run (which recalls the choice) multiplies on the same path. Only the first run's first
    blocks may differ in how a block is multiplied (looped or vectorised): float rounding."""
    forget_linearizations()
    model = _cnn()
    x, y = _data("cnn")
    dens, paths = [], []
    for _ in range(2):
        op = HessianOperator(model, LOSS, _split(x, y, [9]))
        dens.append(slq_density(op, 8, 2, seed=3).density)
        paths.append(op.path_in_use)
        assert op.num_products == 16
    assert paths[0] == paths[1]
    torch.testing.assert_close(dens[0], dens[1], rtol=1e-5, atol=1e-6 * float(dens[0].max()))


def test_batch_operator():
    model = _cnn()
    x, y = _data("cnn", n=20)
    op = batch_operator("hessian", model, LOSS, (x, y), 8, seed=4)
    assert op.num_samples == 8
    idx = torch.randperm(20, generator=torch.Generator().manual_seed(4))[:8].sort().values
    v = torch.randn(op.dim)
    assert _rel(op.matvec(v), HessianOperator(model, LOSS, (x[idx], y[idx])).matvec(v)) < 1e-6
    full = batch_operator("ggn", model, LOSS, torch.utils.data.TensorDataset(x, y), 20, seed=0)
    assert _rel(full.matvec(v), GGNOperator(model, LOSS, (x, y)).matvec(v)) < 1e-5
    with pytest.raises(ValueError, match="batch_size"):
        batch_operator("hessian", model, LOSS, (x, y), 21, seed=0)
    with pytest.raises(ValueError, match="kind"):
        batch_operator("fisher", model, LOSS, (x, y), 4, seed=0)


def test_bad_input():
    model = _mlp()
    x, y = _data("mlp")
    op = HessianOperator(model, LOSS, (x, y))
    with pytest.raises(ValueError, match="dim"):
        op.matvec(torch.randn(op.dim + 1))
    with pytest.raises(ValueError):
        op.matvec(torch.randn(2, 3, op.dim))
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(model, LOSS, [])
    with pytest.raises(ValueError, match="empty"):
        HessianOperator(model, LOSS, (x[:0], y[:0]))
    frozen = _mlp()
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
    model = _bn_cnn()
    model.train()
    x, y = _data("cnn")
    op = HessianOperator(model, LOSS, (x, y), bn_mode="eval")
    op.matvec(torch.randn(op.dim))
    assert all(m.training for m in model.modules())
    with pytest.raises(ValueError):
        op.matvec(torch.randn(3))
    assert all(m.training for m in model.modules())


# ------------------------------------------------------------------ distributed (gloo, 2 processes)
def _gloo_worker(rank: int, world: int, init_file: str, out_dir: str, fn) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(fn(rank), os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_on_two_processes(fn) -> list:
    """``[fn(0), fn(1)]``, each run in its own process of a 2-process gloo group (``fn`` must be
    a module-level function, so that the processes can import it)."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_gloo_worker, args=(2, os.path.join(tmp, "init"), tmp, fn), nprocs=2, join=True)
        return [torch.load(os.path.join(tmp, f"r{r}.pt")) for r in range(2)]


def _shard_products(rank: int) -> dict:
    model = _cnn()
    x, y = _data("cnn", n=30)
    shards = {0: _split(x[:13], y[:13], [6]), 1: [(x[13:], y[13:])]}  # unequal shards
    op = HessianOperator(model, LOSS, shards[rank])
    assert op.num_samples == 30
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
    hv = op.matvec(v)
    gv = GGNOperator(model, LOSS, shards[rank], weight_decay=0.1).matvec(v)
    return {"hv": hv, "gv": gv, "ritz": lanczos(op, 10, seed=1).ritz_values}


def test_distributed_equals_single_process():
    model = _cnn()
    x, y = _data("cnn", n=30)
    op = HessianOperator(model, LOSS, (x, y), distributed=False)
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0))
    hv = op.matvec(v)
    gv = GGNOperator(model, LOSS, (x, y), weight_decay=0.1, distributed=False).matvec(v)
    ritz = lanczos(op, 10, seed=1).ritz_values
    outs = run_on_two_processes(_shard_products)
    for o in outs:
        assert _rel(o["hv"], hv) < 1e-5
        assert _rel(o["gv"], gv) < 1e-5
        assert torch.allclose(o["ritz"], ritz, rtol=1e-4, atol=1e-6)
    assert torch.equal(outs[0]["ritz"], outs[1]["ritz"])  # all ranks agree exactly


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = _cnn()
    x, y = _data("cnn")
    v = torch.randn(sum(p.numel() for p in model.parameters()))
    cpu = HessianOperator(model, LOSS, (x, y)).matvec(v)
    top_cpu = top_eigenvalues(HessianOperator(model, LOSS, (x, y)), 2).eigenvalues
    model.cuda()
    op = HessianOperator(model, LOSS, (x, y))
    assert _rel(op.matvec(v).cpu(), cpu) < 1e-4
    assert torch.allclose(top_eigenvalues(op, 2).eigenvalues, top_cpu, rtol=1e-4)


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
