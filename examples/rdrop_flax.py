"""R-Drop on scikit-learn's digits with Flax NNX: an MLP trained three ways.

    python examples/rdrop_flax.py [--steps N | --quick]

prints the test accuracy of: no dropout, dropout, and dropout + R-Drop. Dropout is the NNX module
``xdrop.layers.flax.Dropout``: its ``t``-th training call draws the mask of
``xdrop.fold_in(seed, t)``, with ``t`` an ``nnx.Variable`` that the ``nnx.jit`` step advances in
place, so no ``rngs`` are threaded through the model. R-Drop feeds the batch through the model
twice in one call (``xdrop.rdrop_forward``) and trains on ``CE1 + CE2 + alpha * KL_sym``
(``xdrop.rdrop_loss``). ``examples/rdrop_jax.py`` writes the same contract by hand.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import xdrop
from xdrop.layers.flax import Dropout


class MLP(nnx.Module):
    def __init__(self, p: float, seed: int) -> None:
        rngs = nnx.Rngs(params=seed)
        self.hidden = nnx.Linear(64, 256, rngs=rngs)
        self.dropout = Dropout(p, seed=seed)  # was: nnx.Dropout(p, rngs=nnx.Rngs(dropout=seed))
        self.out = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(self.dropout(nnx.relu(self.hidden(x))))


@nnx.jit(static_argnames="alpha")
def step(model, optimizer, x, y, alpha: float):
    def loss_fn(model):
        if alpha > 0:  # two passes with independent dropout masks, in one batched call
            logits1, logits2 = xdrop.rdrop_forward(model, x)
            return xdrop.rdrop_loss(logits1, logits2, y, alpha=alpha)
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    optimizer.update(model, nnx.grad(loss_fn)(model))


def train(data, p: float, alpha: float, steps: int, seed: int = 0, batch: int = 64) -> float:
    x_train, y_train, x_test, y_test = data
    model = MLP(p, seed)
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    batches = np.random.default_rng(seed)
    for _ in range(steps):
        index = batches.integers(0, len(x_train), batch)
        step(model, optimizer, x_train[index], y_train[index], alpha)
    model.eval()
    return float((model(x_test).argmax(-1) == y_test).mean())


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
