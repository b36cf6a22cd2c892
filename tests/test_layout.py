"""The package's layout: xdrop's modules import each other one way, lower layers never reaching up
into the ones that use them, and the benchmarks live in one place."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent
ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "backends":  # installed as xdrop.backends
        parts[:1] = ["xdrop", "backends"]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Each of xdrop's modules and the xdrop modules it imports, at the top or inside a function
    alike (an import deferred to run time is still a dependency). A module importing its own
    package (``import xdrop`` for the public API) is left out: a package's ``__init__`` only
    re-exports."""
    paths = [*(ROOT / "xdrop").rglob("*.py"), *(ROOT / "backends").rglob("*.py")]
    modules = {_module_name(path): path for path in paths}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {
            other
            for other in imported
            if other in modules and other != name and not name.startswith(f"{other}.")
        }
    return graph


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A chain of imports from ``start`` back to itself, if there is one."""
    paths = [[start]]
    seen = {start}
    while paths:
        path = paths.pop()
        for other in sorted(graph[path[-1]]):
            if other == start:
                return [*path, start]
            if other not in seen:
                seen.add(other)
                paths.append([*path, other])
    return None


def test_modules_import_each_other_one_way():
    graph = _import_graph()
    assert "xdrop.registry" in graph and "xdrop.self_check" in graph
    cycles = [cycle for name in sorted(graph) if (cycle := _cycle_through(graph, name))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_the_benchmarks_have_one_home():
    """``xdrop/benchmarks/`` holds every benchmark (``xdrop bench``, ``python -m
    xdrop.benchmarks.churn``); no scripts of their own beside the package."""
    assert not (ROOT / "benchmarks").exists()
    assert (ROOT / "xdrop" / "benchmarks" / "churn.py").is_file()


def test_every_command_the_docs_give_names_a_script_or_module_that_exists():
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / ".ci" / "run"]
    named = {
        (page.name, match.group(1))
        for page in pages
        for match in re.finditer(r"python3? (-m [\w.]+|[\w./-]+\.py)\b", page.read_text())
    }
    assert ("performance.md", "-m xdrop.benchmarks.churn") in named
    # modules are looked up in another process: finding pip's spec here would switch off
    # setuptools' distutils shim for the rest of the suite (and torch.compile needs it)
    modules = sorted({target[3:] for _, target in named if target.startswith("-m ")})
    look_up = "import importlib.util, sys; print([m for m in sys.argv[1:] if not importlib.util.find_spec(m)])"
    result = subprocess.run(
        [sys.executable, "-c", look_up, *modules], capture_output=True, text=True, check=True
    )
    missing_modules = ast.literal_eval(result.stdout)
    missing = [
        (page, target)
        for page, target in sorted(named)
        if (
            target[3:] in missing_modules
            if target.startswith("-m ")
            else not (ROOT / target).is_file()
        )
    ]
    assert not missing
