"""Skips for tests that need packages outside xdrop's own dependencies.

Imported as ``installed`` (``tests/`` is on ``sys.path`` while pytest runs). Packages are looked
up, not imported: ``transformers``, ``timm`` and ``peft`` import torchvision, which needs
``tests/torchvision_cpu`` before its first import.
"""

from __future__ import annotations

import importlib.util

import pytest

INSTALL = "pip install -c ci/constraints.txt -r ci/requirements.txt"


def is_installed(package: str) -> bool:
    """Whether ``package`` can be imported, found without importing it."""
    return importlib.util.find_spec(package) is not None


def _why_not(packages: tuple[str, ...]) -> str | None:
    """Why a test that needs ``packages`` cannot run (None: it can)."""
    missing = [package for package in packages if not is_installed(package)]
    return f"not installed: {', '.join(missing)} ({INSTALL})" if missing else None


def requires(*packages: str) -> pytest.MarkDecorator:
    """A ``skipif`` marker: skip unless every one of ``packages`` is installed.

    Example: ``pytestmark = requires("transformers", "peft")``.
    """
    reason = _why_not(packages)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def skip_unless_installed(*packages: str) -> None:
    """Skip the running test unless every one of ``packages`` is installed."""
    reason = _why_not(packages)
    if reason is not None:
        pytest.skip(reason)
