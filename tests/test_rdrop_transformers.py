"""``xdrop.integrations.transformers.RDropTrainer``: Hugging Face's ``Trainer`` training with
R-Dropout, its loss equal to ``xdrop.rdrop_loss`` on the same two passes, checkpointed and
resumed bit for bit in a fresh process.

Tiny models with random weights built from configurations (no download): BERT (hidden 32, 2
layers, hidden and attention dropout 0.1) with a sequence classification head, a token
classification head and a regression head; GPT-2 (``n_embd`` 32, 2 layers) as a causal
language model, also with PEFT's LoRA adapters; BART (``d_model`` 32, 2 + 2 layers) for sequence to sequence. Token ids are
made by hand in a torch ``Dataset``. ``tests/integrations/hf_trainer.py`` runs each scenario
in a fresh process: the losses and gradients of three Trainer steps beside the same passes
recomputed by hand; and a BERT trained six steps straight, against one resumed by a new
process from the Trainer's checkpoint after step 3 (other weights and another convert seed
before loading it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from installed import is_installed, requires

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.backend_independent,
    requires("transformers", "accelerate"),
]

SCRIPT = Path(__file__).resolve().parent / "integrations" / "hf_trainer.py"
PEFT = is_installed("peft")
needs_peft = requires("peft")
HEADS = [
    "classification",
    "tokens",
    "causal",
    "causal subclass",
    pytest.param("causal LoRA", marks=needs_peft),
    "seq2seq",
    "regression",
]
RUNS = ["straight", "resume"] + (["straight-lora", "resume-lora"] if PEFT else [])


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
    first = [_start(action, directory) for action in ["losses", *RUNS[::2]]]
    for process in first:
        _finish(process)
    for process in [_start(action, directory) for action in RUNS[1::2]]:
        _finish(process)
    return {
        action: torch.load(directory / f"{action}.pt", weights_only=False)
        for action in ["losses", *RUNS]
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
    _assert_resumed_bit_for_bit(records["straight"], records["resume"])


def _assert_resumed_bit_for_bit(straight: dict[str, Any], resumed: dict[str, Any]) -> None:
    assert sorted(straight["losses"]) == [1, 2, 3, 4, 5, 6]
    assert sorted(resumed["losses"]) == [1, 2, 3, 4, 5, 6]  # 1-3 from the checkpoint's log
    assert resumed["losses"] == straight["losses"]
    _assert_equal_states(straight["state"], resumed["state"])


def _assert_equal_states(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    assert expected.keys() == actual.keys() and "xdrop_step" in expected
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name


@needs_peft
def test_a_lora_run_resumed_in_a_new_process_ends_bit_identical(records: dict[str, Any]) -> None:
    """PEFT's checkpoint holds the adapters alone: the trainer saves xdrop's streams beside them
    and loads them on resuming, in a process that built the adapters with other weights and
    converted the model with another seed."""
    straight = records["straight-lora"]
    assert "xdrop_streams.safetensors" in straight["checkpoint"]
    assert "model.safetensors" not in straight["checkpoint"]  # the adapters alone
    _assert_resumed_bit_for_bit(straight, records["resume-lora"])


@needs_peft
def test_a_lora_model_trains_compiled_as_eagerly(records: dict[str, Any]) -> None:
    # the trainer reads the PEFT model and its causal LM under torch.compile's wrapper
    adapters = records["losses"]["adapters"]
    assert len(adapters["compiled"]) == 2
    assert adapters["compiled"] == adapters["eager"]


@needs_peft
def test_a_lora_checkpoint_holds_the_streams_of_a_module_registered_twice(
    records: dict[str, Any],
) -> None:
    assert "xdrop_streams.safetensors" in records["losses"]["adapters"]["shared"]


@needs_peft
def test_load_best_model_at_end_brings_back_the_best_checkpoints_streams(
    records: dict[str, Any],
) -> None:
    adapters = records["losses"]["adapters"]
    assert adapters["best"].endswith("checkpoint-1")  # not the last of three
    _assert_equal_states(adapters["best_streams"], adapters["final_streams"])


@needs_peft
def test_a_lora_run_with_streams_resumed_without_converting_is_refused(
    records: dict[str, Any],
) -> None:
    message = records["losses"]["adapters"]["unconverted_resume"]
    assert "xdrop_streams.safetensors must be" in message and "convert this model" in message


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
