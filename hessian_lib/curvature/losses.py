"""The losses the curvature operators take: which are supported, their reduction and what a mean divides by."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hessian_lib.curvature._data import batch_size

__all__ = ["GGN_LOSSES", "REDUCTIONS", "SUPPORTED_LOSSES", "LossInfo", "resolve_loss"]

#: Accepted loss reductions (``"none"`` has no scalar loss to take the curvature of).
REDUCTIONS = ("mean", "sum")

#: The losses checked against curvlinops: name -> (torch.nn module, its functional form).
SUPPORTED_LOSSES: dict[str, tuple[type[nn.Module], Callable[..., Tensor]]] = {
    "CrossEntropyLoss": (nn.CrossEntropyLoss, F.cross_entropy),
    "MSELoss": (nn.MSELoss, F.mse_loss),
    "BCEWithLogitsLoss": (nn.BCEWithLogitsLoss, F.binary_cross_entropy_with_logits),
    "NLLLoss": (nn.NLLLoss, F.nll_loss),
}

#: Losses whose Hessian in the network output the GGN uses (``NLLLoss`` is linear in its
#: input, so its output Hessian and its GGN are zero).
GGN_LOSSES = ("CrossEntropyLoss", "MSELoss", "BCEWithLogitsLoss")


def _unwrap(loss_fn: Any) -> tuple[Any, dict[str, Any]]:
    """``functools.partial(f, **kw)`` -> ``(f, kw)``; anything else -> ``(loss_fn, {})``."""
    if isinstance(loss_fn, functools.partial):
        inner, kw = _unwrap(loss_fn.func)
        return inner, {**kw, **loss_fn.keywords}
    return loss_fn, {}


def _loss_name(loss_fn: Any) -> str:
    """A short name for messages: ``CrossEntropyLoss(reduction='sum')``, ``mse_loss``, ..."""
    func, kw = _unwrap(loss_fn)
    if isinstance(func, nn.Module):
        name = type(func).__name__
        red = getattr(func, "reduction", None)
        name = f"{name}(reduction={red!r})" if red is not None else name
    else:
        name = getattr(func, "__qualname__", None) or type(func).__name__
    if kw:
        name = f"partial({name}, {', '.join(f'{k}={v!r}' for k, v in kw.items())})"
    return name


def _family(loss_fn: Any) -> str | None:
    """Which of :data:`SUPPORTED_LOSSES` ``loss_fn`` is (module, functional or a partial of it)."""
    func, _ = _unwrap(loss_fn)
    for name, (cls, fn) in SUPPORTED_LOSSES.items():
        if type(func) is cls or func is fn:
            return name
    return None


def _is_torch_loss(loss_fn: Any) -> bool:
    """A loss of ``torch.nn`` (module or functional) other than :data:`SUPPORTED_LOSSES`."""
    func, _ = _unwrap(loss_fn)
    where = type(func).__module__ if isinstance(func, nn.Module) else getattr(func, "__module__", "")
    return str(where).startswith("torch.nn")


def _option(loss_fn: Any, key: str) -> Any:
    """``key`` (e.g. ``"reduction"``) as ``loss_fn`` sets it: a module's attribute, a partial's
    keyword, or the default in the function's signature; ``None`` when it cannot be told."""
    func, kw = _unwrap(loss_fn)
    if key in kw:
        return kw[key]
    if isinstance(func, nn.Module) or hasattr(func, key):
        return getattr(func, key, None)
    try:
        param = inspect.signature(func).parameters.get(key)
    except (TypeError, ValueError):
        return None
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _declared_reduction(loss_fn: Any) -> str | None:
    """The reduction ``loss_fn`` applies, if it says (legacy ``size_average`` / ``reduce`` too)."""
    _, kw = _unwrap(loss_fn)
    if "size_average" in kw or "reduce" in kw:
        return torch.nn._reduction.legacy_get_string(kw.get("size_average"), kw.get("reduce"))
    red = _option(loss_fn, "reduction")
    return red if isinstance(red, str) else None


def _supported_text(ggn: bool) -> str:
    names = GGN_LOSSES if ggn else tuple(SUPPORTED_LOSSES)
    text = (
        f"supported: {', '.join(names)} (torch.nn modules, their torch.nn.functional forms or "
        f"functools.partial of them) with reduction 'mean' or 'sum'"
    )
    if ggn:
        return text + ", or your own callable loss_fn(output, target) whose output Hessian autograd gives"
    return text + ", any other torch.nn loss with reduction 'mean' or 'sum', or a callable loss_fn(output, target)"


