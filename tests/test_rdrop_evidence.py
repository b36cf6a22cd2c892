"""examples/rdrop_evidence.py: its statistics against values computed by hand and printed tables,
a reduced run end to end in a fresh process, and docs/rdrop.md against the committed record."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent  # CI runs it once, not per backend

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "rdrop_evidence.py"
RECORD = ROOT / "docs" / "figures" / "rdrop-evidence.json"


def load_script():
    spec = importlib.util.spec_from_file_location("rdrop_evidence", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


evidence = load_script()


# -- Student's t ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("t", "df", "expected"),
    [
        (1.0, 1, 0.5),  # Cauchy: (2 / pi) atan(1)
        (1.0, 2, 1 / math.sqrt(3)),  # df = 2: t / sqrt(2 + t^2)
        # df = 3: theta = atan(sqrt(3) / sqrt(3)) = pi / 4, (2 / pi) (pi / 4 + sin cos)
        (math.sqrt(3), 3, 0.5 + 1 / math.pi),
        (0.0, 7, 0.0),
    ],
)
def test_central_probability_matches_closed_forms(t, df, expected):
    assert evidence.student_t_central(t, df) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("df", "quantile"),  # the 97.5% points of Student's t, as printed in statistical tables
    [(1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (9, 2.2621572), (19, 2.0930241)],
)
def test_t_quantile_matches_printed_tables(df, quantile):
    assert evidence.student_t_quantile(0.975, df) == pytest.approx(quantile, abs=1e-6)


def test_t_quantile_and_central_probability_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 41):
        for probability in (0.6, 0.9, 0.975, 0.995):
            expected = stats.t.ppf(probability, df)
            assert evidence.student_t_quantile(probability, df) == pytest.approx(expected, 1e-9)
        for t in (0.1, 1.0, 2.5, 7.0):
            expected = stats.t.cdf(t, df) - stats.t.cdf(-t, df)
            assert evidence.student_t_central(t, df) == pytest.approx(expected, abs=1e-12)


def test_t_functions_refuse_what_they_cannot_compute():
    with pytest.raises(ValueError, match="df must be an integer >= 1, got 0"):
        evidence.student_t_central(1.0, 0)
    with pytest.raises(ValueError, match=r"probability must lie in \(0.5, 1\), got 0.3"):
        evidence.student_t_quantile(0.3, 5)


# -- intervals and paired tests on known data -------------------------------------------------------
def test_mean_interval_of_one_to_five_is_three_plus_minus_t_times_standard_error():
    # mean 3, sample variance 2.5, standard error sqrt(2.5 / 5); t_{0.975, 4} = 2.7764451
    interval = evidence.mean_interval([1, 2, 3, 4, 5])
    half = 2.7764451 * math.sqrt(0.5)
    assert interval.mean == 3.0
    assert interval.low == pytest.approx(3 - half, abs=1e-6)
    assert interval.high == pytest.approx(3 + half, abs=1e-6)
    assert interval.low == pytest.approx(1.036757, abs=1e-6)


def test_mean_interval_needs_two_values():
    with pytest.raises(ValueError, match="at least 2 numbers"):
        evidence.mean_interval([1.0])


def test_paired_test_on_differences_one_to_five():
    # d = 1..5: t = 3 / sqrt(0.5) = sqrt(18), df = 4; theta = atan(sqrt(18) / 2), cos^2 = 2 / 11,
    # P(|T| < t) = sin(theta) (1 + cos^2 / 2) = sqrt(9 / 11) * 12 / 11
    result = evidence.paired_test([10, 10, 10, 10, 10], [11, 12, 13, 14, 15])
    assert result.difference.mean == 3.0
    assert result.t == pytest.approx(math.sqrt(18), abs=1e-12)
    assert result.p_t == pytest.approx(1 - math.sqrt(9 / 11) * 12 / 11, abs=1e-12)
    assert (result.wins, result.losses, result.ties) == (5, 0, 0)
    assert result.p_sign == 2 / 2**5


def test_paired_test_agrees_with_scipy_ttest_rel():
    stats = pytest.importorskip("scipy.stats")
    a = [0.971, 0.968, 0.975, 0.962, 0.970, 0.966, 0.973, 0.969, 0.974, 0.967]
    b = [0.972, 0.971, 0.974, 0.966, 0.972, 0.966, 0.976, 0.968, 0.977, 0.970]
    result, reference = evidence.paired_test(a, b), stats.ttest_rel(b, a)
    assert result.t == pytest.approx(reference.statistic, rel=1e-9)
    assert result.p_t == pytest.approx(reference.pvalue, rel=1e-9)


def test_sign_test_drops_ties_and_counts_both_tails():
    # nine wins, one loss, one tie: 2 * (C(10, 0) + C(10, 1)) / 2^10
    a = [0.0] * 11
    b = [1.0] * 9 + [-1.0, 0.0]
    result = evidence.paired_test(a, b)
    assert (result.wins, result.losses, result.ties) == (9, 1, 1)
    assert result.p_sign == 22 / 1024
    balanced = evidence.paired_test([0.0] * 4, [1.0, -1.0, 2.0, -2.0])
    assert balanced.p_sign == 1.0  # min(1, 2 * P(at most 2 of 4)) = 1, not 1.375


def test_equal_differences_give_a_certain_answer_not_nan():
    same = evidence.paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert (same.t, same.p_t, same.ties, same.p_sign) == (0.0, 1.0, 3, 1.0)
    shifted = evidence.paired_test([1.0, 2.0, 3.0], [1.5, 2.5, 3.5])
    assert (shifted.t, shifted.p_t) == (math.inf, 0.0)


def test_p_values_show_three_decimals_and_never_a_bare_zero():
    assert evidence.p_value(0.01234) == "p = 0.012"
    assert evidence.p_value(0.0006) == "p = 0.001"
    assert evidence.p_value(4.4e-7) == "p < 0.001"


# -- the script, end to end, and the page -----------------------------------------------------------
def test_reduced_run_trains_both_arms_and_writes_its_figure_and_record(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    record = json.loads((tmp_path / "rdrop-evidence.json").read_text())
    assert record["settings"]["seeds"] == 2 and record["settings"]["alpha"] > 0
    for arm in evidence.ARMS:
        assert all(0.5 < a <= 1.0 for a in record["results"][arm]["accuracy"])
        assert all(0.0 < nll < math.log(10) for nll in record["results"][arm]["nll"])
        assert len(record["results"][arm]["nll"]) == 2
    assert record["summary"] == json.loads(json.dumps(evidence.summarise(record["results"])))
    assert evidence.table(record) in run.stdout
    assert (tmp_path / "rdrop-evidence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def fail(*arguments, **keywords):
    raise AssertionError("not to be called here")


def test_without_out_the_script_prints_its_table_and_writes_nothing(tmp_path, monkeypatch, capsys):
    """A trial run leaves the committed record alone: no ``--out``, no file, here or in
    docs/figures."""
    pytest.importorskip("torch")
    committed = sorted((path.name, path.stat().st_mtime_ns) for path in RECORD.parent.iterdir())

    def run(seed, alpha, settings):  # results that differ from seed to seed, without training
        return {"accuracy": 0.9 + alpha * (seed + 1) / 100, "nll": 0.3 - alpha * (seed + 2) / 100}

    monkeypatch.setattr(evidence, "run", run)
    monkeypatch.setattr(evidence, "figure", fail)
    monkeypatch.chdir(tmp_path)
    record = evidence.main(["--seeds", "3"])
    out = capsys.readouterr().out
    assert evidence.table(record) in out and "nothing written" in out
    assert list(tmp_path.iterdir()) == []
    assert sorted((path.name, path.stat().st_mtime_ns) for path in RECORD.parent.iterdir()) == (
        committed
    )


def test_out_without_matplotlib_stops_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as an import finds it when missing
    monkeypatch.setattr(evidence, "run", fail)
    with pytest.raises(SystemExit) as stopped:
        evidence.main(["--quick", "--out", str(tmp_path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "argument --out: the figure needs matplotlib (pip install matplotlib" in err
    assert list(tmp_path.iterdir()) == []


def test_training_without_scikit_learn_stops_saying_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setattr(evidence, "run", fail)
    with pytest.raises(SystemExit) as stopped:
        evidence.main(["--quick"])
    assert stopped.value.code == 2
    assert (
        "training needs scikit-learn's digits (pip install scikit-learn" in capsys.readouterr().err
    )


def test_redraw_without_out_prints_the_committed_table_and_draws_nothing(monkeypatch, capsys):
    monkeypatch.setattr(evidence, "figure", fail)
    record = evidence.main(["--redraw"])
    assert record == json.loads(RECORD.read_text())
    assert evidence.table(record) in capsys.readouterr().out


def test_reduced_run_refuses_a_single_seed(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--seeds", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "--seeds must be at least 2" in run.stderr


def test_the_rdrop_page_quotes_the_committed_record():
    """docs/rdrop.md shows the figure and the table of the committed run (at least 10 seeds),
    whose summary is the one its per-seed numbers give, and calls the accuracy difference
    significant only where the paired t-test says so at 5%."""
    record = json.loads(RECORD.read_text())
    assert record["settings"]["seeds"] >= 10
    assert record["summary"] == json.loads(json.dumps(evidence.summarise(record["results"])))
    page = (ROOT / "docs" / "rdrop.md").read_text()
    assert "figures/rdrop-evidence.png" in page
    assert evidence.table(record) in page
    section = page.split("## Does it help here?")[1].split("\n## ")[0]
    significant = record["summary"]["accuracy"]["paired"]["p_t"] < 0.05
    verdict = "accuracy difference is significant" if significant else "not significant"
    assert verdict in section
