"""Run by tests/test_distributed_layers.py: ``python keras_replicas.py`` (Keras on TensorFlow).

Two logical CPU devices under ``tf.distribute.MirroredStrategy``, with Keras' own ``fit``:

- a layer with no ``data_parallel`` (the default) draws a stream per replica, replica ``r`` at
  step ``t`` the mask of ``xdrop.fold_in(xdrop.fold_in(seed, t), r)``: the weights after three
  steps of a linear model are those that formula gives;
- ``data_parallel="global_batch"``: three steps on two replicas give the loss and weights of
  one device over the global batch;
- a model saved after two steps on two replicas resumes on one device as if it had never moved;
- ``tf.function`` in a replica context, retraced or relaxed to unknown batch sizes, draws each
  call's own masks, batches split unevenly over the replicas included (Keras' ``fit`` itself
  weighs an uneven last batch otherwise than one device does, so it is checked here).
"""

from __future__ import annotations

import contextlib
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"

import keras
import numpy as np
import tensorflow as tf

import xdrop
from xdrop.layers.keras import Dropout, convert

SEED, RATE = 5, 0.5

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2


def mean_output(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(y_pred, axis=-1)


def check_per_replica_streams_in_fit() -> None:
    """Linear in its kernel: each step's gradient is the mean of the dropped inputs, so the
    kernel after the steps says which masks every replica drew."""
    rows = np.random.default_rng(0).normal(size=(12, 6)).astype("float32")
    with strategy.scope():
        model = keras.Sequential(
            [keras.Input((6,)), Dropout(RATE, seed=SEED), keras.layers.Dense(1, use_bias=False)]
        )
        model.compile(keras.optimizers.SGD(1.0), loss=mean_output)
    start = model.layers[1].get_weights()[0].copy()
    model.fit(rows, np.zeros((12, 1)), batch_size=4, epochs=1, shuffle=False, verbose=0)
    expected = start.copy()
    for step in range(3):
        batch = rows[4 * step : 4 * step + 4]
        dropped = [
            xdrop.dropout(half, RATE, seed=xdrop.fold_in(xdrop.fold_in(SEED, step), replica))
            for replica, half in enumerate(np.split(batch, 2))
        ]
        expected -= np.concatenate(dropped).mean(axis=0)[:, None]
        shared = xdrop.dropout(batch, RATE, seed=xdrop.fold_in(SEED, step))
        assert not np.array_equal(np.concatenate(dropped), shared)
    np.testing.assert_allclose(model.layers[1].get_weights()[0], expected, rtol=1e-5, atol=1e-6)
    assert model.layers[0].step == 3


def small_model(data_parallel: str | None) -> keras.Model:
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            Dropout(RATE, seed=SEED, data_parallel=data_parallel),
            keras.layers.Dense(1),
        ]
    )
    model.compile(keras.optimizers.Adam(0.05), loss="mse")
    return model


def check_global_batch_is_one_device_over_the_global_batch(directory: str) -> None:
    data = np.random.default_rng(1).normal(size=(12, 6)).astype("float32")
    target = data.sum(axis=1, keepdims=True)
    alone = small_model("global_batch")
    history = alone.fit(data, target, batch_size=4, shuffle=False, verbose=0)
    with strategy.scope():
        replicated = small_model("global_batch")
    shared = replicated.fit(data, target, batch_size=4, shuffle=False, verbose=0)
    np.testing.assert_allclose(shared.history["loss"], history.history["loss"], rtol=1e-5)
    for mine, theirs in zip(replicated.get_weights(), alone.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)

    # two steps on two replicas, saved; the third on one device
    with strategy.scope():
        first = small_model("global_batch")
    first.fit(data[:8], target[:8], batch_size=4, shuffle=False, verbose=0)
    path = os.path.join(directory, "two_replicas.keras")
    first.save(path)
    resumed = keras.saving.load_model(path)
    assert resumed.layers[1].step == 2 and resumed.layers[1].data_parallel == "global_batch"
    resumed.fit(data[8:], target[8:], batch_size=4, shuffle=False, verbose=0)
    for mine, theirs in zip(resumed.get_weights(), alone.get_weights(), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-6)


