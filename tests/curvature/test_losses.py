"""Hessian and GGN operators on every supported loss and reduction, checked two independent
ways: against curvlinops 3.0.1 (``HessianLinearOperator``, ``GGNLinearOperator``) and against
the dense references ``dense_hessian`` / ``dense_ggn``, which evaluate the loss once on all the
data. Also the losses the operators must refuse, callables, and the two GGN crash cases of
``MSELoss``. Small float64 models; agreement to 1e-6 relative."""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable

import pytest
import torch
import torch.multiprocessing as mp
from curvlinops import GGNLinearOperator, HessianLinearOperator
from torch import Tensor, nn
from torch.nn import functional as F

from hessian_lib.curvature import GGNOperator, HessianOperator, batch_operator, dense_ggn, dense_hessian

TOL = 1e-6
CUTS = [7, 12]  # 16 samples in batches of 7, 5, 4
N = 16

Batches = list[tuple[Tensor, Tensor]]


# ------------------------------------------------------------------ models and data
def _mlp(out_dim: int, log_softmax: bool = False) -> nn.Module:
    """``[n, 5] -> [n, out_dim]`` in float64."""
    torch.manual_seed(0)
    layers = [nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, out_dim)]
    return nn.Sequential(*layers, *([nn.LogSoftmax(dim=1)] if log_softmax else [])).double()


