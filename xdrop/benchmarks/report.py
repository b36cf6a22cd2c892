"""The benchmark's results as a table, as JSON, and against the performance targets."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from xdrop import tables
from xdrop.benchmarks.runner import Measurement, Report
from xdrop.benchmarks.suites import (
    BACKWARD,
    BFLOAT16,
    CHANGING,
    COPY,
    FIXED,
    FLOAT32,
    FORWARD,
    FRAMEWORK,
    FRAMEWORK_EAGER,
    FRAMEWORK_GRAPH,
    NATIVE,
    SIGNATURE_PATH,
    XDROP,
    Case,
)
from xdrop.benchmarks.timing import Timing
from xdrop.errors import ArgumentValueError

SCHEMA = 1
CONTENDERS = (XDROP, NATIVE, FRAMEWORK, COPY, FRAMEWORK_EAGER, FRAMEWORK_GRAPH)
RATIOS = (
    (XDROP, FRAMEWORK),
    (NATIVE, FRAMEWORK),
    (XDROP, COPY),
    (XDROP, FRAMEWORK_EAGER),
    (XDROP, FRAMEWORK_GRAPH),
)
LARGE = 10**6  # "sizes >= 1e6": where the targets on throughput apply
SMALL = 10**3  # where the per-call overhead is measured


@dataclass(frozen=True)
class Target:
    """A ratio that must stay at or below ``limit`` on ``path`` for sizes in ``sizes``."""

    name: str
    path: str
    numerator: str
    denominator: str
    limit: float
    sizes: tuple[int, int | None] = (LARGE, None)  # inclusive bounds; None: no upper bound
    direction: str = FORWARD
    quantity: str = "ratio"  # or "memory": bytes per element of ``numerator``
    dtype: str = FLOAT32
    shapes: str = FIXED

    def applies(self, measurement: Measurement) -> bool:
        case = measurement.case
        low, high = self.sizes
        return (
            case.path == self.path
            and case.direction == self.direction
            and case.dtype == self.dtype
            and case.shapes == self.shapes
            and case.size >= low
            and (high is None or case.size <= high)
        )

    def value(self, measurement: Measurement) -> float | None:
        if self.quantity == "memory":
            return measurement.memory.get(self.numerator)
        return measurement.ratio(self.numerator, self.denominator)


EAGER_PATHS = ("numpy", "torch eager", "tf eager", "jax eager")
COMPILED_PATHS = ("torch.compile", "tf.function(jit_compile)", "jax.jit")
ALL_PATHS = (*EAGER_PATHS, "torch.compile", "tf.function", "tf.function(jit_compile)", "jax.jit")
LARGEST = (10**7, None)  # "at 1e7": where the copy floor is memory bandwidth, not call overhead
KERNEL_PATHS = ("numpy", "torch eager")  # where the compiled kernel runs
TARGETS = (
    Target("jax.jit vs Flax-style under jit", "jax.jit", XDROP, FRAMEWORK, 0.5),
    Target(
        "TF jit_compile vs tf.nn.dropout in tf.function", "tf.function(jit_compile)",
        XDROP, FRAMEWORK_GRAPH, 0.5,
    ),
    Target("torch.compile vs eager F.dropout", "torch.compile", XDROP, FRAMEWORK_EAGER, 0.3),
    Target("torch.compile vs compiled F.dropout", "torch.compile", XDROP, FRAMEWORK, 1.0),
    Target("torch eager vs F.dropout", "torch eager", XDROP, FRAMEWORK, 0.5),
    Target("torch eager forward+backward vs F.dropout", "torch eager", XDROP, FRAMEWORK, 0.5,
           direction=BACKWARD),
    Target("NumPy vs Generator.random() < q", "numpy", XDROP, FRAMEWORK, 0.5),
    Target("TF eager vs tf.nn.dropout", "tf eager", XDROP, FRAMEWORK, 0.6),
    Target("tf.function vs tf.nn.dropout", "tf.function", XDROP, FRAMEWORK, 0.6),
    Target("tf.function, a None dimension, vs tf.nn.dropout", SIGNATURE_PATH, XDROP, FRAMEWORK,
           0.6),
    Target("JAX eager vs Flax-style eager", "jax eager", XDROP, FRAMEWORK, 1.0),
    # training: the gradient's pass too (torch eager's is above)
    Target("tf.function forward+backward vs tf.nn.dropout", "tf.function", XDROP, FRAMEWORK, 0.6,
           direction=BACKWARD),
    # bfloat16, as mixed-precision training runs dropout
    Target("torch eager bfloat16 vs F.dropout", "torch eager", XDROP, FRAMEWORK, 0.5,
           dtype=BFLOAT16),
    Target("jax.jit bfloat16 vs Flax-style under jit", "jax.jit", XDROP, FRAMEWORK, 0.5,
           dtype=BFLOAT16),
    # shapes that change from call to call, as dynamic padding makes them, once each has recurred
    # (the first call of each shape is the churn benchmark's)
    Target("TF eager, changing shapes, vs tf.nn.dropout", "tf eager", XDROP, FRAMEWORK, 0.6,
           shapes=CHANGING),
    *(
        Target(f'rng="native" vs the framework, {path}', path, NATIVE, FRAMEWORK, 1.1)
        for path in ALL_PATHS
    ),
    # torch's own generator drawing, applied in place: bounded below by torch.rand at p = 0.1
    Target('torch rng="native" vs F.dropout at 1e7', "torch eager", NATIVE, FRAMEWORK, 0.5,
           LARGEST),
    *(
        Target(f"per-call overhead at 1e3, {path}", path, XDROP, FRAMEWORK,
               3.0 if path == "jax eager" else 1.2, (SMALL, SMALL))
        for path in (*EAGER_PATHS, "tf.function")
    ),
    *(Target(f"within 4x of the copy, {path}", path, XDROP, COPY, 4.0) for path in COMPILED_PATHS),
    *(
        Target(f"compiled kernel within 3x of the copy at 1e7, {path}", path, XDROP, COPY, 3.0,
               LARGEST)
        for path in KERNEL_PATHS
    ),
    # at 1e7 elements O(chunk) is a few percent of the output: the limits leave 0.5 byte/element
    Target("NumPy peak memory at 1e7, bytes/element (output 4 + O(chunk))", "numpy", XDROP, "",
           4.5, LARGEST, quantity="memory"),
    Target("NumPy peak memory at 1e7 with the mask returned (4 + 1 + O(chunk))", "numpy",
           XDROP + " return_mask", "", 5.5, LARGEST, quantity="memory"),
    Target("torch bytes saved for backward, per element", "torch eager", XDROP, "", 0.0,
           direction=BACKWARD, quantity="memory"),
)  # fmt: skip


@dataclass
class TargetResult:
    name: str
    limit: float
    worst: float | None
    """The largest value over the cases the target applies to (None: none of them ran)."""
    cases: int
    met: bool | None


def check_targets(report: Report) -> list[TargetResult]:
    """Each target with the worst value measured (over sizes and rates); targets on paths not
    measured are left out."""
    results = []
    for target in TARGETS:
        values = [target.value(m) for m in report.measurements if target.applies(m)]
        measured = [value for value in values if value is not None]
        if not values:
            continue
        worst = max(measured) if measured else None
        met = None if worst is None else worst <= target.limit
        results.append(TargetResult(target.name, target.limit, worst, len(measured), met))
    return results


# -- text -------------------------------------------------------------------------------------------
def table(report: Report, markdown: bool = False) -> str:
    """One line per case: the median time per call of each contender, the ratios from the same
    run, the first call of xdrop (compilation) and memory where measured. ``markdown``: each
    table as a Markdown table under its title in bold (:func:`xdrop.tables.markdown`), as
    ``docs/performance.md`` records them, instead of aligned plain text."""
    blocks = []
    groups: dict[str, list[Measurement]] = {}
    for measurement in report.measurements:
        groups.setdefault(title(measurement.case), []).append(measurement)
    for heading, measurements in groups.items():
        measurements = sorted(measurements, key=lambda m: (m.case.size, m.case.p))  # runs merged
        contenders = [name for name in CONTENDERS if any(name in m.timings for m in measurements)]
        ratios = [(a, b) for a, b in RATIOS if any(m.ratio(a, b) is not None for m in measurements)]
        memory = sorted({name for m in measurements for name in m.memory})
        header = (
            "size", "p", *contenders, *(f"{a}/{b}" for a, b in ratios), "xdrop 1st call",
            *(f"{name} B/elt" for name in memory),
        )  # fmt: skip
        rows = [
            (
                f"{m.case.size:.0e}",
                f"{m.case.p:g}",
                *(
                    _duration(m.timings[name].median) if name in m.timings else "-"
                    for name in contenders
                ),
                *(_ratio(m.ratio(a, b)) for a, b in ratios),
                _duration(m.timings[XDROP].first_call) if XDROP in m.timings else "-",
                *(f"{m.memory[name]:.2f}" if name in m.memory else "-" for name in memory),
            )
            for m in measurements
        ]
        notes = sorted(
            {f"{name}: {error}" for m in measurements for name, error in m.failures.items()}
        )
        if markdown:  # a Markdown table and a list each need a blank line before them
            columns = tables.markdown(header, rows, align="<>")
            listed = ["", *(f"- {note}" for note in notes)] if notes else []
            blocks.append("\n".join([f"**{heading}**", "", columns, *listed]))
        else:
            columns = tables.render(header, rows, align="<>")
            blocks.append("\n".join([heading, columns, *(f"  ! {note}" for note in notes)]))
    for backend, reason in report.unavailable.items():
        blocks.append(f"{backend}: not measured ({reason})")
    return "\n\n".join(blocks)


def title(case: Case) -> str:
    """The title of the table that holds ``case``: backend, path, direction, dtype and shape
    mode, e.g. ``torch · torch eager · forward · float32 · fixed shapes``."""
    return " · ".join(
        (case.backend, case.path, case.direction, case.dtype, f"{case.shapes} shapes")
    )


def targets_table(results: list[TargetResult], markdown: bool = False) -> str:
    """Each target, its limit, the worst ratio measured and whether it was met; ``markdown`` as
    for :func:`table`."""
    rows = [
        (
            result.name,
            f"<= {result.limit:g}",
            "-" if result.worst is None else tables.ratio(result.worst, result.limit),
            {True: "met", False: "MISSED", None: "not measured"}[result.met],
        )
        for result in results
    ]
    draw = tables.markdown if markdown else tables.render
    return draw(("target", "limit", "worst measured", ""), rows, align="<>")


def _duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} us"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# -- JSON -------------------------------------------------------------------------------------------
def document(report: Report) -> dict[str, Any]:
    """The whole report as JSON-ready data (times in seconds, memory in bytes per element)."""
    return {
        "schema": SCHEMA,
        "machine": report.machine,
        "versions": report.versions,
        "settings": report.settings,
        "unavailable": report.unavailable,
        "measurements": [
            {
                **asdict(m.case),
                "contenders": {
                    name: {
                        "median_seconds": timing.median,
                        "quartile_seconds": list(timing.quartiles),
                        "first_call_seconds": timing.first_call,
                        "calls_per_sample": timing.calls_per_sample,
                        "samples_seconds": timing.samples,
                    }
                    for name, timing in m.timings.items()
                },
                "ratios": {
                    f"{a}/{b}": m.ratio(a, b) for a, b in RATIOS if m.ratio(a, b) is not None
                },
                "memory_bytes_per_element": m.memory,
                "failures": m.failures,
                "pid": m.pid,
            }
            for m in report.measurements
        ],
        "targets": [asdict(result) for result in check_targets(report)],
    }


def from_documents(documents: list[dict[str, Any]]) -> Report:
    """The report that :func:`document` wrote, or several of them as one (runs of different paths,
    rates or sizes; the measurements in order, a case measured in several taken from the last,
    which a rerun replaces; the first file's machine and versions, the load averages of the
    first and the last): ``xdrop bench --load`` redraws tables and figures from saved runs
    without timing anything again. A document that :func:`document` could not have
    written raises :class:`~xdrop.errors.ArgumentValueError` (:func:`document_problem` says why)."""
    if not documents:
        raise ArgumentValueError("documents: no document to read; give at least one")
    for index, data in enumerate(documents):
        problem = document_problem(data)
        if problem is not None:
            raise ArgumentValueError(f"documents[{index}]: {problem}")
    fields = {field.name for field in dataclasses.fields(Case)}
    measurements = [
        Measurement(
            Case(**{key: value for key, value in item.items() if key in fields}),
            {
                name: Timing(
                    median=timing["median_seconds"],
                    quartiles=(timing["quartile_seconds"][0], timing["quartile_seconds"][1]),
                    first_call=timing["first_call_seconds"],
                    calls_per_sample=timing["calls_per_sample"],
                    samples=timing["samples_seconds"],
                )
                for name, timing in item["contenders"].items()
            },
            item["failures"],
            item["memory_bytes_per_element"],
            item["pid"],
        )
        for data in documents
        for item in data["measurements"]
    ]
    latest = {measurement.case: measurement for measurement in measurements}
    first, last = documents[0], documents[-1]
    machine = {**first["machine"], "load_after": last["machine"].get("load_after")}
    unavailable = {name: why for data in documents for name, why in data["unavailable"].items()}
    versions = {name: v for data in documents for name, v in data["versions"].items()}
    return Report(list(latest.values()), first["settings"], unavailable, machine, versions)


class _NotAReport(Exception):
    """What makes a document one that :func:`document` could not have written."""


Kind = tuple[Callable[[Any], bool], str]
"""A test of a JSON value, and what it says the value must be."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)  # JSON's true is no 1


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seconds(value: Any) -> bool:
    return _is_number(value) and 0 < value < math.inf  # Python's json reads NaN and Infinity


