"""Does R-Drop help here? Plain dropout against dropout + R-Drop on scikit-learn's digits, many seeds.

    python examples/rdrop_evidence.py                     # 20 seeds: prints the table
    python examples/rdrop_evidence.py --out docs/figures  # and the committed figure and record
    python examples/rdrop_evidence.py --quick --out DIR   # 2 seeds, 2 epochs (a smoke test)
    python examples/rdrop_evidence.py --redraw --out docs/figures  # from the record, no training

For every seed it trains one PyTorch MLP twice, from the same start: once with plain dropout
(cross entropy) and once with dropout + R-Drop (``xdrop.rdrop_forward`` and ``xdrop.rdrop_loss``,
``CE1 + CE2 + alpha * KL_sym``). A seed fixes the train/test split, the initial weights, the order
of the mini-batches and the dropout layers' seeds, and the two arms of a seed share all four: the
only difference between them is the loss. Both arms take the same number of optimizer steps on
the same batches (R-Drop's doubled forward pass costs about twice the compute per step).

It prints each seed's results and the table that docs/rdrop.md quotes, and writes nothing unless
``--out DIR`` names a folder: then ``rdrop-evidence.png`` (per seed and mean with 95% confidence
intervals) and ``rdrop-evidence.json`` (every seed's numbers, the settings and the summary) go
there. The figure needs matplotlib (``pip install matplotlib``, or xdrop's ``[docs]`` extra),
checked before training starts. ``--redraw`` trains nothing: it prints the table of the record in
``--out`` and redraws the figure there, or without ``--out`` prints the committed record's table.
The statistics (Student's t quantiles, the paired t-test, the exact sign test) are computed here
with NumPy and the standard library, so the numbers can be checked by hand.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

RECORD = Path(__file__).resolve().parents[1] / "docs" / "figures" / "rdrop-evidence.json"
ARMS = ("dropout", "dropout + R-Drop")


# -- statistics ------------------------------------------------------------------------------------
def student_t_central(t: float, df: int) -> float:
    """``P(|T| < t)`` for Student's t with ``df`` (an integer >= 1) degrees of freedom.

    Exact finite series (Abramowitz and Stegun 26.7.3, 26.7.4) with ``theta = atan(t / sqrt(df))``:
    for even ``df``, ``sin(theta) * sum_{k < df/2} c_k cos(theta)^(2k)`` with ``c_0 = 1``,
    ``c_k = c_{k-1} (2k - 1) / (2k)``; for odd ``df``,
    ``(2 / pi) * (theta + sin(theta) cos(theta) * sum_{k < (df-1)/2} d_k cos(theta)^(2k))`` with
    ``d_0 = 1``, ``d_k = d_{k-1} (2k) / (2k + 1)`` (the sum is empty for ``df = 1``, the Cauchy
    distribution). Example: ``student_t_central(1.0, 1) == 0.5``.
    """
    if df < 1 or int(df) != df:
        raise ValueError(f"df must be an integer >= 1, got {df!r}")
    theta = math.atan(abs(t) / math.sqrt(df))
    s, c2 = math.sin(theta), math.cos(theta) ** 2
    if df % 2 == 0:
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return s * total
    term, total = 1.0, 1.0 if df > 1 else 0.0
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return (2 / math.pi) * (theta + s * math.cos(theta) * total)


def student_t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t (``probability`` in (1/2, 1)), by bisection on
    :func:`student_t_central`: the ``t`` with ``P(|T| < t) = 2 * probability - 1``. Example:
    ``student_t_quantile(0.975, 9)`` is 2.2622 (the 95% interval's factor for 10 values)."""
    if not 0.5 < probability < 1.0:
        raise ValueError(f"probability must lie in (0.5, 1), got {probability!r}")
    target, low, high = 2 * probability - 1, 0.0, 1.0
    while student_t_central(high, df) < target:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if student_t_central(middle, df) < target else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """A mean and its two-sided confidence interval."""

    mean: float
    low: float
    high: float


