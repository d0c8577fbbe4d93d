"""Independent networks: their seeds, and the BatchNorm refresh every measurement starts from."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hessian_lib.data import normalize
from hessian_lib.experiments.training import network_seeds, refresh_batchnorm


def test_network_seeds_are_distinct_and_do_not_depend_on_the_count():
    assert network_seeds(0, 1) == (0,)
    assert network_seeds(7, 3)[0] == 7
    assert network_seeds(0, 5)[:3] == network_seeds(0, 3)
    seen = [s for base in range(20) for s in network_seeds(base, 4)]
    assert len(set(seen)) == len(seen)
    with pytest.raises(ValueError):
        network_seeds(0, 0)


def test_refresh_batchnorm_recomputes_the_statistics_and_leaves_the_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.3), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(2))
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    model(normalize(images[:2]))  # materialise the lazy layer
    bn = model[1]
    bn.running_mean.fill_(5.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    refresh_batchnorm(model, images, batch_size=4)
    # equal-weight average over the three batches of 4 of the per-batch channel means
    with torch.no_grad():
        feats = model[0](normalize(images))
    batch_means = torch.stack([feats[i:i + 4].mean(dim=(0, 2, 3)) for i in (0, 4, 8)])
    torch.testing.assert_close(bn.running_mean, batch_means.mean(dim=0))
    assert bn.momentum == 0.3 and not model.training and not bn.training
    for k, v in model.state_dict().items():
        if k in weights:
            torch.testing.assert_close(v, weights[k])


def test_refresh_batchnorm_without_batchnorm_only_sets_eval_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).train()
    before = [p.clone() for p in model.parameters()]
    refresh_batchnorm(model, torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    assert not model.training and all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
