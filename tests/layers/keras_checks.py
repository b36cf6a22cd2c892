"""Checks of xdrop.layers.keras on the Keras backend named by ``KERAS_BACKEND``.

Keras picks its backend once, at import, so ``tests/test_layers_keras.py`` runs this file in one
fresh pytest process per backend and reports each check as its own test.
"""

from __future__ import annotations

import numpy as np
import pytest

import xdrop
from xdrop import reference

keras = pytest.importorskip("keras")
from layers.shared import assert_refused, check_seed_none_draws_once, digits  # noqa: E402

from xdrop.layers.keras import (  # noqa: E402
    AlphaDropout,
    Dropout,
    DropPath,
    GaussianDropout,
    GaussianNoise,
    SpatialDropout1D,
    SpatialDropout2D,
    SpatialDropout3D,
    convert,
)

# The checks that run on one Keras backend only, and that backend: elsewhere they skip, and
# tests/test_layers_keras.py expects exactly that; any other skip fails there (nothing ran).
ONLY_ON = {
    "test_a_retraced_tf_function_draws_no_extra_step": "tensorflow",
    "test_fit_run_eagerly_trains_to_the_weights_of_the_traced_fit": "tensorflow",
}


def host(x):  # type: ignore[no-untyped-def]
    return keras.ops.convert_to_numpy(x)


def contract(x, rate, seed, step, **options):  # type: ignore[no-untyped-def]
    return xdrop.dropout(np.asarray(x), rate, seed=xdrop.fold_in(seed, step), **options)


def step_of(layer):  # type: ignore[no-untyped-def]
    return layer.step


@pytest.mark.parametrize("seed", [0, 2**63, 2**64 - 1])
def test_the_t_th_training_call_draws_fold_in_seed_t(seed):
    layer = Dropout(0.3, seed=seed)
    x = np.random.default_rng(0).normal(size=(4, 33)).astype("float32")
    for step in range(4):
        np.testing.assert_array_equal(host(layer(x, training=True)), contract(x, 0.3, seed, step))
    assert step_of(layer) == 4
    assert layer.seed == seed


def test_calls_not_in_training_draw_nothing_and_do_not_advance_the_step():
    layer, x = Dropout(0.5, seed=1), np.ones((2, 8), "float32")
    layer(x, training=True)
    np.testing.assert_array_equal(host(layer(x)), x)
    np.testing.assert_array_equal(host(layer(x, training=False)), x)
    assert step_of(layer) == 1
    classic = Dropout(0.25, seed=1, mode="classic")
    np.testing.assert_array_equal(host(classic(x)), np.full((2, 8), 0.75, "float32"))


def test_seed_none_draws_once_from_the_global_generator():
    check_seed_none_draws_once(lambda: Dropout(0.5), lambda layer: layer.seed)


def test_the_stream_is_one_seed_generator_and_no_weights_as_keras_counts_them():
    from xdrop.layers.keras import SeedStream

    layer = Dropout(0.5, seed=2**64 - 1)
    assert layer.weights == [] and layer.trainable_variables == []
    assert isinstance(layer.seed_generator, SeedStream)
    assert isinstance(layer.seed_generator, keras.random.SeedGenerator)
    assert layer._seed_generators == [layer.seed_generator]
    state = layer.seed_generator.state
    assert layer.non_trainable_variables == [state]
    assert (state.dtype, tuple(state.shape), state.trainable) == ("int32", (4,), False)
    layer(np.ones((2, 3), "float32"), training=True)
    np.testing.assert_array_equal(host(state.value), np.array([-1, -1, 0, 1], "int32"))
    assert (layer.seed, layer.step) == (2**64 - 1, 1)


