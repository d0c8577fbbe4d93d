r"""The SLQ learner: a learning rate and a momentum from the extremes of the Hessian spectrum.

A short Lanczos run on a fixed curvature subset gives Ritz values :math:`\theta_k` and Ritz
weights :math:`\gamma_k` (:func:`hessian_lib.curvature.lanczos`). From them :func:`extremes`
reads two numbers:

* :math:`\lambda_{\max} = \max_k |\theta_k|`, the largest curvature in magnitude: the largest
  Ritz value, or the magnitude of the most negative one when that is larger. Both signs are
  compared on their magnitudes, over one flat list of Ritz values, so there is no axis to get
  wrong and a negative Ritz value becomes :math:`\lambda_{\max}` only when its magnitude
  really is the largest.
* :math:`\mu`, the small end of the curvature outside the bulk. Deep-network Hessians put most
  of their spectral mass in a bulk near zero (of both signs); its smallest Ritz values say
  nothing about the directions that limit a step. The default rule (``mu_rule="bulk"``) sorts
  the Ritz values by :math:`|\theta_k|`, drops the shortest run of the smallest ones whose
  weights add up to at least ``bulk_weight`` (default :data:`BULK_WEIGHT` = 1/2, "most of the
  weight") of the total, never the largest, and takes the smallest *positive* Ritz value left.
  The alternative ``mu_rule="median"`` takes the median of :math:`|\theta_k|`.

From :math:`(\lambda_{\max}, \mu)`, with :math:`\kappa = \lambda_{\max}/\mu`, the classical
tunings of a quadratic :math:`\tfrac12 w^\top A w` whose spectrum lies in :math:`[\mu, \lambda_{\max}]`:

* gradient descent (:func:`gd_hyperparameters`): :math:`\alpha = 2/(\lambda_{\max} + \mu)`,
  which contracts every eigencomponent by at most :math:`(\kappa - 1)/(\kappa + 1)` per step;
* Polyak's heavy ball (:func:`polyak_hyperparameters`):
  :math:`\alpha = 4/(\sqrt{\lambda_{\max}} + \sqrt{\mu})^2`,
  :math:`\beta = \bigl((\sqrt{\lambda_{\max}} - \sqrt{\mu})/(\sqrt{\lambda_{\max}} + \sqrt{\mu})\bigr)^2`,
  with rate :math:`(\sqrt\kappa - 1)/(\sqrt\kappa + 1)`. PyTorch's ``SGD(lr=alpha,
  momentum=beta)`` (``nesterov=False``) is exactly the heavy ball
  :math:`w_{t+1} = w_t - \alpha \nabla L(w_t) + \beta (w_t - w_{t-1})` while ``lr`` is constant.

:class:`SLQLearner` is a :class:`~hessian_lib.trainer.TrainCallback`: handed to
:func:`hessian_lib.trainer.fit` (``callbacks=[learner]``) it estimates at the first step and
every ``every_steps`` optimiser steps, sets ``lr`` (and ``momentum`` for the Polyak rule) on
every parameter group before every step, overriding the schedule, and its state travels in
the checkpoints, so a resumed run equals an uninterrupted one.

The authors' scripts had four defects, each with a regression test in ``tests/test_learner.py``:
an undefined variable in one variant (every rule here is exercised), a sort along the wrong
axis when taking the largest :math:`|\theta|` (negative curvature folded in), ``+mu`` where
Polyak's formula has :math:`+\sqrt\mu`, and :math:`\alpha = \sqrt{\mu/\lambda_{\max}}`, which
is dimensionless and so not a step size (a step size scales as 1/curvature).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hessian_lib.curvature import lanczos
from hessian_lib.trainer import TrainCallback

__all__ = [
    "BULK_WEIGHT",
    "MU_RULES",
    "RULES",
    "SLQLearner",
    "extremes",
    "gd_hyperparameters",
    "gd_rate",
    "heavy_ball_rate",
    "polyak_hyperparameters",
    "refreshed_batchnorm",
]

#: Default share of the Ritz weight, counted from the smallest :math:`|\theta|` up, that is the bulk.
BULK_WEIGHT = 0.5
#: How :func:`extremes` finds :math:`\mu`.
MU_RULES = ("bulk", "median")
#: How :class:`SLQLearner` turns :math:`(\lambda_{\max}, \mu)` into hyper-parameters.
RULES = ("polyak", "gd")


def _flat(name: str, values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    out = np.asarray(values, dtype=np.float64).reshape(-1)
    if out.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be finite, got {out[~np.isfinite(out)][:3].tolist()}")
    return out


def extremes(ritz_values: Any, ritz_weights: Any = None, *, bulk_weight: float = BULK_WEIGHT,
             mu_rule: str = "bulk") -> tuple[float, float]:
    r"""``(lambda_max, mu)`` from Ritz values and weights (see the module docstring for the rules).

    Args:
        ritz_values: :math:`\theta_k`, any shape (several Lanczos runs may be stacked); flattened.
        ritz_weights: :math:`\gamma_k`, the same shape (non-negative; normalised here, so the
            weights of stacked runs need not sum to 1). ``None``: equal weights.
        bulk_weight: in :math:`[0, 1)`: the share of the weight, counted from the smallest
            :math:`|\theta_k|` up, that is dropped as the bulk (``mu_rule="bulk"``); 0 drops nothing.
        mu_rule: ``"bulk"`` (default) or ``"median"`` (:math:`\mu = \operatorname{median}_k |\theta_k|`).

    Returns:
        ``(lambda_max, mu)`` as floats, ``lambda_max = max |theta|`` > 0.

    Raises:
        ValueError: mismatched shapes, non-finite or negative weights, all Ritz values zero, an
        unknown rule, or (``"bulk"``) no positive Ritz value outside the bulk.
    """
    if mu_rule not in MU_RULES:
        raise ValueError(f"unknown mu_rule {mu_rule!r}; valid rules: {', '.join(MU_RULES)}")
    if not 0 <= bulk_weight < 1:
        raise ValueError(f"bulk_weight must be in [0, 1), got {bulk_weight!r}")
    theta = _flat("ritz_values", ritz_values)
    if ritz_weights is None:
        gamma = np.full_like(theta, 1.0 / theta.size)
    else:
        shape_v = tuple(np.shape(ritz_values))
        shape_w = tuple(np.shape(ritz_weights))
        if shape_v != shape_w:
            raise ValueError(f"ritz_values {list(shape_v)} and ritz_weights {list(shape_w)} must have the same shape")
        gamma = _flat("ritz_weights", ritz_weights)
        if np.any(gamma < 0) or gamma.sum() <= 0:
            raise ValueError("ritz_weights must be non-negative with a positive sum")
    magnitude = np.abs(theta)
    lambda_max = float(magnitude.max())
    if lambda_max == 0:
        raise ValueError("every Ritz value is zero: there is no curvature to set a step size from")
    if mu_rule == "median":
        return lambda_max, float(np.median(magnitude))
    order = np.argsort(magnitude, kind="stable")
    share = np.cumsum(gamma[order]) / gamma.sum()
    # the bulk: the shortest prefix (by |theta|) holding at least bulk_weight of the weight, never the top
    dropped = 0 if bulk_weight == 0 else int(np.searchsorted(share, bulk_weight - 1e-12)) + 1
    rest = theta[order[min(dropped, theta.size - 1):]]
    positive = rest[rest > 0]
    if positive.size == 0:
        raise ValueError(f"no positive Ritz value outside the bulk (the {dropped} smallest |theta| hold "
                         f"{bulk_weight:.0%} of the weight; left: {rest.tolist()[:5]})")
    return lambda_max, float(positive.min())


def _curvatures(lambda_max: float, mu: float) -> tuple[float, float]:
    for name, value in (("lambda_max", lambda_max), ("mu", mu)):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(number) or number <= 0:
            raise ValueError(f"{name} must be a positive finite curvature, got {value!r}")
    if float(mu) > float(lambda_max):
        raise ValueError(f"mu ({mu!r}) must not exceed lambda_max ({lambda_max!r})")
    return float(lambda_max), float(mu)


def gd_hyperparameters(lambda_max: float, mu: float) -> float:
    r"""Gradient descent's step :math:`\alpha = 2/(\lambda_{\max} + \mu)` (units: 1/curvature).

    ``ValueError`` naming the value for a non-positive or non-finite input or ``mu > lambda_max``.
    """
    lam, mu = _curvatures(lambda_max, mu)
    return 2.0 / (lam + mu)


def polyak_hyperparameters(lambda_max: float, mu: float) -> tuple[float, float]:
    r"""Heavy ball's ``(alpha, beta)``: :math:`\alpha = 4/(\sqrt{\lambda_{\max}} + \sqrt{\mu})^2`,
    :math:`\beta = ((\sqrt{\lambda_{\max}} - \sqrt{\mu})/(\sqrt{\lambda_{\max}} + \sqrt{\mu}))^2`.

    ``ValueError`` naming the value for a non-positive or non-finite input or ``mu > lambda_max``.
    """
    lam, mu = _curvatures(lambda_max, mu)
    s_lam, s_mu = math.sqrt(lam), math.sqrt(mu)
    return 4.0 / (s_lam + s_mu) ** 2, ((s_lam - s_mu) / (s_lam + s_mu)) ** 2


def gd_rate(kappa: float) -> float:
    r"""Worst-case contraction per step of gradient descent at :math:`\alpha = 2/(\lambda_{\max}+\mu)`: :math:`(\kappa-1)/(\kappa+1)`."""
    return (kappa - 1.0) / (kappa + 1.0)


def heavy_ball_rate(kappa: float) -> float:
    r"""Asymptotic contraction per step of the tuned heavy ball: :math:`(\sqrt\kappa-1)/(\sqrt\kappa+1)`."""
    return (math.sqrt(kappa) - 1.0) / (math.sqrt(kappa) + 1.0)


def refreshed_batchnorm(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int | None = None) -> torch.nn.Module:
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
    (the rule's values, before any ``lr_schedule`` factor) and ``seconds`` (the estimate's wall time). When an estimate fails
    (no positive curvature outside the bulk) after an earlier one succeeded, the earlier values
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
        self._check_optimizer(optimizer)
        self.optimizer = optimizer

    def on_step_start(self, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.optimizer is not optimizer:
            self._check_optimizer(optimizer)
            self.optimizer = optimizer
        if self._last_step is None or step - self._last_step >= self.every_steps:
            self.update(step)
        else:
            self.apply(optimizer, step)

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(entry) for entry in self.history], "lr": self.lr, "momentum": self.momentum,
                "last_step": self._last_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(entry) for entry in state.get("history", [])]
        self.lr, self.momentum, self._last_step = state.get("lr"), state.get("momentum"), state.get("last_step")