OBJECT: Kind = (lambda value: isinstance(value, dict), "an object")
ARRAY: Kind = (lambda value: isinstance(value, list), "an array")
STRING: Kind = (lambda value: isinstance(value, str), "a string")
COUNT: Kind = (lambda value: _is_whole(value) and value >= 1, "a whole number >= 1")
SIZE: Kind = (lambda value: _is_whole(value) and 1 <= value < 2**63, "a whole number in [1, 2**63)")
RATE: Kind = (lambda value: _is_number(value) and 0 <= value < 1, "a number in [0, 1)")
SECONDS: Kind = (_is_seconds, "a finite number of seconds > 0")
BYTES: Kind = (lambda value: _is_number(value) and 0 <= value < math.inf, "a finite number >= 0")
PID: Kind = (lambda value: value is None or _is_whole(value), "a whole number or null")
QUARTILES: Kind = (
    lambda value: isinstance(value, list) and len(value) == 2 and all(map(_is_seconds, value)),
    "an array of two finite numbers of seconds > 0",
)
SAMPLES: Kind = (
    # ratios divide sample by sample: a sample of 0 seconds, or none, has no ratio
    lambda value: isinstance(value, list) and bool(value) and all(map(_is_seconds, value)),
    "a non-empty array of finite numbers of seconds > 0",
)
MACHINE = ("kernel", "processor", "cores", "load_before")
"""What the tables' last lines print of ``machine`` (whatever their values)."""


