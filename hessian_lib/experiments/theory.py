r"""Simulations of the Theory chapter: random-matrix outliers against their formulas.

Convention used throughout: the fluctuation of a batch Hessian has entry
variance :math:`\sigma^2 (1/B - 1/N)`, so in Wigner units
:math:`s(B)^2 = P\sigma^2 (1/B - 1/N) = s_1^2 (1/B - 1/N)`, where
:math:`s_1 = \sqrt{P}\,\sigma` is the noise scale of a single sample. Every
function is a pure function of its arguments and seed; tables come back as
:class:`pandas.DataFrame`. Dense eigensolves run with one BLAS thread
(:func:`hessian_lib.blas.limit_blas_threads`): at these sizes threads gain little
and, on shared cores, can cost an order of magnitude.

Given ``store=`` (a :class:`~hessian_lib.store.ResultsStore` or its folder), the simulations
(:func:`wigner_outlier_table`, :func:`bbp_sweep`, :func:`mp_outlier_table`, :func:`wigner_spectrum`,
:func:`explorer_sample`) are kept there like every other experiment, keyed by their arguments and
:data:`SIMULATION_VERSION`, and loaded on later calls. :func:`chapter_simulations` lists the calls the
chapter makes (:class:`Simulation`); the chapter makes them through the same functions, and the plan
(:mod:`hessian_lib.plan`) lists them as jobs.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd
import scipy.linalg

from hessian_lib import verdicts
from hessian_lib.blas import limit_blas_threads
from hessian_lib.laws import rmt
from hessian_lib.store import ResultsStore

if TYPE_CHECKING:
    from hessian_lib.profile_sections import TheorySizes
    from hessian_lib.profiles import Profile

__all__ = [
    "child_seed",
    "claim2_checks",
    "extreme_pair",
    "wigner_outlier_table",
    "bbp_sweep",
    "mp_outlier_table",
    "wigner_spectrum",
    "wishart_spectrum",
    "explorer_sample",
    "SIMULATION_VERSION",
    "CHAPTER",
    "Simulation",
    "chapter_simulations",
    "wigner_outliers",
    "bbp_transition",
    "mp_outliers",
    "spectrum_batch_sizes",
    "wigner_draw",
    "explorer_grid",
    "explorer_frame",
]

#: Part of every stored simulation's key: raise it when a simulation's code changes what it returns.
SIMULATION_VERSION = 1


def _stored(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``store=None`` to a simulation: with a store, its result is loaded from there or computed and saved.

    Tables are kept column by column (their order too), arrays as ``eigenvalues``, dicts as they are; what
    comes back is always what the store loads, so a first and a later call give identical values.
    ``fn.config(*args, **kwargs)`` is the store config of a call.
    """
    signature = inspect.signature(fn)

    def make_config(*args: Any, **kwargs: Any) -> dict[str, Any]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return {"experiment": f"theory.{fn.__name__}", "version": SIMULATION_VERSION, **bound.arguments}

    @functools.wraps(fn)
    def wrapper(*args: Any, store: ResultsStore | str | None = None, **kwargs: Any) -> Any:
        if store is None:
            return fn(*args, **kwargs)
        config = make_config(*args, **kwargs)
        store = store if isinstance(store, ResultsStore) else ResultsStore(store)

        def compute() -> dict[str, Any]:
            out = fn(*args, **kwargs)
            if isinstance(out, pd.DataFrame):
                return {"columns": list(out.columns), "table": out.to_dict("list")}
            return {"eigenvalues": out} if isinstance(out, np.ndarray) else out

        record = store.cached(config, compute)
        if "table" in record:
            return pd.DataFrame({c: record["table"][c] for c in record["columns"]})
        return record["eigenvalues"] if set(record) == {"eigenvalues"} else record

    wrapper.config = make_config  # type: ignore[attr-defined]  # the store config of a call, without computing it
    return wrapper


