"""The ``xdrop`` command: bad arguments end it at once (exit 2, one line), results are written
atomically to a path checked before anything runs, a run that checks nothing fails, ``info``
says what runs here, long commands show how far along they are, and every table is drawn one way."""

from __future__ import annotations

import io
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xdrop
from xdrop import benchmarks, cli, kernel, registry, self_check, tables
from xdrop.benchmarks.timing import Timing
from xdrop.conformance import golden

pytestmark = pytest.mark.backend_independent
ROOT = Path(__file__).resolve().parents[1]
BENCH = ["bench", "--backend", "numpy", "--sizes", "16", "--p", "0.5", "--repeats", "1",
         "--dtype", "float32", "--shapes", "fixed"]  # fmt: skip
CONFORMANCE = ["conformance", "--backend", "numpy", "--mode", "eager"]


# the installed ``xdrop`` command, next to this interpreter (``python -m xdrop`` where it is not)
SCRIPT = Path(sys.executable).with_name("xdrop")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "xdrop"]


def xdrop_command(arguments: list[str], **options: object) -> subprocess.CompletedProcess[str]:
    """``xdrop ARGUMENTS`` in a fresh process, as a user types it."""
    return subprocess.run(
        [*COMMAND, *arguments], capture_output=True, text=True, timeout=600, **options
    )  # type: ignore[call-overload]


