"""The compiled kernel on one thread and on several, against the memory bandwidth a plain copy
reaches: ``python -m xdrop.benchmarks.bandwidth [--quick]``.

For NumPy arrays and CPU torch tensors of float32 (torch where installed), at each size, the
contenders are timed interleaved (:mod:`xdrop.benchmarks.timing`), each on 1 thread and on
``--threads`` (default: :func:`xdrop.kernel.threads`):

- ``kernel``: the compiled kernel into a preallocated output (``xdrop.kernel.host_dropout``; on
  torch's OpenMP threads for torch, as its tensors' calls run);
- ``kernel+mask``: the same, with the keep mask written too;
- ``xdrop.dropout``: the public call, which allocates its output (and, on torch, checks autograd);
- ``copy``: a copy into a preallocated array: ``np.copyto`` (its several-thread version copies
  slices on a thread pool: NumPy releases the GIL), torch's ``y.copy_(x)`` under
  ``torch.set_num_threads``.

Each line gives the median time per call, the bandwidth (bytes moved over that time: x read and
y written, 8 bytes an element, plus 1 for the mask; a write-allocate cache reads y's lines too,
which is not counted), the ratio to the copy's bandwidth on as many threads, and the speed-up of
the several-thread run over the one-thread run: the median of ratios taken within each round, and
the ratio of the fastest rounds ("best"), which a busy machine disturbs less. ``CPU`` is the
processor time of one call, all threads counted: what it costs, however long it waited for a
core (on a busy machine the wall-clock time is mostly waiting).
A second table gives that speed-up for the kernel alone at sizes around the default grain
(:data:`xdrop.kernel.GRAIN`), every call split (grain 1), which is where a thread's start-up
is repaid. A third (with torch) gives it for ``xdrop.dropout`` of a torch tensor right after a
torch operation, as in a model, where torch's OpenMP threads are still spinning on the cores
(``xdrop.kernel`` runs its parts on them), at the first table's sizes; a fourth, the same step
on all threads with torch's threads split as torch splits its operations, at their own grain
(:data:`xdrop.kernel.OPENMP_GRAIN`), against the kernel's threads' grain, at sizes around it
(not on one thread, where nothing splits).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

import xdrop
from xdrop import kernel, spec
from xdrop.benchmarks.runner import element_count, memory_bytes
from xdrop.benchmarks.timing import Timing, paired_ratio, time_interleaved
from xdrop.fused import FusedCall

SIZES = (10**6, 10**7, 10**8)
QUICK_SIZES = (10**5, 10**6)
SWEEP = tuple(2**power for power in range(13, 22))
QUICK_SWEEP = (2**14, 2**17)
OPENMP_SIZES = (2**15, 3 * 2**14, 2**16, 2**17, 2**18, 2**19)
"""Sizes around torch's threads' grain (one thread up to 2**15, parts above) and the kernel's."""
QUICK_OPENMP_SIZES = (3 * 2**14, 2**17)
REPEATS = 7
MIN_SAMPLE = 0.05
P = 0.5
BYTES = {"kernel": 8, "kernel+mask": 9, "xdrop.dropout": 8, "copy": 8}
"""Bytes moved per float32 element: x read, y written (and the mask)."""
BYTES_PER_ELEMENT = 13
"""Bytes held per float32 element of a size, per backend: x, y and the copy's output (4 each),
and the mask (1)."""

Contenders = dict[str, Callable[[], object]]


def _call() -> FusedCall:
    factor = spec.inverted_scale(P, "float32")
    return FusedCall((1234, 5678), 0, spec.keep_threshold(P), factor, return_mask=False)


def _numpy_contenders(size: int, threads: Iterable[int]) -> Contenders:
    x = np.random.default_rng(size).standard_normal(size, np.float32)
    y, copied = np.empty_like(x), np.empty_like(x)
    keep = np.empty(size, np.bool_)
    call = _call()
    contenders: Contenders = {}
    for count in threads:

        def run_kernel(count: int = count, mask: np.ndarray | None = None) -> None:
            kernel.set_threads(count)
            kernel.host_dropout(x, y, mask, "float32", call)

        def public(count: int = count) -> None:
            kernel.set_threads(count)
            xdrop.dropout(x, P, seed=7)

        contenders[f"kernel/{count}"] = run_kernel
        contenders[f"kernel+mask/{count}"] = functools.partial(run_kernel, count, keep)
        contenders[f"xdrop.dropout/{count}"] = public
        contenders[f"copy/{count}"] = _numpy_copy(x, copied, count)
    return contenders


