"""The CIFAR-100 loader on the configured data root, checked against the facts of its README."""

import pickle
import shutil

import numpy as np
import pytest
import torch

from hessian_lib.data import (
    DATA_ROOT_ENV,
    DataError,
    check_data_root,
    load_cifar100,
    normalize,
    resolve_data_root,
    stratified_indices,
)


@pytest.fixture(scope="module")
def train(data_root):
    return load_cifar100("train", data_root, download=False)


@pytest.fixture(scope="module")
def test(data_root):
    return load_cifar100("test", data_root, download=False)


def test_shapes_and_dtypes(train, test):
    assert train.images.shape == (50_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (10_000, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and len(train.classes) == 100
    assert train.classes[0] == "apple" and train.classes[-1] == "worm"


def test_per_class_counts(train, test):
    assert torch.bincount(train.labels, minlength=100).tolist() == [500] * 100
    assert torch.bincount(test.labels, minlength=100).tolist() == [100] * 100
    assert torch.bincount(train.coarse_labels, minlength=20).tolist() == [2_500] * 20


def test_spot_values(train, test):
    assert train.labels[:10].tolist() == [19, 29, 0, 11, 1, 86, 90, 28, 23, 31]
    assert train.images[:10, 0, 0, 0].tolist() == [255, 255, 250, 124, 43, 190, 50, 178, 122, 255]
    assert test.images[:10, 0, 0, 0].tolist() == [199, 113, 61, 93, 80, 168, 37, 175, 233, 182]


def test_channel_statistics(train):
    x = train.images[::5].to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor([0.5071, 0.4865, 0.4409], dtype=torch.float64), atol=2e-3)
    assert torch.allclose(std, torch.tensor([0.2673, 0.2564, 0.2762], dtype=torch.float64), atol=2e-3)
    z = normalize(train.images[:2000])
    assert abs(float(z.mean())) < 0.1 and 0.8 < float(z.std()) < 1.2


def test_stratified_subsets_are_deterministic_and_balanced(train):
    idx = stratified_indices(train.labels, 1_050, seed=3)
    assert len(idx) == 1_050 and len(np.unique(idx)) == 1_050
    counts = np.bincount(train.labels.numpy()[idx], minlength=100)
    assert counts.min() == 10 and counts.max() == 11 and (counts == 11).sum() == 50
    assert np.array_equal(idx, stratified_indices(train.labels, 1_050, seed=3))
    assert not np.array_equal(idx, stratified_indices(train.labels, 1_050, seed=4))
    with pytest.raises(ValueError):
        stratified_indices(train.labels, 50_001)


def test_torchvision_file_format_gives_the_same_arrays(tmp_path, test):
    """torchvision's own pickle layout (cifar-100-python/test, meta) loads to the same tensors."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    data = test.images.permute(0, 2, 3, 1).numpy().transpose(0, 3, 1, 2).reshape(10_000, -1)
    with open(folder / "test", "wb") as fh:
        pickle.dump({"data": data, "fine_labels": test.labels.tolist(),
                     "coarse_labels": test.coarse_labels.tolist()}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": list(test.classes)}, fh)
    loaded = load_cifar100("test", tmp_path, download=False)
    assert torch.equal(loaded.images, test.images) and torch.equal(loaded.labels, test.labels)
    assert loaded.source.startswith("torchvision")


def test_missing_folder_says_where_it_looked_and_how_to_fix(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_cifar100("train", missing, download=False)
    assert str(missing) in str(err.value) and DATA_ROOT_ENV in str(err.value)


def test_corrupt_file_is_reported(tmp_path, data_root):
    shutil.copy(resolve_data_root(data_root) / "meta.json", tmp_path / "meta.json")
    (tmp_path / "test.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(DataError, match="cannot read"):
        load_cifar100("test", tmp_path, download=False)


def test_wrong_shapes_are_reported(tmp_path, data_root):
    shutil.copy(resolve_data_root(data_root) / "meta.json", tmp_path / "meta.json")
    np.savez(tmp_path / "test.npz", images=np.zeros((10, 32, 32, 3), np.uint8),
             fine_labels=np.zeros(10, np.int64), coarse_labels=np.zeros(10, np.int64))
    with pytest.raises(DataError, match="malformed"):
        load_cifar100("test", tmp_path, download=False)


def test_environment_variable_sets_the_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert resolve_data_root() == tmp_path
    assert resolve_data_root("/elsewhere") != tmp_path
    with pytest.raises(DataError):
        check_data_root()


def test_unknown_split():
    with pytest.raises(ValueError, match="train, test"):
        load_cifar100("validation")
