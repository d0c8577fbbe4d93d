r"""Dense curvature matrices for small models: references for tests and small-model chapters.

* :func:`dense_matrix` materialises any operator with ``[k, P]`` block products of the
  identity (cost: :math:`P` products, memory :math:`P^2`).
* :func:`dense_hessian` and :func:`dense_ggn` build the matrix independently of the
  operators, with ``torch.func``: rows of the Hessian by a chunked ``vmap`` over
  ``jvp(grad(L))`` (forward-over-reverse), which is far faster than
  ``torch.func.hessian`` on convolutional nets. By default in float64 on a copy of the
  model, so they serve as exact references.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from hessian_lib.curvature.operators import (
    Batch,
    CurvatureOperator,
    LossFn,
    _batch_size,
    _is_single_batch,
    batchnorm_mode,
)

__all__ = ["dense_matrix", "dense_hessian", "dense_ggn"]


def dense_matrix(op: CurvatureOperator, *, block_size: int = 64, dtype: torch.dtype | None = None) -> Tensor:
    """Materialise ``op`` as a dense ``[P, P]`` matrix, ``block_size`` columns at a time.

    Column ``j`` is ``op.matvec(e_j)``; the result is symmetrised, ``(A + A^T) / 2``, to
    remove round-off asymmetry. Only for small ``P``.
    """
    P = op.dim
    out_dtype = dtype or op.dtype
    A = torch.empty(P, P, dtype=out_dtype, device=op.device)
    for start in range(0, P, block_size):
        stop = min(P, start + block_size)
        E = torch.zeros(stop - start, P, dtype=op.dtype, device=op.device)
        E[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        A[:, start:stop] = op.matvec(E).to(out_dtype).T
    return (A + A.T) / 2


def _prepare(
    model: nn.Module,
    data: Batch | Iterable[Batch],
    params: Sequence[Tensor] | Sequence[str] | None,
    dtype: torch.dtype | None,
) -> tuple[nn.Module, list[Batch], list[str], list[torch.Size], int]:
    named = dict(model.named_parameters())
    if params is None:
        names = [n for n, p in named.items() if p.requires_grad]
    else:
        by_id = {id(p): n for n, p in named.items()}
        names = [p if isinstance(p, str) else by_id[id(p)] for p in params]
    if not names:
        raise ValueError("the model has no trainable parameters")
    batches = [tuple(data)] if _is_single_batch(data) else list(data)  # type: ignore[arg-type]
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
        batches = [
            (x.to(dtype) if isinstance(x, Tensor) and x.is_floating_point() else x, y.to(dtype) if y.is_floating_point() else y)
            for x, y in batches
        ]
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    n_total = sum(_batch_size(b) for b in batches)
    if n_total == 0:
        raise ValueError("the dataset is empty")
    return model, batches, names, shapes, n_total


def _flat_fn(model: nn.Module, names: list[str], shapes: list[torch.Size]):
    numels = [s.numel() for s in shapes]

    def unflat(w: Tensor) -> dict[str, Tensor]:
        return {n: c.view(s) for n, c, s in zip(names, w.split(numels), shapes)}

    return unflat


def dense_hessian(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    *,
    params: Sequence[Tensor] | Sequence[str] | None = None,
    weight_decay: float = 0.0,
    bn_mode: str = "eval",
    dtype: torch.dtype | None = torch.float64,
    chunk_size: int = 64,
) -> Tensor:
    r"""The dense Hessian ``[P, P]`` of the mean loss over ``data`` by ``torch.func``.

    Rows :math:`H e_j` come from ``vmap`` over ``jvp(grad(L), w, e_j)`` in chunks of
    ``chunk_size``; batches are weighted by size as in :class:`HessianOperator`. With
    ``dtype`` (default float64) it works on a converted copy of the model and data.
    """
    model_c, batches, names, shapes, n_total = _prepare(model, data, params, dtype)
    unflat = _flat_fn(model_c, names, shapes)
    named = dict(model_c.named_parameters())
    w0 = torch.cat([named[n].detach().reshape(-1) for n in names])
    P = w0.numel()
    H = torch.zeros(P, P, dtype=w0.dtype, device=w0.device)
    with batchnorm_mode(model_c, bn_mode):
        for x, y in batches:
            nb = _batch_size((x, y))
            if nb == 0:
                continue

            def loss(w: Tensor, x: Any = x, y: Tensor = y) -> Tensor:
                return loss_fn(functional_call(model_c, unflat(w), (x,)), y)

            def row(e: Tensor, loss: Any = loss) -> Tensor:
                return jvp(grad(loss), (w0,), (e,))[1]

            for start in range(0, P, chunk_size):
                stop = min(P, start + chunk_size)
                E = torch.zeros(stop - start, P, dtype=w0.dtype, device=w0.device)
                E[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
                H[start:stop] += vmap(row)(E) * (nb / n_total)
    if weight_decay:
        H += weight_decay * torch.eye(P, dtype=H.dtype, device=H.device)
    return (H + H.T) / 2


def dense_ggn(
    model: nn.Module,
    loss_fn: LossFn,
    data: Batch | Iterable[Batch],
    *,
    params: Sequence[Tensor] | Sequence[str] | None = None,
    weight_decay: float = 0.0,
    bn_mode: str = "eval",
    dtype: torch.dtype | None = torch.float64,
    chunk_size: int = 64,
) -> Tensor:
    r"""The dense GGN ``[P, P]``, :math:`\frac1N\sum_i J_i^\top \Lambda_i J_i`, by ``torch.func``.

    Columns :math:`G e_j = J^\top \Lambda J e_j` with ``vmap`` over ``jvp`` of the network
    (:math:`J e_j`), a Hessian-vector product of the loss in the output, and ``vjp``.
    """
    model_c, batches, names, shapes, n_total = _prepare(model, data, params, dtype)
    unflat = _flat_fn(model_c, names, shapes)
    named = dict(model_c.named_parameters())
    w0 = torch.cat([named[n].detach().reshape(-1) for n in names])
    P = w0.numel()
    G = torch.zeros(P, P, dtype=w0.dtype, device=w0.device)
    with batchnorm_mode(model_c, bn_mode):
        for x, y in batches:
            nb = _batch_size((x, y))
            if nb == 0:
                continue

            def net(w: Tensor, x: Any = x) -> Tensor:
                return functional_call(model_c, unflat(w), (x,))

            out, vjp_fn = vjp(net, w0)
            out = out.detach()

            def lo(o: Tensor, y: Tensor = y) -> Tensor:
                return loss_fn(o, y)

            def col(e: Tensor, net: Any = net, vjp_fn: Any = vjp_fn, out: Tensor = out, lo: Any = lo) -> Tensor:
                jv = jvp(net, (w0,), (e,))[1]
                ljv = jvp(grad(lo), (out,), (jv,))[1]
                return vjp_fn(ljv)[0]

            for start in range(0, P, chunk_size):
                stop = min(P, start + chunk_size)
                E = torch.zeros(stop - start, P, dtype=w0.dtype, device=w0.device)
                E[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
                G[:, start:stop] += vmap(col)(E).T * (nb / n_total)
    if weight_decay:
        G += weight_decay * torch.eye(P, dtype=G.dtype, device=G.device)
    return (G + G.T) / 2