@dataclass(frozen=True, eq=False)
class LossInfo:
    """What an operator knows about its loss.

    Attributes:
        name: for messages, e.g. ``"CrossEntropyLoss(reduction='sum')"``.
        family: the key of :data:`SUPPORTED_LOSSES`, or ``None`` for another loss.
        reduction: ``"mean"`` or ``"sum"``.
        weight: class weights ``[C]`` of a cross-entropy / NLL loss, else ``None``.
        ignore_index: the target a cross-entropy / NLL loss skips, else ``None``.
    """

    name: str
    family: str | None
    reduction: str
    weight: Tensor | None = None
    ignore_index: int | None = None

    def denominator(self, y: Tensor) -> float:
        r""":math:`D_b`, what ``reduction="mean"`` divides the summed loss of a batch with
        targets ``y`` by, as PyTorch computes it.

        * ``CrossEntropyLoss`` / ``NLLLoss`` with class indices ``y [n, *d]``: the targets not
          equal to ``ignore_index``, each counted with its class weight when there are weights;
          with class probabilities ``y [n, C, *d]``: :math:`n \prod d`.
        * ``MSELoss``, ``BCEWithLogitsLoss``: every entry, ``y.numel()`` (targets shaped like
          the output, e.g. :math:`n C`).
        * any other loss: the number of samples :math:`n`.
        """
        if self.family in ("CrossEntropyLoss", "NLLLoss"):
            if y.is_floating_point():
                return float(y.numel() // y.shape[1]) if y.dim() > 1 else 1.0
            counted = y[y != self.ignore_index] if self.ignore_index is not None else y.reshape(-1)
            if self.weight is None:
                return float(counted.numel())
            return float(self.weight.to(counted.device, torch.float64)[counted].sum())
        if self.family in ("MSELoss", "BCEWithLogitsLoss"):
            return float(y.numel())
        return float(batch_size((None, y)))

    def batch_weight(self, y: Tensor, n: int) -> float:
        """The weight of the curvature of a batch of ``n`` samples with targets ``y``: :math:`D_b` for a
        mean (:meth:`denominator`), 1 for a sum, 0 when the batch is empty."""
        if n == 0:
            return 0.0
        return self.denominator(y) if self.reduction == "mean" else 1.0


def resolve_loss(loss_fn: Any, reduction: str | None = None, *, ggn: bool = False, owner: str = "operator") -> LossInfo:
    """Check ``loss_fn`` and find its reduction, or raise ``ValueError`` naming the loss and
    what is supported.

    The reduction is ``reduction`` if given, else what the loss declares: a module's
    ``reduction`` attribute, a ``functools.partial``'s ``reduction=`` keyword, or the default in
    a function's signature (``F.cross_entropy``: ``"mean"``). Both given must agree. A
    callable that declares none (a ``lambda``) needs ``reduction=``.

    Args:
        loss_fn: ``loss_fn(output, target) -> scalar``.
        reduction: ``"mean"``, ``"sum"`` or ``None`` (take the loss's own).
        ggn: the loss is for a GGN, which also needs its Hessian in the network output:
            :data:`GGN_LOSSES` or a callable of your own, never another ``torch.nn`` loss.
        owner: the operator's name, for messages.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(output, target), got {type(loss_fn).__name__}")
    name = _loss_name(loss_fn)
    declared = _declared_reduction(loss_fn)
    if reduction is not None and declared is not None and reduction != declared:
        raise ValueError(f"{owner}: {name} reduces with {declared!r} but reduction={reduction!r} was given")
    red = reduction if reduction is not None else declared
    if red is None:
        raise ValueError(
            f"{owner}: cannot tell whether {name} sums or averages over a batch; pass "
            f"reduction='mean' or reduction='sum' ({_supported_text(ggn)})"
        )
    if red not in REDUCTIONS:
        raise ValueError(
            f"{owner} cannot use {name}: reduction {red!r} gives no scalar loss to take the curvature of; "
            f"{_supported_text(ggn)}"
        )
    family = _family(loss_fn)
    if ggn and family not in GGN_LOSSES and (family is not None or _is_torch_loss(loss_fn)):
        why = (
            "NLLLoss is linear in its input, so its Hessian in the network output and the GGN are zero "
            "(end the model at the logits and use CrossEntropyLoss)"
            if family == "NLLLoss"
            else "its Hessian in the network output is not one the GGN supports"
        )
        raise ValueError(f"{owner} cannot use {name}: {why}; {_supported_text(ggn)}")
    weight = ignore = None
    if family in ("CrossEntropyLoss", "NLLLoss"):
        weight, ignore = _option(loss_fn, "weight"), _option(loss_fn, "ignore_index")
    return LossInfo(name, family, red, None if weight is None else weight.detach(), ignore)
