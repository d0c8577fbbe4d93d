r"""Curvature matrices of a network's loss as matrix-free linear operators.

Every operator here is a symmetric :math:`P \times P` matrix, :math:`P` the number of
selected parameters, that is only ever touched through products :math:`v \mapsto A v`.
The base class :class:`CurvatureOperator` owns everything that is not specific to one
matrix: the loss and its reduction, the loop over batches and their weighting, the
BatchNorm mode, the checks, the product path (a traced linearisation or the first-order
autograd graph, see ``path``), the per-batch cache of their state and the reduction across
processes. A subclass only says how to multiply on one batch: the product as a ``torch.func``
function (traced for the linearised path) and the autograd version (the graph path).

The matrix is the curvature of exactly the loss the user wrote, taken over the whole
dataset. For batches :math:`b` whose batch loss is :math:`L_b` with curvature :math:`A_b`:

* ``reduction="sum"``: :math:`L = \sum_b L_b`, the sum over every sample of every batch, so
  :math:`A v = \sum_b A_b v + \lambda_{\mathrm{wd}} v`.
* ``reduction="mean"``: :math:`L_b = S_b / D_b`, a summed loss :math:`S_b` over what the loss
  divides by, :math:`D_b` (see :meth:`LossInfo.denominator`: the samples, the output entries
  for ``MSELoss`` and ``BCEWithLogitsLoss``, the summed class weights of the counted targets
  for a weighted cross-entropy). Over the dataset :math:`L = \sum_b S_b / D` with
  :math:`D = \sum_b D_b`, so

  .. math::

      A v = \sum_b \frac{D_b}{D} A_b v + \lambda_{\mathrm{wd}} v.

  Usually :math:`D_b / D = n_b / N`, batches weighted by their size.

With every sample once, :math:`A` is the curvature of the empirical loss (plus
:math:`\frac{\lambda_{\mathrm{wd}}}{2} \lVert w \rVert^2`) whatever the batching, as long as
BatchNorm uses its running statistics (``bn_mode="eval"``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import math
import operator
import statistics
import sys
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# Forward-mode AD (used by the GGN product) loads PyTorch's own jvp decompositions on first use,
# and that module still calls the deprecated torch.jit.script. Load it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import torch._decomp.decompositions_for_jvp  # noqa: F401
import torch.distributed as dist
import torch.fx as fx
from torch import Tensor, nn
from torch.func import functional_call, functionalize, grad, jvp, vjp, vmap
from torch.nn import functional as F

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "BN_MODES",
    "GGN_LOSSES",
    "PATHS",
    "REDUCTIONS",
    "SUPPORTED_LOSSES",
    "CurvatureOperator",
    "GGNOperator",
    "HessianOperator",
    "LossInfo",
    "batch_operator",
    "batchnorm_mode",
    "forget_linearizations",
    "resolve_loss",
]

#: Default memory budget (bytes) for autograd graphs kept between products.
DEFAULT_CACHE_BYTES = 2 * 1024**3

#: Accepted values of ``bn_mode``.
BN_MODES = ("eval", "train")

#: Accepted values of ``path`` (how products are computed, see :class:`CurvatureOperator`).
PATHS = ("auto", "linearize", "graph")

#: The auto trial applies a candidate path up to this many times on the first batch (the best counts) ...
TRIAL_LOOKS = 3
#: ... while its best so far is within this factor of the fastest path measured.
TRIAL_SLOWER = 1.5
#: With ``path="auto"``, an operator told that at least this many products will follow
#: (:meth:`CurvatureOperator.expect_products`; Lanczos, SLQ and the trace estimators say so) runs
#: its trial on the first product instead of renting the graph until its products pay for one.
EARLY_TRIAL_PRODUCTS = 16

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

Batch = tuple[Any, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]


@contextlib.contextmanager
def batchnorm_mode(model: nn.Module, bn_mode: str) -> Iterator[None]:
    """Put ``model`` in the state used for curvature products; restore it afterwards.

    * ``"eval"``: the whole model in eval mode. BatchNorm normalises with its running
      statistics, so the network is a fixed function of the weights and every sample
      contributes independently of its batch. Dropout is off.
    * ``"train"``: BatchNorm normalises with the statistics of the current batch (as the
      authors' scripts did when they called ``model.train()``), so the curvature of a batch
      includes the coupling through the batch mean and variance and depends on how the data
      is batched. The running statistics are *not* updated (``track_running_stats`` is
      switched off for the duration). All other modules (e.g. dropout) are in eval mode so
      that products are deterministic.

    On exit every module's ``training`` flag and every BatchNorm's ``track_running_stats``
    are restored, even on error.
    """
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    modes = [(m, m.training) for m in model.modules()]
    tracked: list[tuple[nn.Module, bool]] = []
    try:
        model.eval()
        if bn_mode == "train":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    tracked.append((m, m.track_running_stats))
                    m.train(True)
                    m.track_running_stats = False
        yield
    finally:
        for m, t in tracked:
            m.track_running_stats = t
        for m, t in modes:
            m.training = t


def _is_single_batch(data: Any) -> bool:
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and isinstance(data[1], Tensor)
        and not isinstance(data[0], (tuple, list))
    )


def _batch_size(batch: Batch) -> int:
    x, y = batch
    n = int(y.shape[0]) if y.dim() > 0 else 1
    if isinstance(x, Tensor) and x.dim() > 0 and int(x.shape[0]) != n:
        raise ValueError(f"a batch has {int(x.shape[0])} inputs but {n} targets")
    return n


def _dist_active(distributed: bool | None) -> bool:
    available = dist.is_available() and dist.is_initialized()
    if distributed is None:
        return available
    if distributed and not available:
        raise RuntimeError("distributed=True but torch.distributed is not initialised")
    return distributed


# ------------------------------------------------------------------ losses
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
        return float(_batch_size((None, y)))


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


# ------------------------------------------------------------------ linearised products
# A product A_b v is a function of (parameters, other model tensors, x, y; v), linear in v.
# Traced once per input signature into an aten graph (torch.func transforms, functionalised,
# on fake tensors), it splits into a *primal* part that does not depend on v (forward pass,
# backward pass, everything the tangent needs) and a *tangent* part (the rest). The primal
# part runs once per batch and its outputs (the residuals) are kept; every product then runs
# only the tangent part. The graph is cleaned first: aliases dropped, common subexpressions
# merged (the GGN's jvp and vjp share one forward pass), copies that change nothing dropped,
# known zeros folded (the tangent of the input, which is not a parameter) and unused outputs of
# convolution_backward switched off.

_aten = torch.ops.aten
_ZERO_SOURCES = {_aten.zeros.default, _aten.zeros_like.default, _aten.new_zeros.default, _aten._efficientzerotensor.default}
#: Ops whose output is zero when their first argument is (shape changes, copies, scalings, reductions,
#: and backward ops linear in their incoming gradient).
_ZERO_IF_FIRST = {
    _aten.expand.default, _aten.view.default, _aten._unsafe_view.default, _aten.reshape.default, _aten.t.default,
    _aten.permute.default, _aten.transpose.int, _aten.unsqueeze.default, _aten.squeeze.dim, _aten.squeeze.default,
    _aten.clone.default, _aten._to_copy.default, _aten.neg.default, _aten.mul.Scalar, _aten.div.Scalar,
    _aten.sum.dim_IntList, _aten.sum.default, _aten.mean.dim, _aten.slice.Tensor, _aten.select.int,
    _aten.div.Tensor, _aten.gather.default, _aten.threshold_backward.default,
    _aten.max_pool2d_with_indices_backward.default, _aten.avg_pool2d_backward.default,
}
#: Ops whose output is zero when either of their first two arguments is.
_ZERO_IF_EITHER = {_aten.mul.Tensor, _aten.mm.default, _aten.bmm.default}


def _node_meta(n: Any) -> Any:
    return n.meta.get("val") if isinstance(n, fx.Node) else None


def _fold_zeros(g: fx.Graph) -> None:
    """Propagate tensors known to be zero through ops that are linear in them; ``a + 0 -> a``."""
    zero: set[fx.Node] = set()

    def is_zero(a: Any) -> bool:
        return isinstance(a, fx.Node) and a in zero

    for n in list(g.nodes):
        if n.op != "call_function":
            continue
        t, a = n.target, n.args
        z = False
        if t in _ZERO_SOURCES or (t == _aten.full.default and len(a) > 1 and a[1] == 0):
            z = True
        elif t in _ZERO_IF_FIRST:
            z = len(a) > 0 and is_zero(a[0])
        elif t in _ZERO_IF_EITHER:
            z = is_zero(a[0]) or is_zero(a[1])
        elif t == _aten.convolution.default:
            z = (is_zero(a[0]) or is_zero(a[1])) and a[2] is None
        elif t == operator.getitem and isinstance(a[0], fx.Node) and a[0].target == _aten.convolution_backward.default:
            grad_out, inp, weight = a[0].args[:3]
            z = is_zero(grad_out) or (a[1] == 1 and is_zero(inp)) or (a[1] == 0 and is_zero(weight))
        elif t in (_aten.add.Tensor, _aten.sub.Tensor) and n.kwargs.get("alpha", 1) == 1:
            keep = a[0] if is_zero(a[1]) else a[1] if (is_zero(a[0]) and t == _aten.add.Tensor) else None
            mk, mo = _node_meta(keep), _node_meta(n)
            if (
                isinstance(keep, fx.Node)
                and isinstance(mk, Tensor)
                and isinstance(mo, Tensor)
                and mk.shape == mo.shape
                and mk.dtype == mo.dtype
            ):
                n.replace_all_uses_with(keep)
                continue
            z = is_zero(a[0]) and is_zero(a[1])
        if z:
            zero.add(n)
    for n in list(g.nodes):  # zeros still read by an op that cannot fold them: one cheap fill
        if n in zero and n.users and n.target not in _ZERO_SOURCES:
            m = _node_meta(n)
            if isinstance(m, Tensor):
                with g.inserting_before(n):
                    rep = g.call_function(_aten.zeros.default, (list(m.shape),), {"dtype": m.dtype, "device": m.device})
                rep.meta["val"] = m
                n.replace_all_uses_with(rep)
    g.eliminate_dead_code()


def _is_plain_copy(n: fx.Node) -> bool:
    """``clone`` or ``_to_copy`` that changes neither dtype, device nor layout (in a graph
    without mutation, a copy can be replaced by what it copies)."""
    if n.target not in (_aten.clone.default, _aten._to_copy.default) or not isinstance(n.args[0], fx.Node):
        return False
    src, out = _node_meta(n.args[0]), _node_meta(n)
    return (
        isinstance(src, Tensor)
        and isinstance(out, Tensor)
        and src.dtype == out.dtype
        and src.device == out.device
        and src.layout == out.layout
        and n.kwargs.get("memory_format") in (None, torch.preserve_format)
    )


def _merge_common(g: fx.Graph) -> None:
    """Drop ``alias``, plain copies and ``t(t(a))``, then merge identical pure calls (common
    subexpressions)."""
    for n in list(g.nodes):
        if n.op != "call_function":
            continue
        if n.target == _aten.alias.default or _is_plain_copy(n):
            n.replace_all_uses_with(n.args[0])
        elif n.target == _aten.t.default and isinstance(n.args[0], fx.Node) and n.args[0].target == _aten.t.default:
            n.replace_all_uses_with(n.args[0].args[0])
    g.eliminate_dead_code()

    def key(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return tuple(key(e) for e in v)
        if isinstance(v, dict):
            return tuple(sorted((k, key(e)) for k, e in v.items()))
        return ("node", v) if isinstance(v, fx.Node) else (type(v), v)

    seen: dict[Any, fx.Node] = {}
    for n in list(g.nodes):
        if n.op != "call_function":
            continue
        if isinstance(n.target, torch._ops.OpOverload):
            if n.target._schema.is_mutable or torch.Tag.nondeterministic_seeded in n.target.tags:
                continue
        elif n.target is not operator.getitem:
            continue
        try:
            k = (n.target, key(n.args), key(n.kwargs))
            hash(k)
        except TypeError:
            continue
        if k in seen:
            n.replace_all_uses_with(seen[k])
            g.erase_node(n)
        else:
            seen[k] = n


def _prune_outputs(g: fx.Graph) -> None:
    """Switch off the outputs of ``convolution_backward`` that nothing reads."""
    for n in g.nodes:
        if n.op == "call_function" and n.target == _aten.convolution_backward.default:
            used = {u.args[1] for u in n.users if u.target is operator.getitem}
            mask = list(n.args[10])
            pruned = [m and i in used for i, m in enumerate(mask)]
            if pruned != mask:
                n.update_arg(10, pruned)


def _split_graph(gm: fx.GraphModule, num_tangents: int) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Split at the last ``num_tangents`` inputs: ``primal(inputs) -> residuals`` and
    ``tangent(*residuals, *tangents) -> outputs``."""
    g = gm.graph
    placeholders = [n for n in g.nodes if n.op == "placeholder"]
    tangents = placeholders[len(placeholders) - num_tangents :]
    moving = set(tangents)
    for n in g.nodes:
        if n.op == "call_function" and any(a in moving for a in n.all_input_nodes):
            moving.add(n)
    output = next(n for n in g.nodes if n.op == "output")
    residuals: list[fx.Node] = []
    for n in [*(n for n in g.nodes if n in moving and n.op != "placeholder"), output]:
        for a in n.all_input_nodes:
            if a not in moving and a not in residuals:
                residuals.append(a)
    primal, env = fx.Graph(), {}
    for n in g.nodes:
        if n not in moving and n.op != "output":
            env[n] = primal.node_copy(n, lambda a: env[a])
    primal.output(tuple(env[r] for r in residuals))
    tangent, env2 = fx.Graph(), {}
    for i, r in enumerate(residuals):
        env2[r] = tangent.placeholder(f"residual_{i}")
        env2[r].meta = dict(r.meta)
    for n in tangents:
        env2[n] = tangent.node_copy(n)
    for n in g.nodes:
        if n in moving and n.op != "placeholder":
            env2[n] = tangent.node_copy(n, lambda a: env2[a])
    tangent.output(fx.node.map_arg(output.args[0], lambda a: env2[a]))
    primal.eliminate_dead_code()
    tangent.eliminate_dead_code()
    return fx.GraphModule(gm, primal), fx.GraphModule(gm, tangent)


class _Linearization:
    """A product function traced for one input signature and split into its primal and tangent
    parts (see the comment above). ``build`` runs the primal part on one batch's inputs (in
    no-grad mode) and returns the residuals; ``apply`` runs the tangent part for one vector."""

    def __init__(self, fn: Callable[..., Any], inputs: Sequence[Tensor], num_tangents: int) -> None:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.fx.experimental.proxy_tensor import make_fx

            gm = make_fx(functionalize(fn, remove="mutations"), tracing_mode="fake", _allow_non_fake_inputs=True)(*inputs)
        g = gm.graph
        g.eliminate_dead_code()
        _merge_common(g)
        _fold_zeros(g)
        _prune_outputs(g)
        g.eliminate_dead_code()
        gm.recompile()
        self.primal, self.tangent = _split_graph(gm, num_tangents)
        #: Seconds the trace and the graph passes took.
        self.trace_seconds = time.perf_counter() - start
        #: Number of aten calls in the tangent part (what every product runs).
        self.tangent_ops = sum(1 for n in self.tangent.graph.nodes if n.op == "call_function")

    def build(self, inputs: Sequence[Tensor]) -> list[Any]:
        with torch.no_grad():
            return list(self.primal(*inputs))

    def apply(self, residuals: list[Any], tangents: Sequence[Tensor], free: bool = False) -> list[Tensor]:
        """The tangent part for one vector. ``free``: this is the residuals' last use; the list
        is emptied and each residual is released as soon as the pass no longer needs it (an
        interpreter with the boxed calling convention), so the pass peaks lower."""
        with torch.no_grad():
            if free:
                args = [*residuals, *tangents]
                residuals.clear()
                return list(fx.Interpreter(self.tangent).boxed_run(args))
            return list(self.tangent(*residuals, *tangents))


def _storage_bytes(tensors: Iterable[Any], exclude: Iterable[Tensor] = ()) -> int:
    """Bytes of the distinct storages behind ``tensors``, not counting those of ``exclude``."""
    skip = {t.untyped_storage().data_ptr() for t in exclude if isinstance(t, Tensor)}
    sizes: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, Tensor) and t.device.type != "meta":
            try:
                st = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # a tensor without storage of its own
                continue
            if st.data_ptr() not in skip:
                sizes[st.data_ptr()] = st.nbytes()
    return sum(sizes.values())


