"""Make the figures of docs/family.md and docs/mc-dropout.md (PNG files in docs/images/).

    python docs/figures/make_figures.py            # the committed figures (a few minutes on a CPU)
    python docs/figures/make_figures.py --quick    # fewer epochs, samples and rates (CI: ~1 min)
    python docs/figures/make_figures.py --only mc-vs-weight-scaling   # one figure

The Monte Carlo figure also writes what docs/mc-dropout.md quotes of it (the number of samples at
which the average reaches weight scaling) to docs/figures/mc-vs-weight-scaling.json, which
tests/test_docs.py holds the page to.

Needs matplotlib, scikit-learn and PyTorch; the first figure also draws with TensorFlow and JAX
where they are installed. Every number comes from seeded streams, so a rerun redraws the same
figures (up to the frameworks' own floating-point reductions in training).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import site_figures  # beside this script
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import xdrop
from xdrop.layers.torch import Dropout, set_mc_sampling

# this script imports TensorFlow beside torch, whose training loop may load Triton (CUDA builds)
xdrop.registry.load_triton_before_tensorflow()

OUT = Path(__file__).resolve().parents[1] / "images"
RECORD = Path(__file__).resolve().parent / "mc-vs-weight-scaling.json"


# -- data and a small network ----------------------------------------------------------------------
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    images, labels = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        images / 16.0, labels, test_size=0.5, random_state=0, stratify=labels
    )
    tensor = lambda a, kind: torch.tensor(a, dtype=kind)  # noqa: E731
    return (
        tensor(x_train, torch.float32),
        tensor(y_train, torch.long),
        tensor(x_test, torch.float32),
        tensor(y_test, torch.long),
    )


def network(p: float, seed: int, width: int = 256) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(64, width),
        torch.nn.ReLU(),
        Dropout(p, seed=xdrop.fold_in(seed, 1)),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        Dropout(p, seed=xdrop.fold_in(seed, 2)),
        torch.nn.Linear(width, 10),
    )


def train(
    model: torch.nn.Module,
    data: tuple[torch.Tensor, ...],
    epochs: int,
    alpha: float | None = None,
) -> list[float]:
    """Adam on mini-batches of 64; with ``alpha`` the R-Drop loss. Returns the test error after
    each epoch."""
    x_train, y_train, x_test, y_test = data
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = np.random.default_rng(0)
    errors = []
    for _ in range(epochs):
        model.train()
        for batch in np.array_split(order.permutation(len(x_train)), len(x_train) // 64):
            x, y = x_train[batch], y_train[batch]
            if alpha is None:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            else:
                first, second = xdrop.rdrop_forward(model, x)
                loss = 0.5 * xdrop.rdrop_loss(first, second, y, alpha=alpha)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        errors.append(test_error(model, x_test, y_test))
    return errors


def test_error(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) != y).float().mean())


def mc_probabilities(model: torch.nn.Module, x: torch.Tensor, samples: int) -> torch.Tensor:
    """``samples`` stochastic predictions (the layers keep drawing from their streams)."""
    model.eval()
    set_mc_sampling(model)
    with torch.no_grad():
        stacked = torch.stack([model(x).softmax(1) for _ in range(samples)])
    set_mc_sampling(model, False)
    return stacked


# -- figures ---------------------------------------------------------------------------------------
def masks_across_backends(out: Path) -> None:
    """One seed's mask on every installed framework, side by side."""
    frameworks: dict[str, object] = {"NumPy": np.zeros((32, 32), np.float32)}
    frameworks["PyTorch"] = torch.zeros(32, 32)
    if importlib.util.find_spec("tensorflow"):
        import tensorflow as tf

        frameworks["TensorFlow"] = tf.zeros((32, 32))
    if importlib.util.find_spec("jax"):
        import jax.numpy as jnp

        frameworks["JAX"] = jnp.zeros((32, 32))
    masks = {
        name: _host(xdrop.dropout_mask((32, 32), 0.5, seed=2024, like=like))
        for name, like in frameworks.items()
    }
    same = all(np.array_equal(mask, masks["NumPy"]) for mask in masks.values())
    figure, axes = plt.subplots(1, len(masks), figsize=(2.6 * len(masks), 2.9))
    for axis, (name, mask) in zip(axes, masks.items(), strict=True):
        axis.imshow(mask, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        axis.set_title(name)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle(f"dropout_mask((32, 32), p=0.5, seed=2024): identical = {same}")
    save(figure, out / "masks-across-backends.png")
    assert same, "the frameworks drew different masks"


def save(figure: Any, path: Path) -> None:
    """Lay the figure out, write it to ``path`` and free it."""
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def save_chart(axis: Any, path: Path, *, x: str, y: str, title: str) -> None:
    """Label the one chart of a figure (its axes ``x`` and ``y``, its title), give it a legend,
    and save the figure to ``path``."""
    axis.set_xlabel(x)
    axis.set_ylabel(y)
    axis.set_title(title, fontsize=10)
    axis.legend()
    save(axis.figure, path)


def _host(a: object) -> np.ndarray:
    if hasattr(a, "numpy") and not isinstance(a, np.ndarray):
        return np.asarray(a.numpy())  # type: ignore[union-attr]
    return np.asarray(a)


def family_masks(out: Path) -> None:
    """What each member of the family drops, for one seed."""
    ones = np.ones((1, 4, 24, 24), np.float32)
    panels = {
        "dropout\n(element)": xdrop.dropout(ones, 0.3, seed=1)[0, 0],
        "spatial dropout\n(4 channels side by side)": np.concatenate(
            list(xdrop.dropout(ones, 0.5, seed=1, noise_shape=(1, 4, 1, 1))[0]), axis=1
        ),
        "DropPath\n(16 samples x 24 features)": xdrop.drop_path(
            np.ones((16, 24), np.float32), 0.3, seed=1
        ),
        "DropBlock, block 5\n(H x W = 24 x 24)": xdrop.drop_block(ones, 0.2, 5, seed=1)[0, 0],
        "DropBlock, block 6\n(H x W = 16 x 40)": xdrop.drop_block(
            np.ones((1, 1, 16, 40), np.float32), 0.2, 6, seed=1
        )[0, 0],
        "Gaussian dropout\n(factor, p = 0.3)": xdrop.gaussian_dropout(ones, 0.3, seed=1)[0, 0],
    }
    figure, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.2))
    for axis, (title, values) in zip(axes, panels.items(), strict=True):
        binary = "Gaussian" not in title
        shown = (values == 0) if binary else values
        axis.imshow(shown, cmap="gray_r" if binary else "RdBu", interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
    figure.suptitle("dropped units (black) of one seed")
    save(figure, out / "family-masks.png")


def mc_against_weight_scaling(out: Path, data: tuple[torch.Tensor, ...], quick: bool) -> None:
    """Srivastava et al. 2014, Fig. 11: test error of Monte Carlo averaging over k samples
    against weight scaling (the deterministic evaluation)."""
    epochs, repeats, most = (15, 3, 30) if quick else (60, 10, 100)
    model = network(0.5, seed=0)
    train(model, data, epochs)
    x_test, y_test = data[2], data[3]
    scaled = test_error(model, x_test, y_test)
    counts = np.unique(np.geomspace(1, most, 15 if quick else 25).astype(int))
    errors = np.empty((repeats, len(counts)))
    for repeat in range(repeats):
        probabilities = mc_probabilities(model, x_test, most)
        running = probabilities.cumsum(0)
        for j, k in enumerate(counts):
            errors[repeat, j] = float((running[k - 1].argmax(1) != y_test).float().mean())
    mean, spread = errors.mean(0), errors.std(0)
    below = np.nonzero(mean <= scaled)[0]
    reached = int(counts[below[0]]) if len(below) else None
    crossing = (
        f"MC reaches weight scaling at k = {reached}"
        if reached is not None
        else ("MC stays above weight scaling up to k = " + str(most))
    )
    _, axis = plt.subplots(figsize=(6, 4))
    axis.errorbar(counts, 100 * mean, yerr=100 * spread, marker="o", ms=3, capsize=2,
                  label=f"Monte Carlo averaging ({repeats} repeats)")  # fmt: skip
    axis.axhline(100 * scaled, color="k", linestyle="--", label="weight scaling (evaluation mode)")
    axis.set_xscale("log")
    save_chart(axis, out / "mc-vs-weight-scaling.png", x="number of samples k", y="test error (%)",
               title=f"Digits, MLP 64-256-256-10, p = 0.5\n{crossing}")  # fmt: skip
    print(f"Fig. 11: weight scaling {100 * scaled:.2f}% error; {crossing}")
    if out == OUT and not quick:  # the committed figure: the page quotes its numbers
        record = {"reaches_weight_scaling_at_k": reached, "weight_scaling_error": scaled}
        RECORD.write_text(json.dumps(record, indent=2) + "\n")


def error_against_p(out: Path, data: tuple[torch.Tensor, ...], quick: bool) -> None:
    """Srivastava et al. 2014, Fig. 9: test error against the drop probability p."""
    rates = [0.0, 0.3, 0.6, 0.9] if quick else [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    epochs = 15 if quick else 60
    test, training = [], []
    for p in rates:
        model = network(p, seed=1)
        test.append(train(model, data, epochs)[-1])
        training.append(test_error(model, data[0], data[1]))
    _, axis = plt.subplots(figsize=(6, 4))
    axis.plot(rates, 100 * np.array(test), marker="o", label="test error")
    axis.plot(rates, 100 * np.array(training), marker="s", label="training error")
    save_chart(axis, out / "error-vs-p.png", x="drop probability p (both hidden layers)",
               y="error (%)", title=f"Digits, MLP 64-256-256-10, {epochs} epochs")  # fmt: skip


def mc_uncertainty(out: Path, data: tuple[torch.Tensor, ...], quick: bool) -> None:
    """Predictive entropy and BALD of clean test digits against rotated and noisy ones."""
    model = network(0.5, seed=2)
    train(model, data, 15 if quick else 60)
    x_test = data[2]
    images = x_test.reshape(-1, 8, 8)
    noise = torch.tensor(np.random.default_rng(0).uniform(0, 1, x_test.shape), dtype=torch.float32)
    inputs = {
        "clean": x_test,
        "rotated 90°": torch.rot90(images, 1, (1, 2)).reshape(-1, 64),
        "half noise": 0.5 * x_test + 0.5 * noise,
    }
    set_mc_sampling(model)
    model.eval()
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    bins = np.linspace(0, np.log(10), 30)
    for name, x in inputs.items():
        with torch.no_grad():
            result = xdrop.mc_dropout(lambda x, seed: model(x), x, samples=10 if quick else 50)
        for axis, values in zip(
            axes, (result.predictive_entropy, result.mutual_information), strict=True
        ):
            shown = values.numpy()
            label = f"{name} (mean {shown.mean():.3f})"
            axis.hist(shown, bins=bins, histtype="step", linewidth=2, label=label, density=True)
        print(f"uncertainty, {name}: entropy {float(result.predictive_entropy.mean()):.3f}, "
              f"BALD {float(result.mutual_information.mean()):.3f}")  # fmt: skip
    set_mc_sampling(model, False)
    axes[0].set_xlabel("predictive entropy H[E p] (nats)")
    axes[1].set_xlabel("mutual information (BALD, nats)")
    for axis in axes:
        axis.set_ylabel("density")
        axis.set_yscale("log")
        axis.legend()
    figure.suptitle("Monte Carlo dropout on digits: uncertainty of clean, rotated and noisy inputs")
    save(figure, out / "mc-uncertainty.png")


def rdrop_curves(out: Path, data: tuple[torch.Tensor, ...], quick: bool) -> None:
    """Test error per epoch with and without R-Drop's KL term."""
    epochs = 15 if quick else 60
    _, axis = plt.subplots(figsize=(6, 4))
    for alpha, label in ((0.0, "dropout (alpha = 0)"), (1.0, "dropout + R-Drop (alpha = 1)")):
        errors = train(network(0.3, seed=3), data, epochs, alpha=alpha)
        axis.plot(range(1, epochs + 1), 100 * np.array(errors), label=label)
    save_chart(axis, out / "rdrop-curves.png", x="epoch", y="test error (%)",
               title="R-Drop on digits, MLP 64-256-256-10, p = 0.3")  # fmt: skip


# each figure drawn from trained networks, by the name of its image
TRAINED = {
    "mc-vs-weight-scaling": mc_against_weight_scaling,
    "error-vs-p": error_against_p,
    "mc-uncertainty": mc_uncertainty,
    "rdrop-curves": rdrop_curves,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and samples (CI)")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write (default {OUT})")
    parser.add_argument("--only", choices=sorted(TRAINED), help="draw this one trained figure")
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # tiny models: other threads would only wait
    if arguments.only:
        TRAINED[arguments.only](arguments.out, digits(), arguments.quick)
        return
    # the site's own figures (masks, noise shapes, performance) live beside this script
    site_out = site_figures.FIGURES if arguments.out == OUT else arguments.out
    with xdrop.use_backend("numpy"):
        for draw in site_figures.DRAWINGS:
            print(f"drew {draw(site_out).name}")
    data = digits()
    for make in (masks_across_backends, family_masks):
        make(arguments.out)
    for make_trained in TRAINED.values():
        start = time.perf_counter()
        make_trained(arguments.out, data, arguments.quick)
        print(f"{make_trained.__name__}: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
