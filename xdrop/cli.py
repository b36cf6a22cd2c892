"""The ``xdrop`` command: ``info``, ``conformance``, ``golden`` and ``bench``."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn, TextIO

import xdrop
from xdrop import defaults, kernel, registry, seeds, tables
from xdrop.conformance import golden, self_check
from xdrop.conformance.runner import MODES, BackendReport, identical_outputs, run_backend
from xdrop.errors import XdropError

DESCRIPTION = (
    "Dropout and R-Dropout with the same masks on NumPy, PyTorch, TensorFlow and JAX. "
    "These commands show what is installed, check the golden cases and time xdrop."
)


class _Parser(argparse.ArgumentParser):
    """A bad argument ends the command with exit status 2 and one line, ``xdrop bench: error: ...``
    (argparse would print the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault(
        "TF_CPP_MIN_LOG_LEVEL", "2"
    )  # TensorFlow's start-up chatter hides the table
    parser = _Parser(prog="xdrop", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"xdrop {xdrop.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser(
        "info",
        help="the installed backends, the default backend and generator, the compiled kernel",
        description="Show xdrop's version, each registered backend (whether it can run here, its "
        "framework's version, the package that registered it), the default backend and "
        "generator and where each came from (XDROP_BACKEND, XDROP_RNG or the default), and "
        "whether the compiled kernel is in use.",
    )
    conformance = commands.add_parser(
        "conformance", help="check the golden seeded cases on every installed backend"
    )
    _add_shared_options(conformance, "check")
    conformance.add_argument(
        "--mode", choices=[*MODES, "all"], default="all",
        help="eager calls, calls inside the framework's compiler, or both (default)",
    )  # fmt: skip
    conformance.add_argument(
        "--full", action="store_true",
        help="compile every case on backends with slow compilers (torch: half an hour), not a sample",
    )  # fmt: skip
    regenerate = commands.add_parser(
        "golden", help="regenerate the golden cases from the reference"
    )
    regenerate.add_argument(
        "--check", action="store_true", help="only check that the shipped file is up to date"
    )
    _add_bench(commands)
    arguments = parser.parse_args(argv)
    if arguments.command == "info":
        return _info()
    if arguments.command == "golden":
        return _golden(check=arguments.check)
    if arguments.command == "bench":
        return _bench(arguments)
    modes = list(MODES) if arguments.mode == "all" else [arguments.mode]
    return _conformance(arguments.backend, modes, arguments.full, arguments.json)


def _add_bench(commands: Any) -> None:
    from xdrop.benchmarks import runner  # imports no framework

    bench = commands.add_parser(
        "bench",
        help="time xdrop against each framework's own dropout (docs/performance.md)",
        description="Time xdrop (portable and rng='native'), the framework's own dropout and a "
        "copy, interleaved, in every execution mode; print medians and the ratios of one run.",
    )
    _add_shared_options(bench, "time")
    bench.add_argument(
        "--path", action="append", metavar="PATH",
        help="an execution path to time (repeatable), e.g. 'jax.jit', 'torch eager'; default: all",
    )  # fmt: skip
    bench.add_argument(
        "--direction", choices=["forward", "forward+backward"],
        help="time only this direction (default: both, where the framework differentiates)",
    )  # fmt: skip
    bench.add_argument(
        "--sizes", nargs="+", type=_sizes, metavar="N",
        help=f"float32 elements per input, e.g. 1e3 1e6 or 1e3,1e6 (default: "
        f"{','.join(f'{size:.0e}' for size in runner.SIZES)})",
    )  # fmt: skip
    bench.add_argument(
        "--p", nargs="+", type=_probability, metavar="P",
        help=f"drop probabilities (default: {' '.join(map(str, runner.RATES))})",
    )  # fmt: skip
    bench.add_argument(
        "--repeats", type=_positive_integer, metavar="N",
        help=f"timed rounds, at least 1 (default: {runner.REPEATS})",
    )  # fmt: skip
    bench.add_argument(
        "--quick", action="store_true",
        help="fewer sizes, one rate, three rounds: a first look in a few minutes",
    )  # fmt: skip


def _add_shared_options(command: argparse.ArgumentParser, doing: str) -> None:
    """The options of ``conformance`` and ``bench`` alike: which backends to ``doing``, and a file
    for the results as JSON (its path checked before anything runs)."""
    command.add_argument(
        "--backend", action="append", metavar="NAME",
        help=f"a backend to {doing} (repeatable); default: every installed one",
    )  # fmt: skip
    command.add_argument(
        "--json", metavar="FILE", type=_output_path, help="also write the results as JSON"
    )


def _sizes(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or not value.is_integer() or value < 1:
            raise argparse.ArgumentTypeError(
                f"a size must be a positive whole number of elements, e.g. 1e3; got {part!r}"
            )
        sizes.append(int(value))
    return sizes


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise argparse.ArgumentTypeError(f"--p must be a number in [0, 1], got {text!r}")
    return value


def _positive_integer(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--repeats must be a whole number >= 1, got {text!r}")
    return value


def _output_path(text: str) -> Path:
    """A file the results can be written to, checked before anything runs."""
    path = Path(text)
    folder = path.parent
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"--json must name a file, got the folder {text!r}")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(
            f"--json {text!r}: the folder {str(folder)!r} does not exist"
        )
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise argparse.ArgumentTypeError(f"--json {text!r}: no permission to write there")
    return path


def _write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` atomically: a reader never sees half a file, and a failed
    write leaves what was there."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(document, file, indent=1)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _bench(arguments: argparse.Namespace) -> int:
    from xdrop import benchmarks
    from xdrop.benchmarks import runner

    defaults: dict[str, Any] = dict(runner.QUICK) if arguments.quick else {}
    sizes = [size for group in arguments.sizes for size in group] if arguments.sizes else None
    if arguments.backend:
        unknown = [name for name in arguments.backend if name not in benchmarks.SUITES]
        if unknown:
            print(f"no benchmark for backend(s) {', '.join(unknown)}; "
                  f"known: {', '.join(benchmarks.SUITES)}", file=sys.stderr)  # fmt: skip
            return 2
    report = benchmarks.run(
        backends=arguments.backend,
        sizes=sizes or defaults.get("sizes", runner.SIZES),
        rates=arguments.p or defaults.get("rates", runner.RATES),
        repeats=arguments.repeats if arguments.repeats else defaults.get("repeats", runner.REPEATS),
        min_sample=defaults.get("min_sample", runner.MIN_SAMPLE),
        paths=arguments.path,
        directions=[arguments.direction] if arguments.direction else None,
        progress=_bench_progress(Progress(sys.stderr)),
    )
    print(benchmarks.table(report))
    print()
    print(benchmarks.targets_table(benchmarks.check_targets(report)))
    machine = report.machine
    print(f"\n{machine['kernel']}")
    print(f"{machine['processor']}, {machine['cores']} cores, load average "
          f"{machine['load_before']} before and {machine.get('load_after')} after; "
          + ", ".join(f"{name} {version}" for name, version in report.versions.items()))  # fmt: skip
    if arguments.json:
        _write_json(arguments.json, benchmarks.document(report))
    return 0


class Progress:
    """How far a long command is, on ``stream``: on a terminal one line rewritten in place as the
    work goes on; elsewhere (a pipe, a file, CI's log) plain lines, one per step."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()

    def show(self, what: str, done: int, total: int) -> None:
        """Report ``done`` of ``total`` steps; ``what`` names the step now running (or the whole
        task once ``done == total``)."""
        line = f"  [{done}/{total}] {what}"
        if self.live:
            end = "\n" if done == total else ""
            print(f"\r\033[K{line}", end=end, file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)


def _bench_progress(progress: Progress) -> Callable[[Any, int, int], None]:
    def show(case: Any, done: int, total: int) -> None:
        if done == total:
            progress.show(f"{case.backend}: timed", done, total)
        else:
            what = f"{case.path} {case.direction} size {case.size:.0e} p {case.p:g}"
            progress.show(what, done, total)

    return show


def _info() -> int:
    """What xdrop runs on here: its version, each registered backend, the defaults, the kernel."""
    print(f"xdrop {xdrop.__version__} ({Path(xdrop.__file__).parent})")
    print(f"Python {platform.python_version()} on {platform.platform()}")
    print()
    rows: list[tuple[str, ...]] = [_backend_row(name) for name in registry.registered_names()]
    print(tables.render(("backend", "available", "framework", "registered by"), rows))
    print()
    print(f"default backend: {_default_backend()}")
    print(f"generator: {_default_rng()}")
    print(kernel.status())
    return 0


def _backend_row(name: str) -> tuple[str, str, str, str]:
    claims = registry.claims(name)
    providers = sorted({_version_of(registry.distribution(claim)) for claim in claims})
    try:
        framework = getattr(claims[0].load(), "framework", None) if len(claims) == 1 else None
    except KeyboardInterrupt:
        raise
    except BaseException:  # SystemExit too: a broken plugin is listed as unavailable
        framework = None
    available = "yes" if self_check.is_available(name) else "no"
    return name, available, _framework_version(framework), ", ".join(providers) or "-"


def _framework_version(module: str | None) -> str:
    """The distributions that install the framework ``module``, with their versions."""
    if module is None:
        return "-"
    installed = metadata.packages_distributions().get(module, [])
    return ", ".join(sorted({_version_of(name) for name in installed})) or f"{module} not installed"


def _version_of(distribution: str) -> str:
    try:
        return f"{distribution} {metadata.version(distribution)}"
    except metadata.PackageNotFoundError:
        return distribution


def _default_backend() -> str:
    variable = registry.ENVIRONMENT_VARIABLE
    chosen = defaults.BACKEND.from_environment()
    if not chosen:
        return f"{registry.default_name()} ({variable} is not set)"
    if chosen not in registry.registered_names():
        return f"none: {variable}={chosen!r} is not a registered backend"
    return f"{chosen} (from {variable}={chosen})"


def _default_rng() -> str:
    variable = seeds.RNG_ENVIRONMENT_VARIABLE
    try:
        rng = seeds.get_rng()
    except XdropError as error:
        return f"none: {error}"
    if defaults.RNG.from_environment():
        return f"{rng} (from {variable}={rng})"
    return f"{rng} ({variable} is not set)"


def _golden(check: bool) -> int:
    text = golden.render(golden.generate())
    if check:
        current = golden.GOLDEN_PATH.read_text() if golden.GOLDEN_PATH.exists() else ""
        if current != text:
            print(f"{golden.GOLDEN_PATH} is out of date: run `xdrop golden`", file=sys.stderr)
            return 1
        print(f"{golden.GOLDEN_PATH} matches the reference")
        return 0
    golden.GOLDEN_PATH.write_text(text)
    print(f"wrote {len(golden.load()['cases'])} cases to {golden.GOLDEN_PATH}")
    return 0


def _conformance(
    names: list[str] | None, modes: list[str], full: bool, json_path: Path | None
) -> int:
    registered = registry.registered_names()
    if names:
        unknown = [name for name in names if name not in registered]
        if unknown:
            print(
                f"xdrop conformance: error: unknown backend(s) {', '.join(unknown)}; "
                f"registered: {', '.join(registered)}",
                file=sys.stderr,
            )
            return 2
    else:
        names = [name for name in registered if self_check.is_available(name)]
    if not names:
        print(
            "conformance: FAILED: no backend to check (registered: "
            f"{', '.join(registered) or 'none'}); is xdrop installed with its backends?",
        )
        return 1
    progress = Progress(sys.stderr)
    reports = [
        run_backend(name, progress=_progress(progress, name, mode), mode=mode, full=full)
        for name in names
        for mode in modes
    ]
    print(kernel.status())
    print(_table(reports))
    print()
    print(_pairwise_table(reports))
    for report in reports:
        for failure in report.failed:
            print(f"FAILED {report.backend} {report.mode} {failure.case_id}: {failure.detail}")
    # every backend asked for (named, or found available) must load and pass some case eagerly
    unchecked = sorted({report.backend for report in reports if not _checked(report)})
    passed = not unchecked and not any(report.failed for report in reports)
    for name in unchecked:
        print(f"NOT CHECKED {name}: " + "; ".join(
            report.reason or "no case passed" for report in reports if report.backend == name
        ))  # fmt: skip
    if json_path:
        _write_json(json_path, _document(reports, passed))
    checked = len(names) - len(unchecked)
    print(
        f"conformance: all backends conform ({checked} checked)"
        if passed
        else f"conformance: FAILED ({checked} of {len(names)} backends checked)"
    )
    return 0 if passed else 1


def _checked(report: BackendReport) -> bool:
    """Whether a run checked its backend: it loaded and, eagerly, passed at least one case (a
    backend without a compiler has nothing to check in the compiled mode)."""
    if not report.available:
        return False
    return report.mode != "eager" or any(result.status == "passed" for result in report.results)


def _progress(progress: Progress, name: str, mode: str) -> Callable[[int, int], None]:
    """Conformance progress: every case on a terminal; piped, a line per tenth of the cases."""

    def show(done: int, total: int) -> None:
        step = max(1, total // 10)
        if progress.live or done == total or done % step == 0:
            progress.show(f"{name} {mode}: cases checked", done, total)

    return show


def _table(reports: list[BackendReport]) -> str:
    header = ("backend", "mode", "group", "passed", "failed", "skipped", "max difference")
    rows: list[tuple[str, ...]] = []
    for report in reports:
        if not report.available or not report.results:
            reason = report.reason if report.available else f"unavailable: {report.reason}"
            rows.append((report.backend, report.mode, "-", "-", "-", "-", reason))
            continue
        for group, counts in report.groups().items():
            rows.append((
                report.backend, report.mode, group, str(counts["passed"]), str(counts["failed"]),
                str(counts["skipped"]), f"{counts['max_difference']:g}",
            ))  # fmt: skip
    return tables.render(header, rows)


def _pairwise_table(reports: list[BackendReport]) -> str:
    """For each pair of backends (eager), how many cases both ran gave identical bits."""
    eager = {
        report.backend: report for report in reports if report.mode == "eager" and report.available
    }
    rows: list[tuple[str, ...]] = []
    names = sorted(eager)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            results = {result.case_id: result for result in eager[second].results}
            both = [
                (result, results[result.case_id])
                for result in eager[first].results
                if result.case_id in results and result.output and results[result.case_id].output
            ]
            same = sum(identical_outputs(a, b) for a, b in both)
            rows.append((first, second, f"{same}/{len(both)}"))
    if not rows:
        return "pairwise: fewer than two backends ran eagerly"
    return tables.render(("backend", "backend", "identical cases"), rows)


def _document(reports: list[BackendReport], passed: bool) -> dict[str, Any]:
    return {
        "schema": 1,
        "stream": golden.STREAM_VERSION,
        "kernel": kernel.status(),
        "passed": passed,
        "runs": [
            {
                "backend": report.backend,
                "mode": report.mode,
                "available": report.available,
                "reason": report.reason,
                "groups": report.groups(),
                "failures": [
                    {"case": failure.case_id, "detail": failure.detail} for failure in report.failed
                ],
                "skipped": [
                    {"case": result.case_id, "reason": result.detail}
                    for result in report.results
                    if result.status == "skipped"
                ],
            }
            for report in reports
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
