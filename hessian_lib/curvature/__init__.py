"""Curvature engine: Hessian and GGN operators, Lanczos, SLQ densities and trace estimates.

Operators (:class:`HessianOperator`, :class:`GGNOperator`) are matrix-free: they own the
data loop, batch weighting, BatchNorm mode, the product path (a traced linearisation or the
first-order autograd graph, chosen by measurement), a memory-budgeted cache of per-batch
state and the reduction across processes. Algorithms (:func:`lanczos`, :func:`top_eigenvalues`,
:func:`slq_density`, :func:`hutchinson_trace`) only call ``op.matvec`` and work in float64.

Modules: one per matrix (``hessian``, ``ggn``), ``batch`` (:func:`batch_operator`), ``losses``,
``dense`` (references), ``lanczos``, ``slq``, ``trace``, ``noise``; the machinery the operators
share lives in the underscore modules (``_base``: the operator base; ``_autotune``: the path
chosen by timing; ``_cache``: the per-batch state; ``_linearize``: the traced products;
``_data``, ``_distributed``, ``_protocol``).
"""

import warnings

# Forward-mode AD (the linearised products, the GGN's Jv) loads PyTorch's own jvp decompositions on first
# use, and that module still calls the deprecated torch.jit.script. Load it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    import torch._decomp.decompositions_for_jvp  # noqa: F401

from hessian_lib.curvature._autotune import PATHS
from hessian_lib.curvature._base import CurvatureOperator
from hessian_lib.curvature._cache import DEFAULT_CACHE_BYTES
from hessian_lib.curvature._data import BN_MODES, batchnorm_mode
from hessian_lib.curvature._linearize import forget_linearizations
from hessian_lib.curvature._protocol import MatrixOperator, expect_products
from hessian_lib.curvature.batch import batch_operator
from hessian_lib.curvature.dense import dense_ggn, dense_hessian, dense_matrix
from hessian_lib.curvature.ggn import GGNOperator
from hessian_lib.curvature.hessian import HessianOperator
from hessian_lib.curvature.lanczos import (
    EigenResult,
    LanczosProcess,
    LanczosResult,
    bottom_eigenvalues,
    default_basis_dtype,
    lanczos,
    start_vector,
    top_eigenvalues,
)
from hessian_lib.curvature.losses import GGN_LOSSES, REDUCTIONS, SUPPORTED_LOSSES, LossInfo, resolve_loss
from hessian_lib.curvature.slq import SLQResult, gaussian_density, slq_density
from hessian_lib.curvature.trace import TraceEstimate, hutchinson_trace, hutchpp_trace

__all__ = [
    "BN_MODES",
    "DEFAULT_CACHE_BYTES",
    "GGN_LOSSES",
    "PATHS",
    "REDUCTIONS",
    "SUPPORTED_LOSSES",
    "CurvatureOperator",
    "EigenResult",
    "GGNOperator",
    "HessianOperator",
    "LanczosProcess",
    "LanczosResult",
    "LossInfo",
    "MatrixOperator",
    "SLQResult",
    "TraceEstimate",
    "batch_operator",
    "batchnorm_mode",
    "bottom_eigenvalues",
    "default_basis_dtype",
    "dense_ggn",
    "dense_hessian",
    "dense_matrix",
    "expect_products",
    "forget_linearizations",
    "gaussian_density",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos",
    "resolve_loss",
    "slq_density",
    "start_vector",
    "top_eigenvalues",
]