def mean_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> Interval:
    """The mean of ``values`` (at least 2) with Student's t interval
    ``mean +- t_{(1 + level) / 2, n - 1} * s / sqrt(n)`` (``s``: the sample standard deviation).
    Example: ``mean_interval([1, 2, 3, 4, 5])`` is 3 +- 2.7764 * sqrt(2.5 / 5) = [1.037, 4.963]."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"values must be a sequence of at least 2 numbers, got shape {x.shape}")
    mean = float(x.mean())
    half = (
        student_t_quantile((1 + level) / 2, len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))
    )
    return Interval(mean, mean - half, mean + half)


@dataclass(frozen=True)
class PairedTest:
    """The paired comparison of two arms over the same seeds (differences ``b - a``)."""

    difference: Interval  # mean difference with its t interval
    t: float  # mean / (s / sqrt(n)) of the differences
    p_t: float  # two-sided p-value of the paired t-test
    wins: int  # seeds where b > a
    losses: int  # seeds where b < a
    ties: int
    p_sign: float  # two-sided exact sign test on wins against losses (ties dropped)


def paired_test(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedTest:
    """Paired t-test and exact sign test of ``b - a`` (one pair per seed).

    The t statistic is ``mean(d) / (sd(d) / sqrt(n))`` with ``n - 1`` degrees of freedom and
    ``p = 1 - P(|T| < |t|)``; differences that are all equal give ``t = 0, p = 1`` when they are 0
    and ``t = +-inf, p = 0`` otherwise. The sign test counts wins ``w`` and losses ``l`` and gives
    ``p = min(1, 2 * sum_{k <= min(w, l)} C(w + l, k) / 2^(w + l))``. Example: nine wins and one
    loss give ``p_sign = 2 * (1 + 10) / 1024 = 0.0215``.
    """
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    interval = mean_interval(d, level)
    spread = float(d.std(ddof=1))
    if spread == 0.0:
        t = 0.0 if interval.mean == 0.0 else math.copysign(math.inf, interval.mean)
        p_t = 1.0 if t == 0.0 else 0.0
    else:
        t = interval.mean / (spread / math.sqrt(len(d)))
        df = len(d) - 1
        p_t = 1.0 - student_t_central(t, df)
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    n = wins + losses
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return PairedTest(interval, t, p_t, wins, losses, len(d) - n, min(1.0, 2 * tail))


# -- training --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """Everything both arms share; only ``alpha`` (0 for plain dropout) tells them apart."""

    seeds: int = 20
    epochs: int = 40
    p: float = 0.3  # the drop probability of both hidden layers
    alpha: float = 1.0  # R-Drop's weight of the symmetric KL, fixed before any run
    width: int = 256
    batch: int = 64
    learning_rate: float = 1e-3


@functools.cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8 x 8 digits (1797 images, no download), read once."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    return images, labels


def split(seed: int) -> tuple[Any, ...]:
    """The digits (pixels / 16), split in half, stratified, by ``seed``: four torch tensors."""
    import torch
    from sklearn.model_selection import train_test_split

    images, labels = digits()
    x_train, x_test, y_train, y_test = train_test_split(
        images / 16.0, labels, test_size=0.5, random_state=seed, stratify=labels
    )
    return (
        torch.tensor(x_train, dtype=torch.float32),
        torch.tensor(y_train),
        torch.tensor(x_test, dtype=torch.float32),
        torch.tensor(y_test),
    )


def run(seed: int, alpha: float, settings: Settings) -> dict[str, float]:
    """Train one arm of ``seed``; its test accuracy and test NLL (mean cross entropy), dropout
    off. ``alpha == 0`` trains on plain cross entropy, one pass per batch."""
    import torch

    import xdrop
    from xdrop.layers.torch import Dropout

    x_train, y_train, x_test, y_test = split(seed)
    torch.manual_seed(seed)
    width = settings.width
    model = torch.nn.Sequential(
        torch.nn.Linear(64, width),
        torch.nn.ReLU(),
        Dropout(settings.p, seed=cast(int, xdrop.fold_in(seed, 1))),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        Dropout(settings.p, seed=cast(int, xdrop.fold_in(seed, 2))),
        torch.nn.Linear(width, 10),
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    order = np.random.default_rng(seed)
    steps = len(x_train) // settings.batch
    model.train()
    for _ in range(settings.epochs):
        for batch in np.array_split(order.permutation(len(x_train)), steps):
            x, y = x_train[batch], y_train[batch]
            if alpha > 0:  # both passes in one call: the doubled batch draws two masks
                first, second = xdrop.rdrop_forward(model, x)
                # the paper's sum of two NLLs; Adam is invariant to the loss's scale, so it trains
                # like their mean, which plain dropout's single cross entropy is comparable to
                loss = xdrop.rdrop_loss(first, second, y, alpha=alpha)
            else:
                loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(x_test)
    return {
        "accuracy": float((logits.argmax(1) == y_test).double().mean()),
        "nll": float(torch.nn.functional.cross_entropy(logits.double(), y_test)),
    }


# -- the record, the table and the figure ----------------------------------------------------------
METRICS = {"accuracy": "test accuracy (%)", "nll": "test NLL (nats)"}
SCALE = {"accuracy": 100.0, "nll": 1.0}  # accuracy is shown in percent
DIGITS = {"accuracy": 2, "nll": 4}
DIFFERENCE_UNIT = {"accuracy": "percentage points", "nll": "nats"}


def summarise(results: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """Per metric: each arm's mean with its interval, and the paired test of R-Drop - dropout."""
    summary: dict[str, Any] = {}
    for metric in METRICS:
        a, b = results[ARMS[0]][metric], results[ARMS[1]][metric]
        summary[metric] = {
            "arms": {arm: asdict(mean_interval(results[arm][metric])) for arm in ARMS},
            "paired": asdict(paired_test(a, b)),
        }
    return summary


