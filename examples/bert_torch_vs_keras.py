"""One BERT, two frameworks, dropout on: Hugging Face's PyTorch BERT against keras-hub's on JAX.

    python examples/bert_torch_vs_keras.py [FIGURE] [--steps N] [--attention eager sdpa]

builds a tiny ``transformers.BertForSequenceClassification`` (PyTorch) and a tiny
``keras_hub.models.BertTextClassifier`` (Keras 3 on JAX) with the same architecture, copies the
PyTorch weights into the Keras model, converts both with one seed
(``xdrop.layers.torch.convert`` and ``xdrop.layers.keras.convert``), and trains both with plain
SGD on the same batches, dropout 0.1 everywhere. It prints the largest differences between the
two sides (eval logits, training-mode logits, losses, weights after training) and writes nothing
else unless FIGURE names a PNG file for the two loss curves, which needs matplotlib (``pip install
matplotlib``, or xdrop's ``[docs]`` extra; checked before training starts). The figure in the
documentation is redrawn with ``python examples/bert_torch_vs_keras.py
docs/figures/bert_torch_vs_keras.png``.

The two models draw the same masks because every dropout site gets the stream of a name both
sides share: ``rename`` maps each framework's own site name (PyTorch's module path with ``#k``
for a functional call, Keras' layer path) to one name such as ``layer0/attention_probs``, and
the masks have the same shapes on both sides (attention probabilities are
``(batch, heads, query, key)`` in both). The mapping is :data:`SHARED_SITES`; the weight mapping
is :func:`keras_weights`.

Each framework runs in its own process (Keras reads ``KERAS_BACKEND`` at import); the two
exchange weights, batches and results as ``.npz`` files in a scratch folder (``--workdir DIR``
keeps them there).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

SEED = 2024  # the one seed both conversions take
WEIGHT_SEED = 0  # PyTorch's initialisation; Keras receives a copy
VOCAB, HIDDEN, LAYERS, HEADS, INTERMEDIATE, POSITIONS, SEGMENTS = 100, 64, 2, 4, 128, 32, 2
CLASSES, RATE, BATCH, LENGTH, LEARNING_RATE, EXAMPLES = 3, 0.1, 8, 16, 0.1, 16

# Each dropout site's shared name, from the name each framework's ``convert`` gives it: Hugging
# Face's module paths (a functional call inside a module is ``<module>#<k>``, its k-th call site)
# and keras-hub's layer paths. The shapes drawn at each site are the same on both sides.
SHARED_SITES: dict[str, tuple[str, str]] = {
    # shared name: (PyTorch site, Keras site), {i} the encoder layer's index
    "embeddings": (r"bert\.embeddings\.dropout", r"_backbone\.embeddings_dropout"),
    "layer{i}/attention_probs": (
        r"bert\.encoder\.layer\.(\d+)\.attention\.self#0",
        r"_backbone\.transformer_layers\.(\d+)\._self_attention_layer\._dropout_layer",
    ),
    "layer{i}/attention_output": (
        r"bert\.encoder\.layer\.(\d+)\.attention\.output\.dropout",
        r"_backbone\.transformer_layers\.(\d+)\._self_attention_dropout",
    ),
    "layer{i}/ffn_output": (
        r"bert\.encoder\.layer\.(\d+)\.output\.dropout",
        r"_backbone\.transformer_layers\.(\d+)\._feedforward_dropout",
    ),
    "classifier": (r"dropout", r"output_dropout"),
}


def _renamer(side: int) -> Callable[[str], str]:
    patterns = [(re.compile(sites[side]), shared) for shared, sites in SHARED_SITES.items()]

    def rename(name: str) -> str:
        for pattern, shared in patterns:
            match = pattern.fullmatch(name)
            if match:
                return shared.format(i=match.group(1)) if match.groups() else shared
        # a site without a counterpart (HF keeps an unused nn.Dropout beside its functional
        # attention dropout) keeps its own name, so it can never share a stream by accident
        return name

    return rename


torch_site = _renamer(0)
keras_site = _renamer(1)


def recording(rename: Callable[[str], str], sites: dict[str, str]) -> Callable[[str], str]:
    """``rename``, noting each site it was asked about in ``sites``."""

    def rename_and_record(name: str) -> str:
        sites[name] = rename(name)
        return sites[name]

    return rename_and_record


def keras_weights(hf: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """keras-hub's weights (by variable path) from Hugging Face's ``state_dict`` (as NumPy).

    PyTorch's ``Linear`` holds ``(out, in)``, Keras' ``Dense`` ``(in, out)``; keras-hub's
    attention projections are ``EinsumDense`` kernels ``(hidden, heads, head_dim)`` and an output
    kernel ``(heads, head_dim, hidden)``, the same numbers reshaped.
    """
    head_dim = HIDDEN // HEADS
    out = {
        "token_embedding/embeddings": hf["bert.embeddings.word_embeddings.weight"],
        "position_embedding/embeddings": hf["bert.embeddings.position_embeddings.weight"],
        "segment_embedding/embeddings": hf["bert.embeddings.token_type_embeddings.weight"],
        "embeddings_layer_norm/gamma": hf["bert.embeddings.LayerNorm.weight"],
        "embeddings_layer_norm/beta": hf["bert.embeddings.LayerNorm.bias"],
        "pooled_dense/kernel": hf["bert.pooler.dense.weight"].T,
        "pooled_dense/bias": hf["bert.pooler.dense.bias"],
        "logits/kernel": hf["classifier.weight"].T,
        "logits/bias": hf["classifier.bias"],
    }
    for i in range(LAYERS):
        source, target = f"bert.encoder.layer.{i}.", f"transformer_layer_{i}/"
        attention = target + "self_attention_layer/"
        for name in ("query", "key", "value"):
            weight = hf[f"{source}attention.self.{name}.weight"]
            out[f"{attention}{name}/kernel"] = weight.T.reshape(HIDDEN, HEADS, head_dim)
            out[f"{attention}{name}/bias"] = hf[f"{source}attention.self.{name}.bias"].reshape(
                HEADS, head_dim
            )
        weight = hf[f"{source}attention.output.dense.weight"]
        out[f"{attention}attention_output/kernel"] = weight.T.reshape(HEADS, head_dim, HIDDEN)
        out[f"{attention}attention_output/bias"] = hf[f"{source}attention.output.dense.bias"]
        pairs = {
            "self_attention_layer_norm": "attention.output.LayerNorm",
            "feedforward_layer_norm": "output.LayerNorm",
        }
        for keras_name, hf_name in pairs.items():
            out[f"{target}{keras_name}/gamma"] = hf[f"{source}{hf_name}.weight"]
            out[f"{target}{keras_name}/beta"] = hf[f"{source}{hf_name}.bias"]
        for keras_name, hf_name in {
            "feedforward_intermediate_dense": "intermediate.dense",
            "feedforward_output_dense": "output.dense",
        }.items():
            out[f"{target}{keras_name}/kernel"] = hf[f"{source}{hf_name}.weight"].T
            out[f"{target}{keras_name}/bias"] = hf[f"{source}{hf_name}.bias"]
    return {name: np.ascontiguousarray(value) for name, value in out.items()}


def make_batches(steps: int) -> dict[str, np.ndarray]:
    """``steps + 1`` batches (batch 0 for the forward checks) drawn from one small training set
    of :data:`EXAMPLES` sequences: tokens, segments, a padding mask, and labels."""
    rng = np.random.default_rng(7)
    shape = (EXAMPLES, LENGTH)
    lengths = rng.integers(LENGTH // 2, LENGTH + 1, size=EXAMPLES)
    padding = (np.arange(LENGTH) < lengths[..., None]).astype(np.int32)
    tokens = rng.integers(1, VOCAB, size=shape) * padding
    segments = (np.arange(LENGTH) >= lengths[..., None] // 2).astype(np.int32) * padding
    labels = rng.integers(0, CLASSES, size=EXAMPLES)
    index = np.stack([rng.choice(EXAMPLES, BATCH, replace=False) for _ in range(steps + 1)])
    return {
        "tokens": tokens[index].astype(np.int32),
        "segments": segments[index],
        "padding": padding[index],
        "labels": labels[index].astype(np.int32),
    }


def run_torch(workdir: Path, steps: int, attentions: list[str]) -> None:
    """PyTorch's side, once per attention implementation of transformers (``"eager"``,
    ``"sdpa"``): the initial weights (for Keras), then eval and training-mode logits of batch 0
    and ``steps`` SGD steps, saved to ``torch_<attention>.npz``."""
    for attention in attentions:
        train_torch(workdir, steps, attention)


def train_torch(workdir: Path, steps: int, attention: str) -> None:
    import torch
    import transformers

    from xdrop.layers.torch import convert

    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=POSITIONS,
        type_vocab_size=SEGMENTS,
        num_labels=CLASSES,
        hidden_dropout_prob=RATE,
        attention_probs_dropout_prob=RATE,
        hidden_act="gelu_pytorch_tanh",  # keras-hub's BERT uses the tanh approximation
        layer_norm_eps=1e-12,  # keras-hub's
        attn_implementation=attention,
    )
    torch.manual_seed(WEIGHT_SEED)
    model = transformers.BertForSequenceClassification(config)
    weights = {name: value.detach().numpy() for name, value in model.state_dict().items()}
    np.savez(workdir / "weights.npz", **keras_weights(weights))
    data = np.load(workdir / "batches.npz")

    def inputs(step: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": torch.from_numpy(data["tokens"][step]).long(),
            "token_type_ids": torch.from_numpy(data["segments"][step]).long(),
            "attention_mask": torch.from_numpy(data["padding"][step]).long(),
        }

    results: dict[str, np.ndarray] = {}
    model.eval()
    with torch.no_grad():
        results["eval_logits"] = model(**inputs(0)).logits.numpy()
    # the control: a copy converted with PyTorch's own site names draws other masks than Keras
    own = convert(copy.deepcopy(model), seed=SEED).train()
    with torch.no_grad():
        results["own_names_train_logits"] = own(**inputs(0)).logits.numpy()
    sites: dict[str, str] = {}
    convert(model, seed=SEED, rename=recording(torch_site, sites))
    model.train()
    with torch.no_grad():  # the training-mode call t = 0 of every site
        results["train_logits"] = model(**inputs(0)).logits.numpy()
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    losses = []
    for step in range(1, steps + 1):  # calls t = 1 .. steps
        labels = torch.from_numpy(data["labels"][step]).long()
        loss = model(**inputs(step), labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    results["losses"] = np.array(losses)
    model.eval()
    with torch.no_grad():
        results["trained_eval_logits"] = model(**inputs(0)).logits.numpy()
    trained = {name: value.detach().numpy() for name, value in model.state_dict().items()}
    for name, value in keras_weights(trained).items():
        results["weight:" + name] = value
    results["sites"] = np.array([f"{name} -> {shared}" for name, shared in sorted(sites.items())])
    np.savez(workdir / f"torch_{attention}.npz", **results)


def run_keras(workdir: Path, steps: int) -> None:
    """Keras' side on JAX: the same, from PyTorch's weights, trained with ``train_on_batch``;
    saved to ``keras.npz``."""
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
    import keras_hub

    from xdrop.layers.keras import convert

    weights = np.load(workdir / "weights.npz")

    def bert() -> keras.Model:
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=VOCAB,
            num_layers=LAYERS,
            num_heads=HEADS,
            hidden_dim=HIDDEN,
            intermediate_dim=INTERMEDIATE,
            dropout=RATE,
            max_sequence_length=POSITIONS,
            num_segments=SEGMENTS,
        )
        model = keras_hub.models.BertTextClassifier(
            backbone, num_classes=CLASSES, preprocessor=None, dropout=RATE
        )
        variables = {variable.path: variable for variable in model.weights}
        if set(variables) != set(weights.files):
            raise RuntimeError(f"weights differ: {sorted(set(variables) ^ set(weights.files))}")
        for name, variable in variables.items():
            variable.assign(weights[name])
        return model

    model = bert()
    data = np.load(workdir / "batches.npz")

    def inputs(step: int) -> dict[str, np.ndarray]:
        return {
            "token_ids": data["tokens"][step],
            "segment_ids": data["segments"][step],
            "padding_mask": data["padding"][step],
        }

    results: dict[str, np.ndarray] = {}
    results["eval_logits"] = np.asarray(model(inputs(0), training=False))
    own = convert(bert(), seed=SEED)  # the control: Keras' own site names
    results["own_names_train_logits"] = np.asarray(own(inputs(0), training=True))
    sites: dict[str, str] = {}
    convert(model, seed=SEED, rename=recording(keras_site, sites))
    results["train_logits"] = np.asarray(model(inputs(0), training=True))
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=LEARNING_RATE),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses = []
    for step in range(1, steps + 1):
        logs = model.train_on_batch(inputs(step), data["labels"][step], return_dict=True)
        losses.append(float(logs["loss"]))
    results["losses"] = np.array(losses)
    results["trained_eval_logits"] = np.asarray(model(inputs(0), training=False))
    for variable in model.weights:
        if variable.path in weights.files:
            results["weight:" + variable.path] = np.asarray(variable)
    results["sites"] = np.array([f"{name} -> {shared}" for name, shared in sorted(sites.items())])
    np.savez(workdir / "keras.npz", **results)


def differences(
    left: Mapping[str, np.ndarray], right: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """The largest absolute difference of each result, and of all weights after training."""
    out = {
        name: float(np.max(np.abs(left[name] - right[name])))
        for name in (
            "eval_logits",
            "train_logits",
            "losses",
            "trained_eval_logits",
            "own_names_train_logits",
        )
    }
    weights = [name for name in left if name.startswith("weight:")]
    out["weights"] = max(float(np.max(np.abs(left[name] - right[name]))) for name in weights)
    return out


def plot(figure: Path, torch_losses: np.ndarray, keras_losses: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(torch_losses) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, torch_losses, "-", lw=5, alpha=0.4, label="transformers BERT, PyTorch")
    ax.plot(steps, keras_losses, "k.--", lw=1, label="keras-hub BERT, Keras on JAX")
    ax.set_xlabel("SGD step (dropout 0.1 at every site)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("training loss")
    ax.set_title("One seed, two frameworks: the same dropout masks")
    ax.legend()
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=120)
    plt.close(fig)


def figure_path(text: str) -> Path:
    """FIGURE, once matplotlib is known to be there to draw it: checked as the arguments are
    read, before a minute of training rather than after it."""
    if importlib.util.find_spec("matplotlib") is None:
        raise argparse.ArgumentTypeError(
            "drawing needs matplotlib (pip install matplotlib, or xdrop's [docs] extra); leave "
            "FIGURE out to print the differences only"
        )
    return Path(text)


def side(workdir: Path, *arguments: str) -> None:
    environment = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, __file__, "--workdir", str(workdir), *arguments]
    subprocess.run(command, check=True, env=environment)


def compare(workdir: Path, steps: int, attentions: list[str]) -> dict[str, dict[str, float]]:
    """Run both sides in fresh processes; per attention implementation of the PyTorch side, the
    largest differences between their results."""
    np.savez(workdir / "batches.npz", **make_batches(steps))
    side(workdir, "--steps", str(steps), "--side", "torch", "--attention", *attentions)
    side(workdir, "--steps", str(steps), "--side", "keras")
    keras = np.load(workdir / "keras.npz")
    return {
        attention: differences(np.load(workdir / f"torch_{attention}.npz"), keras)
        for attention in attentions
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "figure",
        nargs="?",
        type=figure_path,
        metavar="FIGURE",
        help="also draw the two loss curves into this PNG file (needs matplotlib); without it "
        "nothing is written, the differences are printed",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--attention",
        nargs="+",
        choices=("eager", "sdpa"),
        default=["eager"],
        help="transformers' attention implementations to compare (the first is drawn)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the .npz files here")
    parser.add_argument("--side", choices=("torch", "keras"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side == "torch":
        return run_torch(args.workdir, args.steps, args.attention)
    if args.side == "keras":
        return run_keras(args.workdir, args.steps)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        found = compare(workdir, args.steps, args.attention)
        torch_losses = np.load(workdir / f"torch_{args.attention[0]}.npz")["losses"]
        keras_losses = np.load(workdir / "keras.npz")["losses"]
        if args.figure is not None:
            plot(args.figure, torch_losses, keras_losses)
    for attention, differences_found in found.items():
        for name, value in differences_found.items():
            print(f"max |torch ({attention}) - keras| {name:<22} {value:.2e}")
    print(f"losses: {np.array2string(torch_losses, precision=4)}")
    if args.figure is not None:
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
