"""xdrop.layers.keras on each Keras backend (JAX, TensorFlow, torch).

Keras fixes its backend at import, so the checks in ``tests/layers/keras_checks.py`` run in one
fresh pytest process per backend (``tests/layers/keras_backends.py``); each check is reported
here as a test of its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from layers.keras_backends import BACKENDS, run_on

pytestmark = pytest.mark.backend_independent  # each framework's own arrays

CHECKS = Path(__file__).resolve().parent / "layers" / "keras_checks.py"
NAMES = [
    node.name
    for node in ast.parse(CHECKS.read_text()).body
    if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
]
ONLY_ON: dict[str, str] = next(
    ast.literal_eval(node.value)
    for node in ast.parse(CHECKS.read_text()).body
    if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "ONLY_ON"
)


def judge(backend: str, name: str, problems: list[str]) -> None:
    """Fail a check whose cases failed, or skipped where it should have run: a check that tested
    nothing has not passed. Skip it, as its cases did, only on a backend it is not meant for."""
    if name in ONLY_ON and ONLY_ON[name] != backend:
        if not problems or not all(problem.startswith("skipped") for problem in problems):
            pytest.fail(f"{name} is for Keras' {ONLY_ON[name]} backend but ran on {backend}")
        pytest.skip(f"{name} runs on Keras' {ONLY_ON[name]} backend only")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Per backend, run once: each check's name -> the failures of its cases ('' if passed)."""
    runs: dict[str, dict[str, list[str]]] = {}

    def of(backend: str) -> dict[str, list[str]]:
        if backend not in runs:
            runs[backend] = run_on(backend, CHECKS, tmp_path_factory.mktemp(backend))
        return runs[backend]

    return of


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_layer(outcomes, backend, name):
    results = outcomes(backend)
    assert name in results, f"{name} did not run on Keras' {backend} backend"
    judge(backend, name, results[name])


TF_ONLY = "test_a_retraced_tf_function_draws_no_extra_step"


@pytest.mark.parametrize(
    ("backend", "name", "problems", "outcome"),
    [
        ("jax", "test_x", [], None),
        ("jax", "test_x", ["failure: test_x: wrong"], pytest.fail.Exception),
        ("jax", "test_x", ["skipped: test_x[a]: no op"], pytest.fail.Exception),  # nothing ran
        ("jax", "test_x", ["skipped: test_x[a]: no op", "skipped: test_x[b]: no op"],
         pytest.fail.Exception),
        ("jax", TF_ONLY, ["skipped: test_x: tf.function is TensorFlow's"], pytest.skip.Exception),
        ("jax", TF_ONLY, [], pytest.fail.Exception),  # ran where it should have skipped
        ("tensorflow", TF_ONLY, ["skipped: test_x: no op"], pytest.fail.Exception),
        ("tensorflow", TF_ONLY, [], None),
    ],
)  # fmt: skip
def test_a_check_that_tested_nothing_fails(backend, name, problems, outcome):
    assert ONLY_ON[TF_ONLY] == "tensorflow"
    if outcome is None:
        judge(backend, name, problems)
    else:
        with pytest.raises(outcome):
            judge(backend, name, problems)