def child_seed(seed: int, *keys: int) -> int:
    """A reproducible, independent integer seed for the sample indexed by ``keys``."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def extreme_pair(matrix: np.ndarray) -> tuple[float, float]:
    """(largest, smallest) eigenvalue of a symmetric matrix, via two partial eigensolves."""
    p = matrix.shape[0]
    top = scipy.linalg.eigvalsh(matrix, subset_by_index=[p - 1, p - 1])[0]
    bottom = scipy.linalg.eigvalsh(matrix, subset_by_index=[0, 0])[0]
    return float(top), float(bottom)


def _wigner_extremes_row(dim: int, spikes: Sequence[float], s: float, repeats: int, seed: int, key: int) -> dict:
    """Predicted and measured (mean, sd over ``repeats`` samples) extreme eigenvalues at noise scale s."""
    top_pred, bottom_pred = (float(v) for v in rmt.wigner_extremes(spikes, s))
    measured = np.array([
        extreme_pair(rmt.sample_spiked_wigner(dim, spikes, s, seed=child_seed(seed, key, r))) for r in range(repeats)
    ])
    return {
        "top predicted": top_pred,
        "top measured": measured[:, 0].mean(),
        "top sd": measured[:, 0].std(ddof=1) if repeats > 1 else np.nan,
        "bottom predicted": bottom_pred,
        "bottom measured": measured[:, 1].mean(),
        "bottom sd": measured[:, 1].std(ddof=1) if repeats > 1 else np.nan,
    }


@_stored
@limit_blas_threads(1)
def wigner_outlier_table(
    dim: int,
    batch_sizes: Sequence[int],
    *,
    spikes: Sequence[float] = (1.0, -1.0),
    s1: float = 4.0,
    n_data: int | None = None,
    repeats: int = 4,
    seed: int = 0,
) -> pd.DataFrame:
    r"""Measured vs predicted extreme eigenvalues of :math:`\mathrm{diag}(\text{spikes}) + W_{s(B)}`.

    One row per batch size B: the noise scale s, the predicted top and bottom
    (:func:`hessian_lib.laws.rmt.wigner_extremes`), and the mean and standard deviation
    over ``repeats`` independent P x P samples.
    """
    sigma2 = s1**2 / dim
    rows = []
    for i, b in enumerate(batch_sizes):
        s = float(rmt.noise_scale(dim, sigma2, b, n_data))
        rows.append({"B": int(b), "s(B)": s, **_wigner_extremes_row(dim, spikes, s, repeats, seed, i)})
    table = pd.DataFrame(rows)
    table["top rel. error"] = (table["top measured"] - table["top predicted"]).abs() / table["top predicted"].abs()
    table["bottom rel. error"] = ((table["bottom measured"] - table["bottom predicted"]).abs()
                                  / table["bottom predicted"].abs())
    return table


@_stored
@limit_blas_threads(1)
def bbp_sweep(
    dim: int,
    ratios: Sequence[float],
    *,
    theta: float = 1.0,
    repeats: int = 4,
    seed: int = 0,
) -> pd.DataFrame:
    r"""Extreme eigenvalues of :math:`\theta e_1e_1^\top - \theta e_2e_2^\top + W_s` for s = ratio * theta.

    Crosses the BBP threshold s = theta at ratio 1: below it the outliers sit at
    :math:`\pm(\theta + s^2/\theta)`, above it they merge with the edges :math:`\pm 2s`.
    """
    rows = []
    for i, ratio in enumerate(ratios):
        s = float(ratio) * theta
        rows.append({
            "s/theta": float(ratio),
            "s": s,
            **_wigner_extremes_row(dim, [theta, -theta], s, repeats, seed, 10_000 + i),
            "edge 2s": 2 * s,
            "outlier formula": theta + s**2 / theta,
        })
    return pd.DataFrame(rows)


@_stored
@limit_blas_threads(1)
def mp_outlier_table(
    dim: int,
    batch_sizes: Sequence[int],
    *,
    spike: float = 5.0,
    sigma2: float = 1.0,
    repeats: int = 4,
    seed: int = 0,
) -> pd.DataFrame:
    r"""Measured vs predicted top eigenvalue of a spiked sample covariance (GGN-like), one row per B.

    q = P/B; the prediction is :func:`hessian_lib.laws.rmt.mp_spiked_top`, and the
    column ``separated`` says whether the spike exceeds the threshold :math:`1 + \sqrt q`.
    """
    rows = []
    for i, b in enumerate(batch_sizes):
        q = dim / b
        predicted = float(rmt.mp_spiked_top(spike, q, sigma2))
        measured = np.array([
            extreme_pair(rmt.sample_spiked_wishart(dim, int(b), spike, sigma2, seed=child_seed(seed, 20_000 + i, r)))[0]
            for r in range(repeats)
        ])
        rows.append({
            "B": int(b),
            "q = P/B": q,
            "separated": bool(spike > float(rmt.mp_bbp_threshold(q))),
            "top predicted": predicted,
            "top measured": measured.mean(),
            "top sd": measured.std(ddof=1) if repeats > 1 else np.nan,
        })
    table = pd.DataFrame(rows)
    table["top rel. error"] = (table["top measured"] - table["top predicted"]).abs() / table["top predicted"]
    return table


@_stored
@limit_blas_threads(1)
def wigner_spectrum(dim: int, theta: float, s: float, *, seed: int) -> np.ndarray:
    """All eigenvalues [P] (ascending) of a spiked Wigner sample with one spike ``theta``."""
    return np.linalg.eigvalsh(rmt.sample_spiked_wigner(dim, [theta], s, seed=seed))


@limit_blas_threads(1)
def wishart_spectrum(dim: int, batch_size: int, spike: float, sigma2: float, *, seed: int) -> np.ndarray:
    """All eigenvalues [P] (ascending) of a spiked sample covariance (1/B) X^T X."""
    return np.linalg.eigvalsh(rmt.sample_spiked_wishart(dim, batch_size, spike, sigma2, seed=seed))


@_stored
def explorer_sample(batch_size: int, theta: float, dim: int, s1: float, *, n_data: int, seed: int = 0) -> dict:
    r"""The matrices of one frame of the Theory chapter's explorer, sampled and diagonalised.

    Wigner (Hessian-like): :math:`\theta e_1 e_1^\top + W_{s(B)}` with :math:`s(B) = s_1\sqrt{1/B - 1/N}`.
    Wishart (GGN-like): a spiked sample covariance of B samples in dimension P with bulk variance
    :math:`\sigma^2 = (s_1/4)^2` and spike :math:`\ell = 1 + 4\theta`. Returns the eigenvalues
    (``wigner_eigenvalues`` [P], ``wishart_eigenvalues`` [P], ascending), the predicted tops, and
    the parameters (``theta``, ``s``, ``q`` = P/B, ``sigma2``, ``spike``, ``batch_size``, ``dim``,
    ``s1``) that :func:`hessian_lib.plots.theory.rmt_explorer_frame` draws.
    """
    s = float(rmt.noise_scale(dim, s1**2 / dim, batch_size, n_data))
    sigma2, ell = (s1 / 4.0) ** 2, 1.0 + 4.0 * theta
    q = dim / batch_size
    return {
        "batch_size": int(batch_size),
        "dim": int(dim),
        "s1": float(s1),
        "theta": float(theta),
        "s": s,
        "q": q,
        "sigma2": sigma2,
        "spike": ell,
        "wigner_eigenvalues": wigner_spectrum(
            dim, theta, s, seed=child_seed(seed, dim, batch_size, int(theta * 100), int(s1 * 100))
        ),
        "wigner_predicted_top": float(rmt.wigner_outlier(theta, s)),
        "wishart_eigenvalues": wishart_spectrum(
            dim, batch_size, ell, sigma2, seed=child_seed(seed, dim, batch_size, 7)
        ),
        "wishart_predicted_top": float(rmt.mp_spiked_top(ell, q, sigma2)),
    }


def claim2_checks(wigner: pd.DataFrame, bbp: pd.DataFrame, mp: pd.DataFrame) -> pd.DataFrame:
    """The numbers behind the claim-2 verdict: the largest relative error of each formula check.

    Inputs are the tables of :func:`wigner_outlier_table`, :func:`bbp_sweep` and :func:`mp_outlier_table`.
    One row per check: ``counts`` is False for the BBP points inside the threshold window
    (:data:`hessian_lib.verdicts.CLAIM2_WINDOW`), shown for information only; ``reproduced`` applies
    :func:`hessian_lib.verdicts.formula_reproduced` to the others.
    """
    window = np.asarray(verdicts.in_threshold_window(bbp["s/theta"].to_numpy()), dtype=bool)
    bbp_err = np.maximum(
        (bbp["top measured"] - bbp["top predicted"]).abs() / bbp["top predicted"].abs(),
        (bbp["bottom measured"] - bbp["bottom predicted"]).abs() / bbp["bottom predicted"].abs(),
    ).to_numpy()
    rows = [
        ("Wigner outlier vs B, both ends", max(wigner["top rel. error"].max(), wigner["bottom rel. error"].max()),
         True),
        ("BBP sweep outside the threshold window", float(bbp_err[~window].max()) if (~window).any() else np.nan,
         True),
        ("BBP sweep inside the threshold window", float(bbp_err[window].max()) if window.any() else np.nan, False),
        ("spiked Marchenko-Pastur top vs B", float(mp["top rel. error"].max()), True),
    ]
    table = pd.DataFrame(rows, columns=["check", "largest relative error", "counts"])
    table["reproduced"] = [
        ("yes" if verdicts.formula_reproduced(err) else "no") if counts else "(not counted)"
        for err, counts in zip(table["largest relative error"], table["counts"])
    ]
    return table


# ----------------------------------------------------------------------------- the chapter's simulations
#
# The Theory chapter and the plan (hessian_lib.plan) both take the chapter's simulations from the functions
# below, so the plan's store keys are the keys the chapter reads.

#: The chapter whose simulations :func:`chapter_simulations` lists.
CHAPTER = "01_theory"
#: Seconds on one core of the 2-core machine, fitted to the first cpu build's cell times of this chapter
#: (benchmarks/book_results.md: Wigner table 2.3 s, BBP sweep 11.6 s, MP table 5.2 s, the explorer's 72 frames
#: about 49 s of sampling and eigensolves): all eigenvalues of a symmetric P x P matrix, per P^3; its two extremes
#: (:func:`extreme_pair`), per P^3; a GOE sample, per P^2; a B x P sample and its X^T X, per P^2 B.
EIGH_SECONDS, PAIR_SECONDS, GOE_SECONDS, GRAM_SECONDS = 1.5e-10, 1.7e-10, 2e-8, 7e-11


@dataclass(frozen=True)
class Simulation:
    """One stored simulation the chapter shows: ``fn(**kwargs)``, ``fn`` a stored function of this module.

    ``seconds``: estimated cost on one CPU core (the constants above); ``config``: its store config."""

    name: str
    fn: Callable[..., Any] = field(repr=False)
    kwargs: dict[str, Any] = field(repr=False)
    seconds: float

    @property
    def config(self) -> dict[str, Any]:
        """The store config of the call (its key is what the chapter reads)."""
        return self.fn.config(**self.kwargs)  # type: ignore[attr-defined]

    def run(self, store: ResultsStore | str | None = None) -> Any:
        """The simulation's result, loaded from ``store`` or computed (and saved there)."""
        return self.fn(**self.kwargs, store=store)


