"""The formulas, apart from the runs that measure them: random-matrix laws (:mod:`~hessian_lib.laws.rmt`),
learning-rate laws and the fits to measured sweeps (:mod:`~hessian_lib.laws.scaling`), and the SLQ learner's
rules (:mod:`~hessian_lib.laws.learner`)."""

from hessian_lib.laws import learner, rmt, scaling

__all__ = ["learner", "rmt", "scaling"]