@pytest.mark.parametrize("seed", [5, 2**64 - 1])
def test_the_step_carries_into_its_high_word_instead_of_wrapping(seed):
    layer, x = Dropout(0.5, seed=seed), np.ones((4, 33), "float32")
    high, low = seed >> 32, seed & 0xFFFF_FFFF
    words = np.array([high, low, 0, 2**32 - 1], np.uint32).view(np.int32)
    layer.seed_generator.state.assign(words)
    assert layer.step == 2**32 - 1
    np.testing.assert_array_equal(host(layer(x, training=True)), contract(x, 0.5, seed, 2**32 - 1))
    assert layer.step == 2**32
    # draw t uses Threefry of the seed's key at counter (t_hi, t_lo), as the torch and Flax
    # layers do: no earlier draw's seed
    for t_low in range(2):
        y0, y1 = reference.threefry2x32(reference.seed_key(seed), (1, t_low))
        expected = np.asarray(xdrop.dropout(x, 0.5, seed=y0 << 32 | y1))
        np.testing.assert_array_equal(host(layer(x, training=True)), expected)
        assert not np.array_equal(expected, contract(x, 0.5, seed, t_low))
    assert layer.step == 2**32 + 2
    np.testing.assert_array_equal(
        host(layer.seed_generator.state.value),
        np.array([high, low, 1, 2], np.uint32).view(np.int32),
    )


def test_keras_random_functions_draw_from_the_stream_and_advance_it():
    layer = Dropout(0.5, seed=3)
    first = host(keras.random.normal((4,), seed=layer.seed_generator))
    second = host(keras.random.uniform((4,), seed=layer.seed_generator))
    assert layer.step == 2 and first.shape == second.shape == (4,)
    again = Dropout(0.5, seed=3)
    np.testing.assert_array_equal(host(keras.random.normal((4,), seed=again.seed_generator)), first)


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [([np.array([0.0, 7.0, 0.0, 1.0])], xdrop.ArgumentTypeError, "<array of float64>"),
     ([np.array([0, 7], "int32"), np.array(1.5)], xdrop.ArgumentTypeError, "<array of float64>"),
     ([np.array([0, 2**40, 0, 1], "int64")], xdrop.ArgumentValueError, "[0, 1099511627776, 0, 1]"),
     ([np.array([0, 7, 1], "int32")], xdrop.ArgumentValueError, "<arrays of shapes [(3,)]>")],
)  # fmt: skip
def test_loaded_state_that_is_not_int32_words_is_refused(values, error, message):
    layer = Dropout(0.5, seed=1, name="d")
    store = {str(i): value for i, value in enumerate(values)}
    assert_refused(lambda: layer.load_own_variables(store), error, "the state of layer 'd' must be")
    assert_refused(lambda: layer.load_own_variables(store), error, message)
    assert (layer.seed, layer.step) == (1, 0)


def test_state_saved_as_a_seed_variable_and_a_step_variable_loads():
    """Files written before the stream became a seed generator hold int32[2] seed, int32 step."""
    layer = Dropout(0.5, seed=1)
    layer.load_own_variables({"0": np.array([-1, 5], "int32"), "1": np.array(-2, "int32")})
    assert (layer.seed, layer.step) == ((2**32 - 1) << 32 | 5, 2**32 - 2)


def test_get_config_and_from_config_round_trip_the_seed():
    layer = Dropout(0.4, noise_shape=(None, 1), seed=2**64 - 2, mode="classic", name="d")
    config = layer.get_config()
    assert {key: config[key] for key in ("rate", "noise_shape", "seed", "mode")} == {
        "rate": 0.4, "noise_shape": (None, 1), "seed": 2**64 - 2, "mode": "classic"
    }  # fmt: skip
    rebuilt = Dropout.from_config(config)
    x = np.ones((3, 5), "float32")
    np.testing.assert_array_equal(host(rebuilt(x, training=True)), host(layer(x, training=True)))


def mlp(seed=None, dropout=Dropout):  # type: ignore[no-untyped-def]
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    outputs = keras.layers.Dense(3)(dropout(0.5, seed=seed)(hidden))
    model = keras.Model(inputs, outputs)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def data(n=70):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 16)).astype("float32"), rng.integers(0, 3, n)


def test_model_fit_advances_the_step_once_per_batch():
    x, y = data(70)  # batches of 32, 32 and 6
    model = mlp(seed=3)
    model.fit(x, y, batch_size=32, epochs=2, verbose=0)
    assert step_of(model.layers[2]) == 6
    model.predict(x, verbose=0)
    model.evaluate(x, y, verbose=0)
    assert step_of(model.layers[2]) == 6


def test_model_fit_with_a_sequential_model():
    x, y = data(64)
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8), Dropout(0.5, seed=1),
                              keras.layers.Dense(3)])  # fmt: skip
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert step_of(model.layers[1]) == 4