def _bn_cnn(out_dim: int, log_softmax: bool = False) -> nn.Module:
    """``[n, 2, 4, 4] -> [n, out_dim]`` with BatchNorm, running statistics warmed up, in eval mode."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
              nn.Linear(12, out_dim)]
    m = nn.Sequential(*layers, *([nn.LogSoftmax(dim=1)] if log_softmax else [])).double()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 2, 4, 4, dtype=torch.float64))
    return m.eval()


def _targets(loss: str, n: int, out_dim: int, g: torch.Generator) -> Tensor:
    """Targets for ``loss``: class indices, real vectors ``[n, C]`` or 0/1 labels ``[n, C]``."""
    if loss in ("CrossEntropyLoss", "NLLLoss"):
        return torch.randint(0, out_dim, (n,), generator=g)
    if loss == "MSELoss":
        return torch.randn(n, out_dim, generator=g, dtype=torch.float64)
    return torch.randint(0, 2, (n, out_dim), generator=g).double()


def _split(x: Tensor, y: Tensor, cuts: list[int]) -> Batches:
    edges = [0, *cuts, len(y)]
    return [(x[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]


def _data(loss: str, out_dim: int, conv: bool, cuts: list[int] = CUTS, n: int = N, seed: int = 1) -> Batches:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 2, 4, 4) if conv else (n, 5)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return _split(x, _targets(loss, n, out_dim, g), cuts)


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _probe(dim: int, k: int = 3) -> Tensor:
    """``[k, P]`` random vectors in float64."""
    return torch.randn(k, dim, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


# ------------------------------------------------------------------ the two references
OURS = {"hessian": HessianOperator, "ggn": GGNOperator}
CURVLINOPS = {"hessian": HessianLinearOperator, "ggn": GGNLinearOperator}
DENSE = {"hessian": dense_hessian, "ggn": dense_ggn}


def curvlinops_product(kind: str, model: nn.Module, loss_fn: nn.Module, data: Batches, params: list[Tensor],
                       weight_decay: float, V: Tensor) -> Tensor:
    """``A V^T`` by curvlinops, plus ``weight_decay * V``, as ``[k, P]``."""
    op = CURVLINOPS[kind](model, loss_fn, params, data, check_deterministic=False)
    return (op @ V.T).T + weight_decay * V


def dense_product(kind: str, model: nn.Module, loss_fn: nn.Module, data: Batches, params: list[Tensor],
                  weight_decay: float, V: Tensor) -> Tensor:
    """``A V^T`` with the dense reference (loss on all the data at once), as ``[k, P]``."""
    return V @ DENSE[kind](model, loss_fn, data, params=params, weight_decay=weight_decay)


REFERENCES: dict[str, Callable[..., Tensor]] = {"curvlinops": curvlinops_product, "dense": dense_product}

# ------------------------------------------------------------------ the grid
LOSSES = {"CrossEntropyLoss": nn.CrossEntropyLoss, "NLLLoss": nn.NLLLoss, "MSELoss": nn.MSELoss,
          "BCEWithLogitsLoss": nn.BCEWithLogitsLoss}
OUT_DIMS = {"CrossEntropyLoss": (3,), "NLLLoss": (3,), "MSELoss": (1, 3), "BCEWithLogitsLoss": (1, 3)}
SETTINGS = ("batches", "bn_eval", "params", "weight_decay")


def _grid() -> list:
    cases = []
    for kind in OURS:
        for loss, dims in OUT_DIMS.items():
            if kind == "ggn" and loss == "NLLLoss":
                continue  # refused: see test_refused_at_construction
            for reduction in ("mean", "sum"):
                for out_dim in dims:
                    for setting in SETTINGS:
                        cases.append(pytest.param(kind, loss, reduction, out_dim, setting,
                                                  id=f"{kind}-{loss}-{reduction}-C{out_dim}-{setting}"))
    return cases


def _problem(loss: str, out_dim: int, setting: str) -> tuple[nn.Module, Batches, list[str] | None, float]:
    """``(model, batches 7/5/4, params names or None, weight_decay)`` for one grid setting."""
    conv = setting == "bn_eval"
    model = (_bn_cnn if conv else _mlp)(out_dim, log_softmax=loss == "NLLLoss")
    params = ["0.weight", "2.bias"] if setting == "params" else None
    return model, _data(loss, out_dim, conv), params, 0.1 if setting == "weight_decay" else 0.0


@pytest.mark.parametrize("reference", list(REFERENCES))
@pytest.mark.parametrize("kind,loss,reduction,out_dim,setting", _grid())
def test_operator_matches_reference(reference, kind, loss, reduction, out_dim, setting):
    model, data, names, wd = _problem(loss, out_dim, setting)
    loss_fn = LOSSES[loss](reduction=reduction)
    op = OURS[kind](model, loss_fn, data, params=names, weight_decay=wd)
    params = [dict(model.named_parameters())[n] for n in names] if names else list(model.parameters())
    assert op.loss.reduction == reduction and op.dim == sum(p.numel() for p in params)
    V = _probe(op.dim)
    got = op.matvec(V)
    assert got.dtype == torch.float64 and got.shape == V.shape
    want = REFERENCES[reference](kind, model, loss_fn, data, params, wd, V)
    assert _rel(got, want) < TOL
    assert _rel(op.matvec(V[0]), want[0]) < TOL  # a single vector as well as a block


# ------------------------------------------------------------------ the cases of the issue
def _cnn(out_dim: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, out_dim)).double()


@pytest.mark.parametrize("case", ["cnn-batches-8-4", "mlp-one-batch"])
def test_ggn_mse_mean_does_not_crash(case):
    """Both used to fail with ``RuntimeError: ZeroTensors are immutable``."""
    if case == "cnn-batches-8-4":
        model, data = _cnn(3), _data("MSELoss", 3, conv=True, cuts=[8], n=12)
    else:
        model, data = _mlp(3), _data("MSELoss", 3, conv=False, cuts=[])
    loss_fn = nn.MSELoss()
    op = GGNOperator(model, loss_fn, data if len(data) > 1 else data[0])
    V = _probe(op.dim)
    want = curvlinops_product("ggn", model, loss_fn, data, list(model.parameters()), 0.0, V)
    assert _rel(op.matvec(V), want) < TOL
    assert _rel(op.matvec(V[1]), want[1]) < TOL


@pytest.mark.parametrize("kind", list(OURS))
def test_sum_over_unequal_batches_is_the_sum_not_a_mean(kind):
    """``CrossEntropyLoss(reduction="sum")`` over 7/5/4: N times the mean's matrix, as curvlinops."""
    model, data = _mlp(3), _data("CrossEntropyLoss", 3, conv=False)
    V = _probe(sum(p.numel() for p in model.parameters()))
    total = OURS[kind](model, nn.CrossEntropyLoss(reduction="sum"), data).matvec(V)
    mean = OURS[kind](model, nn.CrossEntropyLoss(), data).matvec(V)
    assert _rel(total, N * mean) < TOL
    want = curvlinops_product(kind, model, nn.CrossEntropyLoss(reduction="sum"), data, list(model.parameters()), 0.0, V)
    assert _rel(total, want) < TOL


# ------------------------------------------------------------------ what a mean divides by
def _class_weights() -> Tensor:
    return torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)


@pytest.mark.parametrize("kind", list(OURS))
@pytest.mark.parametrize("variant", ["weight", "ignore_index", "weight+ignore_index", "probabilities",
                                     "label_smoothing"])
