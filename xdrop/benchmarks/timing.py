"""Interleaved timing: every contender of a measurement runs in turn, repeat after repeat, so that a
drift in the machine's speed (a shared, noisy machine) hits all of them alike."""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

Call = Callable[[], object]
"""One call of a contender, run to completion (results ready on the host's clock)."""

WARMUP_CALLS = 2
"""Untimed calls after the first one, before calibration (a second trace, lazy allocations)."""


@dataclass
class Timing:
    """How long one contender took per call."""

    median: float
    """The median over repeats of the seconds per call."""
    quartiles: tuple[float, float]
    """The first and third quartiles of the seconds per call."""
    first_call: float
    """The first call, compilation included (reported apart from the steady state)."""
    calls_per_sample: int
    """Calls timed back to back in one sample (many for calls shorter than the clock's jitter)."""
    samples: list[float]
    """Seconds per call, one per repeat, in repeat order (pairs with other contenders' samples)."""


def time_interleaved(
    contenders: dict[str, Call], repeats: int, min_sample: float, warmup: int = WARMUP_CALLS
) -> tuple[dict[str, Timing], dict[str, str]]:
    """Time each contender: a first call (timed apart: compilation), ``warmup`` calls, then
    ``repeats`` rounds in which every contender runs one sample of at least ``min_sample``
    seconds. The order of the contenders rotates from round to round; the garbage collector is
    off while a sample runs. Returns the timings and, for contenders whose first call or a
    warm-up call raised (a framework that cannot compile its own dropout, or a new shape, say),
    the error instead."""
    first_call: dict[str, float] = {}
    failures: dict[str, str] = {}
    for name, call in contenders.items():
        try:
            first_call[name] = _seconds(call)
        except Exception as error:  # reported in place of the contender's time
            failures[name] = describe_error(error)
    for name in list(first_call):
        try:  # a later call may fail where the first did not (a new shape recompiles)
            for _ in range(warmup):
                contenders[name]()
        except Exception as error:
            failures[name] = describe_error(error)
            del first_call[name]
    contenders = {name: call for name, call in contenders.items() if name in first_call}
    number = {
        name: max(1, math.ceil(min_sample / max(_seconds(call), 1e-9)))
        for name, call in contenders.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_number in range(repeats):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_sample(contenders[name], number[name]))
    timings = {
        name: Timing(
            median=statistics.median(values),
            quartiles=_quartiles(values),
            first_call=first_call[name],
            calls_per_sample=number[name],
            samples=values,
        )
        for name, values in samples.items()
    }
    return timings, failures


def paired_ratio(numerator: Timing, denominator: Timing) -> float:
    """The median over repeats of ``numerator / denominator`` within each repeat: the two ran
    seconds apart, so the ratio is steadier than the ratio of the two medians."""
    return statistics.median(
        a / b for a, b in zip(numerator.samples, denominator.samples, strict=True)
    )


def describe_error(error: BaseException) -> str:
    """The error's type and the first line of its message (compiler errors run long)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def _seconds(call: Call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _sample(call: Call, number: int) -> float:
    collecting = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            call()
        return (time.perf_counter() - start) / number
    finally:
        if collecting:
            gc.enable()


def _quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, third
