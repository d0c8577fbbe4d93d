r"""Dense curvature matrices for small models: references for tests and small-model chapters.

* :func:`dense_matrix` materialises any operator with ``[k, P]`` block products of the
  identity (cost: :math:`P` products, memory :math:`P^2`).
* :func:`dense_hessian` and :func:`dense_ggn` build the matrix independently of the
  operators, with ``torch.func``: rows of the Hessian by a chunked ``vmap`` over the
  ``vjp`` of ``grad(L)`` (reverse-over-reverse; the Hessian is symmetric), which is far
  faster than ``torch.func.hessian`` on convolutional nets. (Forward-over-reverse is
  avoided: in torch 2.14 ``jvp(grad(L))`` fails on a mean ``MSELoss`` and
  ``jvp(jacrev(L))`` is wrong through BatchNorm with batch statistics.) By default in
  float64 on a copy of the model, so they serve as exact references.

They evaluate ``loss_fn`` once on all the data: the outputs of every batch (each from its
own forward pass, so ``bn_mode="train"`` uses each batch's statistics) concatenated, with
all the targets. That is the loss the user wrote over the whole dataset by definition,
whatever its reduction, class weights or ignored targets, and shares no batch-weighting
logic with the operators.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from hessian_lib.curvature._base import CurvatureOperator
from hessian_lib.curvature._data import Batch, LossFn, batch_size, batchnorm_mode, is_single_batch

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
    batches = [tuple(data)] if is_single_batch(data) else list(data)  # type: ignore[arg-type]
    if dtype is not None:
        model = copy.deepcopy(model).to(dtype)
        batches = [
            (
                x.to(dtype) if isinstance(x, Tensor) and x.is_floating_point() else x,
                y.to(dtype) if y.is_floating_point() else y,
            )
            for x, y in batches
        ]
    named = dict(model.named_parameters())
    shapes = [named[n].shape for n in names]
    n_total = sum(batch_size(b) for b in batches)
    if n_total == 0:
        raise ValueError("the dataset is empty")
    return model, batches, names, shapes, n_total


def _loss_in(loss_fn: LossFn, dtype: torch.dtype | None) -> LossFn:
    """A loss module with tensors (class weights) converted to ``dtype``, on a copy."""
    if dtype is not None and isinstance(loss_fn, nn.Module):
        return copy.deepcopy(loss_fn).to(dtype)
    return loss_fn


def _flat_fn(model: nn.Module, names: list[str], shapes: list[torch.Size]):
    numels = [s.numel() for s in shapes]

    def unflat(w: Tensor) -> dict[str, Tensor]:
        return {n: c.view(s) for n, c, s in zip(names, w.split(numels), shapes)}

    return unflat


def _whole_data(
    model: nn.Module, batches: list[Batch], unflat: Callable[[Tensor], dict[str, Tensor]]
) -> tuple[Callable[[Tensor], Tensor], Tensor]:
    """``net(w)``: the outputs of every non-empty batch concatenated ``[N, ...]``; and the
    targets concatenated the same way."""
    full = [b for b in batches if batch_size(b) > 0]

    def net(w: Tensor) -> Tensor:
        outs = [functional_call(model, unflat(w), (x,)) for x, _ in full]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    ys = [y for _, y in full]
    return net, ys[0] if len(ys) == 1 else torch.cat(ys)


def _scalar_loss(loss_fn: LossFn, out: Tensor, y: Tensor) -> None:
    """Raise unless ``loss_fn(out, y)`` is a scalar (e.g. ``reduction="none"``)."""
    with torch.no_grad():
        value = loss_fn(out, y)
    if value.dim() != 0:
        raise ValueError(f"loss_fn must reduce to a scalar (reduction 'mean' or 'sum'), got shape {list(value.shape)}")


def _basis_chunks(P: int, chunk_size: int, like: Tensor) -> Iterator[tuple[int, int, Tensor]]:
    """``(start, stop, E)`` with ``E [stop - start, P]`` the unit vectors ``e_start..e_stop-1``."""
    for start in range(0, P, chunk_size):
        stop = min(P, start + chunk_size)
        E = torch.zeros(stop - start, P, dtype=like.dtype, device=like.device)
        E[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        yield start, stop, E


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
    r"""The dense Hessian ``[P, P]`` of ``loss_fn`` over all of ``data`` by ``torch.func``.

    The loss is evaluated once on every batch's output concatenated (see the module
    docstring): for ``reduction="mean"`` the Hessian of the average over the data, for
    ``"sum"`` of the sum. Rows :math:`H e_j` come from ``vmap`` over the ``vjp`` of
    ``grad(L)`` at :math:`w` in chunks of ``chunk_size``. With ``dtype`` (default float64) it
    works on a converted copy of the model and data.
    """
    model_c, batches, names, shapes, _ = _prepare(model, data, params, dtype)
    loss_fn = _loss_in(loss_fn, dtype)
    unflat = _flat_fn(model_c, names, shapes)
    named = dict(model_c.named_parameters())
    w0 = torch.cat([named[n].detach().reshape(-1) for n in names])
    P = w0.numel()
    H = torch.zeros(P, P, dtype=w0.dtype, device=w0.device)
    with batchnorm_mode(model_c, bn_mode):
        net, Y = _whole_data(model_c, batches, unflat)
        _scalar_loss(loss_fn, net(w0), Y)

        def loss(w: Tensor) -> Tensor:
            return loss_fn(net(w), Y)

        hvp = vjp(grad(loss), w0)[1]

        def row(e: Tensor) -> Tensor:
            return hvp(e)[0]

        for start, stop, E in _basis_chunks(P, chunk_size, w0):
            H[start:stop] = vmap(row)(E)
    if weight_decay:
        H += weight_decay * torch.eye(P, dtype=H.dtype, device=H.device)
    return ((H + H.T) / 2).detach()


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
    r"""The dense GGN ``[P, P]``, :math:`J^\top \Lambda J`, by ``torch.func``.

    :math:`J` is the Jacobian of every batch's output concatenated ``[N, ...]`` and
    :math:`\Lambda` the Hessian of ``loss_fn`` in it, the loss taken over all of ``data`` at
    once (so :math:`\frac1D\sum_i J_i^\top \Lambda_i J_i` for a mean, the plain sum for a
    sum). Columns :math:`G e_j` with ``vmap`` over ``jvp`` of the network (:math:`J e_j`), the
    ``vjp`` of the loss's gradient in the output (:math:`\Lambda J e_j`), and ``vjp`` of the
    network.
    """
    model_c, batches, names, shapes, _ = _prepare(model, data, params, dtype)
    loss_fn = _loss_in(loss_fn, dtype)
    unflat = _flat_fn(model_c, names, shapes)
    named = dict(model_c.named_parameters())
    w0 = torch.cat([named[n].detach().reshape(-1) for n in names])
    P = w0.numel()
    G = torch.zeros(P, P, dtype=w0.dtype, device=w0.device)
    with batchnorm_mode(model_c, bn_mode):
        net, Y = _whole_data(model_c, batches, unflat)
        out, vjp_fn = vjp(net, w0)
        out = out.detach()
        _scalar_loss(loss_fn, out, Y)

        def lo(o: Tensor) -> Tensor:
            return loss_fn(o, Y)

        lam = vjp(grad(lo), out)[1]  # u -> Lambda u (Lambda symmetric)

        def col(e: Tensor) -> Tensor:
            jv = jvp(net, (w0,), (e,))[1]
            return vjp_fn(lam(jv)[0])[0]

        for start, stop, E in _basis_chunks(P, chunk_size, w0):
            G[:, start:stop] = vmap(col)(E).T
    if weight_decay:
        G += weight_decay * torch.eye(P, dtype=G.dtype, device=G.device)
    return ((G + G.T) / 2).detach()
