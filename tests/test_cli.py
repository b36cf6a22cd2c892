"""The ``xdrop`` command: bad arguments end it at once (exit 2, one line), results are written
atomically to a path checked before anything runs, a run that checks nothing fails, ``info``
says what runs here, long commands show how far along they are, and every table is drawn one way."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import xdrop
from xdrop import benchmarks, cli, kernel, registry, tables
from xdrop.benchmarks.timing import Timing
from xdrop.conformance import golden, self_check

pytestmark = pytest.mark.backend_independent
ROOT = Path(__file__).resolve().parents[1]
BENCH = ["bench", "--backend", "numpy", "--sizes", "16", "--p", "0.5", "--repeats", "1"]
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
        ["--p", "2"],
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
        (["golden"], "xdrop golden: error: "),
        (["golden", "--check", "no-such-file.json"], "xdrop golden: error: "),
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
    assert status == 0 and out.count("numpy · numpy · forward") == 1


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
    with pytest.raises(OSError, match="disk full"):
        cli.main([*CONFORMANCE, "--json", str(path)])
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


def test_an_unknown_backend_is_a_usage_error(capsys):
    status, _, err = run_main(["conformance", "--backend", "nope"], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1


def test_the_source_tree_finds_the_installed_backends(tmp_path):
    """From the checkout root, ``import xdrop`` finds the source folder (README: ``pip install .``
    then ``xdrop conformance``). Emulated here by dropping an editable install's finder and
    putting the checkout first on ``sys.path``, as ``python -c`` run from the root does."""
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
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, cwd=tmp_path,
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
    assert "pairwise: fewer than two backends ran eagerly" in lines
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


def test_progress_piped_is_plain_lines_ending_with_the_total(capsys):
    status, _, err = run_main([*CONFORMANCE, "--verbose"], capsys)
    assert status == 0 and "\r" not in err
    lines = err.splitlines()
    assert 2 <= len(lines) <= 12  # a line per tenth of the cases, not one per case
    total = lines[-1].split("/")[1].split("]")[0]
    assert lines[-1] == f"  [{total}/{total}] numpy eager: cases checked"

    status, _, err = run_main(BENCH, capsys)
    assert status == 0 and "\r" not in err
    assert err.splitlines() == ["  [0/1] numpy forward size 2e+01 p 0.5", "  [1/1] numpy: timed"]


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
    status, out, _ = run_main([*BENCH, "--path", "numpy", "--markdown"], capsys)
    assert status == 0
    lines = out.splitlines()
    title = lines.index("**numpy · numpy · forward**")
    assert lines[title + 1] == ""
    assert lines[title + 2].startswith("| size | p | xdrop |")
    assert lines[title + 3].startswith("| :-- | --: | --: |")
    assert lines[title + 4].startswith("| 2e+01 | 0.5 | ")
    assert "| target | limit | worst measured |  |" in lines


def test_the_benchmark_draws_its_tables_the_same_way_in_plain_ascii():
    measurement = benchmarks.Measurement(
        benchmarks.Case("numpy", "numpy", 1000, 0.5),
        {name: Timing(2e-6, (1e-6, 3e-6), 1e-3, 10, [2e-6]) for name in ("xdrop", "framework")},
    )
    text = benchmarks.table(benchmarks.Report([measurement], settings={}))
    title, table = text.split("\n", 1)
    assert title == "numpy · numpy · forward"  # the title may say more, the table itself is ASCII
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
