"""Run by tests/test_distributed_layers.py: ``python flax_processes.py RANK PORT DIRECTORY``, in
two processes joined by ``jax.distributed`` on 127.0.0.1 (gloo CPU collectives), then with
``RANK`` -1 in one process alone.

A Flax NNX model whose dropout :func:`xdrop.layers.flax.convert` made xdrop's, trained under
``nnx.jit`` on process-local batches:

- by default (and with ``"per_rank"``) process ``r`` draws at step ``t`` the mask of
  ``xdrop.fold_in(xdrop.fold_in(seed, t), r)`` (a layer given Flax's ``rngs``: its key folded
  with ``r``);
- with ``"global_batch"`` the two processes' masks, put together, are one process's over the
  global batch, and three steps of SGD (gradients averaged over the processes) give one
  process's weights over the global batch (the run alone checks them); the state written after
  two steps on two processes resumes in one;
- the same jitted step called on a global array (sharded over both processes) instead draws the
  global array's mask with no fold-in: the sharding is part of what the step is traced for.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
RANK, PORT, DIRECTORY = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
PROCESSES = 1 if RANK < 0 else 2  # rank -1: the one-process run, after the two
if PROCESSES == 2:
    jax.distributed.initialize(f"127.0.0.1:{PORT}", num_processes=2, process_id=RANK)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import xdrop  # noqa: E402
from xdrop.layers import flax as xflax  # noqa: E402
from xdrop.layers.common import site_seed  # noqa: E402

SEED, RATE, BATCH = 3, 0.5, 4
SITE = site_seed(SEED, "dropout")


class Model(nnx.Module):
    def __init__(self) -> None:
        self.linear = nnx.Linear(6, 8, rngs=nnx.Rngs(0))
        self.dropout = nnx.Dropout(RATE, rngs=nnx.Rngs(1))
        self.out = nnx.Linear(8, 1, rngs=nnx.Rngs(2))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(self.dropout(nnx.relu(self.linear(x))))


def model(data_parallel: str | None) -> Model:
    return xflax.convert(Model(), seed=SEED, data_parallel=data_parallel)  # type: ignore[return-value]


@nnx.jit
def masks(layer: xflax.Dropout, x: jax.Array) -> jax.Array:
    return layer(x)


def gathered(x: np.ndarray) -> np.ndarray:
    # (2, *x.shape), by process; tiled on a new axis, whatever the rank of x
    return np.asarray(multihost_utils.process_allgather(x[None], tiled=True))


def check_masks(data: np.ndarray) -> None:
    ones = jnp.ones((BATCH, 5))
    for data_parallel in (None, "per_rank"):
        layer = xflax.Dropout(RATE, seed=SEED, data_parallel=data_parallel)
        for t in range(2):
            mine = np.asarray(masks(layer, ones))
            seed = xdrop.fold_in(xdrop.fold_in(SEED, t), RANK)
            assert np.array_equal(mine, xdrop.dropout(np.ones((BATCH, 5)), RATE, seed=seed))
            both = gathered(mine)
            assert not np.array_equal(both[0], both[1]), data_parallel
    flax_style = xflax.Dropout(RATE, rngs=nnx.Rngs(dropout=0))  # Flax's key, folded too
    key = xdrop.fold_in(nnx.Rngs(dropout=0).fork().dropout(), RANK)
    expected = np.asarray(xdrop.dropout(ones, RATE, seed=key))
    assert np.array_equal(np.asarray(masks(flax_style, ones)), expected)
    layer = xflax.Dropout(RATE, seed=SEED, data_parallel="global_batch")
    for t, batch in enumerate((BATCH, 3)):  # a new shape is a new trace
        mine = np.asarray(masks(layer, jnp.ones((batch, 5))))
        whole = xdrop.dropout(np.ones((2 * batch, 5)), RATE, seed=xdrop.fold_in(SEED, t))
        assert np.array_equal(np.concatenate(gathered(mine)), whole), t
    # a global array (rows split over the processes): the global mask, whatever the mode
    mesh = jax.make_mesh((2,), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    for data_parallel in (None, "per_rank", "global_batch"):
        layer = xflax.Dropout(RATE, seed=SEED, data_parallel=data_parallel)
        local = masks(layer, jnp.ones((BATCH, 5)))  # traced for a process-local array first
        glob = jax.make_array_from_process_local_data(sharding, np.ones((BATCH, 5), "float32"))
        y = masks(layer, glob)
        mine = np.asarray(y.addressable_shards[0].data)
        whole = xdrop.dropout(np.ones((2 * BATCH, 5)), RATE, seed=xdrop.fold_in(SEED, 1))
        assert np.array_equal(mine, whole[RANK * BATCH : (RANK + 1) * BATCH]), data_parallel
        assert local.shape == (BATCH, 5)
    del data


def loss(network: Model, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.sum((network(x) - y) ** 2)


@nnx.jit
def gradients(network: Model, x: jax.Array, y: jax.Array) -> nnx.State:
    return nnx.grad(loss)(network, x, y)


def sgd(network: Model, grads: nnx.State, rows: int) -> None:
    params = nnx.state(network, nnx.Param)
    nnx.update(network, jax.tree.map(lambda p, g: p - 0.01 * g / rows, params, grads))


def train(network: Model, x: np.ndarray, y: np.ndarray, steps: range, processes: int) -> None:
    """SGD on the mean squared error over the global batch: each process's gradient of its sum,
    summed over the processes (a cross-process all-reduce on the host)."""
    for step in steps:
        rows = slice(step * 2 * BATCH, (step + 1) * 2 * BATCH)  # the global batch
        if processes == 1:
            grads = gradients(network, jnp.asarray(x[rows]), jnp.asarray(y[rows]))
        else:
            mine = slice(rows.start + RANK * BATCH, rows.start + (RANK + 1) * BATCH)
            local = gradients(network, jnp.asarray(x[mine]), jnp.asarray(y[mine]))
            grads = jax.tree.map(lambda g: jnp.asarray(gathered(np.asarray(g)).sum(0)), local)
        sgd(network, grads, 2 * BATCH)


def check_training_on_two(data: np.ndarray) -> None:
    """Three steps on two processes; the state after two, and the weights after three, are
    written for the one-process run to compare."""
    target = data.sum(axis=1, keepdims=True)
    both = model("global_batch")
    train(both, data, target, range(2), processes=2)
    state = pickle.dumps(jax.tree.map(np.asarray, nnx.state(both)))
    (DIRECTORY / f"state-{RANK}.pkl").write_bytes(state)
    train(both, data, target, range(2, 3), processes=2)
    weights = pickle.dumps(jax.tree.map(np.asarray, nnx.state(both, nnx.Param)))
    (DIRECTORY / f"weights-{RANK}.pkl").write_bytes(weights)


def check_one_process(data: np.ndarray) -> None:
    """One process over the global batch: three steps give the two processes' weights, and the
    state they wrote after two steps resumes here for the third."""
    target = data.sum(axis=1, keepdims=True)
    alone = model("global_batch")
    train(alone, data, target, range(3), processes=1)
    expected = jax.tree.leaves(nnx.state(alone, nnx.Param))
    resumed = model(None)
    nnx.update(resumed, pickle.loads((DIRECTORY / "state-1.pkl").read_bytes()))
    assert resumed.dropout.step_value == 2
    train(resumed, data, target, range(2, 3), processes=1)
    written = [pickle.loads((DIRECTORY / f"weights-{r}.pkl").read_bytes()) for r in range(2)]
    for weights in [*written, nnx.state(resumed, nnx.Param)]:
        for mine, theirs in zip(jax.tree.leaves(weights), expected, strict=True):
            np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=1e-5, atol=1e-6)


def main() -> None:
    data = np.random.default_rng(0).normal(size=(6 * BATCH, 6)).astype("float32")
    if PROCESSES == 1:
        check_one_process(data)
        print("one process: ok")
        return
    check_masks(data)
    check_training_on_two(data)
    print(f"process {RANK} of 2: ok")


if __name__ == "__main__":
    main()
