"""Train a model written by others, converted by ``xdrop.layers.torch.convert``, in this process.

Run by ``tests/test_convert_transformers.py`` and ``tests/test_convert_timm_torchvision.py``, each
action in a fresh process::

    python tests/convert/train.py MODEL PREPARATION ACTION DIRECTORY

MODEL names a tiny configuration of a real library's model with random weights (no download):
Hugging Face ``BertForSequenceClassification`` with eager or SDPA attention and
``GPT2LMHeadModel``, timm's ``VisionTransformer`` and ``ResNet``, torchvision's
``EfficientNet``. PREPARATION says how its dropout is made seeded:

- ``convert``: ``convert(model, seed=...)``, the one call a user makes;
- ``by-hand``: what a user does without it: every ``torch.nn.Dropout`` *module* swapped for
  ``xdrop.layers.torch.Dropout``, the functional dropout in the forward left as it is.

ACTION:

- ``straight``: weights from ``torch.manual_seed(0)``, prepared with seed 7, trained ``STEPS``
  steps with an optimizer; after step ``CHECKPOINT_AFTER`` the model's and the optimizer's
  ``state_dict()`` go to ``checkpoint.pt``. Writes ``straight.pt``.
- ``resume``: other weights (``torch.manual_seed(1)``), prepared with seed 99, then the checkpoint
  loaded and the remaining steps trained. Writes ``resume.pt``.
- ``compile``: two models built and converted alike; one runs eagerly, the other under
  ``torch.compile(fullgraph=True)``: two training-mode forward and backward passes each. Writes
  ``compile.pt``.
- ``checkpointing``: two models built and converted alike, the second with gradient
  checkpointing: two R-Dropout steps' losses and gradients each, or the error raised. Writes
  ``checkpointing.pt``.

A training record holds, per step trained, the loss, the KL divergence between the two
R-Dropout passes and whether ``torch.get_rng_state()`` was the same after the step as before; the
final ``state_dict()`` of the model and of the optimizer; what ``prepare`` found and replaced; and
for timm's ResNet, its head's input and output of ``F.dropout`` at the first step. The tests
compare records across processes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from torchvision_cpu import define_torchvision_operators  # noqa: E402

define_torchvision_operators()  # before transformers or timm import torchvision

import torch  # noqa: E402

import xdrop  # noqa: E402
from xdrop.layers import common  # noqa: E402
from xdrop.layers import torch as layers  # noqa: E402

STEPS = 6
CHECKPOINT_AFTER = 3  # steps 0..2 before the checkpoint, 3..5 after it
SEEDS = {"straight": 7, "resume": 99, "compile": 7}
INIT = {"straight": 0, "resume": 1, "compile": 0}

Batch = dict[str, torch.Tensor]


# -- the models: tiny configurations, random weights -------------------------------------------
def bert(attention: str) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=100,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=32,
        num_labels=3,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        attn_implementation=attention,
    )
    model = BertForSequenceClassification(config)
    assert model.config._attn_implementation == attention, model.config._attn_implementation
    return model


def gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=100,
        n_positions=32,
        n_embd=64,
        n_layer=2,
        n_head=4,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
        resid_pdrop=0.1,
    )
    return GPT2LMHeadModel(config)


def vit() -> torch.nn.Module:
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        num_classes=5,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        drop_rate=0.1,
        pos_drop_rate=0.1,
        proj_drop_rate=0.1,
        attn_drop_rate=0.1,
        drop_path_rate=0.1,
    )


def resnet() -> torch.nn.Module:
    import timm

    # drop_rate: timm's ResNet calls F.dropout in forward_head, there is no module for it
    return timm.create_model(
        "resnet18",
        pretrained=False,
        num_classes=5,
        layers=[1, 1, 1, 1],
        drop_rate=0.1,
        drop_path_rate=0.1,
        drop_block_rate=0.1,
    )


def efficientnet() -> torch.nn.Module:
    import torchvision

    return torchvision.models.efficientnet_b0(
        weights=None, num_classes=5, stochastic_depth_prob=0.2, dropout=0.2
    )


def token_batch(step: int, labels: int | None) -> Batch:
    """Token ids (4, 16) with the first sequence padded after 12 tokens; class labels if asked."""
    data = torch.Generator().manual_seed(1000 + step)  # a generator of its own: never the global
    batch = {
        "input_ids": torch.randint(0, 100, (4, 16), generator=data),
        "attention_mask": torch.ones(4, 16, dtype=torch.long),
    }
    batch["attention_mask"][0, 12:] = 0
    if labels is not None:
        batch["labels"] = torch.randint(0, labels, (4,), generator=data)
    return batch


def image_batch(step: int, size: int) -> Batch:
    data = torch.Generator().manual_seed(1000 + step)
    return {
        "images": torch.randn(4, 3, size, size, generator=data),
        "labels": torch.randint(0, 5, (4,), generator=data),
    }


def classify_with_rdrop(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """R-Dropout (``xdrop.rdrop_forward``/``rdrop_loss``): the batch doubled in one call. The
    loss, and the KL divergence between the two passes (0 if dropout did nothing)."""
    mask = torch.cat([batch["attention_mask"]] * 2)
    logits1, logits2 = xdrop.rdrop_forward(
        lambda ids: model(input_ids=ids, attention_mask=mask).logits, batch["input_ids"]
    )
    return rdrop(logits1, logits2, batch["labels"])


def language_model_with_rdrop(
    model: torch.nn.Module, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor]:
    """R-Dropout on next-token prediction: each position's logits predict the next token."""
    ids = batch["input_ids"]
    logits1, logits2 = xdrop.rdrop_forward(lambda x: model(input_ids=x).logits, ids)
    return rdrop(logits1[:, :-1], logits2[:, :-1], ids[:, 1:])


