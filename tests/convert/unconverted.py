"""What ``convert`` cannot make xdrop's in Hugging Face models is reported, never left silent.

Run by ``tests/test_convert_transformers.py`` in a fresh process (transformers imports
torchvision, which needs ``tests/torchvision_cpu``): tiny configurations, random weights.

- BART with LayerDrop (``encoder_layerdrop > 0``: ``torch.rand`` skips encoder layers in
  training): ``strict=True`` refuses it, naming the config's setting and the encoder's copy, which
  its forward reads, and leaves the model as it was; with both set to 0 the model converts and
  its training output depends on xdrop's seed alone.
- Wav2Vec2 with its defaults (LayerDrop 0.1, SpecAugment's ``mask_time_prob`` 0.05, masks from
  NumPy's generator): one warning names both, and the training output indeed depends on the
  global generators; with both set to 0, nothing is reported and it depends on xdrop's seed alone.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torchvision_cpu import define_torchvision_operators

define_torchvision_operators()  # before transformers imports torchvision

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import xdrop  # noqa: E402
from xdrop.layers.torch import convert  # noqa: E402


def bart_with_layerdrop() -> None:
    config = transformers.BartConfig(
        vocab_size=64, d_model=16, encoder_layers=2, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_position_embeddings=16, encoder_layerdrop=0.5, num_labels=2,
    )  # fmt: skip
    model = transformers.BartForSequenceClassification(config)
    keys = set(model.state_dict())
    try:
        convert(model, seed=1, strict=True)
    except xdrop.UnconvertedDropoutError as error:
        assert "LayerDrop, encoder_layerdrop=0.5" in str(error), str(error)
        assert "model.encoder (BartEncoder: LayerDrop, layerdrop=0.5" in str(error), str(error)
    else:
        raise AssertionError("LayerDrop was not refused")
    # nothing changed: the head's nn.Dropout is torch's, no stream was added
    assert type(model.classification_head.dropout) is torch.nn.Dropout
    assert set(model.state_dict()) == keys and not model._forward_pre_hooks
    config.encoder_layerdrop = model.model.encoder.layerdrop = 0.0
    convert(model, seed=1, strict=True)  # converted with the seed given now
    assert "xdrop_seed" in model.state_dict()
    ids = torch.tensor([[5, 6, 7, 8, config.eos_token_id]] * 2)
    outputs = []
    for global_seed in (1, 2):
        model.load_state_dict(model.state_dict() | {"xdrop_step": torch.tensor(0)})
        torch.manual_seed(global_seed)
        outputs.append(model.train()(input_ids=ids).logits.detach())
    assert torch.equal(*outputs)


def wav2vec2_output(config: transformers.Wav2Vec2Config, global_seed: int) -> torch.Tensor:
    torch.manual_seed(0)
    model = transformers.Wav2Vec2ForCTC(config).train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xdrop.UnconvertedDropoutWarning)
        convert(model, seed=5)
    torch.manual_seed(global_seed)
    np.random.seed(global_seed)
    audio = torch.linspace(-1, 1, 2 * 800).reshape(2, 800)
    return model(audio).logits.detach()


def wav2vec2_defaults() -> None:
    config = transformers.Wav2Vec2Config(
        vocab_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3),
        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, layerdrop=0.5,
        mask_time_prob=0.5, mask_time_length=2,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert(transformers.Wav2Vec2ForCTC(config), seed=5)
    messages = [str(w.message) for w in caught if w.category is xdrop.UnconvertedDropoutWarning]
    assert len(messages) == 1, messages
    assert "LayerDrop, layerdrop=0.5" in messages[0], messages[0]
    assert "SpecAugment, mask_time_prob=0.5: NumPy's generator" in messages[0], messages[0]
    assert not torch.equal(wav2vec2_output(config, 1), wav2vec2_output(config, 2))
    config.layerdrop = config.mask_time_prob = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", xdrop.UnconvertedDropoutWarning)
        convert(transformers.Wav2Vec2ForCTC(config), seed=5, strict=True)
    assert torch.equal(wav2vec2_output(config, 1), wav2vec2_output(config, 2))


if __name__ == "__main__":
    torch.set_num_threads(1)
    bart_with_layerdrop()
    wav2vec2_defaults()
    print("unconverted: ok")