def test_cross_entropy_mean_divides_as_pytorch_does(kind, variant):
    """A weighted mean cross-entropy divides by the summed class weights of the counted
    targets over all the data, not by N: only the dense reference (one loss on all the data)
    says so, curvlinops weights batches by size."""
    model, data = _mlp(3), _data("CrossEntropyLoss", 3, conv=False)
    kwargs = {"weight": {"weight": _class_weights()}, "ignore_index": {"ignore_index": 2},
              "weight+ignore_index": {"weight": _class_weights(), "ignore_index": 0},
              "probabilities": {}, "label_smoothing": {"weight": _class_weights(), "label_smoothing": 0.1}}[variant]
    if variant == "probabilities":
        data = [(x, torch.softmax(torch.randn(len(y), 3, dtype=torch.float64), dim=1)) for x, y in data]
    loss_fn = nn.CrossEntropyLoss(**kwargs)
    op = OURS[kind](model, loss_fn, data)
    V = _probe(op.dim)
    assert _rel(op.matvec(V), dense_product(kind, model, loss_fn, data, list(model.parameters()), 0.0, V)) < TOL


def test_nll_with_class_weights_hessian():
    model, data = _mlp(3, log_softmax=True), _data("NLLLoss", 3, conv=False)
    loss_fn = nn.NLLLoss(weight=_class_weights())
    op = HessianOperator(model, loss_fn, data)
    V = _probe(op.dim)
    assert _rel(op.matvec(V), dense_product("hessian", model, loss_fn, data, list(model.parameters()), 0.0, V)) < TOL


def test_every_target_ignored_is_refused():
    model, data = _mlp(3), _data("CrossEntropyLoss", 3, conv=False)
    data = [(x, torch.full_like(y, 1)) for x, y in data]
    with pytest.raises(ValueError, match="no target"):
        HessianOperator(model, nn.CrossEntropyLoss(ignore_index=1), data)


@pytest.mark.parametrize("kind", list(OURS))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_bn_train_mode_matches_dense(kind, reduction):
    """BatchNorm with batch statistics: the dense reference runs each batch's own forward pass."""
    model, data = _bn_cnn(3), _data("MSELoss", 3, conv=True)
    loss_fn = nn.MSELoss(reduction=reduction)
    op = OURS[kind](model, loss_fn, data, bn_mode="train")
    V = _probe(op.dim)
    want = V @ DENSE[kind](model, loss_fn, data, bn_mode="train")
    assert _rel(op.matvec(V), want) < TOL


# ------------------------------------------------------------------ callables and the reduction rule
def _mse_lambda(o: Tensor, t: Tensor) -> Tensor:
    return ((o - t) ** 2).sum()


@pytest.mark.parametrize("kind", list(OURS))
@pytest.mark.parametrize("loss_fn,reduction,same_as", [
    (F.cross_entropy, None, nn.CrossEntropyLoss()),  # the signature's default: mean
    (functools.partial(F.cross_entropy, reduction="sum"), None, nn.CrossEntropyLoss(reduction="sum")),
    (functools.partial(F.mse_loss, reduction="sum"), None, nn.MSELoss(reduction="sum")),
    (_mse_lambda, "sum", nn.MSELoss(reduction="sum")),  # told
    (lambda o, t: F.cross_entropy(o, t), "mean", nn.CrossEntropyLoss()),
], ids=["F.cross_entropy", "partial-ce-sum", "partial-mse-sum", "function-told-sum", "lambda-told-mean"])
def test_callable_losses(kind, loss_fn, reduction, same_as):
    name = "MSELoss" if isinstance(same_as, nn.MSELoss) else "CrossEntropyLoss"
    model, data = _mlp(3), _data(name, 3, conv=False)
    op = OURS[kind](model, loss_fn, data, reduction=reduction)
    assert op.loss.reduction == same_as.reduction
    V = _probe(op.dim)
    assert _rel(op.matvec(V), OURS[kind](model, same_as, data).matvec(V)) < TOL
    assert _rel(op.matvec(V), dense_product(kind, model, loss_fn, data, list(model.parameters()), 0.0, V)) < TOL


def test_other_torch_loss_for_the_hessian():
    model, data = _mlp(3), _data("MSELoss", 3, conv=False)
    loss_fn = nn.HuberLoss(reduction="sum", delta=0.5)
    op = HessianOperator(model, loss_fn, data)
    V = _probe(op.dim)
    assert _rel(op.matvec(V), dense_product("hessian", model, loss_fn, data, list(model.parameters()), 0.0, V)) < TOL


