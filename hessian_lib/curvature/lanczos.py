r"""Lanczos tridiagonalisation of a symmetric operator, in float64, and extremal eigenvalues.

After :math:`m` steps from a unit start vector :math:`q_1`, Lanczos gives an orthonormal
basis :math:`Q_m = [q_1, \dots, q_m]` of the Krylov space and the tridiagonal
:math:`T_m = Q_m^\top A Q_m` (diagonal :math:`\alpha`, off-diagonal :math:`\beta`).
Its eigenvalues are the Ritz values :math:`\theta_k`; the squared first components of
its eigenvectors, :math:`\gamma_k = s_{1k}^2`, are the Ritz weights (the Gauss quadrature
weights of the spectral measure seen from :math:`q_1`, summing to 1).

Products run in the operator's dtype (float32 typically). The basis is stored in the
products' precision, at least float32 (:func:`default_basis_dtype`): a product only ever sees its
input rounded to that dtype, so a float64 basis would carry digits the products cannot use,
at twice the memory (100 steps of WRN-28-10 hold 14.6 GB in float32). The recurrence
coefficients, the vector being orthogonalised and the tridiagonal problem are float64.
With ``reorthogonalize=True`` (default) every new vector is orthogonalised twice against
the whole basis (classical Gram-Schmidt, twice), which removes the "ghost" copies of
converged eigenvalues of plain Lanczos and keeps the basis orthogonal to the basis dtype's
rounding level.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hessian_lib.curvature._protocol import LinearOperator, expect_products, progress_bar

__all__ = [
    "EigenResult",
    "LanczosProcess",
    "LanczosResult",
    "default_basis_dtype",
    "bottom_eigenvalues",
    "lanczos",
    "start_vector",
    "top_eigenvalues",
]


#: What :func:`top_eigenvalues` and :func:`bottom_eigenvalues` tell the operator to expect: this many
#: products plus 4 per eigenvalue asked for (a guess, low for tight tolerances; it only decides
#: whether the operator prepares for a long run, see :func:`expect_products`).
EXTREMAL_PRODUCTS_GUESS = 10


def default_basis_dtype(op: object) -> torch.dtype:
    """The dtype in which Lanczos stores ``op``'s basis: float64 when ``op.dtype`` is float64 (or
    unknown), else float32 (the products of float32, float16 or bfloat16 operators)."""
    dtype = getattr(op, "dtype", None)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and dtype != torch.float64:
        return torch.float32
    return torch.float64


def start_vector(
    dim: int, seed: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> Tensor:
    """A unit Gaussian vector ``[dim]``, drawn on the CPU from ``seed`` (same on every device)."""
    gen = torch.Generator().manual_seed(int(seed))
    v = torch.randn(dim, generator=gen, dtype=torch.float64)
    return (v / v.norm()).to(device=device, dtype=dtype)


@dataclass
class LanczosResult:
    r"""Output of :func:`lanczos` after ``m`` steps.

    Attributes:
        alphas: ``[m]`` diagonal of :math:`T_m` (float64, CPU).
        betas: ``[m-1]`` off-diagonal of :math:`T_m`.
        ritz_values: ``[m]`` eigenvalues of :math:`T_m`, ascending.
        ritz_weights: ``[m]`` squared first components of its eigenvectors (sum to 1).
        residuals: ``[m]`` :math:`\lVert A y_k - \theta_k y_k\rVert = \beta_{m}|s_{mk}|` of each
            Ritz pair (zero after a breakdown, i.e. an invariant subspace).
        ritz_vectors: ``[m, P]`` Ritz vectors :math:`y_k = Q_m s_k` (float64, on the operator's
            device), if requested.
        num_iters: ``m``, the number of products used.
        breakdown: ``True`` if the recurrence stopped early because :math:`\beta` vanished.
    """

    alphas: Tensor
    betas: Tensor
    ritz_values: Tensor
    ritz_weights: Tensor
    residuals: Tensor
    num_iters: int
    breakdown: bool
    ritz_vectors: Tensor | None = None

    def tridiagonal(self) -> Tensor:
        """The dense ``[m, m]`` tridiagonal matrix :math:`T_m`."""
        return torch.diag(self.alphas) + torch.diag(self.betas, 1) + torch.diag(self.betas, -1)


#: Entries of a float32 basis converted to float64 at a time by :func:`_coefficients` (16 MiB).
COEFFICIENT_CHUNK_ENTRIES = 1 << 21


def _coefficients(Q: Tensor, w: Tensor) -> Tensor:
    """``Q @ w`` (``[m, P] @ [P] -> [m]``, float64) accumulated in float64 for a float32 ``Q``,
    converted in column chunks of about :data:`COEFFICIENT_CHUNK_ENTRIES` entries. A float32
    dot product over P entries carries an error of about ``eps * sqrt(P)`` relative (1e-4 for
    P = 4e6), which would leave the basis that far from orthogonal."""
    if Q.dtype == torch.float64:
        return Q @ w
    m, dim = Q.shape
    step = max(1024, COEFFICIENT_CHUNK_ENTRIES // max(m, 1))
    c = torch.zeros(m, dtype=torch.float64, device=w.device)
    for j in range(0, dim, step):
        c += Q[:, j : j + step].to(torch.float64) @ w[j : j + step]
    return c


class LanczosProcess:
    """A Lanczos recurrence that can be extended step by step (used by :func:`lanczos` and
    the eigenvalue solvers). Keeps the basis ``[m, P]`` (in ``basis_dtype``, default
    :func:`default_basis_dtype` of ``op``) when ``reorthogonalize`` or ``keep_basis`` is set, else only
    the last two vectors. ``capacity``: the number of steps expected, allocated at once at the
    first step (the basis otherwise doubles as it grows, holding the old and the new copy for
    a moment)."""

    def __init__(
        self,
        op: LinearOperator,
        *,
        seed: int = 0,
        v0: Tensor | None = None,
        reorthogonalize: bool = True,
        keep_basis: bool = False,
        breakdown_tol: float = 1e-10,
        capacity: int | None = None,
        basis_dtype: torch.dtype | None = None,
    ) -> None:
        self.op = op
        self.dim = int(op.dim)
        self.device = torch.device(op.device)
        self.dtype = default_basis_dtype(op) if basis_dtype is None else basis_dtype
        if self.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"the basis dtype must be torch.float32 or torch.float64, got {self.dtype}")
        if v0 is None:
            q = start_vector(self.dim, seed, device=self.device)
        else:
            if v0.shape != (self.dim,):
                raise ValueError(f"v0 must have shape [{self.dim}], got {list(v0.shape)}")
            q = v0.detach().to(device=self.device, dtype=torch.float64)
            nrm = q.norm()
            if not torch.isfinite(nrm) or nrm == 0:
                raise ValueError("v0 must be a finite non-zero vector")
            q = q / nrm
        q = q.to(self.dtype)
        self.reorthogonalize = reorthogonalize
        self.keep_basis = keep_basis or reorthogonalize
        self.breakdown_tol = breakdown_tol
        self._capacity = min(self.dim, capacity) if capacity is not None else 0
        self._basis = torch.empty(0, self.dim, dtype=self.dtype, device=self.device)  # allocated at the first step
        self._q = q
        self._q_prev: Tensor | None = None
        self.alphas: list[float] = []
        self.betas: list[float] = []  # beta_k couples q_k and q_{k+1}; len == len(alphas)
        self.breakdown = False
        self._scale = 0.0
        #: Seconds spent in operator products (the rest is bookkeeping).
        self.product_seconds = 0.0

    @property
    def num_iters(self) -> int:
        """Lanczos steps taken so far."""
        return len(self.alphas)

    def _grow(self, q: Tensor) -> None:
        cap = self._basis.shape[0]
        m = len(self.alphas)
        if m >= cap:
            new_cap = min(self.dim, max(8, 2 * cap, self._capacity))
            nb = torch.empty(new_cap, self.dim, dtype=self.dtype, device=self.device)
            nb[:cap] = self._basis
            self._basis = nb
        self._basis[m] = q

    def trim(self) -> None:
        """Release the basis rows allocated but not used yet (they are allocated again, at the
        capacity asked for, at the next step): for a run that waits while others go on."""
        self._basis = self._basis[: len(self.alphas)].clone()

    def can_step(self) -> bool:
        """Whether another step is possible (no breakdown yet and ``m < P``)."""
        return not self.breakdown and len(self.alphas) < self.dim

    def current(self) -> Tensor:
        """The unit vector :math:`q_{m+1}` (in the basis dtype) whose product the next step needs."""
        return self._q

    def step(self) -> bool:
        """One Lanczos step; returns ``False`` (and does nothing) after a breakdown or once
        ``m == P``."""
        if not self.can_step():
            return False
        t0 = time.perf_counter()
        w = self.op.matvec(self._q)
        self.product_seconds += time.perf_counter() - t0
        self.advance(w)
        return True

    def advance(self, w: Tensor) -> None:
        """Finish a step given ``w`` = :math:`A q_{m+1}` (see :meth:`current`), computed by
        the caller (e.g. as one row of a block product)."""
        m = len(self.alphas)
        q = self._q
        if self.keep_basis:
            self._grow(q)
        # w is float64 (in place below); q, q_prev and the basis are in the basis dtype
        w = w.to(device=self.device, dtype=torch.float64)
        alpha = float(torch.dot(w, q.to(torch.float64)))
        w.sub_(q, alpha=alpha)
        if m > 0 and self._q_prev is not None:
            w.sub_(self._q_prev, alpha=self.betas[-1])
        if self.reorthogonalize:
            Q = self._basis[: m + 1]
            for _ in range(2):
                w.sub_(Q.T @ _coefficients(Q, w).to(self.dtype))
        beta = float(w.norm())
        self.alphas.append(alpha)
        self._scale = max(self._scale, abs(alpha), beta)
        self.betas.append(beta)
        if beta <= self.breakdown_tol * max(self._scale, 1e-300) or m + 1 >= self.dim:
            self.breakdown = beta <= self.breakdown_tol * max(self._scale, 1e-300)
            if self.breakdown:
                self.betas[-1] = 0.0
            self._q_prev, self._q = q, (w / beta if beta > 0 else w).to(self.dtype)
            return
        self._q_prev, self._q = q, (w / beta).to(self.dtype)

    def tridiagonal_eig(self) -> tuple[Tensor, Tensor]:
        """Eigen-decomposition ``(theta [m] ascending, S [m, m])`` of :math:`T_m` (float64, CPU)."""
        a = torch.tensor(self.alphas, dtype=torch.float64)
        b = torch.tensor(self.betas[:-1], dtype=torch.float64)
        T = torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1)
        return torch.linalg.eigh(T)

    def result(self, *, return_vectors: bool = False) -> LanczosResult:
        """The Ritz values and weights of the steps taken so far (and the Ritz vectors, if asked and kept)."""
        m = len(self.alphas)
        if m == 0:
            raise RuntimeError("no Lanczos step was taken")
        theta, S = self.tridiagonal_eig()
        beta_m = 0.0 if self.breakdown else self.betas[-1]
        vecs = None
        if return_vectors:
            if not self.keep_basis:
                raise ValueError("Ritz vectors need the basis: use reorthogonalize=True or keep_basis=True")
            vecs = (S.T.to(device=self.device, dtype=self.dtype) @ self._basis[:m]).to(torch.float64)
        return LanczosResult(
            alphas=torch.tensor(self.alphas, dtype=torch.float64),
            betas=torch.tensor(self.betas[:-1], dtype=torch.float64),
            ritz_values=theta,
            ritz_weights=S[0] ** 2,
            residuals=abs(beta_m) * S[-1].abs(),
            num_iters=m,
            breakdown=self.breakdown,
            ritz_vectors=vecs,
        )


def lanczos(
    op: LinearOperator,
    num_iters: int,
    *,
    seed: int = 0,
    v0: Tensor | None = None,
    reorthogonalize: bool = True,
    return_vectors: bool = False,
    progress: bool = False,
    basis_dtype: torch.dtype | None = None,
) -> LanczosResult:
    r"""Run ``num_iters`` Lanczos steps on ``op`` from a unit Gaussian start vector.

    Args:
        op: a symmetric operator (``dim``, ``device``, ``matvec``), e.g. :class:`HessianOperator`.
        num_iters: :math:`m`; capped at ``op.dim``. Stops early on breakdown (an invariant
            subspace was found: the Ritz values are then exact eigenvalues).
        seed: seed of the start vector (drawn on the CPU, so identical across devices).
        v0: an explicit start vector ``[P]`` instead (normalised here).
        reorthogonalize: full re-orthogonalisation (default). ``False`` gives the plain
            three-term recurrence, which uses :math:`O(P)` memory but produces spurious
            duplicate ("ghost") Ritz values once eigenvalues converge.
        return_vectors: also return the Ritz vectors ``[m, P]``.
        progress: show a tqdm progress bar.
        basis_dtype: dtype of the stored basis (default :func:`default_basis_dtype`: float32
            for float32 operators, float64 for float64 ones).

    Returns:
        :class:`LanczosResult` (tridiagonal coefficients, Ritz values and weights).

    Example: 30 steps on the diagonal matrix with eigenvalues 1, 2, ..., 100. The top Ritz
    value has converged; the weights are the squared first components of the Ritz vectors.

    >>> import torch
    >>> from hessian_lib.curvature import MatrixOperator
    >>> A = MatrixOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
    >>> result = lanczos(A, 30, seed=0)
    >>> round(float(result.ritz_values.max()), 3), round(float(result.ritz_weights.sum()), 12)
    (100.0, 1.0)
    """
    if num_iters < 1:
        raise ValueError(f"num_iters must be >= 1, got {num_iters}")
    proc = LanczosProcess(
        op,
        seed=seed,
        v0=v0,
        reorthogonalize=reorthogonalize,
        keep_basis=return_vectors,
        capacity=num_iters,
        basis_dtype=basis_dtype,
    )
    expect_products(op, min(num_iters, proc.dim))
    bar = progress_bar(min(num_iters, proc.dim), progress, "Lanczos")
    for _ in range(min(num_iters, proc.dim)):
        if not proc.step():
            break
        if bar is not None:
            bar.update(1)
        if proc.breakdown:
            break
    if bar is not None:
        bar.close()
    return proc.result(return_vectors=return_vectors)


@dataclass
class EigenResult:
    r"""Extremal eigenpairs from :func:`top_eigenvalues` / :func:`bottom_eigenvalues`.

    Attributes:
        eigenvalues: ``[k]`` float64, largest first (top) or smallest first (bottom).
        errors: ``[k]`` a-posteriori error bounds :math:`\min(r, r^2/\delta)` (:math:`r` the
            residual norm, :math:`\delta` the gap to the other Ritz values).
        eigenvectors: ``[k, P]`` unit float64 eigenvectors, if requested.
        converged: all ``k`` bounds met ``tol``.
        num_products: number of operator products used.
    """

    eigenvalues: Tensor
    errors: Tensor
    converged: bool
    num_products: int
    eigenvectors: Tensor | None = None
    lanczos: LanczosResult | None = field(default=None, repr=False)


def _extremal(
    op: LinearOperator,
    k: int,
    which: str,
    tol: float,
    max_iters: int | None,
    seed: int,
    return_eigenvectors: bool,
    check_every: int,
    progress: bool,
    basis_dtype: torch.dtype | None,
) -> EigenResult:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dim = int(op.dim)
    if k > dim:
        raise ValueError(f"k={k} exceeds the operator dimension {dim}")
    limit = dim if max_iters is None else min(dim, int(max_iters))
    limit = max(limit, min(dim, k))
    proc = LanczosProcess(op, seed=seed, reorthogonalize=True, basis_dtype=basis_dtype)
    expect_products(op, min(limit, EXTREMAL_PRODUCTS_GUESS + 4 * k))
    bar = progress_bar(limit, progress, f"Lanczos ({which})")
    converged = False
    errs = torch.full((k,), float("inf"), dtype=torch.float64)
    while proc.num_iters < limit:
        if not proc.step():
            break
        if bar is not None:
            bar.update(1)
        m = proc.num_iters
        done = proc.breakdown or m >= limit
        if m < k or (not done and (m - k) % check_every):
            continue
        theta, S = proc.tridiagonal_eig()
        beta_m = 0.0 if proc.breakdown else proc.betas[-1]
        res = abs(beta_m) * S[-1].abs()
        idx = torch.arange(m - 1, m - 1 - k, -1) if which == "top" else torch.arange(k)
        scale = theta.abs().max().clamp_min(1e-300)
        errs = torch.empty(k, dtype=torch.float64)
        for j, i in enumerate(idx.tolist()):
            others = torch.cat([theta[:i], theta[i + 1 :]])
            r = res[i]
            # the gap bound r^2/gap needs a second Ritz value; with one, only the residual bounds the error
            if others.numel():
                gap = (others - theta[i]).abs().min()
                errs[j] = torch.minimum(r, r * r / gap.clamp_min(1e-300))
            else:
                errs[j] = r
        ref = torch.maximum(theta[idx].abs(), 1e-3 * scale)
        if bool((errs <= tol * ref).all()) or proc.breakdown or m >= dim:
            converged = bool((errs <= tol * ref).all()) or proc.breakdown or m >= dim
            break
    if bar is not None:
        bar.close()
    lr = proc.result(return_vectors=return_eigenvectors)
    m = lr.num_iters
    kk = min(k, m)
    idx = torch.arange(m - 1, m - 1 - kk, -1) if which == "top" else torch.arange(kk)
    vecs = lr.ritz_vectors[idx] if lr.ritz_vectors is not None else None
    return EigenResult(
        eigenvalues=lr.ritz_values[idx],
        errors=errs[:kk],
        converged=converged,
        num_products=m,
        eigenvectors=vecs,
        lanczos=lr,
    )


def top_eigenvalues(
    op: LinearOperator,
    k: int = 1,
    *,
    tol: float = 1e-4,
    max_iters: int | None = 300,
    seed: int = 0,
    return_eigenvectors: bool = False,
    check_every: int = 2,
    progress: bool = False,
    basis_dtype: torch.dtype | None = None,
) -> EigenResult:
    r"""The ``k`` algebraically largest eigenvalues (largest first) by Lanczos with full
    re-orthogonalisation, stopped when every one of them has an a-posteriori error bound
    :math:`\min(r, r^2/\delta) \le` ``tol`` :math:`\cdot \max(|\theta|, 10^{-3}\max_j|\theta_j|)`,
    or after ``max_iters`` products (then ``converged`` is ``False``).

    Lanczos finds one copy of a repeated eigenvalue per start vector; the spectra of
    trained networks have distinct outliers, for which this is exact. ``basis_dtype`` as in
    :func:`lanczos`.

    >>> import torch
    >>> from hessian_lib.curvature import MatrixOperator
    >>> A = MatrixOperator(torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64)))
    >>> top = top_eigenvalues(A, k=2, seed=0)
    >>> top.eigenvalues.round(decimals=2).tolist(), top.converged
    ([100.0, 99.0], True)
    """
    return _extremal(op, k, "top", tol, max_iters, seed, return_eigenvectors, check_every, progress, basis_dtype)


def bottom_eigenvalues(
    op: LinearOperator,
    k: int = 1,
    *,
    tol: float = 1e-4,
    max_iters: int | None = 300,
    seed: int = 0,
    return_eigenvectors: bool = False,
    check_every: int = 2,
    progress: bool = False,
    basis_dtype: torch.dtype | None = None,
) -> EigenResult:
    """The ``k`` algebraically smallest eigenvalues (most negative curvature first); same
    stopping rule as :func:`top_eigenvalues`."""
    return _extremal(op, k, "bottom", tol, max_iters, seed, return_eigenvectors, check_every, progress, basis_dtype)
