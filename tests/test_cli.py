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

pytestmark = pytest.mark.backend_independent
ROOT = Path(__file__).resolve().parents[1]
BENCH = ["bench", "--backend", "numpy", "--sizes", "16", "--p", "0.5", "--repeats", "1"]
CONFORMANCE = ["conformance", "--backend", "numpy", "--mode", "eager"]


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
    ],
)
def test_every_bad_bench_argument_exits_2_with_one_line(arguments, capsys):
    status, out, err = run_main([*BENCH, *arguments], capsys)
    assert status == 2
    assert out == ""  # nothing ran
    assert len(err.strip().splitlines()) == 1 and err.startswith("xdrop bench: error: ")


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
    monkeypatch.setattr(registry, "is_available", lambda name: False)
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


def test_info_reports_a_bad_xdrop_kernel_instead_of_failing(monkeypatch, capsys):
    monkeypatch.setenv("XDROP_KERNEL", "2")
    kernel.refresh()  # as a new process reads it
    status, out, _ = run_main(["info"], capsys)
    assert status == 0  # a bad setting is reported, as a bad XDROP_BACKEND is
    assert kernel.status() in out
    if kernel.compiled is not None:
        assert "compiled kernel: none: XDROP_KERNEL must be" in out and "'2'" in out


def test_progress_piped_is_plain_lines_ending_with_the_total(capsys):
    status, _, err = run_main(CONFORMANCE, capsys)
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
