"""``xdrop.layers.keras.convert`` on each Keras backend (JAX, TensorFlow, torch).

The checks in ``tests/layers/keras_convert_checks.py`` run in one fresh pytest process per
backend (``tests/layers/keras_backends.py``); each is reported here as a test of its own. The
keras-hub check writes its training losses and outputs, which must agree across the backends.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
from installed import is_installed
from layers.keras_backends import BACKENDS, runs_per_backend

pytestmark = pytest.mark.backend_independent  # each framework's own arrays

CHECKS = Path(__file__).resolve().parent / "layers" / "keras_convert_checks.py"
NAMES = [
    node.name
    for node in ast.parse(CHECKS.read_text()).body
    if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
]
KERAS_HUB = "test_a_converted_keras_hub_bert_classifier_trains_with_fit"
# keras-hub is installed without its dependencies (ci/requirements-nodeps.txt): its
# tensorflow-text would replace tensorflow-cpu with tensorflow
HAS_KERAS_HUB = is_installed("keras_hub")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Per backend, run once: each check's name -> its problems, and the folder it wrote to."""
    return runs_per_backend(tmp_path_factory, CHECKS, "XDROP_KERAS_CONVERT_OUT")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_convert(outcomes, backend, name):
    if name == KERAS_HUB and not HAS_KERAS_HUB:
        pytest.skip(
            "keras-hub is not installed (pip install --no-deps -r ci/requirements-nodeps.txt)"
        )
    results, _ = outcomes(backend)
    assert name in results, f"{name} did not run on Keras' {backend} backend"
    if results[name]:  # a skip fails too: the check tested nothing
        pytest.fail("\n".join(results[name]), pytrace=False)


@pytest.mark.skipif(not HAS_KERAS_HUB, reason="keras-hub is not installed")
def test_a_converted_keras_hub_bert_trains_alike_on_the_three_backends(outcomes):
    runs = {}
    for backend in BACKENDS:
        results, directory = outcomes(backend)
        assert not results[KERAS_HUB], results[KERAS_HUB]
        runs[backend] = json.loads((directory / f"{backend}.json").read_text())
    jax = runs["jax"]
    for backend in ("tensorflow", "torch"):
        assert runs[backend]["sites"] == jax["sites"]  # the same names, so the same streams
        # the same masks; float32 sums in a different order on each backend
        np.testing.assert_allclose(runs[backend]["losses"], jax["losses"], rtol=1e-5)
        np.testing.assert_allclose(runs[backend]["outputs"], jax["outputs"], rtol=1e-5, atol=1e-6)
