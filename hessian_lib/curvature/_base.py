r"""The base of the curvature operators: a matrix-free symmetric matrix of a network's loss over data.

Every operator is a symmetric :math:`P \times P` matrix, :math:`P` the number of selected parameters, that is
only ever touched through products :math:`v \mapsto A v`. :class:`CurvatureOperator` checks its arguments,
weights the batches, asks its :class:`~hessian_lib.curvature._autotune.PathChooser` for the product path (a
traced linearisation or the first-order autograd graph), its
:class:`~hessian_lib.curvature._cache.StateCache` for each batch's state, multiplies, and sums across
processes. A subclass only says how to multiply on one batch: the product as a ``torch.func`` function (traced
for the linearised path) and the autograd version (the graph path).

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

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from hessian_lib.curvature._autotune import PATHS, PathChooser
from hessian_lib.curvature._cache import DEFAULT_CACHE_BYTES, StateCache, graph_walk
from hessian_lib.curvature._data import (
    BN_MODES,
    Batch,
    LossFn,
    as_batches,
    batch_size,
    batchnorm_mode,
    select_params,
    to_device,
)
from hessian_lib.curvature._distributed import is_active, sum_floats, sum_tensor
from hessian_lib.curvature._linearize import (
    apply_linearized,
    batching_fallbacks_quiet,
    build_linearized,
    model_tensors,
)
from hessian_lib.curvature.losses import LossInfo, resolve_loss

__all__ = ["CurvatureOperator", "backward_block"]


class CurvatureOperator:
    r"""Base class: a symmetric curvature matrix :math:`A \in \mathbb{R}^{P\times P}` of the loss the user wrote
    over all of ``data``, available through products: :math:`A = \sum_b A_b` for ``reduction="sum"``,
    :math:`A = \sum_b (D_b / D) A_b` for ``"mean"`` (:meth:`LossInfo.denominator`, and the module docstring).

    Args:
        model: the network; its parameters are read, never modified.
        loss_fn: ``loss_fn(output, target) -> scalar`` for one batch, e.g. ``torch.nn.CrossEntropyLoss()``.
            Checked by :func:`resolve_loss`: :data:`SUPPORTED_LOSSES` (modules, functional forms, partials)
            with reduction ``"mean"`` or ``"sum"``; other ``torch.nn`` losses and callables for the Hessian;
            the GGN refuses ``NLLLoss`` and other ``torch.nn`` losses. It must be a pure function of its inputs.
        data: one batch ``(x, y)`` or an iterable of batches (a list, a ``DataLoader``, ...) of any sizes,
            yielding the same batches in the same order on every pass (no shuffling, no augmentation).
            One-shot iterators are consumed into a list.
        reduction: ``"mean"`` or ``"sum"``: needed only for a callable that does not say (a ``lambda``);
            otherwise it must match the loss's own.
        params: the parameters (tensors of ``model`` or their names) the matrix is taken over; default all
            with ``requires_grad``. A subset gives the principal sub-matrix, e.g. per-layer spectra.
        weight_decay: :math:`\lambda_{\mathrm{wd}}`; adds :math:`\lambda_{\mathrm{wd}} v`.
        bn_mode: ``"eval"`` or ``"train"``, see :func:`batchnorm_mode`.
        cache_bytes: memory budget (bytes) for per-batch state kept between products (the linearisation's
            residuals or the first-order graph's saved activations), measured when built
            (:attr:`cache_nbytes`). Batches whose state fits are built once and reused by every later
            product; the rest are rebuilt each time and released tensor by tensor during their last product.
            ``0`` asks for the least memory: nothing is kept, blocks are multiplied vector by vector, SLQ
            runs its probes one after the other (:meth:`blocks_pay`) and, when the loss is a sum over samples,
            batches are multiplied in chunks of :attr:`least_memory_chunk` samples (:meth:`_pieces`). With a
            cache on the CPU such batches go in chunks of :attr:`kept_chunk` samples, each chunk's state kept
            on its own: building and multiplying then hold one chunk's temporaries, not the batch's.
            While the ``path="auto"`` trial runs, the first batch is briefly held on two paths at once and
            the other batches are dropped.
        path: ``"linearize"`` (forward-over-reverse, traced and split), ``"graph"`` (reverse-over-reverse
            through the kept first-order graph) or ``"auto"`` (default: a timed trial on the first batch keeps
            the faster); see :mod:`hessian_lib.curvature._autotune`. :attr:`path_in_use` and ``repr`` say which
            path runs and why.
        channels_last: the linearised path runs on channels-last copies of the 4-D tensors (often faster for
            convolutions; the same products). ``None`` (default): as given, except that the ``path="auto"``
            trial also measures channels-last when the inputs are images.
        check_finite: raise :class:`FloatingPointError` when a product has a NaN or inf.
        distributed: sum products across the processes of ``torch.distributed`` (default: whenever it is
            initialised). Each process passes its own shard; the result equals one process over their union.

    Products: :meth:`matvec` takes ``[P]`` or a block ``[k, P]`` and returns the same shape in the dtype of
    the parameters; the parameter order is that of ``params``, each flattened. If the model's weights change,
    call :meth:`clear_cache` (stale cached state is detected by the tensors' version counters and raises).
    """

    #: Name of the matrix, used in messages.
    kind: str = "curvature"
    #: Whether the matrix needs the loss's Hessian in the network output (the GGN does).
    needs_output_hessian: bool = False
    #: :meth:`matvec` takes blocks ``[k, P]`` (SLQ then runs its probes in lockstep).
    accepts_blocks: bool = True
    #: Samples per chunk of a batch with ``cache_bytes=0`` when the loss decomposes (:meth:`_pieces`).
    least_memory_chunk: int = 64
    #: Samples per chunk with a cache, on the CPU, when the loss decomposes; ``None``: whole batches. A GPU
    #: always multiplies whole batches with a cache (small chunks would leave it idle).
    kept_chunk: int | None = 64
    #: Samples per chunk of the first product's single pass (:meth:`PathChooser.single_pass`) when batches go
    #: in chunks of :attr:`kept_chunk`: the pass keeps nothing, so only its transient memory grows with it
    #: (ResNet of ``benchmarks/bench_architectures.py``: 0.75x PyHessian's time at 128 against 0.83x at 64).
    single_pass_chunk: int = 128

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
        self.model, self.loss_fn, self.weight_decay, self.bn_mode = model, loss_fn, float(weight_decay), bn_mode
        self.cache_bytes, self.check_finite = int(cache_bytes), check_finite
        self._distributed = is_active(distributed)
        chosen = select_params(model, params)
        self.param_names: list[str] = [n for n, _ in chosen]
        self.params: list[Tensor] = [p for _, p in chosen]
        self._shapes = [p.shape for p in self.params]
        self._numels = [p.numel() for p in self.params]
        self.dim: int = int(sum(self._numels))
        self.device: torch.device = self.params[0].device
        self.dtype: torch.dtype = self.params[0].dtype

        self._data: Iterable[Batch] = as_batches(data)
        sizes = [batch_size(b) for b in self._data]
        self.batch_sizes: list[int] = sizes
        #: Weight of each batch's curvature: :math:`D_b` for a mean loss, 1 for a sum.
        self.batch_weights: list[float] = [self.loss.batch_weight(b[1], n) for b, n in zip(self._data, sizes)]
        self.local_num_samples: int = sum(self.batch_sizes)
        total, denom = sum_floats([float(self.local_num_samples), sum(self.batch_weights)], self._distributed)
        if total == 0:
            raise ValueError("the dataset is empty: the curvature needs at least one sample")
        #: :math:`N`, the number of samples over all batches (and processes).
        self.num_samples: int = int(total)
        if self.loss.reduction == "mean" and denom == 0:
            raise ValueError(f"{self.loss.name} averages over no target of the data (every target ignored?)")
        #: What the summed products are divided by: :math:`D = \sum_b D_b` (mean) or 1 (sum).
        self.normaliser: float = denom if self.loss.reduction == "mean" else 1.0
        chosen_ids = {id(p) for p in self.params}
        named_all = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        #: Model tensors that enter the products as constants (other parameters, buffers).
        self._fixed_names: list[str] = [n for n, t in named_all.items() if id(t) not in chosen_ids]

        #: The requested path (``"auto"``, ``"linearize"`` or ``"graph"``).
        self.path: str = path
        self._chooser = PathChooser(path, channels_last)
        self._cache = StateCache(self.cache_bytes)
        self._piece_ids: list[int] = []  # indices of the pieces of the last product (see _pieces)
        self._graph_nodes = 0  # autograd nodes of a first-order graph (for the trace-time estimate)
        self._last_build_seconds = 0.0
        #: Number of products with a single vector computed so far.
        self.num_products: int = 0

    # ------------------------------------------------------------------ helpers
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

    # ------------------------------------------------------------------ path and cache
    @property
    def path_in_use(self) -> str:
        """The path products run on now: ``"linearize"`` or ``"graph"``."""
        return self._chooser.active

    @property
    def path_timings(self) -> dict[str, float]:
        """What the auto trial measured on the first batch (seconds), empty before it."""
        return self._chooser.path_timings

    @property
    def block_timings(self) -> dict[str, tuple[float, float]]:
        """Per-vector seconds of the first block product, looped and vectorised, per path."""
        return self._chooser.block_timings

    @property
    def cache_nbytes(self) -> int:
        """Bytes held by cached per-batch state right now (as measured when built)."""
        return self._cache.nbytes

    def clear_cache(self) -> None:
        """Drop every cached per-batch state (call after the weights change). The path chosen
        and the traces stay: they do not depend on the weights."""
        self._cache.clear()

    def expect_products(self, n: int) -> None:
        """Say that about ``n`` more single-vector products will follow (a block ``[k, P]`` counts ``k``);
        :func:`lanczos`, :func:`slq_density`, the extremal eigensolvers and the trace estimators do. With
        ``path="auto"``, from ``PathChooser.early_trial_products`` on, the trial runs on the next product
        instead of after the graph's products have paid for it. It changes nothing else."""
        self._chooser.expect(n)

    def blocks_pay(self, k: int) -> bool:
        """Whether a block of ``k`` vectors costs less now than ``k`` single products (SLQ runs its probes in
        lockstep while it does, each holding its Lanczos basis): while the path or its block timing is still
        to be measured, when a vectorised block was measured faster, or when some batch's state is built anew
        for every product (one build then serves the block). Never with ``cache_bytes=0``, which asks for the
        least memory. The same answer on every process under ``torch.distributed``."""
        if k < 2 or self.cache_bytes == 0:
            pays = False
        else:
            batched = self._chooser.known_block_mode(k)
            pieces = self._piece_ids or [i for i, w in enumerate(self.batch_weights) if w != 0]
            rebuilt = any(i not in self._cache for i in pieces)
            pays = batched is None or batched or rebuilt
        if self._distributed:
            pays = sum_floats([float(pays)], True)[0] > 0
        return bool(pays)

    # ---------------------------------------------------------- subclass hooks
    def _build(self, x: Any, y: Tensor) -> Any:
        """Per-batch state of the ``"graph"`` path (called inside :func:`batchnorm_mode`)."""
        raise NotImplementedError

    def _apply(self, state: Any, vs: list[list[Tensor]], keep: bool, batched: bool) -> list[Tensor]:
        """``"graph"`` path: batch products ``A_b v`` for each vector (given per parameter), flat;
        ``batched``: vectorise a block rather than loop over it."""
        raise NotImplementedError

    def _single_pass(self, x: Any, y: Tensor, v: list[Tensor]) -> list[Tensor] | None:
        """One batch's product ``A_b v`` per parameter in one eager pass that keeps nothing (the first product
        of an auto operator, see :meth:`PathChooser.single_pass`); ``None``: this operator has no such pass."""
        return None

    def _single_products(self, v: list[Tensor], out: Tensor) -> bool:
        """Add the weighted batch products ``D_b A_b v`` into ``out`` ``[P]``, each by :meth:`_single_pass`, in
        chunks of :attr:`single_pass_chunk` where batches go in chunks of :attr:`kept_chunk` (in those of
        :attr:`least_memory_chunk` with ``cache_bytes=0``); ``False``, with ``out`` zero again, when there is no
        such pass or the model's ops lack forward-mode rules (then never again for this operator)."""
        m = self._chunk()
        chunk = m if m is None or self.cache_bytes == 0 else max(m, self.single_pass_chunk)
        for _, batch, c in self._pieces(chunk):
            x, y = to_device(batch, self.device)
            try:
                with batchnorm_mode(self.model, self.bn_mode):
                    parts = self._single_pass(x, y, v)
            except (NotImplementedError, RuntimeError):
                parts = None
            if parts is None:
                self._chooser.single_passes = None
                out.zero_()
                return False
            out.add_(self.flatten(parts), alpha=c)
        return True

    def _product_fn(self) -> Callable[..., Any]:
        """``"linearize"`` path: ``fn(*params, *fixed, x, y, *v) -> A_b v`` per parameter, in
        ``torch.func`` terms (traced, see :class:`~hessian_lib.curvature._linearize.Linearization`)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ per-batch state
    def _build_state(self, path: str, x: Any, y: Tensor, measure: bool, cl: bool | None = None) -> tuple[Any, int]:
        """``(state, bytes)`` of one batch on ``path`` (the linearised path in layout ``cl``,
        default the operator's); bytes only when ``measure``."""
        if path == "linearize":
            return build_linearized(self, x, y, self._chooser.cl if cl is None else cl, measure)
        start = time.perf_counter()
        with batchnorm_mode(self.model, self.bn_mode):
            state = self._build(x, y)
        self._last_build_seconds = time.perf_counter() - start
        nbytes = 0
        if measure or not self._graph_nodes:
            tensors = state if isinstance(state, (tuple, list)) else [state]
            nodes, nbytes = graph_walk(tensors, exclude=[*model_tensors(self), x, y], saved=measure)
            self._graph_nodes = self._graph_nodes or nodes
        return state, (nbytes if measure else 0)

    def _apply_state(self, path: str, state: Any, vs: list[list[Tensor]], keep: bool, batched: bool) -> list[Tensor]:
        """Products ``[P]`` of one batch's ``state`` on ``path`` for each vector (given per parameter)."""
        if path == "graph":
            return self._apply(state, vs, keep, batched)
        return apply_linearized(self, state, vs, keep, batched)

    # ------------------------------------------------------------------ products
    def _chunk(self) -> int | None:
        """Samples per chunk that products split each batch into, ``None`` for whole batches. Chunks need a
        supported ``torch.nn`` loss (a sum over samples, weighted by :meth:`LossInfo.batch_weight`) and no
        BatchNorm on batch statistics (``bn_mode="train"``); then :attr:`least_memory_chunk` with
        ``cache_bytes=0``, :attr:`kept_chunk` with a cache on the CPU."""
        if self.loss.family is None:
            return None
        if self.bn_mode == "train" and any(isinstance(m, _BatchNorm) for m in self.model.modules()):
            return None
        if self.cache_bytes == 0:
            return self.least_memory_chunk
        return self.kept_chunk if self.device.type == "cpu" else None

    def _pieces(self, chunk: int | None = None) -> Iterator[tuple[int, Batch, float]]:
        """``(index, batch, weight)`` of what a product multiplies on: each batch of nonzero weight, or, with a
        :meth:`_chunk` size, chunks of it (indexed in order). A chunk's curvature weighted by its
        :math:`D_c` sums to the batch's weighted by :math:`D_b`, so the matrix is the same; a chunk's state
        is built (and kept or freed) on its own, so the product's transient memory follows the chunk, not the
        batch. ``chunk``: another chunk size than :meth:`_chunk`'s (the indices are then those of its chunks)."""
        weights, m, j = self.batch_weights, chunk or self._chunk(), 0
        chunked = m is not None
        for i, batch in enumerate(self._data):
            c = weights[i] if i < len(weights) else self.loss.batch_weight(batch[1], batch_size(batch))
            if c == 0:
                continue
            x, y = batch[0], batch[1]
            n = batch_size(batch)
            if not (chunked and n > m and isinstance(x, Tensor) and isinstance(y, Tensor) and x.shape[0] == n):
                yield (j if chunked else i), batch, c
                j += 1
                continue
            for s in range(0, n, m):
                part = (x[s : s + m], y[s : s + m])
                cc = self.loss.batch_weight(part[1], batch_size(part))
                if cc != 0:
                    yield j, part, cc
                    j += 1

    def _matmat(self, V: Tensor) -> Tensor:
        k = V.shape[0]
        vs = [self.unflatten(V[j]) for j in range(k)]
        out = torch.zeros(k, self.dim, dtype=self.dtype, device=self.device)
        first, ids, single = True, [], False
        for i, batch, c in self._pieces():
            ids.append(i)
            start = time.perf_counter()
            if first and self._chooser.due(self, batch):
                res = self._chooser.trial(self, i, batch, vs)
            else:
                single = first and self._chooser.single_pass(k) and self._single_products(vs[0], out[0])
                res = [] if single else self._chooser.products(self, i, batch, vs)
            self._chooser.spent += time.perf_counter() - start
            if single:  # every batch done in the pass's own chunks
                ids = [j for j, _, _ in self._pieces()]
                break
            first = False
            for j, r in enumerate(res):
                out[j].add_(r, alpha=c)
            del res
            self._cache.collect()
        self._piece_ids = ids
        if single:
            self._chooser.single_passes += 1
            self._chooser.why = (
                "undecided: graph until the products pay for a trial (the first: one forward-over-reverse pass)"
            )
        out = sum_tensor(out, self._distributed)
        out.div_(self.normaliser)
        if self.weight_decay:
            out.add_(V, alpha=self.weight_decay)
        return out

    def matvec(self, v: Tensor) -> Tensor:
        r"""The product :math:`A v` of ``v`` ``[P]`` or a block ``[k, P]`` (any float dtype; cast to the
        parameters' dtype and device): ``[P]`` or ``[k, P]`` in the parameters' dtype, on their device.

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
        active, why = self._chooser.active, self._chooser.why
        path = f"path={active!r}" if self.path == active else f"path={self.path!r} -> {active!r}"
        if active == "linearize" and self._chooser.cl:
            path += " (channels-last)"
        chunk = self._chunk()
        if chunk is not None and self._piece_ids and len(self._piece_ids) != len(self.batch_sizes):
            kept = f"{len(self._cache)}/{len(self._piece_ids)} chunks of up to {chunk} samples kept"
        else:
            kept = f"{len(self._cache)}/{len(self.batch_sizes)} batches kept"
        kept += f" in {self.cache_nbytes / 2**20:.0f} MiB"
        return (
            f"{type(self).__name__}(dim={self.dim}, loss={self.loss.name}, num_samples={self.num_samples}, "
            f"batches={len(self.batch_sizes)}, bn_mode={self.bn_mode!r}, weight_decay={self.weight_decay}, "
            f"{path} [{why}], {kept})"
        )


def backward_block(
    outputs: list[Tensor],
    inputs: list[Tensor],
    cotangents: list[list[Tensor]],
    keep: bool,
    flatten: Callable[[Sequence[Tensor]], Tensor],
    batched: bool = True,
) -> list[Tensor]:
    """Vector-Jacobian products of ``outputs`` w.r.t. ``inputs`` for each cotangent list (the graph path).

    With ``batched``, blocks of several cotangents go through one batched backward
    (``is_grads_batched``); ops without a batching rule fall back to one backward per
    cotangent. ``keep=False``: the graph is freed by the last backward.
    """

    def fill(gs: Sequence[Tensor | None], lead: tuple[int, ...]) -> list[Tensor]:
        return [
            torch.zeros(*lead, *p.shape, dtype=p.dtype, device=p.device) if g is None else g
            for g, p in zip(gs, inputs)
        ]

    k = len(cotangents)
    if k > 1 and batched:
        try:
            stacked = [torch.stack([c[i] for c in cotangents]) for i in range(len(outputs))]
            with batching_fallbacks_quiet():
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
