"""Named experiment profiles: every size an experiment uses, in one place.

A profile is data. Chapters and experiments read their sizes from it and never
branch on its name, so the ``cpu`` profile (fits CI: 2 cores, no GPU), the
``paper`` profile (the authors' protocol, for GPUs) and the tiny ``smoke``
profile (for tests) all run the same code path. Each section of a profile is a
frozen dataclass of :mod:`hessian_lib.profile_sections`, re-exported here.

>>> p = load_profile("cpu")
>>> p.theory.dim
800
>>> load_profile("cpu", {"theory.dim": 200}).theory.dim
200
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from hessian_lib.profile_imagenet32 import ImageNet32Sizes
from hessian_lib.profile_sections import (
    DataSizes,
    LearnerSizes,
    MixtureSizes,
    NetworkSizes,
    ProfileError,
    ScalingSizes,
    SpectraSizes,
    TheorySizes,
    TrainSizes,
)

__all__ = [
    "Profile",
    "ProfileError",
    "TheorySizes",
    "DataSizes",
    "TrainSizes",
    "NetworkSizes",
    "SpectraSizes",
    "LearnerSizes",
    "ScalingSizes",
    "MixtureSizes",
    "ImageNet32Sizes",
    "PROFILES",
    "load_profile",
    "profile_names",
]


@dataclass(frozen=True)
class Profile:
    """A named set of sizes. Sections group the sizes of one part of the work."""

    name: str
    description: str
    theory: TheorySizes = field(default_factory=TheorySizes)
    data: DataSizes = field(default_factory=DataSizes)
    train: TrainSizes = field(default_factory=TrainSizes)
    networks: NetworkSizes = field(default_factory=NetworkSizes)
    spectra: SpectraSizes = field(default_factory=SpectraSizes)
    learner: LearnerSizes = field(default_factory=LearnerSizes)
    scaling: ScalingSizes = field(default_factory=ScalingSizes)
    mixture: MixtureSizes = field(default_factory=MixtureSizes)
    imagenet32: ImageNet32Sizes = field(default_factory=ImageNet32Sizes)

    def validate(self) -> "Profile":
        """Validate every section and the limits between sections (:class:`ProfileError` if not); return ``self``."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        if self.networks.bn_refresh_images > self.data.train_subset:
            raise ProfileError(f"networks.bn_refresh_images ({self.networks.bn_refresh_images}) cannot exceed "
                               f"data.train_subset ({self.data.train_subset}): they are drawn from it")
        if self.spectra.dataset_size > self.data.train_subset:
            raise ProfileError("spectra.dataset_size cannot exceed data.train_subset (its images come from it)")
        self.scaling.check_against(self)
        return self

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> "Profile":
        """A copy with ``{"section.field": value}`` overrides applied and validated."""
        if not overrides:
            return self
        sections: dict[str, dict[str, Any]] = {}
        for key, value in overrides.items():
            section_name, _, field_name = key.partition(".")
            section = getattr(self, section_name, None)
            if not field_name or not dataclasses.is_dataclass(section):
                valid = ", ".join(sorted(override_keys(self)))
                raise ProfileError(f"unknown profile key {key!r}; valid keys: {valid}")
            names = {f.name: f for f in dataclasses.fields(section)}
            if field_name not in names:
                valid = ", ".join(f"{section_name}.{n}" for n in names)
                raise ProfileError(f"unknown profile key {key!r}; valid keys in this section: {valid}")
            sections.setdefault(section_name, {})[field_name] = _coerce(key, value, getattr(section, field_name))
        replaced = {name: dataclasses.replace(getattr(self, name), **fields) for name, fields in sections.items()}
        return dataclasses.replace(self, **replaced).validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable): used to hash experiment configs."""
        return dataclasses.asdict(self)


def override_keys(profile: Profile) -> list[str]:
    """Every ``section.field`` key that :meth:`Profile.with_overrides` accepts."""
    keys = []
    for f in dataclasses.fields(profile):
        section = getattr(profile, f.name)
        if dataclasses.is_dataclass(section):
            keys += [f"{f.name}.{g.name}" for g in dataclasses.fields(section)]
    return keys


def _coerce(key: str, value: Any, current: Any) -> Any:
    """Coerce an override (possibly a string from the command line) to the type of ``current``."""
    try:
        if isinstance(current, tuple):
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split()]
            kind = type(current[0]) if current else float
            return tuple(kind(v) for v in value)
        if isinstance(current, bool):
            if isinstance(value, str):
                return value.lower() in {"1", "true", "yes", "on"}
            return bool(value)
        if isinstance(current, int) and not isinstance(value, bool):
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError("not an integer")
            return int(as_float)
        return type(current)(value)
    except (TypeError, ValueError) as err:
        raise ProfileError(f"profile key {key!r}: cannot use {value!r} ({err})") from None


PROFILES: dict[str, Profile] = {
    "cpu": Profile(
        name="cpu",
        description="Fits CI: 2 CPU cores, no GPU; every chapter together in about 35 minutes.",
        # The fast recipe (benchmarks/train_results.md): a small VGG-style BatchNorm network (259,228
        # parameters) on all 50,000 training images, 8 epochs (the first 7 on random 24-pixel crops) in about
        # 2 minutes of training on 2 cores under bf16; Nesterov SGD, label smoothing, warm-up then linear decay to
        # zero; test accuracy on all 10,000 test images with test-time flips (53.5-53.6%; 5 epochs gave 48-49%).
        # mixed_precision: bf16 autocast in training on CPUs with native bf16 (AVX512-BF16/AMX): 1.4-1.9x faster
        # steps; float32 elsewhere (benchmarks/train_results.md).
        data=DataSizes(train_subset=50_000, test_subset=10_000, curvature_subset=1_000),
        train=TrainSizes(model="fastcnn", width=1.0, dropout=0.0, epochs=8, batch_size=128, lr=0.4, momentum=0.9,
                         nesterov=True, weight_decay=5e-4, label_smoothing=0.2, optimizer="sgd", schedule="linear",
                         warmup_epochs=0.25, checkpoint_every=1, eval_flip=True, low_res_epochs=7, low_res_size=24,
                         mixed_precision=True),
        # The learner race on all 45,000 training images left beside a 5,000-image validation split: 3 epochs on
        # 24-pixel crops (the recipe's fast epochs; 36% test accuracy at the recipe's lr), 7 methods x 2 seeds and a
        # third and fourth seed of the Polyak learner and the validated SGD (with three, the t interval of claim 6 was
        # 4.3 standard errors wide each side and its word moved with the base seed), run two at a time (one per
        # core), an SGD grid around
        # the recipe's lr 0.4, 5 Lanczos steps on 128 images once per epoch (10 set nearly the same rate at twice the
        # cost, and after bf16 training their share of a run rose to 12.5%); tested on all 10,000 images.
        # Three independently trained networks: every claim about trained networks is judged on each and pooled,
        # so its intervals carry the variation between networks (each about 2 minutes of training).
        networks=NetworkSizes(count=3, bn_refresh_images=2_000),
        # The batch-Hessian study at the ends and the middle of the 8-epoch recipe.
        spectra=SpectraSizes(checkpoints=(1, 4, 8)),
        # One sweep per optimiser from each network (three in all), so that the slope intervals include the
        # variation between networks and the scatter of the stability threshold from sweep to sweep; parity
        # runs one seed from each network.
        scaling=ScalingSizes(seeds=1, parity_seeds=3),
        learner=LearnerSizes(epochs=3, low_res=True, paired_seeds=4, sgd_lrs=(0.2, 0.4, 0.8), curvature_images=128,
                             lanczos_steps=5, every_steps=0, compare_batches=2, tradeoff_steps=(5, 10, 20, 40)),
        # The mixture study in about 5 minutes on 2 cores: C = 10 on both sides, so that the outlier search (the top
        # 2C + 1 Ritz values) converges within 50 Lanczos steps on N = 256 images; the network trained afresh on the
        # 5,000 training images of 10 CIFAR-100 classes (8 epochs, 6 of them on 24-pixel crops; about 20 s each), the
        # perceptron small enough (P = 2,442) for exact Hessians and Gauss-Newton matrices. The batch shift needs only
        # the top eigenvalue, which converges within 15 steps; the GGN's top 9 eigenvectors within 25.
        mixture=MixtureSizes(classes=10, dim=32, hidden=(32, 32), separation=2.5, separations=(1.0, 2.0, 2.5, 3.0, 4.0),
                             train_samples=2_000, test_samples=5_000, mlp_epochs=30, mlp_batch_size=50, mlp_lr=0.05,
                             cnn_train_images=5_000, cnn_epochs=8, cnn_low_res_epochs=6, cnn_lr=0.2,
                             dataset_size=256, batch_sizes=(4, 8, 16, 32), lanczos_steps=50, ggn_steps=25,
                             shift_steps=15, min_draws=3, max_draws=6, batch_images=600, chunk_size=256),
    ),
    "paper": Profile(
        name="paper",
        description="The authors' protocol at full scale: all of CIFAR-100, paper-size networks; needs GPUs.",
        theory=TheorySizes(dim=2000, repeats=10, widget_dim=(500, 2000)),
        data=DataSizes(train_subset=50_000, test_subset=10_000, curvature_subset=1_024),
        # VGG-16 (no BatchNorm), SGD lr 0.05 at B = 128, momentum 0.9, no weight decay, 300 epochs.
        train=TrainSizes(model="vgg16", width=1.0, epochs=300, batch_size=128, lr=0.05, momentum=0.9,
                         weight_decay=0.0, optimizer="sgd", schedule="authors", checkpoint_every=25),
        networks=NetworkSizes(count=3, bn_refresh_images=10_000),
        # The batch-Hessian study: B = 1..1024, 10 subsamples each, 100 Lanczos steps, every 25 epochs.
        # (at least the authors' 10 draws per B; more where the shift needs them).
        spectra=SpectraSizes(checkpoints=(25, 100, 200, 300), dataset_size=10_000,
                             batch_sizes=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), lanczos_steps=100,
                             min_draws=10, max_draws=40, batch_images=200_000, chunk_size=1_000,
                             noise_samples=64, noise_probes=4, dense_hidden=32, dense_samples=2_000),
        # Sweeps from the epoch-25 checkpoint on all of CIFAR-100, on the authors' sqrt(2) learning-rate grid
        # (bisected once more to 2^(1/4)); parity as in their scripts: SGD 0.05 and Adam 4e-4 at B = 128, 300 epochs.
        scaling=ScalingSizes(checkpoint=25, train_subset=50_000, batch_sizes=(32, 64, 128, 256, 512, 1024, 2048),
                             steps=200, loss_window=20, seeds=1, ladder_factor=2 ** 0.5, bisections=1,
                             max_ladder_steps=16,
                             adam_state_steps=20, curvature_images=4_096, curvature_draws=10, lanczos_steps=100,
                             noise_samples=4_096, parity_batch=128, parity_sgd_lr=0.05, parity_adam_lr=4e-4,
                             parity_epochs=300, parity_subset=50_000, parity_seeds=2, parity_from_checkpoint=False),
        # The authors' learner: PreResNet-110 on CIFAR-100 (5,000 images held out to choose SGD's rate), full
        # schedule, 20 Lanczos steps every epoch.
        learner=LearnerSizes(model="preresnet110", validation_images=5_000, train_images=45_000, test_images=10_000,
                             epochs=300, sgd_lrs=(0.025, 0.05, 0.1, 0.2), curvature_images=1_024, lanczos_steps=20,
                             every_steps=0, compare_batches=10),
        # C = 20 on both sides (one fine class from each superclass: 10,000 training images), 100 Lanczos steps as in
        # the authors' protocol; the perceptron (P = 9,556) still small enough for exact spectra on a GPU.
        mixture=MixtureSizes(classes=20, dim=64, hidden=(64, 64), separation=2.5,
                             separations=(1.0, 1.5, 2.0, 2.5, 3.0, 4.0), train_samples=10_000, test_samples=20_000,
                             mlp_epochs=100, mlp_batch_size=128, mlp_lr=0.05, cnn_train_images=10_000, cnn_epochs=100,
                             cnn_low_res_epochs=0, cnn_lr=0.0, dataset_size=2_048,
                             batch_sizes=(8, 16, 32, 64, 128, 256, 512), lanczos_steps=100, ggn_steps=100,
                             shift_steps=100, min_draws=10,
                             max_draws=40, batch_images=100_000, chunk_size=1_024),
        # The paper's Adam experiment: WRN-28-10, AdamW (decoupled weight decay 1e-3), 50 epochs on all of ImageNet
        # 32x32, square-root scaled 1e-3 @ 128, 2e-3 @ 512, 2.8e-3 @ 1024, 4e-3 @ 2048, linear control 4e-3 @ 512.
        imagenet32=ImageNet32Sizes(model="wideresnet28", widen_factor=10, epochs=50, optimizer="adamw",
                                   weight_decay=1e-3, base_batch=128, base_lr=1e-3, batch_sizes=(128, 512, 1024, 2048),
                                   lrs=(1e-3, 2e-3, 2.8e-3, 4e-3), control_batch=512, control_lr=4e-3),
    ),
    "smoke": Profile(
        name="smoke",
        description="The smallest sizes that still run every code path: for tests, seconds per chapter.",
        theory=TheorySizes(
            dim=200,
            batch_sizes=(1, 16, 256),
            repeats=2,
            mp_batch_sizes=(20, 100, 1000),
            threshold_points=7,
            widget_dim=(200,),
            widget_spike=(1.0, 2.0),
            widget_noise=(4.0,),
            widget_batch_sizes=(1, 16, 256),
        ),
        data=DataSizes(train_subset=500, test_subset=200, curvature_subset=100),
        train=TrainSizes(model="fastcnn", width=0.5, dropout=0.0, epochs=2, batch_size=50, lr=0.2, nesterov=True,
                         weight_decay=5e-4, label_smoothing=0.2, schedule="linear", warmup_epochs=0.25,
                         checkpoint_every=1, eval_flip=True),
        networks=NetworkSizes(count=2, bn_refresh_images=100),
        spectra=SpectraSizes(checkpoints=(1, 2), dataset_size=100, batch_sizes=(8, 16, 32), lanczos_steps=6,
                             min_draws=2, max_draws=3, batch_images=150, chunk_size=50, noise_samples=4,
                             noise_probes=1, dense_hidden=4, dense_samples=100),
        scaling=ScalingSizes(train_subset=200, batch_sizes=(4, 8, 16), steps=4, loss_window=2, max_ladder_steps=6,
                             adam_state_steps=2, curvature_images=64, curvature_draws=1, lanczos_steps=5,
                             noise_samples=16, parity_batch=4, parity_epochs=1, parity_subset=64,
                             parity_test_subset=100),
        learner=LearnerSizes(validation_images=100, train_images=200, test_images=200, epochs=1,
                             sgd_lrs=(0.03, 0.1, 0.3), curvature_images=50, lanczos_steps=4, every_steps=2,
                             compare_batches=2, tradeoff_steps=(2, 4)),
        mixture=MixtureSizes(classes=4, dim=8, hidden=(8,), separation=3.0, separations=(1.0, 3.0), train_samples=200,
                             test_samples=400, mlp_epochs=5, mlp_batch_size=20, mlp_lr=0.05, cnn_train_images=200,
                             cnn_epochs=1, cnn_low_res_epochs=0, cnn_lr=0.0, dataset_size=48, batch_sizes=(4, 8, 16),
                             lanczos_steps=10, ggn_steps=6, shift_steps=5, min_draws=2, max_draws=2, batch_images=56,
                             chunk_size=48),
        imagenet32=ImageNet32Sizes(width=0.125, widen_factor=2, epochs=1, batch_sizes=(8, 32), lrs=(2.5e-4, 5e-4),
                                   base_batch=8, base_lr=2.5e-4, control_batch=32, control_lr=1e-3, train_images=64,
                                   val_images=32),
    ),
}


def profile_names() -> list[str]:
    """Names of the available profiles."""
    return list(PROFILES)


def load_profile(name: str | Profile, overrides: Mapping[str, Any] | None = None) -> Profile:
    """The profile called ``name`` with optional ``{"section.field": value}`` overrides.

    Raises :class:`ProfileError` naming the valid choices for an unknown name or key.
    """
    if isinstance(name, Profile):
        return name.with_overrides(overrides)
    if name not in PROFILES:
        raise ProfileError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}")
    return PROFILES[name].validate().with_overrides(overrides)
