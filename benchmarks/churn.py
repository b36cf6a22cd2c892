"""What real training code does to eager calls: a new rate on every call (a schedule, a sweep)
and a new shape on most calls (ragged batches). ``python benchmarks/churn.py [--quick]``.

Targets (``docs/performance.md``), on eager JAX and TensorFlow, and on NumPy and PyTorch:

- 1,000 calls with 1,000 distinct rates cost at most 2x 1,000 calls with one rate;
- 300 calls on 300 distinct shapes cost at most 3x the framework's own dropout on the same calls,
  and grow resident memory by at most 100 MiB;
- no TensorFlow retracing warning is printed because of xdrop.

Each line prints the two times, their ratio and the target, and whether it is met.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import xdrop

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def frameworks() -> dict[str, tuple[Callable[[tuple[int, ...]], Any], Callable[[Any], Any]]]:
    """For each installed framework: make an input of a shape, and the framework's own dropout."""
    found: dict[str, tuple[Callable[[tuple[int, ...]], Any], Callable[[Any], Any]]] = {}
    found["numpy"] = (
        lambda shape: np.ones(shape, np.float32),
        lambda x: np.where(np.random.default_rng().random(x.shape) < 0.5, x * 2, 0),
    )
    try:
        import torch

        found["torch"] = (lambda shape: torch.ones(shape), lambda x: torch.nn.functional.dropout(x))
    except ImportError:
        pass
    try:
        import tensorflow as tf

        found["tensorflow"] = (lambda shape: tf.ones(shape), lambda x: tf.nn.dropout(x, 0.5))
    except ImportError:
        pass
    try:
        import jax

        def flax_style(x: Any) -> Any:
            key = jax.random.key(int(time.perf_counter_ns() % 2**31))
            return jax.numpy.where(jax.random.bernoulli(key, 0.5, x.shape), x * 2, 0)

        found["jax"] = (lambda shape: jax.numpy.ones(shape), flax_style)
    except ImportError:
        pass
    return found


def timed(calls: Callable[[], Any]) -> float:
    start = time.perf_counter()
    result = calls()
    if hasattr(result, "block_until_ready"):
        result.block_until_ready()
    return time.perf_counter() - start


def resident_mib() -> float:
    """The resident memory now (Linux); elsewhere the peak so far."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    name: str,
    make: Callable[[tuple[int, ...]], Any],
    own: Callable[[Any], Any],
    rates: int,
    shapes: int,
) -> list[tuple[str, str, str, float, float]]:
    """The three rows of one backend: distinct rates, distinct shapes, memory."""
    x = make((64, 128))
    xdrop.dropout(x, 0.5, seed=0)  # load the backend, stage this shape
    one = timed(lambda: [xdrop.dropout(x, 0.5, seed=i) for i in range(rates)][-1])
    many = timed(
        lambda: [xdrop.dropout(x, 0.1 + 0.8 * i / rates, seed=i) for i in range(rates)][-1]
    )
    sizes = [(16 + i, 128) for i in range(shapes)]
    for shape in sizes[:3]:  # the framework's own first calls: imports, kernels
        own(make(shape))
    before = resident_mib()
    ours = timed(lambda: [xdrop.dropout(make(shape), 0.5, seed=1) for shape in sizes][-1])
    grown = resident_mib() - before
    theirs = timed(lambda: [own(make((size + shapes, width))) for size, width in sizes][-1])
    return [
        (name, f"{rates} distinct rates / one rate", f"{many:.3f} s vs {one:.3f} s", many / one, 2.0),
        (name, f"{shapes} distinct shapes / its own dropout", f"{ours:.3f} s vs {theirs:.3f} s",
         ours / theirs, 3.0),
        (name, f"resident memory growth, {shapes} shapes", f"{grown:.0f} MiB", grown, 100.0),
    ]  # fmt: skip


class Collect(logging.Handler):
    """Keeps the messages of a logger (TensorFlow's retracing warnings)."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__()
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 rates and 30 shapes")
    parser.add_argument("--backends", nargs="*", help="only these (default: every installed one)")
    arguments = parser.parse_args()
    rates, shapes = (100, 30) if arguments.quick else (1000, 300)
    warnings: list[str] = []
    logging.getLogger("tensorflow").addHandler(Collect(warnings))
    rows: list[tuple[str, str, str, float, float]] = []  # backend, what, detail, value, limit
    for name, (make, own) in frameworks().items():
        if not arguments.backends or name in arguments.backends:
            rows += measure(name, make, own, rates, shapes)
    print(f"{'backend':<11} {'what':<40} {'measured':<24} {'value':>7} {'limit':>6}")
    for name, what, detail, value, limit in rows:
        verdict = "met" if value <= limit else "MISSED"
        print(f"{name:<11} {what:<40} {detail:<24} {value:7.2f} {limit:6.1f} {verdict}")
    retracing = [message for message in warnings if "retracing" in message]
    print(f"TensorFlow retracing warnings: {len(retracing)}")


if __name__ == "__main__":
    main()
