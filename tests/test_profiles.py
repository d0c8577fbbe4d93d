import dataclasses

import pytest

from hessian_lib.profiles import PROFILES, ProfileError, load_profile, override_keys


def test_every_profile_validates():
    for name in PROFILES:
        assert load_profile(name).name == name


def test_unknown_profile_names_the_valid_choices():
    with pytest.raises(ProfileError) as err:
        load_profile("gpu-huge")
    for name in PROFILES:
        assert name in str(err.value)


def test_overrides_are_coerced_and_applied():
    p = load_profile("cpu", {"theory.dim": "300", "theory.batch_sizes": "2,8,32"})
    assert p.theory.dim == 300
    assert p.theory.batch_sizes == (2, 8, 32)
    # the stored profile is untouched
    assert load_profile("cpu").theory.dim == PROFILES["cpu"].theory.dim


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"theory.nope": 1}, "valid keys"),
        ({"nosection.dim": 1}, "valid keys"),
        ({"theory.dim": -5}, "positive"),
        ({"theory.dim": "abc"}, "cannot use"),
        ({"theory.dim": 2.5}, "cannot use"),
        ({"data.train_subset": 60_000}, "50,000"),
        ({"theory.batch_sizes": "1,16,60000"}, "theory.n_data"),     # the largest B is checked, not the smallest
        ({"spectra.checkpoints": "3"}, "at least two"),
        ({"spectra.min_draws": 1}, "at least 2"),
        ({"spectra.max_draws": 2, "spectra.min_draws": 3}, "max_draws"),
        ({"spectra.batch_images": 10}, "batch_images"),
        ({"spectra.batch_sizes": "4,300"}, "three batch sizes"),
    ],
)
def test_invalid_overrides_fail_with_a_clear_message(overrides, message):
    with pytest.raises(ProfileError, match=message):
        load_profile("cpu", overrides)


def test_profiles_share_one_shape():
    """A profile is data: every profile has the same sections and fields, only sizes differ."""
    shapes = {name: override_keys(p) for name, p in PROFILES.items()}
    first = next(iter(shapes.values()))
    assert all(keys == first for keys in shapes.values())


def test_profiles_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PROFILES["cpu"].theory.dim = 3  # type: ignore[misc]
