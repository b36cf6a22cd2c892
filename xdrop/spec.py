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
from xdrop.protocol import (
    Array,
    Backend,
    Dim,
    FamilyBackend,
    Key,
    LossOps,
    RateBackend,
    WordArithmetic,
    Words,
    require,
)
from xdrop.tracing import cached_host_constant, host_constant

WORD_COUNT = 2**32
SEED_COUNT = 2**64
ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)
KEY_PARITY = 0x1BD1_1BDA
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
MODES = ("inverted", "classic")


# -- seed -> key ------------------------------------------------------------------------------------
def key_words(ops: WordArithmetic, seed: int, like: Array | None = None) -> Key:
    """The key of a 64-bit seed: ``(seed >> 32, seed & 0xFFFFFFFF)``."""
    # // and % rather than divmod: torch.compile traces them on a Python int it made a graph input
    return ops.word(seed // WORD_COUNT, like), ops.word(seed % WORD_COUNT, like)


# -- key, counter -> bits ---------------------------------------------------------------------------
def key_schedule(ops: WordArithmetic, key: Key) -> list[tuple[Words, Words]]:
    """The words that key injection ``j = 0 .. 5`` of Threefry-2x32 adds to ``(x0, x1)``:
    ``(ks[j mod 3], ks[(j + 1) mod 3] + j)`` with ``ks = (k0, k1, k0 ^ k1 ^ 0x1BD11BDA)``."""
    k0, k1 = key
    ks = (k0, k1, ops.word_xor(ops.word_xor(k0, k1), ops.word(KEY_PARITY, k0)))
    return [(k0, k1)] + [
        (ks[j % 3], ops.word_add(ks[(j + 1) % 3], ops.word(j, k0))) for j in range(1, 6)
    ]


def threefry2x32(
    ops: WordArithmetic,
    key: Key,
    counter: tuple[Words, Words],
    schedule: list[tuple[Words, Words]] | None = None,
) -> tuple[Words, Words]:
    """Threefry-2x32-20 (Salmon et al., SC 2011): five groups of four mix rounds, with a key
    injection before the first and after each. ``schedule`` is ``key_schedule(ops, key)``, for
    a caller that computes it once for many counters."""
    if schedule is None:
        schedule = key_schedule(ops, key)
    x0, x1 = ops.word_add(counter[0], schedule[0][0]), ops.word_add(counter[1], schedule[0][1])
    for group in range(5):  # x0 and x1 are new words from here on: updated in place
        for rotation in ROTATIONS[4 * (group % 2) : 4 * (group % 2) + 4]:
            x0 = ops.word_iadd(x0, x1)
            x1 = ops.word_ixor(ops.word_irotate_left(x1, rotation), x0)
        x0 = ops.word_iadd(x0, schedule[group + 1][0])
        x1 = ops.word_iadd(x1, schedule[group + 1][1])
    return x0, x1


def counter_words(xp: Backend, start: Key, count: Dim, like: Array | None) -> tuple[Words, Words]:
    """The words ``(c >> 32, c & 0xFFFFFFFF)`` of the counters ``c = start + i``, ``0 <= i < count``
    (``count <= 2**32``): the low word wraps around and carries into the high word, so a range may
    cross a multiple of 2**32 and ``start`` may be a traced value."""
    start_high, start_low = start
    low = xp.word_iadd(xp.iota(count, like), start_low)
    carry = xp.word_from_bool(xp.word_less_than(low, start_low))
    return xp.word_iadd(carry, start_high), low


def stream_bits(
    xp: Backend,
    key: Key,
    start: Key,
    count: Dim,
    like: Array | None,
    schedule: list[tuple[Words, Words]] | None = None,
) -> Words:
    """``bits_i = y0 ^ y1`` with ``(y0, y1) = Threefry(key, counter(start + i))``, ``0 <= i < count``."""
    y0, y1 = threefry2x32(xp, key, counter_words(xp, start, count, like), schedule)
    return xp.word_ixor(y0, y1)


def counter_chunks(offset: int, count: int, chunk: int | None) -> Iterator[tuple[int, int]]:
    """Split the counters ``offset .. offset + count`` into ranges of at most ``chunk`` elements
    (one range for ``chunk=None``)."""
    stop = offset + count
    step = max(count if chunk is None else chunk, 1)
    for start in range(offset, stop, step):
        yield start, min(start + step, stop)


# -- threshold -> keep ------------------------------------------------------------------------------
UNIFORM_BITS = 23  # the uniform float of JAX is (bits >> 9) * 2**-23
ALL_KEPT = 1 << UNIFORM_BITS


@cached_host_constant
def keep_count(p: float) -> int:
    """``C = ceil(float32(1 - p) * 2**23)``: element ``i`` is kept when ``bits_i >> 9 < C``,
    which is ``bits_i < C << 9`` and exactly JAX's ``uniform(key) < float32(q)``.

    ``C == 0`` only for ``p == 1``; ``C == 2**23`` keeps everything."""
    keep_probability = float(np.float32(1.0 - p))
    return math.ceil(keep_probability * ALL_KEPT)  # scaling by 2**23 is exact in float64


def keep_threshold(p: float) -> int:
    """``T = C << 9`` (``keep_count``): element ``i`` is kept when ``bits_i < T``. ``T == 0`` only
    for ``p == 1``; ``T == 2**32`` keeps everything."""
    return keep_count(p) << (32 - UNIFORM_BITS)


def kept(xp: Backend, bits: Words, count: Words | int) -> Array:
    """``keep_i = (bits_i >> 9) < C`` for a keep count ``C`` (a word, or a Python int)."""
    return xp.word_less_than(xp.word_shift_right(bits, 32 - UNIFORM_BITS), count)


def keep_chunks(
    xp: Backend,
    key: Key,
    count: Dim,
    kept_count: Words | int,
    offset: Key | int = 0,
    like: Array | None = None,
) -> Iterator[Array]:
    """The flat keep mask of ``count`` elements, ``keep_i = bits(offset + i) >> 9 < C``, as
    consecutive 1-d chunks, each generated when asked for.

    ``kept_count`` (``C``) and ``offset`` are Python ints, or words while tracing; ``count`` is a
    dim. Chunks hold ``xp.chunk_size`` elements in eager execution, and the mask is one chunk while
    tracing: element ``i`` depends on ``i`` alone, so chunking changes nothing but the
    temporaries."""
    if isinstance(count, int) and count == 0:
        yield xp.full_mask((0,), False, like)
        return
    if isinstance(kept_count, int) and kept_count in (0, ALL_KEPT):
        yield xp.full_mask((count,), kept_count == ALL_KEPT, like)
        return
    schedule = key_schedule(xp, key)
    if xp.is_tracing(like) or not isinstance(offset, int) or not isinstance(count, int):
        first = offset if not isinstance(offset, int) else key_words(xp, offset, like)
        yield kept(xp, stream_bits(xp, key, first, count, like, schedule), kept_count)
        return
    for start, stop in counter_chunks(offset, count, xp.chunk_size):
        first = key_words(xp, start, like)
        keep = kept(xp, stream_bits(xp, key, first, stop - start, like, schedule), kept_count)
        check_chunk_size(
            xp, keep, stop - start
        )  # a plugin's wrong size must not leave output unwritten
        yield keep


def check_chunk_size(xp: Backend, chunk: Array, size: int) -> None:
    """A chunk of the keep mask must hold the ``size`` elements asked for."""
    if xp.shape(chunk) != (size,):
        raise BackendError(
            f"xdrop backend {xp.name!r} made a mask chunk of shape {xp.shape(chunk)} from its "
            f"word operations: {xp.size(xp.shape(chunk))} elements, not {size}"
        )


def keep_mask(
    xp: Backend,
    key: Key,
    shape: tuple[Dim, ...],
    kept_count: Words | int,
    offset: Key | int = 0,
    like: Array | None = None,
) -> Array:
    """The boolean keep mask of ``shape``: element ``i`` (row-major) draws counter ``offset + i``."""
    chunks = list(keep_chunks(xp, key, xp.size(shape), kept_count, offset, like))
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


def training_factor(p: float, dtype: str, mode: str) -> float | None:
    """What kept units are multiplied by in training: ``s`` (inverted), or nothing (classic, and
    ``p == 1``, where no unit is kept and an infinite scale would make gradients NaN)."""
    if mode == "classic" or p == 1:
        return None
    return inverted_scale(p, dtype)


RATE_IN_AN_ARRAY = ("a rate held in an array", "pass p as a Python float")
"""What a rate held in an array needs, and what a backend without it can do instead."""


def rate_constants(
    backend: Backend, p: Array, dtype: str, mode: str, training: bool
) -> tuple[Words, Array | None]:
    """``(C, factor)`` for a rate held in a 0-d float array while tracing, bit for bit what
    ``keep_count``, ``training_factor`` (training) and ``rounded(1 - p, dtype)`` (evaluation,
    classic) give for the float it holds.

    A rate outside ``[0, 1]`` (or NaN), or whose inverted scale is not finite in ``dtype``,
    cannot raise inside a graph: it keeps every unit and makes the factor NaN, so the whole
    output is NaN rather than quietly wrong. Computed in float64 where the framework has it
    (the host's arithmetic), else in float32, which is exact for the float32 rate it then holds;
    ``_rounded_difference`` rounds ``1 - p`` to ``dtype`` once."""
    xp = require(backend, RateBackend, *RATE_IN_AN_ARRAY)
    compute = "float64" if xp.has_float64() else "float32"
    rate = xp.astype(p, compute)
    valid = in_unit_interval(xp, rate)
    difference = xp.subtract(1.0, rate)
    keep_probability = _rounded_difference(xp, rate, difference, dtype, compute)
    if not training:  # classic evaluation: x * dtype(1 - p)
        factor = keep_probability
    elif mode == "classic":  # kept units unscaled: a factor of 1 that carries the NaN
        factor = xp.astype(valid, dtype)
    else:
        quotient = xp.astype(xp.divide(1.0, xp.astype(keep_probability, compute)), dtype)
        nothing_kept = xp.equal(keep_probability, 0.0)
        finite = xp.equal(xp.subtract(quotient, quotient), 0.0)  # inf - inf is NaN
        valid = xp.logical_and(valid, xp.logical_or(nothing_kept, finite))
        factor = xp.where(nothing_kept, 0.0, quotient)
    scaled = xp.multiply(xp.astype(difference, "float32"), float(ALL_KEPT))
    kept_count = xp.word_from_float(xp.where(valid, xp.ceil(scaled), float(ALL_KEPT)))
    return kept_count, xp.where(valid, factor, math.nan)


def in_unit_interval(xp: LossOps, rate: Array) -> Array:
    """Whether a rate held in an array lies in ``[0, 1]`` (False for NaN): a graph cannot raise,
    so what is outside makes the output NaN instead (``rate_constants``, the dropout family)."""
    at_least_zero = xp.where(xp.less_equal(0.0, rate), rate, math.nan)
    return xp.less_equal(at_least_zero, 1.0)


def _rounded_difference(
    xp: RateBackend, rate: Array, difference: Array, dtype: str, compute: str
) -> Array:
    """``dtype(1 - p)``: ``difference`` (``1 - p`` in ``compute``, as the host computes it in
    float64, or exact) rounded once to ``dtype``.

    A cast to float32 or float64 rounds once. To float16 and bfloat16 a framework may cast
    through float32 (PyTorch does), and ``difference`` may itself be float32's rounding of
    ``1 - p``: rounding twice goes wrong only where ``r = float32(difference)`` is exactly halfway
    between two values of ``dtype`` and ``r`` is not the whole value. The residual ``e`` (exact:
    Fast2Sum in float32, a subtraction of close numbers in float64) then says which is right."""
    if dtype in ("float32", "float64"):
        return xp.astype(difference, dtype)
    if compute == "float32":
        head, residual = difference, xp.subtract(xp.subtract(1.0, difference), rate)
    else:
        head = xp.astype(difference, "float32")
        residual = xp.subtract(difference, xp.astype(head, compute))
    nearest = xp.astype(head, dtype)
    back = xp.astype(nearest, "float32")
    across = xp.add(head, xp.subtract(head, back))  # 2r - back: exact, the neighbour across r
    other = xp.astype(across, dtype)
    exact = xp.logical_or(xp.equal(residual, 0.0), xp.equal(head, back))
    halfway = xp.logical_and(_not(xp, exact), xp.equal(xp.astype(other, "float32"), across))
    other_is_right = xp.equal(xp.less_equal(across, head), xp.less_equal(residual, 0.0))
    return xp.where(xp.logical_and(halfway, other_is_right), other, nearest)


def _not(xp: RateBackend, mask: Array) -> Array:
    # compared as numbers: torch.jit.trace records no comparison of a tensor with a Python bool
    return xp.equal(xp.astype(mask, "float32"), 0.0)


def keep_probability(xp: Backend, p: float | Array) -> float | Array:
    """``1 - p``, the probability of keeping a unit, for a float or a rate held in an array."""
    if isinstance(p, float):
        return 1.0 - p
    return require(xp, RateBackend, *RATE_IN_AN_ARRAY).subtract(1.0, p)


def dropout(
    xp: Backend,
    x: Array,
    draw_keep: Callable[[], Array],
    factor: float | Array | None,
    *,
    chunked: bool = False,
    return_mask: bool = True,
) -> tuple[Array, Array | None]:
    """``(where(keep, x * factor, +0.0), keep)`` of training dropout (no multiplication for
    ``factor=None``); ``keep`` is ``None`` when it was drawn in chunks and not asked for.

    ``draw_keep()`` gives the keep mask at the noise shape (``keep_mask``, or the framework's own
    generator in native mode), or with ``chunked`` a mask of ``x``'s shape as consecutive 1-d
    chunks (``keep_chunks``)."""
    keep = draw_keep()
    if chunked:
        return xp.select_chunks(keep, x, factor, return_mask)
    kept_values = x if factor is None else xp.scale(x, factor)
    return xp.select(keep, kept_values), keep


# -- bits -> normals (gaussian_dropout) ------------------------------------------------------------
NORMAL_BITS = 24  # uniforms on a grid of 2**-24: exact in float32
TWO_PI = float(np.float32(2 * math.pi))  # 2 pi rounded to float32


def stream_words(
    xp: Backend, key: Key, start: Key, count: Dim, like: Array | None
) -> tuple[Words, Words]:
    """Both output words ``(y0, y1) = Threefry(key, counter(start + i))``, ``0 <= i < count``:
    the words whose xor is ``stream_bits``."""
    return threefry2x32(xp, key, counter_words(xp, start, count, like))


def normals(
    xp: FamilyBackend,
    key: Key,
    shape: tuple[Dim, ...],
    offset: Key | int = 0,
    like: Array | None = None,
) -> Array:
    """Standard normal float32 values of ``shape`` by Box-Muller, element ``i`` (row-major) from
    the two words of counter ``offset + i``::

        u1 = ((y0 >> 8) + 1) * 2**-24        in (0, 1]   (exact in float32)
        u2 = (y1 >> 8) * 2**-24              in [0, 1)   (exact in float32)
        z  = sqrt(-2 * log(u1)) * cos(float32(2 pi) * u2)

    every operation in float32. ``u1``, ``u2``, the products and ``sqrt`` are correctly rounded,
    so they are the same bits on every backend; ``log`` and ``cos`` are the framework's, within
    an ulp or two of the true values, which bounds how far backends may differ (docs/spec.md)."""
    start = offset if not isinstance(offset, int) else key_words(xp, offset, like)
    y0, y1 = stream_words(xp, key, start, xp.size(shape), like)
    return xp.reshape(box_muller(xp, y0, y1), shape)


def box_muller(xp: FamilyBackend, y0: Words, y1: Words) -> Array:
    """The standard normals of :func:`normals` from the two words of each counter, elementwise."""
    grid = 2.0**-NORMAL_BITS
    shift = 32 - NORMAL_BITS
    u1 = xp.multiply(xp.add(xp.astype(xp.word_shift_right(y0, shift), "float32"), 1.0), grid)
    u2 = xp.multiply(xp.astype(xp.word_shift_right(y1, shift), "float32"), grid)
    radius = xp.sqrt(xp.multiply(xp.log(u1), -2.0))
    return xp.multiply(radius, xp.cos(xp.multiply(u2, TWO_PI)))


# -- derived seeds ----------------------------------------------------------------------------------
def fold_in_words(ops: WordArithmetic, key: Key, data: Words) -> tuple[Words, Words]:
    """The key words of ``fold_in``: ``Threefry(key, (0, data))``."""
    return threefry2x32(ops, key, (ops.word(0, data), data))


class HostWords(WordArithmetic):
    """Word arithmetic on Python ints, for seeds known on the host (a few microseconds a seed)."""

    def word(self, value: int, like: Array | None = None) -> int:
        return value

    def word_add(self, a: int, b: int) -> int:
        return (a + b) & (WORD_COUNT - 1)

    def word_xor(self, a: int, b: int) -> int:
        return a ^ b

    def word_rotate_left(self, a: int, bits: int) -> int:
        return ((a << bits) | (a >> (32 - bits))) & (WORD_COUNT - 1)

    def word_shift_right(self, a: int, bits: int) -> int:
        return a >> bits

    def word_less_than(self, a: int, b: int) -> bool:
        return a < b

    def word_from_bool(self, mask: bool) -> int:
        return int(mask)

    # Python ints are immutable: the in-place forms are the plain ones, without the indirection
    word_iadd, word_ixor, word_irotate_left = word_add, word_xor, word_rotate_left


HOST_WORDS = HostWords()


def fold_in(seed: int, data: int) -> int:
    """``fold_in`` of host integers: the seed ``(y0 << 32) | y1`` of ``Threefry(key(seed), (0, data))``."""
    y0, y1 = fold_in_words(HOST_WORDS, key_words(HOST_WORDS, seed), data)
    return (int(y0) << 32) | int(y1)
