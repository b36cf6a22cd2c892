"""The generic Array API backend, proven on array-api-strict, which rejects anything non-standard."""

from __future__ import annotations

import numpy as np
import pytest

import xdrop
from xdrop import conformance, reference

strict = pytest.importorskip("array_api_strict")


def test_strict_arrays_go_to_an_array_api_backend_and_come_back_strict():
    x = strict.ones((4, 5), dtype=strict.float32)
    y, keep = xdrop.dropout(x, 0.5, seed=7, return_mask=True)
    assert type(y) is type(x) and y.dtype == strict.float32
    assert np.asarray(keep).ravel().tolist() == reference.keep_mask(7, 0.5, 20)


def test_numpy_and_jax_arrays_still_go_to_their_own_backends():
    assert xdrop.registry.owner_of_type(np.ndarray) is None  # the default backend
    jax = pytest.importorskip("jax")
    assert xdrop.registry.owner_of_type(type(jax.numpy.ones(2))) == "jax"


def test_every_golden_case_passes_on_the_generic_backend():
    conformance.assert_conforms("array_api")


def test_every_golden_case_passes_on_array_api_strict():
    pytest.importorskip("xdrop_testplugin", reason="install tests/plugins/xdrop-testplugin")
    report = conformance.assert_conforms("strict")
    passed = {result.group for result in report.results if result.status == "passed"}
    assert {"inverted", "classic", "mask", "offset", "noise_shape", "fold_in"} <= passed


def test_seed_arrays_of_the_namespace():
    x = strict.ones(16)
    seed = strict.asarray(-1, dtype=strict.int64)  # read as 2**64 - 1
    assert (np.asarray(xdrop.dropout(x, 0.5, seed=seed)) == np.asarray(
        xdrop.dropout(x, 0.5, seed=2**64 - 1))).all()  # fmt: skip
