"""What the ``spectrum`` command measures: a network from a checkpoint, and the images it is measured on.

Every check here is cheap and runs before any curvature product, so a wrong path, a checkpoint of
another network or a batch larger than the data fails at once with :class:`SpectrumInputError`.

The network is a registered model (:data:`hessian_lib.models.MODEL_NAMES`), a ``module:function``
that returns an ``nn.Module``, or, when neither is given, the network a checkpoint of the ``train``
command names in its recipe. The data is CIFAR-100 (``cifar100-train`` or ``cifar100-test``, test-time
transforms) or a ``.npz`` file of the user's own (see :func:`load_images`).
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hessian_lib.data import DataError, load_cifar100

__all__ = ["CIFAR_SOURCES", "SpectrumInputError", "load_images", "load_network", "parse_model_args", "pick_batch"]

#: The CIFAR-100 splits ``--data`` accepts besides a ``.npz`` path.
CIFAR_SOURCES = {"cifar100-train": "train", "cifar100-test": "test"}


class SpectrumInputError(ValueError):
    """A model, checkpoint or data set the ``spectrum`` command cannot use (said before any heavy work)."""


def parse_model_args(items: Sequence[str]) -> dict[str, Any]:
    """``["width=0.5", "depth=16"]`` -> ``{"width": 0.5, "depth": 16}`` (Python literals, else strings)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise SpectrumInputError(f"model argument {item!r} is not of the form NAME=VALUE")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


# ----------------------------------------------------------------------------- the checkpoint


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SpectrumInputError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated files, pickles of other formats...
        raise SpectrumInputError(f"cannot read checkpoint {path} ({type(err).__name__}: {err})") from err
    if isinstance(state, nn.Module):
        return {"model": state.state_dict()}
    if not isinstance(state, Mapping):
        raise SpectrumInputError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return dict(state)


