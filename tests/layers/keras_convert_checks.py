"""Checks of ``xdrop.layers.keras.convert`` on the Keras backend named by ``KERAS_BACKEND``.

``tests/test_convert_keras.py`` runs this file in one fresh pytest process per backend and
reports each check as its own test. Saved models are loaded back in one more fresh process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import xdrop
from xdrop.layers.common import site_seed

keras = pytest.importorskip("keras")
from xdrop.layers import keras as xk  # noqa: E402

SEED = 1234


def host(x):  # type: ignore[no-untyped-def]
    return keras.ops.convert_to_numpy(x)


def by_hand(x, rate, site, step):  # type: ignore[no-untyped-def]
    """The documented contract of a converted ``Dropout``, computed with xdrop.dropout."""
    seed = xdrop.fold_in(site_seed(SEED, site), step)
    return xdrop.dropout(np.asarray(x, np.float32), rate, seed=seed)


def inputs(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


class Blocks(keras.Model):
    """A subclassed model: dropouts in a list and in an attribute."""

    def __init__(self, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.blocks = [keras.layers.Dense(6), keras.layers.Dropout(0.25)]
        self.head_dropout = keras.layers.Dropout(0.5)

    def call(self, x, training=False):  # type: ignore[no-untyped-def]
        for block in self.blocks:
            x = block(x, training=training)
        return self.head_dropout(x, training=training)


def attention_model() -> keras.Model:
    x = keras.Input((4, 8))
    y = keras.layers.MultiHeadAttention(2, 4, dropout=0.1, name="attention")(x, x)
    y = keras.layers.Dropout(0.2)(y)
    return keras.Model(x, keras.layers.Dense(1)(keras.layers.Flatten()(y)))


def test_a_sequential_models_dropouts_follow_the_site_formula():
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dropout(0.5),
                              keras.layers.Dropout(0.3)])  # fmt: skip
    assert xk.convert(model, seed=SEED) is model
    x = inputs(4, 16)
    for step in range(3):
        expected = by_hand(by_hand(x, 0.5, "layers.0", step), 0.3, "layers.1", step)
        np.testing.assert_array_equal(host(model(x, training=True)), expected)
    assert [layer.step for layer in model.layers] == [3, 3]
    np.testing.assert_array_equal(host(model(x, training=False)), x)


def test_a_functional_models_variants_become_xdrops_with_the_site_seed():
    x = keras.Input((5, 3))
    y = keras.layers.Dropout(0.5, noise_shape=(None, 1, 3))(x)
    y = keras.layers.SpatialDropout1D(0.2)(y)
    y = keras.layers.GaussianDropout(0.1)(y)
    y = keras.layers.AlphaDropout(0.1)(y)
    model = keras.Model(x, keras.layers.GaussianNoise(0.3)(y))
    xk.convert(model, seed=SEED)
    expected_types = [xk.Dropout, xk.SpatialDropout1D, xk.GaussianDropout, xk.AlphaDropout,
                      xk.GaussianNoise]  # fmt: skip
    assert [type(layer) for layer in model.layers[1:]] == expected_types
    mirrors = [xk.Dropout(0.5, noise_shape=(None, 1, 3), seed=site_seed(SEED, "layers.1")),
               xk.SpatialDropout1D(0.2, seed=site_seed(SEED, "layers.2")),
               xk.GaussianDropout(0.1, seed=site_seed(SEED, "layers.3")),
               xk.AlphaDropout(0.1, seed=site_seed(SEED, "layers.4")),
               xk.GaussianNoise(0.3, seed=site_seed(SEED, "layers.5"))]  # fmt: skip
    data = inputs(2, 5, 3)
    for _ in range(2):
        expected = data
        for mirror in mirrors:
            expected = mirror(expected, training=True)
        np.testing.assert_array_equal(host(model(data, training=True)), host(expected))
    first = model.layers[1]
    np.testing.assert_array_equal(
        host(first(data, training=True)),
        xdrop.dropout(data, 0.5, seed=xdrop.fold_in(site_seed(SEED, "layers.1"), 2),
                      noise_shape=(None, 1, 3)),
    )  # fmt: skip


def test_a_subclassed_model_names_its_sites_by_attribute():
    model = Blocks()
    x = inputs(3, 6)
    model(x)
    xk.convert(model, seed=SEED)
    names = {name for name, layer in xk.named_layers(model) if isinstance(layer, xk.Dropout)}
    assert names == {"blocks.1", "head_dropout"}
    dense = host(model.blocks[0](x))
    expected = by_hand(by_hand(dense, 0.25, "blocks.1", 0), 0.5, "head_dropout", 0)
    np.testing.assert_allclose(host(model(x, training=True)), expected, rtol=0, atol=0)


def test_the_dropout_inside_multi_head_attention_follows_the_site_formula():
    model = attention_model()
    xk.convert(model, seed=SEED)
    attention = model.get_layer("attention")
    assert isinstance(attention._dropout_layer, xk.Dropout)
    x = inputs(2, 4, 8)
    _, probabilities = attention(x, x, return_attention_scores=True, training=False)
    dropped = by_hand(host(probabilities), 0.1, "layers.1._dropout_layer", 0)
    value = attention._value_dense(x)
    combined = keras.ops.einsum(attention._combine_equation, dropped, value)
    expected = host(attention._output_dense(combined))
    np.testing.assert_allclose(host(attention(x, x, training=True)), expected, atol=1e-6)
    assert attention._dropout_layer.step == 1


def test_converting_twice_changes_nothing_and_another_seed_is_refused():
    model = attention_model()
    xk.convert(model, seed=SEED)
    model(inputs(2, 4, 8), training=True)
    before = [(n, layer.seed, layer.step) for n, layer in xk.named_layers(model)
              if isinstance(layer, xk.Dropout)]  # fmt: skip
    xk.convert(model, seed=SEED)
    # another seed would be ignored (every stream is kept): refused, as torch's convert does
    with pytest.raises(xdrop.ArgumentValueError, match=f"seed must be {SEED}, the seed this "):
        xk.convert(model, seed=SEED + 1)
    after = [(n, layer.seed, layer.step) for n, layer in xk.named_layers(model)
             if isinstance(layer, xk.Dropout)]  # fmt: skip
    assert after == before and len(before) == 2


def test_the_site_name_is_passed_through_rename():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5)])
    xk.convert(model, seed=SEED, rename=lambda name: "encoder/" + name)
    assert model.layers[0].seed == site_seed(SEED, "encoder/layers.0")


def test_site_names_do_not_depend_on_how_many_layers_were_made_before():
    first = Blocks()
    keras.layers.Dropout(0.1)  # shifts Keras' automatic layer names
    second = Blocks()
    for model in (first, second):
        model(inputs(1, 6))
        xk.convert(model, seed=SEED)
    assert first.head_dropout.name != second.head_dropout.name
    assert first.head_dropout.seed == second.head_dropout.seed


def test_unknown_dropout_like_layers_are_named_by_strict_and_left_with_a_warning():
    class MyNoise(keras.layers.Layer):
        def call(self, x):  # type: ignore[no-untyped-def]
            return x

    x = keras.Input((3, 4))
    y = keras.layers.Attention(dropout=0.1)([x, x])
    y = MyNoise()(keras.layers.Dropout(0.5)(y))
    model = keras.Model(x, y)
    with pytest.raises(xdrop.UnconvertedDropoutError, match=r"layers\.1 \(Attention\).*"
                       r"layers\.3 \(MyNoise\)"):  # fmt: skip
        xk.convert(model, seed=SEED, strict=True)
    assert type(model.layers[2]) is keras.layers.Dropout  # nothing changed
    with pytest.warns(xdrop.UnconvertedDropoutWarning, match="MyNoise"):
        xk.convert(model, seed=SEED)
    assert type(model.layers[2]) is xk.Dropout
    assert type(model.layers[1]) is keras.layers.Attention


# every dropout layer of Keras that convert replaces; a subclass may compute something else
KERAS_DROPOUTS = [keras.layers.Dropout, keras.layers.SpatialDropout1D,
                  keras.layers.SpatialDropout2D, keras.layers.SpatialDropout3D,
                  keras.layers.GaussianDropout, keras.layers.AlphaDropout,
                  keras.layers.GaussianNoise]  # fmt: skip


@pytest.mark.parametrize("base", KERAS_DROPOUTS, ids=lambda base: base.__name__)
def test_a_subclass_of_a_keras_dropout_layer_is_reported_whatever_its_name(base):
    regularizer = type("Regularizer", (base,), {})(0.5)  # no "Dropout" nor "Noise" in its name
    model = keras.Sequential([keras.layers.Dense(4), regularizer])
    with pytest.raises(xdrop.UnconvertedDropoutError, match=r"layers\.1 \(Regularizer\)"):
        xk.convert(model, seed=SEED, strict=True)
    with pytest.warns(xdrop.UnconvertedDropoutWarning, match=r"layers\.1 \(Regularizer\)"):
        xk.convert(model, seed=SEED)
    assert model.layers[1] is regularizer and type(regularizer).__name__ == "Regularizer"


ATTENTIONS = pytest.mark.parametrize(
    "attention",
    [lambda: keras.layers.MultiHeadAttention(2, 4, dropout=0.1),
     lambda: keras.layers.GroupQueryAttention(4, 2, 1, dropout=0.1)],
    ids=["MultiHeadAttention", "GroupQueryAttention"],
)  # fmt: skip
"""Keras' attention layers, which make their dropout when they are built."""