def document_problem(data: Any) -> str | None:
    """Why ``data`` (JSON as :func:`json.loads` returns it) is not a report :func:`document`
    wrote: the first field that is missing or of the wrong kind, named by where it is
    (``measurements[0].size must be a whole number >= 1, got "big"``); None where it is one."""
    try:
        _check_document(data)
    except _NotAReport as error:
        return str(error)
    return None


def _check_document(data: Any) -> None:
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not _is_whole(schema) or schema != SCHEMA:
        raise _NotAReport(f"a file of `xdrop bench --json` (schema {SCHEMA}) was expected; got "
                          f"schema {_json(schema)}")  # fmt: skip
    machine = _field(data, "machine", "", OBJECT)
    missing = [key for key in MACHINE if key not in machine]
    if missing:
        raise _NotAReport(f"machine.{missing[0]} is missing")
    _field(data, "settings", "", OBJECT)
    for name in ("versions", "unavailable"):
        for key, value in _field(data, name, "", OBJECT).items():
            _expect(value, f"{name}[{key!r}]", STRING)
    for index, item in enumerate(_field(data, "measurements", "", ARRAY)):
        _check_measurement(
            _expect(item, f"measurements[{index}]", OBJECT), f"measurements[{index}]"
        )


def _check_measurement(item: dict[str, Any], where: str) -> None:
    for key in ("backend", "path"):
        _field(item, key, where, STRING)
    _field(item, "size", where, SIZE)
    _field(item, "p", where, RATE)
    for key in ("direction", "dtype", "shapes"):
        if key in item:  # the fields with a default (schema 1 had them from the start)
            _field(item, key, where, STRING)
    rounds = {}
    for name, timing in _field(item, "contenders", where, OBJECT).items():
        at = f"{where}.contenders[{name!r}]"
        _expect(timing, at, OBJECT)
        for key in ("median_seconds", "first_call_seconds"):
            _field(timing, key, at, SECONDS)
        _field(timing, "quartile_seconds", at, QUARTILES)
        _field(timing, "calls_per_sample", at, COUNT)
        rounds[name] = len(_field(timing, "samples_seconds", at, SAMPLES))
    if len(set(rounds.values())) > 1:  # a ratio pairs the samples of one round
        raise _NotAReport(f"{where}.contenders: every contender has a sample per round, but their "
                          f"samples_seconds number {rounds}")  # fmt: skip
    for key, value in _field(item, "failures", where, OBJECT).items():
        _expect(value, f"{where}.failures[{key!r}]", STRING)
    for key, value in _field(item, "memory_bytes_per_element", where, OBJECT).items():
        _expect(value, f"{where}.memory_bytes_per_element[{key!r}]", BYTES)
    _field(item, "pid", where, PID)


def _field(container: dict[str, Any], key: str, where: str, kind: Kind) -> Any:
    """``container[key]``, of ``kind``; ``where`` names ``container`` in the document."""
    name = f"{where}.{key}" if where else key
    if key not in container:
        raise _NotAReport(f"{name} is missing")
    return _expect(container[key], name, kind)


def _expect(value: Any, name: str, kind: Kind) -> Any:
    test, what = kind
    if not test(value):
        raise _NotAReport(f"{name} must be {what}, got {_json(value)}")
    return value


def _json(value: Any) -> str:
    """``value`` as the document has it: a scalar as JSON, an object or array by its kind."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return json.dumps(value)
