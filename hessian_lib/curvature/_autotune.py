r"""How an operator computes its products, chosen by measurement (:class:`PathChooser`).

The paths (``path``, one of :data:`PATHS`):

* ``"linearize"``: forward-over-reverse. The product on one batch is traced once per input shape
  (``torch.func`` ``jvp`` of ``grad`` for the Hessian; ``jvp``, the output Hessian and ``vjp`` for the GGN,
  sharing one forward pass) into an aten graph, which is split into the part that does not depend on
  :math:`v` (run once per batch; its outputs, the residuals, are what is kept) and the tangent part that every
  product runs: a tangent forward and a tangent backward pass, like ``torch.func.linearize`` but built in one
  primal pass and shared by every batch of the same shape (:mod:`hessian_lib.curvature._linearize`).
* ``"graph"``: reverse-over-reverse. The first-order graph of the gradient (``create_graph``) is kept and
  every product is one more backward pass through it; the GGN keeps the network output's graph and runs
  :math:`Jv` by ``torch.func.jvp``.
* ``"auto"`` (default): runs a trial on the first batch and keeps the fastest path. The trial comes on the
  first product when at least :attr:`PathChooser.early_trial_products` products are announced
  (``expect_products``, which :func:`lanczos`, :func:`slq_density`, the extremal eigensolvers and the trace
  estimators call). Otherwise the operator starts on ``"graph"``, which costs nothing to set up, and runs the
  trial once the graph's products have taken as long as the linearisation would take to set up (the trace,
  estimated from the size of the autograd graph, plus one primal pass per kept batch: the rule of renting
  skis until their price is spent). The trial drops the kept state of the other batches, builds the
  linearisation of the first batch, multiplies the block's first vector both ways (the graph's time the best
  of its earlier products and its product in the trial, or, when that would make the graph win, the median of
  those and one more product; a candidate's the best of up to :attr:`PathChooser.trial_looks` applications,
  since the first ones run cold; CPU time on the CPU, synchronised wall time on a GPU), checks that they agree
  (relative difference at most :attr:`PathChooser.agreement_epsilons` float epsilons; where they do not, in float32
  or lower, the same product in float64 on a copy of the model decides: a candidate no more than
  :attr:`PathChooser.float64_slack` times further from it than the graph's product is right to float rounding,
  since ReLU masks and max-pooling choices set by rounding make the graph's float32 product no ground truth
  either) and keeps the faster (per product for kept batches,
  build plus product when nothing is kept); the block's other vectors go on the winner. The trace and the
  choice are remembered for the model, loss, BatchNorm mode and batch shape for the rest of the process, so
  later operators on new batches of the same size start on the winner (an operator whose caller announced
  nothing also on the winner of the other cache setting, ``cache_bytes=0`` or not, rather than run a trial).
  Models and losses the tracer cannot
  handle (data-dependent control flow, inputs that are not tensors, ops without forward-mode derivatives such
  as ``HuberLoss``) stay on ``"graph"``. The same seed gives bit-identical products on one path and block
  mode (below); a switch changes them at the level of float rounding.

The first product of an auto operator whose caller announced nothing, a single vector with nothing chosen or
kept yet, has nothing to amortise: where the operator has one (the Hessian), it runs as one eager
forward-over-reverse pass per batch (``torch.autograd.forward_ad``: a forward and a backward pass carrying
tangents, nothing kept; channels-last on the CPU for images; in chunks of ``single_pass_chunk`` samples where
a cache keeps chunks of ``kept_chunk``), cheaper than building and keeping the graph. The next product
starts on the graph as above; a model whose ops lack forward-mode rules goes on the graph at once.

Either way a block ``[k, P]`` is multiplied vector by vector or vectorised (``vmap`` / ``is_grads_batched``),
whichever measured faster per vector: after an auto trial, the first block on the trial's batch is vectorised
and compared with the trial's single product (the other batches go vector by vector until then); otherwise
the first block on the path is computed both ways. Always vector by vector with ``cache_bytes=0``, since a
vectorised block holds the intermediate tensors of ``k`` products at once.

With ``channels_last=None`` the trial also measures channels-last copies of the 4-D tensors when the inputs
are images.
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from hessian_lib.curvature._data import batch_size, to_device
from hessian_lib.curvature._linearize import MEMO, linearization, memo_key

__all__ = ["PATHS", "PathChooser", "clock"]

#: Accepted values of ``path`` (how products are computed, see the module docstring).
PATHS = ("auto", "linearize", "graph")


def clock(device: torch.device) -> Callable[[], float]:
    """Seconds for comparing two ways of computing the same product: on a GPU, wall time
    after synchronising; on the CPU, the process's CPU time, which counts the work done and
    not the moments the process waited for a core (the machine may be shared)."""
    if device.type == "cuda":

        def wall() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return wall
    return time.process_time


class PathChooser:
    """An operator's path and block mode: which it runs on now, why, and what was measured.

    Its methods take the operator ``op`` they serve (it holds no reference to it). ``path``: the requested
    path (:data:`PATHS`); ``channels_last``: the linearised path's layout, ``None`` to let the trial choose.
    """

    #: The trial applies a candidate path up to this many times on the first batch (the best counts) ...
    trial_looks: int = 3
    #: ... while its best so far is within this factor of the fastest path measured.
    trial_slower: float = 1.5
    #: Announced products (``expect_products``) from which the trial runs on the first product instead of
    #: renting the graph until its products pay for one.
    early_trial_products: int = 16
    #: Seconds of tracing per autograd node of the first-order graph until a trace of this kind was timed.
    trace_rate_guess: float = 0.03
    #: Extra seconds for the first trace in a process (``make_fx`` imports ``torch._dynamo``).
    first_trace_seconds: float = 3.0
    #: A linearised product agrees with the graph's within this many epsilons of the dtype (relative) ...
    agreement_epsilons: float = 1e4
    #: ... or, past that in float32 or lower, when its distance from the float64 product of the same batch and
    #: vector is at most this many times the graph product's distance from it.
    float64_slack: float = 2.0

    def __init__(self, path: str, channels_last: bool | None) -> None:
        #: The path products run on now: ``"linearize"`` or ``"graph"``.
        self.active = "linearize" if path == "linearize" else "graph"
        #: Whether the linearised path runs in channels-last layout.
        self.cl = bool(channels_last)
        self.cl_fixed = channels_last is not None
        #: Whether the path is settled (requested, or chosen by the trial).
        self.decided = path != "auto"
        #: Why the path is what it is (for ``repr``).
        self.why = "requested" if path != "auto" else "undecided: graph until the products pay for a trial"
        #: What the trial measured on the first batch (seconds), empty before it.
        self.path_timings: dict[str, float] = {}
        #: Seconds spent in products so far.
        self.spent = 0.0
        self.graph_product_seconds: dict[int, float] = {}  # batch -> best seconds of a kept graph's product
        self.expected = 0
        self.early = False
        #: ``(path, k)`` -> whether blocks of ``k`` are vectorised (``None``: not known yet).
        self.batched: dict[tuple[str, int], bool | None] = {}
        #: ``(path, batch)`` -> seconds of one product on the kept state, measured by the trial: the looped
        #: side of the first block's comparison on that batch.
        self.single_seconds: dict[tuple[str, int], float] = {}
        #: Per-vector seconds of the first block product, looped and vectorised, per path.
        self.block_timings: dict[str, tuple[float, float]] = {}
        #: Products run as one eager forward-over-reverse pass (:meth:`single_pass`); ``None`` once it failed.
        self.single_passes: int | None = 0

    # ------------------------------------------------------------------ state
    def expect(self, n: int) -> None:
        """About ``n`` more single-vector products follow (see ``CurvatureOperator.expect_products``)."""
        if n < 0:
            raise ValueError(f"the number of products to expect must be >= 0, got {n}")
        self.expected = max(self.expected, int(n))

    def known_block_mode(self, k: int) -> bool | None:
        """Whether blocks of ``k`` are vectorised on the settled path (``None``: not known yet)."""
        return self.batched.get((self.active, k)) if self.decided else None

    def single_pass(self, k: int) -> bool:
        """Whether this product is the first of an auto operator whose caller announced nothing (one vector,
        nothing chosen or spent yet, so nothing kept): then one eager forward-over-reverse pass per batch."""
        return k == 1 and not self.decided and not self.expected and self.spent == 0 and self.single_passes is not None

    def single_pass_layout(self, op: Any, x: Any) -> bool:
        """Channels-last for :meth:`single_pass` when asked, or, on the CPU, when the inputs are images."""
        if self.cl_fixed:
            return self.cl
        return op.device.type == "cpu" and self.layouts(op, x) == [False, True]

    def layouts(self, op: Any, x: Any) -> list[bool]:
        """The layouts the trial tries: channels-last too when the inputs are images."""
        images = isinstance(x, Tensor) and x.dim() == 4 and any(p.dim() == 4 for p in op.params)
        return [self.cl] if self.cl_fixed or not images else [False, True]

    def trace_estimate(self, op: Any, x: Any, y: Tensor) -> float:
        """Seconds the trial's traces for this batch would take (0 for those the process has)."""
        if not isinstance(x, Tensor):
            return 0.0
        key = memo_key(op, x, y)
        missing = sum(MEMO.recall(op.model, ("trace", cl, *key)) is None for cl in self.layouts(op, x))
        if not missing:
            return 0.0
        rate = MEMO.trace_rate.get(type(op).__name__, self.trace_rate_guess)
        first = 0.0 if "torch._dynamo" in sys.modules else self.first_trace_seconds
        return first + missing * rate * max(op._graph_nodes, 1)

    def _path_key(self, op: Any, x: Any, y: Tensor, kept: bool | None = None) -> tuple[Any, ...]:
        kept = op.cache_bytes > 0 if kept is None else kept
        return ("path", kept, self.cl if self.cl_fixed else None, *memo_key(op, x, y))

    def due(self, op: Any, batch: Any) -> bool:
        """Whether the auto path should run its trial on this product (first weighted batch)."""
        if self.decided:
            return False
        x, y = to_device(batch, op.device)
        if isinstance(x, Tensor):
            chosen = MEMO.recall(op.model, self._path_key(op, x, y))
            if chosen is not None:
                self.adopt(op, *chosen, "chosen earlier in this process for this model and batch shape")
                return False
            other = MEMO.recall(op.model, self._path_key(op, x, y, kept=op.cache_bytes == 0))
            if other is not None and not self.expected:  # a single product: no trial, the other cache's choice
                self.adopt(op, *other, "chosen earlier in this process for this model and batch shape "
                           f"{'without' if op.cache_bytes else 'with'} a cache")
                return False
        cache = op._cache
        rebuild = sum(t for j, t in cache.build_seconds.items() if cache.get(j, ("",))[0] == "graph")
        if self.spent >= self.trace_estimate(op, x, y) + rebuild:
            return True
        self.early = self.expected >= self.early_trial_products  # announced: the trial checks first that it pays
        return self.early

    def adopt(self, op: Any, path: str, cl: bool, why: str) -> None:
        """Settle on ``path`` (layout ``cl``); drop the states kept on another."""
        self.decided = True
        self.why = why
        if path != self.active or (path == "linearize" and cl != self.cl):
            self.active, self.cl = path, cl
            op._cache.drop_where(lambda j, p, st: p != path or (p == "linearize" and st[3] != cl))

    # ------------------------------------------------------------------ products
    def products(self, op: Any, i: int, batch: Any, vs: list[list[Tensor]]) -> list[Tensor]:
        """Batch ``i``'s products ``[P]`` for each vector on the active path, looped or vectorised."""
        path, state, kept = op._cache.state_for(op, i, batch, self.active)
        k = len(vs)
        batched = self.batched.get((path, k))
        if batched is None and k > 1 and (op.cache_bytes == 0 or (path == "graph" and not self.decided)):
            # No memory to spare for k tangents at once; or the graph until the trial, whose block timing
            # would be spent on a path about to be replaced: vector by vector, nothing measured.
            batched = False
        block_key = None
        if batched is None and k > 1 and isinstance(batch[0], Tensor):
            block_key = ("block", path, k, *memo_key(op, *to_device(batch, op.device)))
            batched = self.batched[(path, k)] = MEMO.recall(op.model, block_key)
        if batched is None and k > 1 and kept and any(p == path for p, _ in self.single_seconds):
            # The trial timed one product on this path on its batch: the first block there is vectorised
            # and compared with it; on the other batches, until then, vector by vector.
            ref = self.single_seconds.get((path, i))
            if ref is None:
                return op._apply_state(path, state, vs, kept, False)
            tick = clock(op.device)
            start = tick()
            vectorised = op._apply_state(path, state, vs, kept, True)
            per_vector = (tick() - start) / k
            self._settle_blocks(op, path, k, (ref, per_vector), per_vector < ref, block_key)
            return vectorised
        if batched is not None or k == 1:
            if self.decided or not kept or path != "graph":
                return op._apply_state(path, state, vs, kept, bool(batched))
            tick = clock(op.device)  # auto, undecided: note what the kept graph costs
            start = tick()
            res = op._apply_state(path, state, vs, kept, bool(batched))
            seconds = (tick() - start) / k
            self.graph_product_seconds[i] = min(self.graph_product_seconds.get(i, seconds), seconds)
            return res
        # first block of this size on this path: time it looped and vectorised, keep the faster
        tick = clock(op.device)
        start = tick()
        looped = op._apply_state(path, state, vs, True, False)
        mid = tick()
        vectorised = op._apply_state(path, state, vs, kept, True)
        end = tick()
        self._settle_blocks(op, path, k, ((mid - start) / k, (end - mid) / k), end - mid < mid - start, block_key)
        return vectorised if self.batched[(path, k)] else looped  # what every later block gets

    def _settle_blocks(
        self, op: Any, path: str, k: int, timings: tuple[float, float], vectorise: bool, block_key: Any
    ) -> None:
        """Blocks of ``k`` on ``path`` vectorised from now on or not; ``timings``: seconds per vector, looped
        and vectorised."""
        self.block_timings[path] = timings
        self.batched[(path, k)] = vectorise
        if block_key is not None:
            MEMO.remember(op.model, block_key, self.batched[(path, k)], op.loss_fn)

    def rest(self, op: Any, i: int, batch: Any, vs: list[list[Tensor]], state: Any) -> list[Tensor]:
        """After the trial: the products of the block's other vectors on the path kept, on the
        candidate's ``state`` if it is still held, else on the cached or a rebuilt state."""
        if len(vs) < 2:
            return []
        if state is not None:
            return op._apply_state("linearize", state, vs[1:], True, False)
        path, state, kept = op._cache.state_for(op, i, batch, self.active)
        return op._apply_state(path, state, vs[1:], kept, False)

    # ------------------------------------------------------------------ the auto trial
    def trial(self, op: Any, i: int, batch: Any, vs: list[list[Tensor]]) -> list[Tensor]:
        """Batch ``i``'s products on every path, timed; keep the fastest (see the module docstring).

        Every path multiplies the block's first vector (its timing and the check that the paths
        agree); the path kept multiplies the others."""
        t = _Trial(self, op, i, batch, vs)
        t.time_graph()
        if self.early:
            # Announced products: go on only if the graph's products over the whole announced run would cost
            # more than the set-up the rental rule waits for (renting skis for a known number of days).
            self.early = False
            horizon = t.wall * self.expected * op.local_num_samples / max(batch_size(batch), 1)
            if horizon < self.trace_estimate(op, t.x, t.y):
                self.expected = 0
                self.graph_product_seconds[i] = t.g_prod
                self.why = "undecided: the products announced would not pay for a trial yet"
                return [t.g_res, *self.rest(op, i, batch, vs, None)]
        op._cache.drop_where(lambda j, p, st: j != i)  # room for the trial: at most one batch held twice
        op._cache.collect()
        t.time_candidates()
        if not t.candidates:
            self.adopt(op, "graph", False, f"cannot linearise: {', '.join(sorted(set(t.failures)))}")
            return [t.g_res, *self.rest(op, i, batch, vs, None)]
        t.second_look()
        path, cl, chosen = t.verdict()
        MEMO.remember(op.model, self._path_key(op, t.x, t.y), (path, cl), op.loss_fn)
        self.adopt(op, path, cl, t.why)
        if chosen is None:
            if t.kept_graph:
                self.single_seconds[("graph", i)] = t.g_prod
            return [t.g_res, *self.rest(op, i, batch, vs, None)]
        if chosen["fits"]:
            op._cache.put(i, "linearize", chosen["state"], chosen["bytes"])
            self.single_seconds[("linearize", i)] = chosen["product"]
        return [chosen["res"], *self.rest(op, i, batch, vs, chosen["state"])]