# What the process has learnt about each model: traced linearisations and the paths chosen, per
# (operator kind, loss, BatchNorm mode, parameters, tensor shapes, modules). Weakly keyed by the
# model, so it goes with it; each entry holds its loss, so that the loss's id in the key stays
# its own; at most _MEMO_LIMIT entries per model, the oldest dropped first.
_MEMO: weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()
_MEMO_LIMIT = 64
#: Seconds of tracing per autograd node of the first-order graph, per operator kind: first a guess,
#: then what the last trace in this process took.
_TRACE_RATE: dict[str, float] = {}
_TRACE_RATE_GUESS = 0.03
#: Extra seconds for the first trace in a process (``make_fx`` imports ``torch._dynamo``).
_FIRST_TRACE_SECONDS = 3.0


def forget_linearizations() -> None:
    """Forget every traced product and every path chosen in this process (for benchmarks that
    time a first operator; operators keep what they hold)."""
    _MEMO.clear()
    _TRACE_RATE.clear()


def _memo_for(model: nn.Module) -> dict[Any, Any]:
    memo = _MEMO.get(model)
    if memo is None:
        memo = _MEMO[model] = {}
    return memo


def _signature(t: Any) -> Any:
    return (tuple(t.shape), t.dtype, t.device) if isinstance(t, Tensor) else type(t)


