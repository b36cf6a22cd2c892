"""A torchvision model written by others, its drop layers swapped for xdrop's, goes through
torchvision's ``create_feature_extractor`` (a ``torch.fx`` trace), trains, checkpoints and resumes
bit for bit in a fresh process.

torchvision's EfficientNet-B0 (random weights) holds ``torchvision.ops.StochasticDepth`` in every
block and ``torch.nn.Dropout`` in its classifier; a small helper replaces them by xdrop's
``StochasticDepth`` and ``Dropout`` with the same arguments (a general converter is future work).
The feature extractor returns a middle feature map and the logits; three SGD steps, a
``torch.save`` of the extractor's and the optimizer's ``state_dict()``, then a new process builds
the extractor anew (other weights, other drop seeds), loads the checkpoint and trains two more
steps: its outputs equal those of an uninterrupted five-step run, bit for bit.

Run as a script by the test: ``python test_torchvision_features.py ACTION DIRECTORY``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent

HERE = Path(__file__).resolve()
NODES = {"features.3": "middle", "classifier": "logits"}


def extractor(seed: int):  # type: ignore[no-untyped-def]
    """EfficientNet-B0 with xdrop's drop layers, as torchvision's feature extractor traces it."""
    import torch
    import torchvision
    from torchvision.models.feature_extraction import create_feature_extractor

    import xdrop
    from xdrop.layers import torch as layers

    model = torchvision.models.efficientnet_b0(weights=None, num_classes=5)
    generator = xdrop.Generator(seed)
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torchvision.ops.StochasticDepth):
                new = layers.StochasticDepth(child.p, child.mode, seed=generator)
            elif type(child) is torch.nn.Dropout:
                new = layers.Dropout(child.p, child.inplace, seed=generator)
            else:
                continue
            setattr(module, name, new)
            swapped += 1
    assert swapped == 17, swapped  # 16 blocks' StochasticDepth and the classifier's Dropout
    features = create_feature_extractor(model, return_nodes=NODES)
    # each xdrop layer is one call_module node of the trace, as torch.nn.Dropout is
    calls = {node.target for node in features.graph.nodes if node.op == "call_module"}
    drops = {
        name for name, module in features.named_modules() if isinstance(module, layers.Dropout)
    }
    assert drops and drops <= calls, drops - calls
    return features


def train(action: str, directory: Path) -> None:
    """``straight``: five steps, outputs saved; ``first``: three steps, then the checkpoint;
    ``resume``: an extractor built anew loads the checkpoint and trains two steps."""
    import torch

    from xdrop.layers import torch as layers

    torch.manual_seed(1 if action == "resume" else 0)  # resumed: other weights before loading
    features = extractor(99 if action == "resume" else 7)
    optimizer = torch.optim.SGD(features.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(3)
    batches = [
        (torch.randn(4, 3, 32, 32, generator=data), torch.randint(0, 5, (4,), generator=data))
        for _ in range(5)
    ]
    steps = {"straight": range(5), "first": range(3), "resume": range(3, 5)}[action]
    checkpoint = directory / "efficientnet.pt"
    if action == "resume":
        state = torch.load(checkpoint)
        features.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    features.train()
    outputs = []
    for step in steps:
        images, labels = batches[step]
        out = features(images)
        loss = torch.nn.functional.cross_entropy(out["logits"], labels) + out["middle"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        outputs.append({key: value.detach() for key, value in out.items()})
    drawing = [m for m in features.modules() if isinstance(m, layers.Dropout) and m.p > 0]
    assert {int(m.step) for m in drawing} == {steps.stop}  # each drew once per step
    if action == "first":
        torch.save(
            {"model": features.state_dict(), "optimizer": optimizer.state_dict()}, checkpoint
        )
    torch.save(outputs, directory / f"efficientnet-{action}.pt")


def _run(action: str, directory: Path) -> None:
    command = [sys.executable, str(HERE), action, str(directory)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]


def test_a_torchvision_feature_extractor_with_xdrops_layers_resumes_bit_for_bit(
    tmp_path: Path,
) -> None:
    import torch

    for action in ("straight", "first", "resume"):
        _run(action, tmp_path)
    straight = torch.load(tmp_path / "efficientnet-straight.pt")
    resumed = torch.load(tmp_path / "efficientnet-resume.pt")
    for step, (a, b) in enumerate(zip(straight[3:], resumed, strict=True), start=3):
        for key in NODES.values():
            assert torch.equal(a[key], b[key]), f"step {step}: resumed {key} differs"
    assert not torch.equal(straight[3]["logits"], straight[4]["logits"])


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    import conftest  # noqa: F401  # torchvision's operators, before torchvision is imported

    train(sys.argv[1], Path(sys.argv[2]))