def p_value(p: float) -> str:
    """``p = 0.012`` to three decimals, or ``p < 0.001`` where three decimals would show 0."""
    return "p < 0.001" if p < 0.0005 else f"p = {p:.3f}"


def table(record: dict[str, Any]) -> str:
    """The Markdown table docs/rdrop.md quotes, from a record this script wrote."""

    def interval(values: dict[str, float], metric: str) -> str:
        scale, digits = SCALE[metric], DIGITS[metric]
        mean, low, high = (scale * values[key] for key in ("mean", "low", "high"))
        return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    n = record["settings"]["seeds"]
    lines = [
        f"| {n} seeds | {ARMS[0]} | {ARMS[1]} | R-Drop - dropout (paired) "
        "| paired t-test | sign test (wins/losses/ties) |",
        "|---|---|---|---|---|---|",
    ]
    for metric, label in METRICS.items():
        summary = record["summary"][metric]
        arms = [interval(summary["arms"][arm], metric) for arm in ARMS]
        paired = summary["paired"]
        difference = interval(paired["difference"], metric)
        lines.append(
            f"| {label} | {arms[0]} | {arms[1]} | {difference} "
            f"| t = {paired['t']:.2f}, {p_value(paired['p_t'])} "
            f"| {paired['wins']}/{paired['losses']}/{paired['ties']}, "
            f"{p_value(paired['p_sign'])} |"
        )
    return "\n".join(lines)


