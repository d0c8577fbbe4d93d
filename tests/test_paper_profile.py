"""The paper profile never rots: its networks build at full size, train and give Hessian products, and its
sizes fit the data. Not a GPU run (two images, one step each); the guarantee that ``make book PROFILE=paper``
gets past its first cells. The profile is read from hessian_lib/profiles.py, never restated here.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_models import PAPER_COUNTS  # the published parameter counts of the paper's networks

from hessian_lib.curvature import HessianOperator
from hessian_lib.data import load_cifar100, normalize, stratified_indices
from hessian_lib.experiments.training import model_from_profile
from hessian_lib.models import canonical_name, count_parameters
from hessian_lib.profiles import TrainSizes, load_profile
from hessian_lib.trainer import make_optimizer

PAPER = load_profile("paper")
#: Sections no chapter runs (their networks are not built by a book build): ImageNet 32x32's WRN-28-10 has 1,000
#: classes and its own data; its section is validated in test_imagenet32.py.
BOOKLESS_SECTIONS = {"imagenet32"}


def _recipes() -> dict[str, TrainSizes]:
    """Every network the paper profile names, as the chapters build it: the train section's, and any
    section's own ``model`` with the train section's recipe (how the Learner chapter builds its network)."""
    recipes = {canonical_name(PAPER.train.model): PAPER.train}
    for f in dataclasses.fields(PAPER):
        if f.name in BOOKLESS_SECTIONS:
            continue
        section = getattr(PAPER, f.name)
        name = getattr(section, "model", "") if dataclasses.is_dataclass(section) else ""
        if isinstance(name, str) and name and canonical_name(name) not in recipes:
            recipes[canonical_name(name)] = dataclasses.replace(PAPER.train, model=name)
    return recipes


RECIPES = _recipes()


@pytest.fixture(scope="module")
def two_images(data_root):
    train = load_cifar100("train", data_root)
    index = torch.as_tensor(stratified_indices(train.labels, 2, seed=0))
    return normalize(train.images[index]), train.labels[index]


def test_the_profile_names_the_papers_networks():
    assert RECIPES, "the paper profile names no network"
    unknown = sorted(set(RECIPES) - set(PAPER_COUNTS))
    assert not unknown, f"the paper profile names {unknown}, which have no published parameter count"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_full_size_network_trains_and_gives_hessian_products(name, two_images):
    torch.manual_seed(0)
    recipe = RECIPES[name]
    model = model_from_profile(recipe)
    assert count_parameters(model) == PAPER_COUNTS[name], f"{name} is not at full size under the paper profile"
    x, y = two_images
    loss_fn = torch.nn.CrossEntropyLoss()

    # One training step with the profile's optimiser and learning rate.
    model.train()
    optimizer = make_optimizer(model.parameters(), recipe)
    before = [p.detach().clone() for p in model.parameters()]
    loss = loss_fn(model(x), y)
    assert torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    moved = sum(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert moved > 0, "the training step changed no parameter"

    # One Hessian-vector product on the two images, checked against a central difference of gradients
    # (float64, evaluation mode: no dropout, BatchNorm running statistics).
    model = model.double().eval()
    xd = x.double()
    params = [p for p in model.parameters() if p.requires_grad]
    v = torch.randn(sum(p.numel() for p in params), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v /= v.norm()
    hv = HessianOperator(model, loss_fn, (xd, y), bn_mode="eval", cache_bytes=0).matvec(v)
    assert hv.shape == v.shape and torch.isfinite(hv).all() and hv.norm() > 0

    def gradient(shift: float) -> torch.Tensor:
        with torch.no_grad():
            torch.nn.utils.vector_to_parameters(w0 + shift * v, params)
        grads = torch.autograd.grad(loss_fn(model(xd), y), params)
        return torch.cat([g.reshape(-1) for g in grads])

    w0 = torch.nn.utils.parameters_to_vector(params).detach().clone()
    # A small step: a deep ReLU network at initialisation is far from smooth on the scale of 1e-4.
    eps = 1e-6
    difference = (gradient(eps) - gradient(-eps)) / (2 * eps)
    assert torch.linalg.vector_norm(hv - difference) <= 1e-4 * torch.linalg.vector_norm(difference)


#: Profile keys that count images drawn from one split of CIFAR-100.
TRAIN_IMAGES = ["data.train_subset", "data.curvature_subset", "spectra.dataset_size", "spectra.dense_samples",
                "scaling.train_subset", "scaling.curvature_images", "scaling.noise_samples",
                "scaling.parity_subset", "learner.train_images", "learner.curvature_images"]
TEST_IMAGES = ["data.test_subset", "scaling.parity_test_subset", "learner.test_images"]
#: (batch sizes, the images they are drawn from).
BATCHES = [("train.batch_size", "data.train_subset"), ("spectra.batch_sizes", "spectra.dataset_size"),
           ("scaling.batch_sizes", "scaling.train_subset"), ("learner.batch_size", "learner.train_images")]


def _value(key: str):
    """The paper profile's value of ``section.field``; None for a section the profile does not have (yet)."""
    section, _, name = key.partition(".")
    if not hasattr(PAPER, section):
        return None
    assert hasattr(getattr(PAPER, section), name), f"profile key {key} is gone: update this test"
    return getattr(getattr(PAPER, section), name)


@pytest.mark.parametrize("split, keys", [("train", TRAIN_IMAGES), ("test", TEST_IMAGES)])
def test_every_subset_can_be_drawn_from_the_data(split, keys, data_root):
    labels = load_cifar100(split, data_root).labels
    for key in keys:
        size = _value(key)
        if size is None:
            continue
        indices = stratified_indices(labels, size, seed=0)
        assert len(set(indices.tolist())) == size, f"{key} = {size} cannot be drawn from the {split} split"


@pytest.mark.parametrize("batches, images", BATCHES)
def test_every_batch_size_fits_its_images(batches, images):
    sizes = _value(batches)
    if sizes is None:
        pytest.skip(f"the paper profile has no {batches.partition('.')[0]} section")
    sizes = sizes if isinstance(sizes, tuple) else (sizes or PAPER.train.batch_size,)
    assert all(0 < b <= _value(images) for b in sizes), f"{batches} = {sizes} against {images} = {_value(images)}"
    if batches.startswith("scaling."):  # parity runs go from B0 to 16 B0 on their own images
        assert 16 * PAPER.scaling.parity_batch <= PAPER.scaling.parity_subset
