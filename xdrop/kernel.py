"""Fused dropout: mask stream v1 generated and applied in one pass by a compiled kernel.

The spec (:mod:`xdrop.spec`) runs Threefry as a hundred framework operations per chunk. Where
a backend can hand its buffers to compiled code — NumPy arrays, CPU ``torch.Tensor``\\ s and
TensorFlow's CPU tensors in eager execution (recorded on a tape too) — the C extension
``xdrop._kernel`` (``xdrop/_kernel.c``) computes, for element ``i`` of ``x`` in row-major order::

    (y0, y1) = Threefry-2x32-20((k0, k1), (c >> 32, c & 0xFFFFFFFF))    c = offset + i
    keep_i   = (y0 ^ y1) < T                                            T = keep_threshold(p)
    y_i      = x_i * s if keep_i else +0.0                              s = inverted_scale(p, dtype)

with ``x_i`` itself instead of ``x_i * s`` in classic mode and for ``p == 1``: the bits that
:func:`xdrop.spec.dropout` gives, with no temporaries but the output (and the mask, if asked).
Strided inputs are first copied to row-major order. CUDA tensors run the same algorithm as a
Triton kernel (:mod:`xdrop.triton_kernel`).

``XDROP_KERNEL=0`` turns fused kernels off (``1`` or unset: on where available): the spec's
operations then run, with the same bits. The variable is read once, when xdrop is imported;
:func:`refresh` reads it again after a change to ``os.environ``. Another value makes every call
that would use a kernel raise an :class:`~xdrop.errors.ArgumentValueError` naming it (``xdrop
info`` reports it). A machine without a C compiler installs xdrop without the extension, and it
runs as with ``XDROP_KERNEL=0``.

A call of ``n`` elements runs on ``min(threads(), n // grain)`` threads (at least one), each
over its own part of the buffer; the bits do not depend on the split. :func:`set_threads` sets
the count and the grain; ``XDROP_KERNEL_THREADS`` sets the count too, read with
``XDROP_KERNEL``; by default it is the number of cores this process may run on. On CPU
``torch.Tensor``\\ s the count is also capped by ``torch.get_num_threads()``, which torch users
set to limit all of a process's tensor work, and the parts run on torch's OpenMP threads (on
Linux, found through the runtime ``libtorch_cpu.so`` links), as torch's operations do: those
keep their cores busy for a while after each operation, so threads started beside them waited
for a core and ran slower than one thread (``docs/performance.md``). Started already, they repay
smaller parts, and a call splits over them as torch's operations do: above one grain
(``OPENMP_GRAIN`` by default, torch's own), on ``min(threads, ceil(n / grain))`` of them. A
child forked after xdrop was imported, where those threads no longer exist, starts its own.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any

import numpy as np

from xdrop import spec
from xdrop.errors import XdropError, bad_type, bad_value
from xdrop.fused import FusedCall
from xdrop.protocol import Array, Backend, Key
from xdrop.validation import as_integer

ENVIRONMENT_VARIABLE = "XDROP_KERNEL"
THREADS_VARIABLE = "XDROP_KERNEL_THREADS"
MAX_THREADS = 256
"""The most threads one call may use (the compiled kernel's limit)."""
GRAIN = 2**17
"""Elements per thread at least, by default: where the start of a thread (tens of microseconds)
is repaid by the part it takes over (``docs/performance.md``, "Threads and memory bandwidth")."""
OPENMP_GRAIN = 2**15
"""The grain by default on torch's OpenMP threads, which are started already: torch's own
(``at::internal::GRAIN_SIZE``). As torch's operations do, a call of ``n`` elements above it runs
on ``min(threads, ceil(n / grain))`` of them (``docs/performance.md``, "After a torch
operation")."""

compiled: ModuleType | None
try:
    from xdrop import _kernel as compiled

    MISSING: str | None = None
except ImportError as error:  # built without a compiler, or the build failed: the spec's path
    compiled = None
    MISSING = str(error)


_THREADED = compiled is not None and compiled.THREADING != "none"
"""Whether the kernel was built with threads (POSIX or Windows) to split a call over."""
_ALLOWED = '"0" (off) or "1" (on where available)'
_THREADS_ALLOWED = f"a whole number from 1 to {MAX_THREADS} (unset or empty: the cores available)"
_setting = ""
"""``XDROP_KERNEL`` as :func:`refresh` last read it, stripped."""
_threads_setting = ""
"""``XDROP_KERNEL_THREADS`` as :func:`refresh` last read it, stripped."""
_chosen: int | None = None
"""The count :func:`set_threads` was given (None: the variable's, or the cores')."""
_threads = 1
"""The thread count calls pass to the kernel; 0 while ``XDROP_KERNEL_THREADS`` is bad."""
_grain = GRAIN
_openmp_grain = OPENMP_GRAIN


def refresh() -> None:
    """Read ``XDROP_KERNEL`` and ``XDROP_KERNEL_THREADS`` again. They are read once, when xdrop
    is imported, so that a call costs no look-up in ``os.environ``; a program that changes them
    later calls this (``os.environ["XDROP_KERNEL"] = "0"; xdrop.kernel.refresh()``). A count
    given to :func:`set_threads` stays in force."""
    global _setting, _threads_setting
    _setting = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    _threads_setting = os.environ.get(THREADS_VARIABLE, "").strip()
    _resolve_threads()


def set_threads(count: int | None = None, *, grain: int | None = None) -> None:
    """Set how many threads the compiled kernel may split a large call over.

    A call of ``n`` elements runs on ``min(count, n // grain)`` threads (at least one), each
    over a part of about ``n / threads`` elements; on CPU ``torch.Tensor``\\ s at most
    ``torch.get_num_threads()``, on torch's OpenMP threads, split as torch splits its operations
    (:data:`OPENMP_GRAIN`). The bits are those of one thread whatever the split.

    Args:
        count: threads from 1 to ``MAX_THREADS`` (256), or None for ``XDROP_KERNEL_THREADS``
            where it is set, else the number of cores this process may run on.
        grain: elements per thread at least (``n >= 2 * grain`` elements use two threads), and
            on torch's OpenMP threads the grain of torch's rule (above ``grain`` elements, on
            ``min(count, ceil(n / grain))`` threads); None for the defaults, ``GRAIN`` (2**17),
            measured where starting a thread pays for itself, and ``OPENMP_GRAIN`` (2**15).
            One above ``2**62`` (more elements than any array holds) is taken as ``2**62``.

    Raises:
        ArgumentTypeError: ``count`` or ``grain`` is not an integer (or None).
        ArgumentValueError: ``count`` is outside 1 to 256, or ``grain`` below 1.

    Example:
        >>> from xdrop import kernel
        >>> kernel.set_threads(1)  # one thread, whatever the size
        >>> kernel.threads()
        1
        >>> kernel.set_threads()  # back to XDROP_KERNEL_THREADS, or the cores available
    """
    global _chosen, _grain, _openmp_grain
    count = None if count is None else _check_whole("count", count, 1, MAX_THREADS)
    grain = None if grain is None else _check_whole("grain", grain, 1, None)
    _chosen = count
    # the kernel reads 64-bit counts, and no array holds 2**62 elements: a larger grain is that
    _grain = GRAIN if grain is None else min(grain, 2**62)
    _openmp_grain = OPENMP_GRAIN if grain is None else _grain
    _resolve_threads()


def threads() -> int:
    """How many threads a large call may use: the count given to :func:`set_threads`, else
    ``XDROP_KERNEL_THREADS``, else the cores this process may run on (1 where the kernel was
    built without threads). A bad ``XDROP_KERNEL_THREADS`` is an
    :class:`~xdrop.errors.ArgumentValueError` naming it."""
    if _threads == 0:
        raise bad_value(THREADS_VARIABLE, _threads_setting, _THREADS_ALLOWED)
    return _threads


def _check_whole(argument: str, value: object, low: int, high: int | None) -> int:
    whole = as_integer(value)
    if whole is None:
        raise bad_type(argument, value, "an integer or None")
    if whole < low or (high is not None and whole > high):
        span = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise bad_value(argument, value, f"an integer {span}, or None")
    return whole


def _resolve_threads() -> None:
    global _threads
    if not _THREADED:
        _threads = 1
    elif _chosen is not None:
        _threads = _chosen
    elif _threads_setting == "":
        _threads = _available_cores()
    elif _is_digits(_threads_setting) and 1 <= int(_threads_setting) <= MAX_THREADS:
        _threads = int(_threads_setting)
    else:
        _threads = 0


def _is_digits(text: str) -> bool:
    """Whether ``text`` is ASCII digits alone (``str.isdecimal`` takes other scripts' too)."""
    return text.isascii() and text.isdecimal()


def _available_cores() -> int:
    """The cores this process may run on (its affinity mask where the system has one)."""
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13
    if counter is not None:
        count = counter()
    elif hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:
        count = os.cpu_count()
    return max(1, min(count or 1, MAX_THREADS))


refresh()


def enabled() -> bool:
    """Whether fused kernels may be used: ``XDROP_KERNEL`` is unset, ``"1"`` or ``"0"``; another
    value, or a bad ``XDROP_KERNEL_THREADS`` while the kernel is on, is an
    :class:`~xdrop.errors.ArgumentValueError` naming it."""
    if _setting in ("", "1") and _threads:
        return True
    if _setting == "0":
        return False
    if _threads == 0:
        threads()  # raises
    raise bad_value(ENVIRONMENT_VARIABLE, _setting, _ALLOWED)


def usable() -> bool:
    """Whether a call that a compiled kernel could take runs it: the kernel was built and is on.
    Asked only where it would run, so that a bad setting raises there alone (not for a JAX array,
    nor a torch tensor on a device without a kernel)."""
    return compiled is not None and enabled()


def status() -> str:
    """One line on the compiled kernel, as ``xdrop info``, ``xdrop conformance`` and ``xdrop
    bench`` print it; a bad ``XDROP_KERNEL`` is reported here, not raised."""
    if compiled is None:
        return f"compiled kernel: not built ({MISSING}); the spec's operations run"
    try:
        on = enabled()
    except XdropError as error:
        return f"compiled kernel: none: {error}"
    if not on:
        return f"compiled kernel: built, off ({ENVIRONMENT_VARIABLE}=0); the spec's operations run"
    count = _threads
    split = "1 thread" if count == 1 else f"up to {count} threads, from {2 * _grain} elements"
    if count > 1 and compiled.torch_threading() == "openmp":
        split += f"; torch tensors on torch's OpenMP threads, above {_openmp_grain} elements"
    return (
        f"compiled kernel: in use (NumPy; CPU torch and TensorFlow tensors in eager mode; {split})"
    )


def dropout(
    xp: Backend,
    x: Array,
    seed: int | Key,
    offset: int,
    kept_count: int,
    factor: float | None,
    return_mask: bool,
) -> tuple[Array, Array | None] | None:
    """Training dropout of ``x`` with a mask of ``x``'s own shape, fused by the backend
    (:meth:`~xdrop.protocol.Backend.fused_dropout`): ``(y, keep or None)``, or None where no
    fused kernel applies (then the caller runs the spec). ``seed`` is a host integer or
    concrete key words;
    ``kept_count`` is ``C`` (``spec.keep_count``) and ``factor`` ``spec.training_factor``.
    The pass is planned here, once, as a :class:`~xdrop.fused.FusedCall`."""
    if type(xp).fused_dropout is Backend.fused_dropout:
        return None  # no kernel: leave the words alone
    if isinstance(seed, int):
        words = divmod(seed, spec.WORD_COUNT)
    else:  # torch words are signed
        try:
            words = (int(seed[0]) & 0xFFFF_FFFF, int(seed[1]) & 0xFFFF_FFFF)
        except RuntimeError:  # a seed torch.func.vmap batches has no one value: the spec's ops
            return None
    threshold = kept_count << (32 - spec.UNIFORM_BITS)
    return xp.fused_dropout(x, FusedCall(words, offset, threshold, factor, return_mask))


def host_dropout(
    x: np.ndarray,
    out: np.ndarray,
    keep: np.ndarray | None,
    dtype: str,
    call: FusedCall,
    most_threads: int = MAX_THREADS,
    openmp: bool = False,
) -> None:
    """Write ``call``'s pass over ``x`` into ``out`` and its keep mask into ``keep`` (unless it
    is None; ``call.return_mask`` is not read). ``x`` and ``out`` are C-contiguous arrays of one
    size holding values of ``dtype`` in native byte order (bfloat16 may come as its 16-bit
    words), ``keep`` a C-contiguous boolean array of that size. Runs on up to
    ``min(threads(), most_threads)`` threads: with ``openmp``, those of PyTorch's OpenMP runtime
    where it is loaded, split by torch's rule, in a team of the size torch's own operations get
    in the calling thread (which ``torch.get_num_threads()`` sets there first). Needs the
    compiled kernel (``compiled is not None``)."""
    assert compiled is not None
    count = _threads
    if count > most_threads or count == 0:  # 0: XDROP_KERNEL_THREADS is bad, threads() says so
        count = min(threads(), max(most_threads, 1))
    grains = (_grain, _openmp_grain if openmp else 0)  # its own threads', OpenMP's (0: none)
    compiled.dropout(
        x, out, keep, dtype, *call.key, call.offset, call.threshold, call.factor, count, *grains
    )


def numpy_dropout(x: np.ndarray, call: FusedCall) -> tuple[np.ndarray, np.ndarray | None] | None:
    """:meth:`~xdrop.protocol.Backend.fused_dropout` for NumPy arrays (and NumPy scalars, which
    give 0-d arrays, as the spec's path does). A non-contiguous ``x`` is copied to row-major
    order first; a byte-swapped one is left to the spec's operations."""
    x = np.asarray(x)
    if not x.dtype.isnative or not usable():
        return None
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    y = np.empty(x.shape, x.dtype)
    keep = np.empty(x.shape, np.bool_) if call.return_mask else None
    host_dropout(x, y, keep, _name(x.dtype), call)
    return y, keep


@functools.lru_cache
def _name(dtype: np.dtype[Any]) -> str:
    return str(dtype.name)  # "bfloat16" for ml_dtypes' type; cached, NumPy builds it in Python
