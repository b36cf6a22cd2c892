"""A Keras model holding every Keras regularization layer, each swapped for xdrop's: trained with
``fit``, saved to ``.keras``, loaded in a fresh process, trained on (``tests/layers/keras_checks.py``
compares the two runs bit for bit).

    KERAS_BACKEND=jax python tests/layers/keras_every_layer.py resume DIRECTORY

loads ``DIRECTORY/model.keras``, trains one more epoch and writes ``DIRECTORY/resumed.npz``;
``load-only`` loads it without importing ``xdrop.layers.keras`` and writes the error to
``DIRECTORY/error.txt``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np


def model(seed: int = 0) -> Any:
    import keras

    from xdrop.layers import keras as layers

    inputs = keras.Input((4, 4, 4, 3))
    x = keras.layers.Dense(3)(inputs)
    x = layers.SpatialDropout3D(0.3, data_format="channels_last", seed=seed)(x)
    x = keras.layers.Reshape((16, 4, 3))(x)
    x = layers.SpatialDropout2D(0.3, data_format="channels_last", seed=seed + 1)(x)
    x = keras.layers.Reshape((64, 3))(x)
    x = layers.SpatialDropout1D(0.3, seed=seed + 2)(x)
    x = keras.layers.Dense(4, activation="selu")(keras.layers.Flatten()(x))
    x = layers.Dropout(0.3, seed=seed + 3)(x)
    x = layers.AlphaDropout(0.2, seed=seed + 4)(x)
    x = layers.GaussianDropout(0.2, seed=seed + 5)(x)
    x = layers.GaussianNoise(0.1, seed=seed + 6)(x)
    built = keras.Model(inputs, keras.layers.Dense(3)(x))
    built.compile(keras.optimizers.SGD(0.05), keras.losses.MeanSquaredError())
    return built


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(48, 4, 4, 4, 3)).astype("float32"),
        rng.normal(size=(48, 3)).astype("float32"),
    )


def train(built: Any) -> dict[str, np.ndarray]:
    """One more epoch, then what the two runs compare: every weight, every layer's stream state
    and one more training call's output."""
    x, y = data()
    built.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    import keras

    outcome = {f"variable {i}": keras.ops.convert_to_numpy(v.value)
               for i, v in enumerate(built.variables)}  # fmt: skip
    outcome["output"] = keras.ops.convert_to_numpy(built(x[:4], training=True))
    return outcome


if __name__ == "__main__":
    action, directory = sys.argv[1], Path(sys.argv[2])
    import keras

    if action == "load-only":
        try:
            keras.saving.load_model(directory / "model.keras")
        except Exception as error:  # the error Keras raises, as the user sees it
            (directory / "error.txt").write_text(f"{type(error).__name__}: {error}")
        else:
            (directory / "error.txt").write_text("loaded")
    else:
        import xdrop.layers.keras  # noqa: F401  (registers xdrop's layers with Keras' loader)

        np.savez(
            directory / "resumed.npz", **train(keras.saving.load_model(directory / "model.keras"))
        )
