"""Figures: the house style (:mod:`~hessian_lib.plots.style`) and one module per chapter, as in
:mod:`hessian_lib.experiments`: theory, spectra, scaling, learner, mixture."""
