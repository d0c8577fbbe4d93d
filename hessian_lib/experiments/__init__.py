"""Experiments: pure functions of a config (a profile plus overrides, and a seed) returning results.

Each experiment hashes the parts of its config it depends on, and, given a
:class:`~hessian_lib.store.ResultsStore`, loads a finished result instead of computing it
again; an interrupted run resumes from its last checkpoint.

>>> run = train_experiment("cpu", seed=0, data_root=root, store=ResultsStore("results"))  # doctest: +SKIP
>>> run.history[-1]["test_acc"], sorted(run.checkpoints)                                   # doctest: +SKIP
>>> model = run.model_at(5)                                                                 # doctest: +SKIP
"""

from hessian_lib.experiments.training import (
    Subsets,
    SweepResult,
    TrainResult,
    curvature_inputs,
    load_subsets,
    max_stable_lr_sweep,
    measured_model,
    model_from_profile,
    network_seeds,
    refresh_batchnorm,
    sweep,
    train_config,
    train_experiment,
    train_networks,
)

__all__ = [
    "Subsets",
    "SweepResult",
    "TrainResult",
    "curvature_inputs",
    "load_subsets",
    "max_stable_lr_sweep",
    "measured_model",
    "model_from_profile",
    "network_seeds",
    "refresh_batchnorm",
    "sweep",
    "train_config",
    "train_experiment",
    "train_networks",
]
