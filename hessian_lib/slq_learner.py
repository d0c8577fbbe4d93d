r"""The SLQ learner: sets a learning rate and a momentum from the extremes of the Hessian spectrum while training.

The rules, reading :math:`(\lambda_{\max}, \mu)` from Ritz values and the two tunings, are the formulas of
:mod:`hessian_lib.laws.learner`.

:class:`SLQLearner` is a :class:`~hessian_lib.trainer.TrainCallback`: handed to
:func:`hessian_lib.trainer.fit` (``callbacks=[learner]``) it estimates at the first step and
every ``every_steps`` optimiser steps, sets ``lr`` (and ``momentum`` for the Polyak rule) on
every parameter group before every step, overriding the schedule, and its state travels in
the checkpoints, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable, Sequence

import torch

from hessian_lib.curvature import lanczos
from hessian_lib.laws.learner import BULK_WEIGHT, MU_RULES, RULES, extremes, gd_hyperparameters, polyak_hyperparameters
from hessian_lib.trainer import TrainCallback

__all__ = ["SLQLearner", "refreshed_batchnorm"]


def refreshed_batchnorm(
    model: torch.nn.Module, images: torch.Tensor, *, batch_size: int | None = None
) -> torch.nn.Module:
    """A copy of ``model`` in eval mode whose BatchNorm running statistics are those of ``images``.

    A network in eval mode normalises with running statistics, which early in training (and at
    initialisation: mean 0, variance 1) describe an older network. Curvature in ``bn_mode="eval"``
    of the copy is that of the network normalised by the statistics of ``images`` (the authors'
    protocol refreshes them on the training set first). The statistics are the cumulative
    average over chunks of ``batch_size`` images (``None``: one pass over all of them, the exact
    mean and unbiased variance). Only BatchNorm layers run in train mode during the pass (dropout
    stays off); ``model`` itself is not touched. A model without BatchNorm is copied as it is.
    """
    net = copy.deepcopy(model).eval()
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return net
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes below
        m.train()
    step = images.shape[0] if batch_size is None else int(batch_size)
    with torch.no_grad():
        for start in range(0, images.shape[0], step):
            net(images[start:start + step])
    for m, original in zip(norms, [m for m in model.modules()
                                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]):
        m.momentum = original.momentum
    return net.eval()


def _clip(value: float, bounds: tuple[float, float] | None) -> float:
    return value if bounds is None else min(max(value, bounds[0]), bounds[1])


class SLQLearner(TrainCallback):
    r"""Sets the learning rate (and momentum) of an optimiser from a Lanczos estimate of the spectrum.

    Args:
        optimizer: the optimiser whose parameter groups it sets (SGD for the Polyak rule); may
            be ``None`` when the learner goes to :func:`~hessian_lib.trainer.fit`, which hands it
            its optimiser at the start of training.
        curvature: a callable with no arguments returning a fresh operator (``dim``,
            ``device``, ``matvec``) of the current weights, e.g.
            ``lambda: HessianOperator(model, loss, (x, y), bn_mode="eval", weight_decay=wd)``
            on a fixed curvature subset with test-time transforms. For the local quadratic to
            be the one the optimiser sees, use the training loss (label smoothing included)
            and add the optimiser's L2 weight decay.
        rule: ``"polyak"`` (sets ``lr`` and ``momentum``; the groups must not use Nesterov) or
            ``"gd"`` (sets ``lr`` only; meant for ``momentum=0``).
        every_steps: optimiser steps between estimates (the first is at the first step).
        lanczos_steps: Lanczos iterations per estimate.
        seed: seeds the Lanczos start vectors (estimate ``k`` uses ``seed * 1_000_003 + k``).
        bulk_weight, mu_rule: how :func:`extremes` reads :math:`\mu`.
        safety: multiplies the rule's :math:`\alpha` (1: off).
        lr_range, momentum_range: ``(low, high)`` clipping of the applied values (``None``: off).
        lr_schedule: ``step -> factor``: multiplies the held rate at every step (for example a
            training recipe's warm-up and decay, :func:`hessian_lib.trainer.lr_factor`); ``None``
            (default, the paper's learner): the rate is held until the next estimate.

    ``history`` gets one dict per estimate: ``step``, ``lambda_max``, ``mu``, ``lr``, ``momentum``
    (the rule's values, before any ``lr_schedule`` factor) and ``seconds`` (the estimate's wall time). When an
    estimate fails (no positive curvature outside the bulk) after an earlier one succeeded, the earlier values
    are kept and the entry records ``kept=True`` and the reason; a failing first estimate raises.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer | None,
        curvature: Callable[[], Any],
        *,
        rule: str = "polyak",
        every_steps: int,
        lanczos_steps: int = 20,
        seed: int = 0,
        bulk_weight: float = BULK_WEIGHT,
        mu_rule: str = "bulk",
        safety: float = 1.0,
        lr_range: Sequence[float] | None = None,
        momentum_range: Sequence[float] | None = None,
        lr_schedule: Callable[[int], float] | None = None,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; valid rules: {', '.join(RULES)}")
        if mu_rule not in MU_RULES:
            raise ValueError(f"unknown mu_rule {mu_rule!r}; valid rules: {', '.join(MU_RULES)}")
        if not isinstance(every_steps, int) or every_steps < 1:
            raise ValueError(f"every_steps must be a positive integer, got {every_steps!r}")
        if not isinstance(lanczos_steps, int) or lanczos_steps < 2:
            raise ValueError(f"lanczos_steps must be an integer >= 2, got {lanczos_steps!r}")
        if not 0 <= bulk_weight < 1:
            raise ValueError(f"bulk_weight must be in [0, 1), got {bulk_weight!r}")
        if not (math.isfinite(safety) and safety > 0):
            raise ValueError(f"safety must be a positive factor, got {safety!r}")
        self.lr_range = self._range("lr_range", lr_range, upper=math.inf)
        self.momentum_range = self._range("momentum_range", momentum_range, upper=1.0)
        self.optimizer = optimizer
        self.curvature = curvature
        self.rule = rule
        self.every_steps = every_steps
        self.lanczos_steps = lanczos_steps
        self.seed = int(seed)
        self.bulk_weight = float(bulk_weight)
        self.mu_rule = mu_rule
        self.safety = float(safety)
        self.lr_schedule = lr_schedule
        self.history: list[dict[str, Any]] = []
        self.lr: float | None = None
        self.momentum: float | None = None
        self._last_step: int | None = None
        if optimizer is not None:
            self._check_optimizer(optimizer)

    @staticmethod
    def _range(name: str, bounds: Sequence[float] | None, upper: float) -> tuple[float, float] | None:
        if bounds is None:
            return None
        low, high = (float(b) for b in bounds)
        if not (0 <= low <= high <= upper):
            raise ValueError(f"{name} must be (low, high) with 0 <= low <= high <= {upper}, got {tuple(bounds)!r}")
        return low, high

    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        if self.rule != "polyak":
            return
        for group in optimizer.param_groups:
            if "momentum" not in group:
                raise ValueError(f"the Polyak rule sets momentum, which {type(optimizer).__name__} does not have; "
                                 "use torch.optim.SGD")
            if group.get("nesterov"):
                raise ValueError("the Polyak rule tunes heavy-ball momentum; use SGD(nesterov=False)")

    # ------------------------------------------------------------------ estimates

    @property
    def seconds(self) -> float:
        """Wall time spent in estimates so far (this run and, after a resume, the earlier part)."""
        return float(sum(entry["seconds"] for entry in self.history))

    def estimate(self) -> tuple[float, float, float]:
        """Run Lanczos on a fresh operator; return ``(lambda_max, mu, seconds)`` (nothing applied)."""
        start = time.perf_counter()
        op = self.curvature()
        result = lanczos(op, self.lanczos_steps, seed=self.seed * 1_000_003 + len(self.history))
        lam, mu = extremes(result.ritz_values, result.ritz_weights, bulk_weight=self.bulk_weight,
                           mu_rule=self.mu_rule)
        return lam, mu, time.perf_counter() - start

    def hyperparameters(self, lambda_max: float, mu: float) -> tuple[float, float | None]:
        """The ``(lr, momentum)`` this learner applies for ``(lambda_max, mu)`` (momentum ``None`` for ``gd``)."""
        if self.rule == "polyak":
            alpha, beta = polyak_hyperparameters(lambda_max, mu)
            return _clip(self.safety * alpha, self.lr_range), _clip(beta, self.momentum_range)
        return _clip(self.safety * gd_hyperparameters(lambda_max, mu), self.lr_range), None

    def update(self, step: int | None = None) -> dict[str, Any]:
        """Estimate now and apply the result to the optimiser; return the new ``history`` entry."""
        if step is None:
            step = self._last_step + 1 if self._last_step is not None else 0
        start = time.perf_counter()
        try:
            lam, mu, _ = self.estimate()
            lr, momentum = self.hyperparameters(lam, mu)
            entry: dict[str, Any] = {"step": int(step), "lambda_max": lam, "mu": mu}
        except ValueError as err:
            if self.lr is None:
                raise
            lr, momentum = self.lr, self.momentum
            entry = {"step": int(step), "lambda_max": math.nan, "mu": math.nan, "kept": True, "reason": str(err)}
        self.lr = lr
        if momentum is not None:
            self.momentum = momentum
        self._last_step = int(step)
        if self.optimizer is not None:
            self.apply(self.optimizer, step)
        group = self.optimizer.param_groups[0] if self.optimizer is not None else {}
        entry.update(lr=self.lr, momentum=self.momentum if self.momentum is not None else group.get("momentum"),
                     seconds=time.perf_counter() - start)
        self.history.append(entry)
        return entry

    def apply(self, optimizer: torch.optim.Optimizer, step: int | None = None) -> None:
        """Set the held ``lr`` (times ``lr_schedule(step)`` when both are given) and ``momentum`` on every
        parameter group of ``optimizer``."""
        if self.lr is None:
            return
        factor = self.lr_schedule(step) if self.lr_schedule is not None and step is not None else 1.0
        for group in optimizer.param_groups:
            group["lr"] = self.lr * factor
            if self.momentum is not None and self.rule == "polyak":
                group["momentum"] = self.momentum

    # ------------------------------------------------------------------ TrainCallback

    def on_train_start(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Keep the optimiser whose hyperparameters the learner sets (the Polyak rule needs heavy-ball SGD)."""
        self._check_optimizer(optimizer)
        self.optimizer = optimizer

    def on_step_start(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Before step ``step``: estimate the extremes when one is due and set the optimiser's hyperparameters."""
        if self.optimizer is not optimizer:
            self._check_optimizer(optimizer)
            self.optimizer = optimizer
        if self._last_step is None or step - self._last_step >= self.every_steps:
            self.update(step)
        else:
            self.apply(optimizer, step)

    def state_dict(self) -> dict[str, Any]:
        """The learner's state for a checkpoint: its estimates so far and the hyperparameters in force."""
        return {"history": [dict(entry) for entry in self.history], "lr": self.lr, "momentum": self.momentum,
                "last_step": self._last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state of :meth:`state_dict` (resuming from a checkpoint)."""
        self.history = [dict(entry) for entry in state.get("history", [])]
        self.lr, self.momentum, self._last_step = state.get("lr"), state.get("momentum"), state.get("last_step")
