"""R-Dropout (Liang et al., NeurIPS 2021, arXiv 2106.14448), written once over the backend protocol.

The module reads top-down like ``docs/rdrop.md``:
logits -> log-probabilities -> symmetric KL and cross entropy per position -> padded and ignored
positions set to 0 -> reduction; then the loss of a regression head; then the forward-twice
helpers.
Everything here is a pure function of its arguments; ``xp`` is a :class:`~xdrop.protocol.Backend`
and the arguments have been validated (:mod:`xdrop.rdrop_api`).

A *position* is one class distribution: the logits' shape without the class axis.
"""

from __future__ import annotations

from xdrop.protocol import Array, Backend, Dim, LossBackend

REDUCTIONS = ("sum", "mean", "batchmean", "none")
HALF_DTYPES = ("float16", "bfloat16")
MIN_HALF_ALPHA = 2.0**-100
"""``alpha / 2`` from here up is a normal number in float32, so ``x * (alpha / 2)`` rounds as
``(x * 0.5) * alpha`` does (the product by 0.5 is exact): the loss multiplies once."""


def compute_dtype(dtype: str) -> str:
    """The dtype losses are computed and returned in: float32 for half inputs, else ``dtype``."""
    return "float32" if dtype in HALF_DTYPES else dtype


def position_shape(shape: tuple[Dim, ...], axis: int) -> tuple[Dim, ...]:
    """The logits' shape without the class axis (``axis`` is non-negative)."""
    return shape[:axis] + shape[axis + 1 :]


def with_class_axis(xp: LossBackend, a: Array, axis: int) -> Array:
    """A per-position array given a size-1 class axis, to broadcast against logits."""
    shape = xp.runtime_shape(a)
    return xp.reshape(a, (*shape[:axis], 1, *shape[axis:]))


def element_count(xp: LossBackend, shape: tuple[Dim, ...], dtype: str) -> float | Array:
    """The number of elements of ``shape``, at least 1 (a divisor): a float, or a 0-d array of
    ``dtype`` where a size is known only at run time."""
    count = xp.size(shape)
    if isinstance(count, int):
        return float(max(count, 1))
    as_array = xp.dim_array(count, dtype)
    return xp.where(xp.equal(as_array, 0.0), 1.0, as_array)


# -- logits -> log-probabilities -------------------------------------------------------------------
def log_probabilities(
    xp: LossBackend, logits: Array, axis: int, excluded: Array | None, dtype: str
) -> Array:
    """``log softmax(logits)`` over ``axis`` in ``dtype``.

    The logits of excluded positions are replaced by zeros first: their values are discarded later
    anyway, and so garbage there (``-inf`` rows, NaN) cannot turn their zero gradient into NaN.
    """
    if xp.dtype_name(logits) != dtype:
        logits = xp.astype(logits, dtype)
    if excluded is not None:
        logits = xp.where(with_class_axis(xp, excluded, axis), 0.0, logits)
    return xp.log_softmax(logits, axis)


# -- symmetric KL per position ---------------------------------------------------------------------
def symmetric_kl(xp: LossBackend, logp1: Array, logp2: Array, axis: int) -> Array:
    """``(KL(P1||P2) + KL(P2||P1)) / 2`` per position, as ``1/2 sum_c (p1 - p2) (log p1 - log p2)``.

    Each class term is a product of two differences of the same sign, so the result is
    non-negative, exactly symmetric and exactly 0 for identical inputs. A class with probability 0
    under both (a ``-inf`` logit in both) contributes 0: its log-ratio is replaced by 0 before the
    product, so neither ``-inf - -inf`` nor a NaN gradient reaches the result. A class with
    probability 0 under one distribution only makes the divergence ``+inf``, as it should.
    """
    return xp.multiply(twice_symmetric_kl(xp, logp1, logp2, axis), 0.5)


def twice_symmetric_kl(xp: LossBackend, logp1: Array, logp2: Array, axis: int) -> Array:
    """``KL(P1||P2) + KL(P2||P1) = sum_c (p1 - p2) (log p1 - log p2)`` per position: both
    directions in one product and one sum, over the logits' size: 2 ``exp``, 2 ``subtract``, an
    ``add``, an ``equal``, a ``where``, a ``multiply`` and a ``sum``.

    The ``where`` acts on the difference of the log-probabilities: ``subtract``'s gradient is
    ``+-1``, so the ``NaN`` it computes for ``-inf - -inf`` is never multiplied into a gradient.
    """
    p1, p2 = xp.exp(logp1), xp.exp(logp2)
    impossible = xp.equal(xp.add(p1, p2), 0.0)
    log_ratio = xp.where(impossible, 0.0, xp.subtract(logp1, logp2))
    return xp.sum(xp.multiply(xp.subtract(p1, p2), log_ratio), axis)