def run_main(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        status = cli.main(arguments)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize(
    "arguments",
    [
        ["--repeats", "-1"],
        ["--repeats", "0"],
        ["--repeats", "two"],
        ["--repeats", "1001"],
        ["--repeats", "99999999999999999999"],  # a slip that would time for ever
        ["--p", "2"],
        ["--p", "1"],  # the frameworks' scale 1 / (1 - p) is undefined
        ["--p", "nan"],
        ["--p", "-0.1"],
        ["--p", "half"],
        ["--sizes", "0"],
        ["--sizes", "1.5"],
        ["--sizes", "inf"],
        ["--sizes", "ten"],
        ["--direction", "sideways"],
        ["--sizes", "1e20"],  # more memory than any machine has
        ["--path", "nosuch"],
        ["--path", "torch eager"],  # a path, but not of the backend asked for
        ["--direction", "forward+backward"],  # NumPy does not differentiate: nothing to time
        ["--backend", "nope"],
    ],
)
def test_every_bad_bench_argument_exits_2_with_one_line(arguments, capsys):
    status, out, err = run_main([*BENCH, *arguments], capsys)
    assert status == 2
    assert out == ""  # nothing ran
    assert len(err.strip().splitlines()) == 1 and err.startswith("xdrop bench: error: ")


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ([*BENCH, "--path", "nosuch"], "xdrop bench: error: argument --path: 'nosuch'"),
        ([*BENCH, "--sizes", "1e20"], "xdrop bench: error: argument --sizes: 1e+20 elements"),
        ([*CONFORMANCE, "--backend", "nope"], "xdrop conformance: error: unknown backend(s) nope"),
        (
            ["conformance", "--backend", "numpy", "--mode", "compiled"],
            "xdrop conformance: error: argument --mode: compiled mode would check nothing",
        ),
        (["golden"], "xdrop golden: error: "),
        (["golden", "--check", "no-such-file.json"], "xdrop golden: error: "),
        (["golden", ""], "xdrop golden: error: argument FILE: '': an empty name names no file"),
        (["--bogus"], "xdrop: error: unrecognized arguments: --bogus"),
        ([], "xdrop: error: a command is required: one of info, conformance, golden, bench"),
    ],
)
def test_the_installed_command_refuses_bad_arguments_with_one_line(arguments, says, tmp_path):
    result = xdrop_command(arguments, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "" and result.stderr.startswith(says)
    assert len(result.stderr.strip().splitlines()) == 1  # no traceback
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_bench_case_that_cannot_run_fails_the_command(monkeypatch, capsys):
    class Broken(benchmarks.suites.NumpySuite):
        def __init__(self) -> None:
            raise ImportError("no such framework")

    monkeypatch.setitem(benchmarks.SUITES, "numpy", Broken)
    monkeypatch.setattr(benchmarks.runner, "FRESH", False)  # Broken exists in this process only
    status, out, err = run_main(BENCH, capsys)
    assert status == 1 and "not measured" in out
    assert (
        err.splitlines()[-1]
        == "xdrop bench: FAILED: not measured: numpy (ImportError: no such framework)"
    )


def test_a_backend_named_twice_is_checked_once(tmp_path, capsys):
    path = tmp_path / "report.json"
    status, out, _ = run_main([*CONFORMANCE, "--backend", "numpy", "--json", str(path)], capsys)
    assert status == 0 and "(1 checked: numpy;" in out
    runs = json.loads(path.read_text())["runs"]
    assert [(run["backend"], run["mode"]) for run in runs] == [("numpy", "eager")]
    status, out, _ = run_main([*BENCH, "--backend", "numpy", "--path", "numpy"], capsys)
    assert status == 0 and out.count("numpy · numpy · forward · float32 · fixed shapes") == 1


def test_golden_writes_only_where_it_is_told(tmp_path, monkeypatch, capsys):
    shipped = tmp_path / "shipped.json"
    shipped.write_text(golden.GOLDEN_PATH.read_text())
    monkeypatch.setattr(golden, "GOLDEN_PATH", shipped)  # stands for the installed package's file
    before = shipped.stat().st_mtime_ns

    status, out, err = run_main(["golden"], capsys)  # where to? it must be told
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "xdrop golden: error: " in err and "FILE" in err

    target = tmp_path / "out" / "golden.json"
    status, _, err = run_main(["golden", str(target)], capsys)
    assert status == 2 and "does not exist" in err  # its folder is checked first
    target.parent.mkdir()
    status, out, _ = run_main(["golden", str(target)], capsys)
    assert status == 0 and out == f"wrote {len(golden.load()['cases'])} cases to {target}\n"
    assert target.read_text() == shipped.read_text()
    assert shipped.stat().st_mtime_ns == before
    assert sorted(tmp_path.rglob("*")) == [target.parent, target, shipped]

    assert run_main(["golden", "--check", str(target)], capsys)[0] == 0
    target.write_text("{}")
    status, _, err = run_main(["golden", "--check", str(target)], capsys)
    assert status == 1 and f"{target} is out of date" in err


def test_the_installed_golden_command_writes_into_the_folder_it_is_given(tmp_path):
    result = xdrop_command(["golden", "cases.json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cases.json").read_text() == golden.GOLDEN_PATH.read_text()
    assert [path.name for path in tmp_path.iterdir()] == ["cases.json"]


@pytest.mark.parametrize("command", [BENCH, CONFORMANCE])
@pytest.mark.parametrize("where", ["missing folder", "a folder", "no permission"])
def test_a_bad_json_path_fails_before_the_run(command, where, tmp_path, capsys):
    target = {
        "missing folder": tmp_path / "nowhere" / "out.json",
        "a folder": tmp_path,
        "no permission": tmp_path / "locked" / "out.json",
    }[where]
    if where == "no permission":
        target.parent.mkdir()
        target.parent.chmod(0o500)
        if os.access(target.parent, os.W_OK):  # root writes anywhere
            pytest.skip("running as a user who may write anywhere")
    status, out, err = run_main([*command, "--json", str(target)], capsys)
    assert status == 2
    assert out == ""  # checked before the run, not after it
    assert len(err.strip().splitlines()) == 1 and "--json" in err


def test_results_are_written_atomically(tmp_path, capsys, monkeypatch):
    path = tmp_path / "report.json"
    path.write_text("the previous results")

    def fail(*arguments, **keywords):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dump", fail)
    status, _, err = run_main([*CONFORMANCE, "--json", str(path)], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1  # one line, no traceback
    assert err.startswith("xdrop conformance: error: argument --json: could not write ")
    assert "disk full" in err
    assert path.read_text() == "the previous results"  # untouched, and no stray temporary
    assert sorted(tmp_path.iterdir()) == [path]
    monkeypatch.undo()
    capsys.readouterr()
    assert cli.main([*CONFORMANCE, "--json", str(path)]) == 0
    assert json.loads(path.read_text())["passed"] is True


def test_a_conformance_run_that_checks_no_backend_fails(monkeypatch, capsys):
    monkeypatch.setattr(self_check, "is_available", lambda name: False)
    status, out, _ = run_main(["conformance", "--mode", "eager"], capsys)
    assert status == 1
    assert "no backend to check" in out and "all backends conform" not in out


def test_a_backend_whose_every_case_is_skipped_was_not_checked(monkeypatch, capsys):
    from xdrop.conformance import runner

    real = runner.load

    def no_cases() -> dict:
        document = dict(real())
        document["cases"] = []
        return document

    monkeypatch.setattr(runner, "load", no_cases)
    status, out, _ = run_main(CONFORMANCE, capsys)
    assert status == 1
    assert "NOT CHECKED numpy" in out and "FAILED (0 of 1 backends checked)" in out


@pytest.mark.parametrize("mode", ["compiled", "runtime"])
def test_a_mode_that_no_backend_asked_for_runs_is_refused_before_anything_runs(
    mode, tmp_path, capsys
):
    """NumPy has no compiler: alone, the compiled modes would check no case, and a verdict on
    no case is no answer (pytest, too, fails a run that collects no tests)."""
    path = tmp_path / "report.json"
    arguments = ["conformance", "--backend", "numpy", "--mode", mode, "--json", str(path)]
    status, out, err = run_main(arguments, capsys)
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith(
        f"xdrop conformance: error: argument --mode: {mode} mode would check nothing (numpy: no "
    )
    assert "--mode eager or all checks numpy" in err
    assert not path.exists()


def answer_runs(monkeypatch: pytest.MonkeyPatch, runs: dict[tuple[str, str], Any]) -> None:
    """``xdrop conformance`` gets each run from ``runs``: ``(backend, mode)`` to its case
    results, or to the reason it has nothing to run (a backend without a compiler)."""
    from xdrop.conformance.runner import BackendReport

    def run_backend(name, cases=None, progress=None, mode="eager", full=False):
        found = runs[name, mode]
        if isinstance(found, str):
            return BackendReport(name, available=True, mode=mode, reason=found)
        results = [] if cases is not None else list(found)
        return BackendReport(name, available=True, mode=mode, results=results)

    monkeypatch.setattr(cli, "run_backend", run_backend)


def test_a_backend_without_a_compiler_beside_one_that_ran_is_not_named_as_checked(
    monkeypatch, capsys
):
    from xdrop.conformance.runner import CaseResult

    passed = CaseResult("mask/8", "mask", "passed", output=(np.zeros(8, np.uint8),))
    answer_runs(monkeypatch, {("numpy", "compiled"): "no compiler", ("jax", "compiled"): [passed]})
    arguments = ["conformance", "--backend", "numpy", "--backend", "jax", "--mode", "compiled"]
    status, out, _ = run_main([*arguments, "-v"], capsys)
    assert status == 0
    lines = out.splitlines()
    assert "pairwise: fewer than two backends ran cases in compiled mode" in lines
    assert lines[-1] == (
        "conformance: all backends conform (1 checked: jax; 1 cases passed; "
        "nothing checked on numpy compiled (no compiler))"
    )


def test_a_compiled_run_that_skipped_every_case_does_not_conform(monkeypatch, capsys):
    from xdrop.conformance.runner import CaseResult

    skipped = CaseResult("dtypes/float64", "dtypes", "skipped", detail="no float64 here")
    answer_runs(monkeypatch, {("jax", "compiled"): [skipped]})
    status, out, _ = run_main(["conformance", "--backend", "jax", "--mode", "compiled"], capsys)
    assert status == 1 and "conform (" not in out
    assert out == (
        "conformance: FAILED (0 of 1 backends checked); 0 cases passed, 1 skipped; "
        "nothing checked on jax compiled (every case skipped)\n"
    )


def test_the_pairwise_table_compares_backends_in_the_mode_that_ran(monkeypatch, capsys):
    from xdrop.conformance.runner import CaseResult

    def mask(bits: list[int]) -> CaseResult:
        return CaseResult("mask/3", "mask", "passed", output=(np.array(bits, np.uint8),))

    answer_runs(monkeypatch, {
        ("jax", "runtime"): [mask([1, 0, 1])],
        ("tensorflow", "runtime"): [mask([1, 0, 1])],
        ("torch", "runtime"): [mask([1, 1, 1])],
    })  # fmt: skip
    arguments = ["conformance", "--mode", "runtime", "-v"]
    arguments += ["--backend", "jax", "--backend", "tensorflow", "--backend", "torch"]
    status, out, _ = run_main(arguments, capsys)
    assert status == 0
    rows = [line.split() for line in out.splitlines() if line.startswith("runtime ")]
    assert rows == [
        ["runtime", "jax", "tensorflow", "1/1"],
        ["runtime", "jax", "torch", "0/1"],
        ["runtime", "tensorflow", "torch", "0/1"],
    ]


def test_an_unknown_backend_is_a_usage_error(capsys):
    status, _, err = run_main(["conformance", "--backend", "nope"], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1


def test_the_source_tree_finds_the_installed_backends(tmp_path):
    """From the checkout root, ``import xdrop`` finds the source folder (README: ``pip install .``
    then ``xdrop conformance``). Emulated here by dropping an editable install's finder and
    putting the checkout first on ``sys.path``, as ``python -c`` run from the root does, with no
    ``XDROP_BACKEND``."""
    code = (
        "import sys\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in "
        "getattr(f, '__module__', '')]\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import numpy as np, xdrop, xdrop.cli, xdrop.backends.numpy as module\n"
        "print(xdrop.__file__.startswith(sys.path[0]))\n"
        "print(xdrop.available_backends()['numpy'])\n"
        "print(xdrop.dropout(np.ones(4, np.float32), 0.5, seed=0).tolist())\n"
        "print(module is sys.modules['xdrop.backends.numpy'], "
        "type(xdrop.registry.load('numpy')).__module__)\n"
        "try:\n"
        "    import backends.numpy\n"
        "except ImportError as error:\n"
        "    print('refused:', error)\n"
        "sys.exit(xdrop.cli.main(['conformance', '--backend', 'numpy', '--mode', 'eager']))\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "XDROP_BACKEND"}
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == ["True", "True", "[0.0, 0.0, 2.0, 2.0]", "True xdrop.backends.numpy"]
    assert lines[4].startswith("refused: backends/ is the package xdrop.backends")
    assert "all backends conform" in result.stdout


def test_the_json_report_gives_each_skipped_case_its_reason():
    from xdrop.conformance.runner import BackendReport, CaseResult

    report = BackendReport("jax", available=True, results=[
        CaseResult("a", "inverted", "passed"),
        CaseResult("b", "inverted", "skipped", detail="float64 arrays need jax_enable_x64"),
    ])  # fmt: skip
    (run,) = cli._document([report], passed=True)["runs"]
    assert run["skipped"] == [{"case": "b", "reason": "float64 arrays need jax_enable_x64"}]


def test_ci_runs_the_backend_independent_tests_once():
    script = (ROOT / ".ci" / "run").read_text()
    first, loop = script.split("for backend in", 1)
    assert "python -m pytest" in first and "-m " not in first.split("python -m pytest", 1)[1][:40]
    assert 'python -m pytest -q -m "not backend_independent"' in loop.split("done", 1)[0]


def test_a_reader_that_closes_the_output_ends_the_command_quietly():
    """``xdrop info | head -1``: the reader goes away, the command stops without a traceback,
    with the status of a command that SIGPIPE ended."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the command writes its first line
    try:
        result = subprocess.run(
            [*COMMAND, "info"], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=600
        )
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


def test_help_is_plain_text_with_the_version(capsys):
    status, out, _ = run_main(["--help"], capsys)
    assert status == 0
    assert "``" not in out and ":func:" not in out and ":mod:" not in out
    assert "info" in out and "conformance" in out and "bench" in out
    status, out, _ = run_main(["--version"], capsys)
    assert status == 0 and out == f"xdrop {xdrop.__version__}\n"


def test_info_says_what_runs_here_and_where_each_default_came_from(monkeypatch, capsys):
    monkeypatch.delenv("XDROP_RNG", raising=False)
    monkeypatch.setenv("XDROP_BACKEND", "numpy")
    status, out, _ = run_main(["info"], capsys)
    assert status == 0
    assert out.startswith(f"xdrop {xdrop.__version__} (")
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line[:1].isalpha()}
    assert rows["numpy"][:3] == ["yes", "numpy", np.__version__]  # available, framework version
    assert set(registry.registered_names()) <= set(rows)
    assert "default backend: numpy (from XDROP_BACKEND=numpy)" in out
    assert "generator: portable (XDROP_RNG is not set)" in out
    assert kernel.status() in out

    monkeypatch.setenv("XDROP_BACKEND", "numpi")
    monkeypatch.setenv("XDROP_RNG", "fast")
    status, out, _ = run_main(["info"], capsys)
    assert status == 0  # a bad setting is reported, not raised
    assert "default backend: none: XDROP_BACKEND='numpi' is not a registered backend" in out
    assert "generator: none:" in out and "XDROP_RNG" in out


def test_conformance_piped_prints_its_verdict_alone(capsys):
    status, out, err = run_main(CONFORMANCE, capsys)
    assert status == 0 and err == ""  # no progress where nobody watches it
    count = sum(1 for case in golden.load()["cases"])
    assert out == f"conformance: all backends conform (1 checked: numpy; {count} cases passed)\n"


def test_conformance_verbose_prints_each_case_and_the_tables(capsys):
    status, out, _ = run_main([*CONFORMANCE, "--verbose"], capsys)
    assert status == 0
    lines = out.splitlines()
    cases = [case["id"] for case in golden.load()["cases"]]
    assert [line for line in lines if line.startswith("passed ")] == [
        f"passed numpy eager {case}" for case in cases
    ]
    assert kernel.status() in lines and "backend  mode   group" in out
    assert "pairwise: fewer than two backends ran cases in eager mode" in lines
    assert lines[-1].startswith("conformance: all backends conform (1 checked: numpy;")


def test_conformance_on_a_terminal_draws_one_progress_bar():
    """The installed command on a real terminal (a pseudo-terminal): one bar, redrawn in place
    and cleared, then the verdict."""
    pty = pytest.importorskip("pty")
    main_fd, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [*COMMAND, *CONFORMANCE], stdin=terminal, stdout=terminal, stderr=terminal
        )
        os.close(terminal)
        chunks = []
        while True:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # the terminal closed: the command has ended
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=600) == 0
    finally:
        os.close(main_fd)
    shown = b"".join(chunks).decode().replace("\r\n", "\n")
    *drawn, verdict = shown.rstrip("\n").split("\n")
    assert not drawn  # everything before the verdict was redrawn in place, on one line
    assert verdict.startswith("\r\033[K") and "conformance [" in verdict and "100%" in verdict
    assert verdict.endswith("\r\033[Kconformance: all backends conform (1 checked: numpy; "
                            f"{len(golden.load()['cases'])} cases passed)")  # fmt: skip


def test_info_reports_a_bad_xdrop_kernel_instead_of_failing(monkeypatch, capsys):
    monkeypatch.setenv("XDROP_KERNEL", "2")
    kernel.refresh()  # as a new process reads it
    status, out, _ = run_main(["info"], capsys)
    assert status == 0  # a bad setting is reported, as a bad XDROP_BACKEND is
    assert kernel.status() in out
    if kernel.compiled is not None:
        assert "compiled kernel: none: XDROP_KERNEL must be" in out and "'2'" in out


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("XDROP_KERNEL", "2", "XDROP_KERNEL must be"),
        ("XDROP_KERNEL_THREADS", "0", "XDROP_KERNEL_THREADS must be"),
        ("XDROP_RNG", "fast", "XDROP_RNG must be"),
    ],
)
@pytest.mark.parametrize("command", [CONFORMANCE, ["bench", "--backend", "numpy", "--quick"]])
def test_a_bad_setting_is_refused_before_anything_runs(command, variable, value, message, monkeypatch, capsys):  # fmt: skip
    """Every case would fail on it: one line names it, exit status 2, nothing timed or checked."""
    monkeypatch.setenv(variable, value)
    kernel.refresh()  # as a new process reads it
    status, out, err = run_main(command, capsys)
    assert status == 2 and out == ""
    assert f"xdrop {command[0]}: error: {message}" in err and len(err.splitlines()) == 1


def test_progress_piped_is_plain_lines_ending_with_the_total(capsys):
    status, _, err = run_main([*CONFORMANCE, "--verbose"], capsys)
    assert status == 0 and "\r" not in err
    lines = err.splitlines()
    assert 2 <= len(lines) <= 12  # a line per tenth of the cases, not one per case
    total = lines[-1].split("/")[1].split("]")[0]
    assert lines[-1] == f"  [{total}/{total}] numpy eager: cases checked"

    status, _, err = run_main(BENCH, capsys)
    assert status == 0 and "\r" not in err
    case = "numpy forward float32 fixed shapes size 2e+01 p 0.5"  # shapes and dtypes told apart
    assert err.splitlines() == [f"  [0/1] {case}", "  [1/1] numpy: timed"]


def test_progress_on_a_terminal_rewrites_one_line():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = cli.Progress(stream)
    for done in range(3):
        progress.show(f"case {done}", done, 3)
    assert "\n" not in stream.getvalue()  # one line, rewritten in place
    progress.show("all done", 3, 3)
    assert stream.getvalue().endswith("\r\033[K  [3/3] all done\n")
    assert stream.getvalue().count("\r\033[K") == 4


def test_a_table_aligns_its_columns_under_a_rule_of_dashes():
    header = ("name", "cases", "note")
    rows = [("numpy", "12", "all passed"), ("tensorflow", "7", "-")]
    assert tables.render(header, rows).splitlines() == [
        "name        cases  note",
        "-----------------------",
        "numpy       12     all passed",
        "tensorflow  7      -",  # a left-aligned last column is not padded: no trailing spaces
    ]
    assert tables.render(header, rows, align="<>").splitlines() == [
        "name        cases        note",
        "-----------------------------",
        "numpy          12  all passed",
        "tensorflow      7           -",
    ]
    assert tables.render(header, rows, align="><<") == tables.render(header, rows, align="><")
    assert (
        tables.render(header, rows, align="><").splitlines()[2] == "     numpy  12     all passed"
    )


def test_a_table_renders_as_a_markdown_table_too():
    header = ("name", "cases", "note")
    rows = [("numpy", "12", "a | b"), ("tensorflow", "7", "-")]
    assert tables.markdown(header, rows, align="<>").splitlines() == [
        "| name | cases | note |",
        "| :-- | --: | --: |",
        "| numpy | 12 | a \\| b |",  # a bar in a cell is not a column's end
        "| tensorflow | 7 | - |",
    ]
    with pytest.raises(xdrop.ArgumentValueError, match="each row must be 3 cells"):
        tables.markdown(header, [("numpy", "12")])


def test_bench_prints_its_tables_as_markdown_when_asked(capsys):
    # at 1e3 elements, where a target applies (the per-call overhead)
    status, out, _ = run_main([*BENCH, "--path", "numpy", "--sizes", "1e3", "--markdown"], capsys)
    assert status == 0
    lines = out.splitlines()
    title = lines.index("**numpy · numpy · forward · float32 · fixed shapes**")
    assert lines[title + 1] == ""
    assert lines[title + 2].startswith("| size | p | xdrop |")
    assert lines[title + 3].startswith("| :-- | --: | --: |")
    assert lines[title + 4].startswith("| 1e+03 | 0.5 | ")
    assert "| target | limit | worst measured |  |" in lines


def test_the_benchmark_draws_its_tables_the_same_way_in_plain_ascii():
    measurement = benchmarks.Measurement(
        benchmarks.Case("numpy", "numpy", 1000, 0.5),
        {name: Timing(2e-6, (1e-6, 3e-6), 1e-3, 10, [2e-6]) for name in ("xdrop", "framework")},
    )
    text = benchmarks.table(benchmarks.Report([measurement], settings={}))
    title, table = text.split("\n", 1)
    # the title may say more, the table itself is ASCII
    assert title == "numpy · numpy · forward · float32 · fixed shapes"
    assert table.isascii()
    header, rule, row = table.splitlines()
    assert rule == "-" * len(header) and len(row) == len(header)
    assert header.split() == [
        "size",
        "p",
        "xdrop",
        "framework",
        "xdrop/framework",
        "xdrop",
        "1st",
        "call",
    ]
    assert row.split() == ["1e+03", "0.5", "2.0", "us", "2.0", "us", "1.00", "1.00", "ms"]


@pytest.mark.parametrize(
    ("rows", "align", "message"),
    [
        ([("numpy", "12")], "", "align must be"),
        ([("numpy", "12")], "<^", "align must be"),
        ([("numpy",)], "<", "each row must be 2 cells"),
        ([("numpy", "12", "extra")], "<", "each row must be 2 cells"),
    ],
)
def test_a_table_refuses_a_bad_alignment_or_a_ragged_row(rows, align, message):
    with pytest.raises(xdrop.ArgumentValueError, match=message):
        tables.render(("name", "cases"), rows, align=align)


# Files named on the command line: followed through links, written as ``cp`` and ``tee`` write
# them (a regular file replaced whole, a FIFO written into, permissions as the umask allows), and
# every file that cannot be read or written refused with one line and exit status 2.


def run_either(how: str, arguments: list[str], capsys: pytest.CaptureFixture[str], cwd: Path):
    """``xdrop ARGUMENTS`` through :func:`cli.main` or the installed command, from ``cwd``."""
    if how == "command":
        result = xdrop_command(arguments, cwd=cwd)
        return result.returncode, result.stdout, result.stderr
    here = Path.cwd()
    os.chdir(cwd)
    try:
        return run_main(arguments, capsys)
    finally:
        os.chdir(here)


WRITERS = {
    "golden": lambda path: ["golden", path],
    "conformance": lambda path: [*CONFORMANCE, "--json", path],
    "bench": lambda path: [*BENCH, "--json", path],
}


def written_right(command: str, text: str) -> bool:
    """Whether ``text`` is what ``command`` writes: the golden cases, or a JSON report."""
    if command == "golden":
        return text == golden.GOLDEN_PATH.read_text()
    return isinstance(json.loads(text), dict)


@pytest.mark.parametrize("how", ["main", "command"])
@pytest.mark.parametrize("command", sorted(WRITERS))
def test_a_symbolic_link_is_written_through_to_its_target(command, how, tmp_path, capsys):
    target = tmp_path / "results" / "target.json"
    target.parent.mkdir()
    target.write_text("the previous results")
    (tmp_path / "link.json").symlink_to(Path("results") / "target.json")
    status, _, err = run_either(how, WRITERS[command]("link.json"), capsys, tmp_path)
    assert status == 0, err
    assert (tmp_path / "link.json").is_symlink()  # the link stays a link
    assert os.readlink(tmp_path / "link.json") == str(Path("results") / "target.json")
    assert written_right(command, target.read_text())
    assert sorted(path.name for path in tmp_path.rglob("*")) == [
        "link.json",
        "results",
        "target.json",
    ]  # no stray temporary


def test_a_dangling_link_creates_its_target(tmp_path, capsys):
    (tmp_path / "link.json").symlink_to("new.json")
    status, _, err = run_main(["golden", str(tmp_path / "link.json")], capsys)
    assert status == 0, err
    assert (tmp_path / "link.json").is_symlink()
    assert (tmp_path / "new.json").read_text() == golden.GOLDEN_PATH.read_text()


class FifoReader:
    """Reads everything written into the FIFO at ``path``, in a thread. The FIFO is opened here
    (and held open for writing until :meth:`result`), so the command's open does not wait and an
    end of file means the command closed it, or never wrote there."""

    def __init__(self, path: Path) -> None:
        import threading

        os.mkfifo(path)
        self.reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.keeper = os.open(path, os.O_WRONLY)
        os.set_blocking(self.reader, True)
        self.chunks: list[bytes] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while chunk := os.read(self.reader, 65536):
            self.chunks.append(chunk)

    def result(self) -> str:
        os.close(self.keeper)
        self.thread.join(timeout=60)
        os.close(self.reader)
        return b"".join(self.chunks).decode()


@pytest.mark.parametrize("how", ["main", "command"])
@pytest.mark.parametrize("command", sorted(WRITERS))
def test_a_fifo_is_written_into(command, how, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    reader = FifoReader(fifo)
    status, _, err = run_either(how, WRITERS[command]("pipe"), capsys, tmp_path)
    text = reader.result()
    assert status == 0, err
    assert written_right(command, text)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not replaced by a file
    assert [path.name for path in tmp_path.iterdir()] == ["pipe"]


@pytest.mark.parametrize("how", ["main", "command"])
def test_golden_check_reads_a_fifo(how, tmp_path, capsys):
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed() -> None:
        try:
            with open(fifo, "w") as stream:  # waits for the command to open it
                stream.write(golden.GOLDEN_PATH.read_text())
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    status, out, err = run_either(how, ["golden", "--check", "pipe"], capsys, tmp_path)
    if writer.is_alive():  # the command never opened it: let the writer go
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
    writer.join(timeout=60)
    assert (status, out, err) == (0, "pipe matches the reference\n", "")


def test_a_socket_is_refused_and_left_alone(tmp_path, capsys, monkeypatch):
    import socket

    monkeypatch.chdir(tmp_path)  # a short relative name: socket paths are limited to ~100 bytes
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind("sock")
        for command in sorted(WRITERS):
            status, out, err = run_main(WRITERS[command]("sock"), capsys)
            assert status == 2 and out == "", command
            assert len(err.strip().splitlines()) == 1
            assert "'sock' is a socket: name a file, a FIFO or a character device" in err
            assert stat.S_ISSOCK(os.lstat("sock").st_mode)
    finally:
        server.close()


@pytest.mark.parametrize("how", ["main", "command"])
@pytest.mark.parametrize("command", sorted(WRITERS))
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_new_file_gets_the_permissions_the_umask_allows(umask, command, how, tmp_path, capsys):
    previous = os.umask(umask)
    try:
        status, _, err = run_either(how, WRITERS[command]("new.json"), capsys, tmp_path)
    finally:
        os.umask(previous)
    assert status == 0, err
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("command", sorted(WRITERS))
@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_a_replaced_file_keeps_its_permissions(mode, command, tmp_path, capsys):
    path = tmp_path / "old.json"
    path.write_text("the previous results")
    path.chmod(mode)
    status, _, err = run_main(WRITERS[command](str(path)), capsys)
    assert status == 0, err
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert written_right(command, path.read_text())


def test_a_name_as_long_as_the_system_allows_is_written(tmp_path, capsys):
    longest = os.pathconf(tmp_path, "PC_NAME_MAX")
    path = tmp_path / ("a" * (longest - 5) + ".json")
    status, _, err = run_main(["golden", str(path)], capsys)
    assert status == 0, err
    assert [entry.name for entry in tmp_path.iterdir()] == [path.name]


def bad_file(case: str, tmp_path: Path) -> str:
    """A file name (relative to ``tmp_path``) that no command can read or write, set up there."""
    if case == "under a file":
        (tmp_path / "file").write_text("")
        return "file/out.json"
    if case == "a folder":
        (tmp_path / "folder").mkdir()
        return "folder"
    if case == "a link loop":
        (tmp_path / "loop").symlink_to("loop")
        return "loop"
    if case == "a link to a folder":
        (tmp_path / "folder").mkdir()
        (tmp_path / "link").symlink_to("folder")
        return "link"
    assert case == "too long"
    return "a" * 300 + ".json"


BAD_FILES = {
    "under a file": "'file/out.json': 'file' is a file, not a folder",
    "a folder": "'folder' is a folder: name a file",
    "a link loop": "'loop': Too many levels of symbolic links",
    "a link to a folder": "'link' is a folder (through a link to ",
    "too long": ".json': File name too long",
}
FILE_OPTIONS = {
    "golden": (lambda path: ["golden", path], "argument FILE: "),
    "golden --check": (lambda path: ["golden", "--check", path], "argument FILE: "),
    "conformance --json": (lambda path: [*CONFORMANCE, "--json", path], "argument --json: "),
    "bench --json": (lambda path: [*BENCH, "--json", path], "argument --json: "),
}


@pytest.mark.parametrize("how", ["main", "command"])
@pytest.mark.parametrize("option", sorted(FILE_OPTIONS))
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_every_file_option_refuses_a_bad_file_with_one_line(case, option, how, tmp_path, capsys):
    name = bad_file(case, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    arguments, says = FILE_OPTIONS[option]
    status, out, err = run_either(how, arguments(name), capsys, tmp_path)
    assert status == 2, err
    assert out == "" and len(err.strip().splitlines()) == 1  # no traceback
    command = option.split()[0]
    assert err.startswith(f"xdrop {command}: error: {says}")
    assert BAD_FILES[case] in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing replaced


@pytest.mark.parametrize("option", sorted(FILE_OPTIONS))
def test_a_nul_byte_in_a_file_name_is_refused_with_one_line(option, capsys):
    arguments, says = FILE_OPTIONS[option]
    status, out, err = run_main(arguments("out\0.json"), capsys)
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert says in err and "embedded null byte" in err


@pytest.mark.parametrize("how", ["main", "command"])
@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\xff\xfe", "'cases.json' is not UTF-8 text (byte 0xff at offset 0)"),
        (b"", "'cases.json' is not a golden cases file: not JSON (Expecting value"),
        (b'{"cases": [', "'cases.json' is not a golden cases file: not JSON ("),
        (b"[1, 2]", "is not a golden cases file: a JSON object is expected, got an array"),
        (b"null", "is not a golden cases file: a JSON object is expected, got null"),
        (b'{"cases": 3}', "is not a golden cases file: 'cases' must be an array, got a number"),
        (b'{"stream": []}', "'stream' must be a string, got an array"),
        (b'{"cases": [1]}', "is not a golden cases file: each of 'cases' must be an object"),
    ],
)
def test_golden_check_refuses_a_file_that_is_not_golden_cases(content, says, how, tmp_path, capsys):
    (tmp_path / "cases.json").write_bytes(content)
    status, out, err = run_either(how, ["golden", "--check", "cases.json"], capsys, tmp_path)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1  # no traceback
    assert err.startswith("xdrop golden: error: argument FILE: ") and says in err


def test_golden_check_says_a_missing_file_is_missing(tmp_path, capsys):
    status, _, err = run_main(["golden", "--check", str(tmp_path / "none.json")], capsys)
    assert status == 2 and f"{str(tmp_path / 'none.json')!r}: no such file" in err


def test_a_file_name_that_is_not_utf8_is_written_and_named(tmp_path):
    """A name of arbitrary bytes (as Linux allows) is written, and printed with the bytes that
    are not UTF-8 escaped, where printing it as is would fail."""
    environment = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUTF8": "0"}
    result = subprocess.run(
        [*COMMAND, "golden", b"\xff.json"], capture_output=True, cwd=tmp_path, env=environment
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"wrote {len(golden.load()['cases'])} cases to \\udcff.json\n"
    assert os.listdir(os.fsencode(tmp_path)) == [b"\xff.json"]


@pytest.mark.parametrize(
    ("arguments", "option"),
    [
        ([*BENCH, "--p", "2"], "--p"),
        ([*BENCH, "--repeats", "0"], "--repeats"),
        ([*BENCH, "--sizes", "0"], "--sizes"),
        ([*BENCH, "--json", "."], "--json"),
        ([*CONFORMANCE, "--json", "."], "--json"),
        (["golden", "."], "FILE"),
    ],
)
def test_an_error_names_its_option_once(arguments, option, capsys):
    status, _, err = run_main(arguments, capsys)
    assert status == 2
    assert f"error: argument {option}: " in err
    named = re.findall(rf"(?<![\w-]){re.escape(option)}(?![\w-])", err)
    assert len(named) == 1, err  # "argument --p: --p must be ..." said it twice


def test_conformance_help_describes_every_mode(capsys):
    status, out, _ = run_main(["conformance", "--help"], capsys)
    assert status == 0
    described = " ".join(out.split("--mode {eager,compiled,runtime,all}")[-1].split())
    for mode in [*cli.MODES, "all"]:
        assert f"{mode}: " in described or f"{mode} (default): " in described, mode
    assert "sizes known only at run time" in described and "or both" not in described


def test_a_stream_is_written_without_resolving_its_path(tmp_path, capsys, monkeypatch):
    """A shell's ``--json >(jq .)`` names ``/dev/fd/63``, a link to a pipe with no path that
    ``os.path.realpath`` could return (it gives a name that does not exist): a FIFO or device is
    written through the path it was given, whatever realpath makes of it."""
    from xdrop import cli_files

    nowhere = str(tmp_path / "no such folder" / "pipe:[1234]")
    monkeypatch.setattr(cli_files.os.path, "realpath", lambda path: nowhere)
    reader = FifoReader(tmp_path / "pipe")
    status, _, err = run_main(["golden", str(tmp_path / "pipe")], capsys)
    assert (status, err) == (0, "")
    assert reader.result() == golden.GOLDEN_PATH.read_text()
