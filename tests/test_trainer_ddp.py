"""Data-parallel training: 2 CPU processes on gloo equal one process with the same global batch."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hessian_lib.data import load_cifar100, stratified_indices
from hessian_lib.models import build_model
from hessian_lib.profiles import TrainSizes
from hessian_lib.trainer import fit

# No dropout and no BatchNorm: nothing that depends on how the batch is split. Float32: under bf16 autocast the
# rounding of a half batch differs from the whole batch's, beyond any tolerance that would still test the averaging.
CFG = TrainSizes(model="vgg16", width=0.0625, epochs=2, batch_size=40, lr=0.02, checkpoint_every=1,
                 mixed_precision=False)


def _data(data_root):
    train = load_cifar100("train", data_root)
    test = load_cifar100("test", data_root)
    return train.subset(stratified_indices(train.labels, 160)), test.subset(stratified_indices(test.labels, 100))


def _run(data_root, checkpoint_dir=None):
    train, test = _data(data_root)
    torch.manual_seed(0)
    model = build_model("vgg16", width=CFG.width, dropout=0.0)
    result = fit(model, train, CFG, test=test, seed=3, device="cpu", quiet=True, checkpoint_dir=checkpoint_dir)
    return model, result


def _worker(rank, world, init_file, data_root, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, result = _run(data_root, checkpoint_dir=os.path.join(out, "ckpt"))
        if rank == 0:
            torch.save({"model": model.state_dict(), "history": result.history}, os.path.join(out, "ddp.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_equal_single_process(data_root, tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(data_root), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    single, result = _run(data_root)
    for name, value in single.state_dict().items():
        torch.testing.assert_close(ddp["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    for a, b in zip(ddp["history"], result.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_acc"] == pytest.approx(b["test_acc"], abs=0.02)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]
