"""The golden cases: regenerating them changes nothing, and the backend under test passes them all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xdrop import registry
from xdrop.conformance import golden, run_backend
from xdrop.protocol import Backend, FamilyOps, LossOps, NativeGenerator, RateOps, SeedArrays

CASES = golden.load()["cases"]


def test_regenerating_the_golden_cases_changes_nothing():
    assert golden.render(golden.generate()) == golden.GOLDEN_PATH.read_text()


def test_the_golden_cases_cover_the_edges():
    dropout_cases = [case for case in CASES if case["kind"] == "dropout"]
    assert {0.0, 1.0} <= {case["p"] for case in dropout_cases}
    assert {0, 2**64 - 1} <= {case.get("seed") for case in CASES}
    assert any(case.get("offset", 0) > 2**32 for case in CASES)
    assert {"float16", "bfloat16", "float32", "float64"} == {
        case["dtype"] for case in dropout_cases
    }
    assert {False, True} == {case["training"] for case in dropout_cases}
    assert {"inverted", "classic"} == {case["mode"] for case in dropout_cases}
    assert any(case["noise_shape"] for case in dropout_cases)


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_golden_case(case):
    report = run_backend(registry.default_name(), [case])
    assert report.available, report.reason
    (result,) = report.results
    if result.status == "skipped":
        pytest.skip(result.detail)
    assert result.status == "passed", result.detail


def test_a_wrong_expectation_is_reported_as_a_failure():
    case = next(case for case in CASES if case["kind"] == "mask" and case["shape"] == [1000])
    flipped = {**case, "keep": ("f" if case["keep"][0] != "f" else "0") + case["keep"][1:]}
    (result,) = run_backend(registry.default_name(), [flipped]).results
    assert result.status == "failed" and "mask bits differ" in result.detail


def test_the_command_prints_a_table_and_writes_json(tmp_path):
    report_path = tmp_path / "report.json"
    command = [sys.executable, "-m", "xdrop", "conformance", "--backend", "numpy", "--verbose",
               "--json", str(report_path)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend  mode" in result.stdout and "all backends conform" in result.stdout
    document = json.loads(report_path.read_text())
    assert document["passed"] is True
    runs = {(run["backend"], run["mode"]): run for run in document["runs"]}
    assert set(runs) == {("numpy", "eager"), ("numpy", "compiled"), ("numpy", "runtime")}
    assert runs["numpy", "eager"]["groups"]["mask"]["failed"] == 0


def test_the_command_refuses_unknown_backends():
    command = [sys.executable, "-m", "xdrop", "conformance", "--backend", "nope"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 2 and "unknown backend(s) nope" in result.stderr


def test_golden_check_passes_on_the_shipped_file():
    result = subprocess.run([sys.executable, "-m", "xdrop", "golden", "--check"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_golden_cases_inside_the_framework_compiler():
    report = run_backend(registry.default_name(), mode="compiled")
    assert report.available, report.reason
    if report.reason == "no compiler":
        pytest.skip(f"{registry.default_name()} has no compiler")
    assert report.results and not report.failed, [(r.case_id, r.detail) for r in report.failed]


def test_golden_cases_with_sizes_known_at_run_time_and_rates_in_arrays():
    report = run_backend(registry.default_name(), mode="runtime")
    assert report.available, report.reason
    if report.reason:
        pytest.skip(f"{registry.default_name()}: {report.reason}")
    assert report.results and not report.failed, [(r.case_id, r.detail) for r in report.failed]
    assert any(r.status == "passed" and r.group == "dtypes" for r in report.results)


def _without_the_loss_operations(name: str) -> Backend:
    """A backend rebuilt from its own methods, but for the loss operations and the roles that
    extend them: a plugin that implements only the required roles and seed arrays."""
    backend_class = type(registry.load(name))
    dropped = (
        LossOps.__abstractmethods__ | RateOps.__abstractmethods__ | FamilyOps.__abstractmethods__
    )
    members = {
        member: value
        for klass in reversed(backend_class.__mro__)
        for member, value in vars(klass).items()
        if member not in dropped and (member == "__init__" or not member.startswith(("__", "_abc")))
    }
    return type("WithoutLosses", (Backend, SeedArrays, NativeGenerator), members)()


@pytest.mark.parametrize(("name", "mode"), [("numpy", "eager"), ("jax", "compiled")])
def test_a_backend_without_the_loss_operations_skips_only_the_rdrop_cases(monkeypatch, name, mode):
    pytest.importorskip(name)
    monkeypatch.setitem(registry._backends, name, _without_the_loss_operations(name))
    report = run_backend(name, mode=mode)
    rdrop = [result for result in report.results if result.group.startswith("rdrop")]
    assert rdrop and all(result.status == "skipped" for result in rdrop)
    assert any("does not implement xdrop.protocol.LossOps" in result.detail for result in rdrop)
    for result in report.results:
        if not result.group.startswith("rdrop"):  # passed, or skipped for a dtype JAX lacks
            assert result.status != "failed", (result.case_id, result.detail)
            assert "LossOps" not in result.detail, result.case_id
    assert any(result.status == "passed" for result in report.results)


def test_the_comparator_matches_the_spec_on_nans_and_signed_zeros():
    from xdrop.conformance.runner import _same_bits

    quiet, canonical_cuda = np.float32(np.nan), np.uint32(0x7FFFFFFF).view(np.float32)
    a = np.array([quiet, 0.0, 1.0, quiet], np.float32).astype(np.float64)
    b = np.array([canonical_cuda, -0.0, 1.0, 1.0], np.float32).astype(np.float64)
    assert _same_bits(a, b).tolist() == [True, False, True, False]
    spec = (Path(__file__).parent.parent / "docs" / "spec.md").read_text()
    assert "NaN payloads are not specified" in spec and "any NaN to equal any NaN" in spec


def test_the_sample_for_slow_compilers_covers_what_a_compiled_graph_can_get_wrong():
    from xdrop.conformance.runner import sample

    chosen = sample(CASES)
    dropout = [case for case in chosen if case["kind"] == "dropout"]
    assert {case["dtype"] for case in dropout} == {"float16", "bfloat16", "float32", "float64"}
    assert {case["training"] for case in dropout} == {True, False}
    assert {case["mode"] for case in dropout} == {"inverted", "classic"}
    rates = {case["p"] for case in dropout}
    assert {0.0, 1.0} <= rates and any(0 < p < 1e-6 for p in rates)
    assert any(p > 1 - 1e-6 and p < 1 for p in rates)
    assert any(case["noise_shape"] for case in dropout)
    offsets = [(case["offset"], np.prod(case["shape"])) for case in chosen if "offset" in case]
    assert any(o // 2**32 != (o + n - 1) // 2**32 for o, n in offsets)  # across 2**32
    assert any(o >= 2**32 for o, _ in offsets)
    assert {case["data"] >= 2**31 for case in chosen if case["kind"] == "fold_in"} == {True, False}
    assert {case["kind"] for case in chosen} >= {"mask", "rdrop_kl", "rdrop_loss"}
    assert len(chosen) <= 24  # still a sample: each case is a compilation of seconds


def test_every_backend_checks_the_edge_rates_in_float32_and_bfloat16():
    narrow = [case for case in CASES if case["group"] == "edge_p_narrow"]
    for dtype in ("float32", "bfloat16"):
        rates = {case["p"] for case in narrow if case["dtype"] == dtype}
        assert {0.0, 1.0} <= rates and any(0 < p < 1e-6 for p in rates)
    report = run_backend(registry.default_name(), narrow)
    assert not report.failed
    ran = {result.case_id for result in report.results if result.status == "passed"}
    assert {case["id"] for case in narrow if case["dtype"] != "float16"} <= ran
