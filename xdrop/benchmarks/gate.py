"""The benchmark's gate (``xdrop bench --check``): the paths users take, timed briefly, each in a
fresh process, failing when a ratio is above twice its target.

The margin of 2 is far beyond what load does to a ratio taken within one run on a shared machine
(``docs/performance.md``), and far below the regressions the gate is there to stop (4-8x).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from xdrop import tables
from xdrop.benchmarks.report import TARGETS, Target
from xdrop.benchmarks.runner import Measurement, Report, installed_backends, run
from xdrop.benchmarks.suites import SUITES, Case

MARGIN = 2.0
"""A gated ratio fails above ``MARGIN`` times its target."""
SIZE = 10**6
"""The size of a gate on large inputs (a target's smallest size: a target on the overhead at
1e3 elements is gated at 1e3)."""
RATE = 0.5
REPEATS = 5
MIN_SAMPLE = 0.01
GATED = (
    "NumPy vs Generator.random() < q",
    "torch eager vs F.dropout",
    'rng="native" vs the framework, torch eager',
    "torch.compile vs compiled F.dropout",
    "TF eager vs tf.nn.dropout",
    "tf.function vs tf.nn.dropout",
    "tf.function, a None dimension, vs tf.nn.dropout",
    "TF jit_compile vs tf.nn.dropout in tf.function",
    "jax.jit vs Flax-style under jit",
    "JAX eager vs Flax-style eager",
    "per-call overhead at 1e3, numpy",
    "per-call overhead at 1e3, torch eager",
    "per-call overhead at 1e3, tf eager",
    "torch eager forward+backward vs F.dropout",
    "tf.function forward+backward vs tf.nn.dropout",
    "torch eager bfloat16 vs F.dropout",
    "jax.jit bfloat16 vs Flax-style under jit",
    "TF eager, changing shapes, vs tf.nn.dropout",
)
"""The targets checked, by name (``report.TARGETS``): one execution path each, as users call it,
forward in float32 on one shape unless the target says otherwise."""


@dataclass(frozen=True)
class Gate:
    """One gated ratio: ``target`` on its path, in its direction, dtype and shape mode, at its
    smallest size (:data:`SIZE` for the targets on large inputs), p = :data:`RATE`."""

    target: Target
    backend: str

    @property
    def name(self) -> str:
        return self.target.name

    @property
    def size(self) -> int:
        return self.target.sizes[0]

    def case(self) -> Case:
        """The one case timed for this gate."""
        target = self.target
        return Case(self.backend, target.path, self.size, RATE, target.direction, target.dtype,
                    target.shapes)  # fmt: skip

    @property
    def limit(self) -> float:
        """Above this the gate fails: :data:`MARGIN` times the target."""
        return MARGIN * self.target.limit


@dataclass
class GateResult:
    gate: Gate
    ratio: float | None
    """The ratio measured (None: it could not be)."""
    error: str | None = None
    """Why there is no ratio."""
    pid: int | None = None
    """The process that timed the path."""

    @property
    def passed(self) -> bool:
        return self.ratio is not None and self.ratio <= self.gate.limit

    def line(self) -> str:
        """One line saying what failed (or passed), with the path named."""
        gate = self.gate
        head = f"{gate.target.path} ({gate.name})"
        if self.ratio is None:
            return f"{head}: not measured: {self.error}"
        ratio = f"{gate.target.numerator}/{gate.target.denominator}"
        verdict = "within" if self.passed else "above"
        target = gate.target
        return (
            f"{head}: {ratio} = {tables.ratio(self.ratio, gate.limit)} at {gate.size:.0e}, "
            f"p = {RATE:g}, "
            f"{target.direction}, {target.dtype}, {target.shapes} shapes, {verdict} "
            f"{MARGIN:g} x target {target.limit:g} = {gate.limit:g}"
        )


def gates(names: Sequence[str] = GATED) -> list[Gate]:
    """The gates of ``names`` (target names), each with the backend whose suite has its path."""
    targets = {target.name: target for target in TARGETS}
    found = []
    for name in names:
        target = targets[name]
        (backend,) = (b for b, suite in SUITES.items() if target.path in suite.paths)
        found.append(Gate(target, backend))
    return found


def evaluate(gate: Gate, measurements: Iterable[Measurement]) -> GateResult:
    """The gate's verdict on what was measured for its path (fabricated timings do as well)."""
    wanted = gate.case()
    for measurement in measurements:
        if measurement.case != wanted:
            continue
        ratio = gate.target.value(measurement)
        errors = "; ".join(f"{name}: {error}" for name, error in measurement.failures.items())
        return GateResult(gate, ratio, errors or "no ratio", measurement.pid)
    return GateResult(gate, None, "not timed")


def check(
    backends: Sequence[str] | None = None,
    paths: Iterable[str] | None = None,
    progress: Callable[[Case, int, int], None] | None = None,
) -> tuple[list[GateResult], Report]:
    """Time each gate's path in a fresh process of its own (only the two contenders of its ratio)
    and judge it. ``backends``: only these (default: every installed one; a backend named but
    not installed fails its gates); ``paths``: only the gates on these paths."""
    names = list(backends) if backends else installed_backends()
    wanted = None if paths is None else set(paths)
    chosen = [
        gate for gate in gates()
        if gate.backend in names and (wanted is None or gate.target.path in wanted)
    ]  # fmt: skip
    results = []
    sizes = sorted({gate.size for gate in chosen})
    settings = {"check": True, "sizes": sizes, "rates": [RATE], "repeats": REPEATS}
    combined = Report([], settings)
    for gate in chosen:
        case = gate.case()
        report = run(
            [gate.backend],
            sizes=[case.size],
            rates=[RATE],
            repeats=REPEATS,
            min_sample=MIN_SAMPLE,
            paths=[case.path],
            directions=[case.direction],
            dtypes=[case.dtype],
            shapes=[case.shapes],
            contenders=[gate.target.numerator, gate.target.denominator],
            progress=progress,
        )
        combined.measurements += report.measurements
        combined.unavailable.update(report.unavailable)
        load_before = combined.machine.get("load_before", report.machine["load_before"])
        combined.machine = {**report.machine, "load_before": load_before}
        combined.versions.update(report.versions)
        result = evaluate(gate, report.measurements)
        if gate.backend in report.unavailable:
            result.error = f"{gate.backend} not available ({report.unavailable[gate.backend]})"
        results.append(result)
    combined.settings["backends"] = names
    return results, combined
