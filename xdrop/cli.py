"""The ``xdrop`` command: ``xdrop conformance``, ``xdrop golden`` and ``xdrop bench``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from xdrop import kernel, registry
from xdrop.conformance import golden
from xdrop.conformance.runner import MODES, BackendReport, identical_outputs, run_backend


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault(
        "TF_CPP_MIN_LOG_LEVEL", "2"
    )  # TensorFlow's start-up chatter hides the table
    parser = argparse.ArgumentParser(prog="xdrop", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    conformance = commands.add_parser(
        "conformance", help="check the golden seeded cases on every installed backend"
    )
    conformance.add_argument(
        "--backend", action="append", metavar="NAME",
        help="a backend to check (repeatable); default: every installed one",
    )  # fmt: skip
    conformance.add_argument(
        "--mode", choices=[*MODES, "all"], default="all",
        help="eager calls, calls inside the framework's compiler, or both (default)",
    )  # fmt: skip
    conformance.add_argument(
        "--full", action="store_true",
        help="compile every case on backends with slow compilers (torch: half an hour), not a sample",
    )  # fmt: skip
    conformance.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    regenerate = commands.add_parser(
        "golden", help="regenerate the golden cases from the reference"
    )
    regenerate.add_argument(
        "--check", action="store_true", help="only check that the shipped file is up to date"
    )
    _add_bench(commands)
    arguments = parser.parse_args(argv)
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
    bench.add_argument(
        "--backend", action="append", metavar="NAME",
        help="a backend to time (repeatable); default: every installed one",
    )  # fmt: skip
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
        "--p", nargs="+", type=float, metavar="P",
        help=f"drop probabilities (default: {' '.join(map(str, runner.RATES))})",
    )  # fmt: skip
    bench.add_argument(
        "--repeats", type=int, metavar="N", help=f"timed rounds (default: {runner.REPEATS})"
    )
    bench.add_argument(
        "--quick", action="store_true",
        help="fewer sizes, one rate, three rounds: a first look in a few minutes",
    )  # fmt: skip
    bench.add_argument("--json", metavar="FILE", help="also write the results as JSON")


def _sizes(text: str) -> list[int]:
    sizes = []
    for part in text.split(","):
        value = float(part)
        if not value.is_integer() or value < 1:
            raise argparse.ArgumentTypeError(f"not a positive whole number of elements: {part}")
        sizes.append(int(value))
    return sizes


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
        repeats=arguments.repeats or defaults.get("repeats", runner.REPEATS),
        min_sample=defaults.get("min_sample", runner.MIN_SAMPLE),
        paths=arguments.path,
        directions=[arguments.direction] if arguments.direction else None,
        progress=_bench_progress,
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
        with open(arguments.json, "w") as file:
            json.dump(benchmarks.document(report), file, indent=1)
    return 0


def _bench_progress(measurement: Any) -> None:
    case = measurement.case
    print(f"  {case.path} {case.direction} size {case.size:.0e} p {case.p:g}",
          file=sys.stderr, flush=True)  # fmt: skip


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
    names: list[str] | None, modes: list[str], full: bool, json_path: str | None
) -> int:
    available = registry.available_backends()
    named = bool(names)
    if names:
        unknown = [name for name in names if name not in available]
        if unknown:
            print(
                f"unknown backend(s) {', '.join(unknown)}; registered: {', '.join(available)}",
                file=sys.stderr,
            )
            return 2
    else:
        names = [name for name, installed in available.items() if installed]
    reports = [
        run_backend(name, progress=_progress(f"{name} {mode}"), mode=mode, full=full)
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
    # a backend named on the command line must load; one found installed that fails to load (a
    # broken plugin) is shown as unavailable, with its reason, but is not this run's failure
    passed = all((report.available or not named) and not report.failed for report in reports)
    if json_path:
        with open(json_path, "w") as file:
            json.dump(_document(reports, passed), file, indent=1)
    print("conformance: " + ("all backends conform" if passed else "FAILED"))
    return 0 if passed else 1


def _progress(name: str) -> Any:
    def show(done: int, total: int) -> None:
        if sys.stderr.isatty() or done == total:
            end = "\n" if done == total else "\r"
            print(f"  {name}: {done}/{total} cases", end=end, file=sys.stderr, flush=True)

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
    return _render(header, rows)


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
    return _render(("backend", "backend", "identical cases"), rows)


def _render(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = []
    for row in (header, *rows):
        lines.append(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[-1]
        )
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


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
            }
            for report in reports
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