@ATTENTIONS
def test_an_attention_makes_its_dropout_when_built_so_unbuilt_is_refused(attention):
    class Encoder(keras.Model):
        def __init__(self):  # type: ignore[no-untyped-def]
            super().__init__()
            self.attention = attention()

        def call(self, x):  # type: ignore[no-untyped-def]
            return self.attention(x, x)

    model = Encoder()
    with pytest.raises(xdrop.UnbuiltLayerError, match="not built yet: attention; build"):
        xk.convert(model, seed=SEED)
    model(inputs(2, 3, 8))
    xk.convert(model, seed=SEED)
    assert type(model.attention._dropout_layer) is xk.Dropout
    assert model.attention._dropout_layer.seed == site_seed(SEED, "attention._dropout_layer")


@pytest.mark.parametrize(
    ("keras_layer", "xdrop_layer"),
    [(lambda: keras.layers.Dropout(0.5), xk.Dropout),
     (lambda: keras.layers.SpatialDropout1D(0.5), xk.SpatialDropout1D),
     (lambda: keras.layers.GaussianNoise(0.5), xk.GaussianNoise)],
    ids=["Dropout", "SpatialDropout1D", "GaussianNoise"],
)  # fmt: skip
def test_a_bare_dropout_layer_is_converted_in_place_as_the_site_named_empty(
    keras_layer, xdrop_layer
):
    layer = keras_layer()
    assert xk.convert(layer, seed=SEED, rename=lambda name: "root" + name) is layer
    assert type(layer) is xdrop_layer
    assert layer.seed == site_seed(SEED, "root")  # the root's name is "", as in torch's convert
    mirror = xdrop_layer(0.5, seed=site_seed(SEED, "root"))
    x = inputs(2, 3, 4)
    np.testing.assert_array_equal(host(layer(x, training=True)), host(mirror(x, training=True)))