def test_a_retraced_tf_function_draws_no_extra_step():
    """keras-team/keras#17548: a retrace must not advance the stream; the step is a variable."""
    if keras.backend.backend() != ONLY_ON["test_a_retraced_tf_function_draws_no_extra_step"]:
        pytest.skip("tf.function is TensorFlow's")
    import tensorflow as tf

    layer = Dropout(0.5, seed=4)
    call = tf.function(lambda x: layer(x, training=True))
    outputs = [call(tf.ones((2, 3))), call(tf.ones((4, 3))), call(tf.ones((2, 3)))]  # 2 traces
    assert step_of(layer) == 3
    for step, y in enumerate(outputs):
        np.testing.assert_array_equal(host(y), contract(np.ones(y.shape, "float32"), 0.5, 4, step))


def test_fit_run_eagerly_trains_to_the_weights_of_the_traced_fit():
    """Eagerly a tape records each dropout, which then runs the compiled kernel forward and on
    the gradient; in the traced train step, XLA steps: the same masks, the same weights."""
    name = "test_fit_run_eagerly_trains_to_the_weights_of_the_traced_fit"
    if keras.backend.backend() != ONLY_ON[name]:
        pytest.skip("run_eagerly against tf.function is TensorFlow's")
    x, y = data(64)
    weights = []
    for run_eagerly in (True, False):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, activation="relu"),
                                  Dropout(0.3, seed=7), keras.layers.Dense(3)])  # fmt: skip
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile("sgd", loss, run_eagerly=run_eagerly, jit_compile=False)
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        weights.append([host(w) for w in model.weights])
    for eager, traced in zip(*weights, strict=True):
        np.testing.assert_array_equal(eager, traced)


def test_a_saved_model_continues_the_stream(tmp_path):
    x, y = data(64)
    model = mlp(seed=2**64 - 5)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.layers[2].seed == 2**64 - 5
    assert step_of(loaded.layers[2]) == 4
    probe = np.ones((2, 32), "float32")
    np.testing.assert_array_equal(
        host(loaded.layers[2](probe, training=True)), host(model.layers[2](probe, training=True))
    )


def test_load_weights_restores_the_seed_and_the_step(tmp_path):
    x, y = data(64)
    model = mlp(seed=11)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model.save_weights(tmp_path / "m.weights.h5")
    other = mlp(seed=None)  # another seed, until the weights are loaded
    assert other.layers[2].seed != 11
    other.load_weights(tmp_path / "m.weights.h5")
    assert other.layers[2].seed == 11
    assert step_of(other.layers[2]) == 2


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    keras.config.set_dtype_policy(policy)
    try:
        layer = Dropout(0.5, seed=6)
        x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
        y = layer(x, training=True)
        compute = policy.removeprefix("mixed_")
        assert keras.backend.standardize_dtype(y.dtype) == compute
        expected = contract(host(keras.ops.cast(x, compute)).astype(np.float32), 0.5, 6, 0)
        np.testing.assert_array_equal(host(keras.ops.cast(y, "float32")), expected)
        model = mlp(seed=2)
        model.fit(*data(32), batch_size=16, epochs=1, verbose=0)
        assert step_of(model.layers[2]) == 2
    finally:
        keras.config.set_dtype_policy("float32")


@pytest.mark.parametrize(
    ("layer", "arguments", "shape", "noise"),
    [(SpatialDropout1D, {}, (2, 5, 3), (2, 1, 3)),
     (SpatialDropout2D, {"data_format": "channels_last"}, (2, 4, 4, 3), (2, 1, 1, 3)),
     (SpatialDropout2D, {"data_format": "channels_first"}, (2, 3, 4, 4), (2, 3, 1, 1)),
     (SpatialDropout3D, {"data_format": "channels_last"}, (2, 2, 2, 2, 3), (2, 1, 1, 1, 3))],
)  # fmt: skip
def test_spatial_forms_drop_whole_feature_maps(layer, arguments, shape, noise):
    x = np.ones(shape, "float32")
    built = layer(0.5, seed=9, **arguments)
    np.testing.assert_array_equal(
        host(built(x, training=True)), contract(x, 0.5, 9, 0, noise_shape=noise)
    )
    assert layer.from_config(built.get_config()).data_format == built.data_format


