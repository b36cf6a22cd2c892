"""The dropout family under ``torch.compile`` (inductor, the compiler users get): each function
compiled once, with its seed and rate held in tensors, gives eager's values. tests/test_family.py
skips its compiled check on PyTorch, whose compilations take seconds; this module runs each once,
on small tensors, whatever the backend under test."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import xdrop

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.backend_independent  # PyTorch's own tensors, whatever XDROP_BACKEND says

SEED, RATE = 21, 0.25
FUNCTIONS: dict[str, Callable[[Any, Any, Any], Any]] = {
    "alpha_dropout": lambda x, seed, p: xdrop.alpha_dropout(x, p, seed=seed),
    "gaussian_dropout": lambda x, seed, p: xdrop.gaussian_dropout(x, p, seed=seed),
    "drop_path": lambda x, seed, p: xdrop.drop_path(x, p, seed=seed),
    "drop_block": lambda x, seed, p: xdrop.drop_block(x, p, 3, seed=seed),
}


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_family_function_compiles_to_its_eager_values(name):
    function = FUNCTIONS[name]
    x = torch.from_numpy(np.random.default_rng(8).normal(size=(2, 3, 6, 6)).astype(np.float32))
    eager = function(x, SEED, RATE)
    compiled = torch.compile(function, fullgraph=True, dynamic=False)
    y = compiled(x, torch.tensor(SEED), torch.tensor(RATE))
    assert not torch.equal(eager, x)  # the rate and seed drop something: a check that can fail
    # inductor may fuse a multiply and an add where eager rounds twice: one ulp or so
    tolerance = 1e-6 if name in ("alpha_dropout", "gaussian_dropout") else 0.0
    torch.testing.assert_close(y, eager, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_family_function_compiles_with_dynamic_shapes_and_a_host_rate(name):
    """``dynamic=True`` makes Python floats symbolic too: the host constants computed from the
    rate are traced (alpha dropout's power of a negative constant raised torch's error)."""
    function = FUNCTIONS[name]
    compiled = torch.compile(function, fullgraph=True, dynamic=True)
    for batch in (2, 3):
        x = torch.from_numpy(np.random.default_rng(batch).normal(size=(batch, 3, 6, 6)))
        tolerance = 1e-6 if name in ("alpha_dropout", "gaussian_dropout") else 0.0
        y = compiled(x.float(), torch.tensor(SEED), RATE)
        eager = function(x.float(), SEED, RATE)
        assert not torch.equal(eager, x.float())  # something is dropped: a check that can fail
        torch.testing.assert_close(y, eager, rtol=tolerance, atol=tolerance)
