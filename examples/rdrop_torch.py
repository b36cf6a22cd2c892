"""R-Drop on scikit-learn's digits with PyTorch: an MLP trained three ways.

    python examples/rdrop_torch.py [--steps N | --quick]

prints the test accuracy of: no dropout, dropout, and dropout + R-Drop. Dropout is the layer
``xdrop.layers.torch.Dropout``: its ``t``-th training call draws the mask of
``xdrop.fold_in(seed, t)``, and its seed and step are buffers in ``state_dict()``, so a run is
reproducible and a checkpoint resumes the mask stream. R-Drop feeds
each batch through the model twice in one call (``xdrop.rdrop_forward``) and trains on
``CE1 + CE2 + alpha * KL_sym`` (``xdrop.rdrop_loss``).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import xdrop
from xdrop.layers.torch import Dropout


class MLP(torch.nn.Module):
    def __init__(self, p: float, seed: int) -> None:
        super().__init__()
        self.hidden = torch.nn.Linear(64, 256)
        self.dropout = Dropout(p, seed=seed)  # was: torch.nn.Dropout(p)
        self.out = torch.nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(torch.relu(self.hidden(x))))


def train(data, p: float, alpha: float, steps: int, seed: int = 0) -> float:
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    model = MLP(p, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = np.random.default_rng(seed)
    for _ in range(steps):
        index = torch.from_numpy(batches.integers(0, len(x_train), 64))
        x, y = x_train[index], y_train[index]
        if alpha > 0:  # two passes with independent dropout masks, in one batched call
            logits1, logits2 = xdrop.rdrop_forward(model, x)
            loss = xdrop.rdrop_loss(logits1, logits2, y, alpha=alpha)
        else:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(x_test).argmax(-1) == y_test).float().mean().item()


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
    data = [torch.tensor(a, dtype=torch.float32) for a in (x_train,)] + [torch.tensor(y_train)]
    data += [torch.tensor(x_test, dtype=torch.float32), torch.tensor(y_test)]
    for name, p, alpha in (("no dropout", 0.0, 0.0), ("dropout", 0.5, 0.0),
                           ("dropout + R-Drop", 0.5, 1.0)):  # fmt: skip
        print(f"{name:<18} test accuracy {train(data, p, alpha, steps):.4f}")


if __name__ == "__main__":
    main()
