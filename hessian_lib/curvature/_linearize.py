r"""Linearised products: a product traced once into an aten graph, split into a primal and a tangent part.

A product :math:`A_b v` is a function of (parameters, other model tensors, ``x``, ``y``; :math:`v`), linear
in :math:`v`. Traced once per input signature into an aten graph (``torch.func`` transforms, functionalised,
on fake tensors), it splits into a *primal* part that does not depend on :math:`v` (forward pass, backward
pass, everything the tangent needs) and a *tangent* part (the rest). The primal part runs once per batch and
its outputs (the residuals) are kept; every product then runs only the tangent part. The graph is cleaned
first: aliases dropped, common subexpressions merged (the GGN's ``jvp`` and ``vjp`` share one forward pass),
copies that change nothing dropped, known zeros folded (the tangent of the input, which is not a parameter)
and unused outputs of ``convolution_backward`` switched off.

The traces, and what else the process learns about a model, live in :data:`MEMO`.
"""

from __future__ import annotations

import operator
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.func import functional_call, functionalize, jvp, vmap

from hessian_lib.curvature._cache import storage_bytes
from hessian_lib.curvature._data import batchnorm_mode

__all__ = [
    "MEMO",
    "Linearization",
    "Memo",
    "apply_linearized",
    "batching_fallbacks_quiet",
    "build_linearized",
    "forget_linearizations",
    "functional_model",
    "layout",
    "linear_inputs",
    "linearization",
    "loss_key",
    "memo_key",
    "model_tensors",
    "signature",
    "tangent_with_target",
    "versions",
]

_aten = torch.ops.aten
_ZERO_SOURCES = {
    _aten.zeros.default, _aten.zeros_like.default, _aten.new_zeros.default, _aten._efficientzerotensor.default
}
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


def _copy_source(n: fx.Node) -> Any:
    """What a functional ``copy(dst, src)`` can become: ``src`` itself when it already has the result's
    shape, dtype, device and strides; ``src`` cloned into the result's memory format when only the strides
    differ; ``None`` otherwise. Such copies come from in-place ops under forward-mode AD (an in-place ReLU's
    tangent written into a fresh buffer); ``vmap`` has no batching rule for them."""
    if n.target != _aten.copy.default or len(n.args) < 2 or not isinstance(n.args[1], fx.Node):
        return None
    src, out = _node_meta(n.args[1]), _node_meta(n)
    if not (isinstance(src, Tensor) and isinstance(out, Tensor)) or (src.shape, src.dtype, src.device) != (
        out.shape, out.dtype, out.device
    ):
        return None
    if src.stride() == out.stride():
        return n.args[1]
    formats = [torch.channels_last] if out.dim() == 4 else []
    fmt = next((f for f in [torch.contiguous_format, *formats] if out.is_contiguous(memory_format=f)), None)
    if fmt is None:
        return None
    with n.graph.inserting_before(n):
        clone = n.graph.call_function(_aten.clone.default, (n.args[1],), {"memory_format": fmt})
    clone.meta["val"] = out
    return clone


def _merge_common(g: fx.Graph) -> None:
    """Drop ``alias``, plain copies and ``t(t(a))``, then merge identical pure calls (common
    subexpressions)."""
    for n in list(g.nodes):
        if n.op != "call_function":
            continue
        if n.target == _aten.alias.default or _is_plain_copy(n):
            n.replace_all_uses_with(n.args[0])
        elif (source := _copy_source(n)) is not None:
            n.replace_all_uses_with(source)
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


class Linearization:
    """A product function traced for one input signature and split into its primal and tangent
    parts (see the module docstring). ``build`` runs the primal part on one batch's inputs (in
    no-grad mode) and returns the residuals; ``apply`` runs the tangent part for one vector."""

    def __init__(self, fn: Callable[..., Any], inputs: Sequence[Tensor], num_tangents: int) -> None:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.fx.experimental.proxy_tensor import make_fx

            traced = make_fx(functionalize(fn, remove="mutations"), tracing_mode="fake", _allow_non_fake_inputs=True)
            gm = traced(*inputs)
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


def layout(t: Any, channels_last: bool) -> Any:
    """``t`` in channels-last memory format if asked and 4-D, else ``t`` itself."""
    if channels_last and isinstance(t, Tensor) and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


