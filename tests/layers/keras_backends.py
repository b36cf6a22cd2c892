"""Run a file of Keras tests in one fresh pytest process per Keras backend.

Keras fixes its backend at import (``KERAS_BACKEND``), so a file of checks cannot run on two
backends in one process. :func:`run_on` runs it in a subprocess and reads back each test's
failures from pytest's JUnit report; ``tests/test_layers_keras.py`` and
``tests/peer/test_keras_regularization.py`` report each as a test of its own.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from pathlib import Path

import pytest

BACKENDS = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}  # name -> package
ROOT = Path(__file__).resolve().parents[2]


def run_on(
    backend: str, checks: Path, directory: Path, out_variable: str | None = None
) -> dict[str, list[str]]:
    """Run ``checks`` on Keras' ``backend``: each test's name (``Class.test`` for a test of a
    class) -> its failures, errors and skips, empty if it passed. Skips where Keras or the
    backend's framework is not installed. ``out_variable``: an environment variable that
    tells the checks where to write what they record (``directory``)."""
    for package in ("keras", BACKENDS[backend]):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} is not installed")
    report = directory / "report.xml"
    environment = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("XDROP_BACKEND", None)
    if out_variable is not None:
        environment[out_variable] = str(directory)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={report}", str(checks)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=1200,
                         env=environment, cwd=ROOT)  # fmt: skip
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    results: dict[str, list[str]] = {}
    for case in ElementTree.parse(report).iter("testcase"):
        name = case.attrib["name"].split("[")[0]
        owner = case.attrib.get("classname", "").rpartition(".")[2]
        if owner and owner[0].isupper():  # a method of a test class
            name = f"{owner}.{name}"
        problems = results.setdefault(name, [])
        for tag in ("failure", "error", "skipped"):
            for element in case.iter(tag):
                text = element.attrib.get("message", "") + "\n" + (element.text or "")
                problems.append(f"{tag}: {case.attrib['name']}: {text[-2500:]}")
    return results


def runs_per_backend(
    tmp_path_factory: pytest.TempPathFactory, checks: Path, out_variable: str
) -> Callable[[str], tuple[dict[str, list[str]], Path]]:
    """A backend -> :func:`run_on`'s results for ``checks`` and the folder they wrote to, each
    backend run once, on first asking (for a module-scoped fixture)."""
    runs: dict[str, tuple[dict[str, list[str]], Path]] = {}

    def of(backend: str) -> tuple[dict[str, list[str]], Path]:
        if backend not in runs:
            directory = tmp_path_factory.mktemp(backend)
            runs[backend] = run_on(backend, checks, directory, out_variable), directory
        return runs[backend]

    return of
