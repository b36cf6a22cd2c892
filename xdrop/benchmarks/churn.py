"""What real training code does to eager calls: a new rate on every call (a schedule, a sweep)
and a new shape on most calls (ragged batches). ``python -m xdrop.benchmarks.churn [--quick]``.

Targets (``docs/performance.md``), on eager JAX and TensorFlow, and on NumPy and PyTorch:

- 1,000 calls with 1,000 distinct rates cost at most 2x 1,000 calls with one rate;
- 300 calls on 300 distinct shapes cost at most 3x the framework's own dropout on the same calls,
  and grow resident memory by at most 100 MiB;
- no TensorFlow retracing warning is printed because of xdrop.

Each line prints the two times, their ratio and the target, and whether it is met. Every shape
here is new (a first call each); shapes that recur, on every execution path, are ``xdrop bench
--shapes changing``'s (:func:`xdrop.benchmarks.suites.shapes`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

import xdrop
from xdrop import registry, tables

Framework = tuple[Callable[[tuple[int, ...]], Any], Callable[[Any], Any]]
"""How to make an input of a shape, and the framework's own dropout of it."""


def _numpy() -> Framework:
    return (
        lambda shape: np.ones(shape, np.float32),
        lambda x: np.where(np.random.default_rng().random(x.shape) < 0.5, x * 2, 0),
    )


def _torch() -> Framework:
    import torch

    return lambda shape: torch.ones(shape), lambda x: torch.nn.functional.dropout(x)


def _tensorflow() -> Framework:
    registry.load_triton_before_tensorflow()
    import tensorflow as tf

    return lambda shape: tf.ones(shape), lambda x: tf.nn.dropout(x, 0.5)


def _jax() -> Framework:
    import jax

    def flax_style(x: Any) -> Any:
        key = jax.random.key(int(time.perf_counter_ns() % 2**31))
        return jax.numpy.where(jax.random.bernoulli(key, 0.5, x.shape), x * 2, 0)

    return lambda shape: jax.numpy.ones(shape), flax_style


FRAMEWORKS: dict[str, Callable[[], Framework]] = {
    "numpy": _numpy,
    "torch": _torch,
    "tensorflow": _tensorflow,
    "jax": _jax,
}


def frameworks(names: Iterable[str] | None = None) -> dict[str, Framework]:
    """Each framework of ``names`` (default: every one) that is installed; only those are
    imported."""
    found: dict[str, Framework] = {}
    for name in FRAMEWORKS if names is None else names:
        with contextlib.suppress(ImportError):  # not installed: left out
            found[name] = FRAMEWORKS[name]()
    return found


def timed(calls: Callable[[], Any]) -> float:
    start = time.perf_counter()
    result = calls()
    if hasattr(result, "block_until_ready"):
        result.block_until_ready()
    return time.perf_counter() - start


def resident_mib() -> float:
    """The resident memory now (Linux); elsewhere the peak so far."""
    import resource  # POSIX only: imported here so that the package imports everywhere

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


def main(argv: list[str] | None = None) -> int:
    """Measure and print the table; exit status 2 with one line for a bad argument."""
    parser = argparse.ArgumentParser(
        prog="python -m xdrop.benchmarks.churn", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="100 rates and 30 shapes")
    parser.add_argument("--backends", nargs="*", help="only these (default: every installed one)")
    arguments = parser.parse_args(argv)
    rates, shapes = (100, 30) if arguments.quick else (1000, 300)
    unknown = [name for name in arguments.backends or () if name not in FRAMEWORKS]
    if unknown:
        parser.error(f"argument --backends: unknown {', '.join(map(repr, unknown))}; "
                     f"known: {', '.join(FRAMEWORKS)}")  # fmt: skip
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    found = frameworks(dict.fromkeys(arguments.backends) if arguments.backends else None)
    missing = [name for name in arguments.backends or () if name not in found]
    if missing:
        parser.error(f"argument --backends: not installed here: {', '.join(map(repr, missing))}")
    warnings: list[str] = []
    logging.getLogger("tensorflow").addHandler(Collect(warnings))
    rows: list[tuple[str, str, str, float, float]] = []  # backend, what, detail, value, limit
    for name, (make, own) in found.items():
        if not arguments.backends or name in arguments.backends:
            rows += measure(name, make, own, rates, shapes)
    print(f"{'backend':<11} {'what':<40} {'measured':<24} {'value':>7} {'limit':>6}")
    for name, what, detail, value, limit in rows:
        verdict = "met" if value <= limit else "MISSED"
        shown = tables.ratio(value, limit)
        print(f"{name:<11} {what:<40} {detail:<24} {shown:>7} {limit:6.1f} {verdict}")
    retracing = [message for message in warnings if "retracing" in message]
    print(f"TensorFlow retracing warnings: {len(retracing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
