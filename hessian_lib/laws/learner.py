r"""The SLQ learner's formulas: a learning rate and a momentum from the extremes of the Hessian spectrum.

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

:class:`~hessian_lib.slq_learner.SLQLearner` applies them while a network trains.

The authors' scripts had four defects, each with a regression test in ``tests/laws/test_learner.py`` or
``tests/test_slq_learner.py``: an undefined variable in one variant (every rule here is exercised), a sort
along the wrong axis when taking the largest :math:`|\theta|` (negative curvature folded in), ``+mu`` where
Polyak's formula has :math:`+\sqrt\mu`, and :math:`\alpha = \sqrt{\mu/\lambda_{\max}}`, which
is dimensionless and so not a step size (a step size scales as 1/curvature).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "BULK_WEIGHT",
    "MU_RULES",
    "RULES",
    "extremes",
    "gd_hyperparameters",
    "gd_rate",
    "heavy_ball_rate",
    "polyak_hyperparameters",
]

#: Default share of the Ritz weight, counted from the smallest :math:`|\theta|` up, that is the bulk.
BULK_WEIGHT = 0.5
#: How :func:`extremes` finds :math:`\mu`.
MU_RULES = ("bulk", "median")
#: How :class:`~hessian_lib.slq_learner.SLQLearner` turns :math:`(\lambda_{\max}, \mu)` into hyper-parameters.
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

    Example: the bulk (the smallest |theta| holding half the weight) is dropped, and mu is the
    smallest positive Ritz value left.

    >>> extremes([0.0, 0.5, 10.0], [0.6, 0.3, 0.1])
    (10.0, 0.5)
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

    >>> gd_hyperparameters(100.0, 1.0)  # 2 / 101
    0.019801980198019802
    """
    lam, mu = _curvatures(lambda_max, mu)
    return 2.0 / (lam + mu)


def polyak_hyperparameters(lambda_max: float, mu: float) -> tuple[float, float]:
    r"""Heavy ball's ``(alpha, beta)``: :math:`\alpha = 4/(\sqrt{\lambda_{\max}} + \sqrt{\mu})^2`,
    :math:`\beta = ((\sqrt{\lambda_{\max}} - \sqrt{\mu})/(\sqrt{\lambda_{\max}} + \sqrt{\mu}))^2`.

    ``ValueError`` naming the value for a non-positive or non-finite input or ``mu > lambda_max``.

    >>> alpha, beta = polyak_hyperparameters(100.0, 1.0)  # 4 / 11^2 and (9/11)^2
    >>> round(alpha, 6), round(beta, 6)
    (0.033058, 0.669421)
    """
    lam, mu = _curvatures(lambda_max, mu)
    s_lam, s_mu = math.sqrt(lam), math.sqrt(mu)
    return 4.0 / (s_lam + s_mu) ** 2, ((s_lam - s_mu) / (s_lam + s_mu)) ** 2


def gd_rate(kappa: float) -> float:
    r"""Worst-case contraction per step of gradient descent at :math:`\alpha = 2/(\lambda_{\max}+\mu)`.

    It is :math:`(\kappa-1)/(\kappa+1)`, so about :math:`\kappa/2` steps per factor e:

    >>> round(gd_rate(100.0), 6)
    0.980198
    """
    return (kappa - 1.0) / (kappa + 1.0)


def heavy_ball_rate(kappa: float) -> float:
    r"""Asymptotic contraction per step of the tuned heavy ball: :math:`(\sqrt\kappa-1)/(\sqrt\kappa+1)`.

    About :math:`\sqrt\kappa/2` steps per factor e, against :math:`\kappa/2` for gradient descent:

    >>> round(heavy_ball_rate(100.0), 6)
    0.818182
    """
    return (math.sqrt(kappa) - 1.0) / (math.sqrt(kappa) + 1.0)
