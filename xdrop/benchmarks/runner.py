"""Run the benchmark: every case of every installed backend's suite, contenders interleaved, each
execution path in a fresh process."""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import xdrop
from xdrop import api, kernel
from xdrop.benchmarks import suites
from xdrop.benchmarks.suites import CHANGING, DTYPES, FIXED, SHAPES, SUITES, Case, Suite
from xdrop.benchmarks.timing import (
    WARMUP_CALLS,
    Timing,
    describe_error,
    paired_ratio,
    time_interleaved,
)

SIZES = (10**3, 10**4, 10**6, 10**7)
RATES = (0.1, 0.5)
REPEATS = 7
MIN_SAMPLE = 0.02
"""Seconds a timed sample lasts at least: short calls are repeated back to back within one."""
CHANGING_WARMUP = api.COMPILE_AFTER + 1
"""Untimed rounds through the pool of a changing-shapes case, so that the timing sees the steady
state of shapes that recur (each traced by the compiler, and by xdrop compiled at its
``COMPILE_AFTER + 1``-th eager call); shapes seen once are the churn benchmark's
(:mod:`xdrop.benchmarks.churn`)."""
FRESH = True
"""Whether :func:`run` starts a new process per path by default (tests of code that only this
process can see, a patched suite say, turn it off)."""
QUICK = {
    "sizes": (10**3, 10**6),
    "rates": (0.5,),
    "repeats": 3,
    "min_sample": 0.005,
    "dtypes": ("float32",),
    "shapes": (FIXED,),
}
DISTRIBUTIONS = {
    "numpy": ["numpy"],
    "torch": ["torch"],
    "tensorflow": ["tensorflow", "tensorflow-cpu", "keras"],
    "jax": ["jax", "jaxlib"],
}


@dataclass
class Measurement:
    """The contenders of one case, timed together."""

    case: Case
    timings: dict[str, Timing]
    failures: dict[str, str] = field(default_factory=dict)
    """Contenders that could not run, with the error."""
    memory: dict[str, float] = field(default_factory=dict)
    """Bytes per element, by contender: NumPy's peak allocation, torch's saved tensors."""
    pid: int | None = None
    """The process that timed it (one per execution path: see :func:`run`)."""

    def ratio(self, numerator: str, denominator: str) -> float | None:
        """``numerator / denominator`` paired within each repeat (None if either did not run)."""
        if numerator not in self.timings or denominator not in self.timings:
            return None
        return paired_ratio(self.timings[numerator], self.timings[denominator])


@dataclass
class Report:
    measurements: list[Measurement]
    settings: dict[str, Any]
    unavailable: dict[str, str] = field(default_factory=dict)
    """Backends that were asked for but could not run, with the reason."""
    machine: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def element_count(text: str) -> int:
    """A size given on a command line (``1e6``, ``1000``) as a whole number of elements; an
    ``argparse.ArgumentTypeError`` for anything else."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not value.is_integer() or value < 1:
        raise argparse.ArgumentTypeError(
            f"a size must be a positive whole number of elements, e.g. 1e6; got {text!r}"
        )
    return int(value)


def memory_bytes() -> int | None:
    """This machine's memory (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        return None


def installed_backends() -> list[str]:
    """The backends with a suite whose framework is installed."""
    available = xdrop.available_backends()
    return [name for name in SUITES if available.get(name)]


def run(
    backends: Sequence[str] | None = None,
    sizes: Sequence[int] = SIZES,
    rates: Sequence[float] = RATES,
    repeats: int = REPEATS,
    min_sample: float = MIN_SAMPLE,
    paths: Iterable[str] | None = None,
    directions: Iterable[str] | None = None,
    progress: Callable[[Case, int, int], None] | None = None,
    contenders: Iterable[str] | None = None,
    fresh: bool | None = None,
    dtypes: Sequence[str] = DTYPES,
    shapes: Sequence[str] = SHAPES,
) -> Report:
    """Time every case: for each backend (default: every installed one), each of its execution
    paths (or those named in ``paths``), each direction, dtype (``dtypes``: float32,
    bfloat16), shape mode (``shapes``: ``"fixed"``, ``"changing"``), size and rate.

    ``fresh`` (default :data:`FRESH`, true): each path, direction, dtype and shape mode runs in
    a new Python process, so that none inherits what another left behind (a framework's caches,
    xdrop's staged programs and call counts): a program's speed must not depend on what ran
    before it. ``fresh=False`` runs every case in this process.
    ``contenders`` keeps only the contenders named (default: all of the suite's).

    ``progress(case, done, total)`` is called as each case starts, with the number of the
    backend's cases done and their total, and once more with ``done == total`` after the last."""
    fresh = FRESH if fresh is None else fresh
    names = list(backends) if backends else installed_backends()
    wanted_paths = None if paths is None else set(paths)
    wanted_directions = None if directions is None else set(directions)
    wanted_contenders = None if contenders is None else list(contenders)
    settings = {
        "backends": names,
        "sizes": list(sizes),
        "rates": list(rates),
        "repeats": repeats,
        "min_sample_seconds": min_sample,
        "dtypes": list(dtypes),
        "shapes": list(shapes),
    }
    report = Report([], settings, machine=machine())
    for name in names:
        if fresh:
            options = {**settings, "backends": [name], "contenders": wanted_contenders}
            cases = _cases(
                SUITES[name], sizes, rates, wanted_paths, wanted_directions, dtypes, shapes
            )
            _run_in_fresh_processes(report, name, cases, options, progress)
            continue
        try:
            suite = SUITES[name]()
        except Exception as error:  # not installed, or broken: say so and go on
            report.unavailable[name] = describe_error(error)
            continue
        with xdrop.use_backend(name):  # NumPy inputs of the NumPy suite run on NumPy
            cases = _cases(
                type(suite), sizes, rates, wanted_paths, wanted_directions, dtypes, shapes
            )
            for done, case in enumerate(cases):
                if progress is not None:
                    progress(case, done, len(cases))
                measurement = measure(suite, case, repeats, min_sample, wanted_contenders)
                report.measurements.append(measurement)
            if progress is not None and cases:
                progress(cases[-1], len(cases), len(cases))
    report.versions = versions(names)
    report.machine["load_after"] = _load()
    return report


