r"""Curvature matrices of a network's loss as matrix-free linear operators.

Every operator here is a symmetric :math:`P \times P` matrix, :math:`P` the number of
selected parameters, that is only ever touched through products :math:`v \mapsto A v`.
The base class :class:`CurvatureOperator` owns everything that is not specific to one
matrix: the loop over batches and their weighting, the BatchNorm mode, the checks,
the per-batch cache of autograd graphs and the reduction across processes. A subclass
only says how to build per-batch state and how to multiply with it on one batch.

For a dataset split into batches :math:`b` of sizes :math:`n_b` (:math:`N = \sum_b n_b`)
and a loss that is the mean over the samples of a batch,

.. math::

    A v = \sum_b \frac{n_b}{N} A_b v + \lambda_{\mathrm{wd}} v,

where :math:`A_b` is the curvature of the batch loss :math:`L_b = \frac{1}{n_b}\sum_{i\in b}
\ell_i`. With every sample once, :math:`A` is the curvature of the empirical loss
:math:`L_{\mathrm{emp}} = \frac1N \sum_i \ell_i` (plus :math:`\frac{\lambda_{\mathrm{wd}}}{2}
\lVert w \rVert^2`), whatever the batching, as long as BatchNorm uses its running
statistics (``bn_mode="eval"``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

# Forward-mode AD (used by the GGN product) loads PyTorch's own jvp decompositions on first use,
# and that module still calls the deprecated torch.jit.script. Load it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import torch._decomp.decompositions_for_jvp  # noqa: F401
import torch.distributed as dist
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "BN_MODES",
    "CurvatureOperator",
    "GGNOperator",
    "HessianOperator",
    "batch_operator",
    "batchnorm_mode",
]

#: Default memory budget (bytes) for autograd graphs kept between products.
DEFAULT_CACHE_BYTES = 2 * 1024**3

#: Accepted values of ``bn_mode``.
BN_MODES = ("eval", "train")

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


class CurvatureOperator:
    r"""Base class: a symmetric curvature matrix :math:`A \in \mathbb{R}^{P\times P}` of a
    network's loss, averaged over data, available through products.

    Args:
        model: the network; its parameters are read, never modified.
        loss_fn: ``loss_fn(output, target) -> scalar``, the **mean** loss over the batch
            (e.g. ``torch.nn.CrossEntropyLoss()``). It must be a pure function of its
            inputs (for the GGN it is differentiated twice with ``torch.func``).
        data: one batch ``(x, y)`` or an iterable of batches (a list, a ``DataLoader``,...).
            Over several batches the operator is the exact sample average, batches weighted
            by their size. An iterable must yield the same batches in the same order on
            every pass (no shuffling, no augmentation). One-shot iterators are consumed
            into a list.
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
    ) -> None:
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
        local = sum(sizes)
        self.local_num_samples: int = local
        total = local
        if self._distributed:
            t = torch.tensor([float(local)], dtype=torch.float64, device=self._comm_device())
            dist.all_reduce(t)
            total = int(t.item())
        if total == 0:
            raise ValueError("the dataset is empty: the curvature needs at least one sample")
        #: :math:`N`, the number of samples over all batches (and processes).
        self.num_samples: int = total

        self._cache: dict[int, Any] = {}
        self._cache_sizes: dict[int, int] = {}
        self._no_cache: set[int] = set()
        #: Number of products with a single vector computed so far.
        self.num_products: int = 0

    # ------------------------------------------------------------------ helpers
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
            n = self.batch_sizes[i] if i < len(self.batch_sizes) else _batch_size(batch)
            if n == 0:
                continue
            state, cached = self._state_for(i, batch)
            res = self._apply(state, vs, keep=cached)
            del state
            for j, r in enumerate(res):
                out[j].add_(r, alpha=float(n))
        if self._distributed:
            comm = out.to(self._comm_device())
            dist.all_reduce(comm)
            out = comm.to(self.device)
        out.div_(self.num_samples)
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
            f"{type(self).__name__}(dim={self.dim}, num_samples={self.num_samples}, "
            f"batches={len(self.batch_sizes)}, bn_mode={self.bn_mode!r}, weight_decay={self.weight_decay})"
        )


class HessianOperator(CurvatureOperator):
    r"""The Hessian :math:`H = \nabla_w^2 L` of the mean loss over ``data`` (plus
    :math:`\lambda_{\mathrm{wd}} I`); with the whole training set, the empirical Hessian
    :math:`H_{\mathrm{emp}}`, with one batch the batch Hessian :math:`H_{\mathrm{batch}}`.

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
    r"""The generalised Gauss-Newton matrix
    :math:`G = \frac1N \sum_i J_i^\top \Lambda_i J_i` (plus :math:`\lambda_{\mathrm{wd}} I`),
    :math:`J_i = \partial f(x_i; w) / \partial w` the Jacobian of the network output and
    :math:`\Lambda_i` the Hessian of the loss in the output (PSD for cross-entropy and
    squared error). It drops the second-derivative-of-the-network term of the Hessian.

    Per batch: :math:`J v` by forward mode (``torch.func.jvp``), :math:`\Lambda (J v)` by a
    Hessian-vector product of ``loss_fn`` in the output, then :math:`J^\top(\cdot)` by a
    backward pass through the output's graph, which is kept between products while it fits
    in ``cache_bytes``. Same arguments as :class:`CurvatureOperator`.
    """

    kind = "GGN"

    def _build(self, x: Any, y: Tensor) -> Any:
        with torch.enable_grad():
            out = self.model(x)
        return (x, out, y)

    def _apply(self, state: Any, vs: list[list[Tensor]], keep: bool) -> list[Tensor]:
        x, out, y = state
        names = self.param_names
        loss_fn = self.loss_fn
        primals = tuple(p.detach() for p in self.params)
        out_d = out.detach()

        def f(ps: tuple[Tensor, ...]) -> Tensor:
            return functional_call(self.model, dict(zip(names, ps)), (x,))

        def loss_of_out(o: Tensor) -> Tensor:
            return loss_fn(o, y)

        def lam_j(v: tuple[Tensor, ...]) -> Tensor:
            jv = jvp(f, (primals,), (v,))[1]
            return jvp(grad(loss_of_out), (out_d,), (jv,))[1]

        with batchnorm_mode(self.model, self.bn_mode):
            if len(vs) > 1:
                try:
                    V = tuple(torch.stack([v[i] for v in vs]) for i in range(len(self.params)))
                    ljv = list(vmap(lam_j)(V).unbind(0))
                except RuntimeError:
                    ljv = [lam_j(tuple(v)) for v in vs]
            else:
                ljv = [lam_j(tuple(vs[0]))]
        return _backward_block([out], self.params, [[c] for c in ljv], keep, self.flatten)


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
    \varepsilon(w)`).

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
