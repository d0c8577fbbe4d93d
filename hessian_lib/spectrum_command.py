"""``python -m hessian_lib spectrum``: the Hessian or GGN spectrum of a checkpoint, on one batch or all the data.

Two measurements (``--method``):

* ``top``: the ``--top`` largest eigenvalues by Lanczos with full re-orthogonalisation
  (:func:`~hessian_lib.curvature.top_eigenvalues`), each with its a-posteriori error bound
  min(r, r^2/gap) (r the residual norm of its Ritz pair), stopped when every bound is below ``--tol``
  times the eigenvalue or after ``--max-steps`` products;
* ``density``: the stochastic Lanczos quadrature density (:func:`~hessian_lib.curvature.slq_density`),
  ``--probes`` random start vectors of ``--steps`` Lanczos steps each, Gaussian-broadened.

The matrix is that of the mean cross-entropy over the images measured: one batch of ``--batch-size``
images (a seeded draw) or every image (``--full``, multiplied in chunks of ``--chunk-size``). BatchNorm
normalises with its running statistics (``--bn-mode eval``) or with the statistics of each batch or chunk
(``--bn-mode train``); a network with BatchNorm needs one of them said. The result goes to a JSON file
and a PNG figure next to it.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hessian_lib.curvature import BN_MODES, PATHS, GGNOperator, HessianOperator, slq_density, top_eigenvalues
from hessian_lib.data import normalize
from hessian_lib.device import resolve_device
from hessian_lib.spectrum_inputs import (
    CIFAR_SOURCES,
    SpectrumInputError,
    load_images,
    load_network,
    parse_model_args,
    pick_batch,
)
from hessian_lib.store import atomic_write_bytes

__all__ = ["add_spectrum_command", "measure_spectrum", "run_spectrum"]

_OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator}
_DTYPES = {"float32": torch.float32, "float64": torch.float64}

_DESCRIPTION = """\
The top eigenvalues (Lanczos, each with its residual error bound) or the spectral density
(stochastic Lanczos quadrature) of the Hessian or the Gauss-Newton matrix of a trained network's
mean cross-entropy, on one batch of images or on all of them. Writes a JSON file and a PNG figure.

The network: a checkpoint of the train command as it is (results/KEY/checkpoints/epoch_NNNN.pt,
KEY the result key train prints; its recipe names the network), or any state dict with
--model NAME (a registered model, sized with --model-arg) or --model module:function (a
function of yours that returns the network).

The data: cifar100-train, cifar100-test (test-time transforms), or a .npz file holding
  images  uint8 [N, H, W, 3] RGB (normalised with the CIFAR-100 mean and std, as in training)
          or float [N, C, H, W] (used as given), and
  labels  integers [N] in 0..C-1.
"""

_EXAMPLES = """\
examples:
  python -m hessian_lib spectrum results/KEY/checkpoints/epoch_0005.pt --batch-size 128 --bn-mode eval
  python -m hessian_lib spectrum net.pt --model vgg16_bn --model-arg width=0.5 --matrix ggn \\
      --method density --full --data cifar100-test --bn-mode train --out ggn_density.json
  python -m hessian_lib spectrum net.pt --model mypackage.nets:small_cnn --data mine.npz --num-classes 10 \\
      --batch-size 64 --top 5
