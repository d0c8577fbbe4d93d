"""The paper's CIFAR networks and a registry by name.

>>> model = build_model("vgg16", num_classes=100)
>>> count_parameters(model)
15291300
>>> small = build_model("vgg16", width=0.125)   # same architecture, 1/8 of the channels

Names (:data:`MODEL_NAMES`) and the knobs each accepts:

* ``vgg16``, ``vgg16_bn``: ``width`` (channel multiplier), ``depth`` (11, 13, 16, 19), ``dropout`` (0.5)
* ``wideresnet28`` (alias ``wrn28_10``): ``widen_factor`` (k, default 10), ``depth`` (6n+4, default 28),
  ``width``, ``dropout`` (0.0)
* ``fastcnn``: a small VGG-style BatchNorm network for the cpu profile (not the paper's; see
  :mod:`hessian_lib.models.fastcnn`): ``width``, ``dropout`` (0.0)
* ``preresnet110``, ``preresnet164``: ``depth`` (default from the name; 9n+2 for bottleneck blocks,
  so 11, 20, 29, ... are small versions), ``width``, ``bottleneck`` (default True: both are
  bottleneck networks in the authors' lineage; ``bottleneck=False`` with depth 6n+2 gives
  basic blocks, e.g. He et al.'s PreResNet-110)

A knob set to ``None`` takes the default, so a profile can pass every knob to every model.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from hessian_lib.models.fastcnn import FastCNN
from hessian_lib.models.preresnet import PreResNet
from hessian_lib.models.vgg import VGG
from hessian_lib.models.wideresnet import WideResNet

__all__ = [
    "FastCNN",
    "MODEL_NAMES",
    "PreResNet",
    "VGG",
    "WideResNet",
    "build_model",
    "canonical_name",
    "count_parameters",
    "model_note",
]


def _vgg(bn: bool) -> Callable[..., nn.Module]:
    def make(num_classes: int, width: float = 1.0, depth: int = 16, dropout: float = 0.5) -> nn.Module:
        return VGG(num_classes=num_classes, depth=depth, batch_norm=bn, width=width, dropout=dropout)
    return make


def _wrn(num_classes: int, width: float = 1.0, depth: int = 28, widen_factor: int = 10,
         dropout: float = 0.0) -> nn.Module:
    return WideResNet(num_classes=num_classes, depth=depth, widen_factor=widen_factor, width=width, dropout=dropout)


def _preresnet(default_depth: int) -> Callable[..., nn.Module]:
    def make(num_classes: int, width: float = 1.0, depth: int = default_depth,
             bottleneck: bool = True) -> nn.Module:
        return PreResNet(num_classes=num_classes, depth=depth, width=width, bottleneck=bottleneck)
    return make


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "vgg16": _vgg(False),
    "vgg16_bn": _vgg(True),
    "wideresnet28": _wrn,
    "preresnet110": _preresnet(110),
    "preresnet164": _preresnet(164),
    "fastcnn": FastCNN,
}
_ALIASES = {"wrn28_10": "wideresnet28", "wrn28": "wideresnet28", "vgg16bn": "vgg16_bn"}

#: The model names :func:`build_model` accepts (aliases aside).
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)

#: Where each network comes from, for the chapters to say which one they measure and why.
_NOTES: dict[str, str] = {
    "vgg16": "VGG-16 without BatchNorm, one of the paper's networks (the authors' CIFAR variant).",
    "vgg16_bn": "VGG-16 with BatchNorm, one of the paper's networks.",
    "wideresnet28": "WideResNet-28-k, one of the paper's networks.",
    "preresnet110": "PreResNet-110, one of the paper's networks.",
    "preresnet164": "PreResNet-164, from the PreResNet family the paper uses.",
    "fastcnn": (
        "`fastcnn`, a network of our own and not one of the paper's: the VGG recipe (3x3 convolutions, BatchNorm, "
        "ReLU, max-pooling) cut to five convolutions with global average pooling. It is here because the book's "
        "claims need a network that has actually learned within the few minutes of training two CPU cores allow; "
        "the paper's networks at the widths that fit were far from that in the trials that chose the recipe "
        "(a side-by-side time-to-accuracy benchmark is still to be written). The paper profile measures the "
        "authors' networks with the same code."
    ),
}


def model_note(name: str) -> str:
    """One or two sentences on where the network ``name`` comes from (the paper's, or ours and why)."""
    return _NOTES[canonical_name(name)]


def canonical_name(name: str) -> str:
    """The registry name of ``name`` (case, dashes and aliases folded); ``ValueError`` if unknown."""
    key = str(name).lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODEL_NAMES)}")
    return key


def build_model(name: str, num_classes: int = 100, **knobs: Any) -> nn.Module:
    """A freshly initialised network called ``name`` (see :data:`MODEL_NAMES`).

    ``knobs`` are the architecture's size options (``width``, ``depth``, ``widen_factor``,
    ``dropout``, ``bottleneck``); ``None`` values take the default, knobs the architecture
    does not have raise ``ValueError`` unless they are ``None``. Initialisation draws from the
    global torch RNG: seed it first for a reproducible network.
    """
    builder = _BUILDERS[canonical_name(name)]
    import inspect

    accepted = set(inspect.signature(builder).parameters) - {"num_classes"}
    given = {k: v for k, v in knobs.items() if v is not None}
    unknown = set(given) - accepted
    if unknown:
        raise ValueError(f"model {name!r} has no knob(s) {sorted(unknown)}; it accepts {sorted(accepted)}")
    return builder(num_classes, **given)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of scalar parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