def test_noise_shape_with_none_entries():
    x = np.ones((4, 6), "float32")
    y = Dropout(0.5, noise_shape=(None, 1), seed=1)(x, training=True)
    np.testing.assert_array_equal(host(y), contract(x, 0.5, 1, 0, noise_shape=(4, 1)))


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [(lambda: Dropout(1.5), xdrop.ArgumentValueError, "rate must be a real number in [0, 1], got 1.5"),
     (lambda: Dropout(0.5, seed=2**64), xdrop.ArgumentValueError, "seed must be an integer in [0, 2**64)"),
     # a ValueError where Keras' layers raise one: a seed or noise shape of another type
     (lambda: Dropout(0.5, seed=1.5), xdrop.ArgumentValueError,
      "seed must be an integer in [0, 2**64), an xdrop.Generator or None, got 1.5 of type float"),
     (lambda: Dropout(0.5, noise_shape="a"), xdrop.ArgumentValueError, "noise_shape must be None or"),
     (lambda: Dropout(0.5, noise_shape=(2, 1.5)), xdrop.ArgumentValueError, "got (2, 1.5) of type tuple"),
     (lambda: Dropout("0.5"), xdrop.ArgumentTypeError, "rate must be a real number in [0, 1], or a 0-d array holding one, got '0.5'"),
     (lambda: GaussianNoise(1.5), xdrop.ArgumentValueError, "stddev must be a real number in [0, 1], got 1.5"),
     (lambda: GaussianNoise(0.5, mode="classic"), xdrop.ArgumentTypeError,
      "GaussianNoise takes no 'mode' argument"),
     (lambda: Dropout(0.5, mode="x"), xdrop.ArgumentValueError, 'mode must be one of "inverted", "classic"'),
     (lambda: SpatialDropout2D(0.5, data_format="nhwc"), xdrop.ArgumentValueError,
      "data_format must be None, \"channels_first\" or \"channels_last\", got 'nhwc'"),
     (lambda: GaussianDropout(0.5, noise_shape=(1, 4)), xdrop.ArgumentTypeError,
      "GaussianDropout takes no 'noise_shape' argument, got (1, 4)"),
     (lambda: DropPath(0.5, noise_shape=[1]), xdrop.ArgumentTypeError,
      "DropPath takes no 'noise_shape' argument, got [1]"),
     (lambda: AlphaDropout(0.5, mode="classic"), xdrop.ArgumentTypeError,
      "AlphaDropout takes no 'mode' argument, got 'classic'"),
     (lambda: SpatialDropout1D(0.5, noise_shape=(1, 1, 4)), xdrop.ArgumentTypeError,
      "SpatialDropout1D takes no 'noise_shape' argument")],
)  # fmt: skip
def test_bad_arguments_name_the_argument_the_value_and_what_is_allowed(make, error, message):
    assert_refused(make, error, message)


def rank_cases():  # type: ignore[no-untyped-def]
    """Fresh layers that take one rank, each with what it takes, as its error says."""
    from xdrop.layers.keras import DropBlock2D

    return [(SpatialDropout1D(0.5, seed=0), "a 3-d tensor (samples, timesteps, channels)"),
            (SpatialDropout2D(0.5, "channels_last", seed=0),
             "a 4-d tensor (samples, rows, cols, channels)"),
            (SpatialDropout2D(0.5, "channels_first", seed=0),
             "a 4-d tensor (samples, channels, rows, cols)"),
            (SpatialDropout3D(0.5, "channels_last", seed=0),
             "a 5-d tensor (samples, dim1, dim2, dim3, channels)"),
            (DropBlock2D(0.3, 3, "channels_last", seed=0),
             "a 4-d tensor (samples, rows, cols, channels)")]  # fmt: skip


@pytest.mark.parametrize("training", [True, False])
def test_an_integer_input_is_refused_in_training_and_evaluation_alike(training):
    # Keras' Dropout passes integers through in inference and refuses them in training; a model
    # feeding integers to a dropout would evaluate, then fail at its first training step
    layer = Dropout(0.5, seed=0)
    assert_refused(
        lambda: layer(np.arange(4, dtype="int32"), training=training),
        xdrop.ArgumentTypeError,
        "inputs must be an array of float16, bfloat16, float32 or float64 (cast integers to one), "
        "got <int32 array of shape (4,)>",
    )
    assert step_of(layer) == 0