"""


def add_spectrum_command(sub: Any) -> None:
    """Register the ``spectrum`` subcommand on the subparsers ``sub`` of the main parser."""
    p = sub.add_parser("spectrum", help="top eigenvalues or spectral density of a checkpoint's Hessian or GGN",
                       description=_DESCRIPTION, epilog=_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the checkpoint file (.pt)")
    p.add_argument("--model", default=None,
                   help="a registered model name or module:function (default: the network the checkpoint's "
                        "training recipe names)")
    p.add_argument("--model-arg", action="append", default=[], metavar="NAME=VALUE",
                   help="a size of the model, e.g. width=0.5 (repeatable)")
    p.add_argument("--num-classes", type=int, default=100, help="outputs of a registered model (default: 100)")
    p.add_argument("--data", default="cifar100-train",
                   help=f"{', '.join(CIFAR_SOURCES)} or a .npz file (default: cifar100-train)")
    p.add_argument("--data-root", default=None,
                   help="folder holding CIFAR-100 (default: $HESSIAN_LIB_DATA or ~/.cache/hessian_lib/cifar100)")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--batch-size", type=int, help="measure one random batch of this many images")
    size.add_argument("--full", action="store_true", help="measure all the images")
    p.add_argument("--chunk-size", type=int, default=256,
                   help="images per product chunk with --full (default: 256)")
    p.add_argument("--bn-mode", choices=BN_MODES, default=None,
                   help="BatchNorm in the products: eval (running statistics) or train (each batch's or chunk's "
                        "own statistics, as in the authors' scripts); required when the network has BatchNorm")
    p.add_argument("--matrix", choices=tuple(_OPERATORS), default="hessian", help="default: hessian")
    p.add_argument("--method", choices=("top", "density"), default="top", help="default: top")
    p.add_argument("--top", type=int, default=3, help="top: how many eigenvalues (default: 3)")
    p.add_argument("--tol", type=float, default=1e-3, help="top: relative error bound to stop at (default: 1e-3)")
    p.add_argument("--max-steps", type=int, default=100, help="top: at most this many Lanczos steps (default: 100)")
    p.add_argument("--steps", type=int, default=50, help="density: Lanczos steps per probe (default: 50)")
    p.add_argument("--probes", type=int, default=4, help="density: random start vectors (default: 4)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="adds this times the identity (default: 0)")
    p.add_argument("--path", choices=PATHS, default="auto",
                   help="how products are computed: linearize, graph, or auto (a timed trial; default)")
    p.add_argument("--dtype", choices=tuple(_DTYPES), default="float32", help="default: float32")
    p.add_argument("--seed", type=int, default=0, help="seed of the batch draw and the start vectors (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--out", default="spectrum.json",
                   help="the JSON file; the figure goes next to it with .png (default: spectrum.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_spectrum)


def _check_counts(args: argparse.Namespace) -> None:
    for name in ("num_classes", "chunk_size", "top", "max_steps", "steps", "probes"):
        if getattr(args, name) < 1:
            raise SpectrumInputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.tol > 0 or args.weight_decay < 0:
        raise SpectrumInputError("--tol must be positive and --weight-decay not negative")
    if args.out and Path(args.out).suffix != ".json":
        raise SpectrumInputError(f"--out must name a .json file, got {args.out!r}")


def _check_network(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bn_mode: str | None) -> str:
    """The BatchNorm mode to use, after one forward pass shows that the network takes the images."""
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and bn_mode is None:
        raise SpectrumInputError("the network has BatchNorm: say --bn-mode eval (running statistics) or --bn-mode "
                                 "train (each batch's statistics)")
    try:
        with torch.no_grad():
            out = model.eval()(x[:2])
    except Exception as err:
        raise SpectrumInputError(f"the network does not take images of shape {list(x.shape[1:])} "
                                 f"({type(err).__name__}: {err})") from err
    classes = int(out.shape[-1])
    if out.dim() != 2 or int(y.max()) >= classes:
        raise SpectrumInputError(f"the labels go up to {int(y.max())} but the network has {classes} outputs "
                                 "(set --num-classes, or check --data)")
    return bn_mode if has_bn else "none"


def measure_spectrum(model: nn.Module, data: Any, *, matrix: str = "hessian", method: str = "top",
                     bn_mode: str = "eval", top: int = 3, tol: float = 1e-3, max_steps: int = 100, steps: int = 50,
                     probes: int = 4, weight_decay: float = 0.0, seed: int = 0, path: str = "auto",
                     progress: bool = False) -> dict[str, Any]:
    """The spectrum of ``model``'s mean cross-entropy on ``data`` (a batch ``(x, y)`` or a list of them).

    ``method="top"``: ``eigenvalues`` and ``error_bounds`` [top] (largest first), ``converged``;
    ``"density"``: ``grid`` and ``density`` [2001], ``sigma``, ``ritz_values`` / ``ritz_weights`` per probe.
    Both: ``dim`` (P), ``num_samples``, ``num_products``.
    """
    op = _OPERATORS[matrix](model, nn.CrossEntropyLoss(), data, bn_mode=bn_mode, weight_decay=weight_decay,
                            path=path)
    out: dict[str, Any] = {"dim": op.dim, "num_samples": op.num_samples}
    if method == "top":
        res = top_eigenvalues(op, min(top, op.dim), tol=tol, max_iters=max_steps, seed=seed, progress=progress)
        out.update(eigenvalues=res.eigenvalues.tolist(), error_bounds=res.errors.tolist(),
                   converged=bool(res.converged), num_products=res.num_products)
    else:
        res = slq_density(op, min(steps, op.dim), probes, seed=seed, progress=progress)
        out.update(grid=res.grid.tolist(), density=res.density.tolist(), sigma=res.sigma,
                   ritz_values=[v.tolist() for v in res.ritz_values],
                   ritz_weights=[w.tolist() for w in res.ritz_weights], num_products=res.num_products)
    return out


def _write_outputs(result: dict[str, Any], out: Path) -> Path:
    import matplotlib.pyplot as plt

    from hessian_lib.plots.user_spectrum import spectrum_figure

    fig = spectrum_figure(result)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    png = out.with_suffix(".png")
    atomic_write_bytes(png, buf.getvalue())
    atomic_write_bytes(out, (json.dumps(result, indent=1) + "\n").encode())
    return png


def run_spectrum(args: argparse.Namespace) -> int:
    """The ``spectrum`` command: check everything, measure, write the JSON and the PNG; exit status."""
    _check_counts(args)
    device = resolve_device(args.device)
    model, about = load_network(args.checkpoint, args.model, num_classes=args.num_classes,
                                model_args=parse_model_args(args.model_arg))
    x, y, source = load_images(args.data, args.data_root)
    idx = pick_batch(len(y), args.batch_size, args.seed)
    if idx is not None:
        x, y = x[idx], y[idx]
    x = normalize(x) if x.dtype == torch.uint8 else x  # the test-time transform of training
    bn_mode = _check_network(model, x, y, args.bn_mode)
    dtype = _DTYPES[args.dtype]
    model = model.to(device=device, dtype=dtype)
    x, y = x.to(device=device, dtype=dtype), y.to(device)
    data: Any = (x, y) if idx is not None else [(x[i:i + args.chunk_size], y[i:i + args.chunk_size])
                                                for i in range(0, len(y), args.chunk_size)]
    start = time.perf_counter()
    result = measure_spectrum(model, data, matrix=args.matrix, method=args.method,
                              bn_mode="eval" if bn_mode == "none" else bn_mode, top=args.top, tol=args.tol,
                              max_steps=args.max_steps, steps=args.steps, probes=args.probes,
                              weight_decay=args.weight_decay, seed=args.seed, path=args.path,
                              progress=not args.quiet)
    result = {"matrix": args.matrix, "method": args.method, **about, "data": source,
              "batch_size": args.batch_size, "full": bool(args.full),
              "chunk_size": args.chunk_size if args.full else None, "bn_mode": bn_mode,
              "weight_decay": args.weight_decay, "dtype": args.dtype, "device": str(device), "seed": args.seed,
              **result, "seconds": round(time.perf_counter() - start, 3)}
    out = Path(args.out)
    png = _write_outputs(result, out)
    if args.method == "top":
        pairs = ", ".join(f"{v:.6g} (+- {e:.2g})" for v, e in zip(result["eigenvalues"], result["error_bounds"]))
        print(f"top eigenvalues of the {args.matrix}: {pairs}; {result['num_products']} products"
              f"{'' if result['converged'] else ', NOT converged (raise --max-steps)'}")
    else:
        print(f"{args.matrix} density from {args.probes} probes x {args.steps} steps, Ritz values in "
              f"[{min(min(v) for v in result['ritz_values']):.4g}, {max(max(v) for v in result['ritz_values']):.4g}]")
    print(f"wrote {out} and {png} ({result['seconds']:.1f} s)")
    return 0
