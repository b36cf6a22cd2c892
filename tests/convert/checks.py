"""What the tests of ``convert`` on real libraries' models check, on the records that
``tests/convert/train.py`` writes. Imported as ``convert.checks`` (``tests/`` is on ``sys.path``
while pytest runs)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from xdrop.layers.common import site_seed

SCRIPT = Path(__file__).resolve().parent / "train.py"
RESUMED = range(3, 6)  # train.py: six steps, the checkpoint after step 3
SEED = 7  # train.py's seed for the uninterrupted run (the resumed one converts with 99)


def run(*arguments: str) -> None:
    """``tests/convert/train.py`` in a fresh process, offline, with torch alone of the frameworks
    (transformers before 5 imports TensorFlow or Flax when they are installed), on one thread:
    the models are tiny, and on a busy machine torch's second thread spins waiting for a core,
    making a step tens of times slower."""
    environment = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "USE_TF": "0",
        "USE_FLAX": "0",
        "OMP_NUM_THREADS": "1",
    }
    environment.pop("XDROP_BACKEND", None)
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-6000:]


Command = tuple[str, ...]  # train.py's MODEL PREPARATION ACTION, then any arguments after DIRECTORY


def straight_and_resume(model: str, preparation: str = "convert") -> list[Command]:
    """An uninterrupted run, then its resume from the checkpoint in another process."""
    return [(model, preparation, "straight"), (model, preparation, "resume")]


class Runs:
    """A test file's scenarios, each a sequence of ``train.py`` processes in a folder of its own,
    all run on first use, two scenarios at a time: each process computes on one thread, so the
    two cores of a CI machine both work. Calling it with a scenario's name gives its folder."""

    def __init__(self, root: Path, scenarios: dict[str, list[Command]]) -> None:
        self.root, self.scenarios = root, scenarios
        self.done = False

    def __call__(self, scenario: str) -> Path:
        if not self.done:
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(self._run, self.scenarios))  # re-raises a failed run's error
            self.done = True
        return self.root / scenario

    def _run(self, scenario: str) -> None:
        directory = self.root / scenario
        directory.mkdir()
        for model, preparation, action, *after in self.scenarios[scenario]:
            run(model, preparation, action, str(directory), *after)


def records(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The records of a scenario's uninterrupted run and of its resume."""
    return torch.load(directory / "straight.pt"), torch.load(directory / "resume.pt")


def assert_equal_states(first: dict[str, Any], second: dict[str, Any], what: str) -> None:
    """Two (nested) state dicts hold the same keys and the same values, bit for bit."""
    assert first.keys() == second.keys(), what
    for key, value in first.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, second[key]), f"{what}: {key} differs"
        elif isinstance(value, dict):
            assert_equal_states(value, second[key], f"{what}.{key}")
        else:
            assert value == second[key], f"{what}: {key} differs"


def assert_resumed_bit_for_bit(straight: dict[str, Any], resumed: dict[str, Any]) -> None:
    """Each resumed step's loss, and the model and optimizer after the last step, are those of
    the uninterrupted run, bit for bit; no resumed step drew from torch's generator."""
    assert resumed["steps"] == list(RESUMED)
    for step, loss in zip(RESUMED, resumed["losses"], strict=True):
        assert torch.equal(loss, straight["losses"][step]), f"step {step}: the loss differs"
    assert_equal_states(straight["model"], resumed["model"], "model")
    assert_equal_states(straight["optimizer"], resumed["optimizer"], "optimizer")
    assert all(resumed["rng_kept"]), "a resumed step drew from torch's global generator"


def assert_converted(record: dict[str, Any]) -> None:
    """Every dropout module found became xdrop's layer of the same class name and rate, seeded
    ``site_seed(seed, qualified name)``; none is left; dropout acted in every step (the R-Dropout
    passes differ); no step drew from torch's global generator."""
    prepared = record["prepared"]
    assert prepared["found"] and not prepared["left"], prepared
    assert sorted(prepared["replaced"]) == prepared["found"]
    for name, replaced in prepared["replaced"].items():
        old, new = replaced["class"]
        assert new == old, (name, old, new)
        assert replaced["rate"][0] == replaced["rate"][1], (name, replaced["rate"])
        assert replaced["seed"] == (site_seed(SEED, name), site_seed(SEED, name)), name
    assert all(bool(torch.isfinite(loss)) for loss in record["losses"]), record["losses"]
    assert all(divergence > 0 for divergence in record["divergences"]), record["divergences"]
    assert all(record["rng_kept"]), "a training step drew from torch's global generator"


def replaced_classes(record: dict[str, Any]) -> dict[str, int]:
    """How many modules of each class were replaced."""
    counts: dict[str, int] = {}
    for replaced in record["prepared"]["replaced"].values():
        counts[replaced["class"][0]] = counts.get(replaced["class"][0], 0) + 1
    return counts


def assert_refused_or_exact(record: dict[str, Any]) -> None:
    """A converted model trained with gradient checkpointing (the blocks' forward run again
    during backward) is refused with an :class:`xdrop.RecomputationError`, or gets the losses,
    gradients and streams' steps of the plain run, bit for bit: never other gradients in
    silence."""
    plain, recomputed = record["False"], record["True"]
    assert "error" not in plain, plain.get("error")
    if "error" in recomputed:
        assert recomputed["xdrop"], recomputed["error"]
        assert recomputed["error"].startswith("RecomputationError: "), recomputed["error"]
        assert "checkpointing" in recomputed["error"], recomputed["error"]
        return
    for step in range(2):
        assert torch.equal(plain["losses"][step], recomputed["losses"][step]), step
        assert_equal_states(plain["gradients"][step], recomputed["gradients"][step], str(step))
    assert_equal_states(plain["steps"], recomputed["steps"], "steps")
