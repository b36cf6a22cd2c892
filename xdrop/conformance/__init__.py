"""The cross-backend conformance suite: golden seeded cases that every backend must pass bit for bit.

A backend author runs it from the command line (``xdrop conformance --backend NAME``) or from their
own test suite::

    import pytest
    from xdrop import conformance

    @pytest.mark.parametrize("case", conformance.golden_cases(), ids=conformance.case_id)
    def test_conforms(case):
        conformance.check_case("mybackend", case)
"""

from __future__ import annotations

import unittest
from typing import Any

from xdrop.conformance.golden import load
from xdrop.conformance.runner import BackendReport, CaseResult, run_backend

__all__ = [
    "BackendReport",
    "CaseResult",
    "assert_conforms",
    "case_id",
    "check_case",
    "golden_cases",
    "run_backend",
]


def golden_cases() -> list[dict[str, Any]]:
    """Every golden case shipped with xdrop (plain dicts; ``case_id`` names one)."""
    cases: list[dict[str, Any]] = load()["cases"]
    return cases


def case_id(case: dict[str, Any]) -> str:
    """A case's stable id, e.g. ``"inverted/8x9/p=0.5/seed=0"``: use it as a pytest id."""
    return str(case["id"])


def check_case(backend: str, case: dict[str, Any], mode: str = "eager") -> None:
    """Run one golden case on the registered backend ``backend``.

    Raises ``AssertionError`` with what differed, or ``unittest.SkipTest`` (which pytest reports as
    a skip) when the backend lacks the case's dtype or an optional protocol operation.
    """
    report = run_backend(backend, [case], mode=mode, full=True)
    assert report.available, report.reason
    for result in report.results:
        if result.status == "skipped":
            raise unittest.SkipTest(result.detail)
        assert result.status == "passed", f"{result.case_id}: {result.detail}"


def assert_conforms(backend: str, mode: str = "eager", full: bool = False) -> BackendReport:
    """Run every golden case on ``backend`` and raise ``AssertionError`` listing the failures."""
    report = run_backend(backend, mode=mode, full=full)
    assert report.available, report.reason
    failures = [f"{result.case_id}: {result.detail}" for result in report.failed]
    assert not failures, f"{len(failures)} golden cases fail on {backend}:\n" + "\n".join(failures)
    return report
