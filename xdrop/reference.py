"""Mask stream v1 in plain Python integers: the executable form of ``docs/spec.md``; and the
R-Dropout losses of ``docs/rdrop.md`` in plain Python floats.

This module is deliberately independent of the array implementations in :mod:`xdrop.spec` and
:mod:`xdrop.rdrop`: it shares no code with them and works one element at a time. The dropout part
uses exact rational arithmetic for every floating-point step; the R-Dropout part computes in
float64 with correctly rounded sums (``math.fsum``), each KL direction on its own, straight from
the definitions. The golden conformance cases are produced from it, so a bug in the array code
cannot hide by also living here. It is slow by design; never call it on real tensors.
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
    # the sign from a comparison: float(value) itself may overflow (a float64 product)
    return math.copysign(math.inf if overflows else float(rounded), -1.0 if value < 0 else 1.0)


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


# -- R-Dropout -------------------------------------------------------------------------------------
# A row is the logits of one position (one class distribution), as Python floats.


def log_softmax(row: Sequence[float]) -> list[float]:
    """``log(exp(z_c) / sum_k exp(z_k))`` for each class; a ``-inf`` logit gives ``-inf``."""
    finite = [value for value in row if value != -math.inf]
    if not finite:
        return [math.nan] * len(row)
    top = max(finite)
    log_total = top + math.log(math.fsum(math.exp(value - top) for value in finite))
    return [-math.inf if value == -math.inf else value - log_total for value in row]


def kl_divergence(log_p: Sequence[float], log_q: Sequence[float]) -> float:
    """``KL(P || Q) = sum_c p_c (log p_c - log q_c)``; classes with ``p_c == 0`` add nothing."""
    terms = []
    for log_pc, log_qc in zip(log_p, log_q, strict=True):
        p_c = math.exp(log_pc)
        if p_c > 0:
            terms.append(p_c * (log_pc - log_qc))
    return math.fsum(terms)


def symmetric_kl(row1: Sequence[float], row2: Sequence[float]) -> float:
    """``(KL(P1 || P2) + KL(P2 || P1)) / 2`` of two rows of logits."""
    log_p1, log_p2 = log_softmax(row1), log_softmax(row2)
    return (kl_divergence(log_p1, log_p2) + kl_divergence(log_p2, log_p1)) / 2


def cross_entropy(row: Sequence[float], label: int, label_smoothing: float = 0.0) -> float:
    """``-sum_c t_c log p_c`` for the target ``t = (1 - e) onehot(label) + e / C``."""
    log_p = log_softmax(row)
    if label_smoothing == 0:
        return -log_p[label]
    return (1 - label_smoothing) * -log_p[label] + label_smoothing * -math.fsum(log_p) / len(row)


def reduce_losses(
    values: Sequence[float], kept: Sequence[bool], reduction: str, batch: int
) -> float | list[float]:
    """Per-position ``values`` with the positions not ``kept`` set to 0, then reduced: ``"none"``,
    ``"sum"``, ``"mean"`` (over the kept positions) or ``"batchmean"`` (over ``batch``); a
    division by 0 positions divides by 1."""
    values = [value if keep else 0.0 for value, keep in zip(values, kept, strict=True)]
    if reduction == "none":
        return values
    divisor = {"sum": 1, "batchmean": max(batch, 1), "mean": max(sum(kept), 1)}[reduction]
    return math.fsum(values) / divisor


def rdrop_kl(
    rows1: Sequence[Sequence[float]],
    rows2: Sequence[Sequence[float]],
    padded: Sequence[bool],
    reduction: str,
    batch: int,
) -> float | list[float]:
    """The R-Drop KL term over positions: :func:`symmetric_kl` per row, padded rows 0, reduced."""
    values = [
        0.0 if pad else symmetric_kl(row1, row2)
        for row1, row2, pad in zip(rows1, rows2, padded, strict=True)
    ]
    return reduce_losses(values, [not pad for pad in padded], reduction, batch)


def rdrop_loss(
    rows1: Sequence[Sequence[float]],
    rows2: Sequence[Sequence[float]],
    labels: Sequence[int],
    padded: Sequence[bool],
    *,
    alpha: float,
    ignore_index: int | None,
    label_smoothing: float,
    reduction: str,
    batch: int,
) -> float | list[float]:
    """``CE(P1, y) + CE(P2, y) + alpha * KL_sym(P1, P2)`` per position (Liang et al. 2021, eq. 3),
    padded positions and those labelled ``ignore_index`` 0, reduced."""
    kept = [not pad and label != ignore_index for label, pad in zip(labels, padded, strict=True)]
    values = []
    for r1, r2, label, keep in zip(rows1, rows2, labels, kept, strict=True):
        if not keep:
            values.append(0.0)
            continue
        loss = cross_entropy(r1, label, label_smoothing) + cross_entropy(r2, label, label_smoothing)
        if alpha:
            loss += alpha * symmetric_kl(r1, r2)
        values.append(loss)
    return reduce_losses(values, kept, reduction, batch)
