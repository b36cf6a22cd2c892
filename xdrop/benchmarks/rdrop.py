"""R-Dropout's loss against what users write today, at BERT-base shapes.
``python -m xdrop.benchmarks.rdrop`` (or ``xdrop bench --rdrop``).

Per backend and execution mode, in a fresh process each, :func:`xdrop.rdrop_loss` and the loss
users compute without xdrop are timed interleaved (:mod:`xdrop.benchmarks.timing`), forward and
forward+backward (gradients of both logits), on two shapes:

- ``classification``: logits ``[32, 2]`` from each pass (sequence classification, batch 32);
- ``token``: logits ``[8, 512, 30000]`` from each pass (batch 8 x 512 tokens x a 30k vocabulary),
  the last eighth of every sequence padded (label ``-100``).

The baselines: on PyTorch, the official R-Drop code (see :func:`torch_reference`); on TensorFlow
and JAX, the hand-written loss: ``log_softmax``, ``softmax``, ``sum p * (log p - log q)`` both
ways and two cross entropies. Each is compared with xdrop in the same mode (eager with eager,
compiled with compiled). The target is a ratio (xdrop / baseline) of at most 1.0 everywhere;
``docs/performance.md`` ("R-Dropout") records the results.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xdrop import tables
from xdrop.benchmarks.timing import (
    Call,
    Timing,
    describe_error,
    paired_ratio,
    time_interleaved,
)

SHAPES: dict[str, tuple[int, ...]] = {"classification": (32, 2), "token": (8, 512, 30000)}
"""The logits' shape of one pass; the class axis is the last."""
MODES = {
    "torch": ("eager", "torch.compile"),
    "tensorflow": ("eager", "tf.function"),
    "jax": ("jax.jit",),
}
"""What users run: JAX users ``jax.jit`` their train step (eager JAX dispatches op by op)."""
DIRECTIONS = ("forward", "forward+backward")
ALPHA = 1.0
IGNORE = -100
PADDED_FRACTION = 8
"""One position in this many, at the end of each sequence, is padding (token-level shape)."""
TARGET = 1.0
REPEATS = {"classification": 15, "token": 3}
MIN_SAMPLE = {"classification": 0.05, "token": 0.0}
"""Seconds per timed sample: one call of the token-level shape already takes longer."""
QUICK_REPEATS = {"classification": 5, "token": 1}

Loss = Callable[[Any, Any, Any], Any]
"""``loss(logits1, logits2, labels)``, a 0-d array."""


