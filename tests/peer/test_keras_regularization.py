"""Keras 3's own tests of its regularization layers (ported in ``keras_regularization.py``, next
to this file) pass against xdrop's Keras layers on each Keras backend: JAX, TensorFlow, torch.

Keras fixes its backend at import, so the ported file runs in one fresh pytest process per
backend; each of its tests is reported here as a test of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from layers.keras_backends import BACKENDS, run_on

pytestmark = pytest.mark.backend_independent  # each framework's own arrays

PORTED = Path(__file__).resolve().parent / "keras_regularization.py"
NAMES = [
    f"{node.name}.{method.name}"
    for node in ast.parse(PORTED.read_text()).body
    if isinstance(node, ast.ClassDef)
    for method in node.body
    if isinstance(method, ast.FunctionDef) and method.name.startswith("test_")
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Per backend, run once: each ported test's name -> its failures (empty if it passed)."""
    runs: dict[str, dict[str, list[str]]] = {}

    def of(backend: str) -> dict[str, list[str]]:
        if backend not in runs:
            runs[backend] = run_on(backend, PORTED, tmp_path_factory.mktemp(backend))
        return runs[backend]

    return of


def test_every_keras_file_is_ported():
    classes = {name.partition(".")[0] for name in NAMES}
    assert classes == {"DropoutTest", "AlphaDropoutTest", "GaussianDropoutTest",
                       "GaussianNoiseTest", "SpatialDropoutTest"}  # fmt: skip
    assert len(NAMES) == 33


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_regularization(outcomes, backend, name):
    results = outcomes(backend)
    assert name in results, f"{name} did not run on Keras' {backend} backend"
    if results[name]:  # a skip counts too: the port must run everywhere Keras' own test does
        pytest.fail("\n".join(results[name]), pytrace=False)