def _clock(device: torch.device) -> Callable[[], float]:
    """Seconds for comparing two ways of computing the same product: on a GPU, wall time
    after synchronising; on the CPU, the process's CPU time, which counts the work done and
    not the moments the process waited for a core (the machine may be shared)."""
    if device.type == "cuda":

        def wall() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return wall
    return time.process_time


def _layout(t: Any, channels_last: bool) -> Any:
    """``t`` in channels-last memory format if asked and 4-D, else ``t`` itself."""
    if channels_last and isinstance(t, Tensor) and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def _graph_walk(tensors: Iterable[Any], exclude: Iterable[Tensor] = (), saved: bool = True) -> tuple[int, int]:
    r"""``(nodes, bytes)`` of the autograd graph behind ``tensors``: its number of nodes and the
    bytes of the distinct storages it saved for backward (and of ``tensors`` themselves), not
    counting those of ``exclude``. ``saved=False``: the nodes only (bytes 0).

    The saved tensors are read from the nodes' ``_saved_*`` attributes (``saved_tensors`` for
    custom ``autograd.Function``\ s) after the graph is built. Reading a saved *output* (ReLU's
    result, max-pool's indices) ties the tensor to a reference cycle that only Python's cyclic
    collector frees: such a graph outlives its last product until the next full collection, so
    an operator runs one (:meth:`CurvatureOperator._collect`) when it drops a graph it measured.
    A ``saved_tensors_hooks`` pack hook that returns its tensor would see them as they are
    saved, but it makes every op that saves its own output hold a reference to itself through
    its ``grad_fn``: a cycle through C++ that the collector cannot free at all.
    """
    found: list[Tensor] = []

    def note(t: Any) -> None:
        if isinstance(t, Tensor):
            found.append(t)
        elif isinstance(t, (tuple, list)):
            for u in t:
                note(u)

    seen: set[Any] = set()
    stack = []
    for t in tensors:
        note(t)
        if isinstance(t, Tensor) and t.grad_fn is not None:
            stack.append(t.grad_fn)
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        for name in dir(f) if saved else ():
            if name.startswith("_saved_") or name == "saved_tensors":
                try:
                    note(getattr(f, name))
                except RuntimeError:  # freed by a backward pass without retain_graph
                    pass
        stack.extend(nf for nf, _ in f.next_functions)
    return len(seen), _storage_bytes(found, exclude)


