"""Shared fixtures. The CIFAR-100 data root comes from $HESSIAN_LIB_DATA (see the README)."""

from __future__ import annotations

import pytest

from hessian_lib.data import resolve_data_root


@pytest.fixture(scope="session")
def data_root():
    """The configured CIFAR-100 folder. Tests that need it fail (never skip) when it is missing."""
    return resolve_data_root()
