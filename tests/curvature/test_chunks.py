"""``cache_bytes=0`` multiplies batches in chunks of samples when the loss decomposes; equal losses share what
the process remembers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hessian_lib.curvature import CurvatureOperator, HessianOperator
from hessian_lib.curvature._linearize import loss_key

from .cases import KINDS, PATHS, TOL, bn_cnn, cnn, make_data, rel, split


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("loss", [nn.CrossEntropyLoss(), nn.CrossEntropyLoss(reduction="sum"),
                                  nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 3.0]), ignore_index=1)])
def test_chunks_give_the_dense_matrix(monkeypatch, path, loss):
    monkeypatch.setattr(CurvatureOperator, "least_memory_chunk", 4)
    model = cnn()
    x, y = make_data("cnn", n=30)
    data = split(x, y, [11])  # batches of 11 and 19: chunks of 4, 4, 3 and 4, 4, 4, 4, 3 (all ignored: none)
    for cls, ref in KINDS.values():
        op = cls(model, loss, data, path=path, cache_bytes=0)
        pieces = list(op._pieces())
        assert len(pieces) >= 6 and all(len(b[1]) <= 4 for _, b, _ in pieces)
        v = torch.randn(op.dim)
        assert rel(op.matvec(v), ref(model, loss, data) @ v.double()) < TOL


def test_no_chunks_with_a_cache_or_batch_statistics(monkeypatch):
    monkeypatch.setattr(CurvatureOperator, "least_memory_chunk", 4)
    x, y = make_data("cnn", n=16)
    loss = nn.CrossEntropyLoss()
    assert len(list(HessianOperator(cnn(), loss, (x, y))._pieces())) == 1
    assert len(list(HessianOperator(bn_cnn(), loss, (x, y), cache_bytes=0, bn_mode="train")._pieces())) == 1
    assert len(list(HessianOperator(bn_cnn(), loss, (x, y), cache_bytes=0)._pieces())) == 4
    lam = HessianOperator(cnn(), lambda o, t: nn.functional.cross_entropy(o, t), (x, y), cache_bytes=0,
                          reduction="mean")
    assert len(list(lam._pieces())) == 1  # a callable may not be a sum over samples


def test_equal_losses_and_either_cache_share_the_path_chosen(eager_switch):
    assert loss_key(nn.CrossEntropyLoss()) == loss_key(nn.CrossEntropyLoss())
    assert loss_key(nn.CrossEntropyLoss()) != loss_key(nn.CrossEntropyLoss(label_smoothing=0.1))
    weighted = nn.CrossEntropyLoss(weight=torch.ones(4))
    assert loss_key(weighted) == id(weighted)
    model = cnn()
    x, y = make_data("cnn", n=16)
    first = HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
    first.matvec(torch.randn(first.dim))  # the trial (no trace-cost estimate)
    assert first._chooser.decided and first.path_timings
    again = HessianOperator(model, nn.CrossEntropyLoss(), (x, y))
    again.matvec(torch.randn(again.dim))
    assert again.path_in_use == first.path_in_use and "chosen earlier" in repr(again)
    bare = HessianOperator(model, nn.CrossEntropyLoss(), (x, y), cache_bytes=0)  # one product: no trial
    bare.matvec(torch.randn(bare.dim))
    assert bare.path_in_use == first.path_in_use and bare.path_timings == {} and "with a cache" in repr(bare)


@pytest.mark.parametrize("path", [*PATHS, "auto"])
def test_kept_chunks_give_the_dense_matrix(monkeypatch, path):
    """With a cache on the CPU, batches go in chunks of ``kept_chunk`` samples, each chunk's state kept."""
    monkeypatch.setattr(CurvatureOperator, "kept_chunk", 4)
    model = cnn()
    x, y = make_data("cnn", n=30)
    data = split(x, y, [11])  # chunks of 4, 4, 3 and 4, 4, 4, 4, 3
    loss = nn.CrossEntropyLoss()
    for cls, ref in KINDS.values():
        op = cls(model, loss, data, path=path)
        dense = ref(model, loss, data)
        v, V = torch.randn(op.dim), torch.randn(2, op.dim)
        assert rel(op.matvec(v), dense @ v.double()) < TOL
        if op._chooser.single_passes:  # auto's first Hessian product: one pass per chunk, nothing kept
            assert len(op._cache) == 0
            assert rel(op.matvec(v), dense @ v.double()) < TOL
        assert len(op._cache) == 8 and "8/8 chunks of up to 4 samples kept" in repr(op)
        assert not any(i not in op._cache for i in op._piece_ids)  # every chunk kept: nothing to rebuild
        assert rel(op.matvec(V), V.double() @ dense) < TOL  # blocks on the kept chunks