def _goe_pairs(dim: int, count: float) -> float:
    return count * (GOE_SECONDS * dim**2 + PAIR_SECONDS * dim**3)


def wigner_outliers(T: TheorySizes, seed: int) -> Simulation:
    """The chapter's Wigner outlier table: spikes +1 and -1, s1 = 4, one row per ``T.batch_sizes``."""
    return Simulation("Wigner outliers against B", wigner_outlier_table, dict(
        dim=T.dim, batch_sizes=T.batch_sizes, spikes=(1.0, -1.0), s1=4.0, n_data=T.n_data, repeats=T.repeats,
        seed=seed), _goe_pairs(T.dim, len(T.batch_sizes) * T.repeats))


def bbp_transition(T: TheorySizes, seed: int) -> Simulation:
    """The chapter's BBP sweep: ``T.threshold_points`` ratios s/theta from 0.2 to 3 (log-spaced), theta = 1."""
    ratios = np.geomspace(0.2, 3.0, T.threshold_points)
    return Simulation("BBP sweep", bbp_sweep, dict(dim=T.dim, ratios=ratios, theta=1.0, repeats=T.repeats, seed=seed),
                      _goe_pairs(T.dim, T.threshold_points * T.repeats))


def mp_outliers(T: TheorySizes, seed: int) -> Simulation:
    """The chapter's spiked Marchenko-Pastur table: spike 5, unit bulk variance, one row per ``T.mp_batch_sizes``."""
    seconds = T.repeats * sum(GRAM_SECONDS * T.dim**2 * b + PAIR_SECONDS * T.dim**3 for b in T.mp_batch_sizes)
    return Simulation("Marchenko-Pastur outliers against B", mp_outlier_table, dict(
        dim=T.dim, batch_sizes=T.mp_batch_sizes, spike=5.0, sigma2=1.0, repeats=T.repeats, seed=seed), seconds)


