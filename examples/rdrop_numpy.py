"""R-Drop on scikit-learn's digits in NumPy, backward pass written out: an MLP trained three ways.

    python examples/rdrop_numpy.py [--steps N | --quick]

prints the test accuracy of: no dropout, dropout, and dropout + R-Drop. NumPy has no autograd:
``xdrop.rdrop_loss`` gives the value, and :func:`loss_and_gradients` the gradients by hand. The
dropout layer is ``xdrop.dropout(h, p, seed=..., return_mask=True)``: its mask is what the
backward pass needs. R-Drop runs the doubled batch once (``xdrop.rdrop_forward``), so the two
copies of a sample get independent masks, and trains on, per sample,

    L = CE(P1, y) + CE(P2, y) + alpha * (KL(P1||P2) + KL(P2||P1)) / 2

whose gradient with respect to the first pass's logits z1 is

    dL/dz1 = P1 - onehot(y) + alpha/2 * (P1 * (log P1 - log P2 - KL(P1||P2)) + P1 - P2)

(and symmetrically for z2), averaged over the batch.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import xdrop


def init(rng: np.random.Generator, hidden: int = 256) -> dict[str, np.ndarray]:
    return {
        "w1": rng.normal(0, 1 / 8, (64, hidden)),
        "b1": np.zeros(hidden),
        "w2": rng.normal(0, 1 / 16, (hidden, 10)),
        "b2": np.zeros(10),
    }


def log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def loss_and_gradients(params, x, y, p: float, alpha: float, seed: int | None):
    """The training loss of one batch and its gradients with respect to ``params``.

    ``alpha > 0``: R-Drop over two passes; else the cross entropy of one pass. ``seed=None``
    turns dropout off."""
    cache = {}

    def forward(v):
        cache["x"], cache["pre"] = v, v @ params["w1"] + params["b1"]
        hidden = np.maximum(cache["pre"], 0)
        cache["dropped"], cache["keep"] = xdrop.dropout(
            hidden, p, training=seed is not None, seed=seed, return_mask=True
        )
        return cache["dropped"] @ params["w2"] + params["b2"]

    n = len(y)
    if alpha > 0:
        z1, z2 = xdrop.rdrop_forward(forward, x)
        loss = float(xdrop.rdrop_loss(z1, z2, y, alpha=alpha))
        log_p1, log_p2 = log_softmax(z1), log_softmax(z2)
        p1, p2 = np.exp(log_p1), np.exp(log_p2)
        kl12 = (p1 * (log_p1 - log_p2)).sum(axis=1, keepdims=True)
        kl21 = (p2 * (log_p2 - log_p1)).sum(axis=1, keepdims=True)
        onehot = np.eye(z1.shape[1])[y]
        grad1 = p1 - onehot + alpha / 2 * (p1 * (log_p1 - log_p2 - kl12) + p1 - p2)
        grad2 = p2 - onehot + alpha / 2 * (p2 * (log_p2 - log_p1 - kl21) + p2 - p1)
        grad_logits = np.concatenate([grad1, grad2]) / n  # the doubled batch, as forward saw it
    else:
        log_p = log_softmax(forward(x))
        loss = float(-log_p[np.arange(n), y].mean())
        grad_logits = (np.exp(log_p) - np.eye(log_p.shape[1])[y]) / n
    grad_dropped = grad_logits @ params["w2"].T
    scale = 1 / (1 - p) if seed is not None and p < 1 else 1.0  # inverted dropout's scale
    grad_pre = np.where(cache["keep"] & (cache["pre"] > 0), grad_dropped * scale, 0.0)
    gradients = {
        "w2": cache["dropped"].T @ grad_logits,
        "b2": grad_logits.sum(axis=0),
        "w1": cache["x"].T @ grad_pre,
        "b1": grad_pre.sum(axis=0),
    }
    return loss, gradients


def train(data, p: float, alpha: float, steps: int, seed: int = 0) -> float:
    x_train, y_train, x_test, y_test = data
    rng = np.random.default_rng(seed)
    params = init(rng)
    velocity = {name: np.zeros_like(value) for name, value in params.items()}
    masks = xdrop.Generator(seed)
    for _ in range(steps):
        index = rng.integers(0, len(x_train), 64)
        _, gradients = loss_and_gradients(
            params, x_train[index], y_train[index], p, alpha, masks.next_seed()
        )
        for name in params:  # SGD with momentum
            velocity[name] = 0.9 * velocity[name] + gradients[name]
            params[name] -= 0.02 * velocity[name]
    hidden = np.maximum(x_test @ params["w1"] + params["b1"], 0)  # evaluation: no dropout
    predictions = (hidden @ params["w2"] + params["b2"]).argmax(axis=1)
    return float((predictions == y_test).mean())


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
    data = (x_train, y_train, x_test, y_test)
    with xdrop.use_backend("numpy"):
        for name, p, alpha in (("no dropout", 0.0, 0.0), ("dropout", 0.5, 0.0),
                               ("dropout + R-Drop", 0.5, 1.0)):  # fmt: skip
            print(f"{name:<18} test accuracy {train(data, p, alpha, steps):.4f}")


if __name__ == "__main__":
    main()
