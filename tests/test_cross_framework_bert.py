"""Train-mode equivalence across frameworks: Hugging Face's PyTorch BERT and keras-hub's BERT on
JAX, the weights copied from one to the other and both converted with one seed, give the same
training-mode outputs and the same losses over SGD steps with dropout 0.1 at every site
(``examples/bert_torch_vs_keras.py``, run in fresh processes: one per framework)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.backend_independent  # each side uses its framework's own tensors

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "bert_torch_vs_keras.py"
STEPS = 5
SHARED = {
    "embeddings",
    "classifier",
    *(
        f"layer{i}/{site}"
        for i in (0, 1)
        for site in ("attention_probs", "attention_output", "ffn_output")
    ),
}

# torchvision's PyPI wheel beside the CPU torch the tests pin does not import on its own, and
# transformers imports it (tests/peer/conftest.py says why): every process the example starts
# defines what torchvision's import needs first
SITECUSTOMIZE = f"""
import runpy
_kept = runpy.run_path({str(ROOT / "tests" / "peer" / "conftest.py")!r})
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for package in ("torch", "transformers", "jax", "keras", "keras_hub"):
        pytest.importorskip(package)
    folder = tmp_path_factory.mktemp("bert")
    (folder / "site").mkdir()
    (folder / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(folder / "site"), str(ROOT)]),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    environment.pop("XDROP_BACKEND", None)  # each side's arrays pick their own backend
    command = [sys.executable, str(EXAMPLE), str(folder / "loss.png"), "--steps", str(STEPS)]
    command += ["--attention", "eager", "sdpa", "--workdir", str(folder)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def results(run: Path, side: str) -> dict[str, np.ndarray]:
    return dict(np.load(run / f"{side}.npz"))


SIDES = ["torch_eager", "torch_sdpa"]  # transformers' two attention implementations


@pytest.mark.parametrize("torch_side", SIDES)
def test_eval_mode_logits_agree_after_copying_the_weights(run, torch_side):
    torch, keras = results(run, torch_side), results(run, "keras")
    np.testing.assert_allclose(torch["eval_logits"], keras["eval_logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("torch_side", SIDES)
def test_training_mode_logits_agree_with_dropout_at_every_site(run, torch_side):
    torch, keras = results(run, torch_side), results(run, "keras")
    np.testing.assert_allclose(torch["train_logits"], keras["train_logits"], rtol=0, atol=1e-5)
    # dropout was on: the training-mode logits are not the eval-mode ones
    assert np.max(np.abs(keras["train_logits"] - keras["eval_logits"])) > 1e-3


@pytest.mark.parametrize("torch_side", SIDES)
def test_each_sides_own_site_names_give_other_masks(run, torch_side):
    torch, keras = results(run, torch_side), results(run, "keras")
    own_torch, own_keras = torch["own_names_train_logits"], keras["own_names_train_logits"]
    assert np.max(np.abs(own_torch - own_keras)) > 1e-3


@pytest.mark.parametrize("torch_side", SIDES)
def test_sgd_steps_give_the_same_losses_and_weights(run, torch_side):
    torch, keras = results(run, torch_side), results(run, "keras")
    assert torch["losses"].shape == keras["losses"].shape == (STEPS,)
    np.testing.assert_allclose(torch["losses"], keras["losses"], rtol=0, atol=1e-5)
    weights = sorted(name for name in keras if name.startswith("weight:"))
    assert weights == sorted(name for name in torch if name.startswith("weight:"))
    assert len(weights) == 41
    for name in weights:
        np.testing.assert_allclose(torch[name], keras[name], rtol=0, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(
        torch["trained_eval_logits"], keras["trained_eval_logits"], rtol=0, atol=1e-4
    )


@pytest.mark.parametrize("side", [*SIDES, "keras"])
def test_every_dropout_site_gets_a_shared_name(run, side):
    sites = dict(line.split(" -> ") for line in results(run, side)["sites"])
    shared = {name for name in sites.values() if name in SHARED}
    assert shared == SHARED
    # what keeps its own name is only the nn.Dropout BertSelfAttention holds for its rate and
    # never calls: its attention dropout is the functional call, site "...attention.self#0"
    unmatched = sorted(name for name, new in sites.items() if new not in SHARED)
    expected = (
        []
        if side == "keras"
        else [f"bert.encoder.layer.{i}.attention.self.dropout" for i in (0, 1)]
    )
    assert unmatched == expected


def test_the_example_draws_both_loss_curves(run):
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def load_example():
    spec = importlib.util.spec_from_file_location("bert_torch_vs_keras", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fail(*arguments, **keywords):
    raise AssertionError("not to be called here")


def test_without_a_figure_the_example_prints_the_differences_and_writes_nothing(
    tmp_path, monkeypatch, capsys
):
    example = load_example()

    def compare(workdir, steps, attentions):  # both sides' results, without training
        for name in [*(f"torch_{attention}" for attention in attentions), "keras"]:
            np.savez(workdir / f"{name}.npz", losses=np.linspace(1.0, 0.5, steps))
        return {attention: {"losses": 0.0} for attention in attentions}

    monkeypatch.setattr(example, "compare", compare)
    monkeypatch.setattr(example, "plot", fail)
    monkeypatch.chdir(tmp_path)
    example.main(["--steps", "3"])
    out = capsys.readouterr().out
    assert "max |torch (eager) - keras| losses" in out and "figure:" not in out
    assert list(tmp_path.iterdir()) == []


def test_a_figure_without_matplotlib_stops_before_training(tmp_path, monkeypatch, capsys):
    example = load_example()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as an import finds it when missing
    monkeypatch.setattr(example, "compare", fail)
    with pytest.raises(SystemExit) as stopped:
        example.main([str(tmp_path / "loss.png")])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "argument FIGURE: drawing needs matplotlib (pip install matplotlib" in err
    assert list(tmp_path.iterdir()) == []
