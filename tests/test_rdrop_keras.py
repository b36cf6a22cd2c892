"""``xdrop.layers.keras.RDrop``: R-Dropout through Keras' ``fit`` on JAX, TensorFlow and torch.

The checks in ``tests/layers/keras_rdrop_checks.py`` run in one fresh pytest process per Keras
backend (``tests/layers/keras_backends.py``); each is reported here as a test of its own. The
checks that train write their loss histories, which must agree across the three backends: the
same weights and xdrop's portable streams give the same masks everywhere.
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

CHECKS = Path(__file__).resolve().parent / "layers" / "keras_rdrop_checks.py"
NAMES = [
    node.name
    for node in ast.parse(CHECKS.read_text()).body
    if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
]
KERAS_HUB = "test_a_converted_keras_hub_bert_classifier_trains_with_rdrop"
# keras-hub is installed without its dependencies (ci/requirements-nodeps.txt)
HAS_KERAS_HUB = is_installed("keras_hub")
NO_KERAS_HUB = "keras-hub is not installed (pip install --no-deps -r ci/requirements-nodeps.txt)"
HISTORIES = ["logits", "probabilities", "binary", "regression", "tokens_weighted", "tokens_masked",
             "converted", "keras_hub", "resumed"]  # fmt: skip


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Per backend, run once: each check's name -> its problems, and the folder it wrote to."""
    return runs_per_backend(tmp_path_factory, CHECKS, "XDROP_KERAS_RDROP_OUT")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_rdrop(outcomes, backend, name):
    if name == KERAS_HUB and not HAS_KERAS_HUB:
        pytest.skip(NO_KERAS_HUB)
    results, _ = outcomes(backend)
    assert name in results, f"{name} did not run on Keras' {backend} backend"
    if results[name]:  # a skip fails too: the check tested nothing
        pytest.fail("\n".join(results[name]), pytrace=False)


@pytest.mark.parametrize("history", HISTORIES)
def test_the_three_backends_report_one_loss_history(outcomes, history):
    if history == "keras_hub" and not HAS_KERAS_HUB:
        pytest.skip(NO_KERAS_HUB)
    runs = {}
    for backend in BACKENDS:
        _, directory = outcomes(backend)
        path = directory / f"{history}.json"
        assert path.exists(), f"the {history} check wrote nothing on Keras' {backend} backend"
        runs[backend] = json.loads(path.read_text())
    for backend in ("tensorflow", "torch"):
        # the same masks; float32 sums in a different order on each backend
        np.testing.assert_allclose(runs[backend], runs["jax"], rtol=1e-5)
