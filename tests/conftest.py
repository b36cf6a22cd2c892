"""Shared fixtures. The suite runs against the default backend: ``XDROP_BACKEND=<name> pytest``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xdrop
from xdrop import registry


@pytest.fixture(scope="session")
def xp() -> Any:
    """The backend under test (the default backend)."""
    return registry.default_backend()


@pytest.fixture(scope="session")
def array(xp: Any) -> Any:
    """Make an array of the backend under test from nested lists or NumPy."""

    def make(values: Any, dtype: str = "float32") -> Any:
        try:
            return xp.asarray(np.asarray(values, np.float64), dtype=dtype)
        except TypeError as error:  # e.g. float64 on JAX without x64
            pytest.skip(f"{xp.name} makes no {dtype} arrays here: {error}")

    return make


@pytest.fixture(scope="session")
def host(xp: Any) -> Any:
    """Read an array of the backend under test back as NumPy."""
    return xp.to_numpy


@pytest.fixture(autouse=True)
def _fresh_global_state() -> None:
    """Each test starts from the same global generator and no process-wide rng choice."""
    xdrop.manual_seed(1234)
    xdrop.set_rng(None)
