"""Backends from other packages: found through entry points, checked, and kept apart when broken.

The plugins are real distributions under tests/plugins/: ``tests/conftest.py`` gives each a
``.dist-info`` on ``sys.path`` and ``PYTHONPATH`` while the tests run, so that
``importlib.metadata`` discovers their entry points as it does an installed package's."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import xdrop
from xdrop import conformance, reference, registry, self_check

pytestmark = pytest.mark.backend_independent
ROOT = Path(__file__).parent.parent

boxed = pytest.importorskip(
    "xdrop_testplugin.boxed", reason="install tests/plugins/xdrop-testplugin"
)
shadowed = pytest.importorskip("xdrop_testplugin.shadowed")


def run_python(*arguments: str, **environment: str) -> subprocess.CompletedProcess[str]:
    """``python ARGUMENTS`` in a fresh process that sees the test plugins, with no
    ``XDROP_BACKEND`` but the one given."""
    env = {key: value for key, value in os.environ.items() if key != "XDROP_BACKEND"}
    env.update(environment)
    command = [sys.executable, *arguments]
    return subprocess.run(command, capture_output=True, text=True, env=env)


def run_conformance(*names: str) -> subprocess.CompletedProcess[str]:
    """``xdrop conformance --mode eager --backend NAME ...`` in a fresh process."""
    return run_python(
        "-m", "xdrop", "conformance", "--mode", "eager",
        *(argument for name in names for argument in ("--backend", name)),
    )  # fmt: skip


def test_a_plugin_is_registered_and_available():
    assert xdrop.available_backends()["boxed"] is True


def test_plugins_are_found_through_their_distributions_entry_points():
    (claim,) = registry._registered()["boxed"]
    assert claim.dist is not None and claim.dist.name == "xdrop-testplugin"
    assert claim.value == "xdrop_testplugin.boxed:BoxedBackend"
    assert "boxed" in {entry.name for entry in metadata.entry_points(group="xdrop.backends")}


def test_the_test_plugins_are_never_installed():
    # they exist only while the tests run: the install commands do not name them
    for path in ("ci/requirements.txt", "ci/requirements-nodeps.txt", ".ci/run"):
        assert "tests/plugins" not in (ROOT / path).read_text(), path
    readme = (ROOT / "README.md").read_text()
    test_command = readme[readme.index("pip install -c") :].split("```")[0].splitlines()
    assert test_command[-1].endswith("&& python -m pytest"), test_command
    assert all(line.startswith("pip install ") for line in test_command), test_command
    assert not any("tests/plugins" in line for line in test_command)


def test_dispatch_recognises_the_plugins_array_type():
    y, keep = xdrop.dropout(boxed.Boxed(np.ones(64, np.float32)), 0.5, seed=3, return_mask=True)
    assert isinstance(y, boxed.Boxed) and isinstance(keep, boxed.Boxed)
    assert keep.values.tolist() == reference.keep_mask(3, 0.5, 64)


def test_xdrop_backend_selects_a_plugin():
    code = "import numpy as np, xdrop; print(type(xdrop.dropout(np.ones(3), 0.5, seed=0)).__name__)"
    result = run_python("-c", code, XDROP_BACKEND="boxed")
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
        ("exits", "failed to load: SystemExit: xdrop_testplugin.exits: a plugin that exits"),
    ],
)
def test_a_broken_plugin_is_named_with_its_problem(name, problem):
    with pytest.raises(xdrop.BackendError) as raised:
        registry.load(name)
    assert f"xdrop backend {name!r}" in str(raised.value) and problem in str(raised.value)
    # one notion of available: what fails to load is not available
    assert xdrop.available_backends()[name] is False


def test_only_availability_and_conformance_run_the_self_check(monkeypatch):
    checked = []
    real = self_check.problem
    monkeypatch.setattr(
        self_check, "problem", lambda backend: checked.append(backend.name) or real(backend)
    )
    monkeypatch.setattr(registry, "_backends", {})  # load every backend afresh
    monkeypatch.setattr(registry, "_owner_of_type", {})
    xdrop.dropout(boxed.Boxed(np.ones(4, np.float32)), 0.5, seed=0)
    assert registry.load("wrong_types").name == "wrong_types"  # loads: dispatch checks nothing
    assert checked == []
    # one notion of available: the self-check fails, so neither counts it
    assert xdrop.available_backends()["wrong_types"] is False
    report = conformance.run_backend("wrong_types", [])
    assert not report.available
    assert report.reason.startswith(
        "xdrop backend 'wrong_types' (xdrop_testplugin.broken:WrongTypes, from xdrop-testplugin) "
        "fails its self-check: a keep mask came back as int64"
    )
    assert {"boxed", "wrong_types"} <= set(checked) and "numpy" not in checked


def test_a_plugin_that_exits_on_import_takes_nothing_down():
    torch = pytest.importorskip("torch")
    code = (
        "import numpy as np, torch, xdrop\n"
        "print(xdrop.available_backends()['exits'], xdrop.available_backends()['numpy'])\n"
        "print(type(xdrop.dropout(torch.ones(4), 0.5, seed=1)).__name__)"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True", "Tensor"]
    with xdrop.use_backend("numpy"):
        expected = xdrop.dropout(np.ones(4, np.float32), 0.5, seed=1).tolist()
    assert xdrop.dropout(torch.ones(4), 0.5, seed=1).tolist() == expected
    run = run_conformance("numpy")
    assert run.returncode == 0, run.stdout + run.stderr


def test_chunks_of_the_wrong_size_are_an_error_not_uninitialised_output():
    # the self-check draws 16 elements, which this plugin gets right
    assert xdrop.available_backends()["wrong_sizes"] is True
    with xdrop.use_backend("wrong_sizes"):
        for draw in (
            lambda: xdrop.dropout(np.ones(100, np.float32), 0.5, seed=0),
            lambda: xdrop.dropout(np.ones(100, np.float32), 0.5, seed=0, return_mask=True),
            lambda: xdrop.dropout_mask((100,), 0.5, seed=0),
        ):
            with pytest.raises(xdrop.BackendError, match=r"'wrong_sizes' .* 99 elements, not 100"):
                draw()


class _EntryPoint:
    """An entry point of a distribution that is not installed, for claims made up by a test."""

    def __init__(self, name: str, backend_class: type, distribution: str) -> None:
        self.name, self.value = name, f"{backend_class.__module__}:{backend_class.__qualname__}"
        self.dist, self._class = SimpleNamespace(name=distribution), backend_class

    def load(self) -> type:
        return self._class


@pytest.fixture
def claims(monkeypatch):
    """Register extra backends for one test; dispatch forgets what it learnt meanwhile. No
    backend is selected (a selected one would settle every claim)."""
    monkeypatch.delenv("XDROP_BACKEND", raising=False)
    monkeypatch.setattr(registry, "_owner_of_type", {})
    monkeypatch.setattr(registry, "_backends", dict(registry._backends))
    monkeypatch.setattr(registry, "_warned_lost", set())

    def register(name: str, backend_class: type, distribution: str) -> None:
        monkeypatch.setitem(
            registry._registered(), name, [_EntryPoint(name, backend_class, distribution)]
        )

    return register


def test_two_plugins_claiming_one_array_type_is_an_error_naming_both(claims):
    class Rival(boxed.BoxedBackend):
        name = "rival"

    claims("rival", Rival, "xdrop-rival")
    x = boxed.Boxed(np.ones(8, np.float32))
    with pytest.raises(xdrop.BackendError, match="claimed by several xdrop backends") as raised:
        xdrop.dropout(x, 0.5, seed=0)
    assert "'boxed'" in str(raised.value) and "'rival'" in str(raised.value)
    assert "xdrop-testplugin" in str(raised.value) and "xdrop-rival" in str(raised.value)
    with xdrop.use_backend("rival"):  # selecting one settles it
        assert registry.backend_for(x).name == "rival"


def test_a_plugin_cannot_take_torch_tensors_from_the_built_in_backend(claims):
    torch = pytest.importorskip("torch")
    from xdrop.backends.torch import TorchBackend

    class Atorch(TorchBackend):  # sorts before "torch"
        name = "atorch"

    claims("atorch", Atorch, "xdrop-atorch")
    with pytest.warns(xdrop.BackendWarning, match="plugin 'atorch' .* type torch.Tensor"):
        assert registry.backend_for(torch.ones(2)).name == "torch"
    with xdrop.use_backend("atorch"):  # unless the user selects it
        assert registry.backend_for(torch.ones(2)).name == "atorch"


def test_a_plugin_that_loses_an_array_type_to_a_built_in_is_told_how_to_win_it(monkeypatch):
    monkeypatch.setattr(registry, "_owner_of_type", {})
    monkeypatch.setattr(registry, "_warned_lost", set())
    x = shadowed.Standard(
        np.ones(4, np.float32)
    )  # claimed by 'shadowed' and the built-in array_api
    with pytest.warns(xdrop.BackendWarning) as caught:
        assert registry.backend_for(x).name == "array_api"
    (warning,) = caught
    assert str(warning.message) == (
        "xdrop backend plugin 'shadowed' (xdrop_testplugin.shadowed:ShadowedBackend, from "
        "xdrop-testplugin) claims arrays of type xdrop_testplugin.shadowed.Standard, which the "
        "built-in backend 'array_api' runs; to run them on 'shadowed', select it: with "
        "xdrop.use_backend('shadowed'), xdrop.set_backend('shadowed') or XDROP_BACKEND=shadowed"
    )
    assert (
        issubclass(xdrop.BackendWarning, xdrop.XdropWarning)
        and warning.filename == registry.__file__
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per plugin and type; none once it is selected
        assert registry.backend_for(x).name == "array_api"
        with xdrop.use_backend("shadowed"):
            assert registry.backend_for(x).name == "shadowed"
        monkeypatch.setenv("XDROP_BACKEND", "shadowed")
        assert registry.backend_for(x).name == "shadowed"
        monkeypatch.setattr(registry, "_warned_lost", set())
        monkeypatch.setenv("XDROP_BACKEND", "array_api")
        assert registry.backend_for(x).name == "array_api"  # selected: nothing was lost unasked


def test_broken_plugins_break_neither_import_nor_other_backends():
    code = (
        "import numpy as np, xdrop\n"
        "from xdrop_testplugin.boxed import Boxed\n"
        "print(xdrop.dropout(Boxed(np.ones(4)), 0.5, seed=1).values.tolist())\n"
        "print(xdrop.dropout(np.ones(4), 0.5, seed=1).tolist())"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == result.stdout.split("\n")[1]


def test_two_packages_claiming_one_name_is_an_error_not_a_silent_winner():
    with pytest.raises(xdrop.BackendError, match="'twin' is claimed by several packages") as raised:
        xdrop.set_backend("twin")
    assert "xdrop-testplugin" in str(raised.value) and "xdrop-testplugin-twin" in str(raised.value)
    assert xdrop.available_backends()["twin"] is False


def test_the_conformance_command_takes_plugins():
    result = run_conformance("boxed")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "boxed" in result.stdout and "all backends conform" in result.stdout


def test_a_broken_backend_named_on_the_command_line_fails_the_run():
    named = run_conformance("numpy", "wrong_types")
    assert named.returncode == 1 and "unavailable: xdrop backend 'wrong_types'" in named.stdout
