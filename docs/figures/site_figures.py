"""The site's figures of the library itself, into docs/figures/ (``make_figures.py`` draws them
with the others; alone: ``python docs/figures/site_figures.py [--check]``).

- ``masks.png``: the mask of one seed drawn on every installed backend (the script fails if two
  differ), and, below, each framework's own generator (``rng="native"``) for the same seed.
- ``noise-shapes.png``: one seed with noise shapes that drop elements, rows and columns.
- ``performance.png``: the ratio xdrop / the framework's own dropout of each execution path, read
  from the tables of docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt
import numpy as np

import xdrop

FIGURES = Path(__file__).resolve().parent
PERFORMANCE_PAGE = FIGURES.parent / "performance.md"
SHAPE, RATE, SEED = (12, 32), 0.5, 0
FRAMEWORKS = {"numpy": "NumPy", "torch": "PyTorch", "tensorflow": "TensorFlow", "jax": "JAX"}
KEPT, DROPPED = "#3b6ea8", "#f1f1f1"


def masks_on(name: str, rng: str) -> np.ndarray:
    """``dropout_mask(SHAPE, RATE, seed=SEED)`` on backend ``name``, as a NumPy array."""
    like: Any
    if name == "numpy":
        like = np.zeros(SHAPE, np.float32)
    elif name == "torch":
        import torch

        like = torch.zeros(SHAPE)
    elif name == "tensorflow":
        import tensorflow as tf

        like = tf.zeros(SHAPE)
    else:
        import jax.numpy as jnp

        like = jnp.zeros(SHAPE)
    return np.asarray(xdrop.dropout_mask(SHAPE, RATE, seed=SEED, like=like, rng=rng))


def installed() -> list[str]:
    return [name for name in FRAMEWORKS if importlib.util.find_spec(name) is not None]


def show_mask(axes: Any, mask: np.ndarray, title: str) -> None:
    colours = matplotlib.colors.ListedColormap([DROPPED, KEPT])
    axes.imshow(mask, cmap=colours, vmin=0, vmax=1, interpolation="nearest")
    axes.set_title(title, fontsize=10)
    axes.set_xticks([])
    axes.set_yticks([])


def draw_masks(folder: Path) -> Path:
    names = installed()
    portable = {name: masks_on(name, "portable") for name in names}
    for name, mask in portable.items():
        if not np.array_equal(mask, portable["numpy"]):
            raise SystemExit(f"the portable mask on {name} differs from NumPy's")
    native = {name: masks_on(name, "native") for name in names}
    figure, grid = plt.subplots(2, len(names), figsize=(2.6 * len(names), 3.2), squeeze=False)
    for column, name in enumerate(names):
        show_mask(grid[0][column], portable[name], FRAMEWORKS[name])
        show_mask(grid[1][column], native[name], f'{FRAMEWORKS[name]}, rng="native"')
    figure.suptitle(
        f"xdrop.dropout_mask({SHAPE}, p={RATE}, seed={SEED}), blue = kept. Top: mask stream v1, "
        "the same on every backend. Bottom: each framework's own generator.",
        fontsize=9,
    )
    figure.tight_layout()
    return save(figure, folder / "masks.png")


def draw_noise_shapes(folder: Path) -> Path:
    x = np.ones(SHAPE, np.float32)
    cases = [
        ("noise_shape=None: elements", None),
        (f"noise_shape=({SHAPE[0]}, 1): rows", (SHAPE[0], 1)),
        (f"noise_shape=(1, {SHAPE[1]}): columns", (1, SHAPE[1])),
    ]
    figure, grid = plt.subplots(1, len(cases), figsize=(2.9 * len(cases), 1.9), squeeze=False)
    for axes, (title, noise_shape) in zip(grid[0], cases, strict=True):
        _, keep = xdrop.dropout(x, RATE, seed=SEED, noise_shape=noise_shape, return_mask=True)
        show_mask(axes, np.asarray(keep), title)
    figure.suptitle(f"xdrop.dropout(x, p={RATE}, seed={SEED}, noise_shape=...)", fontsize=9)
    figure.tight_layout()
    return save(figure, folder / "noise-shapes.png")


def performance_ratios(page: str, p: float = 0.5) -> dict[str, dict[int, float]]:
    """``{"backend · path · direction · dtype · shapes": {size: xdrop/framework}}`` at rate ``p``
    (cases that could not be timed, "-", left out), from the
    Markdown tables under "## The tables" of docs/performance.md, each under its title in bold."""
    section = page.split("## The tables", 1)[1].split("\n## ", 1)[0]
    ratios: dict[str, dict[int, float]] = {}
    title, columns = "", []
    for line in section.splitlines():
        if line.startswith("**") and line.endswith("**"):
            title, columns = line.strip("*"), []
        elif line.startswith("|") and title:
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            if not columns:
                columns = cells
            elif not all(re.fullmatch(r":?-+:?", cell) for cell in cells):  # not the rule
                row = dict(zip(columns, cells, strict=True))
                if float(row["p"]) == p and row.get("xdrop/framework", "-") != "-":
                    size = int(float(row["size"]))
                    ratios.setdefault(title, {})[size] = float(row["xdrop/framework"])
    if not ratios:
        raise SystemExit(f"no xdrop/framework ratios at p={p} under '## The tables'")
    return ratios


def draw_performance(folder: Path) -> Path:
    """The benchmark's own figure (``xdrop bench --figure``), from the page's tables."""
    from xdrop.benchmarks import figure

    ratios = performance_ratios(PERFORMANCE_PAGE.read_text())
    return figure.draw(ratios, folder / "performance.png")


def save(figure: Any, path: Path) -> Path:
    figure.savefig(path, dpi=110, metadata={"Software": None})  # no version: stable files
    plt.close(figure)
    return path


DRAWINGS: list[Callable[[Path], Path]] = [draw_masks, draw_noise_shapes, draw_performance]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Draw the site's figures from xdrop itself.")
    parser.add_argument(
        "--check",
        action="store_true",
        help="draw into a temporary folder and check that every figure is committed",
    )
    arguments = parser.parse_args(argv)
    with xdrop.use_backend("numpy"), tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) if arguments.check else FIGURES
        for draw in DRAWINGS:
            path = draw(folder)
            print(f"drew {path.name}")
            if arguments.check and not (FIGURES / path.name).exists():
                print(f"docs/figures/{path.name} is missing: run {sys.argv[0]}", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
