"""R-Dropout in Hugging Face's ``transformers.Trainer``: :class:`RDropTrainer`.

Importing this module imports torch and ``transformers`` (whose ``Trainer`` needs
``accelerate``); ``import xdrop`` does not import it.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import safetensors.torch
import torch
import transformers
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
)

import xdrop
from xdrop.errors import Shown, bad_type, bad_value
from xdrop.seeds import Generator
from xdrop.validation import check_alpha

__all__ = ["RDropTrainer"]

STREAMS_FILE = "xdrop_streams.safetensors"
"""The file beside a PEFT model's adapters in which :class:`RDropTrainer` saves xdrop's streams."""

IGNORE_INDEX = -100
"""The label Hugging Face's losses ignore (``CrossEntropyLoss``'s default ``ignore_index``)."""

SHIFTED = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()) | frozenset(
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values()
)
"""The classes whose own loss shifts the labels: causal LMs, and the vision-language models that
generate text with a decoder alone (the encoder-decoder ones shift into their decoder's inputs)."""


class RDropTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that trains with R-Dropout (Liang et al. 2021).

    Each training step runs the model **once on the doubled batch** (every tensor input whose
    first axis is the batch's, concatenated with itself along it), so that dropout draws two
    independent masks per sample, splits the output in two passes and returns, per position::

        L = NLL1 + NLL2 + alpha * (KL(P1 || P2) + KL(P2 || P1)) / 2

    averaged over the positions that count: :func:`xdrop.rdrop_loss` with ``reduction="mean"``.
    The positions follow from the labels:

    - sequence classification (``labels`` of shape ``(batch,)``): one position per sample;
    - token-level heads (token classification, masked LM; ``labels`` of the logits' shape less
      the class axis): one per token, labels ``-100`` ignored, and where the inputs hold an
      ``attention_mask`` of the labels' shape, its zeros (padding) ignored too;
    - causal language models (transformers' causal LMs and decoder-only vision-language models,
      or a subclass of one): the logits of token ``t`` predict label ``t + 1``, as the models'
      own loss does; for another generative model that is not encoder-decoder, say which with
      ``shift_labels``;
    - encoder-decoder models (``labels`` for the decoder, ``-100`` ignored; padding masked by a
      ``decoder_attention_mask`` if the inputs hold one): the doubled labels are passed to the
      model so that it builds its decoder inputs as it does in plain training;
    - regression heads (``config.problem_type == "regression"``, or ``num_labels == 1`` with no
      problem type, as Hugging Face's heads decide): :func:`xdrop.rdrop_regression_loss`, the
      two squared errors and ``alpha`` times the squared difference of the two predictions.

    A PEFT model (LoRA adapters) is read as the model under its adapters: its head, its labels.
    PEFT saves a checkpoint with the adapters alone: xdrop's streams go beside them
    (:data:`STREAMS_FILE`), and resuming (or ``load_best_model_at_end``) loads them back.

    ``TrainingArguments.label_smoothing_factor`` is applied to both cross entropies. The loss
    is a mean over one batch: ``Trainer`` divides it by the gradient accumulation steps.
    Evaluation and prediction (``model.eval()``) run the plain ``Trainer``'s step: one forward
    of the model, with its own loss.

    Args:
        *args: ``transformers.Trainer``'s positional arguments (``model``, ``args``...).
        **kwargs: ``transformers.Trainer``'s keyword arguments (``train_dataset``...).
        alpha: the weight of the KL term, a real number ``>= 0`` (0 leaves ``NLL1 + NLL2``).
        convert_seed: ``None`` (the default) leaves the model's dropout as it is (drawing from
            torch's generator). An integer in ``[0, 2**64)`` or an :class:`xdrop.Generator`
            first converts the model with ``xdrop.layers.torch.convert(model, seed=...)``:
            every dropout of the model then draws from xdrop's seeded streams, whose state is
            part of the model's ``state_dict`` and so of every checkpoint the ``Trainer``
            saves (beside a PEFT model's adapters), and the masks are the same on any
            framework.
        shift_labels: ``None`` (the default) tells from the model's class whether its logits at
            token ``t`` predict label ``t + 1``; ``True`` or ``False`` says it, for a model
            whose class does not tell (a generative model of your own).

    Raises:
        xdrop.ArgumentValueError: ``alpha`` negative or not finite; ``convert_seed`` with a
            ``model_init`` (convert the model that ``model_init`` returns instead); at a
            training step, a batch without ``labels``, or a multi-label head
            (``problem_type="multi_label_classification"``, or float labels with
            ``num_labels > 1``), for which R-Dropout's KL is not defined here;
            ``compute_loss_func`` (the training loss is R-Dropout's: override ``compute_loss``
            instead); ``shift_labels=None`` at a training step of a generative model whose
            class does not tell whether its labels shift; on resuming, streams saved beside
            a PEFT model's adapters that the model lacks (a run with ``convert_seed`` resumed
            without it).

    Example:
        >>> import tempfile, transformers
        >>> from xdrop.integrations.transformers import RDropTrainer
        >>> config = transformers.BertConfig(
        ...     hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...     intermediate_size=64, num_labels=3)
        >>> model = transformers.BertForSequenceClassification(config)
        >>> folder = tempfile.mkdtemp()
        >>> args = transformers.TrainingArguments(folder, report_to=[])
        >>> trainer = RDropTrainer(model, args, alpha=1.0, convert_seed=0)
        >>> "xdrop_step" in trainer.model.state_dict()  # converted
        True

        ``trainer.train()`` then trains with R-Dropout.
    """

    # the loss is a mean over this batch, not normalized by the items of the accumulated batch
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: Any = None,
        *args: Any,
        alpha: float = 1.0,
        convert_seed: int | Generator | None = None,
        shift_labels: bool | None = None,
        **kwargs: Any,
    ) -> None:
        self.alpha = check_alpha(alpha, "float32")
        if shift_labels is not None and not isinstance(shift_labels, bool):
            raise bad_type("shift_labels", shift_labels, "True, False or None")
        self.shift_labels = shift_labels
        if kwargs.get("compute_loss_func") is not None:  # it would be used in evaluation alone
            allowed = (
                "None: RDropTrainer's training loss is R-Dropout's (override compute_loss for "
                "another)"
            )
            raise bad_value("compute_loss_func", kwargs["compute_loss_func"], allowed)
        if convert_seed is not None:
            if model is None:
                allowed = "None when the Trainer gets a model_init (convert its model there)"
                raise bad_value("convert_seed", convert_seed, allowed)
            from xdrop.layers.torch import convert

            model = convert(model, seed=convert_seed)
        super().__init__(model, *args, **kwargs)
        if not hasattr(transformers.Trainer, "loss_is_scaled_for_ga"):
            # releases before it read this instead: the Trainer then divides the batch mean
            # by the accumulation steps
            self.model_accepts_loss_kwargs = False

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """R-Dropout's loss in training mode; the ``Trainer``'s own in eval mode."""
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if "labels" not in inputs:  # the model's own loss would train without R-Dropout
            allowed = "a training batch with 'labels' (R-Dropout's loss is computed from them)"
            raise bad_value("the inputs", sorted(inputs), allowed)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        underlying = self._underlying(model)
        config = getattr(underlying, "config", None)
        encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
        if encoder_decoder and "decoder_input_ids" not in inputs:
            inputs["labels"] = labels  # the model shifts them into its decoder's inputs
        batch = labels.shape[0]
        doubled = {
            name: torch.cat([value, value]) if _batched(value, batch) else value
            for name, value in inputs.items()
        }
        outputs = model(**doubled)
        if isinstance(outputs, dict):
            logits = outputs["logits"]
        else:  # a tuple: the loss comes first where the model was given labels
            logits = outputs[1 if "labels" in doubled else 0]
        logits1, logits2 = logits.chunk(2)
        mask_name = "decoder_attention_mask" if encoder_decoder else "attention_mask"
        mask = inputs.get(mask_name)
        if self._shifts_labels(underlying, encoder_decoder):
            logits1, logits2 = logits1[:, :-1], logits2[:, :-1]
            labels = labels[:, 1:]
            mask = None if mask is None else mask[..., 1:]
        pad_mask = None
        if isinstance(mask, torch.Tensor) and mask.shape == labels.shape and labels.ndim > 1:
            pad_mask = mask == 0
        loss: torch.Tensor
        if _regression(config):
            if logits1.shape != labels.shape and logits1.shape[-1:] == (1,):
                logits1, logits2 = logits1.squeeze(-1), logits2.squeeze(-1)  # one value each
            loss = xdrop.rdrop_regression_loss(
                logits1, logits2, labels.to(logits1.dtype), alpha=self.alpha, pad_mask=pad_mask
            )
        else:
            _check_single_label(config, labels)
            loss = xdrop.rdrop_loss(
                logits1,
                logits2,
                labels,
                alpha=self.alpha,
                pad_mask=pad_mask,
                ignore_index=IGNORE_INDEX,
                label_smoothing=self.args.label_smoothing_factor,
            )
        if not return_outputs:
            return loss
        if isinstance(outputs, dict):
            outputs["logits"] = logits.chunk(2)[0]  # the first pass, of the batch's size
        return loss, outputs

    def _save(
        self, output_dir: str | None = None, state_dict: dict[str, Any] | None = None
    ) -> None:
        """``Trainer``'s save; for a PEFT model, whose save keeps only its adapters, xdrop's
        streams too, in :data:`STREAMS_FILE`."""
        super()._save(output_dir, state_dict)
        adapted = self._adapted(self.model)
        if adapted is None or not self.args.should_save:
            return  # the weights file holds every buffer
        from xdrop.layers.torch import stream_state_dict

        streams = stream_state_dict(adapted)
        if streams:
            folder = self.args.output_dir if output_dir is None else output_dir
            assert folder is not None  # TrainingArguments gives a default
            safetensors.torch.save_file(  # copies: safetensors refuses a module's shared tensors
                {name: value.to("cpu", copy=True) for name, value in streams.items()},
                os.path.join(folder, STREAMS_FILE),
            )

    def _load_from_checkpoint(
        self, resume_from_checkpoint: str, model: torch.nn.Module | None = None
    ) -> None:
        """``Trainer``'s load, then the streams saved beside a PEFT model's adapters."""
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_streams(resume_from_checkpoint, self.model if model is None else model)

    def _load_best_model(self) -> None:
        """``Trainer``'s load of the best checkpoint, then its streams, as a model's weights
        file would bring them back."""
        super()._load_best_model()
        if self.state.best_model_checkpoint is not None:
            self._load_streams(self.state.best_model_checkpoint, self.model)

    def _load_streams(self, checkpoint: str, model: Any) -> None:
        """The streams saved beside a PEFT model's adapters in ``checkpoint``, loaded into it."""
        path = os.path.join(checkpoint, STREAMS_FILE)
        adapted = self._adapted(model)
        if adapted is None or not os.path.exists(path):
            return
        loaded = adapted.load_state_dict(safetensors.torch.load_file(path), strict=False)
        if loaded.unexpected_keys:
            shown = Shown(f"<streams of {', '.join(loaded.unexpected_keys)}>")
            allowed = (
                "the streams of this model's xdrop layers: the run was trained with "
                "convert_seed, so convert this model too (with any seed: the file's replace it)"
            )
            raise bad_value(path, shown, allowed)

    def _unwrapped(self, model: Any) -> Any:
        """``model`` without accelerate's wrappers (DDP) and ``torch.compile``'s."""
        unwrapped = self.accelerator.unwrap_model(model)
        return getattr(unwrapped, "_orig_mod", unwrapped)  # compiled: the module it compiled

    def _adapted(self, model: Any) -> Any:
        """The PEFT model (LoRA adapters) that ``model`` is, unwrapped, or None."""
        return _peft_model(self._unwrapped(model))

    def _underlying(self, model: torch.nn.Module) -> Any:
        """The transformers model that ``model`` trains, as ``Trainer`` reads it: unwrapped, and
        under its PEFT adapters if it has them."""
        unwrapped = self._unwrapped(model)
        adapted = _peft_model(unwrapped)
        return unwrapped if adapted is None else adapted.get_base_model()

    def _shifts_labels(self, unwrapped: torch.nn.Module, encoder_decoder: bool) -> bool:
        """Whether the logits of ``unwrapped`` (:meth:`_underlying`) at token ``t`` predict
        label ``t + 1``: as ``shift_labels`` says, else as the model's class (or a base class)
        tells."""
        if self.shift_labels is not None:
            return self.shift_labels
        if encoder_decoder:  # the model shifts the labels into its decoder's inputs
            return False
        if any(kind.__name__ in SHIFTED for kind in type(unwrapped).__mro__):
            return True
        if not getattr(unwrapped, "can_generate", lambda: False)():
            return False
        allowed = (
            f"True or False for {type(unwrapped).__name__}, a generative model whose class does "
            "not tell whether its logits at token t predict label t + 1 (True, as causal LMs) "
            "or label t (False)"
        )
        raise bad_value("shift_labels", None, allowed)


def _peft_model(unwrapped: Any) -> Any:
    """``unwrapped`` if it is a PEFT model (LoRA adapters), else None."""
    peft = sys.modules.get("peft")  # imported by whoever made a PeftModel
    return unwrapped if peft is not None and isinstance(unwrapped, peft.PeftModel) else None


def _batched(value: object, batch: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch


def _regression(config: Any) -> bool:
    """Whether a head is a regression head, as Hugging Face's heads decide it."""
    problem = getattr(config, "problem_type", None)
    return problem == "regression" or (problem is None and getattr(config, "num_labels", 0) == 1)


def _check_single_label(config: Any, labels: torch.Tensor) -> None:
    problem = getattr(config, "problem_type", None)
    if problem == "multi_label_classification" or labels.is_floating_point():
        allowed = (
            "integer class labels of a single-label head, or a regression head (R-Dropout "
            "of a multi-label head is not defined here: override compute_loss)"
        )
        if problem == "multi_label_classification":
            raise bad_value("the head's problem_type", problem, allowed)
        raise bad_value("labels", Shown(f"<labels of {labels.dtype}>"), allowed)
