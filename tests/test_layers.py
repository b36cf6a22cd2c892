"""xdrop.layers across frameworks, each run in a fresh process: the same MLP gives bit-identical
outputs on PyTorch, Keras (JAX, TensorFlow, torch) and Flax NNX; a checkpoint taken after step 3
and loaded in a new process continues the stream; what the frameworks' own layers do instead.

These tests use each framework's own arrays, not the default backend, so CI runs them once
(``-m layers``), not once per ``XDROP_BACKEND``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from installed import skip_unless_installed

pytestmark = pytest.mark.backend_independent  # each framework's own arrays

MLP = Path(__file__).resolve().parent / "layers" / "mlp.py"
FRAMEWORKS = {  # name -> (script's framework, KERAS_BACKEND, packages it needs)
    "torch": ("torch", None, ("torch",)),
    "keras-jax": ("keras", "jax", ("keras", "jax")),
    "keras-tensorflow": ("keras", "tensorflow", ("keras", "tensorflow")),
    "keras-torch": ("keras", "torch", ("keras", "torch")),
    "flax": ("flax", None, ("flax", "optax")),
}


def run_mlp(name: str, action: str, directory: Path) -> None:
    framework, keras_backend, packages = FRAMEWORKS[name]
    skip_unless_installed(*packages)
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    environment.pop("XDROP_BACKEND", None)
    if keras_backend:
        environment["KERAS_BACKEND"] = keras_backend
    command = [sys.executable, str(MLP), framework, action, str(directory)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert run.returncode == 0, run.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The directory of a framework's runs with one layer; each (framework, action) runs once."""
    done: dict[str, Path] = {}

    def directory(name: str, layer: str, *, resumed: bool = False) -> Path:
        if name not in done:
            done[name] = tmp_path_factory.mktemp(name)
            run_mlp(name, "first", done[name])
        if resumed and not (done[name] / layer / "resume.npy").exists():
            run_mlp(name, "resume", done[name])
        return done[name] / layer

    return directory


@pytest.mark.parametrize("name", [name for name in FRAMEWORKS if name != "torch"])
def test_the_same_mlp_gives_bit_identical_outputs_at_steps_0_to_4(runs, name):
    expected = np.load(runs("torch", "xdrop") / "forward.npy")
    actual = np.load(runs(name, "xdrop") / "forward.npy")
    assert actual.shape == (5, 8, 10)
    np.testing.assert_array_equal(actual, expected)
    assert len({row.tobytes() for row in expected}) == 5  # each step drew another mask


def test_the_mlp_outputs_are_those_of_the_functional_contract(runs):
    """Step t's logits are the network's, with ``xdrop.dropout(h, seed=fold_in(7, t))``."""
    import xdrop

    sys.path.insert(0, str(MLP.parent))
    try:
        import mlp
    finally:
        sys.path.remove(str(MLP.parent))
    d = mlp.data()
    hidden = np.maximum(d["x"] @ d["w1"] + d["b1"], 0)
    expected = [
        xdrop.dropout(hidden, mlp.RATE, seed=xdrop.fold_in(mlp.SEED, t)) @ d["w2"] + d["b2"]
        for t in range(5)
    ]
    np.testing.assert_array_equal(np.load(runs("torch", "xdrop") / "forward.npy"), expected)


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_a_checkpoint_loaded_in_a_fresh_process_continues_the_stream(runs, name):
    path = runs(name, "xdrop", resumed=True)
    uninterrupted = np.load(path / "train.npy")
    np.testing.assert_array_equal(np.load(path / "resume.npy"), uninterrupted[3:])


# What the frameworks' own layers do on the installed versions (docs/layers.md, "Checkpoints"):
# True where a checkpoint restored in a fresh process continues the masks. If one of these
# fails, the framework changed: update the table in docs/layers.md.
OWN_LAYER_RESUMES = {
    "torch": False,  # torch.nn.Dropout draws from torch's global generator, not in state_dict()
    "keras-jax": False,  # keras.layers.Dropout: a reloaded model draws other masks
    "keras-tensorflow": False,
    "keras-torch": False,
    "flax": True,  # nnx.Dropout(rngs=...) keeps its key and count in nnx.state
}


@pytest.mark.parametrize("name", FRAMEWORKS)
def test_what_the_frameworks_own_dropout_layer_does_after_a_checkpoint(runs, name):
    path = runs(name, "own", resumed=True)
    uninterrupted = np.load(path / "train.npy")
    resumes = np.array_equal(np.load(path / "resume.npy"), uninterrupted[3:])
    assert resumes == OWN_LAYER_RESUMES[name]