# -- cross entropy per position --------------------------------------------------------------------
def cross_entropy(
    xp: LossBackend, logp: Array, labels: Array, axis: int, label_smoothing: float
) -> Array:
    """``-log p[label]`` per position; with smoothing ``e`` over ``C`` classes, PyTorch's
    ``(1 - e) * (-log p[label]) + e * (-sum_c log p_c) / C``.

    ``labels`` must be valid class indices everywhere (excluded positions were given class 0).
    """
    picked = xp.take_along_axis(logp, with_class_axis(xp, labels, axis), axis)
    nll = xp.multiply(xp.reshape(picked, xp.runtime_shape(labels)), -1.0)
    if label_smoothing == 0:
        return nll
    classes = xp.shape(logp)[axis]  # known while tracing (checked)
    assert classes is not None
    uniform = xp.multiply(xp.sum(logp, axis), -1.0 / classes)
    return xp.add(xp.multiply(nll, 1.0 - label_smoothing), xp.multiply(uniform, label_smoothing))


def picked_sum(xp: LossBackend, logp1: Array, logp2: Array, labels: Array, axis: int) -> Array:
    """``log p1[label] + log p2[label]`` per position: ``-(CE1 + CE2)`` without smoothing."""
    index = with_class_axis(xp, labels, axis)
    picked = xp.add(xp.take_along_axis(logp1, index, axis), xp.take_along_axis(logp2, index, axis))
    return xp.reshape(picked, xp.runtime_shape(labels))


# -- excluded positions -> reduction ---------------------------------------------------------------
def excluded_positions(
    xp: LossBackend, pad_mask: Array | None, labels: Array | None, ignore_index: int | None
) -> Array | None:
    """Boolean per position: padded (``pad_mask`` True) or labelled ``ignore_index``; or None."""
    if labels is None or ignore_index is None:
        return pad_mask
    ignored = xp.equal(labels, ignore_index)
    return ignored if pad_mask is None else xp.logical_or(pad_mask, ignored)


def reduce(
    xp: LossBackend,
    values: Array,
    excluded: Array | None,
    reduction: str,
    dtype: str,
    covered: float | Array = 1.0,
) -> Array:
    """Excluded positions set to exactly 0, then reduced.

    ``"none"``: per position. ``"sum"``: the total. ``"batchmean"``: the total over the size of the
    first axis. ``"mean"``: the total over the number of positions not excluded. A division by a
    count of 0 (no positions, or all excluded) divides by 1 instead: the result is 0, not NaN.
    ``excluded`` may have size-1 trailing axes that broadcast over ``covered`` values each.
    """
    shape = xp.runtime_shape(values)
    if excluded is not None:
        values = xp.where(excluded, 0.0, values)
    if reduction == "none":
        return values
    total = xp.sum(values)
    if reduction == "sum":
        return total
    if reduction == "batchmean":
        return xp.divide(total, element_count(xp, shape[:1], dtype))
    count = element_count(xp, shape, dtype)
    if excluded is None:
        return xp.divide(total, count)
    dropped = xp.sum(xp.astype(excluded, dtype))
    if not (isinstance(covered, float) and covered == 1.0):
        dropped = xp.multiply(dropped, covered)
    kept = xp.subtract(count, dropped)  # count >= 1 is exact otherwise
    return xp.divide(total, xp.where(xp.equal(kept, 0.0), 1.0, kept))


# -- the losses ------------------------------------------------------------------------------------
def kl_loss(
    xp: LossBackend,
    logits1: Array,
    logits2: Array,
    axis: int,
    pad_mask: Array | None,
    reduction: str,
) -> Array:
    """The symmetric KL of the two passes, padded positions 0, reduced."""
    dtype = compute_dtype(xp.dtype_name(logits1))
    logp1 = log_probabilities(xp, logits1, axis, pad_mask, dtype)
    logp2 = log_probabilities(xp, logits2, axis, pad_mask, dtype)
    return reduce(xp, symmetric_kl(xp, logp1, logp2, axis), pad_mask, reduction, dtype)


