"""Shared fixtures. The suite runs against the default backend: ``XDROP_BACKEND=<name> pytest``.

The third-party backends under ``tests/plugins/`` exist only while the tests run: when pytest
starts, each plugin's ``pyproject.toml`` is turned into a ``.dist-info`` folder (its metadata and
entry points) in a temporary directory put on ``sys.path`` and ``PYTHONPATH``, next to the plugin's
source. ``importlib.metadata`` then discovers them exactly as it discovers installed packages, in
this process and in the subprocesses tests start; nothing is installed into the environment.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xdrop
from xdrop import kernel, registry

# test modules import TensorFlow, and torch.compile then loads Triton where it is installed
registry.load_triton_before_tensorflow()

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PLUGINS = Path(__file__).parent / "plugins"
BACKEND_INDEPENDENT = "backend_independent"
_plugin_site: dict[str, Any] = {}


def _write_distribution(project: Path, site: Path) -> None:
    """A ``.dist-info`` for the project at ``project``, read from its ``pyproject.toml``."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    info = site / f"{meta['name'].replace('-', '_')}-{meta['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {meta['name']}\nVersion: {meta['version']}\n"
    )
    groups = meta.get("entry-points", {})
    lines = []
    for group, entries in groups.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def pytest_configure(config: pytest.Config) -> None:
    site = Path(tempfile.mkdtemp(prefix="xdrop-test-plugins-"))
    paths = [str(site)]
    for project in sorted(PLUGINS.iterdir()):
        if (project / "pyproject.toml").is_file():
            _write_distribution(project, site)
            paths.append(str(project))
    _plugin_site.update(site=site, paths=paths, pythonpath=os.environ.get("PYTHONPATH"))
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join(
        paths + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    )
    registry.forget_entry_points()


def pytest_unconfigure(config: pytest.Config) -> None:
    if not _plugin_site:
        return
    for path in _plugin_site["paths"]:
        if path in sys.path:
            sys.path.remove(path)
    if _plugin_site["pythonpath"] is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = _plugin_site["pythonpath"]
    shutil.rmtree(_plugin_site["site"], ignore_errors=True)
    registry.forget_entry_points()
    _plugin_site.clear()


@pytest.fixture(scope="session")
def xp() -> Any:
    """The backend under test (the default backend)."""
    return registry.default_backend()


@pytest.fixture(scope="session")
def array(xp: Any) -> Any:
    """Make an array of the backend under test from nested lists or NumPy."""

    def make(values: Any, dtype: str = "float32") -> Any:
        try:
            return xp.asarray(np.asarray(values, np.float64), dtype=dtype)
        except TypeError as error:  # e.g. float64 on JAX without x64
            pytest.skip(f"{xp.name} makes no {dtype} arrays here: {error}")

    return make


@pytest.fixture(scope="session")
def host(xp: Any) -> Any:
    """Read an array of the backend under test back as NumPy."""
    return xp.to_numpy


@pytest.fixture(autouse=True)
def _fresh_global_state() -> Iterator[None]:
    """Each test starts from the same global generator and no process-wide rng choice, and ends
    with ``XDROP_KERNEL`` read again: this fixture's end comes after ``monkeypatch`` restored
    the variable, so a test that set it and called ``kernel.refresh()`` leaves nothing behind."""
    xdrop.manual_seed(1234)
    xdrop.set_rng(None)
    yield
    kernel.refresh()
