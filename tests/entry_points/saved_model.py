"""tf.saved_model: ``save PATH`` writes a module whose tf.function takes a batch of unknown size
and calls xdrop.dropout; ``load PATH OUT`` runs it in a process that never imports xdrop, on two
batch sizes, and writes the results to OUT (an .npz)."""

from __future__ import annotations

import sys

import numpy as np
import tensorflow as tf


def save(path: str) -> None:
    import xdrop

    class Serving(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
        def __call__(self, x):
            y = xdrop.dropout(x, 0.3, seed=7, offset=2**32 - 20)
            channels = xdrop.dropout(x, 0.5, seed=8, noise_shape=(None, 1))
            return {"y": y, "channels": channels}

    tf.saved_model.save(Serving(), path)


def load(path: str, out: str) -> None:
    serving = tf.saved_model.load(path)
    results = {}
    for batch in (3, 5):
        x = np.arange(batch * 8, dtype=np.float32).reshape(batch, 8) + 1
        for name, value in serving(tf.constant(x)).items():
            results[f"{name}_{batch}"] = value.numpy()
    assert "xdrop" not in sys.modules
    np.savez(out, **results)


if __name__ == "__main__":
    save(sys.argv[2]) if sys.argv[1] == "save" else load(sys.argv[2], sys.argv[3])