class CurvatureOperator:
    r"""Base class: a symmetric curvature matrix :math:`A \in \mathbb{R}^{P\times P}` of a
    network's loss over data, available through products.

    The matrix is the curvature of the loss the user wrote, over all of ``data``: with
    ``reduction="sum"`` the sum over every sample of every batch, :math:`A = \sum_b A_b`;
    with ``reduction="mean"`` the average PyTorch would compute on all the data at once,
    :math:`A = \sum_b (D_b / D) A_b` (:meth:`LossInfo.denominator`; batches weighted by their
    size, or by their output entries, or by their summed class weights). See the module
    docstring.

    Args:
        model: the network; its parameters are read, never modified.
        loss_fn: ``loss_fn(output, target) -> scalar`` for one batch, e.g.
            ``torch.nn.CrossEntropyLoss()`` or ``torch.nn.MSELoss(reduction="sum")``. Checked
            by :func:`resolve_loss`: :data:`SUPPORTED_LOSSES` (modules, functional forms,
            partials) with reduction ``"mean"`` or ``"sum"``; other ``torch.nn`` losses and
            callables for the Hessian; the GGN refuses ``NLLLoss`` and other ``torch.nn``
            losses. It must be a pure function of its inputs.
        data: one batch ``(x, y)`` or an iterable of batches (a list, a ``DataLoader``,...),
            of any sizes. An iterable must yield the same batches in the same order on
            every pass (no shuffling, no augmentation). One-shot iterators are consumed
            into a list.
        reduction: ``"mean"`` or ``"sum"``: how ``loss_fn`` reduces over a batch. Needed only
            for a callable that does not say (a ``lambda``); otherwise it must match the
            loss's own (a module's ``reduction``, a partial's keyword, a function's default).
        params: the parameters the matrix is taken over (tensors of ``model`` or their
            names); default all parameters with ``requires_grad``. A subset gives the
            principal sub-matrix, e.g. per-layer spectra.
        weight_decay: :math:`\lambda_{\mathrm{wd}}`; adds :math:`\lambda_{\mathrm{wd}} v`
            (the curvature of :math:`\frac{\lambda_{\mathrm{wd}}}{2}\lVert w\rVert^2`).
        bn_mode: ``"eval"`` or ``"train"``, see :func:`batchnorm_mode`.
        cache_bytes: memory budget in bytes for per-batch state kept between products
            (the linearisation's residuals or the first-order autograd graph: saved
            activations). Batches whose state fits are built once and reused by every later
            product (Lanczos, SLQ, trace); the rest are recomputed each time. ``0`` asks for
            the least memory: nothing is kept, blocks are multiplied vector by vector, and SLQ
            runs its probes one after the other (one Lanczos basis at a time, see
            :meth:`blocks_pay`). The state of a
            batch is measured when it is first built (:attr:`cache_nbytes`). While the
            ``path="auto"`` trial runs, the first batch is briefly held on two paths at once
            and the other batches are dropped and rebuilt afterwards.
        path: how products are computed, one of :data:`PATHS`:

            * ``"linearize"``: forward-over-reverse. The product on one batch is traced once
              per input shape (``torch.func`` ``jvp`` of ``grad`` for the Hessian;
              ``jvp``, the output Hessian and ``vjp`` for the GGN, sharing one forward
              pass) into an aten graph, which is split into the part that does not depend
              on :math:`v` (run once per batch; its outputs, the residuals, are what is
              kept) and the tangent part that every product runs: a tangent forward and a
              tangent backward pass, like ``torch.func.linearize`` but built in one
              primal pass and shared by every batch of the same shape.
            * ``"graph"``: reverse-over-reverse. The first-order graph of the gradient
              (``create_graph``) is kept and every product is one more backward pass
              through it; the GGN keeps the network output's graph and runs :math:`Jv`
              by ``torch.func.jvp``.
            * ``"auto"`` (default): runs a trial on the first batch and keeps the fastest
              path. The trial comes on the first product when at least
              ``EARLY_TRIAL_PRODUCTS`` products are announced (:meth:`expect_products`, which
              :func:`lanczos`, :func:`slq_density`, the extremal eigensolvers and the trace
              estimators call). Otherwise the operator starts on ``"graph"``, which costs
              nothing to set up, and runs the trial once the graph's products have taken as
              long as the linearisation would take to set up (the trace, estimated from the
              size of the autograd graph, plus one primal pass per kept batch: the rule of
              renting skis until their price is spent). The trial drops the kept state of the
              other batches, builds the linearisation of the first batch, multiplies the
              block's first vector both ways (the graph's time the best of its earlier
              products and its product in the trial, or, when that would make the graph win,
              the median of those and one more product; a candidate's the best of up to
              ``TRIAL_LOOKS`` applications, since the first ones run cold; CPU time on the
              CPU, synchronised wall time on a GPU), checks that they agree (relative
              difference at most ``1e4`` float epsilons) and keeps the faster (per product
              for kept batches, build plus product when nothing is kept); the block's other
              vectors go on the winner. The trace and the choice are remembered for the
              model, loss, BatchNorm mode and batch shape for the rest of the process, so
              later operators on new batches of the same size start on the winner. Models
              and losses the tracer cannot handle (data-dependent control flow, inputs that
              are not tensors, ops without forward-mode derivatives such as ``HuberLoss``)
              stay on ``"graph"``. The same seed gives bit-identical products on one path
              and block mode (below); a switch changes them at the level of float rounding.

            Either way a block ``[k, P]`` is multiplied vector by vector or vectorised
            (``vmap`` / ``is_grads_batched``), whichever measured faster per vector: after an
            auto trial, the first block on the trial's batch is vectorised and compared with
            the trial's single product (the other batches go vector by vector until then);
            otherwise the first block on the path is computed both ways. Always vector by
            vector with ``cache_bytes=0``, since a vectorised block holds the intermediate
            tensors of ``k`` products at once; a state that is not kept is released tensor by
            tensor during its last product. :attr:`path_in_use` and ``repr`` say which path
            runs and why.
        channels_last: the linearised path runs on channels-last copies of the 4-D tensors (the
            images, 4-D weights and their tangents), often faster for convolutions; the
            products are the same. ``None`` (default): as given, except that the
            ``path="auto"`` trial also measures channels-last when the inputs are images.
        check_finite: raise :class:`FloatingPointError` when a product has a NaN or inf.
        distributed: sum products across the processes of ``torch.distributed`` (default:
            whenever it is initialised). Each process passes its own shard of the data;
            the result equals one process over the union of the shards.

    Products: :meth:`matvec` takes ``[P]`` or a block ``[k, P]`` and returns the same
    shape, in the dtype of the parameters (float32 products, typically). The parameter
    order is that of ``params`` (default ``model.parameters()``), each flattened.

    If the model's weights change, call :meth:`clear_cache` (stale cached state is detected
    by the tensors' version counters and raises).
    """

    #: Name of the matrix, used in messages.
    kind: str = "curvature"
    #: Whether the matrix needs the loss's Hessian in the network output (the GGN does).
    needs_output_hessian: bool = False
    #: :meth:`matvec` takes blocks ``[k, P]`` (SLQ then runs its probes in lockstep).
    accepts_blocks: bool = True

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Batch | Iterable[Batch],
        *,
        params: Sequence[Tensor] | Sequence[str] | None = None,
        weight_decay: float = 0.0,
        bn_mode: str = "eval",
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        check_finite: bool = True,
        distributed: bool | None = None,
        reduction: str | None = None,
        path: str = "auto",
        channels_last: bool | None = None,
    ) -> None:
        #: The loss as the operator understands it: name, family, reduction (:class:`LossInfo`).
        self.loss: LossInfo = resolve_loss(loss_fn, reduction, ggn=self.needs_output_hessian, owner=type(self).__name__)
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        if not math.isfinite(weight_decay):
            raise ValueError(f"weight_decay must be finite, got {weight_decay}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.weight_decay = float(weight_decay)
        self.bn_mode = bn_mode
        self.cache_bytes = int(cache_bytes)
        self.check_finite = check_finite
        self._distributed = _dist_active(distributed)

        named = dict(model.named_parameters())
        if params is None:
            chosen = [(n, p) for n, p in named.items() if p.requires_grad]
        else:
            by_id = {id(p): n for n, p in named.items()}
            chosen = []
            for p in params:
                if isinstance(p, str):
                    if p not in named:
                        raise ValueError(f"model has no parameter named {p!r}")
                    chosen.append((p, named[p]))
                elif id(p) in by_id:
                    chosen.append((by_id[id(p)], p))
                else:
                    raise ValueError("params must be parameters of model (or their names)")
        if not chosen:
            raise ValueError("the model has no trainable parameters to take the curvature over")
        self.param_names: list[str] = [n for n, _ in chosen]
        self.params: list[Tensor] = [p for _, p in chosen]
        self._shapes = [p.shape for p in self.params]
        self._numels = [p.numel() for p in self.params]
        self.dim: int = int(sum(self._numels))
        self.device: torch.device = self.params[0].device
        self.dtype: torch.dtype = self.params[0].dtype

        if _is_single_batch(data):
            self._data: Iterable[Batch] = [tuple(data)]  # type: ignore[list-item]
        elif isinstance(data, Iterator):
            self._data = list(data)
        else:
            self._data = data  # type: ignore[assignment]
        sizes = [_batch_size(b) for b in self._data]
        self.batch_sizes: list[int] = sizes
        #: Weight of each batch's curvature: :math:`D_b` for a mean loss, 1 for a sum.
        self.batch_weights: list[float] = [self._weight_of(b, n) for b, n in zip(self._data, sizes)]
        local = sum(sizes)
        self.local_num_samples: int = local
        total, denom = self._all_reduce_sum([float(local), sum(self.batch_weights)])
        if total == 0:
            raise ValueError("the dataset is empty: the curvature needs at least one sample")
        #: :math:`N`, the number of samples over all batches (and processes).
        self.num_samples: int = int(total)
        if self.loss.reduction == "mean" and denom == 0:
            raise ValueError(f"{self.loss.name} averages over no target of the data (every target ignored?)")
        #: What the summed products are divided by: :math:`D = \sum_b D_b` (mean) or 1 (sum).
        self.normaliser: float = denom if self.loss.reduction == "mean" else 1.0

        named_all = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        chosen_ids = {id(p) for p in self.params}
        #: Model tensors that enter the products as constants (other parameters, buffers).
        self._fixed_names: list[str] = [n for n, t in named_all.items() if id(t) not in chosen_ids]

        #: The requested path (see :data:`PATHS`).
        self.path: str = path
        self._active = "linearize" if path == "linearize" else "graph"
        self._cl = bool(channels_last)
        self._cl_fixed = channels_last is not None
        self._decided = path != "auto"
        self._why = "requested" if path != "auto" else "undecided: graph until the products pay for a trial"
        #: What the auto trial measured on the first batch (seconds), empty before it.
        self.path_timings: dict[str, float] = {}
        self._spent = 0.0
        self._graph_nodes = 0
        self._graph_build_seconds: dict[int, float] = {}
        self._last_build_seconds = 0.0
        self._graph_product_seconds: dict[int, float] = {}
        self._expected = 0
        self._early = False
        self._block: dict[tuple[str, int], bool] = {}
        # (path, batch) -> CPU seconds of one product on the kept state, measured by the trial: the
        # looped side of the first block's looped-or-vectorised comparison on that batch
        self._single_seconds: dict[tuple[str, int], float] = {}
        #: Per-vector seconds of the first block product, looped and vectorised, per path.
        self.block_timings: dict[str, tuple[float, float]] = {}

        self._cache: dict[int, tuple[str, Any]] = {}
        self._cache_sizes: dict[int, int] = {}
        self._garbage = False  # a measured graph was dropped: see _collect
        self._no_cache: set[int] = set()
        #: Number of products with a single vector computed so far.
        self.num_products: int = 0

    # ------------------------------------------------------------------ helpers
    def _weight_of(self, batch: Batch, n: int) -> float:
        """The weight of one batch's curvature: :math:`D_b` (mean), 1 (sum), 0 when empty."""
        if n == 0:
            return 0.0
        return self.loss.denominator(batch[1]) if self.loss.reduction == "mean" else 1.0

    def _all_reduce_sum(self, values: list[float]) -> list[float]:
        """``values`` summed over the processes (unchanged without ``torch.distributed``)."""
        if not self._distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def _comm_device(self) -> torch.device:
        if self._distributed and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """Per-parameter tensors -> flat ``[P]`` (or ``[k, P]`` if each has a leading k)."""
        lead = tensors[0].dim() - len(self._shapes[0])
        if lead:
            k = tensors[0].shape[0]
            return torch.cat([t.reshape(k, -1) for t in tensors], dim=1)
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, v: Tensor) -> list[Tensor]:
        """Flat ``[P]`` (or ``[k, P]``) -> per-parameter views shaped like the parameters."""
        if v.dim() == 1:
            return [c.view(s) for c, s in zip(v.split(self._numels), self._shapes)]
        k = v.shape[0]
        return [c.reshape(k, *s) for c, s in zip(v.split(self._numels, dim=1), self._shapes)]

    def _to_device(self, batch: Batch) -> Batch:
        x, y = batch
        if isinstance(x, Tensor):
            x = x.to(self.device, non_blocking=True)
        return x, y.to(self.device, non_blocking=True)

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by cached per-batch state right now (as measured when built)."""
        return int(sum(self._cache_sizes.values()))

    def clear_cache(self) -> None:
        """Drop every cached per-batch state (call after the weights change). The path chosen
        and the traces stay: they do not depend on the weights."""
        for j in list(self._cache):
            self._drop(j)
        self._no_cache.clear()
        self._collect()

    def _drop(self, j: int) -> None:
        """Forget batch ``j``'s cached state (a measured graph: collect before the next product)."""
        path, _ = self._cache.pop(j)
        self._cache_sizes.pop(j, None)
        self._garbage = self._garbage or path == "graph"

    def _collect(self) -> None:
        """A full collection when a measured graph was dropped since the last one (see
        :func:`_graph_walk`): otherwise its saved outputs stay in memory until Python runs one."""
        if self._garbage:
            self._garbage = False
            gc.collect()

    @property
    def path_in_use(self) -> str:
        """The path products run on now: ``"linearize"`` or ``"graph"``."""
        return self._active

    def expect_products(self, n: int) -> None:
        """Say that about ``n`` more single-vector products will follow (a block ``[k, P]``
        counts ``k``). :func:`lanczos`, :func:`slq_density`, the extremal eigensolvers and the
        trace estimators call this. With ``path="auto"``, once an announcement reaches
        ``EARLY_TRIAL_PRODUCTS`` the trial runs on the next product instead of after the graph's
        products have paid for it. It changes nothing else."""
        if n < 0:
            raise ValueError(f"the number of products to expect must be >= 0, got {n}")
        self._expected = max(self._expected, int(n))

    def blocks_pay(self, k: int) -> bool:
        """Whether a block of ``k`` vectors costs less now than ``k`` single products (SLQ runs its
        probes in lockstep while it does, each probe holding its Lanczos basis): while the path or
        the block timing on it is still to be measured, when a vectorised block was measured faster,
        or when some batch's state is built anew for every product (one build then serves the
        block). Never with ``cache_bytes=0``, which asks for the least memory. The same answer on
        every process under ``torch.distributed``."""
        if k < 2 or self.cache_bytes == 0:
            pays = False
        else:
            batched = self._block.get((self._active, k)) if self._decided else None
            rebuilt = any(w != 0 and i not in self._cache for i, w in enumerate(self.batch_weights))
            pays = batched is None or batched or rebuilt
        if self._distributed:
            pays = self._all_reduce_sum([float(pays)])[0] > 0
        return bool(pays)

    # ---------------------------------------------------------- subclass hooks
    def _build(self, x: Any, y: Tensor) -> Any:
        """Per-batch state of the ``"graph"`` path (called inside :func:`batchnorm_mode`)."""
        raise NotImplementedError

    def _apply(self, state: Any, vs: list[list[Tensor]], keep: bool, batched: bool) -> list[Tensor]:
        """``"graph"`` path: batch products ``A_b v`` for each vector (given per parameter), flat;
        ``batched``: vectorise a block rather than loop over it."""
        raise NotImplementedError

    def _product_fn(self) -> Callable[..., Any]:
        """``"linearize"`` path: ``fn(*params, *fixed, x, y, *v) -> A_b v`` per parameter, in
        ``torch.func`` terms (traced, see :class:`_Linearization`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ linearisation
    def _model_tensors(self) -> list[Tensor]:
        named = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        return [p.detach() for p in self.params] + [named[n].detach() for n in self._fixed_names]

    def _memo_key(self, x: Any, y: Tensor) -> tuple[Any, ...]:
        return (
            type(self).__name__,
            id(self.loss_fn),
            self.bn_mode,
            tuple(self.param_names),
            tuple(self._fixed_names),
            tuple(_signature(t) for t in self._model_tensors()),
            _signature(x),
            _signature(y),
            tuple((name, id(m)) for name, m in self.model.named_modules()),
        )

    def _remember(self, key: Any, value: Any) -> None:
        memo = _memo_for(self.model)
        if len(memo) >= _MEMO_LIMIT:
            memo.pop(next(iter(memo)))
        memo[key] = (self.loss_fn, value)

    def _recall(self, key: Any) -> Any:
        entry = _memo_for(self.model).get(key)
        return None if entry is None else entry[1]

    def _linearization(self, x: Any, y: Tensor, cl: bool) -> _Linearization:
        """The traced product for this batch's shapes and layout (from the process memo, or
        traced now)."""
        if not isinstance(x, Tensor):
            raise RuntimeError(
                f"cannot linearise the {self.kind} products of this model: its inputs are a "
                f"{type(x).__name__}, not a tensor (use path='graph')"
            )
        key = ("trace", cl, *self._memo_key(x, y))
        lin = self._recall(key)
        if lin is None:
            inputs = self._lin_inputs(x, y, cl)
            tangents = [_layout(torch.zeros_like(p), cl) for p in self.params]
            try:
                with batchnorm_mode(self.model, self.bn_mode):
                    lin = _Linearization(self._product_fn(), [*inputs, *tangents], len(self.params))
            except Exception as err:  # noqa: BLE001 - said with the cause, and path="auto" stays on the graph
                first = str(err).strip().splitlines()[0] if str(err).strip() else ""
                raise RuntimeError(
                    f"cannot linearise the {self.kind} products of this model with {self.loss.name}: "
                    f"{type(err).__name__}: {first[:300]} (use path='graph')"
                ) from err
            self._remember(key, lin)
            if self._graph_nodes:
                _TRACE_RATE[type(self).__name__] = lin.trace_seconds / self._graph_nodes
        return lin

    def _layouts(self, x: Any) -> list[bool]:
        """The layouts the trial tries: channels-last too when the inputs are images."""
        images = isinstance(x, Tensor) and x.dim() == 4 and any(p.dim() == 4 for p in self.params)
        return [self._cl] if self._cl_fixed or not images else [False, True]

    def _trace_estimate(self, x: Any, y: Tensor) -> float:
        """Seconds the trial's traces for this batch would take (0 for those the process has)."""
        if not isinstance(x, Tensor):
            return 0.0
        key = self._memo_key(x, y)
        missing = sum(self._recall(("trace", cl, *key)) is None for cl in self._layouts(x))
        if not missing:
            return 0.0
        rate = _TRACE_RATE.get(type(self).__name__, _TRACE_RATE_GUESS)
        first = 0.0 if "torch._dynamo" in sys.modules else _FIRST_TRACE_SECONDS
        return first + missing * rate * max(self._graph_nodes, 1)

    # ------------------------------------------------------------------ per-batch state
    def _versions(self) -> tuple[int, ...]:
        return tuple(t._version for t in self._model_tensors())

    def _lin_inputs(self, x: Tensor, y: Tensor, cl: bool) -> list[Tensor]:
        return [_layout(t, cl) for t in (*self._model_tensors(), x, y)]

    def _build_state(self, path: str, x: Any, y: Tensor, measure: bool, cl: bool | None = None) -> tuple[Any, int]:
        """``(state, bytes)`` of one batch on ``path`` (the linearised path in layout ``cl``,
        default the operator's); bytes only when ``measure``."""
        if path == "linearize":
            cl = self._cl if cl is None else cl
            lin = self._linearization(x, y, cl)
            residuals = lin.build(self._lin_inputs(x, y, cl))
            given = [*self._model_tensors(), x, y]
            return (lin, residuals, self._versions(), cl), (_storage_bytes(residuals, given) if measure else 0)
        start = time.perf_counter()
        with batchnorm_mode(self.model, self.bn_mode):
            state = self._build(x, y)
        self._last_build_seconds = time.perf_counter() - start
        nbytes = 0
        if measure or not self._graph_nodes:
            tensors = state if isinstance(state, (tuple, list)) else [state]
            nodes, nbytes = _graph_walk(tensors, exclude=[*self._model_tensors(), x, y], saved=measure)
            self._graph_nodes = self._graph_nodes or nodes
        return state, (nbytes if measure else 0)

    def _apply_state(self, path: str, state: Any, vs: list[list[Tensor]], keep: bool, batched: bool) -> list[Tensor]:
        if path == "graph":
            return self._apply(state, vs, keep, batched)
        lin, residuals, versions, cl = state
        if versions != self._versions():
            raise RuntimeError(
                f"the model's tensors changed since this {self.kind} operator linearised its batches: "
                f"call clear_cache() after changing the weights"
            )
        if batched and len(vs) > 1:
            try:
                stacked = [torch.stack([v[i] for v in vs]) for i in range(len(self.params))]
                out = vmap(lambda *t: tuple(lin.apply(residuals, [_layout(a, cl) for a in t])))(*stacked)
                return list(self.flatten(list(out)).unbind(0))
            except RuntimeError:
                pass
        last = len(vs) - 1  # a state that is not kept is released during its last product
        return [self.flatten(lin.apply(residuals, [_layout(a, cl) for a in v], free=not keep and j == last)) for j, v in enumerate(vs)]

    def _state_for(self, i: int, batch: Batch) -> tuple[str, Any, bool]:
        """``(path, state, kept)`` for batch ``i``: the cached state, or one built now on the
        active path (and kept if it fits in what is left of ``cache_bytes``)."""
        if i in self._cache:
            path, state = self._cache[i]
            return path, state, True
        x, y = self._to_device(batch)
        path = self._active
        want = self.cache_bytes > 0 and i not in self._no_cache
        state, nbytes = self._build_state(path, x, y, measure=want)
        if want:
            if self.cache_nbytes + nbytes <= self.cache_bytes:
                self._cache[i] = (path, state)
                self._cache_sizes[i] = nbytes
                if path == "graph":
                    self._graph_build_seconds[i] = self._last_build_seconds
                return path, state, True
            self._no_cache.add(i)
            self._garbage = self._garbage or path == "graph"  # measured, not kept: collect after its products
        return path, state, False

    def _batch_products(self, i: int, batch: Batch, vs: list[list[Tensor]]) -> list[Tensor]:
        path, state, kept = self._state_for(i, batch)
        k = len(vs)
        batched = self._block.get((path, k))
        if batched is None and k > 1 and (self.cache_bytes == 0 or (path == "graph" and not self._decided)):
            # No memory to spare for k tangents at once; or the graph until the trial, whose block timing
            # would be spent on a path about to be replaced: vector by vector, nothing measured.
            batched = False
        memo_key = None
        if batched is None and k > 1 and isinstance(batch[0], Tensor):
            memo_key = ("block", path, k, *self._memo_key(*self._to_device(batch)))
            batched = self._block[(path, k)] = self._recall(memo_key)
        if batched is None and k > 1 and kept and any(p == path for p, _ in self._single_seconds):
            # The trial timed one product on this path on its batch: the first block there is vectorised
            # and compared with it; on the other batches, until then, vector by vector.
            ref = self._single_seconds.get((path, i))
            if ref is None:
                return self._apply_state(path, state, vs, kept, False)
            clock = _clock(self.device)
            start = clock()
            vectorised = self._apply_state(path, state, vs, kept, True)
            per_vector = (clock() - start) / k
            self.block_timings[path] = (ref, per_vector)
            self._block[(path, k)] = per_vector < ref
            if memo_key is not None:
                self._remember(memo_key, self._block[(path, k)])
            return vectorised
        if batched is not None or k == 1:
            if self._decided or not kept or path != "graph":
                return self._apply_state(path, state, vs, kept, bool(batched))
            clock = _clock(self.device)  # auto, undecided: note what the kept graph costs
            start = clock()
            res = self._apply_state(path, state, vs, kept, bool(batched))
            seconds = (clock() - start) / k
            self._graph_product_seconds[i] = min(self._graph_product_seconds.get(i, seconds), seconds)
            return res
        # first block of this size on this path: time it looped and vectorised, keep the faster
        clock = _clock(self.device)
        start = clock()
        looped = self._apply_state(path, state, vs, True, False)
        mid = clock()
        vectorised = self._apply_state(path, state, vs, kept, True)
        end = clock()
        self.block_timings[path] = ((mid - start) / k, (end - mid) / k)
        self._block[(path, k)] = end - mid < mid - start
        if memo_key is not None:
            self._remember(memo_key, self._block[(path, k)])
        return vectorised if self._block[(path, k)] else looped  # what every later block gets

    # ------------------------------------------------------------------ the auto trial
    def _trial_due(self, batch: Batch) -> bool:
        """Whether the auto path should run its trial on this product (first weighted batch)."""
        if self._decided:
            return False
        x, y = self._to_device(batch)
        if isinstance(x, Tensor):
            chosen = self._recall(("path", self.cache_bytes > 0, self._cl if self._cl_fixed else None, *self._memo_key(x, y)))
            if chosen is not None:
                self._adopt(*chosen, "chosen earlier in this process for this model and batch shape")
                return False
        rebuild = sum(t for j, t in self._graph_build_seconds.items() if self._cache.get(j, ("",))[0] == "graph")
        if self._spent >= self._trace_estimate(x, y) + rebuild:
            return True
        self._early = self._expected >= EARLY_TRIAL_PRODUCTS  # announced: the trial checks first that it pays
        return self._early

    def _adopt(self, path: str, cl: bool, why: str) -> None:
        self._decided = True
        self._why = why
        if path != self._active or (path == "linearize" and cl != self._cl):
            self._active, self._cl = path, cl
            for j in [j for j, (p, st) in self._cache.items() if p != path or (p == "linearize" and st[3] != cl)]:
                self._drop(j)
            self._no_cache.clear()

    def _trial(self, i: int, batch: Batch, vs: list[list[Tensor]]) -> list[Tensor]:
        """Batch ``i``'s products on every path, timed; keep the fastest (see ``path="auto"``).

        Every path multiplies the block's first vector (its timing and the check that the paths
        agree); the path kept multiplies the others."""
        x, y = self._to_device(batch)
        k = len(vs)
        first = vs[:1]
        layouts = self._layouts(x)
        keep = self.cache_bytes > 0 and i not in self._no_cache
        clock = _clock(self.device)
        if keep and i not in self._cache:  # announced products: the trial comes first, the graph is kept
            t0 = clock()
            _, g_state, kept_graph = self._state_for(i, batch)
            g_build = clock() - t0
            keep = kept_graph
        else:
            kept_graph = keep and i in self._cache and self._cache[i][0] == "graph"
            t0 = clock()
            g_state = self._cache[i][1] if kept_graph else self._build_state("graph", x, y, measure=False)[0]
            g_build = 0.0 if kept_graph else clock() - t0
        t, wall = clock(), time.perf_counter()
        g_res = self._apply_state("graph", g_state, first, kept_graph, False)[0]  # not kept: this frees the graph
        g_first, wall = clock() - t, time.perf_counter() - wall
        g_prod = min(g_first, self._graph_product_seconds.get(i, math.inf))  # with earlier products
        del g_state
        if self._early:
            # Announced products: go on only if the graph's products over the whole announced run would cost
            # more than the set-up the rental rule waits for (renting skis for a known number of days).
            self._early = False
            horizon = wall * self._expected * self.local_num_samples / max(_batch_size(batch), 1)
            if horizon < self._trace_estimate(x, y):
                self._expected = 0
                self._graph_product_seconds[i] = g_prod
                self._why = "undecided: the products announced would not pay for a trial yet"
                return [g_res, *self._rest(i, batch, vs, None)]
        for j in [j for j in self._cache if j != i]:  # room for the trial: at most one batch held twice
            self._drop(j)
        self._no_cache.clear()
        self._collect()
        candidates, failures, fastest = [], [], g_prod
        for cl in layouts:
            try:
                start = time.perf_counter()
                self._linearization(x, y, cl)
                trace = time.perf_counter() - start
            except RuntimeError as err:  # the model or loss cannot be traced
                failures.append(type(err.__cause__ if err.__cause__ is not None else err).__name__)
                continue
            t1 = clock()
            state, nbytes = self._build_state("linearize", x, y, measure=keep, cl=cl)
            build = clock() - t1
            t = clock()
            res = self._apply_state("linearize", state, first, True, False)[0]
            product = clock() - t
            # The first applications of a new state run cold (fresh memory), while the graph's figure is the
            # best of its warm products so far: look again while the candidate is not clearly faster yet
            # (the products are deterministic, so the first look's result stands).
            for _ in range(TRIAL_LOOKS - 1):
                if not (fastest / 1.2 <= product < TRIAL_SLOWER * fastest):
                    break
                t = clock()
                self._apply_state("linearize", state, first, True, False)
                product = min(product, clock() - t)
            if not keep or product >= fastest:  # hold at most one candidate's state
                state = None
            else:
                for c in candidates:
                    c["state"] = None
                if kept_graph and i in self._cache and self._cache[i][0] == "graph":
                    self._drop(i)  # the graph cannot win any more: its memory goes to the next candidate
                    self._collect()
            fastest = min(fastest, product)
            candidates.append({"cl": cl, "state": state, "bytes": nbytes, "res": res, "trace": trace,
                               "build": build, "product": product})
        if not candidates:
            self._adopt("graph", False, f"cannot linearise: {', '.join(sorted(set(failures)))}")
            return [g_res, *self._rest(i, batch, vs, None)]
        if kept_graph and g_prod <= min(c["product"] for c in candidates):
            # The graph would stay on its best time so far, a single sample that a hiccup of the clock can
            # make look far too fast: time it once more and take the median of its figures.
            t = clock()
            self._apply_state("graph", self._cache[i][1], first, True, False)
            looks = [clock() - t, g_first]
            if i in self._graph_product_seconds:
                looks.append(self._graph_product_seconds[i])
            g_prod = statistics.median(looks)
        scale = max(float(g_res.norm()), torch.finfo(self.dtype).tiny)
        tol = max(1e4 * torch.finfo(self.dtype).eps, 1e-10)
        timings = {"graph_build": g_build, "graph_product": g_prod, "trace": 0.0, "relative_difference": 0.0}
        best = ("graph", False, g_prod if kept_graph else g_prod + g_build / k, None)
        old = self._cache_sizes.get(i, 0) if i in self._cache else 0
        for c in candidates:
            name = "linearize_channels_last" if c["cl"] else "linearize"
            diff = float((c["res"] - g_res).norm()) / scale
            timings.update({f"{name}_build": c["build"], f"{name}_product": c["product"]})
            timings["trace"] += c["trace"]
            timings["relative_difference"] = max(timings["relative_difference"], diff)
            if not diff <= tol:
                warnings.warn(
                    f"{type(self).__name__}: the linearised product ({name}) differs from the graph product by "
                    f"{diff:.1e} (relative) on the first batch; not using it",
                    RuntimeWarning,
                    stacklevel=4,
                )
                continue
            c["fits"] = c["state"] is not None and self.cache_nbytes - old + c["bytes"] <= self.cache_bytes
            cost = c["product"] if kept_graph and c["fits"] else c["product"] + c["build"] / k
            if cost < best[2]:
                best = ("linearize", c["cl"], cost, c)
        self.path_timings = timings
        unit = "s" if self.device.type == "cuda" else "s of CPU time"
        costs = ", ".join(f"{n[: -len('_product')].replace('_', ' ')} {v:.3g}" for n, v in timings.items() if n.endswith("_product"))
        why = f"auto: {costs} {unit} per product on the first batch{'' if kept_graph else ', set-up included'}"
        path, cl, _, chosen = best
        self._remember(("path", self.cache_bytes > 0, self._cl if self._cl_fixed else None, *self._memo_key(x, y)), (path, cl))
        self._adopt(path, cl, why)
        if chosen is None:
            if kept_graph:
                self._single_seconds[("graph", i)] = g_prod
            return [g_res, *self._rest(i, batch, vs, None)]
        if chosen["fits"]:
            self._cache[i] = ("linearize", chosen["state"])
            self._cache_sizes[i] = chosen["bytes"]
            self._single_seconds[("linearize", i)] = chosen["product"]
        return [chosen["res"], *self._rest(i, batch, vs, chosen["state"])]

    def _rest(self, i: int, batch: Batch, vs: list[list[Tensor]], state: Any) -> list[Tensor]:
        """After the trial: the products of the block's other vectors on the path kept, on the
        candidate's ``state`` if it is still held, else on the cached or a rebuilt state."""
        if len(vs) < 2:
            return []
        if state is not None:
            return self._apply_state("linearize", state, vs[1:], True, False)
        path, state, kept = self._state_for(i, batch)
        return self._apply_state(path, state, vs[1:], kept, False)

    # ------------------------------------------------------------------ products
    def _matmat(self, V: Tensor) -> Tensor:
        k = V.shape[0]
        vs = [self.unflatten(V[j]) for j in range(k)]
        out = torch.zeros(k, self.dim, dtype=self.dtype, device=self.device)
        first = True
        for i, batch in enumerate(self._data):
            c = self.batch_weights[i] if i < len(self.batch_weights) else self._weight_of(batch, _batch_size(batch))
            if c == 0:
                continue
            start = time.perf_counter()
            if first and self._trial_due(batch):
                res = self._trial(i, batch, vs)
            else:
                res = self._batch_products(i, batch, vs)
            self._spent += time.perf_counter() - start
            first = False
            for j, r in enumerate(res):
                out[j].add_(r, alpha=c)
            del res
            self._collect()
        if self._distributed:
            comm = out.to(self._comm_device())
            dist.all_reduce(comm)
            out = comm.to(self.device)
        out.div_(self.normaliser)
        if self.weight_decay:
            out.add_(V, alpha=self.weight_decay)
        return out

    def matvec(self, v: Tensor) -> Tensor:
        r"""The product :math:`A v`.

        Args:
            v: ``[P]`` or a block ``[k, P]`` (any float dtype; cast to the parameters' dtype
                and device).

        Returns:
            ``[P]`` or ``[k, P]`` in the parameters' dtype, on their device.

        Raises:
            ValueError: wrong shape. FloatingPointError: NaN/inf in the input or product.
        """
        if not isinstance(v, Tensor):
            raise TypeError(f"expected a tensor, got {type(v).__name__}")
        if v.dim() not in (1, 2) or v.shape[-1] != self.dim:
            raise ValueError(
                f"{self.kind} operator has dim {self.dim}: expected a vector [{self.dim}] "
                f"or a block [k, {self.dim}], got shape {list(v.shape)}"
            )
        single = v.dim() == 1
        V = v.detach().to(device=self.device, dtype=self.dtype).reshape(-1, self.dim)
        if self.check_finite and not bool(torch.isfinite(V).all()):
            raise FloatingPointError(f"the vector given to the {self.kind} product has NaN or inf entries")
        out = self._matmat(V)
        self.num_products += V.shape[0]
        if self.check_finite and not bool(torch.isfinite(out).all()):
            raise FloatingPointError(
                f"the {self.kind} product has NaN or inf entries (check the model, the loss and the data)"
            )
        return out[0] if single else out

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.matvec(v)

    @property
    def shape(self) -> tuple[int, int]:
        """``(P, P)``."""
        return (self.dim, self.dim)

    def parameter_vector(self) -> Tensor:
        """The current selected parameters, flattened ``[P]``."""
        return self.flatten([p.detach() for p in self.params])

    def __repr__(self) -> str:
        path = f"path={self._active!r}" if self.path == self._active else f"path={self.path!r} -> {self._active!r}"
        if self._active == "linearize" and self._cl:
            path += " (channels-last)"
        kept = f"{len(self._cache)}/{len(self.batch_sizes)} batches kept in {self.cache_nbytes / 2**20:.0f} MiB"
        return (
            f"{type(self).__name__}(dim={self.dim}, loss={self.loss.name}, num_samples={self.num_samples}, "
            f"batches={len(self.batch_sizes)}, bn_mode={self.bn_mode!r}, weight_decay={self.weight_decay}, "
            f"{path} [{self._why}], {kept})"
        )


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

    Either state is kept between products while it fits in ``cache_bytes``.
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
        return _backward_block(outs, self.params, [[v[i] for i in live] for v in vs], keep, self.flatten, batched)

    def _product_fn(self) -> Callable[..., Any]:
        loss_fn, call = self.loss_fn, _functional_model(self)

        def product(*args: Tensor) -> Any:
            net, diff, x, y, tangents = call(args)
            return _tangent_with_target(grad(lambda d, target: loss_fn(net(d), target)), diff, tangents, y)

        return product


