"""The plan of a book build: every experiment the chapters need, its store key, dependencies and cost.

:func:`build_plan` lists :class:`Job` s in dependency order. Each job is one store entry: a
training run, a learner run, an analysis, or the record of a stage
(:mod:`hessian_lib.experiments.stages`) that caches its own parts. Its config comes from the
same functions the chapters call (``train_config``, ``run_config``, ``stage_config``, ...), and
its ``run`` calls the same code the chapter does, so a store the plan's jobs filled is one the
chapters read without computing.

The spectra chapter's small dense check is computed when the chapter runs (seconds on a CPU) and
is not in the plan.

**Cost model.** A job's ``work`` counts image-gradients (one forward and backward pass of one image
through the profile's network); a Hessian- or GGN-vector product counts :data:`PRODUCT_GRADIENTS`
gradients per image, a perceptron image :data:`PERCEPTRON_SHARE` of one. The estimated seconds are
``work`` times the profile's seconds per image-gradient (:func:`seconds_per_image`), measured:
the paper profile's from one H100 (``benchmarks/bench_paper_spectrum.py``: 39 s per product over
50,000 images with WRN-28-10, 2.67 gradients per product), the others' from the cpu recipe on 2
cores (``benchmarks/bench_train.py``: 175 s of training for ``train.epochs`` epochs of
``data.train_subset`` images). Ladder searches count ``scaling.bisections + 3`` trials per batch
size; a spectrum's batch draws use ``batch_images`` images in all. The estimate is for planning
(which jobs dominate), not a promise: networks smaller than the calibrating one (the smoke
profile's) run faster. The theory chapter's simulations (random matrices, no images) run on the CPU
under every profile: their ``work`` is their estimated seconds on one core
(:attr:`hessian_lib.experiments.theory.Simulation.seconds`) divided by the profile's seconds per image-gradient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from hessian_lib.profiles import Profile, load_profile
from hessian_lib.store import ResultsStore, config_key

__all__ = ["Job", "RunContext", "build_plan", "plan_chapters", "plan_rows", "seconds_per_image", "PLAN_CHAPTERS"]

#: Gradients per image of one Hessian-vector product (measured on an H100 for WRN-28-10: 2.67).
PRODUCT_GRADIENTS = 2.67
#: Cost of one image through a mixture perceptron, in image-gradients of the profile's network.
PERCEPTRON_SHARE = 0.01
#: Measured seconds per image-gradient: one H100, WRN-28-10 (39 s per product over 50,000 images).
PAPER_SECONDS_PER_IMAGE = 39.0 / PRODUCT_GRADIENTS / 50_000
#: Measured seconds of the cpu profile's training run on 2 cores (benchmarks/train_results.md).
CPU_TRAIN_SECONDS = 175.0
#: The chapters whose experiments the plan lists, in reading order.
PLAN_CHAPTERS = ("01_theory", "02_spectra", "03_scaling", "04_learner", "05_mixture")


@dataclass(frozen=True)
class RunContext:
    """Where and how a job computes: the resolved profile, base seed, store, data root and device."""

    profile: Profile
    seed: int
    store: ResultsStore
    data_root: str | os.PathLike | None = None
    device: Any = "auto"


@dataclass(frozen=True)
class Job:
    """One experiment of the plan. ``key``: its store key; ``deps``: keys of the jobs it needs first;
    ``work``: image-gradients (see the module docstring); ``run(ctx)``: computes it into ``ctx.store``."""

    chapter: str
    name: str
    config: dict[str, Any] = field(repr=False)
    deps: tuple[str, ...]
    work: float
    run: Callable[[RunContext], Any] = field(repr=False, compare=False)

    @property
    def key(self) -> str:
        """The store key of ``config``."""
        return config_key(self.config)


def seconds_per_image(profile: Profile) -> float:
    """Measured seconds per image-gradient on the profile's device (module docstring): H100 for ``paper``,
    2 CPU cores otherwise."""
    if profile.name == "paper":
        return PAPER_SECONDS_PER_IMAGE
    cpu = load_profile("cpu")
    return CPU_TRAIN_SECONDS / (cpu.train.epochs * cpu.data.train_subset)


def _trials(profile: Profile) -> float:
    return profile.scaling.bisections + 3.0


# ----------------------------------------------------------------------------- the chapters' jobs


def _theory_jobs(p: Profile, seed: int) -> list[Job]:
    from hessian_lib.experiments import theory as TH

    def run(sim: TH.Simulation) -> Callable[[RunContext], Any]:
        return lambda c: sim.run(c.store)

    rate = seconds_per_image(p)
    return [Job(TH.CHAPTER, sim.name, sim.config, (), sim.seconds / rate, run(sim))
            for sim in TH.chapter_simulations(p, seed)]


def _training_jobs(p: Profile, seed: int) -> list[Job]:
    from hessian_lib.experiments.training import network_seeds, train_config, train_experiment

    def run(s: int) -> Callable[[RunContext], Any]:
        return lambda c: train_experiment(c.profile, seed=s, data_root=c.data_root, device=c.device, store=c.store)

    return [Job("02_spectra", f"network {k}: training (also for 03_scaling)", train_config(p, s), (),
                p.train.epochs * p.data.train_subset, run(s))
            for k, s in enumerate(network_seeds(seed, p.networks.count))]


def _spectra_jobs(p: Profile, seed: int, trained: list[Job]) -> list[Job]:
    from hessian_lib.experiments import spectra as S
    from hessian_lib.experiments.stages import stage_config

    sz = p.spectra
    per_matrix = (sz.lanczos_steps * (sz.dataset_size + sz.batch_images)
                  + sz.noise_samples * sz.noise_probes) * PRODUCT_GRADIENTS
    work = len(sz.checkpoints) * len(S.KINDS) * per_matrix

    def run(k: int) -> Callable[[RunContext], Any]:
        return lambda c: S.network_stage(c.profile, k, seed=c.seed, data_root=c.data_root, device=c.device,
                                         store=c.store)

    return [Job(S.CHAPTER, f"network {k}: spectra", stage_config(S.CHAPTER, f"network {k}", p, seed),
                (job.key,), work, run(k)) for k, job in enumerate(trained)]


def _scaling_jobs(p: Profile, seed: int, trained: list[Job]) -> list[Job]:
    from hessian_lib.experiments import scaling as SC
    from hessian_lib.experiments.stages import stage_config

    sz = p.scaling
    mean_b = sum(sz.batch_sizes) / len(sz.batch_sizes)
    sweeps = len(SC.OPTIMIZERS) * sz.seeds * len(sz.batch_sizes) * _trials(p) * sz.steps * mean_b
    longer = _trials(p) * sz.long_horizon * sz.steps * (min(sz.batch_sizes) + max(sz.batch_sizes))
    prediction = sz.curvature_draws * sz.lanczos_steps * sum(sz.batch_sizes) * PRODUCT_GRADIENTS
    parity = sum(len(multiples) for _, _, multiples, _ in SC.PARITY_ARMS) * sz.parity_seeds * sz.parity_epochs * \
        (sz.parity_subset + sz.parity_test_subset / 3)

    def run(k: int) -> Callable[[RunContext], Any]:
        return lambda c: SC.network_stage(SC.network_start(c.profile, k, seed=c.seed, data_root=c.data_root,
                                                           device=c.device, store=c.store), k, c.seed)

    networks = [Job(SC.CHAPTER, f"network {k}: sweeps, longer trials, prediction",
                    stage_config(SC.CHAPTER, f"network {k}", p, seed), (job.key,), sweeps + longer + prediction,
                    run(k)) for k, job in enumerate(trained)]
    final = Job(SC.CHAPTER, "noise scale and parity runs", stage_config(SC.CHAPTER, "noise and parity", p, seed),
                tuple(j.key for j in networks), parity + sz.noise_samples,
                lambda c: SC.run_scaling(c.profile, seed=c.seed, data_root=c.data_root, device=c.device,
                                         store=c.store))
    return [*networks, final]


def _learner_jobs(p: Profile, seed: int) -> list[Job]:
    from hessian_lib.experiments import learner as L
    from hessian_lib.experiments import learner_analysis as LA
    from hessian_lib.experiments.stages import stage_config

    sz = p.learner
    per_run = sz.epochs * sz.train_images

    def run(method: str, lr: float | None, s: int) -> Callable[[RunContext], Any]:
        return lambda c: L.run_method(c.profile, method, s, lr, data=L.learner_data(c.profile, c.data_root, c.device),
                                      store=c.store, device=c.device)

    def study(c: RunContext) -> Any:
        return L.run_study(c.profile, seed=c.seed, data_root=c.data_root, device=c.device, store=c.store, workers=1)

    runs = [Job(L.CHAPTER, f"{L.method_label(m, lr)}, seed {s}", L.run_config(p, m, s, lr), (), per_run, run(m, lr, s))
            for m, lr, s in L.first_runs(p, seed)]
    paired = Job(L.CHAPTER, "the paired seeds (SGD at the chosen rate, Polyak)",
                 stage_config(L.CHAPTER, "paired seeds", p, seed), tuple(j.key for j in runs),
                 2 * max(0, sz.paired_seeds - sz.seeds) * per_run, study)
    polyak = config_key(L.run_config(p, "polyak", seed))
    batch = L.run_recipe(p, "polyak").batch_size

    def analysis(name: str) -> Callable[[RunContext], Any]:
        def go(c: RunContext) -> Any:
            fn = getattr(LA, name)
            return fn(study(c), L.learner_data(c.profile, c.data_root, c.device), device=c.device)
        return go

    tradeoff = Job(L.CHAPTER, "the estimate's cost against its accuracy", LA.estimate_tradeoff_config(p, polyak),
                   (paired.key,), sum(sz.tradeoff_steps) * sz.curvature_images * 3.5 * PRODUCT_GRADIENTS,
                   analysis("estimate_tradeoff"))
    compare = Job(L.CHAPTER, "curvature subset against training batches", LA.subset_vs_batches_config(p, polyak),
                  (paired.key,), (sz.curvature_images + sz.compare_batches * batch) * sz.lanczos_steps
                  * PRODUCT_GRADIENTS, analysis("subset_vs_batches"))
    return [*runs, paired, tradeoff, compare]


def _mixture_jobs(p: Profile, seed: int) -> list[Job]:
    from hessian_lib.experiments import mixture_analysis as MA
    from hessian_lib.experiments.stages import stage_config

    sz = p.mixture
    shift = sz.shift_steps * sz.batch_images * PRODUCT_GRADIENTS
    measure = (sz.lanczos_steps + sz.ggn_steps) * sz.dataset_size * PRODUCT_GRADIENTS + shift
    mlp = sz.mlp_epochs * sz.train_samples

    def work(what: str | float) -> float:
        if what == "network":
            return sz.cnn_epochs * sz.cnn_train_images + measure
        return PERCEPTRON_SHARE * (mlp + (measure if what == "mixture" else sz.lanczos_steps * sz.dataset_size + shift))

    def run(what: str | float, k: int) -> Callable[[RunContext], Any]:
        return lambda c: MA.mixture_step(c.profile, what, k, seed=c.seed, data_root=c.data_root, device=c.device,
                                         store=c.store)

    jobs: dict[tuple[Any, int], Job] = {}
    for what, k in MA.mixture_steps(p):
        # the sweep's perceptron at the study's own separation is the one the study trains: train it once
        same = ("mixture", k) if what not in ("network", "mixture") and float(what) == sz.separation else None
        jobs[(what, k)] = Job(MA.CHAPTER, MA.step_name(what, k), stage_config(MA.CHAPTER, MA.step_name(what, k), p,
                              seed), (jobs[same].key,) if same else (), work(what), run(what, k))
    return list(jobs.values())


def plan_chapters(chapters: Sequence[str] | None) -> list[str]:
    """The chapters of :data:`PLAN_CHAPTERS` among ``chapters`` (names like ``03_scaling`` or paths; None: all)."""
    if chapters is None:
        return list(PLAN_CHAPTERS)
    names = {os.path.basename(str(c)).removesuffix(".ipynb") for c in chapters}
    return [c for c in PLAN_CHAPTERS if c in names]


def build_plan(profile: str | Profile = "cpu", *, overrides: Mapping[str, Any] | None = None, seed: int = 0,
               chapters: Sequence[str] | None = None) -> list[Job]:
    """Every job the ``chapters`` (default: all) need under ``profile`` and ``seed``, dependencies first."""
    p = load_profile(profile, overrides)
    wanted = plan_chapters(chapters)
    jobs: list[Job] = _theory_jobs(p, seed) if "01_theory" in wanted else []
    if {"02_spectra", "03_scaling"} & set(wanted):
        trained = _training_jobs(p, seed)
        jobs += trained
        if "02_spectra" in wanted:
            jobs += _spectra_jobs(p, seed, trained)
        if "03_scaling" in wanted:
            jobs += _scaling_jobs(p, seed, trained)
    if "04_learner" in wanted:
        jobs += _learner_jobs(p, seed)
    if "05_mixture" in wanted:
        jobs += _mixture_jobs(p, seed)
    return jobs


def plan_rows(jobs: Sequence[Job], profile: Profile, store: ResultsStore | None = None) -> list[dict[str, Any]]:
    """One plain dict per job (``chapter``, ``name``, ``key``, ``deps``, ``seconds``, ``stored``) for tables and JSON.

    ``stored``: whether ``store`` holds the job's result (None without a store)."""
    rate = seconds_per_image(profile)
    return [{"chapter": j.chapter, "name": j.name, "key": j.key, "deps": list(j.deps),
             "seconds": round(j.work * rate, 1), "stored": None if store is None else store.has(j.config)}
            for j in jobs]
