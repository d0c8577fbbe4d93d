"""``python -m hessian_lib train`` / ``sweep``: bad input fails at once; small runs write the store."""


import pytest

from hessian_lib.cli import main
from hessian_lib.data import DOWNLOAD_ENV
from hessian_lib.store import ResultsStore

SMALL = ["--set", "data.train_subset=200", "--set", "data.test_subset=100", "--set", "data.curvature_subset=100",
         "--set", "train.epochs=1"]


@pytest.mark.parametrize("extra, message", [
    (["--set", "train.model=resnet9"], "unknown model"),
    (["--set", "train.batch_size=0"], "batch_size must be positive"),
    (["--set", "train.batch_size=201"], "larger than the training subset"),
    (["--set", "train.lr=-0.1"], "learning rate"),
    (["--device", "tpu"], "device"),
    (["--profile", "huge"], "unknown profile"),
])
def test_train_rejects_bad_input(extra, message, data_root, tmp_path, capsys):
    code = main(["train", "--profile", "smoke", *SMALL, "--data-root", str(data_root), "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert not list(tmp_path.iterdir())  # nothing trained, nothing written


def test_train_rejects_missing_data(tmp_path, capsys, monkeypatch):
    # Offline by construction: a download must not be attempted, whatever the caller's environment says.
    monkeypatch.setenv(DOWNLOAD_ENV, "0")
    code = main(["train", "--profile", "smoke", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert code == 2 and "no CIFAR-100 found" in capsys.readouterr().err


def test_train_and_sweep_write_the_store(data_root, tmp_path, capsys):
    out = tmp_path / "results"
    common = [
        "--profile",
        "smoke",
        *SMALL,
        "--data-root",
        str(data_root),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]
    assert main(["train", *common]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert len(list(ResultsStore(out).entries())) == 1
    assert main(["sweep", *common, "--set", "train.augment=false", "--grid", "train.lr=0.01,10000"]) == 0
    printed = capsys.readouterr().out
    assert "largest stable lr: 0.01" in printed and "True" in printed
    assert len(list(ResultsStore(out).entries())) == 3
    assert main(["sweep", *common, "--grid", "train.lr"]) == 2