def inputs(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two float32 logit arrays (the two passes: close, as dropout makes them) and the labels,
    ``-100`` at padded positions of the token-level shape."""
    rng = np.random.default_rng(0)
    first = rng.standard_normal(shape, dtype=np.float32)
    second = first + np.float32(0.3) * rng.standard_normal(shape, dtype=np.float32)
    labels = rng.integers(0, shape[-1], shape[:-1])
    if len(shape) > 2:
        labels[:, -(shape[1] // PADDED_FRACTION) :] = IGNORE
    return first, second, labels


# -- the baselines -----------------------------------------------------------------------------------
def torch_reference(torch: Any) -> Loss:
    """The official R-Drop code (github.com/dropreg/R-Drop, README "Usage" and
    ``compute_kl_loss``): two ``F.kl_div(F.log_softmax(p), F.softmax(q), reduction='none')``, the
    padded positions filled with 0, summed and halved; plus two ``cross_entropy`` losses (with
    ``ignore_index``, as its sequence tasks pass it). Reproduced for timing, not copied."""
    functional = torch.nn.functional

    def kl(p: Any, q: Any, pad_mask: Any) -> Any:
        p_loss = functional.kl_div(
            functional.log_softmax(p, dim=-1), functional.softmax(q, dim=-1), reduction="none"
        )
        q_loss = functional.kl_div(
            functional.log_softmax(q, dim=-1), functional.softmax(p, dim=-1), reduction="none"
        )
        if pad_mask is not None:
            p_loss = p_loss.masked_fill(pad_mask, 0.0)  # in place in the original: same work
            q_loss = q_loss.masked_fill(pad_mask, 0.0)
        return (p_loss.sum() + q_loss.sum()) / 2

    def loss(logits1: Any, logits2: Any, labels: Any) -> Any:
        classes = logits1.shape[-1]
        pad_mask = (labels == IGNORE).unsqueeze(-1) if logits1.dim() > 2 else None
        ce1 = functional.cross_entropy(
            logits1.reshape(-1, classes), labels.reshape(-1), ignore_index=IGNORE
        )
        ce2 = functional.cross_entropy(
            logits2.reshape(-1, classes), labels.reshape(-1), ignore_index=IGNORE
        )
        return 0.5 * (ce1 + ce2) + ALPHA * kl(logits1, logits2, pad_mask)

    return loss


def tensorflow_hand_written(tf: Any) -> Loss:
    """KL both ways from ``log_softmax`` and ``softmax``, and ``tf.nn``'s fused sparse cross
    entropy, with padded positions masked (the labels there replaced, as that op needs)."""

    def loss(logits1: Any, logits2: Any, labels: Any) -> Any:
        keep = tf.not_equal(labels, IGNORE)
        weight = tf.cast(keep, logits1.dtype)
        safe = tf.where(keep, labels, tf.zeros_like(labels))
        logp1, logp2 = tf.nn.log_softmax(logits1), tf.nn.log_softmax(logits2)
        p1, p2 = tf.nn.softmax(logits1), tf.nn.softmax(logits2)
        kl = tf.reduce_sum(p2 * (logp2 - logp1), -1) + tf.reduce_sum(p1 * (logp1 - logp2), -1)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            safe, logits1
        ) + tf.nn.sparse_softmax_cross_entropy_with_logits(safe, logits2)
        count = tf.maximum(tf.reduce_sum(weight), 1.0)
        return tf.reduce_sum((ce + ALPHA * 0.5 * kl) * weight) / count

    return loss


def jax_hand_written(jax: Any) -> Loss:
    """KL both ways from ``log_softmax`` and ``softmax``, and the cross entropies picked from the
    log-probabilities (as ``optax.softmax_cross_entropy_with_integer_labels`` does)."""
    jnp = jax.numpy

    def loss(logits1: Any, logits2: Any, labels: Any) -> Any:
        keep = labels != IGNORE
        safe = jnp.where(keep, labels, 0)[..., None]
        logp1, logp2 = jax.nn.log_softmax(logits1), jax.nn.log_softmax(logits2)
        p1, p2 = jax.nn.softmax(logits1), jax.nn.softmax(logits2)
        kl = jnp.sum(p2 * (logp2 - logp1), -1) + jnp.sum(p1 * (logp1 - logp2), -1)
        ce = (
            -jnp.take_along_axis(logp1, safe, -1)[..., 0]
            - jnp.take_along_axis(logp2, safe, -1)[..., 0]
        )
        count = jnp.maximum(jnp.sum(keep), 1)
        return jnp.sum(jnp.where(keep, ce + ALPHA * 0.5 * kl, 0.0)) / count

    return loss


def xdrop_loss(logits1: Any, logits2: Any, labels: Any) -> Any:
    """What an xdrop user writes: the paper's loss, padded tokens ignored (classification has
    none to ignore)."""
    import xdrop

    ignore = IGNORE if len(logits1.shape) > 2 else None
    return xdrop.rdrop_loss(logits1, logits2, labels, alpha=ALPHA, ignore_index=ignore)


# -- one backend, one mode: the contenders ---------------------------------------------------------
def contenders(backend: str, mode: str, direction: str, shape: tuple[int, ...]) -> dict[str, Call]:
    """``xdrop`` and ``baseline``, each a call that runs to completion on this shape."""
    first, second, labels = inputs(shape)
    backward = direction == "forward+backward"
    if backend == "torch":
        return _torch_calls(mode, backward, first, second, labels)
    if backend == "tensorflow":
        return _tensorflow_calls(mode, backward, first, second, labels)
    return _jax_calls(backward, first, second, labels)


def _torch_calls(mode: str, backward: bool, *arrays: np.ndarray) -> dict[str, Call]:
    import torch

    logits1, logits2 = (torch.from_numpy(a).requires_grad_(backward) for a in arrays[:2])
    labels = torch.from_numpy(arrays[2])
    compiled = mode == "torch.compile"

    def make(loss: Loss) -> Call:
        if compiled:
            loss = torch.compile(loss)

        def call() -> object:
            value = loss(logits1, logits2, labels)
            if backward:
                return torch.autograd.grad(value, (logits1, logits2))
            return value

        return call

    return {"xdrop": make(xdrop_loss), "baseline": make(torch_reference(torch))}


def _tensorflow_calls(mode: str, backward: bool, *arrays: np.ndarray) -> dict[str, Call]:
    from xdrop import registry

    registry.load_triton_before_tensorflow()
    import tensorflow as tf

    logits1, logits2, labels = (tf.constant(a) for a in arrays)

    def make(loss: Loss) -> Call:
        def step(logits1: Any, logits2: Any, labels: Any) -> Any:
            if not backward:
                return loss(logits1, logits2, labels)
            with tf.GradientTape() as tape:
                tape.watch([logits1, logits2])
                value = loss(logits1, logits2, labels)
            return tape.gradient(value, [logits1, logits2])

        run = tf.function(step) if mode == "tf.function" else step

        return lambda: run(logits1, logits2, labels)  # on the CPU a call returns when done

    return {"xdrop": make(xdrop_loss), "baseline": make(tensorflow_hand_written(tf))}


def _jax_calls(backward: bool, *arrays: np.ndarray) -> dict[str, Call]:
    import jax

    wait: Callable[[Any], Any] = jax.block_until_ready
    logits1, logits2, labels = (jax.numpy.asarray(a) for a in arrays)

    def make(loss: Loss) -> Call:
        step = jax.jit(jax.grad(loss, argnums=(0, 1)) if backward else loss)

        def call() -> object:
            return wait(step(logits1, logits2, labels))

        return call

    return {"xdrop": make(xdrop_loss), "baseline": make(jax_hand_written(jax))}


def time_long_calls(
    calls: dict[str, Call], repeats: int
) -> tuple[dict[str, Timing], dict[str, str]]:
    """:func:`~xdrop.benchmarks.timing.time_interleaved` for calls of seconds each: a first call
    (compilation), one warm-up call, then ``repeats`` rounds of one call per contender, the
    order rotating; a round's calls run seconds apart, so their ratio pairs as well."""
    first_call: dict[str, float] = {}
    failures: dict[str, str] = {}
    for name, call in calls.items():
        try:
            start = time.perf_counter()
            call()
            first_call[name] = time.perf_counter() - start
            call()
        except Exception as error:  # reported in place of the contender's time
            failures[name] = describe_error(error)
    names = [name for name in calls if name in first_call]
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_number in range(repeats):
        shift = round_number % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            gc.collect()  # the last round's multi-GB temporaries, before the clock starts
            start = time.perf_counter()
            calls[name]()
            samples[name].append(time.perf_counter() - start)
    timings = {
        name: Timing(
            median=statistics.median(values),
            quartiles=(min(values), max(values)) if len(values) < 4 else _quartiles(values),
            first_call=first_call[name],
            calls_per_sample=1,
            samples=values,
        )
        for name, values in samples.items()
    }
    return timings, failures


