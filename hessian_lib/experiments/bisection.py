r"""The largest stable learning rate, bracketed on a geometric lattice.

:class:`LrLattice` holds the learning rates a sweep may try, :math:`\alpha_j = \alpha_0 r^j`;
:func:`bisect_max_lr` finds, for one batch size, the adjacent lattice indices of the largest stable and the smallest
diverged rate (a ladder, then a bisection on :math:`\log\alpha`), and :func:`lr_sweep` runs one such search per
batch size, each starting where the previous one ended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from hessian_lib.experiments.scaling_analysis import Bracket
from hessian_lib.profiles import ScalingSizes

__all__ = ["BisectionResult", "LrLattice", "bisect_max_lr", "lr_sweep"]


@dataclass(frozen=True)
class LrLattice:
    r"""The learning rates a sweep may try: :math:`\alpha_j = \alpha_0 r^j` for integer j.

    ``start``: :math:`\alpha_0`; ``ratio``: r, the factor of a final bracket; ``rung``: the
    ladder step in lattice units (``2 ** bisections``), so the ladder moves by a factor
    :math:`r^{\mathrm{rung}}` and ``bisections`` halvings of a rung end at one lattice cell.
    """

    start: float
    ratio: float
    rung: int

    def __post_init__(self) -> None:
        if not (self.start > 0 and self.ratio > 1 and self.rung >= 1):
            raise ValueError(f"a lattice needs start > 0, ratio > 1 and rung >= 1, got {self}")

    @classmethod
    def from_sizes(cls, sizes: ScalingSizes, start: float) -> "LrLattice":
        r"""The lattice of a profile's ``scaling`` section with :math:`\alpha_0` = ``start``."""
        return cls(start=float(start), ratio=sizes.final_bracket(), rung=2**sizes.bisections)

    def lr(self, index: int) -> float:
        r""":math:`\alpha_j`."""
        return float(self.start * self.ratio ** int(index))


@dataclass(frozen=True)
class BisectionResult:
    """Lattice indices of the final bracket (``None`` if not found), and every ``(index, diverged)`` tried in order."""

    lower: int | None
    upper: int | None
    tried: tuple[tuple[int, bool], ...]


def bisect_max_lr(diverges: Callable[[int], bool], *, start: int = 0, rung: int = 8,
                  max_ladder_steps: int = 8) -> BisectionResult:
    """Find adjacent lattice indices ``lower`` (stable) and ``upper = lower + 1`` (diverged).

    ``diverges(j)`` runs (or loads) the trial at lattice index j. From ``start``, a ladder moves
    by ``rung`` indices (up while stable, down while diverged, at most ``max_ladder_steps``
    rungs) until a stable and a diverged index are one rung apart; bisection then halves the gap
    (``rung`` must be a power of two) down to one index. Assumes that divergence is monotone in
    the learning rate; a trial is never run twice.
    """
    if rung < 1 or rung & (rung - 1):
        raise ValueError(f"rung must be a power of two, got {rung}")
    outcomes: dict[int, bool] = {}
    order: list[tuple[int, bool]] = []

    def test(j: int) -> bool:
        if j not in outcomes:
            outcomes[j] = bool(diverges(j))
            order.append((j, outcomes[j]))
        return outcomes[j]

    j = int(start)
    lower: int | None
    upper: int | None
    if test(j):
        lower, upper = None, j
        for _ in range(max_ladder_steps):
            j -= rung
            if not test(j):
                lower = j
                break
            upper = j
    else:
        lower, upper = j, None
        for _ in range(max_ladder_steps):
            j += rung
            if test(j):
                upper = j
                break
            lower = j
    if lower is None or upper is None:
        return BisectionResult(lower, upper, tuple(order))
    while upper - lower > 1:
        mid = (lower + upper) // 2
        if test(mid):
            upper = mid
        else:
            lower = mid
    return BisectionResult(lower, upper, tuple(order))


def lr_sweep(
    run_trial: Callable[[int, int], Mapping[str, Any]],
    batch_sizes: Sequence[int],
    lattice: LrLattice,
    *,
    max_ladder_steps: int = 8,
    start: int = 0,
) -> list[Bracket]:
    r"""One :func:`bisect_max_lr` search per batch size, in increasing order.

    ``run_trial(batch_size, index)`` runs or loads the trial at :math:`\alpha_{index}` and returns
    its record (a mapping with at least ``diverged``). The first batch size starts the ladder at
    index ``start``, each later one at the previous one's stable end (or a rung below its diverged end),
    which saves trials and, for a monotone threshold, ends in the same lattice cell.
    """
    brackets: list[Bracket] = []
    for b in sorted(int(v) for v in batch_sizes):
        records: dict[int, Mapping[str, Any]] = {}

        def diverges(j: int, b: int = b) -> bool:
            records[j] = run_trial(b, j)
            return bool(records[j]["diverged"])

        found = bisect_max_lr(diverges, start=start, rung=lattice.rung, max_ladder_steps=max_ladder_steps)
        trials = [{**records[j], "index": j, "lr": lattice.lr(j), "batch_size": b} for j, _ in found.tried]
        brackets.append(Bracket(
            batch_size=b,
            lower=lattice.lr(found.lower) if found.lower is not None else math.nan,
            upper=lattice.lr(found.upper) if found.upper is not None else math.nan,
            trials=trials,
        ))
        if found.lower is not None:
            start = found.lower
        elif found.upper is not None:
            start = found.upper - lattice.rung
    return brackets
