"""batch_operator: one batch drawn from a dataset."""

from __future__ import annotations

import pytest
import torch

from hessian_lib.curvature import GGNOperator, HessianOperator, batch_operator

from .cases import LOSS, cnn, make_data, rel


def test_batch_operator():
    model = cnn()
    x, y = make_data("cnn", n=20)
    op = batch_operator("hessian", model, LOSS, (x, y), 8, seed=4)
    assert op.num_samples == 8
    idx = torch.randperm(20, generator=torch.Generator().manual_seed(4))[:8].sort().values
    v = torch.randn(op.dim)
    assert rel(op.matvec(v), HessianOperator(model, LOSS, (x[idx], y[idx])).matvec(v)) < 1e-6
    full = batch_operator("ggn", model, LOSS, torch.utils.data.TensorDataset(x, y), 20, seed=0)
    assert rel(full.matvec(v), GGNOperator(model, LOSS, (x, y)).matvec(v)) < 1e-5
    with pytest.raises(ValueError, match="batch_size"):
        batch_operator("hessian", model, LOSS, (x, y), 21, seed=0)
    with pytest.raises(ValueError, match="kind"):
        batch_operator("fisher", model, LOSS, (x, y), 4, seed=0)
