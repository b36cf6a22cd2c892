"""Run the golden cases through the public API on a backend and compare: bit for bit for dropout,
masks and seeds; to a floating-point tolerance for the R-Dropout losses."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import xdrop
from xdrop import registry
from xdrop.conformance.golden import (
    RDROP_IGNORE_INDEX,
    input_values,
    load,
    rdrop_logits,
    rdrop_positions,
)
from xdrop.errors import BackendError

# (relative, absolute) tolerance of the R-Dropout cases, by the dtype the loss is computed in: a
# few float32 roundings per term of sums of at most 30 terms; float64 is held to the reference.
RDROP_TOLERANCE = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-12)}


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
            return result("passed") if got == case["expected"] else result(
                "failed", math.inf, f"fold_in gave {got}, expected {case['expected']}"
            )
        if case["kind"] in ("rdrop_kl", "rdrop_loss"):
            return _run_rdrop_case(xp, case, result)
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


def _run_rdrop_case(
    xp: Any, case: dict[str, Any], result: Callable[..., CaseResult]
) -> CaseResult:
    logits1, logits2 = rdrop_logits(case)
    labels, padded = rdrop_positions(case)
    try:
        x1, x2 = (xp.asarray(logits, dtype=case["dtype"]) for logits in (logits1, logits2))
    except (ImportError, TypeError) as error:
        return result("skipped", detail=f"{case['dtype']} unavailable: {error}")
    options: dict[str, Any] = {"axis": case["axis"], "reduction": case["reduction"]}
    if case["pad_every"]:
        options["pad_mask"] = xp.asarray(padded)
    if case["kind"] == "rdrop_kl":
        got = xdrop.rdrop_kl(x1, x2, **options)
    else:
        got = xdrop.rdrop_loss(
            x1,
            x2,
            xp.asarray(labels),
            alpha=case["alpha"],
            ignore_index=RDROP_IGNORE_INDEX if case["ignore_every"] else None,
            label_smoothing=case["label_smoothing"],
            **options,
        )
    if xp.dtype_name(got) != case["result_dtype"]:
        return result(
            "failed", math.inf, f"loss has dtype {xp.dtype_name(got)}, not {case['result_dtype']}"
        )
    values = xp.to_numpy(got).astype(np.float64)
    expected = np.array([float.fromhex(value) for value in case["expected"]])
    expected = expected.reshape(case["result_shape"])
    if values.shape != expected.shape:
        return result("failed", math.inf, f"loss has shape {values.shape}, not {expected.shape}")
    relative, absolute = RDROP_TOLERANCE[case["result_dtype"]]
    with np.errstate(invalid="ignore"):
        difference = np.abs(values - expected)
    same = (values == expected) | (np.isnan(values) & np.isnan(expected))
    difference = np.where(same, 0.0, np.where(np.isnan(difference), np.inf, difference))
    worst = float(difference.max(initial=0.0))
    wrong = int(np.count_nonzero(difference > absolute + relative * np.abs(expected)))
    if wrong:
        return result("failed", worst, f"{wrong} of {values.size} values beyond the tolerance")
    return result("passed", worst)


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
        return result("failed", math.inf, f"output has shape {got.shape}, expected {expected.shape}")
    same = (got == expected) & (np.signbit(got) == np.signbit(expected))
    same |= np.isnan(got) & np.isnan(expected)
    if same.all():
        return result("passed")
    with np.errstate(invalid="ignore"):
        difference = np.abs(got - expected)
    difference[same] = 0.0
    worst = float(np.nanmax(np.where(np.isnan(difference), np.inf, difference)))
    return result("failed", worst, f"{int(np.count_nonzero(~same))} of {got.size} outputs differ")
