"""Models, data and helpers shared by the curvature tests."""

from __future__ import annotations

import os
import tempfile

import torch
import torch.multiprocessing as mp
from torch import Tensor, nn

from hessian_lib.curvature import GGNOperator, HessianOperator, dense_ggn, dense_hessian

LOSS = nn.CrossEntropyLoss()


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4))


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)
    )


def bn_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
    )
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 2, 6, 6))
    m.eval()
    return m


def make_data(kind: str, n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g) if kind == "mlp" else torch.randn(n, 2, 6, 6, generator=g)
    return x, torch.randint(0, 4, (n,), generator=g)


def split(x: torch.Tensor, y: torch.Tensor, cuts: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    edges = [0, *cuts, len(y)]
    return [(x[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def equal_batches(x: Tensor, y: Tensor, size: int = 8) -> list[tuple[Tensor, Tensor]]:
    """Batches of one size: one trace serves them all."""
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(y), size)]


#: ``name -> (model builder, data kind)``.
MODELS = {"mlp": (mlp, "mlp"), "cnn": (cnn, "cnn"), "bn": (bn_cnn, "cnn")}
#: ``kind -> (operator, dense reference)``.
KINDS = {"hessian": (HessianOperator, dense_hessian), "ggn": (GGNOperator, dense_ggn)}
#: The two product paths.
PATHS = ("linearize", "graph")
#: Agreement of float32 products with the dense references (relative).
TOL = 1e-5


def _gloo_worker(rank: int, world: int, init_file: str, out_dir: str, fn) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(fn(rank), os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_on_two_processes(fn) -> list:
    """``[fn(0), fn(1)]``, each run in its own process of a 2-process gloo group (``fn`` must be
    a module-level function, so that the processes can import it)."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_gloo_worker, args=(2, os.path.join(tmp, "init"), tmp, fn), nprocs=2, join=True)
        return [torch.load(os.path.join(tmp, f"r{r}.pt")) for r in range(2)]
