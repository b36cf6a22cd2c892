"""Backend selection and dispatch: XDROP_BACKEND, set_backend, use_backend, and what gets imported."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import xdrop
from xdrop import defaults, registry

FRAMEWORKS = ("torch", "tensorflow", "jax", "jaxlib", "keras", "flax")
ROOT = Path(__file__).parent.parent


def run_python(code: str, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "XDROP_BACKEND"}
    env.update(environment)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


def test_importing_xdrop_imports_no_framework_besides_numpy():
    code = (
        "import sys, numpy as np, xdrop, xdrop.layers, xdrop.layers.common\n"
        "xdrop.dropout(np.ones(3, np.float32), 0.5, seed=0)\n"
        "xdrop.available_backends()\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r}))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "imported"),
    [("xdrop.layers.torch", {"torch"}), ("xdrop.layers.flax", {"flax", "jax", "jaxlib"})],
)
def test_a_layer_module_imports_its_own_framework_only(module, imported):
    pytest.importorskip(module.rsplit(".", 1)[1])
    code = (
        f"import sys, {module}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(FRAMEWORKS)!r}))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(sorted(imported))


def test_the_default_backend_is_numpy_when_the_variable_is_unset():
    result = run_python("import xdrop; print(xdrop.get_backend())")
    assert result.stdout.strip() == "numpy"


def test_xdrop_backend_names_the_default_backend():
    # a name other than the fallback: an ignored variable would print "numpy"
    code = "import numpy as np, xdrop; print(xdrop.get_backend(), xdrop.registry.default_backend())"
    result = run_python(code, XDROP_BACKEND="array_api")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "array_api <xdrop backend 'array_api'>"


@pytest.mark.parametrize("name", ["nonsense", "os", "xdrop.backends.numpy", "numpy:NumpyBackend"])
@pytest.mark.parametrize("call", ["xdrop.dropout(np.ones(3), 0.5, seed=0)", "xdrop.get_backend()"])
def test_an_unregistered_name_fails_listing_the_registered_backends(name, call):
    code = f"import numpy as np, xdrop; {call}"
    result = run_python(code, XDROP_BACKEND=name)
    assert result.returncode != 0
    assert "BackendError" in result.stderr
    origin = "(from the environment variable XDROP_BACKEND)"
    assert f"unknown xdrop backend {name!r} {origin}" in result.stderr
    assert "registered backends: " in result.stderr
    assert "numpy" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("name", ["pytorch", "TORCH", "Torch ", "troch"])
def test_a_near_miss_in_the_variable_gets_a_suggestion(name):
    code = "import numpy as np, xdrop; xdrop.dropout(np.ones(3), 0.5, seed=0)"
    result = run_python(code, XDROP_BACKEND=name)
    assert result.returncode != 0
    last = result.stderr.splitlines()[-1]
    assert "XDROP_BACKEND" in last and "did you mean 'torch'?" in last


@pytest.mark.parametrize("name", ["pytorch", "TORCH"])
def test_set_backend_suggests_the_registered_name(name):
    with pytest.raises(xdrop.BackendError, match="did you mean 'torch'"):
        xdrop.set_backend(name)


def test_a_backend_error_is_a_value_error():
    # README: every xdrop error is also a ValueError or a TypeError
    with pytest.raises(ValueError, match="unknown xdrop backend 'nope'"):
        xdrop.set_backend("nope")
    assert issubclass(xdrop.BackendError, ValueError)


def test_the_variable_is_read_only_when_a_default_is_needed():
    # an invalid default must not break import or calls that never use the default
    result = run_python("import xdrop; print(xdrop.fold_in(1, 2))", XDROP_BACKEND="nonsense")
    assert result.returncode == 0, result.stderr


def test_available_backends_lists_numpy_as_importable():
    available = xdrop.available_backends()
    assert available["numpy"] is True
    assert set(available) == set(registry.registered_names())


def test_set_backend_rejects_unknown_names():
    with pytest.raises(xdrop.BackendError, match="unknown xdrop backend 'nope'"):
        xdrop.set_backend("nope")


def test_use_backend_restores_exactly_what_was_there(monkeypatch):
    monkeypatch.setattr(defaults.BACKEND, "_process", None)
    monkeypatch.setenv("XDROP_BACKEND", "array_api")
    assert xdrop.get_backend() == "array_api"
    with xdrop.use_backend("numpy") as backend:
        assert backend.name == "numpy" and xdrop.get_backend() == "numpy"
        with xdrop.use_backend("array_api"):
            assert xdrop.get_backend() == "array_api"
        assert xdrop.get_backend() == "numpy"
    assert defaults.BACKEND.chosen() is None
    assert xdrop.get_backend() == "array_api"


def test_use_backend_is_local_to_threads_and_tasks(monkeypatch):
    monkeypatch.setattr(defaults.BACKEND, "_process", None)
    monkeypatch.delenv("XDROP_BACKEND", raising=False)
    seen: dict[str, object] = {}

    def other_thread() -> None:
        seen["thread"] = xdrop.get_backend()

    async def task(name: str) -> list[str]:
        names = []
        with xdrop.use_backend(name):
            for _ in range(3):
                await asyncio.sleep(0)  # the other task runs here, inside its own block
                names.append(xdrop.get_backend())
        return names

    async def both() -> list[list[str]]:
        return list(await asyncio.gather(task("numpy"), task("array_api")))

    thread = threading.Thread(target=other_thread)
    with xdrop.use_backend("array_api"):
        thread.start()
        thread.join()
        seen["tasks"] = asyncio.run(both())  # tasks started inside the block
        seen["here"] = xdrop.get_backend()
    assert seen == {
        "thread": "numpy",  # a new thread starts from the process default
        "tasks": [["numpy"] * 3, ["array_api"] * 3],
        "here": "array_api",
    }


@pytest.mark.parametrize(
    ("setting", "set_default", "use_default", "get_default", "values"),
    [
        (defaults.BACKEND, xdrop.set_backend, xdrop.use_backend, xdrop.get_backend,
         ("numpy", "array_api")),
        (defaults.RNG, xdrop.set_rng, xdrop.use_rng, xdrop.get_rng, ("portable", "native")),
    ],
    ids=["backend", "rng"],
)  # fmt: skip
def test_the_default_backend_and_generator_are_kept_alike_in_xdrop_defaults(
    monkeypatch, setting, set_default, use_default, get_default, values
):
    process_wide, in_block = values
    monkeypatch.setattr(setting, "_process", None)
    monkeypatch.setenv(setting.environment_variable, f" {in_block} ")
    assert get_default() == setting.get() == in_block  # the environment, stripped
    set_default(process_wide)
    assert get_default() == setting.chosen() == process_wide  # beats the environment
    seen: dict[str, object] = {}

    async def task(value: str) -> str:
        with use_default(value):
            await asyncio.sleep(0)  # the other task enters its own block here
            return str(get_default())

    async def both() -> list[str]:
        return list(await asyncio.gather(task(in_block), task(process_wide)))

    with use_default(in_block):
        assert setting.chosen() == in_block
        thread = threading.Thread(target=lambda: seen.update(thread=get_default()))
        thread.start()
        thread.join()
        seen["tasks"] = asyncio.run(both())
    assert seen == {"thread": process_wide, "tasks": [in_block, process_wide]}
    assert get_default() == process_wide


def test_numpy_arrays_and_python_values_go_to_the_default_backend():
    for value in (np.ones(2), np.float32(1.0), 1.0, [1.0, 2.0]):
        assert registry.backend_for(value) is registry.default_backend()


def test_a_backend_that_is_registered_but_not_importable_says_what_to_install(monkeypatch):
    from xdrop.backends.numpy import NumpyBackend

    class Missing(NumpyBackend):
        def __init__(self) -> None:
            import xdrop_test_missing_framework  # noqa: F401

    class EntryPoint:
        name, value, dist = "missing", "tests:Missing", None

        def load(self) -> type:
            return Missing

    monkeypatch.setitem(registry._registered(), "missing", [EntryPoint()])
    with pytest.raises(xdrop.BackendError, match=r'pip install "\.\[missing\]" from a checkout'):
        registry.load("missing")


def test_the_built_in_table_is_what_pyproject_toml_registers():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["xdrop.backends"] == registry.BUILT_IN_BACKENDS


def test_a_checkout_on_pythonpath_finds_its_backends_without_an_install(tmp_path):
    """No pip install: no entry points, no editable finder. ``python -S`` skips site-packages (so
    the installed xdrop); NumPy alone is put on the path, from a folder of its own."""
    checkout, site = tmp_path / "checkout", tmp_path / "site"
    litter = shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.egg-info")
    for folder in ("xdrop", "backends"):
        shutil.copytree(ROOT / folder, checkout / folder, ignore=litter)
    site.mkdir()
    numpy_home = Path(np.__file__).parent
    for name in ("numpy", "numpy.libs"):  # numpy.libs: the wheel's shared libraries, if any
        if (numpy_home.parent / name).exists():
            (site / name).symlink_to(numpy_home.parent / name)
    code = (
        "import importlib.metadata as metadata, numpy, xdrop\n"
        "print(list(metadata.entry_points(group='xdrop.backends')))\n"
        "print(xdrop.__file__.startswith(sys.argv[1]), xdrop.available_backends()['numpy'])\n"
        "print(xdrop.dropout(numpy.ones(4, numpy.float32), 0.5, seed=0).tolist())\n"
        "print(xdrop.registry.is_built_in('numpy'), xdrop.registry.origin('numpy'))\n"
        "import xdrop.cli\n"
        "sys.exit(xdrop.cli.main(['conformance', '--backend', 'numpy', '--mode', 'eager']))\n"
    )
    environment = {"PYTHONPATH": f"{checkout}{os.pathsep}{site}", "PATH": os.environ["PATH"]}
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import sys\n" + code, str(checkout)],
        capture_output=True, text=True, cwd=tmp_path, env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        "[]",  # nothing installed: the registry's own table registers the built-ins
        "True True",
        "[0.0, 0.0, 2.0, 2.0]",
        "True xdrop.backends.numpy:NumpyBackend, from xdrop",
    ]
    assert "all backends conform" in result.stdout