def _numpy_copy(x: np.ndarray, out: np.ndarray, count: int) -> Callable[[], None]:
    if count == 1:
        return lambda: np.copyto(out, x)
    pool = concurrent.futures.ThreadPoolExecutor(count)
    bounds = [len(x) * part // count // 64 * 64 for part in range(count)] + [len(x)]
    slices = [slice(bounds[part], bounds[part + 1]) for part in range(count)]

    def copy() -> None:
        for done in [pool.submit(np.copyto, out[part], x[part]) for part in slices]:
            done.result()

    return copy


def _torch_contenders(size: int, threads: Iterable[int]) -> Contenders:
    import torch

    x = torch.from_numpy(np.random.default_rng(size).standard_normal(size, np.float32))
    y, copied = torch.empty_like(x), torch.empty_like(x)
    keep = torch.empty(size, dtype=torch.bool)
    call = _call()
    contenders: Contenders = {}
    for count in threads:

        def run_kernel(count: int = count, mask: Any = None) -> None:
            kernel.set_threads(count)
            torch.set_num_threads(count)
            mask_array = None if mask is None else mask.numpy()
            kernel.host_dropout(x.numpy(), y.numpy(), mask_array, "float32", call, openmp=True)

        def public(count: int = count) -> None:
            kernel.set_threads(count)
            torch.set_num_threads(count)
            xdrop.dropout(x, P, seed=7)

        def copy(count: int = count) -> None:
            torch.set_num_threads(count)
            copied.copy_(x)

        contenders[f"kernel/{count}"] = run_kernel
        contenders[f"kernel+mask/{count}"] = functools.partial(run_kernel, count, keep)
        contenders[f"xdrop.dropout/{count}"] = public
        contenders[f"copy/{count}"] = copy
    return contenders


BACKENDS = {"numpy": _numpy_contenders, "torch": _torch_contenders}


def _fits(size: int, backends: int) -> bool:
    """Whether x, two outputs and a mask (:data:`BYTES_PER_ELEMENT`) per backend fit in half of
    the memory available now (Linux's ``MemAvailable``: free memory and caches it may drop)."""
    available = None
    try:
        with open("/proc/meminfo") as lines:
            for line in lines:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:  # not Linux
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # nor POSIX: assume it fits
            return True
    return available is None or size * BYTES_PER_ELEMENT * backends < available / 2


def bandwidth_table(
    backends: list[str], sizes: Iterable[int], most: int, repeats: int
) -> list[str]:
    """Print one line per backend, size, contender and thread count; return the backends and
    sizes skipped for want of free memory (``numpy 1e+08``)."""
    skipped = []
    threads = sorted({1, most})
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    print(f"{'backend':<7} {'size':>7} {'contender':<14} {'threads':>7} {'time':>10} "
          f"{'GB/s':>6} {'/copy':>6} {'CPU':>10} {'speed-up':>8} {'best':>5}")  # fmt: skip
    for name in backends:
        for size in sizes:
            if not _fits(size, len(backends)):
                print(f"{name:<7} {size:>7.0e} skipped: not enough free memory")
                skipped.append(f"{name} {size:.0e}")
                continue
            contenders = BACKENDS[name](size, threads)
            timings, failures = time_interleaved(contenders, repeats, MIN_SAMPLE)
            cpu = {case: _cpu_seconds(call) for case, call in contenders.items()}
            for failure in failures.items():
                print(f"{name:<7} {size:>7.0e} failed: {failure}")
            for contender in BYTES:
                for count in threads:
                    timing = timings[f"{contender}/{count}"]
                    rate = BYTES[contender] * size / timing.median / 1e9
                    copy_rate = 8 * size / timings[f"copy/{count}"].median / 1e9
                    one = timings[f"{contender}/1"]
                    speed_up = "" if count == 1 else f"{paired_ratio(one, timing):8.2f} "
                    speed_up += "" if count == 1 else f"{_best(one) / _best(timing):5.2f}"
                    print(f"{name:<7} {size:>7.0e} {contender:<14} {count:>7} "
                          f"{_seconds(timing):>10} {rate:6.1f} {rate / copy_rate:6.2f} "
                          f"{_format(cpu[f'{contender}/{count}']):>10} {speed_up}")  # fmt: skip
    kernel.set_threads()
    if torch is not None and torch_threads is not None:
        torch.set_num_threads(torch_threads)
    return skipped


def sweep_table(sizes: Iterable[int], most: int, repeats: int) -> None:
    """The kernel's speed-up on ``most`` threads over one, every call split (grain 1)."""
    print(f"\nkernel on {most} threads over 1 thread, NumPy float32, every call split (grain 1)")
    print(f"{'size':>8} {'1 thread':>10} {f'{most} threads':>10} {'speed-up':>8} {'best':>5}")
    call = _call()
    for size in sizes:
        x = np.random.default_rng(size).standard_normal(size, np.float32)
        y = np.empty_like(x)

        contenders: Contenders = {"1": _split(x, y, call, 1), "n": _split(x, y, call, most)}
        timings, _ = time_interleaved(contenders, repeats, MIN_SAMPLE)
        one, several = timings["1"], timings["n"]
        print(f"{size:>8} {_seconds(one):>10} {_seconds(several):>10} "
              f"{paired_ratio(one, several):8.2f} {_best(one) / _best(several):5.2f}")  # fmt: skip
    kernel.set_threads()


def after_torch_table(sizes: Iterable[int], most: int, repeats: int) -> None:
    """``xdrop.dropout`` of a CPU torch tensor right after a torch operation, on one thread and
    on ``most``: the operation's OpenMP threads keep their cores busy for a while after it."""
    print(f"\nx + 1 then xdrop.dropout(x), torch float32, torch.set_num_threads({most}); "
          "dropout: the step's time less that of x + 1")  # fmt: skip
    _after_torch_rows(
        sizes, most, repeats, {"1 thread": (1, None), f"{most} threads": (most, None)}
    )


def openmp_grain_table(sizes: Iterable[int], most: int, repeats: int) -> None:
    """As :func:`after_torch_table` on ``most`` threads, torch's threads split by torch's rule
    at their own grain (:data:`xdrop.kernel.OPENMP_GRAIN`) against the kernel's threads' grain
    (:data:`xdrop.kernel.GRAIN`)."""
    print(f"\nAs above on {most} threads, torch's threads split above {kernel.OPENMP_GRAIN} "
          f"elements against above {kernel.GRAIN}")  # fmt: skip
    grains = {f"{kernel.GRAIN}": (most, kernel.GRAIN), f"{kernel.OPENMP_GRAIN}": (most, None)}
    _after_torch_rows(sizes, most, repeats, grains)


def _after_torch_rows(
    sizes: Iterable[int], most: int, repeats: int, settings: dict[str, tuple[int, int | None]]
) -> None:
    """A row per size: the time of ``x + 1``, that of the dropout after it with each of two
    ``kernel.set_threads(count, grain=grain)`` settings, and the first over the second."""
    import torch

    first, second = settings
    print(f"{'size':>8} {'x + 1':>10} {first:>10} {second:>10} {'speed-up':>8}")
    before = torch.get_num_threads()
    torch.set_num_threads(most)
    for size in sizes:
        contenders = _after_torch_contenders(size, settings)
        timings, _ = time_interleaved(contenders, repeats, MIN_SAMPLE)
        operation = timings["op"].median
        one, two = (timings[name].median - operation for name in settings)
        # at a small size the dropout's share may be below the noise of the operation's time
        speed_up = f"{one / two:8.2f}" if one > 0 and two > 0 else f"{'-':>8}"
        print(f"{size:>8} {_format(operation):>10} {_format(one):>10} {_format(two):>10} "
              f"{speed_up}")  # fmt: skip
    torch.set_num_threads(before)
    kernel.set_threads()


def _after_torch_contenders(size: int, settings: dict[str, tuple[int, int | None]]) -> Contenders:
    import torch

    x = torch.from_numpy(np.random.default_rng(size).standard_normal(size, np.float32))
    z = torch.empty_like(x)

    def step(count: int, grain: int | None) -> Callable[[], None]:
        def once() -> None:
            kernel.set_threads(count, grain=grain)
            torch.add(x, 1, out=z)
            xdrop.dropout(x, P, seed=7)

        return once

    steps = {name: step(*setting) for name, setting in settings.items()}
    return {"op": lambda: torch.add(x, 1, out=z), **steps}


def _split(x: np.ndarray, y: np.ndarray, call: FusedCall, count: int) -> Callable[[], None]:
    def once() -> None:
        kernel.set_threads(count, grain=1)
        kernel.host_dropout(x, y, None, "float32", call)

    return once


def _cpu_seconds(call: Callable[[], object], least: float = 0.2) -> float:
    """The processor time of one call, every thread of the process counted (what the call costs
    the machine, however long it waited for cores): the median of calls adding up to ``least``
    seconds or three calls."""
    seconds: list[float] = []
    while len(seconds) < 3 or sum(seconds) < least:
        start = time.process_time()
        call()
        seconds.append(time.process_time() - start)
    return statistics.median(seconds)


def _best(timing: Timing) -> float:
    return min(timing.samples)


def _seconds(timing: Timing) -> str:
    return _format(timing.median)


def _format(value: float) -> str:
    return f"{value * 1e3:.2f} ms" if value >= 1e-3 else f"{value * 1e6:.1f} us"


def _sizes(text: str) -> list[int]:
    sizes = []
    for part in text.replace(",", " ").split():
        sizes.append(element_count(part))
    if not sizes:
        raise argparse.ArgumentTypeError(f"sizes like 1e6,1e7 expected, got {text!r}")
    return sizes


def _too_large(sizes: Iterable[int], backends: int) -> str | None:
    """Why the largest of ``sizes`` cannot be timed on this machine, whatever else runs (as
    ``xdrop bench --sizes`` refuses it), or None."""
    memory = memory_bytes()
    largest = max(sizes)
    needed = largest * BYTES_PER_ELEMENT * backends
    if memory is None or needed <= memory:
        return None
    return (
        f"{largest:.0e} elements need about {needed / 2**30:,.0f} GiB ({BYTES_PER_ELEMENT} bytes "
        f"each: the input, two outputs and a mask, for {backends} backend(s)), more than this "
        f"machine's {memory / 2**30:,.0f} GiB"
    )


def main(argv: list[str] | None = None) -> int:
    """Measure and print the tables; exit status 1 where a size could not be timed for want of
    free memory, 2 with one line for a bad argument (a size beyond this machine's memory too)."""
    parser = argparse.ArgumentParser(
        prog="python -m xdrop.benchmarks.bandwidth",
        description=(__doc__ or "").split("\n\n")[0],
    )
    parser.add_argument("--quick", action="store_true", help="sizes 1e5 and 1e6, 3 rounds")
    parser.add_argument("--sizes", type=_sizes, help="e.g. 1e6,1e7 (default 1e6,1e7,1e8)")
    parser.add_argument("--threads", type=int, help="the several-thread count (default: all)")
    parser.add_argument("--backends", nargs="*", help="numpy, torch (default: both, if installed)")
    parser.add_argument("--repeats", type=int, help=f"rounds (default {REPEATS})")
    arguments = parser.parse_args(argv)
    if kernel.compiled is None:
        parser.error(f"the compiled kernel is not built here: {kernel.MISSING}")
    unknown = [name for name in arguments.backends or () if name not in BACKENDS]
    if unknown:
        parser.error(f"argument --backends: unknown {', '.join(map(repr, unknown))}; "
                     f"known: {', '.join(BACKENDS)}")  # fmt: skip
    try:
        if arguments.threads is not None:
            kernel.set_threads(arguments.threads)
        most = kernel.threads()
    except xdrop.XdropError as error:
        parser.error(f"argument --threads: {error}")
    if arguments.repeats is not None and arguments.repeats < 1:
        parser.error(f"argument --repeats: at least 1 expected, got {arguments.repeats}")
    backends = arguments.backends or [name for name in BACKENDS if _installed(name)]
    missing = [name for name in backends if not _installed(name)]
    if missing:
        parser.error(f"argument --backends: not installed here: {', '.join(map(repr, missing))}")
    sizes = arguments.sizes or (QUICK_SIZES if arguments.quick else SIZES)
    too_large = _too_large(sizes, len(backends))
    if too_large:
        parser.error(f"argument --sizes: {too_large}")
    repeats = arguments.repeats or (3 if arguments.quick else REPEATS)
    load = (
        ", ".join(f"{value:.1f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    )
    print(f"{kernel.status()}; load average {load} on {os.cpu_count()} cores")
    skipped = bandwidth_table(backends, sizes, most, repeats)
    sweep_table(QUICK_SWEEP if arguments.quick else SWEEP, most, repeats)
    if "torch" in backends:
        after_torch_table(
            [size for size in sizes if f"torch {size:.0e}" not in skipped], most, repeats
        )
        if most > 1:  # a split needs two threads
            openmp_grain_table(
                QUICK_OPENMP_SIZES if arguments.quick else OPENMP_SIZES, most, repeats
            )
    if skipped:  # a table with holes is not a benchmark that ran (as xdrop bench says)
        print(f"{parser.prog}: FAILED: not enough free memory to time {', '.join(skipped)}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


def _installed(name: str) -> bool:
    if name == "numpy":
        return True
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    sys.exit(main())
