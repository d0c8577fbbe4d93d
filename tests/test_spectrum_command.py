"""``python -m hessian_lib spectrum``: eigenvalues against dense matrices, JSON and PNG out, errors before work."""

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from torch import nn

from hessian_lib.cli import main
from hessian_lib.curvature import dense_ggn, dense_hessian
from hessian_lib.experiments.training import model_from_profile
from hessian_lib.profiles import TrainSizes
from hessian_lib.spectrum_inputs import load_network, pick_batch

TINY_MODULE = '''
import torch
from torch import nn


def tiny(classes=5):
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2, classes))
'''


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A module:function model with a BatchNorm, its checkpoint (a plain state dict) and two .npz data sets."""
    (tmp_path / "tinynets_spectrum.py").write_text(TINY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("tinynets_spectrum", None)
    import tinynets_spectrum

    model = tinynets_spectrum.tiny()
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=24)
    np.savez(tmp_path / "float.npz", images=rng.normal(size=(24, 3, 6, 6)).astype(np.float32), labels=labels)
    np.savez(tmp_path / "uint8.npz", images=rng.integers(0, 256, size=(24, 6, 6, 3), dtype=np.uint8), labels=labels)
    return tmp_path


def _run(tiny, *extra):
    base = [str(tiny / "tiny.pt"), "--model", "tinynets_spectrum:tiny", "--data", str(tiny / "float.npz"),
            "--device", "cpu", "--dtype", "float64", "--path", "graph", "--quiet", "--out", str(tiny / "out.json")]
    return main(["spectrum", *base, *extra])


def _inputs(tiny):
    model, _ = load_network(tiny / "tiny.pt", "tinynets_spectrum:tiny")
    with np.load(tiny / "float.npz") as f:
        x, y = torch.from_numpy(f["images"]).double(), torch.from_numpy(f["labels"])
    return model.double(), x, y


def test_top_eigenvalues_of_a_batch_match_the_dense_hessian(tiny):
    assert _run(tiny, "--batch-size", "12", "--bn-mode", "eval", "--top", "3", "--tol", "1e-10",
                "--max-steps", "200", "--seed", "3") == 0
    result = json.loads((tiny / "out.json").read_text())
    png = (tiny / "out.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    assert result["matrix"] == "hessian" and result["bn_mode"] == "eval" and result["batch_size"] == 12
    assert result["model"] == "tinynets_spectrum:tiny" and result["num_samples"] == 12 and result["dim"] == 75
    assert result["converged"] and len(result["error_bounds"]) == 3 and max(result["error_bounds"]) < 1e-8
    model, x, y = _inputs(tiny)
    idx = pick_batch(24, 12, seed=3)
    exact = torch.linalg.eigvalsh(dense_hessian(model, nn.CrossEntropyLoss(), (x[idx], y[idx]), bn_mode="eval"))
    np.testing.assert_allclose(result["eigenvalues"], exact.flip(0)[:3].numpy(), rtol=1e-8)
    # a different batch is a different matrix
    other = torch.linalg.eigvalsh(dense_hessian(model, nn.CrossEntropyLoss(), (x[:12], y[:12]), bn_mode="eval"))
    assert abs(result["eigenvalues"][0] - float(other[-1])) > 1e-6


def test_density_of_the_full_data_ggn_in_chunks(tiny):
    assert _run(tiny, "--full", "--chunk-size", "7", "--bn-mode", "eval", "--matrix", "ggn", "--method", "density",
                "--steps", "25", "--probes", "2") == 0
    result = json.loads((tiny / "out.json").read_text())
    assert result["full"] and result["chunk_size"] == 7 and result["num_samples"] == 24
    grid, density = np.array(result["grid"]), np.array(result["density"])
    assert abs(np.trapezoid(density, grid) - 1) < 1e-3
    model, x, y = _inputs(tiny)
    exact = torch.linalg.eigvalsh(dense_ggn(model, nn.CrossEntropyLoss(), (x, y), bn_mode="eval")).numpy()
    for values, weights in zip(result["ritz_values"], result["ritz_weights"]):
        assert abs(sum(weights) - 1) < 1e-9
        assert min(values) > exact[0] - 1e-8 and abs(max(values) - exact[-1]) < 1e-8 * exact[-1]


def test_a_train_command_checkpoint_works_as_it_is(tmp_path, data_root):
    recipe = TrainSizes(model="fastcnn", width=0.125, dropout=0.0)
    torch.manual_seed(0)
    net = model_from_profile(recipe)
    torch.save({"model": net.state_dict(), "config": dataclasses.asdict(recipe), "epoch": 2}, tmp_path / "e.pt")
    out = tmp_path / "sub" / "r.json"
    assert main(["spectrum", str(tmp_path / "e.pt"), "--data", "cifar100-test", "--data-root", str(data_root),
                 "--batch-size", "4", "--bn-mode", "train", "--top", "1", "--max-steps", "6", "--path", "graph",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["model"].startswith("fastcnn") and result["epoch"] == 2 and result["bn_mode"] == "train"
    assert result["data"].startswith("CIFAR-100 test") and np.isfinite(result["eigenvalues"][0])
    assert out.with_suffix(".png").is_file()


def test_uint8_images_are_normalised_like_cifar(tiny):
    assert _run(tiny, "--data", str(tiny / "uint8.npz"), "--batch-size", "8", "--bn-mode", "train",
                "--top", "1", "--max-steps", "10") == 0
    assert json.loads((tiny / "out.json").read_text())["bn_mode"] == "train"


@pytest.mark.parametrize("extra, message", [
    (["--model", "resnet9"], "unknown model"),
    (["--model", "fastcnn", "--model-arg", "width=0.125"], "does not match the model fastcnn"),
    (["--model", "tinynets_spectrum:nothing"], "cannot import"),
    (["--data", "big_labels.npz"], "labels go up to 7 but the network has 5 outputs"),
    (["--batch-size", "25"], "batch size 25 must be in 1..24"),
    (["--bn-mode", None], "the network has BatchNorm"),
    (["--checkpoint-file", "missing.pt"], "missing.pt does not exist"),
    (["--data", "missing.npz"], "missing.npz does not exist"),
    (["--data", "images.png"], "or a .npz file"),
    (["--data", "bad.npz"], "lacks the arrays ['labels']"),
    (["--top", "0"], "--top must be at least 1"),
])
def test_bad_input_fails_before_any_product(tiny, capsys, extra, message):
    np.savez(tiny / "bad.npz", images=np.zeros((2, 3, 6, 6), np.float32))
    np.savez(tiny / "big_labels.npz", images=np.zeros((9, 3, 6, 6), np.float32), labels=np.full(9, 7))
    args = {"--model": "tinynets_spectrum:tiny", "--data": str(tiny / "float.npz"), "--batch-size": "8",
            "--bn-mode": "eval"}
    checkpoint = str(tiny / "tiny.pt")
    rest = []
    for key, value in zip(extra[::2], extra[1::2]):
        if key == "--checkpoint-file":
            checkpoint = str(tiny / value)
        elif key == "--data" and value != args["--data"]:
            args[key] = str(tiny / value)
        elif key in args:
            args[key] = value
        else:
            rest += [key, value]
    argv = ["spectrum", checkpoint, *[s for k, v in args.items() if v is not None for s in (k, v)], *rest,
            "--device", "cpu", "--quiet", "--out", str(tiny / "out.json")]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tiny / "out.json").exists() and not (tiny / "out.png").exists()


def test_a_plain_state_dict_needs_a_model(tiny, capsys):
    code = main(["spectrum", str(tiny / "tiny.pt"), "--data", str(tiny / "float.npz"), "--batch-size", "4",
                 "--out", str(tiny / "out.json")])
    assert code == 2 and "pass --model" in capsys.readouterr().err
