"""Hugging Face models, converted by one call, train with R-Dropout, checkpoint and resume bit for
bit in a fresh process; torch's generator is never touched; ``torch.compile`` agrees with eager.

Tiny configurations with random weights, no download (``HF_HUB_OFFLINE=1``): a
``BertForSequenceClassification`` (2 layers, hidden 64, 4 heads, hidden and attention dropout 0.1)
with eager attention, whose attention dropout is a call of ``F.dropout`` inside the forward, and
with SDPA attention, which passes ``dropout_p`` to ``F.scaled_dot_product_attention``; and a
``GPT2LMHeadModel`` (dropout on embeddings, attention and residuals). Each scenario runs
``tests/convert/train.py`` in fresh processes: six R-Dropout steps (``xdrop.rdrop_forward``,
``xdrop.rdrop_loss``) with AdamW, a checkpoint of the model and the optimizer after step 3, and a
new process that builds the model with other weights, converts it with another seed, loads the
checkpoint and trains steps 3 to 5. Without ``convert`` (the ``nn.Dropout`` modules swapped by
hand for xdrop's layer) the same resume reproduces none of the steps.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from installed import requires

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.backend_independent,
    requires("transformers"),
]

from convert.checks import (  # noqa: E402
    RESUMED,
    Runs,
    assert_converted,
    assert_equal_states,
    assert_refused_or_exact,
    assert_resumed_bit_for_bit,
    records,
    replaced_classes,
    straight_and_resume,
)

SCENARIOS = {
    "bert-eager": straight_and_resume("bert-eager"),
    "bert-sdpa": straight_and_resume("bert-sdpa"),
    "bert-by-hand": straight_and_resume("bert-eager", "by-hand"),
    "gpt2": straight_and_resume("gpt2"),
    "compile": [("bert-sdpa", "convert", "compile", "aot_eager")],
    "checkpointing": [("bert-eager", "convert", "checkpointing")],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("transformers"), SCENARIOS)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_converted_bert_resumes_bit_for_bit_in_a_process_built_with_other_weights_and_seed(
    attention: str, runs: Runs
) -> None:
    straight, resumed = records(runs(f"bert-{attention}"))
    assert_converted(straight)
    assert replaced_classes(straight) == {"Dropout": 8}  # embeddings, 3 per layer, classifier
    assert_resumed_bit_for_bit(straight, resumed)


def test_without_convert_swapping_berts_dropout_modules_by_hand_does_not_resume(
    runs: Runs,
) -> None:
    """The defect ``convert`` removes: the eager attention calls ``F.dropout`` itself, so with
    every ``nn.Dropout`` module seeded by hand its masks still come from torch's generator, which
    a fresh process does not continue: no resumed step reproduces."""
    straight, resumed = records(runs("bert-by-hand"))
    assert straight["prepared"]["found"] and not straight["prepared"]["left"]
    assert not any(straight["rng_kept"]), "the attention's F.dropout draws from torch"
    differing = [
        step
        for step, loss in zip(RESUMED, resumed["losses"], strict=True)
        if not torch.equal(loss, straight["losses"][step])
    ]
    assert differing == list(RESUMED)


def test_a_converted_gpt2_resumes_bit_for_bit(runs: Runs) -> None:
    straight, resumed = records(runs("gpt2"))
    assert_converted(straight)
    # embeddings; per block the attention's and the residual's; the MLP's
    assert replaced_classes(straight) == {"Dropout": 1 + 2 * 3}
    assert_resumed_bit_for_bit(straight, resumed)


def test_torch_compile_of_a_converted_bert_in_one_graph_gives_eagers_training_outputs(
    runs: Runs,
) -> None:
    """SDPA attention with dropout, computed by xdrop under the compiler. Two models built and converted alike, one under ``torch.compile(fullgraph=True)`` (any
    graph break fails): two training steps' outputs and gradients are equal bit for bit, and the
    steps advance alike. The backend is ``aot_eager``: Dynamo captures the forward with the
    converted model's hooks, functional mode and in-place step updates, and AOTAutograd
    functionalizes it and derives the backward, which is where a conversion could break; the
    kernels stay torch's eager ones, so the result must be exact. (Inductor's generated C++ would
    take minutes to compile here and may reassociate float sums: it is checked for xdrop's own
    operations in tests/test_family_compiled.py.)"""
    record = torch.load(runs("compile") / "compile.pt")
    eager, compiled = record["eager"], record["compiled"]
    assert eager["rng_kept"] and compiled["rng_kept"]
    assert_equal_states(eager["state"], compiled["state"], "steps and seeds")
    for step in range(2):
        assert torch.equal(eager["outputs"][step], compiled["outputs"][step]), step
        assert_equal_states(eager["gradients"][step], compiled["gradients"][step], f"step {step}")
    # the two steps drew different masks: the outputs could tell a stream that stood still
    assert not torch.equal(eager["outputs"][0], eager["outputs"][1])


def test_gradient_checkpointing_of_a_converted_bert_is_refused_not_wrong(runs: Runs) -> None:
    """Hugging Face's ``gradient_checkpointing_enable()`` runs each layer's forward again during
    backward, outside the model's forward: the attention's ``F.dropout`` there has no site."""
    assert_refused_or_exact(torch.load(runs("checkpointing") / "checkpointing.pt"))


def test_layerdrop_and_specaugment_are_reported_and_strict_leaves_the_model_as_it_was() -> None:
    """Hugging Face's LayerDrop (``torch.rand``) and SpecAugment (NumPy's generator) draw outside
    any dropout call: ``tests/convert/unconverted.py`` checks, in a fresh process, that convert
    names them (and that they do draw from the global generators), and that ``strict=True``
    refuses before changing anything."""
    script = Path(__file__).resolve().parent / "convert" / "unconverted.py"
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    environment.pop("XDROP_BACKEND", None)
    completed = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=environment, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-6000:]
    assert completed.stdout.strip().splitlines()[-1] == "unconverted: ok"
