"""A check the framework test files share: ``rng="native"`` draws Bernoulli masks of the rate
asked for, from the framework's own generator rather than mask stream v1."""

from __future__ import annotations

import math

import numpy as np

COUNT = 100_000  # elements: enough for the bounds below to hold with room to spare


def assert_native_dropout_of_ones(ours: np.ndarray, p: float, portable: np.ndarray) -> None:
    """``ours`` is ``xdrop.dropout(ones(COUNT), p, rng="native")`` on some framework and
    ``portable`` a mask of mask stream v1 of the same size, both as NumPy arrays.

    xdrop's native path, not the framework's dropout, is what is measured: exactly the values 0
    and 1/q, about q of them kept (within 4 standard deviations), and a mask that is not
    ``portable``; kept units are spread evenly, not bunched: each tenth holds about q of its units.
    """
    count, q = ours.size, 1 - p
    assert set(np.unique(ours)) == {0.0, np.float32(1) / np.float32(q)}
    assert abs(np.count_nonzero(ours) - count * q) <= 4 * math.sqrt(count * p * q)
    assert abs(ours.mean() - 1.0) <= 4 * math.sqrt(p / q / count)
    assert ((ours != 0) != portable).any()
    tenths = np.count_nonzero(ours.reshape(10, -1), axis=1)
    assert (np.abs(tenths - count / 10 * q) <= 5 * math.sqrt(count / 10 * p * q)).all()