def classify_images_with_rdrop(
    model: torch.nn.Module, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor]:
    # batch norm sees the doubled batch: the two copies of an image differ by dropout alone
    logits1, logits2 = xdrop.rdrop_forward(model, batch["images"])
    return rdrop(logits1, logits2, batch["labels"])


def rdrop(
    logits1: torch.Tensor, logits2: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    loss = xdrop.rdrop_loss(logits1, logits2, labels, alpha=1.0)
    return loss, xdrop.rdrop_kl(logits1.detach(), logits2.detach())


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=1e-3)


def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


class Scenario:
    """A model, how a batch of a step looks, the loss of a training step, the optimizer."""

    def __init__(
        self,
        build: Callable[[], torch.nn.Module],
        batch: Callable[[int], Batch],
        loss: Callable[[torch.nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]],
        optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
    ) -> None:
        self.build, self.batch, self.loss, self.optimizer = build, batch, loss, optimizer


MODELS = {
    "bert-eager": Scenario(
        lambda: bert("eager"), lambda s: token_batch(s, 3), classify_with_rdrop, adamw
    ),
    "bert-sdpa": Scenario(
        lambda: bert("sdpa"), lambda s: token_batch(s, 3), classify_with_rdrop, adamw
    ),
    "gpt2": Scenario(gpt2, lambda s: token_batch(s, None), language_model_with_rdrop, adamw),
    "vit": Scenario(vit, lambda s: image_batch(s, 32), classify_images_with_rdrop, sgd),
    "resnet": Scenario(resnet, lambda s: image_batch(s, 64), classify_images_with_rdrop, sgd),
    "efficientnet": Scenario(
        efficientnet, lambda s: image_batch(s, 32), classify_images_with_rdrop, sgd
    ),
}


# -- making dropout seeded ---------------------------------------------------------------------
def foreign_dropout(module: torch.nn.Module) -> bool:
    """Whether ``module`` is one of the dropout modules of torch, timm or torchvision."""
    kinds: list[type] = [torch.nn.modules.dropout._DropoutNd]
    if "timm" in sys.modules:
        import timm.layers

        kinds += [timm.layers.DropPath, timm.layers.DropBlock2d]
    if "torchvision" in sys.modules:
        import torchvision.ops

        kinds.append(torchvision.ops.StochasticDepth)
    return isinstance(module, tuple(kinds))


def by_hand(model: torch.nn.Module, seed: int) -> None:
    """What a user writes without ``convert``: each ``torch.nn.Dropout`` module swapped."""
    for name, module in list(model.named_modules()):
        if type(module) is torch.nn.Dropout:
            parent, _, attribute = name.rpartition(".")
            new = layers.Dropout(module.p, seed=common.site_seed(seed, name))
            setattr(model.get_submodule(parent), attribute, new)


def prepare(model: torch.nn.Module, preparation: str, seed: int) -> dict[str, Any]:
    """Make the model's dropout seeded. What was found and what became of it: per dropout module
    found, by qualified name, its class and rate before and after and the layer's seed beside the
    site's seed; the names of dropout modules left."""
    before = {name: m for name, m in model.named_modules() if foreign_dropout(m)}
    if preparation == "convert":
        returned = layers.convert(model, seed=seed)
        assert returned is model, "convert changes the model in place and returns it"
    else:
        by_hand(model, seed)
    after = dict(model.named_modules())
    replaced = {
        name: {
            "class": (type(old).__name__, type(after[name]).__name__),
            "rate": (old_rate(old), after[name].p),
            "seed": (int(after[name].seed) % 2**64, common.site_seed(seed, name)),
        }
        for name, old in before.items()
        if isinstance(after.get(name), layers.Dropout)
    }
    left = sorted(name for name, m in model.named_modules() if foreign_dropout(m))
    return {"found": sorted(before), "replaced": replaced, "left": left}


def old_rate(module: torch.nn.Module) -> float:
    for attribute in ("p", "drop_prob"):
        if hasattr(module, attribute):
            return float(getattr(module, attribute))
    raise AssertionError(f"no rate on {module!r}")