@pytest.mark.parametrize("training", [True, False])
def test_inputs_of_the_wrong_rank_are_refused_with_the_rank_and_layout_expected(training):
    for layer, allowed in rank_cases():
        assert_refused(
            lambda layer=layer: layer(np.ones((2, 3), "float32"), training=training),
            xdrop.ArgumentValueError,
            f"inputs must be {allowed}, got <tensor of shape (2, 3)>",
        )
        assert step_of(layer) == 0
    row = DropPath(0.1, seed=0)
    assert_refused(
        lambda: row(np.ones((), "float32"), training=training),
        xdrop.ArgumentValueError,
        'inputs must be a tensor with a batch axis for mode="row", got <tensor of shape ()>',
    )
    assert step_of(row) == 0


@pytest.mark.parametrize("build", ["sequential", "functional"])
def test_a_wrong_rank_is_refused_when_the_model_is_built(build):
    # before: the model built, with a (None, 4, 5) output, and failed only in predict or fit
    for layer, allowed in rank_cases():
        inputs = keras.Input((4, 5) if allowed.startswith(("a 4", "a 5")) else (4,))
        if build == "sequential":
            make = lambda layer=layer, inputs=inputs: keras.Sequential([inputs, layer])  # noqa: E731
        else:
            make = lambda layer=layer, inputs=inputs: layer(inputs)  # noqa: E731
        assert_refused(
            make,
            xdrop.ArgumentValueError,
            f"inputs must be {allowed}, got <tensor of shape {(None, *inputs.shape[1:])}>",
        )


def test_a_model_trains_on_digits_as_well_as_with_keras_dropout():
    x, y = digits()
    accuracies = []
    for dropout in (keras.layers.Dropout, Dropout):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((64,))
        hidden = keras.layers.Dense(128, activation="relu")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(10)(dropout(0.5, seed=0)(hidden)))
        model.compile(keras.optimizers.Adam(1e-2),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])  # fmt: skip
        model.fit(x[:1200], y[:1200], batch_size=64, epochs=6, verbose=0)
        accuracies.append(model.evaluate(x[1200:], y[1200:], verbose=0)[1])
    own, ours = accuracies
    assert ours > 0.9
    assert abs(ours - own) < 0.03, (ours, own)


# -- the family --------------------------------------------------------------------------------------
def family_cases():  # type: ignore[no-untyped-def]
    from xdrop.layers import common
    from xdrop.layers import keras as layers

    return [
        (lambda: layers.AlphaDropout(0.3, seed=5), lambda x, s: xdrop.alpha_dropout(x, 0.3, seed=s)),
        (lambda: layers.GaussianDropout(0.3, seed=5), lambda x, s: xdrop.gaussian_dropout(x, 0.3, seed=s)),
        (lambda: layers.DropPath(0.3, seed=5), lambda x, s: xdrop.drop_path(x, 0.3, seed=s)),
        (lambda: layers.GaussianNoise(0.3, seed=5), lambda x, s: common.gaussian_noise(x, 0.3, s)),
        (
            lambda: layers.DropBlock2D(0.3, 3, data_format="channels_last", seed=5),
            lambda x, s: xdrop.drop_block(x, 0.3, 3, seed=s, data_format="channels_last"),
        ),
    ]  # fmt: skip


def test_family_layers_follow_the_step_contract_and_round_trip_their_config():
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    for make, function in family_cases():
        layer = make()
        for step in range(2):
            expected = function(x, xdrop.fold_in(5, step))
            np.testing.assert_allclose(
                host(layer(x, training=True)), expected, rtol=1e-6, atol=1e-6
            )
        np.testing.assert_array_equal(host(layer(x)), x)
        assert step_of(layer) == 2
        rebuilt = type(layer).from_config(layer.get_config())
        np.testing.assert_allclose(
            host(rebuilt(x, training=True)), function(x, xdrop.fold_in(5, 0)), rtol=1e-6, atol=1e-6
        )


