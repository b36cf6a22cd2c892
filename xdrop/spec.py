"""Dropout and mask stream v1, written once against the backend protocol.

The module reads top-down like ``docs/spec.md``:
seed -> key -> counter -> bits -> threshold -> keep -> scale -> output.
Everything here is a pure function of its arguments; ``xp`` is a :class:`~xdrop.protocol.Backend`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from xdrop.errors import BackendError
from xdrop.protocol import Array, Backend, Key, WordOps, Words
from xdrop.tracing import cached_host_constant, host_constant

WORD_COUNT = 2**32
SEED_COUNT = 2**64
ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
KEY_PARITY = 0x1BD1_1BDA
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
MODES = ("inverted", "classic")


# -- seed -> key ------------------------------------------------------------------------------------
def key_words(ops: WordOps, seed: int, like: Array | None = None) -> Key:
    """The key of a 64-bit seed: ``(seed >> 32, seed & 0xFFFFFFFF)``."""
    high, low = divmod(seed, WORD_COUNT)
    return ops.word(high, like), ops.word(low, like)


# -- key, counter -> bits ---------------------------------------------------------------------------
def key_schedule(ops: WordOps, key: Key) -> list[tuple[Words, Words]]:
    """The words that key injection ``j = 0 .. 5`` of Threefry-2x32 adds to ``(x0, x1)``:
    ``(ks[j mod 3], ks[(j + 1) mod 3] + j)`` with ``ks = (k0, k1, k0 ^ k1 ^ 0x1BD11BDA)``."""
    k0, k1 = key
    ks = (k0, k1, ops.xor(ops.xor(k0, k1), ops.word(KEY_PARITY, k0)))
    return [(k0, k1)] + [
        (ks[j % 3], ops.add(ks[(j + 1) % 3], ops.word(j, k0))) for j in range(1, 6)
    ]


def threefry2x32(
    ops: WordOps,
    key: Key,
    counter: tuple[Words, Words],
    schedule: list[tuple[Words, Words]] | None = None,
) -> tuple[Words, Words]:
    """Threefry-2x32-20 (Salmon et al., SC 2011): five groups of four mix rounds, with a key
    injection before the first and after each. ``schedule`` is ``key_schedule(ops, key)``, for
    a caller that computes it once for many counters."""
    if schedule is None:
        schedule = key_schedule(ops, key)
    x0, x1 = ops.add(counter[0], schedule[0][0]), ops.add(counter[1], schedule[0][1])
    for group in range(5):  # x0 and x1 are new words from here on: updated in place
        for rotation in ROTATIONS[4 * (group % 2) : 4 * (group % 2) + 4]:
            x0 = ops.iadd(x0, x1)
            x1 = ops.ixor(ops.irotate_left(x1, rotation), x0)
        x0 = ops.iadd(x0, schedule[group + 1][0])
        x1 = ops.iadd(x1, schedule[group + 1][1])
    return x0, x1


def counter_ranges(offset: int, count: int, chunk: int | None) -> Iterator[tuple[int, int]]:
    """Split the counters ``offset .. offset + count`` into ranges of at most ``chunk`` elements
    that never cross a multiple of 2**32, so each range has a single high counter word."""
    start, stop = offset, offset + count
    while start < stop:
        end = min(stop, (start // WORD_COUNT + 1) * WORD_COUNT)
        if chunk is not None:
            end = min(end, start + chunk)
        yield start, end
        start = end


def stream_bits(
    xp: Backend,
    key: Key,
    start: int,
    stop: int,
    like: Array | None,
    schedule: list[tuple[Words, Words]] | None = None,
) -> Words:
    """``bits_i = y0 ^ y1`` with ``(y0, y1) = Threefry(key, (i >> 32, i & 0xFFFFFFFF))`` for
    ``start <= i < stop``, a range inside one block of 2**32 counters."""
    high, low = divmod(start, WORD_COUNT)
    low_words = xp.iota(stop - start, like)
    if low:
        low_words = xp.iadd(low_words, xp.word(low, like))
    y0, y1 = threefry2x32(xp, key, (xp.word(high, like), low_words), schedule)
    return xp.ixor(y0, y1)


# -- threshold -> keep ------------------------------------------------------------------------------
@cached_host_constant
def keep_threshold(p: float) -> int:
    """``T = ceil(float32(1 - p) * 2**23) << 9``; element ``i`` is kept when ``bits_i < T``.

    This is exactly JAX's ``uniform(key) < float32(q)``: the uniform float is ``(bits >> 9) * 2**-23``.
    ``T == 0`` only for ``p == 1``; ``T == 2**32`` keeps everything."""
    keep_probability = float(np.float32(1.0 - p))
    return math.ceil(keep_probability * 2**23) << 9  # scaling by 2**23 is exact in float64


def keep_chunks(
    xp: Backend, key: Key, count: int, p: float, offset: int = 0, like: Array | None = None
) -> Iterator[Array]:
    """The flat keep mask of ``count`` elements, ``keep_i = bits(offset + i) < T``, as
    consecutive 1-d chunks, each generated when asked for.

    Chunks hold ``xp.chunk_size`` elements in eager execution, and are whole while tracing:
    element ``i`` depends on ``i`` alone, so chunking changes nothing but the temporaries."""
    threshold = keep_threshold(p)
    if threshold == 0 or threshold >= WORD_COUNT or count == 0:
        yield xp.full_mask((count,), threshold >= WORD_COUNT, like)
        return
    schedule = key_schedule(xp, key)
    chunk = None if xp.is_tracing(like) else xp.chunk_size
    for start, stop in counter_ranges(offset, count, chunk):
        keep = xp.less_than(stream_bits(xp, key, start, stop, like, schedule), threshold)
        if chunk is not None:  # eagerly: a plugin's wrong size must not leave output unwritten
            check_chunk_size(xp, keep, stop - start)
        yield keep


def check_chunk_size(xp: Backend, chunk: Array, size: int) -> None:
    """A chunk of the keep mask must hold the ``size`` elements asked for."""
    if xp.shape(chunk) != (size,):
        raise BackendError(
            f"xdrop backend {xp.name!r} made a mask chunk of shape {xp.shape(chunk)} from its "
            f"word operations: {math.prod(xp.shape(chunk))} elements, not {size}"
        )


def keep_mask(
    xp: Backend,
    key: Key,
    shape: tuple[int, ...],
    p: float,
    offset: int = 0,
    like: Array | None = None,
) -> Array:
    """The boolean keep mask of ``shape``: element ``i`` (row-major) draws counter ``offset + i``."""
    chunks = list(keep_chunks(xp, key, math.prod(shape), p, offset, like))
    return xp.reshape(chunks[0] if len(chunks) == 1 else xp.concat(chunks), shape)


# -- scale -> output --------------------------------------------------------------------------------
@host_constant
def rounded(value: float, dtype: str) -> float:
    """``value`` rounded to nearest-even in ``dtype``, returned as the (exact) Python float."""
    if dtype == "bfloat16":
        return _round_bfloat16(value)
    with np.errstate(over="ignore"):  # overflow to infinity is the rounding asked for
        return float(np.dtype(dtype).type(value))


def _round_bfloat16(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    _, exponent = math.frexp(value)  # 2**(exponent - 1) <= |value| < 2**exponent
    if exponent > 128:
        return math.copysign(math.inf, value)
    step = max(exponent, -125) - 8  # 8 significant bits; below 2**-126 the step stays 2**-133
    magnitude = math.ldexp(round(math.ldexp(abs(value), -step)), step)  # round() ties to even
    return math.copysign(magnitude if magnitude < 2.0**128 else math.inf, value)


@cached_host_constant
def inverted_scale(p: float, dtype: str) -> float:
    """``s = dtype(1) / dtype(1 - p)``, rounded once in ``dtype`` (infinite if ``dtype(1 - p)`` is 0).

    The quotient is formed in float64 and rounded to ``dtype``: float64 carries more than twice
    the precision of the narrower formats plus two bits, so the double rounding is exact."""
    keep_probability = rounded(1.0 - p, dtype)
    return rounded(1.0 / keep_probability, dtype) if keep_probability else math.inf


def dropout(
    xp: Backend,
    x: Array,
    p: float,
    draw_keep: Callable[[], Array],
    *,
    mode: str,
    training: bool,
    chunked: bool = False,
    return_mask: bool = True,
) -> tuple[Array, Array | None]:
    """``(output, keep)`` of dropout; ``keep`` is ``None`` when everything is kept, or when it
    was drawn in chunks and not asked for (``return_mask=False``).

    ``draw_keep()`` gives the keep mask at the noise shape (``keep_mask``, or the framework's own
    generator in native mode), or with ``chunked`` a mask of ``x``'s shape as consecutive 1-d
    chunks (``keep_chunks``); it is called only when units are dropped.

    inverted: training ``where(keep, x * s, 0)``, eval ``x``.
    classic:  training ``where(keep, x, 0)``,     eval ``x * dtype(1 - p)``.
    """
    dtype = xp.dtype_name(x)
    if not training:
        if mode == "inverted" or p == 0:
            return x, None
        return xp.multiply(x, rounded(1.0 - p, dtype)), None
    if p == 0:
        return x, None
    keep = draw_keep()
    # p == 1 keeps nothing: selecting x unscaled avoids an infinite scale, whose product with the
    # zero gradient of a dropped unit would be NaN
    factor = None if mode == "classic" or p == 1 else inverted_scale(p, dtype)
    if chunked:
        return xp.select_chunks(keep, x, factor, return_mask)
    kept_values = x if factor is None else xp.multiply(x, factor)
    return xp.select(keep, kept_values), keep


# -- derived seeds ----------------------------------------------------------------------------------
def fold_in_words(ops: WordOps, key: Key, data: Words) -> tuple[Words, Words]:
    """The key words of ``fold_in``: ``Threefry(key, (0, data))``."""
    return threefry2x32(ops, key, (ops.word(0, data), data))


class HostWords(WordOps):
    """Word arithmetic on Python ints, for seeds known on the host (a few microseconds a seed)."""

    def word(self, value: int, like: Array | None = None) -> int:
        return value

    def add(self, a: int, b: int) -> int:
        return (a + b) & (WORD_COUNT - 1)

    def xor(self, a: int, b: int) -> int:
        return a ^ b

    def rotate_left(self, a: int, bits: int) -> int:
        return ((a << bits) | (a >> (32 - bits))) & (WORD_COUNT - 1)


HOST_WORDS = HostWords()


def fold_in(seed: int, data: int) -> int:
    """``fold_in`` of host integers: the seed ``(y0 << 32) | y1`` of ``Threefry(key(seed), (0, data))``."""
    y0, y1 = fold_in_words(HOST_WORDS, key_words(HOST_WORDS, seed), data)
    return (int(y0) << 32) | int(y1)
