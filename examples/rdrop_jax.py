"""R-Drop on scikit-learn's digits with JAX: an MLP trained three ways.

    python examples/rdrop_jax.py [--steps N | --quick]

prints the test accuracy of: no dropout, dropout, and dropout + R-Drop. R-Drop feeds the batch
through the model twice in one call (``xdrop.rdrop_forward``: one mask for the doubled batch, so
two independent masks per sample) and trains on ``CE1 + CE2 + alpha * KL_sym``
(``xdrop.rdrop_loss``), all inside ``jax.jit``. Each step's dropout seed is
``xdrop.fold_in(key, step)``, computed in the compiled step from the traced key and step number.
"""

from __future__ import annotations

import argparse
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import xdrop


def init(key: jax.Array) -> dict[str, jax.Array]:
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (64, 256)) / 8.0,
        "b1": jnp.zeros(256),
        "w2": jax.random.normal(k2, (256, 10)) / 16.0,
        "b2": jnp.zeros(10),
    }


def forward(params, x, p: float, seed=None):
    h = jax.nn.relu(x @ params["w1"] + params["b1"])
    h = xdrop.dropout(h, p, training=seed is not None, seed=seed)  # no seed: evaluation
    return h @ params["w2"] + params["b2"]


def loss_fn(params, x, y, seed, p: float, alpha: float):
    if alpha > 0:  # two passes with independent dropout masks, in one batched call
        logits1, logits2 = xdrop.rdrop_forward(lambda v: forward(params, v, p, seed), x)
        return xdrop.rdrop_loss(logits1, logits2, y, alpha=alpha)
    log_p = jax.nn.log_softmax(forward(params, x, p, seed))
    return -jnp.take_along_axis(log_p, y[:, None], axis=1).mean()


@partial(jax.jit, static_argnames=("p", "alpha"))
def step(params, velocity, x, y, key, i, p: float, alpha: float):
    grads = jax.grad(loss_fn)(params, x, y, xdrop.fold_in(key, i), p, alpha)
    velocity = jax.tree.map(lambda v, g: 0.9 * v + g, velocity, grads)  # SGD with momentum
    return jax.tree.map(lambda w, v: w - 0.02 * v, params, velocity), velocity


def train(data, p: float, alpha: float, steps: int, seed: int = 0, batch: int = 64) -> float:
    x_train, y_train, x_test, y_test = data
    key = jax.random.key(seed)
    params = init(key)
    velocity = jax.tree.map(jnp.zeros_like, params)
    batches = np.random.default_rng(seed)
    for i in range(steps):
        index = batches.integers(0, len(x_train), batch)
        params, velocity = step(params, velocity, x_train[index], y_train[index], key, i, p, alpha)
    predictions = forward(params, x_test, p).argmax(-1)
    return float((predictions == y_test).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps per model")
    parser.add_argument("--quick", action="store_true", help="a few steps only (a smoke test)")
    arguments = parser.parse_args()
    steps = 5 if arguments.quick else arguments.steps
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.data / 16.0, digits.target, test_size=0.5, random_state=0, stratify=digits.target
    )
    data = (jnp.asarray(x_train, jnp.float32), jnp.asarray(y_train),
            jnp.asarray(x_test, jnp.float32), jnp.asarray(y_test))  # fmt: skip
    for name, p, alpha in (("no dropout", 0.0, 0.0), ("dropout", 0.5, 0.0),
                           ("dropout + R-Drop", 0.5, 1.0)):  # fmt: skip
        print(f"{name:<18} test accuracy {train(data, p, alpha, steps):.4f}")


if __name__ == "__main__":
    main()
