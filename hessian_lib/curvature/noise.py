r"""The gradient noise scale of McCandlish et al. (2018), from per-sample gradients.

With per-sample gradients :math:`g_i = \nabla_w \ell_i(w)` of n samples, the true gradient is
:math:`G = \mathbb E g_i` and the per-sample covariance :math:`\Sigma = \operatorname{Cov}(g_i)`.
The *simple* noise scale

.. math:: B_{\mathrm{simple}} = \frac{\operatorname{tr}\Sigma}{\lVert G\rVert^2}

is the batch size at which the noise of a batch gradient, :math:`\operatorname{tr}\Sigma / B`,
equals the squared signal. It is estimated without bias in both parts:

.. math:: \widehat{\operatorname{tr}\Sigma} = \frac{1}{n-1}\sum_i \lVert g_i - \bar g\rVert^2, \qquad
          \widehat{\lVert G\rVert^2} = \lVert\bar g\rVert^2 - \widehat{\operatorname{tr}\Sigma}/n

(:math:`\lVert\bar g\rVert^2` alone overestimates the signal by :math:`\operatorname{tr}\Sigma/n`).
The ratio's standard error comes from a delete-one-group jackknife.

Per-sample gradients are computed in chunks with ``torch.func`` (``vmap`` over ``grad`` of a
``functional_call``), with the network in eval mode: BatchNorm uses its running statistics (a
per-sample gradient is not defined with batch statistics, which couple the samples) and
dropout is off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = ["NoiseScale", "gradient_noise_scale", "per_sample_gradients"]


@dataclass(frozen=True)
class NoiseScale:
    r"""The simple gradient noise scale and its parts.

    ``b_simple``: :math:`\operatorname{tr}\Sigma/\lVert G\rVert^2` (samples; ``inf`` or negative
    when the signal estimate is not positive: the noise swamps it at this n); ``stderr``: its
    jackknife standard error; ``trace_sigma``: :math:`\operatorname{tr}\Sigma`; ``grad_norm_sq``:
    :math:`\lVert G\rVert^2` (both unbiased); ``mean_grad_norm_sq``: :math:`\lVert\bar g\rVert^2`;
    ``num_samples``: n; ``groups``: jackknife groups.
    """

    b_simple: float
    stderr: float
    trace_sigma: float
    grad_norm_sq: float
    mean_grad_norm_sq: float
    num_samples: int
    groups: int


def per_sample_gradients(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    params: Sequence[Tensor] | None = None,
    chunk_size: int = 64,
) -> Iterator[Tensor]:
    """Yield the per-sample gradients ``[c, P]`` (flattened, parameter order) of chunks of ``x`` [n, ...], ``y`` [n].

    ``loss_fn(output, target)`` is called on one sample at a time (a batch of one). ``params``:
    the parameters to differentiate (default every parameter with ``requires_grad``). The model
    is evaluated as it is (call ``model.eval()`` first for BatchNorm networks).
    """
    from torch.func import functional_call, grad, vmap

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    chosen = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
    ids = {id(p) for p in chosen}
    names = [n for n, p in model.named_parameters() if id(p) in ids]
    if len(names) != len(chosen):
        raise ValueError("params must be parameters of model")
    fixed = {n: p.detach() for n, p in model.named_parameters() if id(p) not in ids}
    fixed.update({n: b for n, b in model.named_buffers()})

    def sample_loss(weights: tuple[Tensor, ...], xi: Tensor, yi: Tensor) -> Tensor:
        state = {**dict(zip(names, weights)), **fixed}
        out = functional_call(model, state, (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    weights = tuple(p.detach() for p in chosen)
    for start in range(0, x.shape[0], chunk_size):
        grads = per_sample(weights, x[start:start + chunk_size], y[start:start + chunk_size])
        yield torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1)


def _estimate(n: float, s1: Tensor, s2: float) -> tuple[float, float, float, float]:
    mean_sq = float(s1 @ s1) / n**2
    trace = (s2 - n * mean_sq) / (n - 1)
    signal = mean_sq - trace / n
    ratio = trace / signal if signal != 0 else math.inf
    return ratio, trace, signal, mean_sq


def gradient_noise_scale(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    params: Sequence[Tensor] | None = None,
    chunk_size: int = 64,
    groups: int = 8,
) -> NoiseScale:
    r""":math:`B_{\mathrm{simple}}` of ``model`` at its current weights over the samples ``x`` [n, ...], ``y`` [n].

    ``loss_fn(output, target)``: the per-sample loss (called on a batch of one, e.g.
    ``nn.CrossEntropyLoss()``). ``groups``: jackknife groups (n is split into contiguous
    groups; at least 2 and at most n). The network is put in eval mode while the gradients
    are taken and restored afterwards. Float64 accumulation.
    """
    n = int(x.shape[0])
    if n < 2 or y.shape[0] != n:
        raise ValueError(f"need at least 2 samples with one target each, got x {tuple(x.shape)}, y {tuple(y.shape)}")
    groups = int(groups)
    if not 2 <= groups <= n:
        raise ValueError(f"groups must be between 2 and the number of samples {n}, got {groups}")
    edges = [round(k * n / groups) for k in range(groups + 1)]
    was_training = model.training
    model.eval()
    sums: list[Tensor] = []
    squares: list[float] = []
    counts: list[int] = []
    try:
        for k in range(groups):
            lo, hi = edges[k], edges[k + 1]
            s1: Any = 0.0
            s2 = 0.0
            for g in per_sample_gradients(model, loss_fn, x[lo:hi], y[lo:hi], params=params, chunk_size=chunk_size):
                g = g.double()
                s1 = s1 + g.sum(0)
                s2 += float((g * g).sum())
            sums.append(s1)
            squares.append(s2)
            counts.append(hi - lo)
    finally:
        model.train(was_training)
    total1 = torch.stack(sums).sum(0)
    total2 = sum(squares)
    ratio, trace, signal, mean_sq = _estimate(float(n), total1, total2)
    leave_out = [_estimate(float(n - c), total1 - s, total2 - q)[0] for s, q, c in zip(sums, squares, counts)]
    finite = [v for v in leave_out if math.isfinite(v)]
    if len(finite) == groups:
        mean = sum(finite) / groups
        stderr = math.sqrt((groups - 1) / groups * sum((v - mean) ** 2 for v in finite))
    else:
        stderr = math.inf
    return NoiseScale(b_simple=ratio, stderr=stderr, trace_sigma=trace, grad_norm_sq=signal,
                      mean_grad_norm_sq=mean_sq, num_samples=n, groups=groups)
