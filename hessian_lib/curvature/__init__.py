"""Curvature engine: Hessian and GGN operators, Lanczos, SLQ densities and trace estimates.

Operators (:class:`HessianOperator`, :class:`GGNOperator`) are matrix-free: they own the
data loop, batch weighting, BatchNorm mode, the product path (a traced linearisation or the
first-order autograd graph, chosen by measurement), a memory-budgeted cache of per-batch
state and the reduction across processes. Algorithms (:func:`lanczos`, :func:`top_eigenvalues`,
:func:`slq_density`, :func:`hutchinson_trace`) only call ``op.matvec`` and work in float64.
"""

from hessian_lib.curvature._protocol import MatrixOperator, expect_products
from hessian_lib.curvature.dense import dense_ggn, dense_hessian, dense_matrix
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
from hessian_lib.curvature.operators import (
    BN_MODES,
    DEFAULT_CACHE_BYTES,
    PATHS,
    CurvatureOperator,
    GGNOperator,
    HessianOperator,
    batch_operator,
    batchnorm_mode,
    forget_linearizations,
)
from hessian_lib.curvature.slq import SLQResult, gaussian_density, slq_density
from hessian_lib.curvature.trace import TraceEstimate, hutchinson_trace, hutchpp_trace

__all__ = [
    "BN_MODES",
    "DEFAULT_CACHE_BYTES",
    "PATHS",
    "CurvatureOperator",
    "EigenResult",
    "GGNOperator",
    "HessianOperator",
    "LanczosProcess",
    "LanczosResult",
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
    "slq_density",
    "start_vector",
    "top_eigenvalues",
]