def rdrop_loss(
    xp: LossBackend,
    logits1: Array,
    logits2: Array,
    labels: Array,
    *,
    alpha: float,
    axis: int,
    pad_mask: Array | None,
    ignore_index: int | None,
    label_smoothing: float,
    reduction: str,
) -> Array:
    """Per position ``CE(P1, y) + CE(P2, y) + alpha * KL_sym(P1, P2)`` (the paper's formula),
    padded and ignored positions 0, reduced.

    Each pass's log-probabilities are computed once and feed both its cross entropy and the KL;
    without smoothing the two cross entropies are one ``add`` of the picked log-probabilities.
    """
    dtype = compute_dtype(xp.dtype_name(logits1))
    excluded = excluded_positions(xp, pad_mask, labels, ignore_index)
    if excluded is not None:
        labels = xp.where(excluded, 0, labels)  # any valid class will do: the value is dropped
    logp1 = log_probabilities(xp, logits1, axis, excluded, dtype)
    logp2 = log_probabilities(xp, logits2, axis, excluded, dtype)
    if alpha == 0:
        kl = None
    elif alpha * 0.5 >= MIN_HALF_ALPHA:  # one multiply: the same rounding as by 0.5, then alpha
        kl = xp.multiply(twice_symmetric_kl(xp, logp1, logp2, axis), alpha * 0.5)
    else:
        kl = xp.multiply(symmetric_kl(xp, logp1, logp2, axis), alpha)
    if label_smoothing == 0:  # -a + -b == -(a + b) and k + -s == k - s: the same bits
        picked = picked_sum(xp, logp1, logp2, labels, axis)
        loss = xp.multiply(picked, -1.0) if kl is None else xp.subtract(kl, picked)
    else:
        loss = xp.add(
            cross_entropy(xp, logp1, labels, axis, label_smoothing),
            cross_entropy(xp, logp2, labels, axis, label_smoothing),
        )
        loss = loss if kl is None else xp.add(loss, kl)
    return reduce(xp, loss, excluded, reduction, dtype)


# -- regression -----------------------------------------------------------------------------------
def squared_difference(xp: LossBackend, a: Array, b: Array) -> Array:
    """``(a - b) ** 2`` elementwise."""
    difference = xp.subtract(a, b)
    return xp.multiply(difference, difference)


def regression_loss(
    xp: LossBackend,
    pred1: Array,
    pred2: Array,
    targets: Array,
    *,
    alpha: float,
    pad_mask: Array | None,
    reduction: str,
) -> Array:
    """Per value ``(p1 - y)**2 + (p2 - y)**2 + alpha * (p1 - p2)**2``: both passes' squared
    errors and their squared disagreement, which takes the KL's place for a real-valued output.
    Padded values set to 0, reduced.

    ``pad_mask`` covers the predictions' shape or its leading axes (a mask of positions over the
    values each holds). The predictions and targets of padded values are replaced by zeros before
    any arithmetic, so garbage there (NaN, inf) reaches neither the result nor a gradient.
    """
    dtype = compute_dtype(xp.dtype_name(pred1))
    pred1, pred2, targets = (
        a if xp.dtype_name(a) == dtype else xp.astype(a, dtype) for a in (pred1, pred2, targets)
    )
    excluded: Array | None = None
    covered: float | Array = 1.0
    if pad_mask is not None:
        shape = xp.runtime_shape(pred1)
        trailing = len(shape) - len(xp.shape(pad_mask))
        excluded = pad_mask
        if trailing:
            excluded = xp.reshape(pad_mask, (*xp.runtime_shape(pad_mask), *(1,) * trailing))
            per_position = xp.size(shape[len(shape) - trailing :])
            covered = (
                float(per_position)
                if isinstance(per_position, int)
                else xp.dim_array(per_position, dtype)
            )
        pred1, pred2, targets = (xp.where(excluded, 0.0, a) for a in (pred1, pred2, targets))
    loss = xp.add(squared_difference(xp, pred1, targets), squared_difference(xp, pred2, targets))
    if alpha != 0:
        loss = xp.add(loss, xp.multiply(squared_difference(xp, pred1, pred2), alpha))
    return reduce(xp, loss, excluded, reduction, dtype, covered)


# -- forward twice ---------------------------------------------------------------------------------
def doubled(xp: Backend, x: Array, axis: int) -> Array:
    """``concat([x, x], axis)``: one batch holding every sample twice, so a model with dropout draws
    two independent masks for each sample in a single call."""
    return xp.concat([x, x], axis)


def halves(xp: LossBackend, y: Array, axis: int) -> tuple[Array, Array]:
    """The outputs of the first and of the second copy of the batch."""
    first, second = xp.split(y, 2, axis)
    return first, second
