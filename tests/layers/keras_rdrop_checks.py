"""Checks of ``xdrop.layers.keras.RDrop`` on the Keras backend named by ``KERAS_BACKEND``.

``tests/test_rdrop_keras.py`` runs this file in one fresh pytest process per backend and
reports each check as its own test. Each loss ``fit`` reports is compared with the R-Dropout
loss computed by hand (``xdrop.rdrop_loss``, ``xdrop.rdrop_regression_loss``) on the same two
forward passes: those of a copy of the model, with the same weights and streams, called on the
doubled batch. Checks that train write their loss histories where
``XDROP_KERAS_RDROP_OUT`` names, to be compared across backends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xdrop

keras = pytest.importorskip("keras")
from xdrop.layers import keras as xk  # noqa: E402

CLASSES, FEATURES, BATCH = 3, 6, 8


def host(x: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x), np.float64)


def record(name: str, values: Any) -> None:
    """Write ``values`` for the comparison across backends."""
    out = os.environ.get("XDROP_KERAS_RDROP_OUT")
    if out:
        Path(out, f"{name}.json").write_text(json.dumps(values))


def shared_weights(model: Any, seed: int = 0) -> Any:
    """The same weights on every backend, drawn with NumPy."""
    rng = np.random.default_rng(seed)
    model.set_weights(
        [(0.3 * rng.standard_normal(w.shape)).astype(w.dtype) for w in model.get_weights()]
    )
    return model


def data(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, FEATURES)).astype("float32")
    return x, rng.integers(0, CLASSES, BATCH).astype("int32")


def classifier(head: str | None = None, dropout: Any = None) -> Any:
    layers = [
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu"),
        dropout if dropout is not None else xk.Dropout(0.3, seed=5),
        keras.layers.Dense(CLASSES, activation=head),
    ]
    return shared_weights(keras.Sequential(layers))


def two_passes(model: Any, x: Any) -> tuple[np.ndarray, np.ndarray]:
    """The two passes fit's next step will make: ``model`` called once on the doubled batch,
    split in two, and then its streams put back where they were."""
    streams = [layer.seed_generator for _, layer in xk.named_layers(model)
               if isinstance(layer, xk.Dropout)]  # fmt: skip
    states = [np.array(host(stream.state.value), np.int32) for stream in streams]
    out = host(model(doubled(x), training=True))
    for stream, state in zip(streams, states, strict=True):
        stream.state.assign(state)
    return out[: len(out) // 2], out[len(out) // 2 :]


def doubled(x: Any) -> Any:
    return keras.tree.map_structure(lambda a: np.concatenate([a, a]), x)


def fit_one_step(rdrop: Any, x: Any, y: Any, **kwargs: Any) -> dict[str, list[float]]:
    return rdrop.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, **kwargs).history


# -- the loss fit reports --------------------------------------------------------------------------
def test_fit_reports_the_rdrop_loss_of_the_two_passes_from_one_forward():
    model = classifier()
    x, y = data()
    rdrop = xk.RDrop(model, alpha=0.7)
    rdrop.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    losses, accuracies = [], []
    for _ in range(3):
        logits1, logits2 = two_passes(model, x)
        history = fit_one_step(rdrop, x, y)
        by_hand = float(xdrop.rdrop_loss(logits1, logits2, y, alpha=0.7))
        assert history["loss"][0] == pytest.approx(by_hand, rel=1e-5)
        # the training metrics are the first pass's
        assert history["accuracy"][0] == pytest.approx((logits1.argmax(-1) == y).mean())
        losses.append(history["loss"][0])
        accuracies.append(history["accuracy"][0])
    assert model.layers[1].step == 3  # one draw per step: one forward over the doubled batch
    record("logits", losses)


def test_probabilities_are_read_from_a_crossentropy_without_logits():
    model = classifier(head="softmax")
    x, y = data()
    rdrop = xk.RDrop(model, alpha=1.5)
    rdrop.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    probabilities1, probabilities2 = two_passes(model, x)
    history = fit_one_step(rdrop, x, y)
    logp1, logp2 = np.log(probabilities1), np.log(probabilities2)  # log-probabilities are logits
    by_hand = float(xdrop.rdrop_loss(logp1, logp2, y, alpha=1.5))
    assert history["loss"][0] == pytest.approx(by_hand, rel=1e-5)
    record("probabilities", history["loss"])


def test_sigmoid_outputs_are_two_class_distributions():
    model = classifier(head=None)
    binary = shared_weights(keras.Sequential([model, keras.layers.Dense(1)]))  # one logit
    x, y = data()
    y = (y > 0).astype("float32")[:, None]
    rdrop = xk.RDrop(binary, alpha=0.8)
    rdrop.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    z1, z2 = two_passes(binary, x)
    history = fit_one_step(rdrop, x, y)
    # softmax((0, z)) is (1 - sigmoid(z), sigmoid(z)): the binary crossentropy is a softmax's
    two1, two2 = (np.concatenate([np.zeros_like(z), z], axis=-1) for z in (z1, z2))
    by_hand = float(xdrop.rdrop_loss(two1, two2, y[:, 0].astype(int), alpha=0.8))
    assert history["loss"][0] == pytest.approx(by_hand, rel=1e-5)
    record("binary", history["loss"])


def test_one_class_is_refused_where_a_sigmoid_is_meant():
    binary = keras.Sequential([classifier(), keras.layers.Dense(1)])
    x, y = data()
    rdrop = xk.RDrop(binary, predicts="logits")
    rdrop.compile(optimizer="sgd", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    with pytest.raises(xdrop.ArgumentValueError, match='predicts must be "binary_logits" for'):
        fit_one_step(rdrop, x, (y > 0).astype("float32")[:, None])


def test_regression_is_rdrop_regression_loss_with_mse():
    layers = [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
              xk.Dropout(0.3, seed=6), keras.layers.Dense(1)]  # fmt: skip
    model = shared_weights(keras.Sequential(layers))
    x, _ = data()
    y = np.random.default_rng(2).standard_normal((BATCH, 1)).astype("float32")
    rdrop = xk.RDrop(model, alpha=2.0)
    rdrop.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    pred1, pred2 = two_passes(model, x)
    history = fit_one_step(rdrop, x, y)
    by_hand = float(xdrop.rdrop_regression_loss(pred1, pred2, y, alpha=2.0))
    assert history["loss"][0] == pytest.approx(by_hand, rel=1e-5)
    record("regression", history["loss"])


VOCABULARY, LENGTH = 11, 5


def token_model(mask_zero: bool) -> Any:
    """A sequence tagger (a decoder's shape): tokens [B, T] -> logits [B, T, V]."""
    tokens = keras.Input((LENGTH,), dtype="int32")
    h = keras.layers.Embedding(VOCABULARY, 16, mask_zero=mask_zero)(tokens)
    h = xk.Dropout(0.2, seed=7)(h)
    return shared_weights(keras.Model(tokens, keras.layers.Dense(VOCABULARY)(h)), seed=3)


def token_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids padded with 0 at the end, the next-token labels, and the padding mask."""
    rng = np.random.default_rng(4)
    lengths = np.array([5, 3, 4, 2, 5, 1, 3, 4])
    padded = np.arange(LENGTH)[None, :] >= lengths[:, None]
    ids = np.where(padded, 0, rng.integers(1, VOCABULARY, (BATCH, LENGTH))).astype("int32")
    labels = np.where(padded, 0, rng.integers(1, VOCABULARY, (BATCH, LENGTH))).astype("int32")
    return ids, labels, padded


def test_token_labels_with_padding_as_sample_weights():
    model = token_model(mask_zero=False)
    ids, labels, padded = token_data()
    rdrop = xk.RDrop(model, alpha=1.0)
    rdrop.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    weights = (~padded).astype("float32")
    logits1, logits2 = two_passes(model, ids)
    history = fit_one_step(rdrop, ids, labels, sample_weight=weights)
    # Keras' "sum_over_batch_size" divides the weighted sum by every position, padded included
    total = xdrop.rdrop_loss(logits1, logits2, labels, pad_mask=padded, reduction="sum")
    assert history["loss"][0] == pytest.approx(float(total) / padded.size, rel=1e-5)
    record("tokens_weighted", history["loss"])


def test_token_labels_with_padding_masked_by_the_model():
    model = token_model(mask_zero=True)
    ids, labels, padded = token_data()
    rdrop = xk.RDrop(model, alpha=1.0)
    rdrop.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    logits1, logits2 = two_passes(model, ids)
    history = fit_one_step(rdrop, ids, labels)
    # a Keras mask makes the mean over the real tokens: rdrop_loss's "mean" with pad_mask
    by_hand = xdrop.rdrop_loss(logits1, logits2, labels, pad_mask=padded)
    assert history["loss"][0] == pytest.approx(float(by_hand), rel=1e-5)
    record("tokens_masked", history["loss"])


@pytest.mark.parametrize("mask_zero", [False, True])
@pytest.mark.parametrize("weights", [None, np.linspace(0.5, 2.0, BATCH * LENGTH)])
def test_token_labels_with_padding_as_an_ignored_class(weights, mask_zero):
    """Keras' sparse crossentropy leaves out ``ignore_class`` positions, its mean over the
    others: the consistency term leaves out the same positions, as rdrop_loss's ignore_index,
    once whether the model masks the padding too or not."""
    model = token_model(mask_zero=mask_zero)
    ids, labels, padded = token_data()
    labels = np.where(padded, -1, labels).astype("int32")
    rdrop = xk.RDrop(model, alpha=1.0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=-1)
    rdrop.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss)
    logits1, logits2 = two_passes(model, ids)
    per_token = None if weights is None else weights.reshape(BATCH, LENGTH)
    history = fit_one_step(rdrop, ids, labels, sample_weight=per_token)
    each = host(xdrop.rdrop_loss(logits1, logits2, labels, ignore_index=-1, reduction="none"))
    by_hand = (each * (1 if per_token is None else per_token)).sum() / (~padded).sum()
    assert history["loss"][0] == pytest.approx(by_hand, rel=1e-5)


def test_a_converted_model_trains_with_the_regularisation_losses_once():
    model = classifier(dropout=keras.layers.Dropout(0.3))
    xk.convert(model, seed=42)
    regularised = keras.layers.ActivityRegularization(l2=0.01)
    wrapped = keras.Sequential([model, regularised])
    x, y = data()
    rdrop = xk.RDrop(wrapped, alpha=1.0)
    rdrop.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    logits1, logits2 = two_passes(wrapped, x)
    history = fit_one_step(rdrop, x, y)
    # added once: the layer's penalty over the doubled batch, which Keras divides by its size
    penalty = 0.01 * ((logits1**2).sum() + (logits2**2).sum()) / (2 * BATCH)
    by_hand = float(xdrop.rdrop_loss(logits1, logits2, y)) + penalty
    assert history["loss"][0] == pytest.approx(by_hand, rel=1e-5)
    record("converted", history["loss"])


def test_a_converted_keras_hub_bert_classifier_trains_with_rdrop():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
        dropout=0.1, max_sequence_length=16,
    )  # fmt: skip
    model = keras_hub.models.BertTextClassifier(
        backbone, num_classes=2, preprocessor=None, dropout=0.1
    )
    shared_weights(model)
    xk.convert(model, seed=7, strict=True)
    rng = np.random.default_rng(5)
    padded = np.arange(16) >= rng.integers(4, 17, BATCH)[:, None]
    features = {
        "token_ids": np.where(padded, 0, rng.integers(1, 50, (BATCH, 16))).astype("int32"),
        "segment_ids": np.zeros((BATCH, 16), "int32"),
        "padding_mask": (~padded).astype("int32"),
    }
    labels = rng.integers(0, 2, BATCH).astype("int32")
    rdrop = xk.RDrop(model, alpha=1.0)
    rdrop.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    logits1, logits2 = two_passes(model, features)
    history = fit_one_step(rdrop, features, labels)
    by_hand = float(xdrop.rdrop_loss(logits1, logits2, labels))
    assert history["loss"][0] == pytest.approx(by_hand, rel=1e-5)
    assert not np.allclose(logits1, logits2)  # the two copies had masks of their own
    steps = {layer.step for _, layer in xk.named_layers(model) if isinstance(layer, xk.Dropout)}
    assert steps == {1}  # one draw each: one forward over the doubled batch
    record("keras_hub", history["loss"])


# -- evaluate and predict --------------------------------------------------------------------------
def test_evaluate_and_predict_are_the_wrapped_models():
    model = classifier()
    x, y = data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rdrop = xk.RDrop(model, alpha=1.0)
    rdrop.compile(optimizer="sgd", loss=loss, metrics=["accuracy"])
    fit_one_step(rdrop, x, y)
    step = model.layers[1].step
    logits = host(model(x))
    np.testing.assert_allclose(host(rdrop.predict(x, verbose=0)), logits, rtol=1e-6)
    evaluated = rdrop.evaluate(x, y, verbose=0, return_dict=True)
    assert evaluated["loss"] == pytest.approx(float(host(loss(y, logits))), rel=1e-5)
    assert evaluated["accuracy"] == pytest.approx((logits.argmax(-1) == y).mean())
    assert model.layers[1].step == step  # no dropout drawn outside training


# -- saving ----------------------------------------------------------------------------------------
def test_saved_and_loaded_it_continues_the_streams_and_the_optimizer(tmp_path):
    model = classifier()
    x, y = data()
    rdrop = xk.RDrop(model, alpha=0.5)
    rdrop.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    fit_one_step(rdrop, x, y)
    rdrop.save(tmp_path / "rdrop.keras")
    expected = [fit_one_step(rdrop, x, y)["loss"][0] for _ in range(2)]
    loaded = keras.saving.load_model(tmp_path / "rdrop.keras")
    assert isinstance(loaded, xk.RDrop) and (loaded.alpha, loaded.predicts) == (0.5, None)
    assert loaded.model.layers[1].step == 1
    got = [fit_one_step(loaded, x, y)["loss"][0] for _ in range(2)]
    assert got == pytest.approx(expected, rel=1e-6)
    record("resumed", got)


# -- what it refuses -------------------------------------------------------------------------------
def test_arguments_are_checked():
    model = classifier()
    with pytest.raises(xdrop.ArgumentValueError, match="alpha must be a real number >= 0"):
        xk.RDrop(model, alpha=-1.0)
    with pytest.raises(xdrop.ArgumentValueError, match='predicts must be one of "logits"'):
        xk.RDrop(model, predicts="classes")
    with pytest.raises(xdrop.ArgumentTypeError, match="model must be a Keras model or layer"):
        xk.RDrop(lambda x: x)


def test_a_loss_it_cannot_read_the_outputs_from_needs_predicts():
    model = classifier()
    x, y = data()
    rdrop = xk.RDrop(model)
    rdrop.compile(optimizer="sgd", loss=lambda y_true, y_pred: keras.ops.mean(y_pred))
    with pytest.raises(xdrop.ArgumentValueError, match=r"RDrop\(model, predicts=\.\.\.\)"):
        fit_one_step(rdrop, x, y)
    rdrop = xk.RDrop(classifier(), predicts="logits")
    rdrop.compile(optimizer="sgd", loss=lambda y_true, y_pred: keras.ops.mean(y_pred))
    assert np.isfinite(fit_one_step(rdrop, x, y)["loss"][0])


@pytest.mark.parametrize("wrap", [lambda loss: {"logits": loss}, lambda loss: [loss]])
def test_a_loss_in_a_dict_or_list_is_refused_naming_loss(wrap):
    """A functional model's one loss keyed by its output's name (or in a list), which plain Keras
    takes: RDrop, a model of its own, has no output names to key it by, and Keras' own error
    would be a TypeError about None. (Keras skips a compile it did not write when it loads a
    model, so RDrop keeps Keras' compile and refuses rather than unwraps.)"""
    inputs = keras.Input((FEATURES,))
    logits = keras.layers.Dense(CLASSES, name="logits")(xk.Dropout(0.3, seed=5)(inputs))
    rdrop = xk.RDrop(keras.Model(inputs, logits))
    rdrop.compile(optimizer="sgd", loss=wrap("sparse_categorical_crossentropy"))
    x, y = data()
    with pytest.raises(xdrop.ArgumentValueError, match="loss must be one loss, given alone"):
        fit_one_step(rdrop, x, y)


def test_a_model_with_two_outputs_is_refused():
    inputs = keras.Input((FEATURES,))
    hidden = xk.Dropout(0.3, seed=1)(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(2)(hidden), keras.layers.Dense(3)(hidden)])
    x, y = data()
    rdrop = xk.RDrop(model)
    rdrop.compile(optimizer="sgd", loss=["mse", "mse"])
    with pytest.raises(xdrop.ArgumentTypeError, match="RDrop wraps models with one output"):
        fit_one_step(rdrop, x, [y[:, None].repeat(2, 1), y[:, None].repeat(3, 1)])