def test_batch_operator_passes_the_reduction():
    model, (x, y) = _mlp(3), _data("MSELoss", 3, conv=False, cuts=[])[0]
    op = batch_operator("ggn", model, _mse_lambda, (x, y), 8, seed=3, reduction="sum")
    assert op.loss.reduction == "sum" and op.num_samples == 8


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("kind,loss_fn,reduction,match", [
    ("hessian", nn.CrossEntropyLoss(reduction="none"), None, r"CrossEntropyLoss\(reduction='none'\).*supported: "),
    ("ggn", nn.MSELoss(reduction="none"), None, r"MSELoss\(reduction='none'\).*supported: "),
    ("ggn", nn.NLLLoss(), None, r"NLLLoss.*zero.*supported: CrossEntropyLoss, MSELoss, BCEWithLogitsLoss"),
    ("ggn", nn.L1Loss(), None, r"L1Loss.*output.*supported: CrossEntropyLoss, MSELoss, BCEWithLogitsLoss"),
    ("ggn", functools.partial(F.smooth_l1_loss, reduction="sum"), None, r"smooth_l1_loss.*supported: "),
    ("hessian", nn.KLDivLoss(reduction="batchmean"), None, r"KLDivLoss.*'batchmean'.*supported: "),
    ("hessian", _mse_lambda, None, r"cannot tell.*_mse_lambda.*reduction='mean' or reduction='sum'"),
    ("ggn", lambda o, t: F.mse_loss(o, t), None, r"cannot tell.*lambda"),
    ("hessian", nn.MSELoss(), "sum", r"MSELoss\(reduction='mean'\) reduces with 'mean' but reduction='sum'"),
    ("hessian", _mse_lambda, "none", r"reduction 'none'.*supported: "),
], ids=["ce-none", "mse-none-ggn", "nll-ggn", "l1-ggn", "functional-smooth-l1-ggn", "kl-batchmean", "function-untold",
        "lambda-untold-ggn", "reduction-conflict", "told-none"])
def test_refused_at_construction(kind, loss_fn, reduction, match):
    """The error comes from the constructor, names the loss and lists what is supported."""
    model, data = _mlp(3), _data("MSELoss", 3, conv=False)
    with pytest.raises(ValueError, match=match):
        OURS[kind](model, loss_fn, data, reduction=reduction)


def test_non_callable_loss_is_refused():
    model, data = _mlp(3), _data("MSELoss", 3, conv=False)
    with pytest.raises(TypeError, match="callable"):
        HessianOperator(model, "mse", data)


# ------------------------------------------------------------------ float32 and distributed
@pytest.mark.parametrize("kind", list(OURS))
def test_float32_model_gives_float32_products(kind):
    model, data = _mlp(3).float(), _data("MSELoss", 3, conv=False)
    data32 = [(x.float(), y.float()) for x, y in data]
    loss_fn = nn.MSELoss(reduction="sum")
    op = OURS[kind](model, loss_fn, data32)
    V = _probe(op.dim)
    got = op.matvec(V)
    assert got.dtype == torch.float32
    assert _rel(got, V @ DENSE[kind](model, loss_fn, data32)) < 1e-4


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = {}
        for name, (kind, loss_fn) in _DIST_CASES.items():
            model, data = _mlp(3), _data("CrossEntropyLoss", 3, conv=False)
            shard = data[:2] if rank == 0 else data[2:]  # unequal shards: 7+5 and 4
            out[name] = OURS[kind](model, loss_fn, shard).matvec(_probe(sum(p.numel() for p in model.parameters())))
        torch.save(out, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


_DIST_CASES = {
    "hessian-sum": ("hessian", nn.CrossEntropyLoss(reduction="sum")),
    "ggn-weighted-mean": ("ggn", nn.CrossEntropyLoss(weight=_class_weights(), ignore_index=0)),
}


def test_distributed_sum_and_weighted_mean_equal_one_process():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_dist_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True)
        outs = [torch.load(os.path.join(tmp, f"r{r}.pt")) for r in range(2)]
    model, data = _mlp(3), _data("CrossEntropyLoss", 3, conv=False)
    V = _probe(sum(p.numel() for p in model.parameters()))
    for name, (kind, loss_fn) in _DIST_CASES.items():
        want = OURS[kind](model, loss_fn, data, distributed=False).matvec(V)
        for o in outs:
            assert _rel(o[name], want) < TOL, name