def test_a_bare_dropout_converted_without_rename_follows_the_site_formula():
    layer = keras.layers.Dropout(0.5)
    xk.convert(layer, seed=SEED)
    x = inputs(4, 16)
    np.testing.assert_array_equal(host(layer(x, training=True)), by_hand(x, 0.5, "", 0))


@ATTENTIONS
def test_a_bare_unbuilt_attention_is_refused_as_inside_a_model(attention):
    layer = attention()
    with pytest.raises(xdrop.UnbuiltLayerError, match="not built yet: <model>; build"):
        xk.convert(layer, seed=SEED)
    layer(inputs(2, 3, 8), inputs(2, 3, 8))
    assert xk.convert(layer, seed=SEED) is layer
    assert type(layer._dropout_layer) is xk.Dropout
    assert layer._dropout_layer.seed == site_seed(SEED, "_dropout_layer")


@pytest.mark.parametrize(
    ("make", "shown"),
    [(lambda: type("Regularizer", (keras.layers.Dropout,), {})(0.5), "Regularizer"),
     (lambda: keras.layers.Attention(dropout=0.1), "Attention")],
    ids=["Dropout subclass", "Attention"],
)  # fmt: skip
def test_a_bare_layer_that_draws_its_own_noise_is_reported_as_the_model(make, shown):
    layer, named = make(), rf"<model> \({shown}\)"
    with pytest.raises(xdrop.UnconvertedDropoutError, match="cannot convert: " + named):
        xk.convert(layer, seed=SEED, strict=True)
    with pytest.warns(xdrop.UnconvertedDropoutWarning, match=named):
        assert xk.convert(layer, seed=SEED) is layer
    assert type(layer).__name__ == shown  # left as it is


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        (dict(model=3, seed=0), xdrop.ArgumentTypeError, "model must be a Keras layer"),
        (dict(seed=-1), xdrop.ArgumentValueError, r"seed must be an integer in \[0, 2\*\*64\)"),
        (dict(seed=2**64), xdrop.ArgumentValueError, "seed must be"),
        (dict(seed="1"), xdrop.ArgumentTypeError, "seed must be"),
        (dict(seed=0, strict="yes"), xdrop.ArgumentTypeError, "strict must be True or False"),
        (dict(seed=0, rename="x"), xdrop.ArgumentTypeError, "rename must be a function"),
        (dict(seed=0, rename=len), xdrop.ArgumentTypeError, r"rename\('layers.0'\) must be a str"),
        (dict(seed=0, rename=lambda name: "one"), xdrop.ArgumentValueError, "both give 'one'"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_by_name(arguments, error, message):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5),
                              keras.layers.Dropout(0.5)])  # fmt: skip
    arguments = {"model": model, **arguments}
    with pytest.raises(error, match=message):
        xk.convert(arguments.pop("model"), **arguments)
    assert type(model.layers[0]) is keras.layers.Dropout


