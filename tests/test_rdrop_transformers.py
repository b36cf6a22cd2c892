"""``xdrop.integrations.transformers.RDropTrainer``: Hugging Face's ``Trainer`` training with
R-Dropout, its loss equal to ``xdrop.rdrop_loss`` on the same two passes, checkpointed and
resumed bit for bit in a fresh process.

Tiny models with random weights built from configurations (no download): BERT (hidden 32, 2
layers, hidden and attention dropout 0.1) with a sequence classification head, a token
classification head and a regression head; GPT-2 (``n_embd`` 32, 2 layers) as a causal
language model; BART (``d_model`` 32, 2 + 2 layers) for sequence to sequence. Token ids are
made by hand in a torch ``Dataset``. ``tests/integrations/hf_trainer.py`` runs each scenario
in a fresh process: the losses and gradients of three Trainer steps beside the same passes
recomputed by hand; and a BERT trained six steps straight, against one resumed by a new
process from the Trainer's checkpoint after step 3 (other weights and another convert seed
before loading it).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.backend_independent,
    # looked up, not imported: transformers imports torchvision, which needs tests/torchvision_cpu
    pytest.mark.skipif(
        any(importlib.util.find_spec(name) is None for name in ("transformers", "accelerate")),
        reason="transformers or accelerate is not installed (pip install -c ci/constraints.txt "
        "-r ci/requirements.txt)",
    ),
]

SCRIPT = Path(__file__).resolve().parent / "integrations" / "hf_trainer.py"
HEADS = ["classification", "tokens", "causal", "causal subclass", "seq2seq", "regression"]


def _start(action: str, directory: Path) -> subprocess.Popen[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), action, str(directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
    )


def _finish(process: subprocess.Popen[str]) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-4000:]


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("trainer")
    first = [_start("losses", directory), _start("straight", directory)]
    for process in first:
        _finish(process)
    _finish(_start("resume", directory))
    return {
        action: torch.load(directory / f"{action}.pt", weights_only=False)
        for action in ("losses", "straight", "resume")
    }


def _head(records: dict[str, Any], head: str) -> dict[str, Any]:
    return dict(records["losses"][head])


@pytest.mark.parametrize("head", HEADS)
def test_the_trainers_loss_is_rdrop_loss_of_the_same_two_passes_and_it_is_what_it_trains(
    records: dict[str, Any], head: str
) -> None:
    """Three steps: the loss ``compute_loss`` returned equals, bit for bit, xdrop's loss of the
    model's two passes recomputed by hand from the step's ``state_dict`` (whose xdrop streams
    give the same masks); the gradients the Trainer's optimizer saw are that loss's."""
    steps = _head(records, head)["steps"]
    assert len(steps) == 3
    for number, step in enumerate(steps):
        assert torch.equal(step["trainer"], step["by_hand"]), (number, step)
        assert step["passes_differ"], "dropout drew two masks for the two copies"
        assert step["gradients"].keys() == step["hand_gradients"].keys()
        for name, gradient in step["gradients"].items():
            expected = step["hand_gradients"][name]
            if head == "seq2seq":  # BART's tied embedding sums its gradients in another order
                torch.testing.assert_close(gradient, expected, rtol=1e-5, atol=1e-7)
            else:
                assert torch.equal(gradient, expected), (number, name)


def test_token_labels_of_minus_100_and_padded_tokens_are_left_out_of_the_loss(
    records: dict[str, Any],
) -> None:
    """The padded tokens hold class labels in these batches: only the attention mask keeps
    them out. The loss equals the formula written out in torch over the counted tokens."""
    for step in _head(records, "tokens")["steps"]:
        torch.testing.assert_close(step["trainer"], step["formula"], rtol=1e-6, atol=0)


def test_a_regression_heads_loss_is_both_squared_errors_and_alpha_times_their_difference(
    records: dict[str, Any],
) -> None:
    """``num_labels=1``: ``MSE(p1, y) + MSE(p2, y) + alpha * MSE(p1, p2)`` in torch."""
    for step in _head(records, "regression")["steps"]:
        torch.testing.assert_close(step["trainer"], step["formula"], rtol=1e-6, atol=0)


@pytest.mark.parametrize("head", HEADS)
def test_evaluation_is_the_plain_trainers_one_forward_that_draws_nothing(
    records: dict[str, Any], head: str
) -> None:
    record = _head(records, head)
    assert record["eval"] == record["plain_eval"]
    assert not record["eval_drew"]


def test_with_gradient_accumulation_the_step_applies_the_mean_of_the_batches_losses(
    records: dict[str, Any],
) -> None:
    """``Trainer`` divides each batch's loss by the accumulation steps: R-Dropout's loss is a
    mean over its batch, not normalized over the accumulated batch."""
    record = records["losses"]["accumulation"]
    assert record["batches"] == 2 and len(record["gradients"]) == 1
    (gradients,) = record["gradients"]
    assert gradients.keys() == record["hand_gradients"].keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, record["hand_gradients"][name], rtol=1e-5, atol=1e-8)


def test_without_convert_seed_the_model_is_not_converted(records: dict[str, Any]) -> None:
    assert not any("xdrop" in name for name in records["losses"]["unconverted_buffers"])


def test_a_run_resumed_from_the_trainers_checkpoint_in_a_new_process_ends_bit_identical(
    records: dict[str, Any],
) -> None:
    """The resumed process built BERT with other weights and converted it with another seed:
    the checkpoint (``model.safetensors`` holds the streams' seeds and steps) replaced both."""
    straight, resumed = records["straight"], records["resume"]
    assert sorted(straight["losses"]) == [1, 2, 3, 4, 5, 6]
    assert sorted(resumed["losses"]) == [1, 2, 3, 4, 5, 6]  # 1-3 from the checkpoint's log
    assert resumed["losses"] == straight["losses"]
    assert straight["state"].keys() == resumed["state"].keys()
    assert "xdrop_step" in straight["state"]
    for name, value in straight["state"].items():
        assert torch.equal(value, resumed["state"][name]), name


@pytest.mark.parametrize(
    ("use", "named"),
    [
        ("alpha", "alpha"),
        ("model_init", "convert_seed"),
        ("multi_label", "multi_label_classification"),
        ("no_labels", "'labels'"),
        ("unknown_generator", "shift_labels must be True or False for GPT2DoubleHeadsModel"),
        ("compute_loss_func", "compute_loss_func"),
    ],
)
def test_unsupported_uses_raise_an_argument_error_saying_what_is_allowed(
    records: dict[str, Any], use: str, named: str
) -> None:
    kind, message = records["losses"]["errors"][use]
    assert kind == "ArgumentValueError"
    assert named in message and " must be " in message, message
