"""Run the golden cases through the public API on a backend and compare bit for bit."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import xdrop
from xdrop import registry
from xdrop.conformance.golden import input_values, load
from xdrop.errors import BackendError


@dataclass
class CaseResult:
    case_id: str
    group: str
    status: str  # "passed", "failed" or "skipped"
    max_difference: float = 0.0
    detail: str = ""


@dataclass
class BackendReport:
    backend: str
    available: bool
    reason: str = ""
    results: list[CaseResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseResult]:
        return [result for result in self.results if result.status == "failed"]

    def groups(self) -> dict[str, dict[str, Any]]:
        """Per case group: counts of passed/failed/skipped cases and the largest difference."""
        summary: dict[str, dict[str, Any]] = {}
        for result in self.results:
            group = summary.setdefault(
                result.group, {"passed": 0, "failed": 0, "skipped": 0, "max_difference": 0.0}
            )
            group[result.status] += 1
            group["max_difference"] = max(group["max_difference"], result.max_difference)
        return summary


def run_backend(
    name: str,
    cases: Iterable[dict[str, Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BackendReport:
    """Every golden case (or ``cases``) on backend ``name``."""
    try:
        registry.load(name)
    except BackendError as error:
        return BackendReport(name, available=False, reason=str(error))
    selected = list(load()["cases"] if cases is None else cases)
    report = BackendReport(name, available=True)
    # IEEE overflow (x * s beyond the dtype's range) is part of what the cases check, not news
    with xdrop.use_backend(name), np.errstate(over="ignore", invalid="ignore"):
        for done, case in enumerate(selected, 1):
            report.results.append(_run_case(registry.load(name), case))
            if progress is not None:
                progress(done, len(selected))
    return report


def _run_case(xp: Any, case: dict[str, Any]) -> CaseResult:
    def result(status: str, difference: float = 0.0, detail: str = "") -> CaseResult:
        return CaseResult(case["id"], case["group"], status, difference, detail)

    try:
        if case["kind"] == "fold_in":
            got = xdrop.fold_in(case["seed"], case["data"])
            return (
                result("passed")
                if got == case["expected"]
                else result("failed", math.inf, f"fold_in gave {got}, expected {case['expected']}")
            )
        shape = tuple(case["shape"])
        if case["kind"] == "mask":
            keep = xdrop.dropout_mask(shape, case["p"], seed=case["seed"], offset=case["offset"])
            return _compare_mask(result, xp.to_numpy(keep), case["keep"], shape)
        values = np.array(input_values(math.prod(shape)), np.float64).reshape(shape)
        try:
            x = xp.asarray(values, dtype=case["dtype"])
        except (ImportError, TypeError) as error:
            return result("skipped", detail=f"{case['dtype']} unavailable: {error}")
        y, keep = xdrop.dropout(
            x,
            case["p"],
            training=case["training"],
            seed=case["seed"],
            mode=case["mode"],
            noise_shape=case["noise_shape"],
            offset=case["offset"],
            return_mask=True,
        )
        mask_result = _compare_mask(result, xp.to_numpy(keep), case["keep"], shape)
        if mask_result.status != "passed":
            return mask_result
        expected = np.array([float.fromhex(value) for value in case["y"]]).reshape(shape)
        return _compare_values(result, xp.to_numpy(y).astype(np.float64), expected)
    except Exception as error:  # a crash in one case is that case's failure, not the run's
        return result("failed", math.inf, f"{type(error).__name__}: {error}")


def unpack_bits(packed: str, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(packed), np.uint8))[:count]
    return bits.astype(bool).reshape(shape)


def _compare_mask(result: Callable[..., CaseResult], got: np.ndarray, packed: str,
                  shape: tuple[int, ...]) -> CaseResult:  # fmt: skip
    expected = unpack_bits(packed, shape)
    if got.shape != shape or got.dtype != np.bool_:
        return result("failed", math.inf, f"mask has shape {got.shape} and dtype {got.dtype}")
    wrong = int(np.count_nonzero(got != expected))
    if wrong:
        return result("failed", 1.0, f"{wrong} of {got.size} mask bits differ")
    return result("passed")


def _compare_values(result: Callable[..., CaseResult], got: np.ndarray,
                    expected: np.ndarray) -> CaseResult:  # fmt: skip
    if got.shape != expected.shape:
        return result(
            "failed", math.inf, f"output has shape {got.shape}, expected {expected.shape}"
        )
    same = (got == expected) & (np.signbit(got) == np.signbit(expected))
    same |= np.isnan(got) & np.isnan(expected)
    if same.all():
        return result("passed")
    with np.errstate(invalid="ignore"):
        difference = np.abs(got - expected)
    difference[same] = 0.0
    worst = float(np.nanmax(np.where(np.isnan(difference), np.inf, difference)))
    return result("failed", worst, f"{int(np.count_nonzero(~same))} of {got.size} outputs differ")