def _state_dict(state: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint: its ``model`` or ``state_dict`` entry, or the mapping itself."""
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    weights = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not weights:
        raise SpectrumInputError(f"checkpoint {path} holds no weights (expected a state dict, or one under "
                                 "'model' or 'state_dict')")
    for prefix in ("module.", "_orig_mod."):  # DistributedDataParallel, torch.compile
        if all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix):]: v for k, v in weights.items()}
    return weights


def _check_match(model: nn.Module, weights: Mapping[str, torch.Tensor], path: Path, name: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    shapes = [f"{k} {list(weights[k].shape)} in the checkpoint, {list(own[k].shape)} in the model"
              for k in own if k in weights and weights[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    if extra:
        problems.append(f"unexpected {extra[:4]}{' ...' if len(extra) > 4 else ''}")
    if shapes:
        problems.append("shapes differ: " + "; ".join(shapes[:3]))
    if problems:
        raise SpectrumInputError(f"checkpoint {path} does not match the model {name} ({', '.join(problems)}); "
                                 "check --model, --model-arg and --num-classes")


# ----------------------------------------------------------------------------- the network


def _from_function(spec: str, kwargs: Mapping[str, Any]) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise SpectrumInputError(f"cannot import {spec!r} ({type(err).__name__}: {err})") from err
    try:
        model = fn(**kwargs)
    except TypeError as err:
        raise SpectrumInputError(f"{spec}({', '.join(kwargs)}) failed: {err}") from err
    if not isinstance(model, nn.Module):
        raise SpectrumInputError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _from_registry(name: str, num_classes: int, kwargs: Mapping[str, Any]) -> nn.Module:
    from hessian_lib.models import build_model

    try:
        return build_model(name, num_classes=num_classes, **kwargs)
    except (ValueError, TypeError) as err:
        raise SpectrumInputError(str(err)) from err


def _from_recipe(config: Mapping[str, Any], num_classes: int) -> tuple[nn.Module, str]:
    from hessian_lib.experiments.training import model_from_profile
    from hessian_lib.profiles import TrainSizes

    known = {f.name for f in dataclasses.fields(TrainSizes)}
    recipe = TrainSizes(**{k: v for k, v in config.items() if k in known})
    return model_from_profile(recipe, num_classes=num_classes), f"{recipe.model} (width {recipe.width})"


def load_network(checkpoint: str | os.PathLike, model: str | None = None, *, num_classes: int = 100,
                 model_args: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The network of ``checkpoint`` with its weights loaded (on the CPU, eval mode), and what it is.

    ``model``: a registered name (built with ``num_classes`` outputs and ``model_args`` as its knobs), a
    ``module:function`` (called with ``model_args``), or ``None`` for the network a checkpoint of the
    ``train`` command names in its recipe. Returns ``(network, {"model", "checkpoint", "epoch"})``.
    """
    path = Path(checkpoint).expanduser()
    state = _read_checkpoint(path)
    weights = _state_dict(state, path)
    kwargs = dict(model_args or {})
    if model is None:
        config = state.get("config")
        if not isinstance(config, Mapping) or "model" not in config:
            raise SpectrumInputError(f"checkpoint {path} does not say which network it holds (it was not written by "
                                     "the train command): pass --model NAME or --model module:function")
        if kwargs:
            raise SpectrumInputError("--model-arg needs --model (the checkpoint's recipe sizes its network)")
        net, name = _from_recipe(config, num_classes)
    elif ":" in model:
        net, name = _from_function(model, kwargs), model
    else:
        net, name = _from_registry(model, num_classes, kwargs), model
    _check_match(net, weights, path, name)
    net.load_state_dict(weights)
    epoch = state.get("epoch")
    return net.eval(), {"model": name, "checkpoint": str(path), "epoch": None if epoch is None else int(epoch)}


# ----------------------------------------------------------------------------- the data


def _npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise SpectrumInputError(f"data file {path} does not exist")
    try:
        with np.load(path) as archive:
            missing = {"images", "labels"} - set(archive.files)
            if missing:
                raise SpectrumInputError(f"{path} lacks the arrays {sorted(missing)} (it has {archive.files})")
            images, labels = archive["images"], archive["labels"]
    except SpectrumInputError:
        raise
    except Exception as err:  # zip errors, truncated files
        raise SpectrumInputError(f"cannot read {path} ({type(err).__name__}: {err})") from err
    n = labels.shape[0] if labels.ndim == 1 else -1
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (n and labels.min() < 0):
        raise SpectrumInputError(f"{path}: labels should be non-negative integers [N], found {labels.dtype} "
                                 f"{list(labels.shape)}")
    uint8_ok = images.dtype == np.uint8 and images.ndim == 4 and images.shape[3] == 3
    float_ok = np.issubdtype(images.dtype, np.floating) and images.ndim == 4
    if not (uint8_ok or float_ok) or images.shape[0] != n or n == 0:
        raise SpectrumInputError(f"{path}: images should be uint8 [N, H, W, 3] or float [N, C, H, W] with N = "
                                 f"{n} (the labels), found {images.dtype} {list(images.shape)}")
    return images, labels.astype(np.int64)


def load_images(source: str, data_root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The images to measure on: ``[N, C, H, W]``, labels int64 ``[N]``, and a description.

    ``source``: ``cifar100-train`` / ``cifar100-test`` (from the data root) or a ``.npz`` file with
    ``images`` (uint8 ``[N, H, W, 3]`` RGB, or float ``[N, C, H, W]``) and ``labels`` (integers ``[N]``).
    uint8 images come back uint8 (CHW), for :func:`~hessian_lib.data.normalize` to apply the test-time
    transform (the CIFAR-100 mean and std, as in training) to the images actually used; float ones as given.
    """
    if source in CIFAR_SOURCES:
        try:
            split = load_cifar100(CIFAR_SOURCES[source], data_root)
        except DataError as err:
            raise SpectrumInputError(str(err)) from err
        return split.images, split.labels, f"CIFAR-100 {split.name} ({split.source})"
    path = Path(source).expanduser()
    if path.suffix != ".npz":
        raise SpectrumInputError(f"--data must be {', '.join(CIFAR_SOURCES)} or a .npz file, got {source!r}")
    images, labels = _npz_arrays(path)
    if images.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    else:
        x = torch.from_numpy(np.ascontiguousarray(images)).float()
    return x, torch.from_numpy(labels), str(path)


def pick_batch(n: int, batch_size: int | None, seed: int) -> torch.Tensor | None:
    """Indices of one batch of ``batch_size`` of the ``n`` images (a seeded draw without replacement,
    int64 ``[B]``), or ``None`` for all of them."""
    if batch_size is None:
        return None
    if not 0 < batch_size <= n:
        raise SpectrumInputError(f"batch size {batch_size} must be in 1..{n} (the number of images)")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=gen)[:batch_size]