PROGRESS = "xdrop-bench-case "
"""How a path's process announces the case it starts (a line on its stdout: its index)."""


def _run_in_fresh_processes(
    report: Report,
    backend: str,
    cases: list[Case],
    options: dict[str, Any],
    progress: Callable[[Case, int, int], None] | None,
) -> None:
    """Time ``cases`` of ``backend``, one new process per path, direction, dtype and shape mode
    (``python -m xdrop.benchmarks.worker``), into ``report``."""
    groups: dict[tuple[str, str, str, str], list[Case]] = {}
    for case in cases:
        groups.setdefault(_process_of(case), []).append(case)
    done = 0
    for (path, direction, dtype, shapes), path_cases in groups.items():
        with tempfile.TemporaryDirectory(prefix="xdrop-bench-") as folder:
            result = Path(folder) / "result.json"
            spec = json.dumps({**options, "paths": [path], "directions": [direction],
                               "dtypes": [dtype], "shapes": [shapes]})  # fmt: skip
            command = [sys.executable, "-m", "xdrop.benchmarks.worker", spec, str(result)]
            with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
                assert process.stdout is not None
                for line in process.stdout:
                    if not line.startswith(PROGRESS):  # a framework's chatter: not the table's
                        print(line, end="", file=sys.stderr)
                    elif progress is not None:
                        index = int(line[len(PROGRESS) :])
                        progress(path_cases[index], done + index, len(cases))
            status = process.returncode
            document = json.loads(result.read_text()) if result.is_file() else None
        done += len(path_cases)
        if document is not None and document["unavailable"]:
            report.unavailable[backend] = document["unavailable"]
            return  # the framework cannot be imported: its other paths would say the same
        if document is None or status != 0:
            error = (
                f"the process timing {path!r} ({direction}, {dtype}, {shapes} shapes) "
                f"exited with status {status}"
            )
            report.measurements.extend(Measurement(case, {}, {"all": error}) for case in path_cases)
            continue
        report.measurements.extend(from_document(item) for item in document["measurements"])
    if progress is not None and cases:
        progress(cases[-1], len(cases), len(cases))


def _process_of(case: Case) -> tuple[str, str, str, str]:
    """What a case shares with the others timed in its process."""
    return case.path, case.direction, case.dtype, case.shapes


def to_document(measurement: Measurement) -> dict[str, Any]:
    """``measurement`` as JSON-ready data (how a path's process hands it back)."""
    return asdict(measurement)


def from_document(data: dict[str, Any]) -> Measurement:
    """The measurement :func:`to_document` wrote."""
    timings = {
        name: Timing(**{**timing, "quartiles": tuple(timing["quartiles"])})
        for name, timing in data["timings"].items()
    }
    return Measurement(Case(**data["case"]), timings, data["failures"], data["memory"], data["pid"])


def _cases(
    suite: type[Suite],
    sizes: Sequence[int],
    rates: Sequence[float],
    paths: set[str] | None,
    directions: set[str] | None,
    dtypes: Sequence[str] = DTYPES,
    shapes: Sequence[str] = SHAPES,
) -> list[Case]:
    return [
        Case(suite.backend, path, size, p, direction, dtype, mode)
        for path in suite.paths
        if paths is None or path in paths
        for direction in suite.directions()
        if directions is None or direction in directions
        for dtype in dtypes
        for mode in shapes
        for size in sizes
        for p in rates
    ]


def measure(
    suite: Suite,
    case: Case,
    repeats: int,
    min_sample: float,
    names: Sequence[str] | None = None,
) -> Measurement:
    """Time the contenders of ``case`` (those in ``names``, default all) together, then measure
    their memory."""
    try:
        contenders = suite.contenders(case)
    except Exception as error:
        return Measurement(case, {}, {"all": describe_error(error)}, pid=os.getpid())
    if names is not None:
        contenders = {name: call for name, call in contenders.items() if name in names}
    warmup = WARMUP_CALLS + (CHANGING_WARMUP * suites.SHAPE_POOL if case.shapes == CHANGING else 0)
    timings, failures = time_interleaved(contenders, repeats, min_sample, warmup)
    del contenders
    gc.collect()
    try:
        memory = suite.memory(case)
    except Exception as error:
        memory = {}
        failures["memory"] = describe_error(error)
    if names is not None:
        memory = {name: value for name, value in memory.items() if name in names}
    return Measurement(case, timings, failures, memory, os.getpid())


def machine() -> dict[str, Any]:
    """The processor, the cores this process may use, the OS, Python, the load average and
    whether the compiled kernel is in use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "processor": _processor_model(),
        "cores": cores,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_before": _load(),
        "kernel": kernel.status(),
    }


def _load() -> list[float] | None:
    """The 1, 5 and 15-minute load averages: other work on a shared machine shows here."""
    return [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _processor_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions(backends: Iterable[str]) -> dict[str, str]:
    """xdrop's version and those of the frameworks measured."""
    found = {"xdrop": xdrop.__version__, "numpy": metadata.version("numpy")}
    for backend in backends:
        for distribution in DISTRIBUTIONS.get(backend, []):
            try:
                found[distribution] = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                continue
    found["python"] = sys.version.split()[0]
    return found
