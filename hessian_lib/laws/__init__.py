"""The formulas, apart from the runs that measure them: random-matrix laws (:mod:`~hessian_lib.laws.rmt`),
learning-rate laws and their point fits (:mod:`~hessian_lib.laws.scaling`), fits to divergence brackets with
bootstrap intervals (:mod:`~hessian_lib.laws.brackets`), and the SLQ learner's rules
(:mod:`~hessian_lib.laws.learner`)."""

from hessian_lib.laws import brackets, learner, rmt, scaling

__all__ = ["brackets", "learner", "rmt", "scaling"]
