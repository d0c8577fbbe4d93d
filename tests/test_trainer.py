"""The trainer: schedule, optimisers, a short run that learns, divergence, resume."""

import dataclasses
import math

import pytest
import torch

from hessian_lib.checkpoints import load_checkpoint
from hessian_lib.data import load_cifar100, stratified_indices
from hessian_lib.models import build_model
from hessian_lib.profiles import ProfileError, TrainSizes, load_profile
from hessian_lib.trainer import check_batch_size, evaluate, fit, lr_factor, make_optimizer

TINY = TrainSizes(model="vgg16", width=0.0625, epochs=1, batch_size=50, lr=0.01, checkpoint_every=1)


@pytest.fixture(scope="module")
def subsets(data_root):
    train = load_cifar100("train", data_root)
    test = load_cifar100("test", data_root)
    return train.subset(stratified_indices(train.labels, 300)), test.subset(stratified_indices(test.labels, 200))


def _model(seed=0, **knobs):
    torch.manual_seed(seed)
    return build_model("vgg16", width=knobs.pop("width", 0.0625), **knobs)


def test_authors_schedule_shape():
    total = 1000
    assert lr_factor(0, total) == 1.0 and lr_factor(500, total) == 1.0
    assert lr_factor(700, total) == pytest.approx(1 - 0.99 * 0.5)
    assert lr_factor(900, total) == pytest.approx(0.01)
    assert lr_factor(999, total) == 0.01
    assert lr_factor(700, total, "constant") == 1.0
    assert lr_factor(0, total, "constant", warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(9, total, "constant", warmup_steps=10) == 1.0


def test_optimizers():
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(make_optimizer(params, TINY), torch.optim.SGD)
    assert isinstance(make_optimizer(params, dataclasses.replace(TINY, optimizer="adam")), torch.optim.Adam)
    adamw = make_optimizer(params, dataclasses.replace(TINY, optimizer="adamw", weight_decay=1e-3))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 1e-3


def test_batch_size_checks():
    check_batch_size(50, 300)
    for bad in (0, -1, 301):
        with pytest.raises(ValueError, match="batch size"):
            check_batch_size(bad, 300)


@pytest.mark.parametrize("overrides, match", [
    ({"train.model": "resnet9"}, "unknown model"),
    ({"train.lr": -0.1}, "learning rate"),
    ({"train.batch_size": 0}, "batch_size"),
    ({"train.optimizer": "lbfgs"}, "optimizer"),
])
def test_bad_profile_values_fail_at_load(overrides, match):
    with pytest.raises(ProfileError, match=match):
        load_profile("smoke", overrides)


def test_short_run_lowers_the_loss(subsets):
    train, test = subsets
    train, test = train.subset(torch.arange(0, 300, 2)), test.subset(torch.arange(50))
    torch.manual_seed(0)
    model = build_model("vgg16_bn", width=0.0625, dropout=0.0)
    before, _ = evaluate(model, train.images, train.labels)
    # float32: at this width (4 to 32 channels) bf16 rounding can outweigh 36 steps' progress.
    cfg = dataclasses.replace(TINY, model="vgg16_bn", epochs=6, batch_size=25, lr=0.05, schedule="constant",
                              augment=False, mixed_precision=False)
    result = fit(model, train, cfg, test=test, seed=0, device="cpu", quiet=True)
    after, _ = evaluate(model, train.images, train.labels)
    assert not result.diverged and len(result.history) == 6 and result.steps == 36
    assert after < before - 0.03
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert set(result.history[-1]) >= {"train_loss", "train_acc", "test_loss", "test_acc", "lr"}


def test_divergence_is_a_result_not_an_error(subsets):
    train, _ = subsets
    cfg = dataclasses.replace(TINY, epochs=2, lr=1e4, schedule="constant", augment=False)
    result = fit(_model(), train, cfg, seed=0, device="cpu", quiet=True)
    assert result.diverged and result.diverged_step is not None and result.diverged_step < 12
    assert result.diverged_loss is None or not (result.diverged_loss <= cfg.divergence_loss)


def test_divergence_threshold_stops_at_the_first_step_above_it(subsets):
    train, _ = subsets
    cfg = dataclasses.replace(TINY, divergence_loss=1.0)  # the initial loss is about ln(100) = 4.6
    result = fit(_model(), train, cfg, seed=0, device="cpu", quiet=True)
    assert result.diverged and result.diverged_step == 0 and result.steps == 0
    assert result.diverged_loss == pytest.approx(math.log(100), abs=0.3)


def test_resume_after_interruption_equals_uninterrupted(subsets, tmp_path):
    train, test = subsets
    train = train.subset(torch.arange(0, 300, 3))  # 100 images, 4 steps of 25 per epoch
    test = test.subset(torch.arange(50))
    # dropout on: the torch RNG state matters too
    cfg = dataclasses.replace(TINY, epochs=3, batch_size=25, checkpoint_every=1)

    reference = _model()
    fit(reference, train, cfg, test=test, seed=5, device="cpu", quiet=True)

    class Interrupt(Exception):
        pass

    def stop(info):
        if info.step == 9:  # in epoch 3, after the epoch-2 checkpoint
            raise Interrupt

    with pytest.raises(Interrupt):
        fit(_model(), train, cfg, test=test, seed=5, device="cpu", quiet=True, checkpoint_dir=tmp_path, on_step=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]

    resumed = _model(seed=123)  # different init: the checkpoint must overwrite it
    result = fit(resumed, train, cfg, test=test, seed=5, device="cpu", quiet=True, checkpoint_dir=tmp_path, resume=True)
    assert result.resumed_from == 2 and len(result.history) == 3 and sorted(result.checkpoints) == [1, 2, 3]
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    state = load_checkpoint(result.checkpoints[3])
    assert state["epoch"] == 3 and state["step"] == 12


# ----------------------------------------------------------------------------- the trainer's pieces


def test_derive_seed_gives_distinct_streams():
    from hessian_lib.trainer import SEED_STREAMS, derive_seed

    seeds = {derive_seed(s, stream) for s in range(3) for stream in SEED_STREAMS}
    assert len(seeds) == 3 * len(SEED_STREAMS)
    with pytest.raises(ValueError, match="unknown random stream"):
        derive_seed(0, "weights")


def test_linear_schedule_decays_to_zero():
    assert lr_factor(0, 100, "linear") == 1.0
    assert lr_factor(50, 100, "linear") == pytest.approx(0.5)
    assert lr_factor(99, 100, "linear") == pytest.approx(0.01)
    assert lr_factor(0, 100, "linear", warmup_steps=4) == pytest.approx(0.25)


def test_checkpoint_of_another_recipe_is_refused(subsets, tmp_path):
    from hessian_lib.checkpoints import CheckpointMismatch

    train, _ = subsets
    cfg = dataclasses.replace(TINY, epochs=2, batch_size=100)
    fit(_model(), train, dataclasses.replace(cfg, epochs=1), seed=0, device="cpu", quiet=True, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match="another training recipe.*epochs"):
        fit(_model(), train, cfg, seed=0, device="cpu", quiet=True, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointMismatch, match="lr"):
        load_checkpoint(tmp_path / "epoch_0001.pt", _model(), cfg=dataclasses.replace(cfg, epochs=1, lr=0.5))


def test_max_steps_and_callbacks(subsets, tmp_path):
    from hessian_lib.trainer import TrainCallback

    train, _ = subsets

    class Counter(TrainCallback):
        def __init__(self):
            self.started, self.steps, self.restored = 0, [], None

        def on_train_start(self, model, optimizer):
            self.started += 1

        def on_step_start(self, step, model, optimizer):
            self.steps.append(step)
            for group in optimizer.param_groups:
                group["lr"] = 0.0  # a callback may override the schedule

        def state_dict(self):
            return {"seen": len(self.steps)}

        def load_state_dict(self, state):
            self.restored = state["seen"]

    counter = Counter()
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    cfg = dataclasses.replace(TINY, epochs=3, batch_size=100, checkpoint_every=1)  # 3 steps per epoch
    result = fit(model, train, cfg, seed=0, device="cpu", quiet=True, callbacks=[counter], max_steps=4,
                 checkpoint_dir=tmp_path)
    assert result.steps == 4 and counter.steps == [0, 1, 2, 3] and counter.started == 1
    assert [h["epoch"] for h in result.history] == [1] and result.history[0]["lr"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # lr 0: no change
    again = Counter()
    fit(_model(), train, cfg, seed=0, device="cpu", quiet=True, callbacks=[again], checkpoint_dir=tmp_path,
        resume=True)
    assert again.restored == 3 and again.steps[0] == 3 and len(again.steps) == 6


def test_divergence_inside_one_epoch_is_recorded_by_run_epoch(subsets):
    from hessian_lib.trainer import _Run, make_optimizer, run_epoch

    train, _ = subsets
    cfg = dataclasses.replace(TINY, batch_size=50, lr=1e5, schedule="constant", divergence_loss=20.0, augment=False)
    net = _model()
    run = _Run(net=net, model=net, optimizer=make_optimizer(net.parameters(), cfg), cfg=cfg, seed=0,
               order_gen=torch.Generator().manual_seed(0), aug_gen=torch.Generator().manual_seed(1),
               callbacks=[], device=torch.device("cpu"))
    sums = run_epoch(run, train.images, train.labels, steps_per_epoch=6, total_steps=6)
    assert run.result.diverged and run.result.diverged_step == run.step and sums["steps"] == run.step
    assert 1 <= run.step < 6 and not run.result.diverged_loss <= 20.0


@pytest.mark.slow
def test_cpu_recipe_learns_within_forty_steps(data_root):
    """The cpu profile's recipe, 40 steps (2 epochs of 2,560 images): the mean training loss of the second
    epoch falls below 4.45 (chance is ln 100 = 4.61; two seeds measured 4.29 and 4.31)."""
    from hessian_lib.experiments import model_from_profile
    from hessian_lib.trainer import derive_seed

    train = load_cifar100("train", data_root)
    subset = train.subset(stratified_indices(train.labels, 2_560))
    cfg = dataclasses.replace(load_profile("cpu").train, epochs=2)
    torch.manual_seed(derive_seed(0, "init"))
    result = fit(model_from_profile(cfg), subset, cfg, seed=0, device="cpu", quiet=True)
    assert result.steps == 40 and not result.diverged
    assert result.history[-1]["train_loss"] < 4.45
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] - 0.15


def test_low_res_epochs_train_on_smaller_crops(subsets):
    train, _ = subsets
    torch.manual_seed(0)
    model = build_model("fastcnn", width=0.25)
    sizes = []
    model.register_forward_pre_hook(lambda module, args: sizes.append(tuple(args[0].shape[-2:])))
    cfg = dataclasses.replace(TINY, model="fastcnn", epochs=2, batch_size=100, low_res_epochs=1, low_res_size=20)
    fit(model, train, cfg, seed=0, device="cpu", quiet=True)
    assert sizes == [(20, 20)] * 3 + [(32, 32)] * 3


@pytest.mark.parametrize("flags, mixed, expected", [({"amx_bf16"}, True, True), ({"avx512_bf16"}, False, False),
                                                    (set(), True, False)])
def test_mixed_precision_autocasts_the_forward_only_where_bf16_is_native(subsets, monkeypatch, flags, mixed,
                                                                          expected):
    """bf16 autocast covers the forward passes of training and of the per-epoch evaluation (not the callbacks,
    where curvature is computed), and only on a CPU with native bf16; without it the run warns, trains float32."""
    from hessian_lib import device as device_mod
    from hessian_lib.trainer import TrainCallback

    monkeypatch.setattr(device_mod, "_cpu_flags", lambda: frozenset(flags))
    device_mod.bf16_native.cache_clear()
    train, test = subsets
    seen: dict[str, list[bool]] = {"forward": [], "callback": []}

    class Probe(TrainCallback):
        def on_step_start(self, step, model, optimizer):
            seen["callback"].append(torch.is_autocast_enabled("cpu"))

    torch.manual_seed(0)
    model = build_model("fastcnn", width=0.25)
    model.register_forward_pre_hook(lambda module, args: seen["forward"].append(torch.is_autocast_enabled("cpu")))
    cfg = dataclasses.replace(TINY, model="fastcnn", batch_size=100, mixed_precision=mixed)
    try:
        if mixed and not expected:
            with pytest.warns(RuntimeWarning, match="no native bfloat16"):
                fit(model, train, cfg, test=test, seed=0, device="cpu", quiet=True, callbacks=[Probe()])
        else:
            fit(model, train, cfg, test=test, seed=0, device="cpu", quiet=True, callbacks=[Probe()])
    finally:
        device_mod.bf16_native.cache_clear()
    assert seen["forward"] == [expected] * 4  # 3 steps, then the evaluation
    assert seen["callback"] == [False] * 3
