"""The cross-backend conformance suite: golden cases that every backend must pass (bit for bit for
dropout, masks and seeds; to a floating-point tolerance for the R-Dropout losses)."""

from xdrop.conformance.runner import BackendReport, CaseResult, run_backend

__all__ = ["BackendReport", "CaseResult", "run_backend"]
