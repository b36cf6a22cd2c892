"""A newcomer's path: README's commands, as written, are what CI runs, in one environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from installed import is_installed

pytestmark = pytest.mark.backend_independent

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks(markdown: str) -> list[str]:
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.DOTALL)]


def test_ci_runs_the_readmes_two_commands_verbatim_in_order_in_one_environment():
    readme = (ROOT / "README.md").read_text()
    first, second = bash_blocks(readme)[:2]
    assert first.startswith('pip install ".[torch]"'), first  # PyPI's torch: CUDA on Linux
    test_command = second.splitlines()
    assert test_command == [
        "pip install -c ci/constraints.txt -r ci/requirements.txt",
        "pip install --no-deps -r ci/requirements-nodeps.txt && python -m pytest",
    ]

    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    venvs = [number for number, line in enumerate(lines) if " -m venv " in line]
    installs = [number for number, line in enumerate(lines) if line.startswith("pip install")]
    assert len(venvs) == 1, "one environment for the whole run"
    start = lines.index(first) + 1
    assert lines[start : start + len(test_command)] == test_command
    assert installs[:3] == [lines.index(first), start, start + 1]
    assert venvs[0] < installs[0]


def test_the_readme_says_how_to_get_the_cpu_build_of_torch():
    readme = (ROOT / "README.md").read_text()
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in readme


def test_the_development_guide_installs_the_checkout_editable():
    # a plain `pip install ".[docs]"` after the test command replaces the editable install
    guide = (ROOT / "docs" / "development.md").read_text()
    commands = [line for block in bash_blocks(guide) for line in block.splitlines()]
    checkout = [
        line for line in commands if re.search(r"pip install\b.*(\s|\")\.(\[|\s|\"|$)", line)
    ]
    assert checkout, "the guide names no install of the checkout"
    for line in checkout:
        assert "pip install -e " in line, line


NEEDS_TRITON_AND_TENSORFLOW = pytest.mark.skipif(
    not (is_installed("triton") and is_installed("tensorflow")),
    reason="the crash needs Triton (CUDA builds of torch install it) and TensorFlow",
)


def run_fresh(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)


@NEEDS_TRITON_AND_TENSORFLOW
@pytest.mark.parametrize(
    "importer",
    [
        # the test suite: its modules import TensorFlow themselves
        f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import conftest, tensorflow",
        # xdrop importing TensorFlow itself, as xdrop conformance and XDROP_BACKEND do
        "from xdrop import registry; registry.load('tensorflow')",
    ],
    ids=["test-suite", "xdrop"],
)
def test_torch_compile_runs_beside_tensorflow_where_triton_is_installed(importer):
    # TensorFlow, then torch._dynamo (which loads Triton), is a segmentation fault unless
    # Triton was loaded first
    result = run_fresh(f"{importer}\nimport torch._dynamo\nprint('shared one process')")
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == "shared one process"
