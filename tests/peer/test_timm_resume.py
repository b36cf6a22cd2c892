"""A timm model written by others, its drop layers swapped for xdrop's, trains, checkpoints and
resumes bit for bit in a fresh process.

timm's ``ResNet`` (DropBlock and DropPath) and ``VisionTransformer`` (Dropout and DropPath), in
tiny configurations with random weights, built by ``timm.create_model`` with drop rates; a small
helper replaces each ``timm.layers.DropPath``, ``timm.layers.DropBlock2d`` and
``torch.nn.Dropout`` by xdrop's layer with the same arguments (a general converter is future
work). Three SGD steps with momentum, ``torch.save`` of the model's and the optimizer's
``state_dict()``, then a new Python process builds the model anew (other weights, other drop
seeds), loads the checkpoint and trains two more steps: its logits equal, bit for bit, those of
an uninterrupted five-step run. timm's ResNet applies its head dropout (``drop_rate``) with
``torch.nn.functional.dropout`` in ``forward``, not as a module, so nothing can swap it: the
ResNet runs with ``drop_rate=0`` and the ViT covers ``drop_rate``.

Run as a script by the test: ``python test_timm_resume.py MODEL ACTION DIRECTORY``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent

HERE = Path(__file__).resolve()
MODELS = {
    "resnet": (
        "resnet18",
        {"layers": [1, 1, 1, 1], "drop_path_rate": 0.1, "drop_block_rate": 0.1},
        (4, 3, 32, 32),
    ),
    "vit": (
        "vit_tiny_patch16_224",
        {
            "img_size": 32,
            "patch_size": 8,
            "embed_dim": 32,
            "depth": 2,
            "num_heads": 2,
            "drop_rate": 0.1,
            "proj_drop_rate": 0.1,
            "drop_path_rate": 0.1,
        },
        (4, 3, 32, 32),
    ),
}


def swap_drop_layers(model, seed):  # type: ignore[no-untyped-def]
    """Replace timm's DropPath and DropBlock2d and torch's Dropout in ``model`` by xdrop's
    layers with the same arguments, seeded from ``xdrop.Generator(seed)``; the counts swapped."""
    import timm.layers
    import torch

    import xdrop
    from xdrop.layers import torch as layers

    generator = xdrop.Generator(seed)
    swapped: dict[str, int] = {}
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, timm.layers.DropPath):
                new = layers.DropPath(
                    drop_prob=child.drop_prob, scale_by_keep=child.scale_by_keep, seed=generator
                )
            elif isinstance(child, timm.layers.DropBlock2d):
                new = layers.DropBlock2d(
                    drop_prob=child.drop_prob,
                    block_size=child.block_size,
                    gamma_scale=child.gamma_scale,
                    with_noise=child.with_noise,
                    inplace=child.inplace,
                    couple_channels=child.couple_channels,
                    scale_by_keep=child.scale_by_keep,
                    seed=generator,
                )
            elif type(child) is torch.nn.Dropout:
                new = layers.Dropout(child.p, seed=generator)
            else:
                continue
            setattr(module, name, new)
            kind = type(child).__name__
            swapped[kind] = swapped.get(kind, 0) + 1
    return swapped


def train(model_name: str, action: str, directory: Path) -> None:
    """``straight``: five steps, logits saved; ``first``: three steps, then the checkpoint;
    ``resume``: a model built anew loads the checkpoint and trains two steps, logits saved."""
    import timm
    import torch

    from xdrop.layers import torch as layers

    name, options, shape = MODELS[model_name]
    torch.manual_seed(1 if action == "resume" else 0)  # resumed: other weights before loading
    model = timm.create_model(name, pretrained=False, num_classes=5, **options)
    swapped = swap_drop_layers(model, 99 if action == "resume" else 7)
    leftover = [
        type(m).__name__
        for m in model.modules()
        if isinstance(m, (timm.layers.DropPath, timm.layers.DropBlock2d))
        or type(m) is torch.nn.Dropout
    ]
    assert not leftover and swapped, (swapped, leftover)
    assert any(isinstance(m, layers.DropPath) and m.p > 0 for m in model.modules())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(3)
    batches = [
        (torch.randn(shape, generator=data), torch.randint(0, 5, (shape[0],), generator=data))
        for _ in range(5)
    ]
    steps = {"straight": range(5), "first": range(3), "resume": range(3, 5)}[action]
    checkpoint = directory / f"{model_name}.pt"
    if action == "resume":
        state = torch.load(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    model.train()
    logits = []
    for step in steps:
        images, labels = batches[step]
        output = model(images)
        loss = torch.nn.functional.cross_entropy(output, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logits.append(output.detach())
    # every xdrop layer with a rate drew once per step: its stream continued from the
    # checkpoint's step (timm's fused attention never calls its attn_drop, here of rate 0: it
    # passes the rate to F.scaled_dot_product_attention instead)
    drawing = [m for m in model.modules() if isinstance(m, layers.Dropout) and m.p > 0]
    assert {int(m.step) for m in drawing} == {steps.stop}
    if action == "first":
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint)
    torch.save(logits, directory / f"{model_name}-{action}.pt")
    print(swapped)


def _run(model_name: str, action: str, directory: Path) -> str:
    command = [sys.executable, str(HERE), model_name, action, str(directory)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stdout


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_a_timm_model_with_xdrops_layers_resumes_bit_for_bit(
    model_name: str, tmp_path: Path
) -> None:
    import torch

    swapped = _run(model_name, "straight", tmp_path)
    _run(model_name, "first", tmp_path)
    _run(model_name, "resume", tmp_path)
    straight = torch.load(tmp_path / f"{model_name}-straight.pt")
    resumed = torch.load(tmp_path / f"{model_name}-resume.pt")
    expected = {"resnet": ("DropPath", "DropBlock2d"), "vit": ("DropPath", "Dropout")}
    assert all(kind in swapped for kind in expected[model_name]), swapped
    for step, (a, b) in enumerate(zip(straight[3:], resumed, strict=True), start=3):
        assert torch.equal(a, b), f"step {step}: resumed logits differ"


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    import conftest  # noqa: F401  # torchvision's operators, before timm imports torchvision

    train(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
