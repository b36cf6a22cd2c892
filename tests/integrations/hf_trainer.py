"""Train tiny Hugging Face models with ``xdrop.integrations.transformers.RDropTrainer``.

Run by ``tests/test_rdrop_transformers.py``, each action in a fresh process::

    python tests/integrations/hf_trainer.py ACTION DIRECTORY

Models are built from configurations with random weights (no download), data are token ids
made by hand in a ``torch.utils.data.Dataset`` (no ``datasets``). ACTION:

- ``losses``: for each head (sequence classification, token classification, causal language
  model, one with LoRA adapters where PEFT is installed, sequence to sequence, regression) a few steps of ``RDropTrainer`` with the model
  converted (``convert_seed``); at each step the loss the Trainer returned and the gradients it
  back-propagated, beside the same two passes recomputed by hand from the step's ``state_dict``
  and the loss of ``xdrop.rdrop_loss`` on them. Then ``evaluate`` of ``RDropTrainer`` and of the
  plain ``Trainer`` on the trained model. Writes ``losses.pt``.
- ``straight``: a converted BERT trained 6 steps, checkpointed by the Trainer after step 3;
  writes ``straight.pt`` (the final ``state_dict`` and the logged losses).
- ``resume``: a BERT built with other weights and converted with another seed, trained by a
  new ``RDropTrainer`` from the checkpoint of step 3 to step 6; writes ``resume.pt``.
- ``straight-lora``, ``resume-lora``: the same for GPT-2 with LoRA adapters, whose checkpoint
  holds the adapters and xdrop's streams beside them (the base weights are built alike).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from torchvision_cpu import define_torchvision_operators  # noqa: E402

define_torchvision_operators()  # before transformers imports torchvision

import safetensors.torch  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import xdrop  # noqa: E402
from xdrop.integrations.transformers import RDropTrainer  # noqa: E402
from xdrop.layers.torch import convert, stream_state_dict  # noqa: E402

torch.set_num_threads(1)
transformers.logging.set_verbosity_error()
ALPHA = 0.7
BATCH, LENGTH, VOCAB = 4, 12, 60
Batch = dict[str, torch.Tensor]


class Examples(torch.utils.data.Dataset[Batch]):
    """``count`` examples of token ids, the last tokens of every other one padded."""

    def __init__(self, count: int, labels: Callable[[torch.Generator, Batch], torch.Tensor]):
        data = torch.Generator().manual_seed(count)
        self.examples = []
        for index in range(count):
            ids = torch.randint(3, VOCAB, (LENGTH,), generator=data)
            mask = torch.ones(LENGTH, dtype=torch.long)
            if index % 2:
                mask[LENGTH - 4 :] = 0
                ids[LENGTH - 4 :] = 1
            example = {"input_ids": ids, "attention_mask": mask}
            example["labels"] = labels(data, example)
            self.examples.append(example)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Batch:
        return self.examples[index]


def class_label(data: torch.Generator, example: Batch) -> torch.Tensor:
    return torch.randint(0, 3, (), generator=data)


def score(data: torch.Generator, example: Batch) -> torch.Tensor:
    return torch.randn((), generator=data)


def token_labels(data: torch.Generator, example: Batch) -> torch.Tensor:
    """A label per token; ``-100`` at the first token (as for ``[CLS]``) and on some others;
    padded tokens keep class labels: the attention mask alone must keep them out."""
    labels = torch.randint(0, 5, (LENGTH,), generator=data)
    labels[0] = -100
    labels[torch.rand(LENGTH, generator=data) < 0.2] = -100
    return labels


def target_ids(data: torch.Generator, example: Batch) -> torch.Tensor:
    """Decoder targets of 8 tokens, ``-100`` after a random length (as a collator pads them)."""
    labels = torch.randint(3, VOCAB, (8,), generator=data)
    labels[int(torch.randint(4, 9, (), generator=data)) :] = -100
    return labels


def next_tokens(data: torch.Generator, example: Batch) -> torch.Tensor:
    """A causal LM's labels: the input ids, -100 where padded (as Hugging Face's collator)."""
    return example["input_ids"].where(example["attention_mask"] == 1, -100)


def bert_config(**options: Any) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        **options,
    )


def classifier() -> torch.nn.Module:
    return transformers.BertForSequenceClassification(bert_config(num_labels=3))


def regressor() -> torch.nn.Module:
    return transformers.BertForSequenceClassification(bert_config(num_labels=1))


def tagger() -> torch.nn.Module:
    return transformers.BertForTokenClassification(bert_config(num_labels=5))


class OwnWriter(transformers.GPT2LMHeadModel):
    """A user's subclass of a causal LM: its class says its labels shift as its base's do."""


def own_writer() -> torch.nn.Module:
    return OwnWriter(writer().config)


def writer() -> torch.nn.Module:
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=LENGTH,
        n_embd=32,
        n_layer=2,
        n_head=2,
        embd_pdrop=0.1,
        attn_pdrop=0.1,
        resid_pdrop=0.1,
    )
    return transformers.GPT2LMHeadModel(config)


def adapted_writer() -> torch.nn.Module:
    return adapted(writer())


def adapted(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with LoRA adapters (PEFT) on its attention, their own dropout in front of them."""
    import peft

    lora = peft.LoraConfig(
        r=4,
        target_modules=["c_attn"],
        lora_dropout=0.1,
        init_lora_weights=False,  # adapters that change the logits from the first step
        task_type="CAUSAL_LM",
    )
    return peft.get_peft_model(model, lora)