def signature(t: Any) -> Any:
    """What a trace depends on: a tensor's shape, dtype and device; the type of anything else."""
    return (tuple(t.shape), t.dtype, t.device) if isinstance(t, Tensor) else type(t)


class Memo:
    """What the process has learnt about each model: traced linearisations, the paths chosen and how blocks
    are multiplied, per (operator kind, loss, BatchNorm mode, parameters, tensor shapes, modules).

    Weakly keyed by the model, so it goes with it; each entry holds its loss, so that the loss's id in the
    key stays its own; at most :attr:`limit` entries per model, the oldest dropped first.
    """

    #: Entries kept per model.
    limit: int = 64

    def __init__(self) -> None:
        self._models: weakref.WeakKeyDictionary[nn.Module, dict[Any, Any]] = weakref.WeakKeyDictionary()
        #: Seconds of tracing per autograd node of the first-order graph, per operator kind, as the last
        #: trace in this process took.
        self.trace_rate: dict[str, float] = {}

    def forget(self) -> None:
        """Forget everything (every model's entries and the trace rates)."""
        self._models.clear()
        self.trace_rate.clear()

    def _entries(self, model: nn.Module) -> dict[Any, Any]:
        memo = self._models.get(model)
        if memo is None:
            memo = self._models[model] = {}
        return memo

    def recall(self, model: nn.Module, key: Any) -> Any:
        """What was remembered for ``model`` under ``key``, or ``None``."""
        entry = self._entries(model).get(key)
        return None if entry is None else entry[1]

    def remember(self, model: nn.Module, key: Any, value: Any, loss_fn: Any) -> None:
        """Keep ``value`` for ``model`` under ``key`` (a key may hold ``id(loss_fn)``: the entry keeps the loss)."""
        memo = self._entries(model)
        if len(memo) >= self.limit:
            memo.pop(next(iter(memo)))
        memo[key] = (loss_fn, value)


#: The process-wide memo.
MEMO = Memo()


def forget_linearizations() -> None:
    """Forget every traced product and every path chosen in this process (for benchmarks that
    time a first operator; operators keep what they hold)."""
    MEMO.forget()


# ------------------------------------------------------------------ an operator's linearised path
# ``op`` is a CurvatureOperator: these read its model, parameters, loss and its hook _product_fn.
def model_tensors(op: Any) -> list[Tensor]:
    """The selected parameters, then the other model tensors (parameters and buffers), detached."""
    named = {**dict(op.model.named_parameters()), **dict(op.model.named_buffers())}
    return [p.detach() for p in op.params] + [named[n].detach() for n in op._fixed_names]


_MODULE_ATTRS = frozenset(vars(nn.Module()))
_PLAIN = (bool, int, float, str, type(None))


def loss_key(loss_fn: Any) -> Any:
    """What a trace depends on in the loss: for a ``torch.nn`` loss module that holds no tensor and no
    submodule, its type and plain settings (``reduction``, ``ignore_index``, ``label_smoothing``, ...), so
    that a new ``nn.CrossEntropyLoss()`` meets what an equal one left in :data:`MEMO`; else the loss's id."""
    if isinstance(loss_fn, nn.Module) and not any(True for _ in loss_fn.parameters()):
        if not any(b is not None for b in loss_fn.buffers()) and not any(True for _ in loss_fn.children()):
            settings = {k: v for k, v in vars(loss_fn).items() if k not in _MODULE_ATTRS}
            if all(isinstance(v, _PLAIN) for v in settings.values()):
                return (type(loss_fn), tuple(sorted(settings.items())))
    return id(loss_fn)


def memo_key(op: Any, x: Any, y: Tensor) -> tuple[Any, ...]:
    """What a trace, a path chosen or a block mode remembered in :data:`MEMO` for ``op`` and this batch's
    shapes depends on."""
    return (
        type(op).__name__,
        loss_key(op.loss_fn),
        op.bn_mode,
        tuple(op.param_names),
        tuple(op._fixed_names),
        tuple(signature(t) for t in model_tensors(op)),
        signature(x),
        signature(y),
        tuple((name, id(m)) for name, m in op.model.named_modules()),
    )


