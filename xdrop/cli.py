"""The ``xdrop`` command: ``info``, ``conformance``, ``golden`` and ``bench``."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Any, NoReturn, TextIO

import xdrop
from xdrop import defaults, kernel, registry, seeds, self_check, tables
from xdrop.cli_files import FileError, check_output, read_text, write_file
from xdrop.conformance import golden
from xdrop.conformance.runner import MODES, BackendReport, identical_outputs, run_backend
from xdrop.errors import XdropError

DESCRIPTION = (
    "Dropout and R-Dropout with the same masks on NumPy, PyTorch, TensorFlow and JAX. "
    "These commands show what is installed, check the golden cases and time xdrop."
)


class _Exit(SystemExit):
    """The parser is done (``--help``, ``--version``, a bad argument): :func:`main` returns the
    status rather than raising it."""


class _Parser(argparse.ArgumentParser):
    """A bad argument ends the command with exit status 2 and one line, ``xdrop bench: error: ...``
    (argparse would print the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            print(message, end="", file=sys.stderr)
        raise _Exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``xdrop`` command with ``argv`` (default: the process's arguments); return its
    exit status: 0 done, 1 a check or a measurement failed, 2 a bad argument (one line on
    stderr, nothing run), 141 its reader closed the output (``xdrop info | head -1``)."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # here, where a closed pipe can be caught, not at the exit
        return status
    except _Exit as done:
        return int(done.code or 0)
    except BrokenPipeError:
        # stop quietly, as a command that SIGPIPE ended; the output goes nowhere from here,
        # so Python's own flush at the exit cannot fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE's number, as shells report a command SIGPIPE ended


def _main(argv: Sequence[str] | None) -> int:
    os.environ.setdefault(
        "TF_CPP_MIN_LOG_LEVEL", "2"
    )  # TensorFlow's start-up chatter hides the table
    parser = _Parser(prog="xdrop", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"xdrop {xdrop.__version__}")
    # not required=True: argparse would then say a command is missing before naming an option
    # it does not know (`xdrop --bogus`)
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    commands.add_parser(
        "info",
        help="the installed backends, the default backend and generator, the compiled kernel",
        description="Show xdrop's version, each registered backend (whether it can run here, its "
        "framework's version, the package that registered it), the default backend and "
        "generator and where each came from (XDROP_BACKEND, XDROP_RNG or the default), and "
        "whether the compiled kernel is in use.",
    )
    conformance = commands.add_parser(
        "conformance",
        help="check the golden seeded cases on every installed backend",
        description="Check the golden cases on every installed backend (or those named) and "
        "print the verdict; on a terminal a progress bar shows how far the run is.",
    )
    _add_shared_options(conformance, "check")
    conformance.add_argument(
        "--mode", choices=[*MODES, "all"], default="all",
        help="eager: call the public API directly; compiled: call it inside the framework's "
        "compiler, seeds traced; runtime: compile it with sizes known only at run time and the "
        "rate traced; all (default): the three modes in turn",
    )  # fmt: skip
    conformance.add_argument(
        "--full", action="store_true",
        help="compile every case on backends with slow compilers (torch: half an hour), not a sample",
    )  # fmt: skip
    conformance.add_argument(
        "-v", "--verbose", action="store_true",
        help="also print each case's result, the tables by group and by pair of backends, "
        "and progress lines per backend",
    )  # fmt: skip
    regenerate = commands.add_parser(
        "golden",
        help="regenerate the golden cases from the reference into FILE",
        description="Regenerate the golden cases from the scalar reference and write them to "
        "FILE (only there: nothing is written unless a FILE is named). From a checkout, "
        "xdrop/conformance/golden.json is the file xdrop ships.",
    )
    regenerate.add_argument(
        "file", nargs="?", metavar="FILE",
        help="where to write the cases (with --check: the file to check; default the shipped one)",
    )  # fmt: skip
    regenerate.add_argument(
        "--check", action="store_true",
        help="write nothing: check that FILE (default: the shipped cases) matches the reference",
    )  # fmt: skip
    bench = _add_bench(commands)
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.error(f"a command is required: one of {', '.join(commands.choices)}")
    if arguments.command == "info":
        return _info()
    if arguments.command == "golden":
        return _golden(regenerate, arguments.file, check=arguments.check)
    if arguments.backend:  # named twice is asked for once
        arguments.backend = list(dict.fromkeys(arguments.backend))
    if arguments.command == "bench":
        if not arguments.load:  # a run read from files calls nothing
            _check_settings(bench)
        return _bench(bench, arguments)
    _check_settings(conformance)
    modes = list(MODES) if arguments.mode == "all" else [arguments.mode]
    return _conformance(
        conformance, arguments.backend, modes, arguments.full, arguments.json, arguments.verbose
    )


def _add_bench(commands: Any) -> argparse.ArgumentParser:
    from xdrop.benchmarks import runner  # imports no framework

    bench: argparse.ArgumentParser = commands.add_parser(
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
        "--dtype", action="append", choices=["float32", "bfloat16"],
        help="time only this dtype (repeatable; default: both; NumPy's bfloat16 is ml_dtypes')",
    )  # fmt: skip
    bench.add_argument(
        "--shapes", action="append", choices=["fixed", "changing"],
        help="one shape per case, or a new shape of about the same size on every call "
        "(repeatable; default: both)",
    )  # fmt: skip
    bench.add_argument(
        "--sizes", nargs="+", type=_sizes, metavar="N",
        help=f"float32 elements per input, e.g. 1e3 1e6 or 1e3,1e6 (default: "
        f"{','.join(f'{size:.0e}' for size in runner.SIZES)})",
    )  # fmt: skip
    bench.add_argument(
        "--p", nargs="+", type=_probability, metavar="P",
        help=f"drop probabilities in [0, 1) (default: {' '.join(map(str, runner.RATES))})",
    )  # fmt: skip
    bench.add_argument(
        "--repeats", type=_repeats, metavar="N",
        help=f"timed rounds, 1 to {MAX_REPEATS} (default: {runner.REPEATS})",
    )  # fmt: skip
    bench.add_argument(
        "--markdown", action="store_true",
        help="print the tables as Markdown tables (as docs/performance.md records them)",
    )  # fmt: skip
    bench.add_argument(
        "--load", action="append", metavar="FILE", type=Path,
        help="time nothing: read the results of earlier runs (--json files; repeatable, merged) "
        "and print their tables (with --markdown, --figure, --json)",
    )  # fmt: skip
    bench.add_argument(
        "--figure", metavar="FILE.png", type=_figure_path,
        help="also draw the ratios xdrop / the framework's dropout as a figure (matplotlib), in "
        "the format the suffix names (.png, .pdf, .svg, ...)",
    )  # fmt: skip
    bench.add_argument(
        "--quick", action="store_true",
        help="fewer sizes, one rate, float32 on fixed shapes, three rounds: a first look in a few "
        "minutes",
    )  # fmt: skip
    bench.add_argument(
        "--rdrop", action="store_true",
        help="time R-Dropout's loss against the losses users write, at BERT-base shapes, instead "
        "(with --backend, --quick, --direction, --markdown and --json only)",
    )  # fmt: skip
    bench.add_argument(
        "--check", action="store_true",
        help="the gate: the paths users take at 1e6 elements, each in a fresh process; exit 1 "
        "when a ratio is above twice its target (with --backend, --path and --json only)",
    )  # fmt: skip
    return bench


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


BENCH_BYTES_PER_ELEMENT = 16
"""About what ``xdrop bench`` holds per float32 element of a case: the input, the outputs of the
contenders and, backward, the gradients."""


def _sizes(text: str) -> list[int]:
    from xdrop.benchmarks.runner import element_count, memory_bytes

    sizes = []
    memory = memory_bytes()
    for part in text.split(","):
        value = element_count(part)
        if memory is not None and value * BENCH_BYTES_PER_ELEMENT > memory:
            raise argparse.ArgumentTypeError(
                f"{value:.0e} elements need about {value * BENCH_BYTES_PER_ELEMENT / 2**30:,.0f} "
                f"GiB ({BENCH_BYTES_PER_ELEMENT} bytes each: the input, the outputs, the "
                f"gradients), more than this machine's {memory / 2**30:,.0f} GiB; got {part!r}"
            )
        sizes.append(value)
    return sizes


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value < 1.0:  # NaN fails both comparisons
        # at p = 1 the framework's dropout has no scale to apply (1 / (1 - p)): nothing to time
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


MAX_REPEATS = 1000
"""The most timed rounds ``xdrop bench --repeats`` takes: a thousand medians of interleaved
samples already take hours over the default cases; a larger number is a typing slip."""


def _repeats(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_REPEATS:
        raise argparse.ArgumentTypeError(
            f"must be a whole number in [1, {MAX_REPEATS}], got {text!r}"
        )
    return value


def _output_path(text: str) -> Path:
    """A file the results can be written to, checked before anything runs (argparse names the
    option in front of the reason)."""
    try:
        return check_output(text)
    except FileError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _figure_path(text: str) -> Path:
    """A file the figure can be written to, in a format its suffix names, and matplotlib to draw
    it, all checked before anything runs."""
    from xdrop.benchmarks.figure import FORMATS  # imports no matplotlib

    if importlib.util.find_spec("matplotlib") is None:
        raise argparse.ArgumentTypeError("drawing needs matplotlib (pip install matplotlib)")
    path = _output_path(text)
    # matplotlib takes the format from the suffix, and writes NAME.png for a NAME without one
    if path.suffix[1:].lower() not in FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the suffix names the figure's format, one of "
            f"{', '.join('.' + name for name in FORMATS)}; got {path.suffix or 'no suffix'}"
        )
    return path


def _write_json(parser: argparse.ArgumentParser, path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` as JSON (see :mod:`xdrop.cli_files`); a failure ends the
    command with one line and exit status 2."""
    try:
        write_file(path, lambda file: json.dump(document, file, indent=1))
    except FileError as error:
        parser.error(f"argument --json: {error}")


def _same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file (through links too; neither need exist yet)."""
    return os.path.realpath(first) == os.path.realpath(second)


def _shown(path: Path) -> str:
    """``path`` as text any terminal can print: a name that is not valid UTF-8 (its bytes kept
    as surrogates by Python) shows those bytes escaped instead of failing to print."""
    return str(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _bench(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> int:
    from xdrop.benchmarks import runner

    if arguments.json and arguments.figure and _same_file(arguments.json, arguments.figure):
        parser.error(f"argument --figure: {_shown(arguments.figure)!r} is the file of --json "
                     "too, which the figure would overwrite: name another file")  # fmt: skip
    if arguments.rdrop:
        return _bench_rdrop(parser, arguments)
    defaults: dict[str, Any] = dict(runner.QUICK) if arguments.quick else {}
    sizes = [size for group in arguments.sizes for size in group] if arguments.sizes else None
    _check_bench_cases(parser, arguments)
    if arguments.check:
        return _bench_check(parser, arguments)
    if arguments.load:
        report = _load_reports(parser, arguments.load)
    else:
        report = _time_cases(arguments, defaults, sizes)
    return _show_report(parser, arguments, report)


def _time_cases(
    arguments: argparse.Namespace, defaults: dict[str, Any], sizes: list[int] | None
) -> Any:
    from xdrop import benchmarks
    from xdrop.benchmarks import runner, suites

    return benchmarks.run(
        backends=arguments.backend,
        sizes=sizes or defaults.get("sizes", runner.SIZES),
        rates=arguments.p or defaults.get("rates", runner.RATES),
        repeats=arguments.repeats if arguments.repeats else defaults.get("repeats", runner.REPEATS),
        min_sample=defaults.get("min_sample", runner.MIN_SAMPLE),
        paths=arguments.path,
        directions=[arguments.direction] if arguments.direction else None,
        progress=_bench_progress(Progress(sys.stderr)),
        dtypes=list(dict.fromkeys(arguments.dtype or defaults.get("dtypes", suites.DTYPES))),
        shapes=list(dict.fromkeys(arguments.shapes or defaults.get("shapes", suites.SHAPES))),
    )


def _load_reports(parser: argparse.ArgumentParser, paths: list[Path]) -> Any:
    """The runs saved in ``paths`` (``--json`` files) as one report; a file that cannot be read
    ends the command with one line and exit status 2."""
    from xdrop.benchmarks import report

    documents = []
    for path in paths:
        try:
            document = json.loads(read_text(path))
        except FileError as error:
            parser.error(f"argument --load: {error}")
        except json.JSONDecodeError as error:
            parser.error(f"argument --load: {_shown(path)!r} is not JSON: {error}")
        problem = report.document_problem(document)
        if problem is not None:
            parser.error(
                f"argument --load: {_shown(path)!r} is not a benchmark's results: {problem}"
            )
        documents.append(document)
    return report.from_documents(documents)


def _show_report(
    parser: argparse.ArgumentParser, arguments: argparse.Namespace, report: Any
) -> int:
    from xdrop import benchmarks

    print(benchmarks.table(report, markdown=arguments.markdown))
    print()
    targets = benchmarks.check_targets(report)
    if targets:
        print(benchmarks.targets_table(targets, markdown=arguments.markdown))
    else:  # bfloat16 on changing shapes, say
        print("No target covers the cases measured (docs/performance.md#targets).")
    machine = report.machine
    print(f"\n{machine['kernel']}")
    print(f"{machine['processor']}, {machine['cores']} cores, load average "
          f"{machine['load_before']} before and {machine.get('load_after')} after; "
          + ", ".join(f"{name} {version}" for name, version in report.versions.items()))  # fmt: skip
    if arguments.json:
        _write_json(parser, arguments.json, benchmarks.document(report))
    if arguments.figure:
        _draw_figure(parser, arguments.figure, report)
    problems = [f"{name} ({reason})" for name, reason in report.unavailable.items()]
    failed = [
        measurement for measurement in report.measurements
        if measurement.failures.keys() & {"all", benchmarks.suites.XDROP}
    ]  # fmt: skip
    if problems or failed:  # a table with holes is not a benchmark that ran
        what = [f"not measured: {', '.join(problems)}"] if problems else []
        what += [f"{len(failed)} case(s) where xdrop could not be timed"] if failed else []
        print(f"xdrop bench: FAILED: {'; '.join(what)}", file=sys.stderr)
        return 1
    return 0


def _draw_figure(parser: argparse.ArgumentParser, path: Path, report: Any) -> None:
    """Draw the ratios of ``report`` into ``path`` as :func:`_write_json` writes; a failure ends
    the command with one line and exit status 2."""
    from xdrop.benchmarks import figure

    rate = figure.rate(report)
    ratios = figure.ratios(report, rate)
    try:
        write_file(path, lambda file: figure.draw(ratios, path, rate, into=file), binary=True)
    except FileError as error:
        parser.error(f"argument --figure: {error}")


def _bench_rdrop(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> int:
    """``xdrop bench --rdrop``: :mod:`xdrop.benchmarks.rdrop`'s table."""
    from xdrop.benchmarks import rdrop

    given = [option for option, value in (
        ("--sizes", arguments.sizes), ("--p", arguments.p), ("--repeats", arguments.repeats),
        ("--path", arguments.path), ("--check", arguments.check), ("--dtype", arguments.dtype),
        ("--shapes", arguments.shapes), ("--load", arguments.load),
        ("--figure", arguments.figure),
    ) if value]  # fmt: skip
    unknown = [name for name in arguments.backend or () if name not in rdrop.MODES]
    if given or unknown:
        parser.error(f"argument --rdrop: {', '.join(given)} cannot be given with it" if given
                     else f"argument --backend: no R-Dropout benchmark for {', '.join(unknown)}; "
                     f"known: {', '.join(rdrop.MODES)}")  # fmt: skip
    document = rdrop.run(
        arguments.backend,
        directions=[arguments.direction] if arguments.direction else rdrop.DIRECTIONS,
        quick=arguments.quick,
        progress=lambda what: print(f"timing {what} ...", file=sys.stderr, flush=True),
    )
    print(rdrop.table(document, markdown=arguments.markdown))
    if arguments.json:
        _write_json(parser, arguments.json, document)
    failed = [row for row in document["rows"] if "ratio" not in row] or document["missing"]
    if failed:
        print("xdrop bench --rdrop: FAILED: not every backend could be timed", file=sys.stderr)
    return 1 if failed else 0


def _bench_check(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> int:
    """``xdrop bench --check``: the gate's table, and one line on stderr per failing path."""
    from xdrop import benchmarks
    from xdrop.benchmarks import gate

    results, report = gate.check(
        arguments.backend, arguments.path, progress=_bench_progress(Progress(sys.stderr))
    )
    rows = [
        (
            result.gate.target.path,
            _gate_variant(result.gate.target),
            f"{result.gate.target.numerator}/{result.gate.target.denominator}",
            f"{result.gate.size:.0e}",
            "-" if result.ratio is None else tables.ratio(result.ratio, result.gate.limit),
            f"{result.gate.target.limit:g}",
            f"{result.gate.limit:g}",
            "passed" if result.passed else "FAILED",
        )
        for result in results
    ]
    header = ("path", "case", "ratio", "size", f"p {gate.RATE:g}", "target", "fails above", "")
    print(tables.render(header, rows, align="<<<>>>><"))
    machine = report.machine
    print(f"\n{machine.get('kernel')}")
    print(f"{machine.get('processor')}, {machine.get('cores')} cores, load average "
          f"{machine.get('load_before')} before and {machine.get('load_after')} after")  # fmt: skip
    if arguments.json:
        document = benchmarks.document(report)
        document["check"] = [
            {"name": r.gate.name, "path": r.gate.target.path, "ratio": r.ratio,
             "target": r.gate.target.limit, "limit": r.gate.limit, "passed": r.passed,
             "error": None if r.ratio is not None else r.error, "pid": r.pid}
            for r in results
        ]  # fmt: skip
        _write_json(parser, arguments.json, document)
    failed = [result for result in results if not result.passed]
    for result in failed:
        print(f"xdrop bench --check: FAILED: {result.line()}", file=sys.stderr)
    return 1 if failed or not results else 0


def _gate_variant(target: Any) -> str:
    """What sets a gate's case apart from forward, float32, one shape, and its size (the gate's
    table names it)."""
    from xdrop.benchmarks.suites import CHANGING, FLOAT32, FORWARD

    parts = [f"{target.sizes[0]:.0e}"]
    parts += [target.direction] if target.direction != FORWARD else []
    parts += [target.dtype] if target.dtype != FLOAT32 else []
    parts += ["changing shapes"] if target.shapes == CHANGING else []
    return ", ".join(parts)


def _check_bench_cases(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> None:
    """Refuse (exit status 2, one line) backends, paths and directions that leave nothing to
    time, before anything runs: an empty table is not an answer."""
    from xdrop.benchmarks import SUITES, installed_backends
    from xdrop.benchmarks.suites import BACKWARD, FORWARD

    if arguments.load:
        given = [option for option, value in (
            ("--sizes", arguments.sizes), ("--p", arguments.p), ("--repeats", arguments.repeats),
            ("--quick", arguments.quick), ("--direction", arguments.direction),
            ("--dtype", arguments.dtype), ("--shapes", arguments.shapes),
            ("--backend", arguments.backend), ("--path", arguments.path),
        ) if value]  # fmt: skip
        if given:
            parser.error(f"argument --load: nothing is timed; {', '.join(given)} cannot be given "
                         "with it")  # fmt: skip
    if arguments.check:
        given = [option for option, value in (
            ("--sizes", arguments.sizes), ("--p", arguments.p), ("--repeats", arguments.repeats),
            ("--quick", arguments.quick), ("--direction", arguments.direction),
            ("--markdown", arguments.markdown), ("--dtype", arguments.dtype),
            ("--shapes", arguments.shapes), ("--figure", arguments.figure),
            ("--load", arguments.load),
        ) if value]  # fmt: skip
        if given:
            parser.error(f"argument --check: the gate's cases are fixed; {', '.join(given)} "
                         "cannot be given with it")  # fmt: skip
    names = arguments.backend or installed_backends()
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        parser.error(f"argument --backend: no benchmark for backend(s) {', '.join(unknown)}; "
                     f"known: {', '.join(SUITES)}")  # fmt: skip
    suites = [SUITES[name] for name in names]
    paths = [path for suite in suites for path in suite.paths]
    for path in arguments.path or ():
        if path not in paths:
            parser.error(f"argument --path: {path!r} is not a path of {', '.join(names)}; "
                         f"their paths: {', '.join(map(repr, paths))}")  # fmt: skip
    directions = {FORWARD, *(BACKWARD for suite in suites if suite.differentiates)}
    if arguments.direction and arguments.direction not in directions:
        parser.error(f"argument --direction: {', '.join(names)} time(s) only "
                     f"{', '.join(sorted(directions))}; got {arguments.direction!r}")  # fmt: skip
    if (
        arguments.path
        and arguments.direction == BACKWARD
        and not any(
            suite.differentiates and set(suite.paths) & set(arguments.path) for suite in suites
        )
    ):
        parser.error(f"argument --direction: the paths {', '.join(map(repr, arguments.path))} "
                     f"time only {FORWARD}; got {arguments.direction!r}")  # fmt: skip


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


class Bar:
    """One progress bar on a terminal, redrawn in place: ``what [#####-----]  50%  now``, and
    cleared once the work is done, so that what follows takes its place."""

    WIDTH = 30

    def __init__(self, stream: TextIO, what: str) -> None:
        self.stream = stream
        self.what = what

    def show(self, fraction: float, now: str) -> None:
        """Draw the bar at ``fraction`` (0 to 1) of the work, ``now`` naming what runs."""
        filled = round(self.WIDTH * min(max(fraction, 0.0), 1.0))
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        line = f"{self.what} [{bar}] {fraction:4.0%}  {now}"
        print(f"\r\033[K{line}", end="", file=self.stream, flush=True)

    def clear(self) -> None:
        print("\r\033[K", end="", file=self.stream, flush=True)


def _bar_progress(bar: Bar, now: str, run: int, runs: int) -> Callable[[int, int], None]:
    """Conformance progress on the one bar: run ``run`` of ``runs``, ``done`` of its ``total``
    cases."""

    def show(done: int, total: int) -> None:
        bar.show((run + done / max(total, 1)) / runs, f"{now} ({done}/{total} cases)")

    return show


def _bench_progress(progress: Progress) -> Callable[[Any, int, int], None]:
    def show(case: Any, done: int, total: int) -> None:
        if done == total:
            progress.show(f"{case.backend}: timed", done, total)
        else:
            what = (
                f"{case.path} {case.direction} {case.dtype} {case.shapes} shapes "
                f"size {case.size:.0e} p {case.p:g}"
            )
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


def _check_settings(parser: argparse.ArgumentParser) -> None:
    """Refuse, before anything runs, a bad value of an environment variable that every call
    reads (``XDROP_KERNEL``, ``XDROP_KERNEL_THREADS``, ``XDROP_RNG``): each case would fail on
    it, and the verdict would bury the one cause. (``XDROP_BACKEND`` is not read: each case
    names its backend.)"""
    problems = []
    for read in (kernel.enabled, seeds.get_rng):
        try:
            read()
        except XdropError as error:
            problems.append(str(error))
    if problems:
        parser.error("; ".join(problems))


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


def _golden(parser: argparse.ArgumentParser, file: str | None, check: bool) -> int:
    """Write the regenerated cases to ``file`` (and only there), or with ``check`` compare
    ``file`` (default: the shipped cases) with them."""
    if check:
        path = Path(file) if file else golden.GOLDEN_PATH
        try:  # read before the cases are generated: a bad file is refused at once
            found = read_text(path)
        except FileError as error:
            parser.error(f"argument FILE: {error}")
        problem = _golden_problem(found)
        if problem:
            parser.error(f"argument FILE: {str(path)!r} is not a golden cases file: {problem}")
    elif file is None:
        parser.error(
            "name the FILE to write the cases to, e.g. `xdrop golden golden.json` (from a "
            "checkout, xdrop/conformance/golden.json is the shipped file)"
        )
    else:
        try:
            path = check_output(file)
        except FileError as error:
            parser.error(f"argument FILE: {error}")
    document = golden.generate()
    text = golden.render(document)
    if check:
        if found != text:
            print(
                f"{_shown(path)} is out of date: run `xdrop golden {_shown(path)}`", file=sys.stderr
            )
            return 1
        print(f"{_shown(path)} matches the reference")
        return 0

    def write(handle: IO[str]) -> None:
        handle.write(text)

    try:
        write_file(path, write)
    except FileError as error:
        parser.error(f"argument FILE: {error}")
    print(f"wrote {len(document['cases'])} cases to {_shown(path)}")
    return 0


def _golden_problem(text: str) -> str | None:
    """Why ``text`` is not a golden document at all (malformed JSON, or JSON of another shape),
    or None: then it is one, up to date or not. An object with none of the fields (``{}``) is
    an empty document, out of date."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        return f"not JSON ({error})"
    if not isinstance(document, dict):
        return f"a JSON object is expected, got {_json_kind(document)}"
    fields = {"stream": str, "input_pattern": list, "cases": list}
    for name, kind in fields.items():
        if name in document and not isinstance(document[name], kind):
            expected, found = _json_kind(kind()), _json_kind(document[name])
            return f"{name!r} must be {expected}, got {found}"
    if not all(isinstance(case, dict) for case in document.get("cases", [])):
        return "each of 'cases' must be an object"
    return None


def _json_kind(value: Any) -> str:
    """What JSON calls the kind of ``value``, as :func:`json.loads` returns it."""
    kinds = ((bool, "a boolean"), (dict, "an object"), (list, "an array"), (str, "a string"))
    if value is None:
        return "null"
    return next((name for kind, name in kinds if isinstance(value, kind)), "a number")


def _conformance(
    parser: argparse.ArgumentParser,
    names: list[str] | None,
    modes: list[str],
    full: bool,
    json_path: Path | None,
    verbose: bool,
) -> int:
    registered = registry.registered_names()
    if names:
        unknown = [name for name in names if name not in registered]
        if unknown:
            parser.error(
                f"unknown backend(s) {', '.join(unknown)}; registered: {', '.join(registered)}"
            )
    else:
        names = [name for name in registered if self_check.is_available(name)]
    if not names:
        print(
            "conformance: FAILED: no backend to check (registered: "
            f"{', '.join(registered) or 'none'}); is xdrop installed with its backends?",
        )
        return 1
    _check_something_runs(parser, names, modes)
    runs = [(name, mode) for name in names for mode in modes]
    bar = Bar(sys.stdout, "conformance") if not verbose and sys.stdout.isatty() else None
    progress = Progress(sys.stderr)
    reports = []
    for index, (name, mode) in enumerate(runs):
        if verbose:
            show = _progress(progress, name, mode)
        elif bar is not None:
            bar.show(index / len(runs), f"{name} {mode}")  # loading a framework takes a while
            show = _bar_progress(bar, f"{name} {mode}", index, len(runs))
        else:
            show = None
        report = run_backend(name, progress=show, mode=mode, full=full)
        reports.append(report)
        if verbose:
            for result in report.results:
                detail = f": {result.detail}" if result.detail and result.status != "passed" else ""
                print(f"{result.status} {name} {mode} {result.case_id}{detail}", flush=True)
    if bar is not None:
        bar.clear()
    if verbose:
        print(kernel.status())
        print(_table(reports))
        print()
        print(_pairwise_table(reports))
    for report in reports:
        for failure in report.failed:
            print(f"FAILED {report.backend} {report.mode} {failure.case_id}: {failure.detail}")
    # every backend asked for (named, or found available) must load and pass some case eagerly
    unchecked = sorted({report.backend for report in reports if not _checked(report)})
    for name in unchecked:
        reasons = dict.fromkeys(
            _reason(report) or "no case passed" for report in reports if report.backend == name
        )
        print(f"NOT CHECKED {name}: " + "; ".join(reasons))
    # a backend without a compiler fails nothing in the compiled modes, but conforms to nothing
    # either: only a backend that passed a case is named as checked, and a run needs one
    passing = {
        report.backend
        for report in reports
        if any(result.status == "passed" for result in report.results)
    }
    checked = [name for name in names if name not in unchecked and name in passing]
    idle = [
        f"{report.backend} {report.mode} ({_reason(report) or 'every case skipped'})"
        for report in reports
        if report.backend not in unchecked and report.backend not in checked
    ]
    passed = bool(checked) and not unchecked and not any(report.failed for report in reports)
    if json_path:
        _write_json(parser, json_path, _document(reports, passed))
    print(_verdict(reports, checked, len(names), passed, idle))
    return 0 if passed else 1


def _check_something_runs(
    parser: argparse.ArgumentParser, names: list[str], modes: list[str]
) -> None:
    """Refuse (exit status 2, one line) modes that none of the backends asked for can run, such
    as NumPy's in the compiled modes, before anything runs: a verdict on no case is no answer."""
    if "eager" in modes:
        return
    probes = [run_backend(name, cases=[], mode=mode) for name in names for mode in modes]
    if all(probe.available and probe.reason for probe in probes):
        reasons = "; ".join(f"{probe.backend}: {probe.reason}" for probe in probes)
        parser.error(
            f"argument --mode: {_either(modes)} mode would check nothing ({reasons}); "
            f"--mode eager or all checks {', '.join(names)}"
        )


def _reason(report: BackendReport) -> str:
    """Why a run checked nothing, as the table says it."""
    return report.reason if report.available else f"unavailable: {report.reason}"


def _verdict(
    reports: list[BackendReport],
    checked: list[str],
    asked: int,
    passed: bool,
    idle: Sequence[str] = (),
) -> str:
    """The last line: whether every backend conforms, which were checked and how many cases, and
    the runs that had nothing to check (``idle``: a backend without a compiler, say)."""
    counts = {status: 0 for status in ("passed", "failed", "skipped")}
    for report in reports:
        for result in report.results:
            counts[result.status] += 1
    cases = f"{counts['passed']:,} cases passed" + "".join(
        f", {counts[status]:,} {status}" for status in ("failed", "skipped") if counts[status]
    )
    if idle:
        cases += f"; nothing checked on {', '.join(idle)}"
    if passed:
        return f"conformance: all backends conform ({len(checked)} checked: {', '.join(checked)}; {cases})"
    return f"conformance: FAILED ({len(checked)} of {asked} backends checked); {cases}"


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
            rows.append((report.backend, report.mode, "-", "-", "-", "-", _reason(report)))
            continue
        for group, counts in report.groups().items():
            rows.append((
                report.backend, report.mode, group, str(counts["passed"]), str(counts["failed"]),
                str(counts["skipped"]), f"{counts['max_difference']:g}",
            ))  # fmt: skip
    return tables.render(header, rows)


def _pairwise_table(reports: list[BackendReport]) -> str:
    """For each mode, each pair of backends that ran in it: how many cases both ran gave
    identical bits."""
    rows: list[tuple[str, ...]] = []
    modes = list(dict.fromkeys(report.mode for report in reports))
    for mode in modes:
        in_mode = {
            report.backend: report
            for report in reports
            if report.mode == mode and report.available and report.results
        }
        names = sorted(in_mode)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                results = {result.case_id: result for result in in_mode[second].results}
                both = [
                    (result, results[result.case_id])
                    for result in in_mode[first].results
                    if result.case_id in results
                    and result.output
                    and results[result.case_id].output
                ]
                same = sum(identical_outputs(a, b) for a, b in both)
                rows.append((mode, first, second, f"{same}/{len(both)}"))
    if not rows:
        ran = [mode for mode in modes if any(r.mode == mode and r.results for r in reports)]
        return f"pairwise: fewer than two backends ran cases in {_either(ran or modes)} mode"
    return tables.render(("mode", "backend", "backend", "identical cases"), rows)


def _either(words: Sequence[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return " or ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


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