def float64_product(op: Any, x: Any, y: Tensor, v: list[Tensor]) -> Tensor | None:
    """The batch product ``A_b v`` ``[P]`` (float64) of ``op``'s matrix on ``(x, y)``, by the graph path on a
    float64 copy of the model and loss; ``v`` per parameter. ``None`` when the model, loss or inputs cannot be
    copied and cast so, or the copy does not fit in memory."""
    if not isinstance(x, Tensor):
        return None
    try:
        model, loss_fn = copy.deepcopy(op.model).double(), copy.deepcopy(op.loss_fn)
        if isinstance(loss_fn, torch.nn.Module):
            loss_fn = loss_fn.double()
        x64 = x.double() if x.is_floating_point() else x
        y64 = y.double() if y.is_floating_point() else y
        twin = type(op)(model, loss_fn, (x64, y64), params=op.param_names, bn_mode=op.bn_mode, path="graph",
                        cache_bytes=0, check_finite=False, distributed=False, reduction=op.loss.reduction)
        state, _ = twin._build_state("graph", x64, y64, measure=False)
        return twin._apply_state("graph", state, [[t.double() for t in v]], False, False)[0]
    except (RuntimeError, TypeError, ValueError, NotImplementedError, copy.Error):
        return None


class _Trial:
    """One auto trial on batch ``i`` of ``op``: the graph's first product and each linearised
    candidate's, timed (seconds of :func:`clock`), and the verdict."""

    def __init__(self, chooser: PathChooser, op: Any, i: int, batch: Any, vs: list[list[Tensor]]) -> None:
        self.chooser, self.op, self.i, self.batch, self.k = chooser, op, i, batch, len(vs)
        self.x, self.y = to_device(batch, op.device)
        self.first = vs[:1]
        self.layouts = chooser.layouts(op, self.x)
        self.keep = op._cache.wants(i)  # whether the states built may be kept
        self.tick = clock(op.device)
        self.candidates: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.why = ""
        self.ref: Tensor | None = None  # the float64 product of the first vector (float64_agrees), once asked
        self.ref_tried = False

    def time_graph(self) -> None:
        """The graph's product of the first vector (``g_res``), its time with earlier products (``g_prod``)."""
        op, i, cache, tick = self.op, self.i, self.op._cache, self.tick
        if self.keep and i not in cache:  # announced products: the trial comes first, the graph is kept
            t0 = tick()
            _, g_state, self.kept_graph = cache.state_for(op, i, self.batch, self.chooser.active)
            self.g_build = tick() - t0
            self.keep = self.kept_graph
        else:
            self.kept_graph = self.keep and i in cache and cache[i][0] == "graph"
            t0 = tick()
            g_state = cache[i][1] if self.kept_graph else op._build_state("graph", self.x, self.y, measure=False)[0]
            self.g_build = 0.0 if self.kept_graph else tick() - t0
        t, wall = tick(), time.perf_counter()
        self.g_res = op._apply_state("graph", g_state, self.first, self.kept_graph, False)[0]  # not kept: freed
        self.g_first, self.wall = tick() - t, time.perf_counter() - wall
        self.g_prod = min(self.g_first, self.chooser.graph_product_seconds.get(i, math.inf))  # with earlier ones
        del g_state

    def time_candidates(self) -> None:
        """Trace, build and apply the linearised path in each layout; hold at most one candidate's state."""
        op, tick, fastest = self.op, self.tick, self.g_prod
        for cl in self.layouts:
            try:
                start = time.perf_counter()
                linearization(op, self.x, self.y, cl)
                trace = time.perf_counter() - start
            except RuntimeError as err:  # the model or loss cannot be traced
                self.failures.append(type(err.__cause__ if err.__cause__ is not None else err).__name__)
                continue
            t1 = tick()
            state, nbytes = op._build_state("linearize", self.x, self.y, measure=self.keep, cl=cl)
            build = tick() - t1
            t = tick()
            res = op._apply_state("linearize", state, self.first, True, False)[0]
            product = tick() - t
            # The first applications of a new state run cold (fresh memory), while the graph's figure is the
            # best of its warm products so far: look again while the candidate is not clearly faster yet
            # (the products are deterministic, so the first look's result stands).
            for _ in range(self.chooser.trial_looks - 1):
                if not (fastest / 1.2 <= product < self.chooser.trial_slower * fastest):
                    break
                t = tick()
                op._apply_state("linearize", state, self.first, True, False)
                product = min(product, tick() - t)
            if not self.keep or product >= fastest:  # hold at most one candidate's state
                state = None
            else:
                for c in self.candidates:
                    c["state"] = None
                if self.kept_graph and self.i in op._cache and op._cache[self.i][0] == "graph":
                    op._cache.drop(self.i)  # the graph cannot win any more: its memory goes to the next candidate
                    op._cache.collect()
            fastest = min(fastest, product)
            self.candidates.append({"cl": cl, "state": state, "bytes": nbytes, "res": res, "trace": trace,
                                    "build": build, "product": product})

    def second_look(self) -> None:
        """The graph would stay on its best time so far, a single sample that a hiccup of the clock can
        make look far too fast: time it once more and take the median of its figures."""
        if not (self.kept_graph and self.g_prod <= min(c["product"] for c in self.candidates)):
            return
        t = self.tick()
        self.op._apply_state("graph", self.op._cache[self.i][1], self.first, True, False)
        looks = [self.tick() - t, self.g_first]
        if self.i in self.chooser.graph_product_seconds:
            looks.append(self.chooser.graph_product_seconds[self.i])
        self.g_prod = statistics.median(looks)

    def float64_agrees(self, c: dict[str, Any], name: str, tol: float, timings: dict[str, float]) -> bool:
        """Whether candidate ``c``'s product is right to float rounding by the float64 product of the same batch
        and vector (:func:`float64_product`, computed once per trial): no more than
        :attr:`PathChooser.float64_slack` times further from it than the graph's product, or within ``tol``.
        Sets ``graph_float64_error`` and ``<name>_float64_error`` in ``timings`` (relative); ``False`` when the
        dtype is float64 already or the reference cannot be computed."""
        if self.op.dtype == torch.float64:
            return False
        if not self.ref_tried:
            self.ref, self.ref_tried = float64_product(self.op, self.x, self.y, self.first[0]), True
        if self.ref is None:
            return False
        size = max(float(self.ref.norm()), torch.finfo(torch.float64).tiny)
        graph = float((self.g_res.double() - self.ref).norm()) / size
        error = float((c["res"].double() - self.ref).norm()) / size
        timings.update({"graph_float64_error": graph, f"{name}_float64_error": error})
        return error <= max(tol, self.chooser.float64_slack * graph)

    @staticmethod
    def float64_note(name: str, timings: dict[str, float]) -> str:
        """The float64 check's figures for a warning, if it ran."""
        if f"{name}_float64_error" not in timings:
            return ""
        return (f" and is {timings[f'{name}_float64_error']:.1e} from the product in float64, where the graph's is "
                f"{timings['graph_float64_error']:.1e}")

    def verdict(self) -> tuple[str, bool, dict[str, Any] | None]:
        """``(path, channels_last, candidate or None)``: the cheapest path whose product agrees with the
        graph's; sets the chooser's ``path_timings`` and this trial's ``why``."""
        op, k, kept_graph, g_prod = self.op, self.k, self.kept_graph, self.g_prod
        scale = max(float(self.g_res.norm()), torch.finfo(op.dtype).tiny)
        tol = max(self.chooser.agreement_epsilons * torch.finfo(op.dtype).eps, 1e-10)
        timings = {"graph_build": self.g_build, "graph_product": g_prod, "trace": 0.0, "relative_difference": 0.0}
        best = ("graph", False, g_prod if kept_graph else g_prod + self.g_build / k, None)
        old = op._cache.size(self.i)
        for c in self.candidates:
            name = "linearize_channels_last" if c["cl"] else "linearize"
            diff = float((c["res"] - self.g_res).norm()) / scale
            timings.update({f"{name}_build": c["build"], f"{name}_product": c["product"]})
            timings["trace"] += c["trace"]
            timings["relative_difference"] = max(timings["relative_difference"], diff)
            if not diff <= tol and not self.float64_agrees(c, name, tol, timings):
                warnings.warn(
                    f"{type(op).__name__}: the linearised product ({name}) differs from the graph product by "
                    f"{diff:.1e} (relative) on the first batch{self.float64_note(name, timings)}; not using it",
                    RuntimeWarning,
                    stacklevel=5,
                )
                continue
            c["fits"] = c["state"] is not None and op._cache.nbytes - old + c["bytes"] <= op.cache_bytes
            cost = c["product"] if kept_graph and c["fits"] else c["product"] + c["build"] / k
            if cost < best[2]:
                best = ("linearize", c["cl"], cost, c)
        self.chooser.path_timings = timings
        unit = "s" if op.device.type == "cuda" else "s of CPU time"
        costs = ", ".join(
            f"{n[: -len('_product')].replace('_', ' ')} {v:.3g}" for n, v in timings.items() if n.endswith("_product")
        )
        self.why = f"auto: {costs} {unit} per product on the first batch{'' if kept_graph else ', set-up included'}"
        return best[0], best[1], best[3]
