"""Fused dropout of CUDA tensors in Triton: the algorithm of ``xdrop/_kernel.c``, same bits.

Each program handles ``BLOCK`` consecutive elements of the row-major ``x``; element ``i`` draws
counter ``c = offset + i``, split into the words ``(c >> 32, c & 0xFFFFFFFF)``::

    (y0, y1) = Threefry-2x32-20((k0, k1), (c >> 32, c & 0xFFFFFFFF))
    keep_i   = ((y0 ^ y1) >> 9) < (T >> 9)           T = keep_threshold(p), up to 2**32
    y_i      = keep_i ? x_i * s : +0.0               (x_i without a scale)

float16 and bfloat16 are multiplied in float32 (exact) and rounded once to nearest-even, as torch
does. Importing this module imports Triton; :mod:`xdrop.torch_kernel` does so only for CUDA
tensors. Without a GPU, ``TRITON_INTERPRET=1`` runs it on CPU tensors (``tests/test_kernel.py``).
"""

from __future__ import annotations

import struct
from typing import Any

import triton
import triton.language as tl

from xdrop.fused import FusedCall

BLOCK = 1024


@triton.jit
def _rotl(x: Any, bits: tl.constexpr) -> Any:
    return (x << bits) | (x >> (32 - bits))


@triton.jit
def _mix(x0: Any, x1: Any, bits: tl.constexpr) -> Any:
    x0 = x0 + x1
    x1 = _rotl(x1, bits) ^ x0
    return x0, x1


@triton.jit
def _four_rounds(
    x0: Any,
    x1: Any,
    inject0: Any,
    inject1: Any,
    R0: tl.constexpr,
    R1: tl.constexpr,
    R2: tl.constexpr,
    R3: tl.constexpr,
) -> Any:
    """Four rounds of Threefry-2x32 with the rotations ``R0..R3``, then the key injection
    ``(inject0, inject1)``: a fifth of the twenty rounds."""
    x0, x1 = _mix(x0, x1, R0)
    x0, x1 = _mix(x0, x1, R1)
    x0, x1 = _mix(x0, x1, R2)
    x0, x1 = _mix(x0, x1, R3)
    return x0 + inject0, x1 + inject1


@triton.jit
def _widen_bfloat16(x: Any) -> Any:
    """bfloat16 to float32 (exact) as a shift of the bits: Triton's interpreter mangles
    subnormals otherwise."""
    return (x.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)


@triton.jit
def _round_bfloat16(value: Any) -> Any:
    """float32 to bfloat16, to nearest-even, spelled out in integer arithmetic: Triton's
    interpreter truncates instead; NaN stays a quiet NaN with its sign."""
    bits = value.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    quiet_nan = (bits >> 16) | 0x40
    is_nan = (bits & 0x7FFFFFFF) > 0x7F800000
    return tl.where(is_nan, quiet_nan, rounded).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _dropout_kernel(
    x_ptr: Any,
    y_ptr: Any,
    keep_ptr: Any,
    count: Any,
    key0: Any,
    key1: Any,
    offset_high: Any,
    offset_low: Any,
    limit: Any,
    factor_bits: Any,
    SCALED: tl.constexpr,
    HAS_KEEP: tl.constexpr,
    BLOCK: tl.constexpr,
) -> None:
    start = tl.program_id(0).to(tl.int64) * BLOCK
    index = start + tl.arange(0, BLOCK).to(tl.int64)
    inside = index < count
    # the 64-bit counter offset + index, as two words with the carry of the low addition
    low_sum = offset_low.to(tl.uint64) + index.to(tl.uint64)
    c0 = offset_high.to(tl.uint32) + (low_sum >> 32).to(tl.uint32)
    c1 = (low_sum & 0xFFFFFFFF).to(tl.uint32)
    k0 = key0.to(tl.uint32)
    k1 = key1.to(tl.uint32)
    k2 = k0 ^ k1 ^ 0x1BD11BDA
    # the rotations alternate between two sets of four (spec.ROTATIONS)
    x0, x1 = _four_rounds(c0 + k0, c1 + k1, k1, k2 + 1, 13, 15, 26, 6)
    x0, x1 = _four_rounds(x0, x1, k2, k0 + 2, 17, 29, 16, 24)
    x0, x1 = _four_rounds(x0, x1, k0, k1 + 3, 13, 15, 26, 6)
    x0, x1 = _four_rounds(x0, x1, k1, k2 + 4, 17, 29, 16, 24)
    x0, x1 = _four_rounds(x0, x1, k2, k0 + 5, 13, 15, 26, 6)
    keep = ((x0 ^ x1) >> 9) < limit.to(tl.uint32)
    x = tl.load(x_ptr + index, mask=inside)
    if SCALED:
        factor = factor_bits.to(tl.int64).to(tl.float64, bitcast=True)  # exact in x's dtype
        if x.dtype == tl.float64:
            value = x * factor
        elif x.dtype == tl.bfloat16:
            value = _round_bfloat16(_widen_bfloat16(x) * factor.to(tl.float32))
        else:  # float16 products are exact in float32: one rounding, to nearest-even
            value = (x.to(tl.float32) * factor.to(tl.float32)).to(x.dtype)
    else:
        value = x
    tl.store(y_ptr + index, tl.where(keep, value, 0.0).to(x.dtype), mask=inside)
    if HAS_KEEP:
        tl.store(keep_ptr + index, keep, mask=inside)


def write(source: Any, y: Any, keep: Any, call: FusedCall) -> None:
    """``call``'s pass over the contiguous CUDA tensor ``source`` into ``y`` (its shape and
    dtype) and ``keep`` (booleans; None: no mask), as :mod:`xdrop.torch_kernel` allocates them."""
    count = source.numel()
    if not count:
        return
    # the scale travels as the bits of a float64 (Triton passes Python floats as float32)
    factor = 1.0 if call.factor is None else call.factor
    (factor_bits,) = struct.unpack("<q", struct.pack("<d", factor))
    k0, k1 = call.key
    _dropout_kernel[(triton.cdiv(count, BLOCK),)](
        source, y, y if keep is None else keep, count, k0, k1, call.offset >> 32,
        call.offset & 0xFFFF_FFFF, call.threshold >> 9, factor_bits,
        SCALED=call.factor is not None, HAS_KEEP=keep is not None, BLOCK=BLOCK,
    )  # fmt: skip
