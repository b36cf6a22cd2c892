"""The public API's types, as a type checker sees them in user code: ``dropout`` returns the type
of the array it is given, ``return_mask=True`` a pair, and a misspelt mode, generator or reduction
is refused (``tests/typing/user_code.py`` states each case)."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path

import pytest

from xdrop import rdrop, seeds, spec
from xdrop.typing import Mode, Reduction, Rng

pytestmark = pytest.mark.backend_independent
ROOT = Path(__file__).resolve().parents[1]


def test_the_literal_types_list_exactly_the_values_the_functions_accept():
    assert typing.get_args(Mode) == spec.MODES
    assert typing.get_args(Rng) == seeds.RNG_KINDS
    assert typing.get_args(Reduction) == rdrop.REDUCTIONS


def test_xdrop_ships_its_types():
    assert (ROOT / "xdrop" / "py.typed").exists()


def test_user_code_type_checks_as_the_signatures_promise():
    for module in ("mypy", "torch", "jax"):
        pytest.importorskip(module)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "tests/typing/user_code.py"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
