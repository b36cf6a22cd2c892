"""The benchmark behind ``xdrop bench``: xdrop against each framework's own dropout and a copy, in
every execution mode, with ratios taken within one run (``docs/performance.md``)."""

from xdrop.benchmarks.report import TARGETS, check_targets, document, table, targets_table
from xdrop.benchmarks.runner import Measurement, Report, installed_backends, run
from xdrop.benchmarks.suites import SUITES, Case

__all__ = [
    "SUITES",
    "TARGETS",
    "Case",
    "Measurement",
    "Report",
    "check_targets",
    "document",
    "installed_backends",
    "run",
    "table",
    "targets_table",
]
