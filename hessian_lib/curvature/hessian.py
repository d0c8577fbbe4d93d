"""The Hessian of a network's loss over data as a matrix-free operator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor
from torch.func import functional_call, grad

from hessian_lib.curvature._base import CurvatureOperator, backward_block
from hessian_lib.curvature._linearize import functional_model, layout, tangent_with_target

__all__ = ["HessianOperator"]


class HessianOperator(CurvatureOperator):
    r"""The Hessian :math:`H = \nabla_w^2 L` of the loss over ``data`` (plus
    :math:`\lambda_{\mathrm{wd}} I`).

    * ``reduction="mean"``: :math:`L` is the average PyTorch computes over all of ``data``
      (over samples; over the :math:`N C` output entries for ``MSELoss`` and
      ``BCEWithLogitsLoss``; over the summed class weights for a weighted cross-entropy).
      With the whole training set, the empirical Hessian :math:`H_{\mathrm{emp}}`; with one
      batch, the batch Hessian :math:`H_{\mathrm{batch}}`.
    * ``reduction="sum"``: :math:`L` is the sum of the loss over every sample of every batch,
      so :math:`H` is :math:`N` times the mean's (for a per-sample mean).

    Any twice-differentiable loss works (see :func:`resolve_loss` for how the reduction is
    found).

    Products (``path``, see :class:`CurvatureOperator` for the arguments):

    * ``"linearize"``: :math:`H_b v = \partial_t \nabla_w L_b(w + t v)|_{t=0}`, the ``jvp`` of
      ``grad`` (forward-over-reverse), traced and split: the forward and backward passes run
      once per batch, every product runs their tangents.
    * ``"graph"``: the first-order graph of :math:`g_b = \nabla_w L_b` is built once
      (``create_graph``) and :math:`H_b v = \nabla_w (g_b^\top v)` is one more backward pass
      through it.

    Either state is kept between products while it fits in ``cache_bytes``. With ``path="auto"``, a first
    product whose caller announced nothing keeps no state: it is one eager forward-over-reverse pass per
    batch (see :mod:`hessian_lib.curvature._autotune`).

    Example: a tiny network in float64 against the dense Hessian of the same loss.

    >>> import torch
    >>> from hessian_lib.curvature import HessianOperator, dense_hessian
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
    >>> x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 2, (16,))
    >>> H = HessianOperator(model, torch.nn.CrossEntropyLoss(), (x, y))
    >>> H.dim  # P = 4*3 + 3 + 3*2 + 2
    23
    >>> v = torch.randn(H.dim, dtype=torch.float64)
    >>> torch.allclose(H.matvec(v), dense_hessian(model, torch.nn.CrossEntropyLoss(), (x, y)) @ v)
    True
    """

    kind = "Hessian"

    def _build(self, x: Any, y: Tensor) -> Any:
        with torch.enable_grad():
            loss = self.loss_fn(self.model(x), y)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return grads

    def _apply(self, state: Any, vs: list[list[Tensor]], keep: bool, batched: bool) -> list[Tensor]:
        grads = state
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not live:
            return [torch.zeros(self.dim, dtype=self.dtype, device=self.device) for _ in vs]
        outs = [grads[i] for i in live]
        return backward_block(outs, self.params, [[v[i] for i in live] for v in vs], keep, self.flatten, batched)

    def _single_pass(self, x: Any, y: Tensor, v: list[Tensor]) -> list[Tensor]:
        # Forward-over-reverse in eager mode: parameters carry v as their tangent through the forward pass,
        # the gradient's tangent is H_b v; nothing is kept. Images go channels-last (CPU convolutions are
        # faster so, 0.75-0.8x the time in benchmarks/curvature_results.md) unless the caller chose a layout.
        names, cl = self.param_names, self._chooser.single_pass_layout(self, x)
        with fwAD.dual_level(), torch.enable_grad():
            duals = [
                fwAD.make_dual(layout(p.detach(), cl), layout(t, cl)).requires_grad_() for p, t in zip(self.params, v)
            ]
            loss = self.loss_fn(functional_call(self.model, dict(zip(names, duals)), (layout(x, cl),)), y)
            grads = torch.autograd.grad(loss, duals, allow_unused=True)
            tangents = [None if g is None else fwAD.unpack_dual(g).tangent for g in grads]
        return [torch.zeros_like(p) if t is None else t.detach() for t, p in zip(tangents, self.params)]

    def _product_fn(self) -> Callable[..., Any]:
        loss_fn, call = self.loss_fn, functional_model(self)

        def product(*args: Tensor) -> Any:
            net, diff, x, y, tangents = call(args)
            return tangent_with_target(grad(lambda d, target: loss_fn(net(d), target)), diff, tangents, y)

        return product
