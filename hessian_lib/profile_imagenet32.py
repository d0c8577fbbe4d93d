"""The ``imagenet32`` section of a profile: the paper's AdamW protocol on downsampled ImageNet 32x32.

A section like those of :mod:`hessian_lib.profile_sections` (frozen, validates its own sizes); it lives
here to keep that module short. The data comes from :mod:`hessian_lib.imagenet32`. No chapter runs it yet.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hessian_lib.profile_sections import ProfileError, TrainSizes, _positive

__all__ = ["IMAGENET32_SIZES", "ImageNet32Sizes"]

#: Images in the published train and validation splits.
IMAGENET32_SIZES = {"train": 1_281_167, "val": 50_000}
#: How far a listed learning rate may sit from base_lr * sqrt(B / base_batch) (the paper rounds 2.83e-3 to 2.8e-3).
SQRT_RULE_SLACK = 0.02


@dataclass(frozen=True)
class ImageNet32Sizes:
    """WideResNet-28-``widen_factor`` trained with AdamW on ImageNet 32x32 (1,000 classes), the paper's test of
    square-root learning-rate scaling for adaptive methods.

    For each B in ``batch_sizes`` a run of ``epochs`` epochs at the learning rate of ``lrs`` in the same
    place, which follow the square-root rule ``base_lr * sqrt(B / base_batch)`` (within 2%); one control run
    at ``control_batch`` uses the linear rule's ``control_lr`` instead. Decoupled ``weight_decay``, the
    authors' ``schedule``; ``train_images`` / ``val_images`` of the published splits (all by default).
    """

    model: str = "wideresnet28"
    width: float = 1.0
    widen_factor: int = 10
    epochs: int = 50
    optimizer: str = "adamw"
    weight_decay: float = 1e-3
    schedule: str = "authors"
    base_batch: int = 128
    base_lr: float = 1e-3
    batch_sizes: tuple[int, ...] = (128, 512, 1024, 2048)
    lrs: tuple[float, ...] = (1e-3, 2e-3, 2.8e-3, 4e-3)
    control_batch: int = 512
    control_lr: float = 4e-3
    train_images: int = IMAGENET32_SIZES["train"]
    val_images: int = IMAGENET32_SIZES["val"]

    def recipe(self, batch_size: int, lr: float) -> TrainSizes:
        """The training recipe of one run (for :func:`hessian_lib.trainer.fit`), validated."""
        cfg = TrainSizes(model=self.model, width=self.width, widen_factor=self.widen_factor, dropout=0.0,
                         epochs=self.epochs, batch_size=batch_size, lr=lr, optimizer=self.optimizer,
                         weight_decay=self.weight_decay, schedule=self.schedule, checkpoint_every=self.epochs)
        cfg.validate()
        return cfg

    def runs(self) -> list[tuple[int, float]]:
        """``(batch size, learning rate)`` of every run: the square-root ones, then the linear control."""
        return [*zip(self.batch_sizes, self.lrs), (self.control_batch, self.control_lr)]

    def validate(self) -> None:
        """Raise :class:`ProfileError`, naming the key, for a value out of range."""
        for f in dataclasses.fields(self):
            if f.name != "weight_decay" and not isinstance(getattr(self, f.name), str):
                _positive(f"imagenet32.{f.name}", getattr(self, f.name))
        if self.weight_decay < 0:
            raise ProfileError(f"imagenet32.weight_decay must not be negative, got {self.weight_decay}")
        if self.optimizer not in ("adam", "adamw"):
            raise ProfileError(f"imagenet32.optimizer must be adam or adamw (the protocol tests adaptive methods), "
                               f"got {self.optimizer!r}")
        if len(self.batch_sizes) < 2 or list(self.batch_sizes) != sorted(set(self.batch_sizes)):
            raise ProfileError(f"imagenet32.batch_sizes needs at least two increasing batch sizes, "
                               f"got {self.batch_sizes}")
        if len(self.lrs) != len(self.batch_sizes):
            raise ProfileError(f"imagenet32.lrs needs one learning rate per batch size: {len(self.lrs)} for "
                               f"{len(self.batch_sizes)}")
        for b, lr in zip(self.batch_sizes, self.lrs):
            rule = self.base_lr * math.sqrt(b / self.base_batch)
            if abs(lr / rule - 1) > SQRT_RULE_SLACK:
                raise ProfileError(f"imagenet32.lrs: {lr:g} at B = {b} is not the square-root rule's "
                                   f"base_lr x sqrt(B / base_batch) = {rule:.3g}")
        linear = self.base_lr * self.control_batch / self.base_batch
        if abs(self.control_lr / linear - 1) > SQRT_RULE_SLACK:
            raise ProfileError(f"imagenet32.control_lr ({self.control_lr:g}) should be the linear rule's "
                               f"base_lr x control_batch / base_batch = {linear:.3g}")
        for split, name in (("train", "train_images"), ("val", "val_images")):
            if getattr(self, name) > IMAGENET32_SIZES[split]:
                raise ProfileError(f"imagenet32.{name} cannot exceed the {IMAGENET32_SIZES[split]:,} images of the "
                                   f"{split} split")
        if max(self.batch_sizes + (self.control_batch,)) > self.train_images:
            raise ProfileError("imagenet32.batch_sizes and control_batch cannot exceed imagenet32.train_images")
        for b, lr in self.runs():
            try:
                self.recipe(b, lr)
            except ProfileError as err:
                raise ProfileError(f"imagenet32: {err}") from None
