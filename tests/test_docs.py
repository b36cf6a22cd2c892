"""The examples in README.md and in the docstrings run as written (on the NumPy backend)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import xdrop

pytestmark = pytest.mark.backend_independent  # CI runs it once, not per backend

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(xdrop.__path__, "xdrop.")
    if info.name != "xdrop.__main__"
)


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


@pytest.mark.parametrize(
    "document", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))]
)
def test_markdown_python_examples_run(document):
    path = ROOT / document if document == "README.md" else ROOT / "docs" / document
    with xdrop.use_backend("numpy"):
        for block in python_blocks(path):
            for framework in re.findall(
                r"^(?:import|from) (torch|tensorflow|jax|keras|flax|optax)\b",
                block,
                flags=re.MULTILINE,
            ):
                pytest.importorskip(framework)
            exec(compile(block, str(path), "exec"), {})


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
    if module_name.startswith("xdrop.layers."):  # a layer module imports its framework
        framework = module_name.rsplit(".", 1)[1]
        if framework != "common":
            pytest.importorskip(framework)
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:  # xdrop.torch_kernel and xdrop.triton_kernel import theirs
        if error.name not in ("torch", "triton"):
            raise
        pytest.skip(f"{module_name} needs {error.name}")
    with xdrop.use_backend("numpy"):
        failures, _ = doctest.testmod(
            module, extraglobs={"xdrop": xdrop}, optionflags=doctest.NORMALIZE_WHITESPACE
        )
    assert failures == 0
