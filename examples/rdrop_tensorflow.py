"""R-Drop on scikit-learn's digits with TensorFlow and Keras: an MLP trained three ways.

    python examples/rdrop_tensorflow.py [--steps N | --quick]

prints the test accuracy of: no dropout, dropout, and dropout + R-Drop. Dropout is the Keras
layer ``xdrop.layers.keras.Dropout``: its ``t``-th training call draws the mask of
``xdrop.fold_in(seed, t)`` with ``t`` a variable of the layer, so the training step compiles once
with ``tf.function`` and still draws a new mask each step. R-Drop feeds each batch through the
model twice in one call (``xdrop.rdrop_forward``) and trains on ``CE1 + CE2 + alpha * KL_sym``
(``xdrop.rdrop_loss``).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # before Keras is imported

import keras
import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import xdrop
from xdrop.layers.keras import Dropout


def train(data, p: float, alpha: float, steps: int, seed: int = 0) -> float:
    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu"),
        Dropout(p, seed=seed),  # was: keras.layers.Dropout(p, seed=seed)
        keras.layers.Dense(10),
    ])  # fmt: skip
    optimizer = keras.optimizers.Adam(learning_rate=1e-3)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            if alpha > 0:  # two passes with independent dropout masks, in one batched call
                logits1, logits2 = xdrop.rdrop_forward(lambda v: model(v, training=True), x)
                loss = xdrop.rdrop_loss(logits1, logits2, y, alpha=alpha)
            else:
                logits = model(x, training=True)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))

    batches = np.random.default_rng(seed)
    for _ in range(steps):
        index = batches.integers(0, len(x_train), 64)
        step(tf.gather(x_train, index), tf.gather(y_train, index))
    predictions = tf.argmax(model(x_test), axis=-1)
    return float(tf.reduce_mean(tf.cast(predictions == y_test, tf.float32)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps per model")
    parser.add_argument("--quick", action="store_true", help="a few steps only (a smoke test)")
    arguments = parser.parse_args()
    steps = 5 if arguments.quick else arguments.steps
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.5, random_state=0, stratify=digits.target
    )
    data = (tf.constant(x_train, tf.float32), tf.constant(y_train, tf.int64),
            tf.constant(x_test, tf.float32), tf.constant(y_test, tf.int64))  # fmt: skip
    for name, p, alpha in (("no dropout", 0.0, 0.0), ("dropout", 0.5, 0.0),
                           ("dropout + R-Drop", 0.5, 1.0)):  # fmt: skip
        print(f"{name:<18} test accuracy {train(data, p, alpha, steps):.4f}")


if __name__ == "__main__":
    main()
