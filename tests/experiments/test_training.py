"""The experiment API of training runs: the store and checkpoints, bad input, a learning-rate sweep, the store key."""

import dataclasses

import pytest
import torch

from hessian_lib.experiments import load_subsets, max_stable_lr_sweep, train_experiment
from hessian_lib.profiles import TrainSizes, load_profile
from hessian_lib.store import ResultsStore


def test_train_experiment_store_and_checkpoints(data_root, tmp_path):
    store = ResultsStore(tmp_path)
    steps = []
    small = {"train.epochs": 2, "data.train_subset": 200, "data.test_subset": 100, "data.curvature_subset": 50}
    run = train_experiment("smoke", overrides=small, seed=1, data_root=data_root, device="cpu",
                           store=store, on_step=lambda info: steps.append(info.step))
    assert len(run.history) == 2 and sorted(run.checkpoints) == [1, 2] and run.model is not None
    assert store.has(run.config) and 0 <= run.test_acc <= 1
    again = train_experiment("smoke", overrides=small, seed=1, data_root=data_root, device="cpu",
                             store=store, on_step=lambda info: steps.append(-1))
    assert -1 not in steps and again.history == run.history and again.model is None
    model = again.model_at(2)
    for a, b in zip(model.state_dict().values(), run.model.state_dict().values()):
        assert torch.equal(a, b.cpu())
    subsets = load_subsets("smoke", data_root)
    assert len(subsets.train) == 500 and len(subsets.test) == 200 and len(subsets.curvature) == 100


def test_experiment_rejects_bad_input_before_training(data_root, tmp_path):
    with pytest.raises(ValueError, match="larger than the training subset"):
        train_experiment("smoke", overrides={"train.batch_size": 501}, data_root=data_root, device="cpu")
    from hessian_lib.data import DataError

    with pytest.raises(DataError):
        train_experiment("smoke", data_root=tmp_path / "nowhere", device="cpu")


def test_lr_sweep_records_divergence_as_a_point(data_root, tmp_path):
    overrides = {"data.train_subset": 200, "data.test_subset": 100, "data.curvature_subset": 100,
                 "train.schedule": "constant", "train.augment": False}
    stable, result = max_stable_lr_sweep("smoke", [50, 100], [0.01, 1e4], epochs=1, overrides=overrides,
                                         data_root=data_root, device="cpu", store=tmp_path)
    assert stable == {50: 0.01, 100: 0.01}
    assert [r["diverged"] for r in result.rows] == [False, True, False, True]
    assert "diverged" in result.table()


def test_store_key_changes_with_every_recipe_field():
    from hessian_lib.experiments import train_config
    from hessian_lib.store import config_key

    profile = load_profile("smoke")
    base = config_key(train_config(profile))
    changed = {"model": "vgg16_bn", "optimizer": "adam", "schedule": "constant"}
    for f in dataclasses.fields(TrainSizes):
        value = getattr(profile.train, f.name)
        if f.name in changed:
            new = changed[f.name]
        elif isinstance(value, bool):
            new = not value
        elif f.name == "dropout":
            new = 0.25
        elif f.name == "momentum":
            new = 0.5
        elif f.name == "label_smoothing":
            new = 0.1
        elif f.name == "low_res_size":
            new = 16
        elif isinstance(value, int):
            new = value + 1
        else:
            new = value * 0.5 + 0.001
        other = profile.with_overrides({f"train.{f.name}": new})
        assert config_key(train_config(other)) != base, f.name
