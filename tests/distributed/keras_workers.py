"""Run by tests/test_distributed_layers.py: ``python keras_workers.py RANK PORT0 PORT1`` in two
processes, the workers of a ``tf.distribute.MultiWorkerMirroredStrategy`` on 127.0.0.1
(``TF_CONFIG``), one replica each, Keras on TensorFlow.

In a compiled step (``strategy.run`` inside ``tf.function``, as ``fit`` runs it) over a
distributed dataset, a layer with no ``data_parallel`` draws on worker ``r`` at step ``t`` the
mask of ``xdrop.fold_in(xdrop.fold_in(seed, t), r)``, and one with ``"global_batch"`` draws
worker ``r``'s rows of one device's mask over the global batch (each worker's rows placed
after the others' gathered sizes).
"""

from __future__ import annotations

import json
import os
import sys

RANK = int(sys.argv[1])
WORKERS = [f"127.0.0.1:{port}" for port in sys.argv[2:4]]
os.environ["TF_CONFIG"] = json.dumps(
    {"cluster": {"worker": WORKERS}, "task": {"type": "worker", "index": RANK}}
)
os.environ["KERAS_BACKEND"] = "tensorflow"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import xdrop  # noqa: E402
from xdrop.layers.keras import Dropout  # noqa: E402

SEED, RATE, ROWS = 5, 0.5, 8


def main() -> None:
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        default = Dropout(RATE, seed=SEED)
        global_batch = Dropout(RATE, seed=SEED, data_parallel="global_batch")

    def replica_step(v: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return v, default(v, training=True), global_batch(v, training=True)

    @tf.function
    def step(v: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        return strategy.run(replica_step, args=(v,))

    whole = np.random.default_rng(0).normal(size=(2 * ROWS, 3)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices(whole).batch(ROWS)
    for t, batch in enumerate(strategy.experimental_distribute_dataset(dataset)):
        mine, ranked, placed = (
            np.asarray(strategy.experimental_local_results(value)[0]) for value in step(batch)
        )
        rows = np.flatnonzero((whole == mine[:, None]).all(axis=2).any(axis=0))
        seed = xdrop.fold_in(xdrop.fold_in(SEED, t), RANK)
        assert np.array_equal(ranked, xdrop.dropout(mine, RATE, seed=seed)), t
        expected = xdrop.dropout(
            whole[t * ROWS : (t + 1) * ROWS], RATE, seed=xdrop.fold_in(SEED, t)
        )
        half = ROWS // 2
        assert np.array_equal(rows, t * ROWS + np.arange(RANK * half, (RANK + 1) * half)), rows
        assert np.array_equal(placed, expected[RANK * half : (RANK + 1) * half]), t
    print(f"worker {RANK} of 2: ok")


if __name__ == "__main__":
    main()
