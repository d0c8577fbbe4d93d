"""hessian_lib: Hessian/GGN spectra and learning-rate scaling for the JMLR 2022 companion book.

The public API, re-exported here:

* data and profiles: :func:`load_cifar100`, :func:`load_profile`, :class:`Profile`
* curvature: :class:`HessianOperator`, :class:`GGNOperator`, :func:`batch_operator`,
  :func:`lanczos`, :func:`top_eigenvalues`, :func:`slq_density`, :func:`hutchinson_trace`
* training: :func:`build_model`, :func:`fit`, :func:`train_experiment`, :func:`train_networks` (the K
  independent networks), :func:`measured_model` (a checkpoint as measurements see it), :class:`ResultsStore`
* the formulas: the package :mod:`hessian_lib.laws` (random-matrix laws, scaling laws and fits, the SLQ learner's
  rules)
"""

from hessian_lib import laws
from hessian_lib.curvature import (
    CurvatureOperator,
    EigenResult,
    GGNOperator,
    HessianOperator,
    LanczosResult,
    SLQResult,
    TraceEstimate,
    batch_operator,
    bottom_eigenvalues,
    dense_ggn,
    dense_hessian,
    dense_matrix,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    slq_density,
    top_eigenvalues,
)
from hessian_lib.data import CIFAR100Split, DataError, load_cifar100, normalize, resolve_data_root, stratified_indices
from hessian_lib.device import resolve_device
from hessian_lib.experiments.training import (
    TrainResult,
    curvature_inputs,
    load_subsets,
    max_stable_lr_sweep,
    measured_model,
    network_seeds,
    refresh_batchnorm,
    sweep,
    train_experiment,
    train_networks,
)
from hessian_lib.laws.learner import extremes, gd_hyperparameters, polyak_hyperparameters
from hessian_lib.models import MODEL_NAMES, build_model, count_parameters
from hessian_lib.profiles import PROFILES, Profile, ProfileError, TrainSizes, load_profile, profile_names
from hessian_lib.slq_learner import SLQLearner
from hessian_lib.store import ResultsStore
from hessian_lib.trainer import FitResult, evaluate, fit

__version__ = "0.1.0"

__all__ = [
    "batch_operator", "bottom_eigenvalues", "build_model", "CIFAR100Split", "count_parameters", "curvature_inputs",
    "CurvatureOperator", "DataError", "dense_ggn", "dense_hessian", "dense_matrix", "EigenResult", "evaluate",
    "extremes", "fit", "FitResult", "gd_hyperparameters", "GGNOperator", "HessianOperator", "hutchinson_trace",
    "hutchpp_trace", "lanczos", "LanczosResult", "laws", "load_cifar100", "load_profile", "load_subsets",
    "max_stable_lr_sweep", "measured_model", "MODEL_NAMES", "network_seeds", "normalize", "polyak_hyperparameters",
    "Profile", "profile_names", "ProfileError", "PROFILES", "refresh_batchnorm", "resolve_data_root",
    "resolve_device", "ResultsStore", "slq_density", "SLQLearner", "SLQResult", "stratified_indices", "sweep",
    "top_eigenvalues", "TraceEstimate", "train_experiment", "train_networks", "TrainResult", "TrainSizes",
]
