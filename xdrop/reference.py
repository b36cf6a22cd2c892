"""Mask stream v1 in plain Python integers: the executable form of ``docs/spec.md``.

This module is deliberately independent of the array implementation in :mod:`xdrop.spec`: it
shares no code with it, works one element at a time and uses exact rational arithmetic for every
floating-point step. The golden conformance cases are produced from it, so a bug in the array
code cannot hide by also living here. It is slow by design; never call it on real tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

WORD = 0xFFFF_FFFF
ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
KEY_PARITY = 0x1BD1_1BDA

# precision (significand bits, hidden bit included), smallest and largest normal exponent
FLOAT_FORMATS = {
    "float16": (11, -14, 15),
    "bfloat16": (8, -126, 127),
    "float32": (24, -126, 127),
    "float64": (53, -1022, 1023),
}


def threefry2x32(key: tuple[int, int], counter: tuple[int, int]) -> tuple[int, int]:
    """Threefry-2x32 with 20 rounds (Salmon et al., SC 2011; Random123) on two 32-bit words."""
    k0, k1 = key
    schedule = (k0, k1, k0 ^ k1 ^ KEY_PARITY)
    x0 = (counter[0] + schedule[0]) & WORD
    x1 = (counter[1] + schedule[1]) & WORD
    for round_index in range(20):
        rotation = ROTATIONS[round_index % 8]
        x0 = (x0 + x1) & WORD
        x1 = ((x1 << rotation) | (x1 >> (32 - rotation))) & WORD
        x1 ^= x0
        if round_index % 4 == 3:
            injection = (round_index + 1) // 4
            x0 = (x0 + schedule[injection % 3]) & WORD
            x1 = (x1 + schedule[(injection + 1) % 3] + injection) & WORD
    return x0, x1


def seed_key(seed: int) -> tuple[int, int]:
    """The key of a 64-bit seed: its high and low words."""
    return seed >> 32, seed & WORD


def element_bits(seed: int, index: int) -> int:
    """The 32 random bits of element ``index`` (flat index plus offset) of the stream of ``seed``."""
    y0, y1 = threefry2x32(seed_key(seed), (index >> 32, index & WORD))
    return y0 ^ y1


def fold_in(seed: int, data: int) -> int:
    """A new seed derived from ``seed`` and a 32-bit integer ``data``."""
    y0, y1 = threefry2x32(seed_key(seed), (0, data))
    return (y0 << 32) | y1


def round_to(value: Fraction, dtype: str) -> float:
    """``value`` rounded to nearest-even in ``dtype``, with subnormals and overflow to infinity."""
    precision, min_exponent, max_exponent = FLOAT_FORMATS[dtype]
    if value == 0:
        return 0.0
    magnitude = abs(value)
    exponent = magnitude.numerator.bit_length() - magnitude.denominator.bit_length()
    if Fraction(2) ** exponent > magnitude:
        exponent -= 1
    quantum = Fraction(2) ** (max(exponent, min_exponent) - precision + 1)
    rounded = round(magnitude / quantum) * quantum  # round() on a Fraction ties to even
    overflows = rounded >= Fraction(2) ** (max_exponent + 1)
    return math.copysign(math.inf if overflows else float(rounded), value)


def keep_threshold(p: float) -> int:
    """``T = ceil(float32(1 - p) * 2**23) << 9``: an element is kept when its bits are below T."""
    keep_probability = round_to(Fraction(1.0 - p), "float32")
    return math.ceil(Fraction(keep_probability) * 2**23) << 9


def inverted_scale(p: float, dtype: str) -> float:
    """``dtype(1) / dtype(1 - p)``, rounded once; infinite where ``dtype(1 - p)`` is 0."""
    keep_probability = round_to(Fraction(1.0 - p), dtype)
    if keep_probability == 0:
        return math.inf
    return round_to(1 / Fraction(keep_probability), dtype)


def complete_noise_shape(
    shape: Sequence[int], noise_shape: Sequence[int | None] | None
) -> tuple[int, ...]:
    """Right-align ``noise_shape`` against ``shape``; missing leading dims and ``None`` follow
    the rule of the spec (1 and the input's size respectively)."""
    if noise_shape is None:
        return tuple(shape)
    padded = [1] * (len(shape) - len(noise_shape)) + list(noise_shape)
    return tuple(
        size if entry is None else entry for size, entry in zip(shape, padded, strict=True)
    )


def keep_mask(seed: int, p: float, count: int, offset: int = 0) -> list[bool]:
    """The keep decisions of ``count`` consecutive elements starting at ``offset``."""
    threshold = keep_threshold(p)
    return [element_bits(seed, offset + i) < threshold for i in range(count)]


def _multiply(value: float, factor: float, dtype: str) -> float:
    """IEEE ``value * factor`` in ``dtype`` for a non-negative ``factor``, rounded once."""
    if not math.isfinite(value):
        return value * factor
    return math.copysign(round_to(abs(Fraction(value) * Fraction(factor)), dtype), value)


def dropout(
    values: Sequence[float],
    shape: Sequence[int],
    p: float,
    seed: int,
    *,
    dtype: str,
    mode: str = "inverted",
    training: bool = True,
    noise_shape: Sequence[int | None] | None = None,
    offset: int = 0,
) -> tuple[list[float], list[bool]]:
    """Dropout of the row-major ``values`` of an array of ``shape``: ``(outputs, keep)``.

    ``keep`` has one entry per element of the input (the noise mask broadcast)."""
    if not training:
        factor = 1.0 if mode == "inverted" else round_to(Fraction(1.0 - p), dtype)
        scaled = list(values) if factor == 1.0 else [_multiply(v, factor, dtype) for v in values]
        return scaled, [True] * len(values)
    noise = complete_noise_shape(shape, noise_shape)
    noise_keep = keep_mask(seed, p, math.prod(noise), offset)
    factor = inverted_scale(p, dtype) if mode == "inverted" and p < 1 else 1.0
    outputs: list[float] = []
    keep: list[bool] = []
    for flat_index, value in enumerate(values):
        kept = noise_keep[_noise_index(flat_index, shape, noise)]
        keep.append(kept)
        outputs.append(_multiply(value, factor, dtype) if kept else 0.0)
    return outputs, keep


def _noise_index(flat_index: int, shape: Sequence[int], noise: Sequence[int]) -> int:
    """The row-major index in the noise array of the element at ``flat_index`` of the input."""
    index = 0
    stride = 1
    for size, noise_size in zip(reversed(shape), reversed(noise), strict=True):
        flat_index, position = divmod(flat_index, size)
        if noise_size == size:
            index += position * stride
            stride *= noise_size
    return index