def probe_resnet_head(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[Any]]:
    """Hooks that keep, at the first training forward, what timm's ResNet passes to its head's
    ``F.dropout`` (the pooled features) and what comes out of it (the classifier's input)."""
    seen: dict[str, torch.Tensor] = {}

    def pooled(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
        seen.setdefault("pooled", output.detach().clone())

    def dropped(module: torch.nn.Module, args: Any) -> None:
        seen.setdefault("dropped", args[0].detach().clone())

    hooks = [
        model.get_submodule("global_pool").register_forward_hook(pooled),
        model.get_submodule("fc").register_forward_pre_hook(dropped),
    ]
    return seen, hooks


# -- the actions -------------------------------------------------------------------------------
def build(scenario: Scenario, action: str, preparation: str) -> tuple[torch.nn.Module, Any]:
    torch.manual_seed(INIT[action])  # the weights: torch's generator, before training starts
    model = scenario.build()
    return model, prepare(model, preparation, SEEDS[action])


def train(name: str, preparation: str, action: str, directory: Path) -> None:
    scenario = MODELS[name]
    model, prepared = build(scenario, action, preparation)
    optimizer = scenario.optimizer(model)
    checkpoint = directory / "checkpoint.pt"
    steps = range(STEPS) if action == "straight" else range(CHECKPOINT_AFTER, STEPS)
    if action == "resume":
        state = torch.load(checkpoint)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    model.train()
    head, hooks = probe_resnet_head(model) if name == "resnet" else ({}, [])
    losses, divergences, rng_kept = [], [], []
    for step in steps:
        if action == "straight" and step == CHECKPOINT_AFTER:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            torch.save(state, checkpoint)
        batch = scenario.batch(step)
        before = torch.get_rng_state()
        loss, divergence = scenario.loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rng_kept.append(torch.equal(before, torch.get_rng_state()))
        losses.append(loss.detach())
        divergences.append(float(divergence))
        for hook in hooks:
            hook.remove()
        hooks = []
    record = {
        "steps": list(steps),
        "losses": losses,
        "divergences": divergences,
        "rng_kept": rng_kept,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "prepared": prepared,
        "head": head,
    }
    torch.save(record, directory / f"{action}.pt")


def compiled(name: str, directory: Path, backend: str) -> None:
    """Eager against ``torch.compile(fullgraph=True)``: two forward and backward passes in
    training mode on one batch, without an optimizer step."""
    xdrop.registry.load_triton_before_tensorflow()  # should anything import TensorFlow
    scenario = MODELS[name]
    eager, _ = build(scenario, "compile", "convert")
    twin, _ = build(scenario, "compile", "convert")
    twin_forward = torch.compile(twin, backend=backend, fullgraph=True)
    record: dict[str, Any] = {}
    for label, model, forward in (("eager", eager, eager), ("compiled", twin, twin_forward)):
        model.train()
        before = torch.get_rng_state()
        outputs, gradients = [], []
        batch = scenario.batch(0)  # one batch twice: the outputs differ by the masks alone
        for _ in range(2):
            logits = forward(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            logits = logits.logits
            model.zero_grad()
            logits.square().mean().backward()
            outputs.append(logits.detach())
            gradients.append({n: p.grad.clone() for n, p in model.named_parameters()})
        record[label] = {
            "outputs": outputs,
            "gradients": gradients,
            "rng_kept": torch.equal(before, torch.get_rng_state()),
            "state": {k: v for k, v in model.state_dict().items() if not v.is_floating_point()},
        }
    torch.save(record, directory / "compile.pt")


def checkpointed(name: str, directory: Path) -> None:
    """Two models built and converted alike, the second with its library's gradient
    checkpointing (its blocks' forward runs again during backward): two training steps' losses,
    gradients and streams' steps, or the error that refused them."""
    scenario = MODELS[name]
    record: dict[str, Any] = {}
    for recomputed in (False, True):
        model, _ = build(scenario, "compile", "convert")
        if recomputed and hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable()  # Hugging Face
        elif recomputed:
            model.set_grad_checkpointing(True)  # timm
        model.train()
        losses, gradients = [], []
        try:
            for step in range(2):
                loss, _ = scenario.loss(model, scenario.batch(step))
                model.zero_grad()
                loss.backward()
                losses.append(loss.detach())
                gradients.append({n: p.grad.clone() for n, p in model.named_parameters()})
        except Exception as error:
            refused = isinstance(error, xdrop.XdropError)
            record[str(recomputed)] = {
                "error": f"{type(error).__name__}: {error}",
                "xdrop": refused,
            }
            continue
        steps = {k: v for k, v in model.state_dict().items() if k.endswith("step")}
        record[str(recomputed)] = {"losses": losses, "gradients": gradients, "steps": steps}
    torch.save(record, directory / "checkpointing.pt")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_name, how, what, where = sys.argv[1:5]
    if what == "compile":
        compiled(model_name, Path(where), sys.argv[5] if len(sys.argv) > 5 else "inductor")
    elif what == "checkpointing":
        checkpointed(model_name, Path(where))
    else:
        train(model_name, how, what, Path(where))
