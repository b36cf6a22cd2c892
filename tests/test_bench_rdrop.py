"""The R-Dropout benchmark (``xdrop bench --rdrop``, ``python -m xdrop.benchmarks.rdrop``): its
baselines compute the losses they stand for, and its command refuses what it cannot time. Never
its timings (``docs/performance.md``, "R-Dropout", records those)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import xdrop
from xdrop.benchmarks import rdrop
from xdrop.cli import main

SMALL = (2, 8, 7)
"""A token-level shape: the last of 8 positions of each sequence is padding (label -100)."""


def small_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    first, second, labels = rdrop.inputs(SMALL)
    assert (labels[:, -1] == rdrop.IGNORE).all() and (labels[:, :-1] >= 0).all()
    return first, second, labels


def installed(name: str) -> Any:
    module = pytest.importorskip(name)
    if not xdrop.available_backends().get(name):
        pytest.skip(f"xdrop has no {name} backend installed here")
    return module


@pytest.mark.parametrize("shape", [(32, 2), SMALL])
def test_the_torch_baseline_is_the_official_loss(shape):
    torch = installed("torch")
    first, second, labels = rdrop.inputs(shape)
    z1, z2, y = (torch.from_numpy(a) for a in (first, second, labels))
    pad = y == rdrop.IGNORE
    # the official loss in xdrop's terms (docs/rdrop.md): the mean of the two mean cross
    # entropies, plus alpha times the summed KL
    official = 0.5 * xdrop.rdrop_loss(z1, z2, y, alpha=0, ignore_index=rdrop.IGNORE)
    official = official + rdrop.ALPHA * xdrop.rdrop_kl(z1, z2, pad_mask=pad)
    got = rdrop.torch_reference(torch)(z1, z2, y)
    torch.testing.assert_close(got, official, rtol=1e-5, atol=1e-6)


def test_the_tensorflow_and_jax_baselines_are_rdrop_loss():
    first, second, labels = small_inputs()
    expected = xdrop.rdrop_loss(first, second, labels, alpha=rdrop.ALPHA, ignore_index=rdrop.IGNORE)
    tested = 0
    for name, make in (
        ("tensorflow", rdrop.tensorflow_hand_written),
        ("jax", rdrop.jax_hand_written),
    ):
        if not xdrop.available_backends().get(name):
            continue
        if name == "tensorflow":
            xdrop.registry.load_triton_before_tensorflow()
        module = pytest.importorskip(name)
        xp = xdrop.registry.load(name)
        got = make(module)(*(xp.asarray(a) for a in (first, second, labels)))
        np.testing.assert_allclose(np.asarray(xp.to_numpy(got)), expected, rtol=1e-5)
        tested += 1
    if not tested:
        pytest.skip("neither TensorFlow nor JAX is installed here")


def test_each_contender_runs_both_directions_at_a_small_shape():
    installed("torch")
    for direction in rdrop.DIRECTIONS:
        calls = rdrop.contenders("torch", "eager", direction, SMALL)
        assert sorted(calls) == ["baseline", "xdrop"]
        for call in calls.values():
            call()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--sizes", "8"], "argument --rdrop: --sizes cannot be given with it"),
        (["--check"], "argument --rdrop: --check cannot be given with it"),
        (["--dtype", "bfloat16"], "argument --rdrop: --dtype cannot be given with it"),
        (["--shapes", "changing"], "argument --rdrop: --shapes cannot be given with it"),
        (["--load", "run.json"], "argument --rdrop: --load cannot be given with it"),
        (["--backend", "numpy"], "argument --backend: no R-Dropout benchmark for numpy"),
    ],
)
def test_what_the_rdrop_benchmark_cannot_time_exits_2(arguments, message, capsys):
    assert main(["bench", "--rdrop", *arguments]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


def test_the_table_shows_ratios_and_failures():
    timing = {"median": 0.002, "quartiles": [0.001, 0.003], "first_call": 0.1}
    document = {
        "machine": {"processor": "x86_64", "cores": 2, "load_before": [1.0, 1.0, 1.0]},
        "rows": [
            {"backend": "torch", "mode": "eager", "direction": "forward", "shape": "token",
             "logits": [8, 512, 30000], "xdrop": timing, "baseline": timing, "ratio": 0.5},
            {"backend": "jax", "mode": "jax.jit", "failures": {"all": "MemoryError: "}},
        ],
    }  # fmt: skip
    lines = rdrop.table(document).splitlines()
    assert lines[1].split()[-4:] == ["0.50", "<=", "1.0", "met"]
    assert "FAILED all: MemoryError" in lines[2]
    assert lines[-1].startswith("x86_64, 2 cores, load average 1.00 1.00 1.00 before")
    assert rdrop.table(document, markdown=True).startswith("| backend | mode |")
