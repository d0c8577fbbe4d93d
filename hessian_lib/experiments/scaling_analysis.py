r"""What the Scaling chapter reads off its experiments: brackets, fits, the curvature prediction, verdicts.

:class:`ScalingResult` holds everything :func:`~hessian_lib.experiments.scaling.run_scaling`
computed over the profile's K independently trained networks; :meth:`ScalingResult.judge` applies
the rules of claims 4, 5 and 7 (:mod:`hessian_lib.verdicts`) to the networks pooled and to each
network alone. Every interval resamples the networks first, then what lies within each (sweeps,
the position of the threshold inside its bracket, draws of :math:`\lambda_{\max}`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from hessian_lib import verdicts
from hessian_lib.laws import brackets
from hessian_lib.profiles import Profile

__all__ = [
    "OPTIMIZERS",
    "OPTIMIZER_LABELS",
    "PARITY_ARMS",
    "Bracket",
    "ScalingJudgement",
    "ScalingResult",
]

#: The optimisers of the sweeps: plain SGD, heavy-ball SGD with the profile's momentum, Adam.
OPTIMIZERS: tuple[str, ...] = ("sgd", "momentum", "adam")
#: How the chapter names them.
OPTIMIZER_LABELS: dict[str, str] = {"sgd": "SGD", "momentum": "SGD + momentum", "adam": "Adam"}
#: The parity arms: (name, optimiser, batch multiples of B0, rule). ``rule``: how the base
#: learning rate is scaled with B/B0 (``linear``, ``sqrt`` or ``none``).
PARITY_ARMS: tuple[tuple[str, str, tuple[int, ...], str], ...] = (
    ("SGD, linear scaling", "momentum", (1, 4, 16), "linear"),
    ("SGD, unscaled (control)", "momentum", (16,), "none"),
    ("Adam, square-root scaling", "adam", (1, 4, 16), "sqrt"),
    ("Adam, linear scaling (control)", "adam", (16,), "linear"),
)
_MISSING = brackets.Interval(math.nan, math.nan, math.nan)


@dataclass
class Bracket:
    """The final bracket of one batch size's search.

    ``lower``: the largest stable learning rate tried below the first diverged one, ``upper``: the
    smallest diverged one (``nan`` when the search ran out of rungs on that side); ``trials``: the
    records of the trials in the order they ran (``lr``, ``index``, ``diverged``, ``losses``, ...).
    """

    batch_size: int
    lower: float
    upper: float
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bracketed(self) -> bool:
        """Both ends were found."""
        return math.isfinite(self.lower) and math.isfinite(self.upper)

    @property
    def middle(self) -> float:
        """The geometric middle of the bracket (NaN when not bracketed)."""
        return math.sqrt(self.lower * self.upper) if self.bracketed else math.nan


@dataclass
class ScalingJudgement:
    """Claims 4, 5 and 7 judged on the networks pooled and on each network alone.

    ``words``: claim -> pooled word; ``per_network``: claim -> one word per network;
    ``optimizer_words``: the claim-4 word of plain SGD and of SGD with momentum (pooled; claim 4 is
    the weaker); ``fits``: optimiser -> :meth:`ScalingResult.fits` pooled; ``parity``: ``sgd`` and
    ``adam`` -> ``(at B0, [larger B], control, holds)`` pooled; ``mechanism``: optimiser (``sgd``,
    ``momentum``) -> ``(slope interval, level)`` pooled, ``network_mechanism`` per network;
    ``conditions``: the claim-4 parts per SGD optimiser (pooled).
    """

    words: dict[int, str]
    per_network: dict[int, list[str]]
    optimizer_words: dict[str, str]
    fits: dict[str, dict[str, Any]]
    parity: dict[str, tuple[float, list[float], float, bool]]
    mechanism: dict[str, tuple[brackets.Interval, float]]
    network_mechanism: list[dict[str, tuple[brackets.Interval, float]]]
    conditions: dict[str, dict[str, bool]]


@dataclass
class ScalingResult:
    """What the Scaling chapter shows, over K independently trained networks.

    ``sweeps``: optimiser -> one list of :class:`Bracket` per sweep; ``sweep_networks``: optimiser
    -> the network (0..K-1) each sweep started from; ``prediction``: the rows of
    :func:`~hessian_lib.experiments.scaling.curvature_prediction` with a ``network`` column;
    ``noise``: the gradient noise scale of network 0; ``parity``: the rows of
    :func:`~hessian_lib.experiments.scaling.parity_runs`; ``base_lrs``: the parity learning rates at
    B0; ``long_sweeps``: per network, the plain-SGD brackets at the smallest and largest B with
    trials ``long_horizon`` times longer; ``start_epoch``; ``starting_losses`` and ``thresholds``
    (the divergence loss) per network; ``dim`` (P); ``network_seeds``; ``seconds`` per part.
    """

    profile: Profile
    sweeps: dict[str, list[list[Bracket]]]
    sweep_networks: dict[str, list[int]]
    prediction: pd.DataFrame
    noise: dict[str, float]
    parity: pd.DataFrame
    base_lrs: dict[str, float]
    long_sweeps: list[list[Bracket]]
    long_horizon: int
    start_epoch: int
    starting_losses: list[float]
    thresholds: list[float]
    dim: int
    network_seeds: tuple[int, ...]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def networks(self) -> int:
        """K, the number of independently trained networks."""
        return len(self.network_seeds)

    @property
    def batch_sizes(self) -> list[int]:
        """The batch sizes of the sweeps, in samples."""
        return [int(b) for b in self.profile.scaling.batch_sizes]

    @property
    def starting_loss(self) -> float:
        """Network 0's starting loss."""
        return self.starting_losses[0]

    @property
    def threshold(self) -> float:
        """Network 0's divergence threshold."""
        return self.thresholds[0]

    # --------------------------------------------------------------------- brackets and fits

    def brackets(self, optimizer: str) -> pd.DataFrame:
        """One row per (sweep, B): ``seed`` (the sweep), ``network``, ``batch_size``, ``lower``, ``upper``,
        ``bracketed``, ``trials``."""
        rows = []
        for s, (sweep, network) in enumerate(zip(self.sweeps[optimizer], self.sweep_networks[optimizer])):
            for br in sweep:
                rows.append({"seed": s, "network": network, "batch_size": br.batch_size, "lower": br.lower,
                             "upper": br.upper, "bracketed": br.bracketed, "trials": len(br.trials)})
        return pd.DataFrame(rows)

    def bracket_arrays(self, optimizer: str, networks: Sequence[int] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(B [n], lower [S, n], upper [S, n], network [S])`` over the batch sizes bracketed in every one of
        the S sweeps (of ``networks``, default all)."""
        frame = self.brackets(optimizer)
        if networks is not None:
            frame = frame[frame.network.isin(list(networks))]
        ok = frame.groupby("batch_size")["bracketed"].all()
        keep = [b for b in self.batch_sizes if ok.get(b, False)]
        groups = frame.groupby("seed")["network"].first().to_numpy()
        frame = frame[frame.batch_size.isin(keep)]
        lower = frame.pivot(index="seed", columns="batch_size", values="lower")[keep].to_numpy() if keep else \
            np.zeros((groups.size, 0))
        upper = frame.pivot(index="seed", columns="batch_size", values="upper")[keep].to_numpy() if keep else \
            np.zeros((groups.size, 0))
        return np.asarray(keep, dtype=float), lower, upper, groups

    def fits(self, optimizer: str, *, smallest: int = 3, level: float = 0.95, n_boot: int = 4000,
             networks: Sequence[int] | None = None) -> dict[str, Any]:
        """Fits to the final brackets of the batch sizes bracketed in every sweep, with bootstrap intervals.

        ``slope``: log-log slope over them; ``slope_small``: over the ``smallest`` smallest batch
        sizes of the grid (absent unless all of those are bracketed); ``saturating`` and ``sqrt``:
        :func:`~hessian_lib.laws.brackets.fit_saturating_brackets` and the square-root law
        (:func:`~hessian_lib.laws.brackets.fit_power_brackets`); ``unbracketed``: the grid points left out.
        The bootstrap resamples networks, then sweeps within each. ``networks``: only their sweeps.
        """
        b, lower, upper, groups = self.bracket_arrays(optimizer, networks)
        out: dict[str, Any] = {"batch_sizes": b, "lower": lower, "upper": upper,
                               "unbracketed": sorted(set(self.batch_sizes) - {int(v) for v in b})}
        if b.size >= 2:
            out["slope"] = brackets.bootstrap_slope(b, lower, upper, level=level, n_boot=n_boot, seed=1, groups=groups)
        first = self.batch_sizes[:smallest]
        if smallest >= 2 and [int(v) for v in b[:smallest]] == first:
            out["slope_small"] = brackets.bootstrap_slope(b[:smallest], lower[:, :smallest], upper[:, :smallest],
                                                         level=level, n_boot=n_boot, seed=2, groups=groups)
        if b.size >= 3:
            out["saturating"] = brackets.fit_saturating_brackets(b, lower, upper, level=level, seed=3, groups=groups)
            out["sqrt"] = brackets.fit_power_brackets(b, lower, upper, 0.5, level=level, seed=4, groups=groups)
        return out

    def claim4_evidence(self, fit: Mapping[str, Any], parity: bool) -> dict[str, Any]:
        """The arguments of :func:`hessian_lib.verdicts.claim4_verdict` from :meth:`fits` and linear-scaling parity.

        A saturating law passes only when it goes through the final bracket at every grid point (a
        grid point that is not bracketed fails it); B* is the bootstrap interval of the fit.
        """
        sat = fit.get("saturating")
        passes = sat is not None and bool(np.all(sat["passes"])) and not fit["unbracketed"]
        return {"small_slope": fit.get("slope_small", _MISSING),
                "critical_batch": sat["critical_batch"] if sat is not None else _MISSING,
                "grid": self.batch_sizes, "saturating_passes": passes, "parity": bool(parity)}

    @staticmethod
    def fit_table(fits: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
        """One row per optimiser: the slopes, the saturating law and the square-root law with their intervals."""
        def show(interval: Any) -> str:
            return str(interval) if interval is not None else "n/a"

        rows = []
        for optimizer, fit in fits.items():
            sat, sqrt = fit.get("saturating"), fit.get("sqrt")
            n = len(fit["batch_sizes"])
            rows.append({
                "optimiser": OPTIMIZER_LABELS[optimizer],
                "bracketed B": f"{n} of {n + len(fit['unbracketed'])}",
                "slope, smallest B": show(fit.get("slope_small")),
                "slope, all B": show(fit.get("slope")),
                "lr_inf": show(sat["lr_inf"]) if sat else "n/a",
                "B*": show(sat["critical_batch"]) if sat else "n/a",
                "saturating law through": f"{int(np.sum(sat['passes']))} of {n}" if sat else "n/a",
                "sqrt law through": f"{int(np.sum(sqrt['passes']))} of {n}" if sqrt else "n/a",
            })
        return pd.DataFrame(rows)

    # --------------------------------------------------------------------- parity

    def parity_accuracies(self, scaled_arm: str, control_arm: str, network: int | None = None
                          ) -> tuple[float, list[float], float]:
        """``(at B0, [at each larger B of the scaled arm], control)``: mean final test accuracies (%) over seeds
        (of ``network`` alone when given), the inputs of :func:`hessian_lib.verdicts.parity_holds`. Arms are names
        from :data:`PARITY_ARMS`."""
        frame = self.parity if network is None else self.parity[self.parity.network == network]
        means = frame.groupby(["arm", "multiple"]).test_acc.mean()
        scaled = means[scaled_arm]
        control = means[control_arm]
        return float(scaled[1]), [float(v) for m, v in scaled.items() if m != 1], float(control.iloc[-1])

    def parity_table(self) -> pd.DataFrame:
        """Per arm and batch size: the learning rate, the mean, standard deviation, min and max of the final
        test accuracy over seeds (%), and how many runs diverged."""
        grouped = self.parity.groupby(["arm", "batch_size"], sort=False)
        table = grouped.agg(lr=("lr", "first"), mean=("test_acc", "mean"), sd=("test_acc", "std"),
                            low=("test_acc", "min"), high=("test_acc", "max"), diverged=("diverged", "sum"),
                            runs=("seed", "count"))
        return table.reset_index()

    def _parity(self, network: int | None) -> dict[str, tuple[float, list[float], float, bool]]:
        """Parity of SGD and Adam, pooled or of one network's runs (pooled when that network has none)."""
        if network is not None and not (self.parity.network == network).any():
            network = None
        out = {}
        for name, scaled, control in (("sgd", "SGD, linear scaling", "SGD, unscaled (control)"),
                                      ("adam", "Adam, square-root scaling", "Adam, linear scaling (control)")):
            base, larger, ctrl = self.parity_accuracies(scaled, control, network)
            out[name] = (base, larger, ctrl, verdicts.parity_holds(base, larger, ctrl))
        return out

    # --------------------------------------------------------------------- the curvature prediction

    def trials(self) -> pd.DataFrame:
        """Every trial: ``optimizer``, ``seed``, ``network``, ``batch_size``, ``lr``, ``diverged``, ``diverged_step``,
        ``seconds``."""
        rows = []
        for optimizer, sweeps in self.sweeps.items():
            for s, (sweep, network) in enumerate(zip(sweeps, self.sweep_networks[optimizer])):
                for br in sweep:
                    for t in br.trials:
                        rows.append({"optimizer": optimizer, "seed": s, "network": network,
                                     "batch_size": br.batch_size, "lr": t["lr"], "diverged": bool(t["diverged"]),
                                     "diverged_step": int(t["diverged_step"]), "seconds": float(t["seconds"])})
        return pd.DataFrame(rows)

    def prediction_numerator(self, optimizer: str) -> float:
        """2 for plain SGD, 2(1 + beta) for heavy ball: the prediction is this over lambda_max(H_B)."""
        return 2.0 * (1.0 + self.profile.scaling.momentum) if optimizer == "momentum" else 2.0

    def lambdas(self, batch_sizes: Sequence[int] | None = None) -> np.ndarray:
        r"""[K, n, draws]: the measured :math:`\lambda_{\max}(H_B)` per network and B (default: the grid)."""
        b = self.batch_sizes if batch_sizes is None else [int(v) for v in batch_sizes]
        frame = self.prediction
        draws = int(frame.groupby(["network", "batch_size"]).size().max())
        out = np.full((self.networks, len(b), draws), np.nan)
        for (network, batch), group in frame.groupby(["network", "batch_size"]):
            if int(batch) in b:
                values = group.sort_values("draw")["lambda_max"].to_numpy()
                out[int(network), b.index(int(batch)), :values.size] = values
        return out

    def mechanism(self, optimizer: str = "sgd", *, level: float = 0.95, n_boot: int = 4000,
                  network: int | None = None) -> tuple[brackets.Interval, float]:
        """The slope of measured over predicted against B (:func:`~hessian_lib.laws.brackets.bootstrap_ratio_slope`) and
        its level (median ratio), over the batch sizes bracketed in every sweep; of ``network`` alone when given."""
        nets = None if network is None else [network]
        b, lower, upper, groups = self.bracket_arrays(optimizer, nets)
        if b.size < 2:
            return _MISSING, math.nan
        lam = self.lambdas(b)
        if network is not None:
            lam, groups = lam[[network]], np.zeros_like(groups)
        return brackets.bootstrap_ratio_slope(b, lower, upper, lam, groups,
                                             numerator=self.prediction_numerator(optimizer),
                                             level=level, n_boot=n_boot, seed=5)

    def prediction_table(self) -> pd.DataFrame:
        r"""Per B: lambda_max (mean over networks and draws, and the range of the networks' means), and measured
        over predicted for plain and momentum SGD.

        Network k's prediction is :math:`2/\bar\lambda_k` (and :math:`2(1+\beta)/\bar\lambda_k`) with
        :math:`\bar\lambda_k` the mean over its draws; its measured value is the geometric middle of
        its final bracket. ``*_predicted`` and ``*_measured`` are geometric means over networks,
        ``*_ratio`` the geometric mean of the networks' ratios; ``nan`` where not bracketed.
        """
        lam = self.lambdas()
        means = np.nanmean(lam, axis=2)  # [K, n]
        rows = []
        for i, b in enumerate(self.batch_sizes):
            row = {"batch_size": b, "lambda_max": float(np.nanmean(lam[:, i])),
                   "lambda_min_net": float(means[:, i].min()), "lambda_max_net": float(means[:, i].max())}
            for optimizer in ("sgd", "momentum"):
                predicted = self.prediction_numerator(optimizer) / means[:, i]  # [K]
                frame = self.brackets(optimizer)
                frame = frame[(frame.batch_size == b) & frame.bracketed]
                log_mid = 0.5 * (np.log(frame.lower.to_numpy()) + np.log(frame.upper.to_numpy()))
                nets = frame.network.to_numpy()
                ratios = log_mid - np.log(predicted[nets]) if len(frame) else np.array([math.nan])
                row[f"{optimizer}_predicted"] = float(np.exp(np.mean(np.log(predicted))))
                row[f"{optimizer}_measured"] = float(np.exp(np.mean(log_mid))) if len(frame) else math.nan
                row[f"{optimizer}_ratio"] = float(np.exp(np.mean(ratios)))
            rows.append(row)
        return pd.DataFrame(rows)

    def horizon_table(self) -> pd.DataFrame:
        r"""Plain SGD at the smallest and largest B, per network: the final bracket at the profile's trial length
        and at ``long_horizon`` times it, the prediction :math:`2/\bar\lambda`, and measured over predicted at both."""
        lam = np.nanmean(self.lambdas(), axis=2)
        rows = []
        for network, long in enumerate(self.long_sweeps):
            short = next(sw for sw, n in zip(self.sweeps["sgd"], self.sweep_networks["sgd"]) if n == network)
            for br in long:
                s = next(x for x in short if x.batch_size == br.batch_size)
                predicted = 2.0 / lam[network, self.batch_sizes.index(br.batch_size)]
                rows.append({"network": network, "batch_size": br.batch_size, "predicted": predicted,
                             "short lower": s.lower, "short upper": s.upper, "long lower": br.lower,
                             "long upper": br.upper, "short ratio": s.middle / predicted,
                             "long ratio": br.middle / predicted})
        return pd.DataFrame(rows)

    # --------------------------------------------------------------------- the verdicts

    def judge(self, *, level: float = verdicts.SCALING_LEVEL, n_boot: int = 4000) -> ScalingJudgement:
        """Claims 4, 5 and 7 on the networks pooled and on each network alone (rules: :mod:`hessian_lib.verdicts`).

        Claim 4 is judged for plain SGD and for SGD with momentum and takes the weaker word
        (:func:`~hessian_lib.verdicts.weakest`); its parity part is linear-scaling parity of SGD
        with momentum. Claim 5 is Adam's slope over the grid with square-root parity. Claim 7 is
        plain SGD's measured over predicted. A network's own words use its sweeps, its parity
        runs and its curvature.
        """
        small = verdicts.CLAIM4_SMALL_BATCHES

        def words_for(network: int | None) -> tuple[dict[int, str], dict[str, Any]]:
            nets = None if network is None else [network]
            fits = {opt: self.fits(opt, smallest=small, level=level, n_boot=n_boot, networks=nets)
                    for opt in OPTIMIZERS}
            parity = self._parity(network)
            per_opt, conditions = {}, {}
            for opt in ("sgd", "momentum"):
                evidence = self.claim4_evidence(fits[opt], parity["sgd"][3])
                per_opt[opt] = verdicts.claim4_verdict(**evidence)
                conditions[opt] = verdicts.claim4_conditions(**evidence)
            mech = {opt: self.mechanism(opt, level=level, n_boot=n_boot, network=network)
                    for opt in ("sgd", "momentum")}
            words = {4: verdicts.weakest(per_opt.values()),
                     5: verdicts.claim5_verdict(fits["adam"].get("slope", _MISSING), parity["adam"][3]),
                     7: verdicts.claim7_verdict(mech["sgd"][0])}
            return words, {"fits": fits, "parity": parity, "per_opt": per_opt, "mechanism": mech,
                           "conditions": conditions}

        pooled, detail = words_for(None)
        per_network_words = [words_for(k) for k in range(self.networks)]
        return ScalingJudgement(
            words=pooled,
            per_network={claim: [w[claim] for w, _ in per_network_words] for claim in pooled},
            optimizer_words=detail["per_opt"], fits=detail["fits"], parity=detail["parity"],
            mechanism=detail["mechanism"], network_mechanism=[d["mechanism"] for _, d in per_network_words],
            conditions=detail["conditions"])