def spectrum_batch_sizes(T: TheorySizes) -> list[int]:
    """The batch sizes whose whole Wigner spectrum the chapter draws: first, middle and last of ``T.batch_sizes``."""
    return [T.batch_sizes[0], T.batch_sizes[len(T.batch_sizes) // 2], T.batch_sizes[-1]]


def wigner_draw(T: TheorySizes, seed: int, batch_size: int) -> Simulation:
    """One spiked Wigner sample (theta = 1, s1 = 4) at ``batch_size``; its noise scale is ``kwargs["s"]``."""
    s = float(rmt.noise_scale(T.dim, 16.0 / T.dim, batch_size, T.n_data))
    return Simulation(f"Wigner spectrum, B = {batch_size}", wigner_spectrum, dict(
        dim=T.dim, theta=1.0, s=s, seed=child_seed(seed, 99, batch_size)),
        GOE_SECONDS * T.dim**2 + EIGH_SECONDS * T.dim**3)


def explorer_grid(T: TheorySizes) -> dict[str, tuple]:
    """The explorer's slider values (keywords of :func:`explorer_frame`): one frame per combination."""
    return {"batch_size": T.widget_batch_sizes, "theta": T.widget_spike, "dim": T.widget_dim, "s1": T.widget_noise}


def explorer_frame(T: TheorySizes, seed: int, *, batch_size: int, theta: float, dim: int, s1: float) -> Simulation:
    """The sample behind one frame of the explorer (:func:`explorer_sample` at ``T.n_data``)."""
    seconds = GOE_SECONDS * dim**2 + GRAM_SECONDS * dim**2 * batch_size + 2 * EIGH_SECONDS * dim**3
    return Simulation(f"explorer frame: B = {batch_size}, theta = {theta}, P = {dim}, s1 = {s1}", explorer_sample,
                      dict(batch_size=batch_size, theta=theta, dim=dim, s1=s1, n_data=T.n_data, seed=seed), seconds)


def chapter_simulations(profile: Profile, seed: int) -> list[Simulation]:
    """Every stored simulation the Theory chapter shows under ``profile`` and base ``seed``."""
    T = profile.theory
    grid = explorer_grid(T)
    frames = [explorer_frame(T, seed, **dict(zip(grid, values))) for values in itertools.product(*grid.values())]
    return [wigner_outliers(T, seed), bbp_transition(T, seed), mp_outliers(T, seed),
            *(wigner_draw(T, seed, b) for b in spectrum_batch_sizes(T)), *frames]
