"""Run by tests/test_distributed_tensorflow.py: ``python tf_replicas.py``.

Two logical CPU devices under ``tf.distribute.MirroredStrategy``. Inside ``strategy.run`` every
replica draws the same mask for the same seed and offset (the call has no notion of replicas);
``xdrop.fold_in(seed, replica_id)`` gives each replica its own stream, and an offset of
``replica_id * batch`` gives each replica its slice of one global batch's mask.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import xdrop

SEED, RATE, BATCH = 11, 0.4, 6

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert strategy.num_replicas_in_sync == 2


def replica_values(result: object) -> list[np.ndarray]:
    return [np.asarray(value) for value in strategy.experimental_local_results(result)]


def main() -> None:
    x = tf.random.stateless_normal((BATCH, 5), seed=(1, 2))
    whole = np.asarray(xdrop.dropout(x, RATE, seed=SEED))

    @tf.function
    def same(v: tf.Tensor) -> tf.Tensor:
        return xdrop.dropout(v, RATE, seed=SEED)

    @tf.function
    def per_replica(v: tf.Tensor) -> tf.Tensor:
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return xdrop.dropout(v, RATE, seed=xdrop.fold_in(SEED, replica))

    def eager_same(v: tf.Tensor) -> tf.Tensor:
        return xdrop.dropout(v, RATE, seed=SEED)

    for step in (same, eager_same):  # in a graph, and eagerly on each replica
        values = replica_values(strategy.run(step, args=(x,)))
        assert all(np.array_equal(value, whole) for value in values), step

    values = replica_values(strategy.run(per_replica, args=(x,)))
    for replica, value in enumerate(values):
        expected = np.asarray(xdrop.dropout(x, RATE, seed=xdrop.fold_in(SEED, replica)))
        assert np.array_equal(value, expected), replica
    assert not np.array_equal(values[0], values[1])

    # one global batch split over the replicas: each draws its rows' counters
    global_batch = tf.random.stateless_normal((2 * BATCH, 5), seed=(3, 4))
    expected = np.asarray(xdrop.dropout(global_batch, RATE, seed=SEED))
    dataset = tf.data.Dataset.from_tensors(global_batch).unbatch().batch(2 * BATCH)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function
    def sliced(v: tf.Tensor) -> tf.Tensor:
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        block = xdrop.Block((2 * BATCH, 5), (replica * BATCH, 0))
        return xdrop.dropout(v, RATE, seed=SEED, offset=block)

    values = replica_values(strategy.run(sliced, args=(batch,)))
    assert np.array_equal(np.concatenate(values), expected)
    print("2 replicas: ok")


if __name__ == "__main__":
    main()