def test_mc_sampling_leaves_batch_normalization_on_its_moving_statistics():
    from xdrop.layers.keras import set_mc_sampling

    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8),
            keras.layers.BatchNormalization(),
            Dropout(0.5, seed=1),
        ]
    )
    moving = host(model.layers[1].moving_mean)
    assert set_mc_sampling(model) == 1
    x = np.ones((5, 6), "float32")
    first, second = model.predict(x, verbose=0), model.predict(x, verbose=0)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(host(model.layers[1].moving_mean), moving)
    set_mc_sampling(model, False)
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_keras_variable_rate_is_its_value_eagerly_and_in_fit():
    class ScheduledDropout(keras.layers.Layer):  # a rate a callback may change between epochs
        def __init__(self) -> None:
            super().__init__()
            self.rate = keras.Variable(0.25, trainable=False)  # tracked: fit's state on JAX

        def call(self, inputs, training=False):
            return xdrop.dropout(inputs, self.rate, seed=3) if training else inputs

    layer = ScheduledDropout()
    x = keras.ops.ones((4, 8))
    eager = layer(x, training=True)
    assert np.array_equal(host(eager), host(xdrop.dropout(x, 0.25, seed=3)))
    model = keras.Sequential([keras.Input((8,)), layer])
    model.compile(loss="mse")
    for value in (0.25, 0.75):
        layer.rate.assign(value)
        seen = model.train_on_batch(np.ones((4, 8)), np.zeros((4, 8)), return_dict=True)
        expected = float(np.mean(host(xdrop.dropout(x, value, seed=3)) ** 2))
        assert seen["loss"] == pytest.approx(expected, rel=1e-6)


def test_a_layer_refuses_a_variable_rate_whose_later_values_it_would_ignore():
    """The layer's rate is configuration; the function above reads a variable at each call."""
    with pytest.raises(xdrop.ArgumentTypeError, match=r"call xdrop\.dropout with the variable"):
        Dropout(keras.Variable(0.3, trainable=False), seed=1)


def test_a_keras_variable_as_x_is_its_value_on_the_backend_and_trains():
    weights = keras.Variable(np.ones((4, 8), "float32"))
    dropped = xdrop.dropout(weights, 0.5, seed=1)
    assert keras.ops.is_tensor(dropped) and not isinstance(dropped, np.ndarray)
    assert np.array_equal(host(dropped), host(xdrop.dropout(keras.ops.ones((4, 8)), 0.5, seed=1)))

    class DropConnect(keras.layers.Layer):  # dropout on a layer's own weights
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], 3), initializer="ones")

        def call(self, inputs, training=False):
            return inputs @ xdrop.dropout(self.kernel, 0.5, seed=1, training=bool(training))

    layer = DropConnect()
    model = keras.Sequential([keras.Input((4,)), layer])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((8, 4)), np.zeros((8, 3)), verbose=0)
    kept = host(xdrop.dropout(keras.ops.ones((4, 3)), 0.5, seed=1)) != 0
    trained = host(layer.kernel)
    assert (trained[kept] < 1).all() and (trained[~kept] == 1).all()  # only kept weights learn


def test_every_layers_stream_has_a_variable_path_of_its_own_as_keras_own_layers_do():
    """Keras numbers its seed generators; two streams sharing one path would make
    get_state_tree fail, and on torch collapse into one entry of the model's state_dict."""
    model = keras.Sequential(
        [keras.Input((8,)), Dropout(0.5, seed=1), GaussianDropout(0.5, seed=2)]
    )
    model.compile(optimizer="sgd", loss="mse")
    paths = [variable.path for variable in model.non_trainable_variables]
    assert len(paths) == len(set(paths)) == 2, paths
    assert len(model.get_state_tree()["non_trainable_variables"]) == 2
    if keras.backend.backend() == "torch":
        streams = {key.rsplit(".", 1)[-1] for key in model.state_dict() if "seed_gen" in key}
        assert len(streams) == 2, streams


def test_set_mc_sampling_refuses_what_is_not_a_layer():
    from xdrop.layers.keras import set_mc_sampling

    for model in (5, None, [Dropout(0.5, seed=1)]):
        with pytest.raises(xdrop.ArgumentTypeError, match="model must be a Keras layer or model"):
            set_mc_sampling(model)


