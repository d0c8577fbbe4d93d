"""Batched augmentation on uint8 tensors: shapes, determinism, and the crop/flip geometry."""

import pytest
import torch
import torch.nn.functional as F

from hessian_lib.augment import apply_crop_flip, draw_crop_flip, random_crop_flip


def _images(n=16, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_shape_and_dtype_are_kept():
    out = random_crop_flip(_images(), torch.Generator().manual_seed(0))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.uint8


def test_same_seed_same_images_other_seed_other_images():
    x = _images()
    a = random_crop_flip(x, torch.Generator().manual_seed(7))
    b = random_crop_flip(x, torch.Generator().manual_seed(7))
    c = random_crop_flip(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_advances_between_batches():
    g = torch.Generator().manual_seed(0)
    x = _images()
    assert not torch.equal(random_crop_flip(x, g), random_crop_flip(x, g))


def test_geometry_matches_pad_crop_flip_reference():
    x = _images(32)
    offsets, flips = draw_crop_flip(32, torch.Generator().manual_seed(3))
    assert offsets.min() >= 0 and offsets.max() <= 8
    out = apply_crop_flip(x, offsets, flips)
    padded = F.pad(x, (4, 4, 4, 4))
    for i in range(32):
        oy, ox = offsets[i].tolist()
        ref = padded[i, :, oy:oy + 32, ox:ox + 32]
        if flips[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)


def test_centre_crop_without_flip_is_identity_and_flip_mirrors():
    x = _images(2)
    offsets = torch.full((2, 2), 4)
    out = apply_crop_flip(x, offsets, torch.tensor([False, True]))
    assert torch.equal(out[0], x[0])
    assert torch.equal(out[1], x[1].flip(-1))


def test_both_flip_states_and_many_offsets_occur():
    offsets, flips = draw_crop_flip(2000, torch.Generator().manual_seed(0))
    assert 0.4 < flips.float().mean() < 0.6
    assert len(torch.unique(offsets[:, 0])) == 9 and len(torch.unique(offsets[:, 1])) == 9


def test_sized_crops_take_the_given_window():
    images = torch.arange(2 * 1 * 32 * 32, dtype=torch.int64).reshape(2, 1, 32, 32)
    offsets = torch.tensor([[0, 0], [8, 3]])
    flips = torch.tensor([False, True])
    out = apply_crop_flip(images, offsets, flips, padding=0, size=24)
    assert out.shape == (2, 1, 24, 24)
    assert torch.equal(out[0, 0], images[0, 0, :24, :24])
    assert torch.equal(out[1, 0], images[1, 0, 8:32, 3:27].flip(-1))
    with pytest.raises(ValueError, match="does not fit"):
        apply_crop_flip(images, offsets, flips, padding=0, size=40)


def test_crops_come_out_in_channels_last_layout():
    out = random_crop_flip(_images(4), torch.Generator().manual_seed(0))
    assert out.is_contiguous(memory_format=torch.channels_last)