def check_convert_outside_the_scope_mirrors_the_streams_as_the_model() -> None:
    """A model made under the strategy and converted outside its scope: the streams are made
    under it too, so two replicas advance a step once, and give one device's global batch."""
    data = np.random.default_rng(2).normal(size=(12, 6)).astype("float32")
    target = data.sum(axis=1, keepdims=True)

    def converted(replicated: bool) -> keras.Model:
        keras.utils.set_random_seed(1)
        with strategy.scope() if replicated else contextlib.nullcontext():
            layers = [keras.layers.Dense(16), keras.layers.Dropout(RATE), keras.layers.Dense(1)]
            model = keras.Sequential([keras.Input((6,)), *layers])
        convert(model, seed=SEED, data_parallel="global_batch")
        with strategy.scope() if replicated else contextlib.nullcontext():
            model.compile(keras.optimizers.SGD(0.01), loss="mse")
        return model

    alone, replicated = converted(False), converted(True)
    expected = alone.fit(data, target, batch_size=4, shuffle=False, verbose=0).history["loss"]
    losses = replicated.fit(data, target, batch_size=4, shuffle=False, verbose=0).history["loss"]
    np.testing.assert_allclose(losses, expected, rtol=1e-5)
    assert replicated.layers[1].step == alone.layers[1].step == 3


def check_tf_function_retraces_and_relaxes() -> None:
    """The masks follow each call's shapes: retraced for new shapes, and relaxed to unknown
    batch sizes (``reduce_retracing``), where the rows are placed by the gathered sizes."""
    for reduce_retracing in (False, True):
        with strategy.scope():  # the streams are mirrored variables, as in a model
            per_rank = Dropout(RATE, seed=SEED, data_parallel="per_rank")
            global_batch = Dropout(RATE, seed=SEED, data_parallel="global_batch")

        def replica_step(
            v: tf.Tensor, per_rank: Dropout = per_rank, global_batch: Dropout = global_batch
        ) -> tuple[tf.Tensor, tf.Tensor]:
            return per_rank(v, training=True), global_batch(v, training=True)

        @tf.function(reduce_retracing=reduce_retracing)  # as fit compiles its step
        def step(v: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            return strategy.run(replica_step, args=(v,))

        for t, shape in enumerate([(4, 3), (6, 3), (3, 3), (8, 3), (5, 3)]):
            whole = np.random.default_rng(t).normal(size=shape).astype("float32")
            dataset = tf.data.Dataset.from_tensor_slices(whole).batch(shape[0])
            batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
            ranks, globals_ = step(batch)
            halves = np.split(whole, [(shape[0] + 1) // 2])  # 3 rows: 2 and 1
            for replica, (mine, half) in enumerate(
                zip(strategy.experimental_local_results(ranks), halves, strict=True)
            ):
                seed = xdrop.fold_in(xdrop.fold_in(SEED, t), replica)
                assert np.array_equal(mine, xdrop.dropout(half, RATE, seed=seed)), (t, shape)
            together = np.concatenate(strategy.experimental_local_results(globals_))
            expected = xdrop.dropout(whole, RATE, seed=xdrop.fold_in(SEED, t))
            assert np.array_equal(together, expected), (t, shape, reduce_retracing)
        traces = step.experimental_get_tracing_count()
        assert traces == (2 if reduce_retracing else 5), traces  # relaxed after the first


def main() -> None:
    check_tf_function_retraces_and_relaxes()
    check_per_replica_streams_in_fit()
    check_global_batch_is_one_device_over_the_global_batch(sys.argv[1])
    check_convert_outside_the_scope_mirrors_the_streams_as_the_model()
    print("keras on 2 replicas: ok")


if __name__ == "__main__":
    main()
