"""The R-Drop examples run: each trains for a few steps and prints its three test accuracies.

A framework's example is skipped where that framework, or xdrop's backend for it, is missing.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xdrop

pytestmark = pytest.mark.backend_independent  # CI runs it once, not per backend

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = {
    "numpy": "rdrop_numpy.py",
    "torch": "rdrop_torch.py",
    "tensorflow": "rdrop_tensorflow.py",
    "jax": "rdrop_jax.py",
    "flax": "rdrop_flax.py",
}
BACKENDS = {"flax": "jax"}  # an example's xdrop backend, where it is not the example's name
PACKAGES = {"tensorflow": ("keras",), "flax": ("optax",)}  # what else an example imports
VARIANTS = ["no dropout", "dropout", "dropout + R-Drop"]


def require(framework: str) -> None:
    pytest.importorskip("sklearn")
    for package in (framework, *PACKAGES.get(framework, ())):
        pytest.importorskip(package)
    backend = BACKENDS.get(framework, framework)
    if not xdrop.available_backends().get(backend):
        pytest.skip(f"xdrop has no {backend} backend installed here")


@pytest.mark.parametrize("framework", SCRIPTS)
def test_example_trains_and_prints_three_test_accuracies(framework):
    require(framework)
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("XDROP_BACKEND", None)  # each example's arrays pick their own backend
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / SCRIPTS[framework]), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        env=environment,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    rows = [
        line.split(" test accuracy ") for line in run.stdout.splitlines() if "test accuracy" in line
    ]
    assert [name.strip() for name, _ in rows] == VARIANTS
    assert all(0.0 <= float(accuracy) <= 1.0 for _, accuracy in rows)


def test_example_steps_flag():
    require("numpy")
    run = subprocess.run(
        [sys.executable, str(EXAMPLES / SCRIPTS["numpy"]), "--steps", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("test accuracy") == 3


@pytest.mark.parametrize("alpha", [0.0, 1.5])
def test_numpy_example_gradients_are_the_derivatives_of_its_loss(alpha):
    """The hand-written backward pass against central differences of the loss (same masks)."""
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location(
        "rdrop_numpy_example", EXAMPLES / SCRIPTS["numpy"]
    )
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    rng = np.random.default_rng(0)
    params = example.init(rng, hidden=16)
    x, y = rng.random((6, 64)), rng.integers(0, 10, 6)
    with xdrop.use_backend("numpy"):
        _, gradients = example.loss_and_gradients(params, x, y, 0.3, alpha, seed=5)
        for name, value in params.items():
            for flat in rng.choice(value.size, 5, replace=False):
                index = np.unravel_index(flat, value.shape)
                losses = []
                for step in (1e-6, -1e-6):
                    moved = {**params, name: value.copy()}
                    moved[name][index] += step
                    losses.append(example.loss_and_gradients(moved, x, y, 0.3, alpha, seed=5)[0])
                numerical = (losses[0] - losses[1]) / 2e-6
                assert gradients[name][index] == pytest.approx(numerical, rel=1e-4, abs=1e-7)
