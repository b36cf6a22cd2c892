"""xdrop.layers.keras on each Keras backend (JAX, TensorFlow, torch).

Keras fixes its backend at import, so the checks in ``tests/layers/keras_checks.py`` run in one
fresh pytest process per backend; each check is reported here as a test of its own.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent  # each framework's own arrays

CHECKS = Path(__file__).resolve().parent / "layers" / "keras_checks.py"
BACKENDS = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}  # name -> package
NAMES = [
    node.name
    for node in ast.parse(CHECKS.read_text()).body
    if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Per backend, run once: each check's name -> the failures of its cases ('' if passed)."""
    runs: dict[str, dict[str, list[str]]] = {}

    def of(backend: str) -> dict[str, list[str]]:
        if backend not in runs:
            for package in ("keras", BACKENDS[backend]):
                if importlib.util.find_spec(package) is None:
                    pytest.skip(f"{package} is not installed")
            report = tmp_path_factory.mktemp(backend) / "report.xml"
            environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
            environment.pop("XDROP_BACKEND", None)
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       f"--junitxml={report}", str(CHECKS)]  # fmt: skip
            run = subprocess.run(command, capture_output=True, text=True, timeout=1200,
                                 env=environment, cwd=CHECKS.parents[2])  # fmt: skip
            assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
            results: dict[str, list[str]] = {}
            for case in ElementTree.parse(report).iter("testcase"):
                name = case.attrib["name"].split("[")[0]
                problems = results.setdefault(name, [])
                for tag in ("failure", "error", "skipped"):
                    for element in case.iter(tag):
                        text = element.attrib.get("message", "") + "\n" + (element.text or "")
                        problems.append(f"{tag}: {case.attrib['name']}: {text[-2500:]}")
            runs[backend] = results
        return runs[backend]

    return of


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_keras_layer(outcomes, backend, name):
    results = outcomes(backend)
    assert name in results, f"{name} did not run on Keras' {backend} backend"
    problems = results[name]
    if problems and all(problem.startswith("skipped") for problem in problems):
        pytest.skip(problems[0])
    assert not problems, "\n".join(problems)
