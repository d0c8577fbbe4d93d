"""The per-batch state kept between products: its bytes, its release, rebuilding without a cache, stale state after the
weights change."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch
from torch import Tensor, nn

from hessian_lib.curvature import HessianOperator, dense_hessian
from hessian_lib.curvature._cache import graph_walk
from hessian_lib.curvature._linearize import linear_inputs, linearization, model_tensors

from .cases import KINDS, LOSS, PATHS, TOL, bn_cnn, cnn, equal_batches, make_data, mlp, rel, split


def test_cache_gives_same_products_and_block_matches_single():
    model = cnn()
    x, y = make_data("cnn")
    data = split(x, y, [11])
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


@pytest.mark.parametrize("path", PATHS)
def test_without_cache_and_with_unequal_batches(path):
    """``cache_bytes=0`` rebuilds every batch on every product; batches of three sizes need
    three traces on the linearised path."""
    model = cnn()
    x, y = make_data("cnn", n=30)
    data = split(x, y, [4, 13])
    for cls, ref in KINDS.values():
        op = cls(model, LOSS, data, path=path, cache_bytes=0)
        V = torch.randn(2, op.dim)
        assert rel(op.matvec(V), V.double() @ ref(model, LOSS, data)) < TOL
        assert op.cache_nbytes == 0


@pytest.mark.parametrize("path", PATHS)
def test_no_cache_loops_blocks(path):
    """With cache_bytes=0 a block is multiplied vector by vector (no k products' tensors at once)."""
    model = cnn()
    x, y = make_data("cnn")
    data = equal_batches(x, y)
    for cls, ref in KINDS.values():
        op = cls(model, LOSS, data, path=path, cache_bytes=0)
        V = torch.randn(3, op.dim)
        assert rel(op.matvec(V), V.double() @ ref(model, LOSS, data)) < TOL
        assert op.block_timings == {}


def test_linearized_state_is_stale_after_the_weights_change():
    model = mlp()
    x, y = make_data("mlp")
    op = HessianOperator(model, LOSS, (x, y), path="linearize")
    v = torch.randn(op.dim)
    op.matvec(v)
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    with pytest.raises(RuntimeError, match="clear_cache"):
        op.matvec(v)
    op.clear_cache()
    assert rel(op.matvec(v), dense_hessian(model, LOSS, (x, y)) @ v.double()) < TOL


@pytest.mark.parametrize("kind", list(KINDS))
def test_graph_bytes_are_what_autograd_saved(kind):
    """The kept graph's size, read from its nodes, is what a pack hook sees being saved."""
    model = bn_cnn()
    x, y = make_data("cnn")
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

    model = cnn()
    x, y = make_data("cnn")
    before = graph_tensors()
    op = KINDS[kind][0](model, LOSS, equal_batches(x, y), path="graph")
    op.matvec(torch.randn(op.dim))
    assert op.cache_nbytes > 0 and len(op._cache) > 0
    del op
    assert graph_tensors() == before


def test_a_state_not_kept_is_released_during_its_last_product():
    """``free=True`` gives the same product and empties the residual list it was given."""
    model = cnn()
    x, y = make_data("cnn")
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