# -- every Keras regularization layer, swapped for xdrop's -------------------------------------------
def run_every_layer(action, directory):  # type: ignore[no-untyped-def]
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("keras_every_layer.py")
    run = subprocess.run([sys.executable, str(script), action, str(directory)],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_a_model_with_every_regularization_layer_resumes_bit_for_bit_in_a_fresh_process(tmp_path):
    from layers.keras_every_layer import model, train

    built = model(seed=2**64 - 20)
    train(built)
    built.save(tmp_path / "model.keras")
    steps = [layer.step for layer in built.layers if hasattr(layer, "seed_generator")]
    assert steps == [4] * 7  # one training call per batch (3) and one more, for the output
    uninterrupted = train(built)
    run_every_layer("resume", tmp_path)
    resumed = dict(np.load(tmp_path / "resumed.npz"))
    assert resumed.keys() == uninterrupted.keys()
    assert (
        len([key for key in resumed if key.startswith("variable")]) == 7 + 6
    )  # 7 streams, 3 dense kernels and biases
    for key, value in uninterrupted.items():
        np.testing.assert_array_equal(resumed[key], value, err_msg=key)


def test_loading_without_importing_the_layers_fails_with_an_error_that_names_the_module(tmp_path):
    from layers.keras_every_layer import model

    model().save(tmp_path / "model.keras")
    run_every_layer("load-only", tmp_path)
    error = (tmp_path / "error.txt").read_text()
    # Keras imports the module a config names only for its own packages (keras, keras_hub...):
    # its error names the class, says to import it, and shows the module that defines it
    assert error.startswith("TypeError: "), error[:300]
    assert "Could not locate class 'SpatialDropout3D'" in error, error[:300]
    assert "make sure they are all imported" in error, error[:300]
    assert "{'module': 'xdrop.layers.keras', 'class_name': 'SpatialDropout3D'" in error, error[:300]


def test_gaussian_noise_adds_the_normals_gaussian_dropout_multiplies_by():
    from xdrop.layers.keras import GaussianNoise

    x = np.zeros((3, 50), "float32")
    noise = host(GaussianNoise(1.0, seed=4)(x, training=True))  # z itself
    factor = xdrop.gaussian_dropout(np.ones_like(x), 0.5, seed=xdrop.fold_in(4, 0))  # 1 + 1 * z
    np.testing.assert_allclose(noise, factor - 1, rtol=0, atol=2e-6)
    assert 0.8 < noise.std() < 1.2


@pytest.mark.parametrize("data_parallel", [None, "per_rank", "global_batch"])
def test_one_replica_draws_the_same_masks_in_every_data_parallel_mode(data_parallel):
    layer = Dropout(0.5, seed=3, data_parallel=data_parallel)
    x = np.ones((4, 6), "float32")
    for step in range(2):
        np.testing.assert_array_equal(host(layer(x, training=True)), contract(x, 0.5, 3, step))
    again = Dropout.from_config(layer.get_config())
    assert again.data_parallel == data_parallel and again.seed == 3


def test_data_parallel_is_refused_unless_a_mode_and_global_batch_where_it_cannot_be_drawn():
    with pytest.raises(xdrop.ArgumentValueError, match=r"data_parallel .*'rows'"):
        Dropout(0.5, data_parallel="rows")
    with pytest.raises(xdrop.ArgumentValueError, match="GaussianNoise"):
        GaussianNoise(0.1, data_parallel="global_batch")
    model = keras.Sequential([keras.Input((4,)), keras.layers.GaussianNoise(0.1)])
    with pytest.raises(xdrop.ArgumentValueError, match="GaussianNoise"):
        convert(model, seed=0, data_parallel="global_batch")
    assert type(model.layers[0]) is keras.layers.GaussianNoise  # refused before any change


def test_convert_gives_every_converted_layer_its_data_parallel_mode():
    layers = [keras.layers.Dropout(0.5), keras.layers.SpatialDropout1D(0.2)]
    model = keras.Sequential([keras.Input((3, 4)), *layers])
    convert(model, seed=0, data_parallel="per_rank")
    assert [layer.data_parallel for layer in model.layers] == ["per_rank", "per_rank"]
    assert [type(layer).__module__ for layer in model.layers] == ["xdrop.layers.keras"] * 2
