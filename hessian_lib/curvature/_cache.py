"""The per-batch state an operator keeps between products, and what it costs in bytes."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch import Tensor

from hessian_lib.curvature._data import to_device

__all__ = ["DEFAULT_CACHE_BYTES", "StateCache", "graph_walk", "storage_bytes"]

#: Default memory budget (bytes) for autograd graphs kept between products.
DEFAULT_CACHE_BYTES = 2 * 1024**3


def storage_bytes(tensors: Iterable[Any], exclude: Iterable[Tensor] = ()) -> int:
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


def graph_walk(tensors: Iterable[Any], exclude: Iterable[Tensor] = (), saved: bool = True) -> tuple[int, int]:
    r"""``(nodes, bytes)`` of the autograd graph behind ``tensors``: its number of nodes and the
    bytes of the distinct storages it saved for backward (and of ``tensors`` themselves), not
    counting those of ``exclude``. ``saved=False``: the nodes only (bytes 0).

    The saved tensors are read from the nodes' ``_saved_*`` attributes (``saved_tensors`` for
    custom ``autograd.Function``\ s) after the graph is built. Reading a saved *output* (ReLU's
    result, max-pool's indices) ties the tensor to a reference cycle that only Python's cyclic
    collector frees: such a graph outlives its last product until the next full collection, so
    an operator runs one (:meth:`StateCache.collect`) when it drops a graph it measured.
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
    return len(seen), storage_bytes(found, exclude)


class StateCache:
    """The per-batch states an operator keeps between products (the linearisation's residuals or the
    first-order autograd graph), within ``budget`` bytes, each measured when it is built.

    A batch whose state does not fit is refused (rebuilt for every product) until :meth:`clear`. Maps
    batch index -> ``(path, state)``.
    """

    def __init__(self, budget: int) -> None:
        #: Bytes the kept states may hold together.
        self.budget = int(budget)
        self._states: dict[int, tuple[str, Any]] = {}
        self._sizes: dict[int, int] = {}
        #: Batches measured too large for what was left of the budget.
        self.refused: set[int] = set()
        #: Seconds the kept graph of a batch took to build (what dropping it costs).
        self.build_seconds: dict[int, float] = {}
        self._garbage = False  # a measured graph was dropped: see collect

    def __contains__(self, i: object) -> bool:
        return i in self._states

    def __getitem__(self, i: int) -> tuple[str, Any]:
        return self._states[i]

    def __iter__(self) -> Iterator[int]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def get(self, i: int, default: Any = None) -> Any:
        return self._states.get(i, default)

    def items(self) -> Iterable[tuple[int, tuple[str, Any]]]:
        return self._states.items()

    def values(self) -> Iterable[tuple[str, Any]]:
        return self._states.values()

    @property
    def nbytes(self) -> int:
        """Bytes held by the kept states (as measured when built)."""
        return int(sum(self._sizes.values()))

    def size(self, i: int) -> int:
        """Bytes of batch ``i``'s kept state (0 when none)."""
        return self._sizes.get(i, 0) if i in self._states else 0

    def wants(self, i: int) -> bool:
        """Whether batch ``i``'s state is to be measured and kept if it fits."""
        return self.budget > 0 and i not in self.refused

    def put(self, i: int, path: str, state: Any, nbytes: int) -> None:
        self._states[i] = (path, state)
        self._sizes[i] = nbytes

    def refuse(self, i: int, path: str) -> None:
        """Batch ``i``'s state, measured, does not fit (a graph: collect after its products)."""
        self.refused.add(i)
        self._garbage = self._garbage or path == "graph"

    def drop(self, i: int) -> None:
        """Forget batch ``i``'s state (a measured graph: collect before the next product)."""
        path, _ = self._states.pop(i)
        self._sizes.pop(i, None)
        self._garbage = self._garbage or path == "graph"

    def drop_where(self, unwanted: Callable[[int, str, Any], bool]) -> None:
        """Drop the states for which ``unwanted(i, path, state)``; refuse no batch any more."""
        for j in [j for j, (p, st) in self._states.items() if unwanted(j, p, st)]:
            self.drop(j)
        self.refused.clear()

    def clear(self) -> None:
        """Drop every state and collect."""
        self.drop_where(lambda j, p, st: True)
        self.collect()

    def collect(self) -> None:
        """A full collection when a measured graph was dropped since the last one (see
        :func:`graph_walk`): otherwise its saved outputs stay in memory until Python runs one."""
        if self._garbage:
            self._garbage = False
            gc.collect()

    def state_for(self, op: Any, i: int, batch: Any, path: str) -> tuple[str, Any, bool]:
        """``(path, state, kept)`` for batch ``i`` of ``op``: the kept state, or one built now on
        ``path`` (and kept if it fits in what is left of the budget)."""
        if i in self._states:
            kept_path, state = self._states[i]
            return kept_path, state, True
        x, y = to_device(batch, op.device)
        want = self.wants(i)
        state, nbytes = op._build_state(path, x, y, measure=want)
        if want:
            if self.nbytes + nbytes <= self.budget:
                self.put(i, path, state, nbytes)
                if path == "graph":
                    self.build_seconds[i] = op._last_build_seconds
                return path, state, True
            self.refuse(i, path)  # measured, not kept: collect after its products
        return path, state, False
