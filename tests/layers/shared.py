"""What the layer tests of every framework share.

Imported as ``layers.shared``: ``tests/`` is on ``sys.path`` while pytest runs (``tests/conftest.py``
lives there), also in the per-backend processes that run ``keras_checks.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import xdrop


def check_seed_none_draws_once(make: Callable[[], Any], seed_of: Callable[[Any], int]) -> None:
    """A layer built with ``seed=None`` (by ``make``) draws its seed once, at construction, from
    xdrop's global generator: the same seed after the same ``xdrop.manual_seed``, another at the
    next construction. ``seed_of`` reads a layer's seed as an integer in ``[0, 2**64)``."""
    xdrop.manual_seed(5)
    first = make()
    xdrop.manual_seed(5)
    assert seed_of(make()) == seed_of(first) == xdrop.Generator(5).next_seed()
    assert seed_of(make()) != seed_of(first)


def assert_refused(make: Callable[[], Any], error: type[Exception], message: str) -> None:
    """``make()`` raises ``error``, and its message says ``message``."""
    with pytest.raises(error) as raised:
        make()
    assert message in str(raised.value)


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: float32 pixels in ``[0, 1]`` and integer labels. The tests train on
    the first 1200 and measure accuracy on the rest. Skips where scikit-learn is missing."""
    datasets = pytest.importorskip("sklearn.datasets")
    loaded = datasets.load_digits()
    return (loaded.data / 16.0).astype(np.float32), loaded.target
