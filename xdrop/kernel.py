"""Fused dropout: mask stream v1 generated and applied in one pass by a compiled kernel.

The spec (:mod:`xdrop.spec`) runs Threefry as a hundred framework operations per chunk. Where
a backend can hand its buffers to compiled code — NumPy arrays and CPU ``torch.Tensor``\\ s, in
eager execution — the C extension ``xdrop._kernel`` (``xdrop/_kernel.c``) computes, for element
``i`` of ``x`` in row-major order::

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
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Any

import numpy as np

from xdrop import spec
from xdrop.errors import XdropError, bad_value
from xdrop.fused import FusedCall
from xdrop.protocol import Array, Backend, Key

ENVIRONMENT_VARIABLE = "XDROP_KERNEL"

compiled: ModuleType | None
try:
    from xdrop import _kernel as compiled

    MISSING: str | None = None
except ImportError as error:  # built without a compiler, or the build failed: the spec's path
    compiled = None
    MISSING = str(error)


_ALLOWED = '"0" (off) or "1" (on where available)'
_setting = ""
"""``XDROP_KERNEL`` as :func:`refresh` last read it, stripped."""


def refresh() -> None:
    """Read ``XDROP_KERNEL`` again. It is read once, when xdrop is imported, so that a call
    costs no look-up in ``os.environ``; a program that changes the variable later calls this
    (``os.environ["XDROP_KERNEL"] = "0"; xdrop.kernel.refresh()``)."""
    global _setting
    _setting = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()


refresh()


def enabled() -> bool:
    """Whether fused kernels may be used: ``XDROP_KERNEL`` is unset, ``"1"`` or ``"0"``; another
    value is an :class:`~xdrop.errors.ArgumentValueError` naming it."""
    if _setting in ("", "1"):
        return True
    if _setting == "0":
        return False
    raise bad_value(ENVIRONMENT_VARIABLE, _setting, _ALLOWED)


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
    return "compiled kernel: in use (NumPy, CPU torch tensors in eager mode)"


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
    if not enabled() or type(xp).fused_dropout is Backend.fused_dropout:
        return None  # no kernel: leave the words alone
    if isinstance(seed, int):
        words = divmod(seed, spec.WORD_COUNT)
    else:  # torch words are signed
        words = (int(seed[0]) & 0xFFFF_FFFF, int(seed[1]) & 0xFFFF_FFFF)
    threshold = kept_count << (32 - spec.UNIFORM_BITS)
    return xp.fused_dropout(x, FusedCall(words, offset, threshold, factor, return_mask))


def host_dropout(
    x: np.ndarray, out: np.ndarray, keep: np.ndarray | None, dtype: str, call: FusedCall
) -> None:
    """Write ``call``'s pass over ``x`` into ``out`` and its keep mask into ``keep`` (unless it
    is None; ``call.return_mask`` is not read). ``x`` and ``out`` are C-contiguous arrays of one
    size holding values of ``dtype`` in native byte order (bfloat16 may come as its 16-bit
    words), ``keep`` a C-contiguous boolean array of that size. Needs the compiled kernel
    (``compiled is not None``)."""
    assert compiled is not None
    k0, k1 = call.key
    compiled.dropout(x, out, keep, dtype, k0, k1, call.offset, call.threshold, call.factor)


def numpy_dropout(x: np.ndarray, call: FusedCall) -> tuple[np.ndarray, np.ndarray | None] | None:
    """:meth:`~xdrop.protocol.Backend.fused_dropout` for NumPy arrays (and NumPy scalars, which
    give 0-d arrays, as the spec's path does). A non-contiguous ``x`` is copied to row-major
    order first; a byte-swapped one is left to the spec's operations."""
    x = np.asarray(x)
    if compiled is None or not x.dtype.isnative:
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