def _quartiles(values: list[float]) -> tuple[float, float]:
    first, _, third = statistics.quantiles(values, n=4, method="inclusive")
    return first, third


# -- one process per backend and mode ----------------------------------------------------------------
def measure(
    backend: str, mode: str, shapes: Sequence[str], directions: Sequence[str], quick: bool
) -> list[dict[str, Any]]:
    """The rows of one backend in one mode, timed in this process."""
    rows = []
    for shape_name in shapes:
        shape = SHAPES[shape_name]
        for direction in directions:
            calls = contenders(backend, mode, direction, shape)
            repeats = (QUICK_REPEATS if quick else REPEATS)[shape_name]
            if MIN_SAMPLE[shape_name]:
                timings, failures = time_interleaved(calls, repeats, MIN_SAMPLE[shape_name])
            else:
                timings, failures = time_long_calls(calls, repeats)
            row: dict[str, Any] = {
                "backend": backend, "mode": mode, "direction": direction,
                "shape": shape_name, "logits": list(shape), "repeats": repeats,
                "failures": failures,
            }  # fmt: skip
            for name, timing in timings.items():
                row[name] = {"median": timing.median, "quartiles": list(timing.quartiles),
                             "first_call": timing.first_call}  # fmt: skip
            if not failures:
                row["ratio"] = paired_ratio(timings["xdrop"], timings["baseline"])
            row["peak_resident_gib"] = _peak_resident_gib()
            rows.append(row)
            del calls, timings
    return rows


def _peak_resident_gib() -> float | None:
    """The process's peak resident memory so far (both contenders, inputs and gradients)."""
    try:
        import resource  # POSIX only
    except ImportError:
        return None
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return round(kib / 2**20, 2)