def _functional_model(op: CurvatureOperator) -> Callable[[Sequence[Tensor]], tuple[Any, ...]]:
    """Unpack the flat inputs of a traced product, ``(*params, *fixed, x, y, *v)``, into
    ``(net, params, x, y, v)`` with ``net(params)`` the model's output on ``x``."""
    model, names, fixed = op.model, list(op.param_names), list(op._fixed_names)
    nd, nf = len(names), len(fixed)

    def unpack(args: Sequence[Tensor]) -> tuple[Any, ...]:
        state = dict(zip(fixed, args[nd : nd + nf]))
        x, y = args[nd + nf], args[nd + nf + 1]

        def net(d: Sequence[Tensor]) -> Any:
            return functional_call(model, {**state, **dict(zip(names, d))}, (x,))

        return net, tuple(args[:nd]), x, y, tuple(args[nd + nf + 2 :])

    return unpack


def _tangent_with_target(f: Callable[[Any, Tensor], Any], primal: Any, tangent: Any, y: Tensor) -> Any:
    """The tangent of ``f(primal, y)`` along ``tangent``. A floating-point target gets an
    explicit zero tangent: some forward-mode rules (a mean ``mse_loss``'s backward) fail on
    the implicit one."""
    if y.is_floating_point():
        return jvp(f, (primal, y), (tangent, torch.zeros_like(y)))[1]
    return jvp(lambda p: f(p, y), (primal,), (tangent,))[1]


