"""Backends from other packages: found through entry points, checked, and kept apart when broken.

The plugins are real distributions under tests/plugins/, installed by the test command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import xdrop
from xdrop import conformance, reference, registry

boxed = pytest.importorskip(
    "xdrop_testplugin.boxed", reason="install tests/plugins/xdrop-testplugin"
)


def test_a_plugin_is_registered_and_available():
    assert xdrop.available_backends()["boxed"] is True


def test_dispatch_recognises_the_plugins_array_type():
    y, keep = xdrop.dropout(boxed.Boxed(np.ones(64, np.float32)), 0.5, seed=3, return_mask=True)
    assert isinstance(y, boxed.Boxed) and isinstance(keep, boxed.Boxed)
    assert keep.values.tolist() == reference.keep_mask(3, 0.5, 64)


def test_xdrop_backend_selects_a_plugin():
    code = "import numpy as np, xdrop; print(type(xdrop.dropout(np.ones(3), 0.5, seed=0)).__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**_environment(), "XDROP_BACKEND": "boxed"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Boxed"


def test_the_plugin_passes_the_conformance_kit():
    report = conformance.assert_conforms("boxed")
    assert any(result.status == "passed" for result in report.results)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("broken_import", "cannot be imported (No module named 'xdrop_no_such_framework')"),
        ("incomplete", "failed to load: TypeError: Can't instantiate abstract class"),
        ("wrong_types", "fails its self-check: a keep mask came back as int64"),
    ],
)
def test_a_broken_plugin_is_named_with_its_problem(name, problem):
    with pytest.raises(xdrop.BackendError) as raised:
        registry.load(name)
    assert f"xdrop backend {name!r}" in str(raised.value) and problem in str(raised.value)
    assert xdrop.available_backends()[name] is (name == "wrong_types")  # only a draw shows that one


def test_broken_plugins_break_neither_import_nor_other_backends():
    code = (
        "import numpy as np, xdrop\n"
        "from xdrop_testplugin.boxed import Boxed\n"
        "print(xdrop.dropout(Boxed(np.ones(4)), 0.5, seed=1).values.tolist())\n"
        "print(xdrop.dropout(np.ones(4), 0.5, seed=1).tolist())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=_environment())  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == result.stdout.split("\n")[1]


def test_two_packages_claiming_one_name_is_an_error_not_a_silent_winner():
    with pytest.raises(xdrop.BackendError, match="'twin' is claimed by several packages") as raised:
        xdrop.set_backend("twin")
    assert "xdrop-testplugin" in str(raised.value) and "xdrop-testplugin-twin" in str(raised.value)
    assert xdrop.available_backends()["twin"] is False


def test_the_conformance_command_takes_plugins():
    command = [
        sys.executable,
        "-m",
        "xdrop",
        "conformance",
        "--backend",
        "boxed",
        "--mode",
        "eager",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=_environment())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "boxed" in result.stdout and "all backends conform" in result.stdout


def _environment() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key != "XDROP_BACKEND"}


def test_a_broken_backend_named_on_the_command_line_fails_the_run():
    command = [sys.executable, "-m", "xdrop", "conformance", "--mode", "eager"]
    command += [argument for name in ("numpy", "wrong_types") for argument in ("--backend", name)]
    named = subprocess.run(command, capture_output=True, text=True, env=_environment())
    assert named.returncode == 1 and "unavailable: xdrop backend 'wrong_types'" in named.stdout
