"""Model registry: shapes, parameter counts of the paper's networks, knobs and errors."""

import pytest
import torch

from hessian_lib.models import MODEL_NAMES, build_model, canonical_name, count_parameters, model_note

# Full-size counts on CIFAR-100 (100 classes).
PAPER_COUNTS = {
    "vgg16": 15_291_300,       # the paper's number for VGG-16 without BatchNorm
    "vgg16_bn": 15_299_748,    # + 2 * 4,224 BatchNorm scales and shifts
    "wideresnet28": 36_536_884,
    "preresnet110": 1_169_972,  # bottleneck blocks (n = 12), as in the authors' lineage
    "preresnet164": 1_726_388,
}


#: Networks of our own (not the paper's), with their parameter counts on CIFAR-100.
OWN_COUNTS = {
    "fastcnn": 259_228,  # convs 648 + 10,368 + 20,736 + 41,472 + 165,888, BatchNorm 816, linear 19,300
}


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS | OWN_COUNTS))
def test_full_size_parameter_counts(name):
    torch.manual_seed(0)
    assert count_parameters(build_model(name, num_classes=100)) == (PAPER_COUNTS | OWN_COUNTS)[name]


def test_registry_lists_every_model():
    assert set(MODEL_NAMES) == set(PAPER_COUNTS) | set(OWN_COUNTS)
    assert canonical_name("WRN28-10") == "wideresnet28"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_says_where_it_comes_from(name):
    """The chapters print this note: a network of our own says so and why; the paper's say they are."""
    note = model_note(name)
    if name in OWN_COUNTS:
        assert "not one of the paper's" in note and "because" in note
    else:
        assert "the paper" in note and "our own" not in note


SMALL = {
    "vgg16": dict(width=0.0625),
    "vgg16_bn": dict(width=0.0625),
    "wideresnet28": dict(depth=10, widen_factor=1, width=0.5),
    "preresnet110": dict(depth=11, width=0.5, bottleneck=True),
    "preresnet164": dict(depth=8, width=0.5, bottleneck=False),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_versions_forward_and_backward(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=100, **SMALL[name])
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 100)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert count_parameters(model) < PAPER_COUNTS[name] / 10


def test_width_scales_channels_and_num_classes():
    small = build_model("vgg16", num_classes=10, width=0.125)
    convs = [m for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32, 32, 64, 64, 64, 64, 64, 64]
    assert small(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_none_knobs_take_defaults():
    assert count_parameters(build_model("vgg16", width=None, depth=None)) == PAPER_COUNTS["vgg16"]


@pytest.mark.parametrize("name, knobs, match", [
    ("resnet50", {}, "unknown model"),
    ("vgg16", {"widen_factor": 2}, "no knob"),
    ("vgg16", {"depth": 15}, "depth"),
    ("wideresnet28", {"depth": 27}, "6n\\+4"),
    ("preresnet110", {"depth": 111}, "9n\\+2"),
])
def test_bad_model_requests_fail_clearly(name, knobs, match):
    with pytest.raises(ValueError, match=match):
        build_model(name, **knobs)
