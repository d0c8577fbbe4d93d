r"""Curvature matrices of a network's loss as matrix-free linear operators.

Every operator here is a symmetric :math:`P \times P` matrix, :math:`P` the number of
selected parameters, that is only ever touched through products :math:`v \mapsto A v`.
The base class :class:`CurvatureOperator` owns everything that is not specific to one
matrix: the loss and its reduction, the loop over batches and their weighting, the
BatchNorm mode, the checks, the per-batch cache of autograd graphs and the reduction across
processes. A subclass only says how to build per-batch state and how to multiply with it on
one batch.

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
import inspect
import math
import warnings
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
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap
from torch.nn import functional as F

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "BN_MODES",
    "GGN_LOSSES",
    "REDUCTIONS",
    "SUPPORTED_LOSSES",
    "CurvatureOperator",
    "GGNOperator",
    "HessianOperator",
    "LossInfo",
    "batch_operator",
    "batchnorm_mode",
    "resolve_loss",
]

#: Default memory budget (bytes) for autograd graphs kept between products.
DEFAULT_CACHE_BYTES = 2 * 1024**3

#: Accepted values of ``bn_mode``.
BN_MODES = ("eval", "train")

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
            (the first-order autograd graph, i.e. saved activations). Batches whose state
            fits are built once and reused by every later product (Lanczos, SLQ, trace);
            the rest are recomputed each time. ``0`` disables caching. The state of a
            batch is measured when it is first built (:attr:`cache_nbytes`).
        check_finite: raise :class:`FloatingPointError` when a product has a NaN or inf.
        distributed: sum products across the processes of ``torch.distributed`` (default:
            whenever it is initialised). Each process passes its own shard of the data;
            the result equals one process over the union of the shards.

    Products: :meth:`matvec` takes ``[P]`` or a block ``[k, P]`` and returns the same
    shape, in the dtype of the parameters (float32 products, typically). The parameter
    order is that of ``params`` (default ``model.parameters()``), each flattened.

    If the model's weights change, call :meth:`clear_cache` (a stale cached graph is
    detected by autograd's version counter and raises).
    """

    #: Name of the matrix, used in messages.
    kind: str = "curvature"
    #: Whether the matrix needs the loss's Hessian in the network output (the GGN does).
    needs_output_hessian: bool = False

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
    ) -> None:
        #: The loss as the operator understands it: name, family, reduction (:class:`LossInfo`).
        self.loss: LossInfo = resolve_loss(loss_fn, reduction, ggn=self.needs_output_hessian, owner=type(self).__name__)
        if bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
        if not math.isfinite(weight_decay):
            raise ValueError(f"weight_decay must be finite, got {weight_decay}")
        if cache_bytes < 0:
            raise ValueError(f"cache_bytes must be >= 0, got {cache_bytes}")
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

        self._cache: dict[int, Any] = {}
        self._cache_sizes: dict[int, int] = {}
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
        """Drop every cached per-batch graph (call after the weights change)."""
        self._cache.clear()
        self._cache_sizes.clear()
        self._no_cache.clear()

    # ---------------------------------------------------------- subclass hooks
    def _build(self, x: Any, y: Tensor) -> Any:
        """Per-batch state for products (called inside :func:`batchnorm_mode`)."""
        raise NotImplementedError

    def _apply(self, state: Any, vs: list[list[Tensor]], keep: bool) -> list[Tensor]:
        """Batch products ``A_b v`` for each vector (given per parameter); flat results."""
        raise NotImplementedError

    # ------------------------------------------------------------------ products
    def _state_for(self, i: int, batch: Batch) -> tuple[Any, bool]:
        if i in self._cache:
            return self._cache[i], True
        x, y = self._to_device(batch)
        want = self.cache_bytes > 0 and i not in self._no_cache
        sizes: dict[int, int] = {}

        def pack(t: Tensor) -> Tensor:
            try:
                st = t.untyped_storage()
                sizes[st.data_ptr()] = st.nbytes()
            except (RuntimeError, NotImplementedError):
                pass
            return t

        with batchnorm_mode(self.model, self.bn_mode):
            if want:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    state = self._build(x, y)
            else:
                state = self._build(x, y)
        if want:
            nbytes = sum(sizes.values())
            if self.cache_nbytes + nbytes <= self.cache_bytes:
                self._cache[i] = state
                self._cache_sizes[i] = nbytes
                return state, True
            self._no_cache.add(i)
        return state, False

    def _matmat(self, V: Tensor) -> Tensor:
        k = V.shape[0]
        vs = [self.unflatten(V[j]) for j in range(k)]
        out = torch.zeros(k, self.dim, dtype=self.dtype, device=self.device)
        for i, batch in enumerate(self._data):
            c = self.batch_weights[i] if i < len(self.batch_weights) else self._weight_of(batch, _batch_size(batch))
            if c == 0:
                continue
            state, cached = self._state_for(i, batch)
            res = self._apply(state, vs, keep=cached)
            del state
            for j, r in enumerate(res):
                out[j].add_(r, alpha=c)
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
        return (
            f"{type(self).__name__}(dim={self.dim}, loss={self.loss.name}, num_samples={self.num_samples}, "
            f"batches={len(self.batch_sizes)}, bn_mode={self.bn_mode!r}, weight_decay={self.weight_decay})"
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

    Products are reverse-over-reverse: per batch the first-order graph of
    :math:`g_b = \nabla_w L_b` is built once (``create_graph``) and
    :math:`H_b v = \nabla_w (g_b^\top v)` is one more backward pass through it. The graph is
    kept between products while it fits in ``cache_bytes`` (see :class:`CurvatureOperator`
    for the arguments).
    """

    kind = "Hessian"

    def _build(self, x: Any, y: Tensor) -> Any:
        with torch.enable_grad():
            loss = self.loss_fn(self.model(x), y)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return grads

    def _apply(self, state: Any, vs: list[list[Tensor]], keep: bool) -> list[Tensor]:
        grads = state
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not live:
            return [torch.zeros(self.dim, dtype=self.dtype, device=self.device) for _ in vs]
        outs = [grads[i] for i in live]
        return _backward_block(outs, self.params, [[v[i] for i in live] for v in vs], keep, self.flatten)


def _backward_block(
    outputs: list[Tensor],
    inputs: list[Tensor],
    cotangents: list[list[Tensor]],
    keep: bool,
    flatten: Callable[[Sequence[Tensor]], Tensor],
) -> list[Tensor]:
    """Vector-Jacobian products of ``outputs`` w.r.t. ``inputs`` for each cotangent list.

    Blocks of several cotangents go through one batched backward (``is_grads_batched``);
    ops without a batching rule fall back to one backward per cotangent.
    """

    def fill(gs: Sequence[Tensor | None], lead: tuple[int, ...]) -> list[Tensor]:
        return [torch.zeros(*lead, *p.shape, dtype=p.dtype, device=p.device) if g is None else g for g, p in zip(gs, inputs)]

    k = len(cotangents)
    if k > 1:
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

    Per batch: :math:`J v` by forward mode (``torch.func.jvp``), :math:`\Lambda (J v)` by a
    double backward of ``loss_fn`` in the output, then :math:`J^\top(\cdot)` by a backward
    pass through the output's graph; both graphs are kept between products while they fit
    in ``cache_bytes``. Same arguments as :class:`CurvatureOperator`.
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

    def _apply(self, state: Any, vs: list[list[Tensor]], keep: bool) -> list[Tensor]:
        x, out, leaf, g_out = state
        if not g_out.requires_grad:  # the loss is linear in the output: Lambda = 0
            return [torch.zeros(self.dim, dtype=self.dtype, device=self.device) for _ in vs]
        jvs = self._jacobian_products(x, vs)
        ljv = _backward_block([g_out], [leaf], [[u] for u in jvs], keep, lambda ts: ts[0])
        return _backward_block([out], self.params, [[c] for c in ljv], keep, self.flatten)

    def _jacobian_products(self, x: Any, vs: list[list[Tensor]]) -> list[Tensor]:
        """:math:`J v` (shaped like the output) for each vector, by forward mode."""
        names = self.param_names
        primals = tuple(p.detach() for p in self.params)

        def jv(v: tuple[Tensor, ...]) -> Tensor:
            return jvp(lambda ps: functional_call(self.model, dict(zip(names, ps)), (x,)), (primals,), (v,))[1]

        with batchnorm_mode(self.model, self.bn_mode):
            if len(vs) > 1:
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
