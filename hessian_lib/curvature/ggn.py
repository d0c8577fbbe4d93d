"""The generalised Gauss-Newton matrix of a network's loss over data as a matrix-free operator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, grad, jvp, vjp, vmap

from hessian_lib.curvature._base import CurvatureOperator, backward_block
from hessian_lib.curvature._data import batchnorm_mode
from hessian_lib.curvature._linearize import batching_fallbacks_quiet, functional_model, tangent_with_target

__all__ = ["GGNOperator"]


class GGNOperator(CurvatureOperator):
    r"""The generalised Gauss-Newton matrix :math:`G = c \sum_i J_i^\top \Lambda_i J_i` (plus
    :math:`\lambda_{\mathrm{wd}} I`), :math:`J_i = \partial f(x_i; w) / \partial w` the Jacobian
    of the network output and :math:`\Lambda_i` the Hessian of the summed loss in that output
    (PSD for cross-entropy, squared error and logistic loss). It drops the
    second-derivative-of-the-network term of the Hessian.

    * ``reduction="mean"``: :math:`c = 1/D`, :math:`D` what the loss averages over on all of
      ``data`` (:math:`N` samples for ``CrossEntropyLoss``, :math:`N C` output entries for
      ``MSELoss`` and ``BCEWithLogitsLoss``, the summed class weights for a weighted
      cross-entropy): the GGN of the empirical loss.
    * ``reduction="sum"``: :math:`c = 1`, the GGN of the loss summed over every sample.

    ``NLLLoss`` and other ``torch.nn`` losses are refused (:func:`resolve_loss`); a callable of
    your own is used with the output Hessian autograd gives for it.

    Products (``path``; same arguments as :class:`CurvatureOperator`):

    * ``"linearize"``: :math:`J v` by ``jvp``, :math:`\Lambda (J v)` by the ``jvp`` of the
      loss's gradient in the output, :math:`J^\top(\cdot)` by ``vjp``, traced together and
      split: the forward pass (shared by ``jvp`` and ``vjp``) and :math:`\Lambda`'s
      ingredients run once per batch; every product runs a tangent forward pass, the output
      Hessian and one backward pass.
    * ``"graph"``: :math:`J v` by forward mode (``torch.func.jvp``, which recomputes the
      forward pass), :math:`\Lambda (J v)` by a double backward of ``loss_fn`` in the
      output, then :math:`J^\top(\cdot)` by a backward pass through the output's kept graph.

    Either state is kept between products while it fits in ``cache_bytes``.

    Example: the GGN of a tiny network against the dense GGN, which is positive semi-definite.

    >>> import torch
    >>> from hessian_lib.curvature import GGNOperator, dense_ggn
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
    >>> x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 2, (16,))
    >>> G = GGNOperator(model, torch.nn.CrossEntropyLoss(), (x, y))
    >>> dense = dense_ggn(model, torch.nn.CrossEntropyLoss(), (x, y))
    >>> v = torch.randn(G.dim, dtype=torch.float64)
    >>> torch.allclose(G.matvec(v), dense @ v)
    True
    >>> bool(torch.linalg.eigvalsh(dense).min() > -1e-12)
    True
    """

    kind = "GGN"
    needs_output_hessian = True

    def _build(self, x: Any, y: Tensor) -> Any:
        """``(x, output, output leaf, gradient of the loss in the leaf with its graph)``."""
        with torch.enable_grad():
            out = self.model(x)
            leaf = out.detach().requires_grad_(True)
            g_out = torch.autograd.grad(self.loss_fn(leaf, y), leaf, create_graph=True)[0]
        return (x, out, leaf, g_out)

    def _apply(self, state: Any, vs: list[list[Tensor]], keep: bool, batched: bool) -> list[Tensor]:
        x, out, leaf, g_out = state
        if not g_out.requires_grad:  # the loss is linear in the output: Lambda = 0
            return [torch.zeros(self.dim, dtype=self.dtype, device=self.device) for _ in vs]
        jvs = self._jacobian_products(x, vs, batched)
        ljv = backward_block([g_out], [leaf], [[u] for u in jvs], keep, lambda ts: ts[0], batched)
        return backward_block([out], self.params, [[c] for c in ljv], keep, self.flatten, batched)

    def _product_fn(self) -> Callable[..., Any]:
        loss_fn, call = self.loss_fn, functional_model(self)

        def product(*args: Tensor) -> Any:
            net, diff, x, y, tangents = call(args)
            out, jv = jvp(net, (diff,), (tangents,))
            ljv = tangent_with_target(grad(lambda o, target: loss_fn(o, target)), out, jv, y)
            return vjp(net, diff)[1](ljv)[0]

        return product

    def _jacobian_products(self, x: Any, vs: list[list[Tensor]], batched: bool = True) -> list[Tensor]:
        """:math:`J v` (shaped like the output) for each vector, by forward mode."""
        names = self.param_names
        primals = tuple(p.detach() for p in self.params)

        def jv(v: tuple[Tensor, ...]) -> Tensor:
            return jvp(lambda ps: functional_call(self.model, dict(zip(names, ps)), (x,)), (primals,), (v,))[1]

        with batchnorm_mode(self.model, self.bn_mode):
            if len(vs) > 1 and batched:
                try:
                    V = tuple(torch.stack([v[i] for v in vs]) for i in range(len(self.params)))
                    with batching_fallbacks_quiet():
                        return list(vmap(jv)(V).unbind(0))
                except RuntimeError:
                    pass
            return [jv(tuple(v)) for v in vs]