RESUME = """
import json, sys, numpy as np, keras
from xdrop.layers import keras as xk
data = np.load(sys.argv[2])
out = {}
for name, load in (("sequential", keras.saving.load_model), ("subclassed", xk.load_model)):
    model = load(f"{sys.argv[1]}/{name}.keras")
    history = model.fit(data["x_" + name], data["y"], batch_size=4, epochs=1, shuffle=False,
                        verbose=0)
    out[name] = history.history["loss"]
print(json.dumps(out))
"""


@keras.saving.register_keras_serializable(package="xdrop_tests")
class Small(keras.Model):
    """A subclassed model that makes its layers in code, as keras-hub's models do, with the
    dropout inside an attention layer, which Keras makes in the attention's build."""

    def __init__(self, **kwargs):  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.attention = keras.layers.MultiHeadAttention(2, 4, dropout=0.1)
        self.dropout = keras.layers.Dropout(0.5)
        self.head = keras.layers.Dense(1)

    def call(self, x, training=False):  # type: ignore[no-untyped-def]
        y = self.attention(x, x, training=training)
        y = self.dropout(keras.ops.reshape(y, (-1, 32)), training=training)
        return self.head(y)


def test_a_saved_model_resumes_bit_identically_in_a_fresh_process(tmp_path):
    keras.utils.set_random_seed(0)
    sequential = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8),
                                   keras.layers.Dropout(0.5), keras.layers.Dense(1)])  # fmt: skip
    subclassed = Small()
    subclassed(inputs(1, 4, 8))
    models = {"sequential": sequential, "subclassed": subclassed}
    data = {"x_sequential": inputs(8, 8, seed=1), "x_subclassed": inputs(8, 4, 8, seed=2),
            "y": inputs(8, 1, seed=3)}  # fmt: skip
    np.savez(tmp_path / "data.npz", **data)
    expected = {}
    for name, model in models.items():
        xk.convert(model, seed=SEED)
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        x = data["x_" + name]
        model.fit(x, data["y"], batch_size=4, epochs=2, shuffle=False, verbose=0)
        model.save(tmp_path / f"{name}.keras")
        history = model.fit(x, data["y"], batch_size=4, epochs=1, shuffle=False, verbose=0)
        expected[name] = history.history["loss"]
        steps = {layer.step for _, layer in xk.named_layers(model) if isinstance(layer, xk.Dropout)}
        assert steps == {6}  # the compiled train step advanced every stream
    assert isinstance(subclassed.attention._dropout_layer, xk.Dropout)
    here = str(Path(__file__).parent)  # importing this file registers Small with Keras
    script = f"import sys; sys.path.insert(0, {here!r})\nimport keras_convert_checks\n" + RESUME
    command = [sys.executable, "-c", script, str(tmp_path), str(tmp_path / "data.npz")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == expected


def test_a_loaded_model_holds_the_files_streams_and_converts_again_with_any_seed(tmp_path):
    model = Small()
    model(inputs(1, 4, 8))
    xk.convert(model, seed=SEED)
    model.save(tmp_path / "small.keras")
    loaded = xk.load_model(tmp_path / "small.keras")
    streams = [(n, layer.seed) for n, layer in xk.named_layers(loaded)
               if isinstance(layer, xk.Dropout)]  # fmt: skip
    assert streams and xk.convert(loaded, seed=SEED + 1) is loaded  # no seed known to differ
    assert [(n, layer.seed) for n, layer in xk.named_layers(loaded)
            if isinstance(layer, xk.Dropout)] == streams  # fmt: skip
    with pytest.raises(xdrop.ArgumentValueError, match="the seed this model's converted"):
        xk.convert(model, seed=SEED + 1)  # the model converted here still knows its seed


def test_load_model_of_a_file_saved_before_convert_says_how_to_load_it(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5), keras.layers.Dense(1)])
    model.save(tmp_path / "plain.keras")
    with pytest.raises(ValueError, match=r"a file saved before convert loads with keras\.saving"):
        xk.load_model(tmp_path / "plain.keras")


