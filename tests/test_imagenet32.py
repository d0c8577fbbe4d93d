"""ImageNet 32x32: the loader reads the published pickled-batch format; the profile section is the paper's protocol."""

import dataclasses
import pickle

import numpy as np
import pytest

from hessian_lib.data import DataError
from hessian_lib.imagenet32 import IMAGENET32_ENV, IMAGENET32_FILES, load_imagenet32, read_batch_file, write_batch_file
from hessian_lib.profiles import ImageNet32Sizes, ProfileError, load_profile


def _write_split(root, split, per_file=3, seed=0):
    """Every file of ``split`` with ``per_file`` random images each, as the published files hold them."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for name in IMAGENET32_FILES[split]:
        x = rng.integers(0, 256, size=(per_file, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 1000, size=per_file)
        y[0] = 999 if name.endswith("1") else 0  # both ends of the label range
        write_batch_file(root / name, x, y, mean=x.mean(axis=0) if split == "train" else None)
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def test_the_published_layout_is_read_back(tmp_path):
    images, labels = _write_split(tmp_path, "train")
    raw = pickle.loads((tmp_path / "train_data_batch_1").read_bytes())
    assert raw["data"].shape == (3, 3072) and raw["data"].dtype == np.uint8 and min(raw["labels"]) >= 1
    # channel-major rows: the first 1024 bytes are the red plane, row by row
    np.testing.assert_array_equal(raw["data"][0, :1024].reshape(32, 32), images[0, 0])
    assert raw["labels"][0] == 1000  # 1-based on disk
    split = load_imagenet32("train", tmp_path)
    assert split.images.shape == (30, 3, 32, 32) and len(split) == 30
    np.testing.assert_array_equal(split.images.numpy(), images)
    np.testing.assert_array_equal(split.labels.numpy(), labels)
    assert int(split.labels.max()) == 999 and int(split.labels.min()) == 0
    np.testing.assert_allclose(split.mean.numpy(), images[:3].mean(axis=0), rtol=1e-6)


def test_the_val_split_and_the_environment_variable(tmp_path, monkeypatch):
    images, labels = _write_split(tmp_path, "val", per_file=5)
    monkeypatch.setenv(IMAGENET32_ENV, str(tmp_path))
    split = load_imagenet32("val")
    assert split.mean is None and split.images.shape == (5, 3, 32, 32)
    np.testing.assert_array_equal(split.labels.numpy(), labels)


@pytest.mark.parametrize("entry, message", [
    (b"not a pickle", "cannot read"),
    ({"data": np.zeros((2, 3072), np.uint8)}, "KeyError"),
    ({"data": np.zeros((2, 3000), np.uint8), "labels": [1, 2]}, "'data' should be uint8 [2, 3072]"),
    ({"data": np.zeros((2, 3072), np.float32), "labels": [1, 2]}, "found float32"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 2]}, "'labels' should be integers in 1..1000"),
    ({"data": np.zeros((2, 3072), np.uint8), "labels": [1, 1001]}, "1..1000"),
])
def test_a_corrupted_file_is_named(tmp_path, entry, message):
    path = tmp_path / "val_data"
    path.write_bytes(entry if isinstance(entry, bytes) else pickle.dumps(entry))
    with pytest.raises(DataError, match="val_data") as err:
        read_batch_file(path)
    assert message in str(err.value)


def test_a_truncated_file_and_missing_files_fail_clearly(tmp_path):
    _write_split(tmp_path, "val")
    data = (tmp_path / "val_data").read_bytes()
    (tmp_path / "val_data").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read the ImageNet 32x32 batch file"):
        load_imagenet32("val", tmp_path)
    (tmp_path / "train_data_batch_1").write_bytes(b"")
    with pytest.raises(DataError, match=r"lacks the files \['train_data_batch_2'"):
        load_imagenet32("train", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_imagenet32("val", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="valid splits: train, val"):
        load_imagenet32("test", tmp_path)


def test_the_paper_profile_holds_the_papers_protocol():
    section = load_profile("paper").imagenet32
    assert (section.model, section.widen_factor, section.epochs, section.optimizer) == ("wideresnet28", 10, 50, "adamw")
    assert section.weight_decay == 1e-3 and section.schedule == "authors"
    assert section.runs() == [(128, 1e-3), (512, 2e-3), (1024, 2.8e-3), (2048, 4e-3), (512, 4e-3)]
    assert (section.train_images, section.val_images) == (1_281_167, 50_000)
    recipe = section.recipe(1024, 2.8e-3)
    assert (recipe.optimizer, recipe.batch_size, recipe.lr, recipe.weight_decay) == ("adamw", 1024, 2.8e-3, 1e-3)
    for name in ("cpu", "smoke"):
        load_profile(name).imagenet32.validate()


@pytest.mark.parametrize("change, message", [
    ({"lrs": (1e-3, 3e-3, 2.8e-3, 4e-3)}, "not the square-root rule"),
    ({"lrs": (1e-3, 2e-3)}, "one learning rate per batch size"),
    ({"control_lr": 2e-3}, "linear rule"),
    ({"batch_sizes": (512, 128, 1024, 2048)}, "increasing"),
    ({"optimizer": "sgd"}, "adam or adamw"),
    ({"model": "resnet9"}, "unknown model"),
    ({"train_images": 2_000_000}, "cannot exceed the 1,281,167 images"),
    ({"weight_decay": -1.0}, "must not be negative"),
    ({"epochs": 0}, "imagenet32.epochs must be positive"),
])
def test_the_section_refuses_what_is_not_the_protocol(change, message):
    with pytest.raises(ProfileError, match=message):
        dataclasses.replace(ImageNet32Sizes(), **change).validate()
    with pytest.raises(ProfileError):
        load_profile("paper", {f"imagenet32.{k}": v for k, v in change.items()})
