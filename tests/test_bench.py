"""Smoke tests of the benchmark at tiny sizes: it runs and reports what it should. No timings are
checked (the machines that run tests are shared and noisy)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from xdrop import benchmarks, registry
from xdrop.benchmarks import figure, gate
from xdrop.benchmarks.suites import (
    BACKWARD,
    BFLOAT16,
    CHANGING,
    COPY,
    FIXED,
    FLOAT32,
    FORWARD,
    FRAMEWORK,
    NATIVE,
    SHAPE_POOL,
    XDROP,
    Case,
    shapes,
)
from xdrop.benchmarks.timing import Timing
from xdrop.cli import main

ROOT = Path(__file__).resolve().parents[1]
# the installed ``xdrop`` command, next to this interpreter (``python -m xdrop`` where it is not)
SCRIPT = Path(sys.executable).with_name("xdrop")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "xdrop"]


@pytest.mark.backend_independent
def test_cli_bench_writes_a_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    arguments = ["bench", "--backend", "numpy", "--sizes", "16,1e3", "--p", "0.5", "--repeats", "2"]
    arguments += ["--dtype", "float32", "--shapes", "fixed"]
    assert main([*arguments, "--json", str(path)]) == 0
    output = capsys.readouterr().out
    assert "numpy · numpy · forward · float32 · fixed shapes" in output
    assert "xdrop/framework" in output
    document = json.loads(path.read_text())
    assert document["schema"] == 1
    assert document["machine"]["cores"] >= 1 and document["versions"]["numpy"]
    assert [(m["size"], m["p"]) for m in document["measurements"]] == [(16, 0.5), (1000, 0.5)]
    assert {(m["dtype"], m["shapes"]) for m in document["measurements"]} == {(FLOAT32, FIXED)}
    for measurement in document["measurements"]:
        assert set(measurement["contenders"]) == {XDROP, NATIVE, FRAMEWORK, COPY}
        for timing in measurement["contenders"].values():
            assert len(timing["samples_seconds"]) == 2
            assert timing["median_seconds"] > 0 and timing["first_call_seconds"] > 0
        assert set(measurement["ratios"]) >= {"xdrop/framework", "native/framework", "xdrop/copy"}
        assert all(math.isfinite(ratio) and ratio > 0 for ratio in measurement["ratios"].values())
        assert measurement["memory_bytes_per_element"][XDROP] > 0
    (target,) = document["targets"]  # only the overhead at 1e3 applies to these sizes
    assert target["name"] == "per-call overhead at 1e3, numpy" and target["cases"] == 1
    assert target["worst"] > 0 and target["met"] is (target["worst"] <= target["limit"])


@pytest.mark.backend_independent
def test_cases_that_no_target_covers_say_so_instead_of_an_empty_table(capsys):
    pytest.importorskip("ml_dtypes")  # NumPy's bfloat16
    arguments = ["bench", "--backend", "numpy", "--sizes", "16", "--p", "0.5", "--repeats", "1"]
    assert main([*arguments, "--dtype", "bfloat16", "--shapes", "changing"]) == 0
    output = capsys.readouterr().out
    assert "No target covers the cases measured (docs/performance.md#targets)." in output
    assert "worst measured" not in output


@pytest.mark.backend_independent
def test_a_target_is_met_exactly_when_its_worst_value_is_within_its_limit(monkeypatch):
    report = benchmarks.run(
        backends=["numpy"], sizes=[1000], rates=[0.5], repeats=1, dtypes=[FLOAT32], shapes=[FIXED]
    )
    (result,) = benchmarks.check_targets(report)
    index, target = next(
        (i, t) for i, t in enumerate(benchmarks.report.TARGETS) if t.name == result.name
    )
    for limit, met in ((result.worst * 2, True), (result.worst / 2, False)):
        moved = dataclasses.replace(target, limit=limit)
        targets = benchmarks.report.TARGETS
        monkeypatch.setattr(
            benchmarks.report, "TARGETS", (*targets[:index], moved, *targets[index + 1 :])
        )
        (checked,) = benchmarks.check_targets(report)
        assert checked.met is met and checked.limit == limit


@pytest.mark.backend_independent
def test_the_one_command_runs_the_benchmark(tmp_path):
    path = tmp_path / "bench.json"
    command = [*COMMAND, "bench", "--backend", "numpy"]
    command += ["--sizes", "32", "--p", "0.1", "--repeats", "1", "--json", str(path)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    measured = json.loads(path.read_text())["measurements"]
    assert {m["size"] for m in measured} == {32}
    # by default both dtypes, on one shape and on changing shapes
    variants = [(m["dtype"], m["shapes"]) for m in measured]
    assert variants == [(d, s) for d in (FLOAT32, BFLOAT16) for s in (FIXED, CHANGING)]


@pytest.mark.backend_independent
def test_the_churn_benchmark_runs_from_the_package():
    command = [sys.executable, "-m", "xdrop.benchmarks.churn", "--quick", "--backends", "numpy"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split()[0] for line in run.stdout.splitlines()[1:-1]]
    assert rows == ["numpy"] * 3  # rates, shapes, memory: only the framework asked for
    refused = subprocess.run([*command[:-1], "nope"], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and refused.stderr.splitlines()[-1].endswith(
        "argument --backends: unknown 'nope'; known: numpy, torch, tensorflow, jax"
    )


def run_bandwidth(*arguments: str) -> subprocess.CompletedProcess[str]:
    """The bandwidth benchmark, ``--quick`` and one round, with ``arguments`` (skipped where the
    compiled kernel is not built)."""
    command = [sys.executable, "-m", "xdrop.benchmarks.bandwidth", "--quick", "--repeats", "1"]
    run = subprocess.run([*command, *arguments], capture_output=True, text=True, timeout=300)
    if "the compiled kernel is not built here" in run.stderr:
        pytest.skip("the compiled kernel is not built")
    return run


@pytest.mark.backend_independent
def test_the_bandwidth_benchmark_runs_from_the_package():
    run = run_bandwidth("--sizes", "1000", "--threads", "2", "--backends", "numpy")
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split()[:4] for line in run.stdout.splitlines()[2:10]]
    assert rows == [
        ["numpy", "1e+03", contender, threads]
        for contender in ("kernel", "kernel+mask", "xdrop.dropout", "copy")
        for threads in ("1", "2")
    ]
    assert "kernel on 2 threads over 1 thread" in run.stdout
    refused = run_bandwidth("--sizes", "1000", "--backends", "numpy", "--threads", "0")
    assert refused.returncode == 2 and refused.stderr.splitlines()[-1].endswith(
        "argument --threads: count must be an integer from 1 to 256, or None, got 0"
    )


@pytest.mark.backend_independent
def test_the_bandwidth_benchmark_times_the_kernel_after_a_torch_operation():
    """On one thread against two at the sizes asked, then at the kernel's threads' grain against
    torch's threads' own, at sizes around the latter (not on one thread: nothing splits)."""
    from xdrop import kernel

    pytest.importorskip("torch")
    run = run_bandwidth("--sizes", "1e5", "--threads", "2", "--backends", "torch")
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    after = lines.index(
        "x + 1 then xdrop.dropout(x), torch float32, torch.set_num_threads(2); "
        "dropout: the step's time less that of x + 1"
    )
    header, row, _, grain_title, grain_header, *grain_rows = lines[after + 1 :]
    assert header.split() == ["size", "x", "+", "1", "1", "thread", "2", "threads", "speed-up"]
    assert row.split()[0] == "100000" and float(row.split()[-1]) > 0
    assert grain_title == (
        f"As above on 2 threads, torch's threads split above {kernel.OPENMP_GRAIN} elements "
        f"against above {kernel.GRAIN}"
    )
    assert grain_header.split() == [
        "size", "x", "+", "1", str(kernel.GRAIN), str(kernel.OPENMP_GRAIN), "speed-up"
    ]  # fmt: skip
    assert [line.split()[0] for line in grain_rows] == ["49152", "131072"]
    one_thread = run_bandwidth("--sizes", "1e5", "--threads", "1", "--backends", "torch")
    assert one_thread.returncode == 0 and "torch's threads split" not in one_thread.stdout


@pytest.mark.backend_independent
def test_unknown_backend_is_an_error(capsys):
    assert main(["bench", "--backend", "nope", "--sizes", "8"]) == 2
    assert "no benchmark for backend" in capsys.readouterr().err


def test_every_path_of_the_backend_under_test_runs(xp):
    """Each execution path of the backend under test, forward and backward, at a tiny size;
    a slow compiler (torch inductor) is left to ``xdrop bench``."""
    suite = benchmarks.SUITES[xp.name]()
    paths = [p for p in suite.paths if not (xp.compiles_slowly and p in suite.compiled_paths)]
    report = benchmarks.run([xp.name], sizes=[40], rates=[0.3], repeats=1, min_sample=0.0,
                            paths=paths, dtypes=[FLOAT32], shapes=[FIXED])  # fmt: skip
    cases = {(m.case.path, m.case.direction) for m in report.measurements}
    directions = [FORWARD, BACKWARD] if suite.differentiates else [FORWARD]
    assert cases == {(path, direction) for path in paths for direction in directions}
    for measurement in report.measurements:
        assert not measurement.failures.keys() & {XDROP, NATIVE, COPY, "all", "memory"}
        assert {XDROP, NATIVE, COPY} <= measurement.timings.keys()
        assert measurement.ratio(XDROP, COPY) is not None
    assert benchmarks.table(report)
    json.dumps(benchmarks.document(report))


@pytest.mark.backend_independent
def test_unavailable_backends_are_reported_not_raised(monkeypatch):
    def broken() -> benchmarks.suites.Suite:
        raise ImportError("no such framework")

    monkeypatch.setitem(benchmarks.SUITES, "numpy", broken)  # seen here only: run in this process
    report = benchmarks.run(
        ["numpy"], sizes=[8], rates=[0.5], repeats=1, min_sample=0.0, fresh=False,
        dtypes=[FLOAT32], shapes=[FIXED],
    )  # fmt: skip
    assert report.measurements == [] and "no such framework" in report.unavailable["numpy"]
    assert "not measured" in benchmarks.table(report)


@pytest.mark.backend_independent
@pytest.mark.parametrize("name", ["numpy"])
def test_installed_backends_lists_those_with_a_framework(name):
    assert name in benchmarks.installed_backends()
    assert set(benchmarks.installed_backends()) <= set(registry.registered_names())


@pytest.mark.backend_independent
def test_each_path_is_timed_in_a_fresh_process_of_its_own():
    """No path inherits another's caches, staged programs or call counts: each runs in a new
    process, which the measurements name."""
    pytest.importorskip("jax")
    paths = ["jax eager", "jax.jit"]
    report = benchmarks.run(["jax"], sizes=[16, 32], rates=[0.5], repeats=1, min_sample=0.0,
                            paths=paths, directions=[FORWARD], dtypes=[FLOAT32],
                            shapes=[FIXED])  # fmt: skip
    pids = {path: {m.pid for m in report.measurements if m.case.path == path} for path in paths}
    assert all(len(found) == 1 for found in pids.values()), pids  # one process per path
    (eager,), (jitted,) = pids.values()
    assert eager != jitted and os.getpid() not in (eager, jitted)
    assert all(not m.failures and XDROP in m.timings for m in report.measurements)
    document = benchmarks.document(report)
    assert [m["pid"] for m in document["measurements"]] == [eager, eager, jitted, jitted]


def _measured(case: Case, ratio: float, numerator: str = XDROP, denominator: str = FRAMEWORK):
    """A measurement of ``case`` whose paired ratio is ``ratio``."""

    def timing(seconds: float) -> Timing:
        return Timing(seconds, (seconds, seconds), seconds, 1, [seconds] * 3)

    timings = {numerator: timing(ratio * 1e-3), denominator: timing(1e-3)}
    return benchmarks.Measurement(case, timings, pid=1234)


def _gate(name: str) -> gate.Gate:
    (found,) = gate.gates([name])
    return found


@pytest.mark.backend_independent
def test_the_gate_fails_a_ratio_above_twice_its_target_and_names_the_path():
    graph = _gate("tf.function vs tf.nn.dropout")
    assert graph.limit == gate.MARGIN * graph.target.limit == 2 * 0.6
    assert graph.case() == Case("tensorflow", "tf.function", gate.SIZE, gate.RATE)
    within = gate.evaluate(graph, [_measured(graph.case(), 1.19)])
    assert within.passed and within.pid == 1234
    above = gate.evaluate(graph, [_measured(graph.case(), 4.7)])  # the old staged-step bug
    assert not above.passed and above.ratio == pytest.approx(4.7)
    assert above.line().startswith("tf.function (tf.function vs tf.nn.dropout): ")
    assert "4.70" in above.line() and "1.2" in above.line()
    eager = dataclasses.replace(graph.case(), path="tf eager")
    missing = gate.evaluate(graph, [_measured(eager, 0.1)])  # another path is no answer
    assert not missing.passed and "not timed" in missing.line()


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    ("name", "variant"),
    [
        ("tf.function forward+backward vs tf.nn.dropout", {"direction": BACKWARD}),
        ("torch eager bfloat16 vs F.dropout", {"dtype": BFLOAT16}),
        ("TF eager, changing shapes, vs tf.nn.dropout", {"shapes": CHANGING}),
    ],
)
def test_a_gate_on_a_direction_dtype_or_shape_mode_judges_only_that_case(name, variant):
    checked = _gate(name)
    case = checked.case()
    assert {key: getattr(case, key) for key in variant} == variant
    limit = checked.limit
    assert gate.evaluate(checked, [_measured(case, limit * 0.99)]).passed
    above = gate.evaluate(checked, [_measured(case, limit * 1.01)])
    assert not above.passed and ", ".join(str(v) for v in variant.values()) in above.line()
    # the same path forward, in float32, on one shape does not answer for it
    plain = Case(case.backend, case.path, case.size, case.p)
    assert not gate.evaluate(checked, [_measured(plain, 0.1)]).passed


@pytest.mark.backend_independent
def test_a_gate_on_the_overhead_at_1e3_times_1e3_elements():
    overhead = _gate("per-call overhead at 1e3, numpy")
    assert overhead.size == 10**3 and overhead.case().size == 10**3
    assert gate.evaluate(overhead, [_measured(overhead.case(), 1.0)]).passed
    large = dataclasses.replace(overhead.case(), size=gate.SIZE)
    assert not gate.evaluate(overhead, [_measured(large, 1.0)]).passed  # not timed


@pytest.mark.backend_independent
def test_the_gate_covers_the_paths_users_take_each_in_its_own_run(monkeypatch, capsys):
    gated = {
        (g.backend, g.target.path, g.target.numerator, g.target.direction, g.target.dtype,
         g.target.shapes, g.size)
        for g in gate.gates()
    }  # fmt: skip
    plain = (FORWARD, FLOAT32, FIXED, 10**6)
    assert gated == {
        ("numpy", "numpy", XDROP, *plain),
        ("torch", "torch eager", XDROP, *plain),
        ("torch", "torch eager", NATIVE, *plain),
        ("torch", "torch.compile", XDROP, *plain),
        ("tensorflow", "tf eager", XDROP, *plain),
        ("tensorflow", "tf.function", XDROP, *plain),  # the first call is inside tf.function
        ("tensorflow", "tf.function(input_signature)", XDROP, *plain),  # a None dimension
        ("tensorflow", "tf.function(jit_compile)", XDROP, *plain),
        ("jax", "jax.jit", XDROP, *plain),
        ("jax", "jax eager", XDROP, *plain),
        # training steps: the gradient's pass too
        ("torch", "torch eager", XDROP, BACKWARD, FLOAT32, FIXED, 10**6),
        ("tensorflow", "tf.function", XDROP, BACKWARD, FLOAT32, FIXED, 10**6),
        # mixed precision
        ("torch", "torch eager", XDROP, FORWARD, BFLOAT16, FIXED, 10**6),
        ("jax", "jax.jit", XDROP, FORWARD, BFLOAT16, FIXED, 10**6),
        # dynamic padding: a new shape on every call
        ("tensorflow", "tf eager", XDROP, FORWARD, FLOAT32, CHANGING, 10**6),
        # the per-call overhead of the eager kernel paths
        ("numpy", "numpy", XDROP, FORWARD, FLOAT32, FIXED, 10**3),
        ("torch", "torch eager", XDROP, FORWARD, FLOAT32, FIXED, 10**3),
        ("tensorflow", "tf eager", XDROP, FORWARD, FLOAT32, FIXED, 10**3),
    }
    regressed = {("tf.function", FORWARD): 4.7, ("jax eager", FORWARD): 2.5,
                 ("tf.function", BACKWARD): 8.5}  # fmt: skip
    runs = []

    def fabricated(backends, **options):
        runs.append((backends, options))
        assert options.get("fresh", True)  # the runner's default: a new process per path
        (path,), (direction,), (dtype,), (mode,) = (
            options["paths"], options["directions"], options["dtypes"], options["shapes"]
        )  # fmt: skip
        (size,), (rate,) = options["sizes"], options["rates"]
        case = Case(backends[0], path, size, rate, direction, dtype, mode)
        numerator, denominator = options["contenders"]
        ratio = regressed.get((path, direction), 0.3)
        measured = _measured(case, ratio, numerator, denominator)
        return benchmarks.Report([measured], {}, machine={"load_before": None})

    monkeypatch.setattr(gate, "run", fabricated)
    monkeypatch.setattr(gate, "installed_backends", lambda: ["numpy", "torch", "tensorflow", "jax"])
    assert main(["bench", "--check"]) == 1
    assert len(runs) == len(gated) and all(len(backends) == 1 for backends, _ in runs)
    sizes = sorted(size for *_, size in gated)
    assert sorted(size for _, o in runs for size in o["sizes"]) == sizes
    assert all(o["rates"] == [0.5] for _, o in runs)
    captured = capsys.readouterr()
    failed = [line for line in captured.err.splitlines() if "FAILED" in line]
    assert len(failed) == 3
    assert failed[0].startswith("xdrop bench --check: FAILED: tf.function (tf.function vs ")
    assert failed[1].startswith("xdrop bench --check: FAILED: jax eager (")
    assert failed[2].startswith(
        "xdrop bench --check: FAILED: tf.function (tf.function forward+backward vs "
    )
    assert "8.50" in failed[2] and "forward+backward" in failed[2]
    assert captured.out.count("passed") == len(gated) - 3
    for case in ("1e+06, forward+backward", "1e+06, bfloat16", "1e+06, changing shapes"):
        assert case in captured.out  # the table tells a path's gates apart
    regressed.clear()
    assert main(["bench", "--check", "--backend", "jax"]) == 0
    jax_runs = [(o["paths"], o["dtypes"]) for _, o in runs[len(gated) :]]
    assert jax_runs == [(["jax.jit"], [FLOAT32]), (["jax eager"], [FLOAT32]),
                        (["jax.jit"], [BFLOAT16])]  # fmt: skip


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    "option", [["--sizes", "1e3"], ["--dtype", "bfloat16"], ["--shapes", "changing"]]
)
def test_the_gate_refuses_options_that_would_change_its_cases(capsys, option):
    assert main(["bench", "--check", *option]) == 2
    assert f"{option[0]} cannot be given with it" in capsys.readouterr().err


@pytest.mark.backend_independent
@pytest.mark.parametrize("size", [1, 40, 10**3, 10**6, 10**7])
def test_changing_shapes_are_distinct_shapes_of_about_the_same_size(size):
    assert shapes(Case("numpy", "numpy", size, 0.5)) == [(size,)]
    pool = shapes(Case("numpy", "numpy", size, 0.5, shapes=CHANGING))
    assert len(pool) == SHAPE_POOL and all(len(shape) == 2 for shape in pool)
    assert len({shape[1] for shape in pool}) == 1  # the hidden width stays; the rows change
    if size >= SHAPE_POOL:
        assert len(set(pool)) == SHAPE_POOL  # each call a shape unlike the last
    for rows, width in pool:
        assert rows >= 1 and abs(rows * width - size) <= max(0.07 * size, width * SHAPE_POOL)


def test_every_path_runs_in_bfloat16_and_on_changing_shapes(xp, monkeypatch):
    """Each execution path of the backend under test in bfloat16, and on a new shape per call,
    forward and backward, in this process (``fresh=False``; processes are tested above), with
    three shapes to a pool (compiling eight per contender is left to ``xdrop bench``)."""
    monkeypatch.setattr(benchmarks.suites, "SHAPE_POOL", 3)
    suite = benchmarks.SUITES[xp.name]()
    paths = [p for p in suite.paths if not (xp.compiles_slowly and p in suite.compiled_paths)]
    options = {"sizes": [40], "rates": [0.3], "repeats": 1, "min_sample": 0.0, "paths": paths,
               "fresh": False}  # fmt: skip
    bfloat16 = benchmarks.run([xp.name], dtypes=[BFLOAT16], shapes=[FIXED], **options)
    changing = benchmarks.run([xp.name], dtypes=[FLOAT32], shapes=[CHANGING], **options)
    measurements = bfloat16.measurements + changing.measurements
    variants = {(m.case.path, m.case.direction, m.case.dtype, m.case.shapes)
                for m in measurements}  # fmt: skip
    directions = [FORWARD, BACKWARD] if suite.differentiates else [FORWARD]
    assert variants == {
        (path, direction, dtype, mode)
        for path in paths for direction in directions
        for dtype, mode in ((BFLOAT16, FIXED), (FLOAT32, CHANGING))
    }  # fmt: skip
    for measurement in measurements:
        assert not measurement.failures.keys() & {XDROP, NATIVE, COPY, "all", "memory"}, (
            measurement.case, measurement.failures
        )  # fmt: skip
        assert {XDROP, NATIVE, COPY} <= measurement.timings.keys()
    assert f"{paths[0]} · forward · bfloat16 · fixed shapes" in benchmarks.table(bfloat16)
    assert f"{paths[0]} · forward · float32 · changing shapes" in benchmarks.table(changing)


@pytest.mark.backend_independent
def test_each_direction_dtype_and_shape_mode_gets_a_process_of_its_own():
    report = benchmarks.run(["numpy"], sizes=[16, 32], rates=[0.5], repeats=1, min_sample=0.0,
                            dtypes=[FLOAT32, BFLOAT16], shapes=[FIXED, CHANGING])  # fmt: skip
    pids: dict[tuple[str, str], set[int | None]] = {}
    for measurement in report.measurements:
        pids.setdefault((measurement.case.dtype, measurement.case.shapes), set()).add(
            measurement.pid
        )
    assert len(pids) == 4 and all(len(found) == 1 for found in pids.values())
    assert len({pid for found in pids.values() for pid in found}) == 4


@pytest.mark.backend_independent
def test_the_figure_is_drawn_from_the_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    arguments = ["bench", "--backend", "numpy", "--sizes", "16,64", "--p", "0.5", "--repeats", "1"]
    assert main([*arguments, "--shapes", "fixed", "--figure", str(path)]) == 0
    assert path.read_bytes().startswith(b"\x89PNG")
    capsys.readouterr()
    assert main([*arguments, "--figure", str(tmp_path / "no" / "such" / "folder.png")]) == 2
    assert "argument --figure" in capsys.readouterr().err


@pytest.mark.backend_independent
def test_a_figure_that_cannot_be_written_at_the_end_exits_2_with_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(saved_run_with(lambda saved: None)))
    full = tmp_path / "full.png"
    full.symlink_to("/dev/full")  # a device the check lets through, which refuses every byte
    assert main(["bench", "--load", str(saved), "--figure", str(full)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xdrop bench: error: argument --figure: could not write {str(full)!r}")
    assert len(err.splitlines()) == 1  # no traceback


@pytest.mark.backend_independent
def test_json_and_figure_naming_one_file_are_refused_before_anything_runs(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps(saved_run_with(lambda saved: None)))
    path = tmp_path / "out.png"
    (tmp_path / "link.png").symlink_to(path)
    for figure_path in (path, tmp_path / "link.png", tmp_path / "." / "out.png"):
        command = ["bench", "--load", str(saved), "--json", str(path), "--figure", str(figure_path)]
        assert main(command) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and not path.exists()
        assert "argument --figure: " in captured.err and "is the file of --json too" in captured.err


@pytest.mark.backend_independent
def test_the_figure_has_a_panel_per_direction_dtype_and_shape_mode(tmp_path):
    pytest.importorskip("matplotlib")
    case = Case("torch", "torch eager", 10**6, 0.5)
    variants = [
        case,
        dataclasses.replace(case, direction=BACKWARD),
        dataclasses.replace(case, dtype=BFLOAT16),
        dataclasses.replace(case, shapes=CHANGING),
        dataclasses.replace(case, path="torch.compile", size=10**7),
    ]
    report = benchmarks.Report([_measured(v, 0.25) for v in variants], {})
    ratios = figure.ratios(report)
    assert len(ratios) == len(variants) and all(
        value == pytest.approx(0.25) for by_size in ratios.values() for value in by_size.values()
    )
    assert ratios["torch · torch eager · forward · bfloat16 · fixed shapes"] == {
        10**6: pytest.approx(0.25)
    }
    drawn = figure.draw(ratios, tmp_path / "ratios.png")
    assert drawn.read_bytes().startswith(b"\x89PNG")


@pytest.mark.backend_independent
def test_saved_runs_are_loaded_merged_and_shown_again_without_timing(tmp_path, capsys):
    runs = []
    for rate in ("0.1", "0.5"):
        path = tmp_path / f"p{rate}.json"
        arguments = ["bench", "--backend", "numpy", "--sizes", "16", "--p", rate, "--repeats", "1"]
        assert main([*arguments, "--dtype", "float32", "--json", str(path)]) == 0
        runs.append(path)
    timed = capsys.readouterr().out
    merged = tmp_path / "merged.json"
    runs.reverse()  # p = 0.5 first: the tables still list their rows by size and rate
    shown = ["bench", "--load", str(runs[0]), "--load", str(runs[1])]
    assert main([*shown, "--markdown", "--json", str(merged)]) == 0
    output = capsys.readouterr().out
    fixed = output.split("**numpy · numpy · forward · float32 · fixed shapes**")[1]
    assert "**numpy · numpy · forward · float32 · changing shapes**" in fixed
    rows = fixed.split("**")[0].splitlines()
    assert [row.split(" | ")[1] for row in rows if row.startswith("| 2e+01")] == ["0.1", "0.5"]
    document = json.loads(merged.read_text())
    assert [(m["p"], m["shapes"]) for m in document["measurements"]] == [
        (0.5, FIXED), (0.5, CHANGING), (0.1, FIXED), (0.1, CHANGING)
    ]  # fmt: skip
    originals = [m for path in runs for m in json.loads(path.read_text())["measurements"]]
    assert document["measurements"] == originals  # the same numbers, nothing timed again
    assert timed.count(" · ") == 2 * output.count(" · ")  # two runs' tables merged into one each
    if importlib.util.find_spec("matplotlib"):
        assert main([*shown, "--figure", str(tmp_path / "merged.png")]) == 0
        assert (tmp_path / "merged.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.backend_independent
def test_a_case_loaded_from_several_runs_is_taken_from_the_last(tmp_path, capsys):
    arguments = ["bench", "--backend", "numpy", "--sizes", "16", "--p", "0.5", "--repeats", "1"]
    arguments += ["--dtype", "float32", "--shapes", "fixed"]
    runs = [tmp_path / "first.json", tmp_path / "rerun.json"]
    for path in runs:
        assert main([*arguments, "--json", str(path)]) == 0
    capsys.readouterr()
    merged = tmp_path / "merged.json"
    assert (
        main(["bench", "--load", str(runs[0]), "--load", str(runs[1]), "--json", str(merged)]) == 0
    )
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("2e+01")]
    assert len(rows) == 1  # one row for the case, not one per file
    (measurement,) = json.loads(merged.read_text())["measurements"]
    (rerun,) = json.loads(runs[1].read_text())["measurements"]
    assert measurement == rerun  # its own process's pid and timings


@pytest.mark.backend_independent
def test_loading_refuses_what_is_not_a_saved_run_and_timing_options(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not json")
    assert main(["bench", "--load", str(text)]) == 2
    assert "argument --load:" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": 99, "measurements": []}))
    assert main(["bench", "--load", str(other)]) == 2
    assert "schema 1" in capsys.readouterr().err
    assert main(["bench", "--load", str(other), "--sizes", "1e3"]) == 2
    assert "--sizes cannot be given with it" in capsys.readouterr().err


@pytest.mark.backend_independent
def test_a_contender_that_fails_after_its_first_call_is_reported_and_the_others_timed():
    """On changing shapes a compiler may fail at the first new shape, after a first call that
    worked: the failure takes the contender's place in the table, as a first call's would."""
    from xdrop.benchmarks.timing import time_interleaved

    calls = iter(range(100))

    def fails_second() -> None:
        if next(calls) > 0:
            raise RuntimeError("SymIntArrayRef expected to contain only concrete integers")

    timings, failures = time_interleaved(
        {XDROP: lambda: None, NATIVE: fails_second}, repeats=2, min_sample=0.0, warmup=3
    )
    assert list(timings) == [XDROP] and len(timings[XDROP].samples) == 2
    assert failures == {NATIVE: "RuntimeError: SymIntArrayRef expected to contain only concrete "
                                "integers"}  # fmt: skip


@pytest.mark.backend_independent
@pytest.mark.parametrize("name", ["ratios.txt", "ratios", "ratios."])
def test_a_figure_in_a_format_matplotlib_does_not_write_is_refused_before_anything_runs(
    name, tmp_path, capsys
):
    pytest.importorskip("matplotlib")  # without it --figure is refused for that
    arguments = ["bench", "--backend", "numpy", "--sizes", "16", "--p", "0.5", "--repeats", "1"]
    assert main([*arguments, "--figure", str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1  # nothing timed
    assert captured.err.startswith(
        f"xdrop bench: error: argument --figure: {str(tmp_path / name)!r}"
    )
    assert ".png, .pdf, .svg" in captured.err
    assert not list(tmp_path.iterdir())  # matplotlib would have written ratios.png


@pytest.mark.backend_independent
@pytest.mark.parametrize("suffix", figure.FORMATS)
def test_the_figure_is_drawn_in_every_format_its_suffix_may_name(suffix, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    from matplotlib.backend_bases import FigureCanvasBase

    assert suffix in FigureCanvasBase.get_supported_filetypes(), matplotlib.__version__
    path = tmp_path / f"ratios.{suffix.upper()}"  # the suffix in any case, as matplotlib reads it
    figure.draw({"numpy · numpy · forward · float32 · fixed shapes": {10**3: 0.5}}, path)
    assert path.stat().st_size > 0 and [entry.name for entry in tmp_path.iterdir()] == [path.name]


def saved_run_with(change: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    """A run as ``xdrop bench --json`` saves it, one case of two contenders, then ``change``d."""
    timing = {"median_seconds": 1e-5, "quartile_seconds": [1e-5, 1e-5], "first_call_seconds": 1e-3,
              "calls_per_sample": 100, "samples_seconds": [1e-5]}  # fmt: skip
    saved = {
        "schema": 1, "settings": {}, "unavailable": {}, "versions": {"xdrop": "0"},
        "machine": {"kernel": "k", "processor": "p", "cores": 1, "load_before": [0.0]},
        "measurements": [{
            "backend": "numpy", "path": "numpy", "size": 1000, "p": 0.5,
            "contenders": {XDROP: dict(timing), NATIVE: dict(timing)},
            "failures": {}, "memory_bytes_per_element": {}, "pid": 1,
        }],
    }  # fmt: skip
    change(saved)
    return saved


def _case(saved: dict[str, Any]) -> dict[str, Any]:
    return saved["measurements"][0]  # type: ignore[no-any-return]


def _xdrop(saved: dict[str, Any]) -> dict[str, Any]:
    return _case(saved)["contenders"][XDROP]  # type: ignore[no-any-return]


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda s: _case(s).update(size="big"),
         'measurements[0].size must be a whole number in [1, 2**63), got "big"'),
        (lambda s: _case(s).update(size=1.5), "measurements[0].size must be a whole number in [1"),
        (lambda s: _case(s).update(size=10**400), "size must be a whole number in [1, 2**63), got 1"),
        (lambda s: _case(s).update(p="x"), 'measurements[0].p must be a number in [0, 1), got "x"'),
        (lambda s: _case(s).update(p=7.5), "measurements[0].p must be a number in [0, 1), got 7.5"),
        (lambda s: _case(s).update(p=-3), "measurements[0].p must be a number in [0, 1), got -3"),
        (lambda s: _case(s).update(p=1), "measurements[0].p must be a number in [0, 1), got 1"),
        (lambda s: _case(s).update(backend=3), "measurements[0].backend must be a string, got 3"),
        (lambda s: _xdrop(s).update(median_seconds="1"),
         "contenders['xdrop'].median_seconds must be a finite number of seconds > 0, got \"1\""),
        (lambda s: _xdrop(s).update(median_seconds=None),
         "contenders['xdrop'].median_seconds must be a finite number of seconds > 0, got null"),
        (lambda s: _xdrop(s).update(median_seconds=-1), "median_seconds must be a finite number"),
        (lambda s: _xdrop(s).update(median_seconds=0), "median_seconds must be a finite number"),
        (lambda s: _xdrop(s).update(median_seconds=math.nan), "median_seconds must be a finite"),
        (lambda s: _xdrop(s).update(first_call_seconds=math.inf),
         "first_call_seconds must be a finite number of seconds > 0, got Infinity"),
        (lambda s: _xdrop(s).update(quartile_seconds=[1e-5, -1]),
         "quartile_seconds must be an array of two finite numbers of seconds > 0"),
        (lambda s: _case(s).update(memory_bytes_per_element={XDROP: math.nan}),
         "memory_bytes_per_element['xdrop'] must be a finite number >= 0, got NaN"),
        (lambda s: _xdrop(s).pop("first_call_seconds"),
         "measurements[0].contenders['xdrop'].first_call_seconds is missing"),
        (lambda s: _xdrop(s).update(samples_seconds=[0.0]),
         "samples_seconds must be a non-empty array of finite numbers of seconds > 0"),
        (lambda s: _xdrop(s).update(samples_seconds=[math.inf]),
         "samples_seconds must be a non-empty array of finite numbers of seconds > 0"),
        (lambda s: _xdrop(s).update(samples_seconds=[1e-5, 1e-5]),
         "every contender has a sample per round"),
        (lambda s: s.update(measurements=[[1]]),
         "measurements[0] must be an object, got an array"),
        (lambda s: _case(s).update(contenders=[]),
         "measurements[0].contenders must be an object, got an array"),
        (lambda s: s.update(unavailable=[1]), "unavailable must be an object, got an array"),
        (lambda s: s.update(unavailable={"torch": 1}), "unavailable['torch'] must be a string"),
        (lambda s: s["machine"].pop("kernel"), "machine.kernel is missing"),
        (lambda s: s.update(schema=True), "(schema 1) was expected; got schema true"),
    ],
)  # fmt: skip
def test_loading_refuses_a_saved_run_with_a_field_of_the_wrong_kind(change, says, tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(saved_run_with(change)))
    assert main(["bench", "--load", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1  # no traceback
    assert captured.err.startswith(
        f"xdrop bench: error: argument --load: {str(path)!r} is not a benchmark's results: "
    )
    assert says in captured.err


@pytest.mark.backend_independent
def test_loading_shows_a_saved_run_of_the_right_kinds(tmp_path, capsys):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(saved_run_with(lambda saved: None)))
    assert main(["bench", "--load", str(path)]) == 0
    assert "numpy · numpy · forward · float32 · fixed shapes" in capsys.readouterr().out


BANDWIDTH = [sys.executable, "-m", "xdrop.benchmarks.bandwidth", "--backends", "numpy", "--sizes"]


@pytest.mark.backend_independent
@pytest.mark.parametrize(
    ("sizes", "says"),
    [
        ("inf", "a size must be a positive whole number of elements, e.g. 1e6; got 'inf'"),
        ("1.5", "a size must be a positive whole number of elements, e.g. 1e6; got '1.5'"),
        ("1e3,0", "a size must be a positive whole number of elements, e.g. 1e6; got '0'"),
        ("1e30", "1e+30 elements need about"),  # refused as xdrop bench --sizes refuses it
    ],
)
def test_the_bandwidth_benchmark_refuses_a_size_it_cannot_time(sizes, says):
    refused = subprocess.run([*BANDWIDTH, sizes], capture_output=True, text=True, timeout=300)
    if "the compiled kernel is not built here" in refused.stderr:
        pytest.skip("the compiled kernel is not built")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines()[-1].startswith(
        f"python -m xdrop.benchmarks.bandwidth: error: argument --sizes: {says}"
    )


@pytest.mark.backend_independent
def test_the_bandwidth_benchmark_fails_where_a_size_had_too_little_free_memory(monkeypatch, capsys):
    from xdrop import kernel
    from xdrop.benchmarks import bandwidth

    if kernel.compiled is None:
        pytest.skip("the compiled kernel is not built")
    monkeypatch.setattr(bandwidth, "_fits", lambda size, backends: size < 10**4)
    monkeypatch.setattr(bandwidth, "QUICK_SWEEP", (2**10,))
    status = bandwidth.main(
        ["--quick", "--repeats", "1", "--backends", "numpy", "--sizes", "1e3,1e4"]
    )
    captured = capsys.readouterr()
    assert "numpy     1e+04 skipped: not enough free memory" in captured.out
    assert status == 1 and captured.err.endswith(
        "FAILED: not enough free memory to time numpy 1e+04\n"
    )
