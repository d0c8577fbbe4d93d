"""Fixtures of the curvature tests."""

from __future__ import annotations

import pytest
import torch

from hessian_lib.curvature import dense_hessian, forget_linearizations
from hessian_lib.curvature._autotune import PathChooser

from .cases import LOSS, cnn, make_data, split


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is much faster than several on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cnn_problem():
    """``(model, batches, dense Hessian, its eigenvalues)`` of a small CNN."""
    model = cnn(3)
    x, y = make_data("cnn", n=40, seed=5)
    data = split(x, y, [16])
    H = dense_hessian(model, LOSS, data)
    return model, data, H, torch.linalg.eigvalsh(H)


@pytest.fixture
def eager_switch(monkeypatch):
    """Make the auto path's trial due after the first product (no trace-cost estimate)."""
    monkeypatch.setattr(PathChooser, "first_trace_seconds", 0.0)
    monkeypatch.setattr(PathChooser, "trace_rate_guess", 0.0)
    forget_linearizations()  # and the trace rates measured so far
    yield
    forget_linearizations()
