"""timm's and torchvision's models, converted by one call: every drop module replaced, the
functional dropout of their heads and attention routed through xdrop, torch's generator never
touched, and training resumes bit for bit in a fresh process.

Tiny configurations with random weights, no download: timm's ``VisionTransformer``
(``vit_tiny_patch16_224`` at 32x32 pixels, patch 8, width 32, 2 blocks; dropout after the
position embedding, in the projections, the head, drop path, and attention dropout, which timm's
fused attention passes to ``F.scaled_dot_product_attention`` as ``dropout_p``); timm's ``ResNet``
(``resnet18`` with one block per stage at 64x64 pixels; ``DropBlock2d``, ``DropPath``, and the
head's ``drop_rate``, which timm applies with ``F.dropout`` in ``forward_head``: no module holds
it); torchvision's ``efficientnet_b0`` (16 ``StochasticDepth`` modules, the classifier's
``nn.Dropout``) at 32x32 pixels. Each runs ``tests/convert/train.py``: six R-Dropout steps with
SGD and momentum, a checkpoint after step 3, and a new process that builds the model with other
weights, converts it with another seed, loads the checkpoint and trains steps 3 to 5.
"""

from __future__ import annotations

import pytest
from installed import requires

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.backend_independent,
    requires("timm", "torchvision"),
]

from convert.checks import (  # noqa: E402
    SEED,
    Runs,
    assert_converted,
    assert_refused_or_exact,
    assert_resumed_bit_for_bit,
    records,
    replaced_classes,
    straight_and_resume,
)

import xdrop  # noqa: E402
from xdrop.layers.common import site_seed  # noqa: E402

REPLACED = {
    # pos_drop and head_drop; per block the attention's attn_drop and proj_drop, the MLP's drop1
    # and drop2; the second block's two drop paths (drop path rates rise from 0 with depth)
    "vit": {"Dropout": 2 + 2 * 4, "DropPath": 2},
    # layer3 and layer4 hold DropBlock2d (timm's default); the drop paths of blocks 2 to 4
    "resnet": {"DropBlock2d": 2, "DropPath": 3},
    "efficientnet": {"StochasticDepth": 16, "Dropout": 1},
}


SCENARIOS = {
    **{model: straight_and_resume(model) for model in REPLACED},
    "checkpointing": [("resnet", "convert", "checkpointing")],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("vision"), SCENARIOS)


@pytest.mark.parametrize("model", sorted(REPLACED))
def test_a_converted_vision_model_replaces_every_drop_module_and_resumes_bit_for_bit(
    model: str, runs: Runs
) -> None:
    """The ResNet's head dropout and the ViT's attention dropout are functional calls: with
    them drawing from torch's generator the steps would not keep its state, and the resumed
    steps would differ."""
    straight, resumed = records(runs(model))
    assert_converted(straight)
    assert replaced_classes(straight) == REPLACED[model]
    assert_resumed_bit_for_bit(straight, resumed)


def test_timm_resnets_head_dropout_a_call_of_f_dropout_draws_the_documented_stream(
    runs: Runs,
) -> None:
    """timm's ``ResNet.forward_head`` calls ``F.dropout(x, p=drop_rate)`` in the model's own
    forward: the site ``"#0"`` (the root's first call), whose first training step draws
    ``xdrop.dropout(x, 0.1, seed=fold_in(site_seed(seed, "#0"), 0))``, element for element."""
    head = records(runs("resnet"))[0]["head"]
    pooled, dropped = head["pooled"], head["dropped"]
    seed = xdrop.fold_in(site_seed(SEED, "#0"), 0)
    assert torch.equal(dropped, xdrop.dropout(pooled, 0.1, seed=seed))
    zeroed = (dropped == 0) & (pooled != 0)
    assert 0 < int(zeroed.sum()) < pooled.numel() // 2  # about a tenth of the features dropped


def test_gradient_checkpointing_of_a_converted_resnet_is_refused_or_exact(runs: Runs) -> None:
    """timm's ``set_grad_checkpointing()`` runs each stage again during backward; its drop
    paths and drop blocks are modules, recomputed outside the model's forward."""
    assert_refused_or_exact(torch.load(runs("checkpointing") / "checkpointing.pt"))