def linear_inputs(op: Any, x: Tensor, y: Tensor, cl: bool) -> list[Tensor]:
    """The primal inputs of a traced product, ``(*params, *fixed, x, y)``, in layout ``cl``."""
    return [layout(t, cl) for t in (*model_tensors(op), x, y)]


def versions(op: Any) -> tuple[int, ...]:
    """The version counters of the model's tensors (they change when the weights do)."""
    return tuple(t._version for t in model_tensors(op))


def linearization(op: Any, x: Any, y: Tensor, cl: bool) -> Linearization:
    """``op``'s traced product for this batch's shapes and layout ``cl`` (from :data:`MEMO`, or traced now)."""
    if not isinstance(x, Tensor):
        raise RuntimeError(
            f"cannot linearise the {op.kind} products of this model: its inputs are a "
            f"{type(x).__name__}, not a tensor (use path='graph')"
        )
    key = ("trace", cl, *memo_key(op, x, y))
    lin = MEMO.recall(op.model, key)
    if lin is None:
        inputs = linear_inputs(op, x, y, cl)
        tangents = [layout(torch.zeros_like(p), cl) for p in op.params]
        try:
            with batchnorm_mode(op.model, op.bn_mode):
                lin = Linearization(op._product_fn(), [*inputs, *tangents], len(op.params))
        except Exception as err:  # noqa: BLE001 - said with the cause, and path="auto" stays on the graph
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise RuntimeError(
                f"cannot linearise the {op.kind} products of this model with {op.loss.name}: "
                f"{type(err).__name__}: {first[:300]} (use path='graph')"
            ) from err
        MEMO.remember(op.model, key, lin, op.loss_fn)
        if op._graph_nodes:
            MEMO.trace_rate[type(op).__name__] = lin.trace_seconds / op._graph_nodes
    return lin


def build_linearized(op: Any, x: Any, y: Tensor, cl: bool, measure: bool) -> tuple[Any, int]:
    """``(state, bytes)`` of one batch on the linearised path: the residuals (bytes only when ``measure``)."""
    lin = linearization(op, x, y, cl)
    residuals = lin.build(linear_inputs(op, x, y, cl))
    given = [*model_tensors(op), x, y]
    return (lin, residuals, versions(op), cl), (storage_bytes(residuals, given) if measure else 0)


@contextmanager
def batching_fallbacks_quiet() -> Iterator[None]:
    """Silence the warning that a vectorised op has no batching rule and runs in a loop: the path chooser
    times vectorised blocks against looped ones, so the slowdown is measured and avoided, not hidden."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        yield


def apply_linearized(op: Any, state: Any, vs: list[list[Tensor]], keep: bool, batched: bool) -> list[Tensor]:
    """Products ``[P]`` on a linearised state for each vector (given per parameter); ``batched``: ``vmap``
    a block; ``keep=False``: the state is released during its last product."""
    lin, residuals, built, cl = state
    if built != versions(op):
        raise RuntimeError(
            f"the model's tensors changed since this {op.kind} operator linearised its batches: "
            f"call clear_cache() after changing the weights"
        )
    if batched and len(vs) > 1:
        try:
            stacked = [torch.stack([v[i] for v in vs]) for i in range(len(op.params))]
            with batching_fallbacks_quiet():
                out = vmap(lambda *t: tuple(lin.apply(residuals, [layout(a, cl) for a in t])))(*stacked)
            return list(op.flatten(list(out)).unbind(0))
        except RuntimeError:
            pass
    last = len(vs) - 1  # a state that is not kept is released during its last product
    return [
        op.flatten(lin.apply(residuals, [layout(a, cl) for a in v], free=not keep and j == last))
        for j, v in enumerate(vs)
    ]


# ------------------------------------------------------------------ pieces of the product functions
def functional_model(op: Any) -> Callable[[Sequence[Tensor]], tuple[Any, ...]]:
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


def tangent_with_target(f: Callable[[Any, Tensor], Any], primal: Any, tangent: Any, y: Tensor) -> Any:
    """The tangent of ``f(primal, y)`` along ``tangent``. A floating-point target gets an
    explicit zero tangent: some forward-mode rules (a mean ``mse_loss``'s backward) fail on
    the implicit one."""
    if y.is_floating_point():
        return jvp(f, (primal, y), (tangent, torch.zeros_like(y)))[1]
    return jvp(lambda p: f(p, y), (primal,), (tangent,))[1]
