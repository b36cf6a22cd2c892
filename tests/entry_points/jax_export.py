"""jax.export: ``save PATH`` serializes xdrop.dropout and rdrop_loss exported for a symbolic
batch; ``load PATH OUT`` deserializes them in a process that never imports xdrop and calls them
with two batch sizes, writing the results to OUT (an .npz)."""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import export


def step(x, seed, labels):
    import xdrop

    y = xdrop.dropout(x, 0.3, seed=seed, offset=2**32 - 20)
    loss = xdrop.rdrop_loss(y, xdrop.dropout(x, 0.5, seed=seed + 1), labels, alpha=0.5)
    return y, loss


def save(path: str) -> None:
    (batch,) = export.symbolic_shape("batch")
    arguments = (
        jax.ShapeDtypeStruct((batch, 8), jnp.float32),
        jax.ShapeDtypeStruct((), jnp.int32),
        jax.ShapeDtypeStruct((batch,), jnp.int32),
    )
    exported = export.export(jax.jit(step))(*arguments)
    with open(path, "wb") as file:
        file.write(exported.serialize())


def load(path: str, out: str) -> None:
    with open(path, "rb") as file:
        exported = export.deserialize(bytearray(file.read()))
    results = {}
    for batch in (3, 5):
        x = np.arange(batch * 8, dtype=np.float32).reshape(batch, 8) / 8
        labels = np.arange(batch, dtype=np.int32) % 8
        y, loss = exported.call(jnp.asarray(x), jnp.int32(7), jnp.asarray(labels))
        results[f"y_{batch}"], results[f"loss_{batch}"] = np.asarray(y), np.asarray(loss)
    assert "xdrop" not in sys.modules
    np.savez(out, **results)


if __name__ == "__main__":
    save(sys.argv[2]) if sys.argv[1] == "save" else load(sys.argv[2], sys.argv[3])