def test_keras_refuses_to_load_streams_into_layers_made_in_code(tmp_path):
    model = attention_model()
    xk.convert(model, seed=SEED)
    model.save(tmp_path / "m.keras")
    with pytest.raises(ValueError, match="expected 0 variables, but received 1"):
        keras.saving.load_model(tmp_path / "m.keras")


def test_keras_hubs_drop_paths_are_reported_and_strict_changes_nothing():
    """keras-hub's MiT (SegFormer's backbone) holds drop paths of its own (keras.random), whose
    rates rise from 0: those above 0 are reported."""
    keras_hub = pytest.importorskip("keras_hub")
    model = keras_hub.models.MiTBackbone(
        layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2],
        layerwise_sr_ratios=[2, 1], max_drop_path_rate=0.3, layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2], hidden_dims=[8, 16], image_shape=(32, 32, 3),
    )  # fmt: skip
    model(np.zeros((2, 32, 32, 3), "float32"))
    paths = {name: float(layer.rate) for name, layer in xk.named_layers(model)
             if type(layer).__name__ == "DropPath"}  # fmt: skip
    drawing = [name for name, rate in paths.items() if rate > 0]
    assert drawing and len(drawing) < len(paths)
    with pytest.raises(xdrop.UnconvertedDropoutError, match=rf"{drawing[0]} \(DropPath\)"):
        xk.convert(model, seed=SEED, strict=True)
    with pytest.warns(xdrop.UnconvertedDropoutWarning) as caught:
        xk.convert(model, seed=SEED)
    message = str(caught[0].message)
    assert all((f"{name} (DropPath)" in message) == (rate > 0) for name, rate in paths.items())


def test_a_keras_hub_task_loads_with_its_optimizers_slots(tmp_path):
    """keras-hub's tasks are compiled from the file before they are built: their optimizer's
    slots (Adam's moments) must be made before the file's are read, or the loaded model would
    go on with empty ones (Keras only warns)."""
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        dropout=0.1, max_sequence_length=8,
    )  # fmt: skip
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None)
    xk.convert(model, seed=SEED)
    rng = np.random.default_rng(0)
    features = {
        "token_ids": rng.integers(0, 50, (8, 8)).astype("int32"),
        "segment_ids": np.zeros((8, 8), "int32"),
        "padding_mask": np.ones((8, 8), "int32"),
    }
    labels = rng.integers(0, 2, (8,)).astype("int32")
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    model.fit(features, labels, batch_size=4, shuffle=False, verbose=0)
    model.save(tmp_path / "task.keras")
    loaded = xk.load_model(tmp_path / "task.keras")
    assert int(loaded.optimizer.iterations) == 2
    for model_ in (model, loaded):
        model_.fit(features, labels, batch_size=4, shuffle=False, verbose=0)
    for mine, theirs in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


def test_a_converted_keras_hub_bert_classifier_trains_with_fit():
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
        dropout=0.1, max_sequence_length=16,
    )  # fmt: skip
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None,
                                                dropout=0.1)  # fmt: skip
    rng = np.random.default_rng(0)
    model.set_weights([(0.05 * rng.standard_normal(w.shape)).astype(np.float32)
                       for w in model.get_weights()])  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error", xdrop.UnconvertedDropoutWarning)
        xk.convert(model, seed=SEED, strict=True)
    sites = [name for name, layer in xk.named_layers(model) if isinstance(layer, xk.Dropout)]
    assert "_backbone.transformer_layers.1._self_attention_layer._dropout_layer" in sites
    assert not any(type(layer) is keras.layers.Dropout for _, layer in xk.named_layers(model))
    features = {
        "token_ids": rng.integers(0, 50, (8, 16)).astype("int32"),
        "segment_ids": np.zeros((8, 16), "int32"),
        "padding_mask": np.ones((8, 16), "int32"),
    }
    labels = rng.integers(0, 2, (8,)).astype("int32")
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))  # fmt: skip
    losses = model.fit(features, labels, batch_size=4, epochs=2, shuffle=False,
                       verbose=0).history["loss"]  # fmt: skip
    outputs = host(model(features, training=True))
    steps = {layer.step for _, layer in xk.named_layers(model) if isinstance(layer, xk.Dropout)}
    assert steps == {5}  # four steps of fit, one call
    out = os.environ.get("XDROP_KERAS_CONVERT_OUT")
    if out:
        Path(out, f"{keras.backend.backend()}.json").write_text(
            json.dumps({"losses": losses, "outputs": outputs.tolist(), "sites": sites})
        )
