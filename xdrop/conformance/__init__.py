"""The cross-backend conformance suite: golden seeded cases that every backend must pass bit for bit."""

from xdrop.conformance.runner import BackendReport, CaseResult, run_backend

__all__ = ["BackendReport", "CaseResult", "run_backend"]