def run(
    backends: Sequence[str] | None = None,
    shapes: Sequence[str] = tuple(SHAPES),
    directions: Sequence[str] = DIRECTIONS,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every mode of every backend (default: each installed one), each in a fresh process; the
    machine's load before and after. Returns the document that :func:`table` prints."""
    import xdrop

    available = xdrop.available_backends()
    chosen = [name for name in backends or MODES if available.get(name)]
    document: dict[str, Any] = {
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "load_before": os.getloadavg()},
        "rows": [], "missing": [name for name in backends or () if name not in chosen],
    }  # fmt: skip
    for backend in chosen:
        for mode in MODES[backend]:
            if progress:
                progress(f"{backend} {mode}")
            document["rows"] += _in_fresh_process(backend, mode, shapes, directions, quick)
    document["machine"]["load_after"] = os.getloadavg()
    return document


def _in_fresh_process(
    backend: str, mode: str, shapes: Sequence[str], directions: Sequence[str], quick: bool
) -> list[dict[str, Any]]:
    spec = {"backend": backend, "mode": mode, "shapes": list(shapes),
            "directions": list(directions), "quick": quick}  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "rows.json"
        command = [sys.executable, "-m", "xdrop.benchmarks.rdrop", "--worker", json.dumps(spec),
                   str(result)]  # fmt: skip
        environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        finished = subprocess.run(command, env=environment, capture_output=True, text=True)
        if finished.returncode != 0 or not result.exists():
            lines = (finished.stderr or finished.stdout).strip().splitlines()
            return [{"backend": backend, "mode": mode, "failures": {"all": lines[-1] if lines
                     else f"exit status {finished.returncode}"}}]  # fmt: skip
        rows: list[dict[str, Any]] = json.loads(result.read_text())
        return rows


def table(document: dict[str, Any], markdown: bool = False) -> str:
    """One line per backend, mode, shape and direction: the two medians and their paired ratio."""
    header = ("backend", "mode", "shape", "direction", "xdrop", "baseline", "ratio", "target")
    lines = []
    for row in document["rows"]:
        if "ratio" not in row:
            failed = "; ".join(f"{k}: {v}" for k, v in row["failures"].items())
            cells = (row["backend"], row["mode"], row.get("shape", ""), row.get("direction", ""),
                     "", "", f"FAILED {failed}", "")  # fmt: skip
        else:
            verdict = "met" if row["ratio"] <= TARGET else "MISSED"
            cells = (row["backend"], row["mode"], f"{row['shape']} {row['logits']}",
                     row["direction"], _seconds(row["xdrop"]["median"]),
                     _seconds(row["baseline"]["median"]), tables.ratio(row["ratio"], TARGET),
                     f"<= {TARGET} {verdict}")  # fmt: skip
        lines.append(cells)
    machine = document["machine"]
    footer = (f"{machine['processor']}, {machine['cores']} cores, load average "
              f"{_load(machine['load_before'])} before, {_load(machine.get('load_after'))} after")  # fmt: skip
    if markdown:
        rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        rows += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(rows) + f"\n\n{footer}"
    widths = [max(len(str(c)) for c in column) for column in zip(header, *lines, strict=False)]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
            for cells in (header, *lines)]  # fmt: skip
    return "\n".join(text) + f"\n{footer}"


def _seconds(value: float) -> str:
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def _load(load: Sequence[float] | None) -> str:
    return "?" if load is None else " ".join(f"{value:.2f}" for value in load)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table; exit status 1 when a backend could not be timed."""
    parser = argparse.ArgumentParser(
        prog="python -m xdrop.benchmarks.rdrop", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--backends", nargs="+", choices=list(MODES), help="default: all installed")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--direction", choices=DIRECTIONS, help="default: both")
    parser.add_argument("--quick", action="store_true", help="fewer rounds: a first look")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--json", metavar="FILE", help="also write the results there")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.worker:
        spec_text, result = arguments.worker
        spec = json.loads(spec_text)
        rows = measure(spec["backend"], spec["mode"], spec["shapes"], spec["directions"],
                       spec["quick"])  # fmt: skip
        Path(result).write_text(json.dumps(rows))
        return 0
    document = run(
        arguments.backends,
        arguments.shapes,
        [arguments.direction] if arguments.direction else DIRECTIONS,
        arguments.quick,
        progress=lambda what: print(f"timing {what} ...", file=sys.stderr, flush=True),
    )
    print(table(document, markdown=arguments.markdown))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(document, indent=1))
    failed = [row for row in document["rows"] if "ratio" not in row]
    return 1 if failed or document["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