def _backward_block(
    outputs: list[Tensor],
    inputs: list[Tensor],
    cotangents: list[list[Tensor]],
    keep: bool,
    flatten: Callable[[Sequence[Tensor]], Tensor],
    batched: bool = True,
) -> list[Tensor]:
    """Vector-Jacobian products of ``outputs`` w.r.t. ``inputs`` for each cotangent list.

    With ``batched``, blocks of several cotangents go through one batched backward
    (``is_grads_batched``); ops without a batching rule fall back to one backward per
    cotangent.
    """

    def fill(gs: Sequence[Tensor | None], lead: tuple[int, ...]) -> list[Tensor]:
        return [torch.zeros(*lead, *p.shape, dtype=p.dtype, device=p.device) if g is None else g for g, p in zip(gs, inputs)]

    k = len(cotangents)
    if k > 1 and batched:
        try:
            stacked = [torch.stack([c[i] for c in cotangents]) for i in range(len(outputs))]
            gs = torch.autograd.grad(
                outputs, inputs, grad_outputs=stacked, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
            flat = flatten(fill(gs, (k,)))
            return list(flat.unbind(0))
        except RuntimeError:
            pass
    res = []
    for j, c in enumerate(cotangents):
        gs = torch.autograd.grad(outputs, inputs, grad_outputs=c, retain_graph=keep or j < k - 1, allow_unused=True)
        res.append(flatten(fill(gs, ())))
    return res


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
        ljv = _backward_block([g_out], [leaf], [[u] for u in jvs], keep, lambda ts: ts[0], batched)
        return _backward_block([out], self.params, [[c] for c in ljv], keep, self.flatten, batched)

    def _product_fn(self) -> Callable[..., Any]:
        loss_fn, call = self.loss_fn, _functional_model(self)

        def product(*args: Tensor) -> Any:
            net, diff, x, y, tangents = call(args)
            out, jv = jvp(net, (diff,), (tangents,))
            ljv = _tangent_with_target(grad(lambda o, target: loss_fn(o, target)), out, jv, y)
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
                    return list(vmap(jv)(V).unbind(0))
                except RuntimeError:
                    pass
            return [jv(tuple(v)) for v in vs]


def _dataset_tensors(dataset: Any) -> tuple[int, Callable[[Tensor], Batch]]:
    if _is_single_batch(dataset):
        x, y = dataset
        n = int(y.shape[0])
        return n, lambda idx: (x[idx], y[idx])
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        n = len(dataset)

        def take(idx: Tensor) -> Batch:
            items = [dataset[int(i)] for i in idx]
            xs = torch.stack([torch.as_tensor(it[0]) for it in items])
            ys = torch.stack([torch.as_tensor(it[1]) for it in items])
            return xs, ys

        return n, take
    raise TypeError("dataset must be a pair of tensors (x, y) or a map-style torch Dataset")


def batch_operator(
    kind: str,
    model: nn.Module,
    loss_fn: LossFn,
    dataset: Any,
    batch_size: int,
    *,
    seed: int,
    **kwargs: Any,
) -> CurvatureOperator:
    r"""The batch Hessian or batch GGN of one batch of ``batch_size`` samples drawn without
    replacement from ``dataset`` (the paper's :math:`H_{\mathrm{batch}} = H_{\mathrm{emp}} +
    \varepsilon(w)` for a mean loss; for a sum loss, the curvature of the sum over the batch).

    Args:
        kind: ``"hessian"`` or ``"ggn"``.
        dataset: a pair of tensors ``(x [N, ...], y [N])`` or a map-style ``Dataset`` whose
            items are ``(x, y)``.
        batch_size: :math:`B`, ``1 <= B <= N``; ``B = N`` gives the empirical matrix.
        seed: the draw is ``torch.randperm(N, generator=seed)[:B]`` (reproducible).
        **kwargs: passed to the operator (``params``, ``weight_decay``, ``bn_mode``, ...).
    """
    classes = {"hessian": HessianOperator, "ggn": GGNOperator}
    if kind.lower() not in classes:
        raise ValueError(f"kind must be 'hessian' or 'ggn', got {kind!r}")
    n, take = _dataset_tensors(dataset)
    if n == 0:
        raise ValueError("the dataset is empty")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be between 1 and the dataset size {n}, got {batch_size}")
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(n, generator=gen)[:batch_size].sort().values
    return classes[kind.lower()](model, loss_fn, take(idx), **kwargs)
