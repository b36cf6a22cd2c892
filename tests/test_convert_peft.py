"""PEFT's adapters (LoRA) on converted Hugging Face models: converted before or after
``get_peft_model``, a head PEFT copies to train in full (``modules_to_save``), the adapters
saved and loaded with xdrop's streams beside them, and ``merge_and_unload``.

Tiny RoBERTa and GPT-2 built from configurations with random weights (no download).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from installed import requires

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.backend_independent,
    requires("transformers", "peft"),
]

import xdrop  # noqa: E402
from xdrop.layers.torch import convert, stream_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def hf() -> Any:
    """``transformers`` and ``peft``, imported after torchvision's operators are defined."""
    from torchvision_cpu import define_torchvision_operators

    define_torchvision_operators()
    import peft
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers, peft


def _classifier(hf: Any) -> Any:
    """RoBERTa for sequence classification: its head holds a dropout of its own."""
    transformers, _ = hf
    config = transformers.RobertaConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=18,
        num_labels=3,
    )
    torch.manual_seed(0)
    return transformers.RobertaForSequenceClassification(config)


def _writer(hf: Any) -> Any:
    transformers, _ = hf
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=1, n_head=2)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config)


def _lora(hf: Any, task: str, targets: list[str]) -> Any:
    _, peft = hf
    return peft.LoraConfig(
        r=4, target_modules=targets, lora_dropout=0.1, init_lora_weights=False, task_type=task
    )


IDS = torch.randint(3, 50, (2, 8), generator=torch.Generator().manual_seed(1))  # no padding


def test_a_head_peft_copies_to_train_draws_once_the_peft_model_is_converted(hf: Any) -> None:
    # converted first: PEFT's modules_to_save trains a deep copy of the classifier, which has
    # no site in the model it came from; converting the PeftModel gives it one
    _, peft = hf
    model = convert(_classifier(hf), seed=0)
    adapted = peft.get_peft_model(model, _lora(hf, "SEQ_CLS", ["query", "value"])).train()
    assert isinstance(model.classifier, peft.utils.ModulesToSaveWrapper)
    with pytest.raises(xdrop.UnconvertedDropoutError, match="modules_to_save"):
        adapted(input_ids=IDS)
    adapted = convert(adapted, seed=1)
    state = torch.get_rng_state()
    first, second = adapted(input_ids=IDS).logits, adapted(input_ids=IDS).logits
    assert not torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)  # xdrop's masks, not torch's


def test_converted_before_and_after_wrapping_each_root_steps_once_per_forward(hf: Any) -> None:
    _, peft = hf
    base = convert(_writer(hf), seed=0)
    adapted = convert(peft.get_peft_model(base, _lora(hf, "CAUSAL_LM", ["c_attn"])), seed=1)
    adapted.train()
    adapted(input_ids=IDS)
    adapted(input_ids=IDS)
    assert int(adapted.xdrop_step) == int(base.xdrop_step) == 2
    assert int(adapted.xdrop_seed) == 1 and int(base.xdrop_seed) == 0


def test_saved_adapters_and_streams_continue_in_a_model_loaded_from_them(
    hf: Any, tmp_path: Path
) -> None:
    _, peft = hf
    trained = convert(peft.get_peft_model(_writer(hf), _lora(hf, "CAUSAL_LM", ["c_attn"])), seed=0)
    trained.train()
    trained(input_ids=IDS)
    trained.save_pretrained(tmp_path)
    streams = stream_state_dict(trained)
    assert {"xdrop_seed", "xdrop_step"} <= streams.keys()
    assert any(name.endswith("lora_dropout.default.step") for name in streams)

    loaded = peft.PeftModel.from_pretrained(_writer(hf), tmp_path, is_trainable=True)
    loaded = convert(loaded, seed=5)
    assert loaded.load_state_dict(streams, strict=False).unexpected_keys == []
    loaded.train()
    assert torch.equal(loaded(input_ids=IDS).logits, trained(input_ids=IDS).logits)


def test_a_merged_model_is_refused_until_converted_itself(hf: Any) -> None:
    _, peft = hf
    adapted = convert(peft.get_peft_model(_writer(hf), _lora(hf, "CAUSAL_LM", ["c_attn"])), seed=0)
    merged = adapted.merge_and_unload().train()
    with pytest.raises(xdrop.UnconvertedDropoutError, match=r"merge_and_unload\(\)"):
        merged(input_ids=IDS)
    merged = convert(merged, seed=0)
    assert not torch.equal(merged(input_ids=IDS).logits, merged(input_ids=IDS).logits)
    assert int(merged.xdrop_step) == 2
