"""Quadratics ``0.5 w^T A w`` with a known spectrum, for the SLQ learner's tests: a bulk of exact zeros holding
most of the start vector's weight, a few negative eigenvalues, and positive eigenvalues spanning
``[MU, LAM]``. Lanczos finds the distinct eigenvalues exactly there, so the learner must pick
the formulas' values for the true extremes, and the iterates must contract at the rates the
theory gives on the positive eigenspace (components decouple in the eigenbasis).
"""

from __future__ import annotations

import numpy as np
import torch

from hessian_lib.curvature import MatrixOperator
from hessian_lib.slq_learner import SLQLearner

MU, LAM = 0.5, 50.0
NEGATIVE = (-2.0, -0.7, -0.2)
#: Slight negative curvature for the convergence tests: iterates grow along it, slowly enough that
#: rounding leaks nothing measurable into the positive eigenspace over the steps the rates need.
SLIGHT_NEGATIVE = (-0.05, -0.02, -0.01)


def quadratic(negative=NEGATIVE, n_zero=60, n_positive=12, seed=0):
    """``(A, eigenvalues, eigenvectors)``: zeros, ``negative``, and geometric positives MU..LAM."""
    positive = np.geomspace(MU, LAM, n_positive)
    eigenvalues = torch.tensor(np.concatenate([np.zeros(n_zero), negative, positive]), dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen, dtype=torch.float64))
    return q @ torch.diag(eigenvalues) @ q.T, eigenvalues, q


class Quadratic(torch.nn.Module):
    def __init__(self, matrix: torch.Tensor, w0: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("matrix", matrix)
        self.w = torch.nn.Parameter(w0.clone())

    def loss(self) -> torch.Tensor:
        return 0.5 * self.w @ (self.matrix @ self.w)


def run_quadratic(rule: str, steps: int, *, negative=NEGATIVE, every_steps=10_000, **learner_kwargs):
    """Train the quadratic with SGD driven by the learner; return (learner, positive-space error norms)."""
    matrix, eigenvalues, q = quadratic(negative)
    w0 = torch.randn(matrix.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = Quadratic(matrix, w0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0)
    learner = SLQLearner(optimizer, lambda: MatrixOperator(matrix), rule=rule, every_steps=every_steps,
                         lanczos_steps=40, **learner_kwargs)
    positive = q[:, eigenvalues > 0]
    errors = []
    for step in range(steps):
        learner.on_step_start(step, model, optimizer)
        errors.append((positive.T @ model.w.detach()).norm().item())
        optimizer.zero_grad()
        model.loss().backward()
        optimizer.step()
    return learner, np.array(errors)


def measured_rate(errors: np.ndarray, start: int, stop: int) -> float:
    return float((errors[stop] / errors[start]) ** (1.0 / (stop - start)))
