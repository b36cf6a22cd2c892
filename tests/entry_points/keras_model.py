"""Keras 3 on the backend named by KERAS_BACKEND: a custom layer calling xdrop.dropout, in a
Sequential and a functional model that build, fit two epochs whose last batch is smaller, and
give their training-mode outputs on a fixed input. Writes them to the .npz file named by argv[1]."""

from __future__ import annotations

import sys

import keras
import numpy as np

import xdrop


class XDropout(keras.layers.Layer):
    """What a user writes: xdrop.dropout in call, with Keras' training flag."""

    def __init__(self, rate: float, seed: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.rate, self.seed = rate, seed

    def call(self, x, training=None):
        return xdrop.dropout(x, self.rate, training=bool(training), seed=self.seed)


def layers() -> list[keras.layers.Layer]:
    constant = keras.initializers.Constant(0.125)  # sums of multiples of 1/8: exact everywhere
    return [
        keras.layers.Dense(16, kernel_initializer=constant, bias_initializer="zeros"),
        XDropout(0.5, seed=3),
        keras.layers.Dense(2, kernel_initializer=constant, bias_initializer="zeros"),
    ]


def main(path: str) -> None:
    inputs = np.arange(40, dtype=np.float32).reshape(5, 8) / 8
    sequential = keras.Sequential([keras.Input((8,)), *layers()])
    entry = keras.Input((8,))
    hidden = entry
    for layer in layers():
        hidden = layer(hidden)
    functional = keras.Model(entry, hidden)
    outputs = {}
    for name, model in (("sequential", sequential), ("functional", functional)):
        outputs[name] = keras.ops.convert_to_numpy(model(inputs, training=True))
        model.compile(optimizer="sgd", loss="mse")
        data = np.linspace(-1, 1, 10 * 8, dtype=np.float32).reshape(10, 8)
        history = model.fit(data, np.zeros((10, 2), np.float32), batch_size=4, epochs=2, verbose=0)
        outputs[f"{name}_losses"] = np.array(history.history["loss"])
        outputs[f"{name}_eval"] = keras.ops.convert_to_numpy(model.predict(inputs, verbose=0))
    np.savez(path, **outputs)


if __name__ == "__main__":
    main(sys.argv[1])