def translator() -> torch.nn.Module:
    config = transformers.BartConfig(
        vocab_size=VOCAB,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=LENGTH,
        dropout=0.1,
        attention_dropout=0.1,
        activation_dropout=0.1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    return transformers.BartForConditionalGeneration(config)


def arguments(directory: Path, steps: int, **options: Any) -> transformers.TrainingArguments:
    settings: dict[str, Any] = {
        "per_device_train_batch_size": BATCH,
        "per_device_eval_batch_size": BATCH,
        "learning_rate": 1e-3,
        "max_grad_norm": 0.0,  # no clipping: the gradients recorded are the loss's own
        "logging_steps": 1,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
    }
    settings.update(options)
    return transformers.TrainingArguments(output_dir=str(directory), max_steps=steps, **settings)


class Recorder(transformers.TrainerCallback):
    """Per step: the model's ``state_dict`` before it, and the gradients before the update."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.gradients: list[dict[str, torch.Tensor]] = []

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        self.states.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        self.gradients.append(
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        )


class Spy(RDropTrainer):
    """``RDropTrainer`` that keeps each training batch and the loss it returned for it."""

    batches: list[Batch]
    losses: list[torch.Tensor]

    def compute_loss(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        loss = super().compute_loss(model, inputs, *args, **kwargs)
        if model.training:
            self.batches.append({k: v.clone() for k, v in inputs.items()})
            self.losses.append(loss.detach().clone())
        return loss


def two_passes(model: torch.nn.Module, batch: Batch, seq2seq: bool) -> tuple[Any, Any]:
    """The model's logits on the batch doubled, split in two: R-Dropout's two passes."""
    mask = torch.cat([batch["attention_mask"]] * 2)
    extra = {}
    if seq2seq:
        config = model.config
        decoder_ids = transformers.models.bart.modeling_bart.shift_tokens_right(
            batch["labels"], config.pad_token_id, config.decoder_start_token_id
        )
        extra["decoder_input_ids"] = torch.cat([decoder_ids] * 2)
    return xdrop.rdrop_forward(
        lambda ids: model(input_ids=ids, attention_mask=mask, **extra).logits,
        batch["input_ids"],
    )


def by_hand(head: str, logits1: torch.Tensor, logits2: torch.Tensor, batch: Batch) -> Any:
    """The loss the Trainer must give, from xdrop's functions."""
    labels = batch["labels"]
    if head == "regression":
        return xdrop.rdrop_regression_loss(logits1[:, 0], logits2[:, 0], labels, alpha=ALPHA)
    if head == "tokens":
        pad = batch["attention_mask"] == 0
        return xdrop.rdrop_loss(
            logits1, logits2, labels, alpha=ALPHA, ignore_index=-100, pad_mask=pad
        )
    if head.startswith("causal"):  # the logits at token t predict token t + 1
        pad = batch["attention_mask"][:, 1:] == 0
        return xdrop.rdrop_loss(
            logits1[:, :-1],
            logits2[:, :-1],
            labels[:, 1:],
            alpha=ALPHA,
            ignore_index=-100,
            pad_mask=pad,
        )
    return xdrop.rdrop_loss(logits1, logits2, labels, alpha=ALPHA, ignore_index=-100)


def by_formula(logits1: torch.Tensor, logits2: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Token classification's loss written out in torch: both cross entropies and the
    symmetric KL per token, averaged over the tokens neither padded nor labelled -100."""
    f = torch.nn.functional
    counted = (batch["labels"] != -100) & (batch["attention_mask"] == 1)
    labels = batch["labels"].where(counted, 0)
    p1, p2 = f.log_softmax(logits1, -1), f.log_softmax(logits2, -1)
    nll = f.nll_loss(p1.transpose(1, 2), labels, reduction="none") + f.nll_loss(
        p2.transpose(1, 2), labels, reduction="none"
    )
    kl = 0.5 * ((p1.exp() - p2.exp()) * (p1 - p2)).sum(-1)
    return ((nll + ALPHA * kl) * counted).sum() / counted.sum()


HEADS: dict[str, tuple[Callable[[], torch.nn.Module], Callable[..., torch.Tensor]]] = {
    "classification": (classifier, class_label),
    "tokens": (tagger, token_labels),
    "causal": (writer, next_tokens),
    "causal subclass": (own_writer, next_tokens),
    "seq2seq": (translator, target_ids),
    "regression": (regressor, score),
}
if importlib.util.find_spec("peft") is not None:
    HEADS["causal LoRA"] = (adapted_writer, next_tokens)


def losses(directory: Path) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for head, (build, labels) in HEADS.items():
        torch.manual_seed(0)
        recorder = Recorder()
        trainer = Spy(
            build(),
            arguments(directory / head, 3, save_strategy="no"),
            train_dataset=Examples(3 * BATCH, labels),
            callbacks=[recorder],
            alpha=ALPHA,
            convert_seed=7,
        )
        trainer.batches, trainer.losses = [], []
        trainer.train()
        torch.manual_seed(1)
        hand = convert(build(), seed=3)  # its streams come from the state_dicts loaded
        steps = []
        for state, batch, loss, gradients in zip(
            recorder.states, trainer.batches, trainer.losses, recorder.gradients, strict=True
        ):
            hand.load_state_dict(state)
            hand.train()
            hand.zero_grad()
            logits1, logits2 = two_passes(hand, batch, head == "seq2seq")
            expected = by_hand(head, logits1, logits2, batch)
            expected.backward()
            step = {
                "trainer": loss,
                "by_hand": expected.detach(),
                "passes_differ": not torch.equal(logits1, logits2),
                "gradients": gradients,
                "hand_gradients": {
                    n: p.grad.clone() for n, p in hand.named_parameters() if p.grad is not None
                },
            }
            if head == "tokens":
                step["formula"] = by_formula(logits1.detach(), logits2.detach(), batch)
            if head == "regression":  # as the R-Drop authors' BERT code writes it
                mse = torch.nn.functional.mse_loss
                p1, p2, y = logits1.detach()[:, 0], logits2.detach()[:, 0], batch["labels"]
                step["formula"] = mse(p1, y) + mse(p2, y) + ALPHA * mse(p1, p2)
            steps.append(step)
        model = trainer.model
        assert model is not None
        step_before = model.xdrop_step.clone()
        evaluation = Examples(2 * BATCH, labels)
        rdrop_eval = trainer.evaluate(evaluation)["eval_loss"]
        plain = transformers.Trainer(model, arguments(directory / f"{head}-plain", 1))
        record[head] = {
            "steps": steps,
            "eval": rdrop_eval,
            "plain_eval": plain.evaluate(evaluation)["eval_loss"],
            "eval_drew": not torch.equal(model.xdrop_step, step_before),
        }
    torch.manual_seed(0)
    unconverted = RDropTrainer(classifier(), arguments(directory / "plain", 1))
    record["unconverted_buffers"] = [n for n, _ in unconverted.model.named_buffers()]
    record["errors"] = refusals(directory)
    record["accumulation"] = accumulation(directory)
    if "causal LoRA" in HEADS:
        record["adapters"] = adapters(directory / "adapters")
    return record


def adapters(directory: Path) -> dict[str, Any]:
    """A LoRA GPT-2: its losses trained compiled (``torch_compile``, Dynamo's eager backend)
    and not; a checkpoint of one whose dropout module is registered twice; and with
    ``load_best_model_at_end``, its streams after training beside the best checkpoint's."""

    def lora_trainer(folder: str, steps: int, **options: Any) -> RDropTrainer:
        torch.manual_seed(0)
        arguments_ = arguments(directory / folder, steps, **options)
        data = Examples(steps * BATCH, next_tokens)
        return RDropTrainer(
            adapted_writer(), arguments_, train_dataset=data, eval_dataset=data, convert_seed=7
        )

    record: dict[str, Any] = {}
    for folder, options in [("eager", {}), ("compiled", {"torch_compile": True})]:
        trainer = lora_trainer(
            folder, 2, save_strategy="no", torch_compile_backend="eager", **options
        )
        trainer.train()
        record[folder] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    shared = lora_trainer("shared", 1, save_strategy="no")
    transformer = shared.model.get_base_model().transformer
    transformer.h[0].attn.resid_dropout = transformer.drop  # one module in two places
    shared.save_model(str(directory / "shared"))
    record["shared"] = sorted(os.listdir(directory / "shared"))
    best = lora_trainer(
        "best",
        3,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=True,  # the first checkpoint, not the last
    )
    best.train()
    record["best"] = best.state.best_model_checkpoint
    record["best_streams"] = safetensors.torch.load_file(
        Path(best.state.best_model_checkpoint) / "xdrop_streams.safetensors"
    )
    record["final_streams"] = stream_state_dict(best.model)
    torch.manual_seed(0)
    unconverted = RDropTrainer(
        adapted_writer(),
        arguments(directory / "unconverted", 3),
        train_dataset=Examples(3 * BATCH, next_tokens),
    )
    try:
        unconverted.train(resume_from_checkpoint=best.state.best_model_checkpoint)
    except xdrop.ArgumentValueError as error:
        record["unconverted_resume"] = str(error)
    return record


def accumulation(directory: Path) -> dict[str, Any]:
    """One optimizer step over two batches of 2 (``gradient_accumulation_steps=2``): the
    gradients it applies, and those of the mean of the two batches' losses by hand."""
    torch.manual_seed(0)
    recorder = Recorder()
    options = {
        "save_strategy": "no",
        "gradient_accumulation_steps": 2,
        "per_device_train_batch_size": BATCH // 2,
    }
    trainer = Spy(
        classifier(),
        arguments(directory / "accumulation", 1, **options),
        train_dataset=Examples(BATCH, class_label),
        callbacks=[recorder],
        alpha=ALPHA,
        convert_seed=7,
    )
    trainer.batches, trainer.losses = [], []
    trainer.train()
    hand = convert(classifier(), seed=3)
    hand.load_state_dict(recorder.states[0])
    hand.train()
    total = 0.0
    for batch in trainer.batches:  # in order: the streams advance once per forward
        total = total + by_hand("classification", *two_passes(hand, batch, False), batch) / 2
    assert isinstance(total, torch.Tensor)
    total.backward()
    return {
        "batches": len(trainer.batches),
        "gradients": recorder.gradients,
        "hand_gradients": {n: p.grad for n, p in hand.named_parameters() if p.grad is not None},
    }


def refusals(directory: Path) -> dict[str, tuple[str, str]]:
    """What each unsupported use raises: the error's class and message."""
    multi_label = transformers.BertForSequenceClassification(
        bert_config(num_labels=3, problem_type="multi_label_classification")
    )

    def several(data: torch.Generator, example: Batch) -> torch.Tensor:
        return (torch.rand(3, generator=data) < 0.5).float()

    def unlabelled() -> list[Batch]:
        examples = Examples(BATCH, class_label)
        return [{k: v for k, v in e.items() if k != "labels"} for e in examples.examples]

    uses: dict[str, Callable[[], object]] = {
        "no_labels": lambda: RDropTrainer(
            classifier(), arguments(directory, 1), train_dataset=unlabelled()
        ).train(),
        "alpha": lambda: RDropTrainer(classifier(), arguments(directory, 1), alpha=-1.0),
        "model_init": lambda: RDropTrainer(
            args=arguments(directory, 1), model_init=classifier, convert_seed=1
        ),
        "multi_label": lambda: RDropTrainer(
            multi_label, arguments(directory, 1), train_dataset=Examples(BATCH, several)
        ).train(),
        # generative, and no class it derives from says whether its labels shift
        "unknown_generator": lambda: RDropTrainer(
            transformers.GPT2DoubleHeadsModel(writer().config),
            arguments(directory, 1),
            train_dataset=Examples(BATCH, next_tokens),
        ).train(),
        "compute_loss_func": lambda: RDropTrainer(
            classifier(), arguments(directory, 1), compute_loss_func=lambda *_, **__: 0.0
        ),
    }
    raised = {}
    for use, call in uses.items():
        try:
            call()
        except Exception as error:  # the test reads what was raised
            raised[use] = (type(error).__name__, str(error))
    return raised


def resumable_trainer(model: str, directory: Path, init: int, seed: int) -> RDropTrainer:
    """A trainer of 6 steps that checkpoints after step 3: BERT built from the seed ``init``, or
    (``model="lora"``) GPT-2 whose base weights are the same in every process, as pretrained
    ones are, and whose adapters are built from ``init``."""
    if model == "lora":
        torch.manual_seed(0)
        base = writer()
        torch.manual_seed(init)
        built, labels = adapted(base), next_tokens
    else:
        torch.manual_seed(init)
        built, labels = classifier(), class_label
    return RDropTrainer(
        built,
        arguments(directory, 6, save_strategy="steps", save_steps=3),
        train_dataset=Examples(6 * BATCH, labels),
        alpha=ALPHA,
        convert_seed=seed,
    )


def trained(trainer: RDropTrainer) -> dict[str, Any]:
    model = trainer.model
    assert model is not None
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "losses": {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e},
    }


def main() -> None:
    action, directory = sys.argv[1], Path(sys.argv[2])
    if action == "losses":
        record = losses(directory)
    elif action in ("straight", "straight-lora"):
        trainer = resumable_trainer(action.partition("-")[2], directory / action, init=0, seed=7)
        trainer.train()
        record = trained(trainer)
        record["checkpoint"] = sorted(os.listdir(directory / action / "checkpoint-3"))
    elif action in ("resume", "resume-lora"):
        model = action.partition("-")[2]
        trainer = resumable_trainer(model, directory / action, init=1, seed=99)
        straight = directory / action.replace("resume", "straight")
        trainer.train(resume_from_checkpoint=str(straight / "checkpoint-3"))
        record = trained(trainer)
    else:
        raise SystemExit(f"unknown action {action!r}")
    torch.save(record, directory / f"{action}.pt")


if __name__ == "__main__":
    main()