def figure(record: dict[str, Any], path: Path) -> None:
    """Top: each seed's two arms joined by a line, and each arm's mean with its 95% interval.
    Bottom: each seed's paired difference, and their mean with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    results, summary = record["results"], record["summary"]
    settings = record["settings"]
    plot, axes = plt.subplots(2, 2, figsize=(10, 7.5))
    for column, (metric, label) in enumerate(METRICS.items()):
        scale = SCALE[metric]
        top, bottom = axes[0, column], axes[1, column]
        values = np.array([results[arm][metric] for arm in ARMS]) * scale
        top.plot([0, 1], values, color="0.7", linewidth=0.8, marker="o", markersize=3)
        for x, arm in enumerate(ARMS):
            arm_summary = summary[metric]["arms"][arm]
            mean = scale * arm_summary["mean"]
            error = [[mean - scale * arm_summary["low"]], [scale * arm_summary["high"] - mean]]
            top.errorbar(x + (0.12 if x else -0.12), mean, yerr=error, fmt="s", color="C3",
                         capsize=5, markersize=6)  # fmt: skip
        top.set_xticks([0, 1], list(ARMS))
        top.set_xlim(-0.4, 1.4)
        top.set_ylabel(label)
        top.set_title(f"{label}: each seed (grey), mean and 95% CI (red)", fontsize=9)
        differences = values[1] - values[0]
        paired = summary[metric]["paired"]
        mean = scale * paired["difference"]["mean"]
        low, high = scale * paired["difference"]["low"], scale * paired["difference"]["high"]
        seeds = np.arange(len(differences))
        bottom.axhline(0, color="k", linewidth=0.8)
        bottom.scatter(seeds, differences, color="0.4", s=14, label="one seed")
        bottom.axhspan(low, high, color="C3", alpha=0.2, label="95% CI of the mean")
        bottom.axhline(mean, color="C3", label="mean")
        bottom.set_xlabel("seed")
        bottom.set_ylabel(f"R-Drop - dropout ({DIFFERENCE_UNIT[metric]})")
        bottom.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        bottom.set_title(f"paired t-test {p_value(paired['p_t'])}, sign test "
                         f"{paired['wins']}/{paired['losses']}, {p_value(paired['p_sign'])}",
                         fontsize=9)  # fmt: skip
        bottom.legend(fontsize=8)
    plot.suptitle(
        f"Digits, MLP 64-{settings['width']}-{settings['width']}-10, dropout p = {settings['p']}, "
        f"R-Drop alpha = {settings['alpha']}, {settings['epochs']} epochs, "
        f"{settings['seeds']} seeds",
        fontsize=10,
    )
    plot.tight_layout()
    plot.savefig(path, dpi=100)
    plt.close(plot)


def out_folder(text: str) -> Path:
    """``--out``, once matplotlib is known to be there to draw the figure: checked as the
    arguments are read, before minutes of training rather than after them."""
    if importlib.util.find_spec("matplotlib") is None:
        raise argparse.ArgumentTypeError(
            "the figure needs matplotlib (pip install matplotlib, or xdrop's [docs] extra); "
            "without --out the table is printed and nothing drawn"
        )
    return Path(text)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=Settings.seeds, help="seeds (at least 2)")
    parser.add_argument("--epochs", type=int, default=Settings.epochs, help="epochs per model")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2 epochs (a smoke test)")
    parser.add_argument(
        "--out",
        type=out_folder,
        metavar="DIR",
        help="write rdrop-evidence.png and .json here (needs matplotlib); without it nothing is "
        "written, the table is printed",
    )
    parser.add_argument(
        "--redraw",
        action="store_true",
        help="no training: the table of the record in --out (without it, the committed record), "
        "and with --out the figure again",
    )
    arguments = parser.parse_args(argv)
    if arguments.redraw:
        source = RECORD if arguments.out is None else arguments.out / "rdrop-evidence.json"
        record: dict[str, Any] = json.loads(source.read_text())
        if arguments.out is not None:
            figure(record, arguments.out / "rdrop-evidence.png")
        print(table(record))
        return record
    seeds, epochs = (2, 2) if arguments.quick else (arguments.seeds, arguments.epochs)
    if seeds < 2:
        parser.error(f"--seeds must be at least 2 for an interval, got {seeds}")
    settings = Settings(seeds=seeds, epochs=epochs)
    if importlib.util.find_spec("sklearn") is None:
        parser.error("training needs scikit-learn's digits (pip install scikit-learn, or xdrop's "
                     "[examples] extra); --redraw needs neither")  # fmt: skip

    import torch

    torch.set_num_threads(1)  # a tiny model: more threads would only wait on each other
    start = time.perf_counter()
    results: dict[str, dict[str, list[float]]] = {
        arm: {metric: [] for metric in METRICS} for arm in ARMS
    }
    for seed in range(settings.seeds):
        for arm, alpha in zip(ARMS, (0.0, settings.alpha), strict=True):
            for metric, value in run(seed, alpha, settings).items():
                results[arm][metric].append(value)
        print(f"seed {seed:2d}: " + ", ".join(
            f"{arm} {100 * results[arm]['accuracy'][-1]:.2f}% / {results[arm]['nll'][-1]:.4f}"
            for arm in ARMS))  # fmt: skip
    record = {
        "settings": asdict(settings),
        "results": results,
        "summary": summarise(results),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(table(record))
    if arguments.out is None:
        print(f"{record['seconds']} s; nothing written (--out DIR keeps the figure and record)")
        return record
    arguments.out.mkdir(parents=True, exist_ok=True)
    (arguments.out / "rdrop-evidence.json").write_text(json.dumps(record, indent=1) + "\n")
    figure(record, arguments.out / "rdrop-evidence.png")
    print(f"{record['seconds']} s; wrote rdrop-evidence.png and .json to {arguments.out}")
    return record


if __name__ == "__main__":
    main()
