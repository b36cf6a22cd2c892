"""The public R-Dropout functions: validate once, pick the backend, run :mod:`xdrop.rdrop`."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypedDict, overload

import numpy as np
import numpy.typing as npt

from xdrop import rdrop
from xdrop.errors import Shown, bad_type, bad_value
from xdrop.protocol import Array, Backend, LossBackend, require
from xdrop.registry import backend_for
from xdrop.spec import FLOAT_DTYPES
from xdrop.tracing import called_as_is
from xdrop.typing import ArrayT, OutputT, PythonValues, Reduction
from xdrop.validation import (
    SIZES_KNOWN,
    ArrayDescription,
    as_input_array,
    bad_array,
    bad_array_type,
    check_alpha,
    check_axis,
    check_float_dtype,
    check_ignore_index,
    check_label_smoothing,
    check_labels_in_range,
    check_position_array,
    check_reduction,
    is_integer_dtype,
    shapes_agree,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    class _KlOptions(TypedDict, total=False):
        """The keywords of :func:`rdrop_kl` but ``reduction``."""

        axis: int
        pad_mask: Any

    class _LossOptions(_KlOptions, total=False):
        """The keywords of :func:`rdrop_loss` but ``reduction``."""

        alpha: float
        ignore_index: int | None
        label_smoothing: float

    class _RegressionOptions(TypedDict, total=False):
        """The keywords of :func:`rdrop_regression_loss` but ``reduction``."""

        alpha: float
        pad_mask: Any


# the result's type follows the logits' type and the reduction; Python values give Any
@overload
def rdrop_kl(
    logits1: PythonValues,
    logits2: Any,
    *,
    reduction: Reduction = ...,
    **options: Unpack[_KlOptions],
) -> Any: ...
@overload
def rdrop_kl(
    logits1: np.ndarray[Any, Any],
    logits2: Any,
    *,
    reduction: Literal["sum", "mean", "batchmean"] = ...,
    **options: Unpack[_KlOptions],
) -> np.floating[Any]: ...
@overload
def rdrop_kl(
    logits1: np.ndarray[Any, Any],
    logits2: Any,
    *,
    reduction: Literal["none"],
    **options: Unpack[_KlOptions],
) -> npt.NDArray[np.floating[Any]]: ...
@overload
def rdrop_kl(
    logits1: ArrayT, logits2: ArrayT, *, reduction: Reduction = ..., **options: Unpack[_KlOptions]
) -> ArrayT: ...
@called_as_is
def rdrop_kl(
    logits1: Any,
    logits2: Any,
    *,
    axis: int = -1,
    pad_mask: Any = None,
    reduction: Reduction = "sum",
) -> Any:
    """The symmetric KL divergence of R-Dropout between two passes' predictive distributions.

    With ``P = softmax(logits)`` over ``axis``, per position (one class distribution)::

        KL_sym = (KL(P1 || P2) + KL(P2 || P1)) / 2
               = 1/2 sum_c (p1_c - p2_c) (log p1_c - log p2_c)

    It is 0 for identical logits, symmetric, non-negative and unchanged by adding a constant to a
    row. Logits of ``-inf`` (masked classes) are allowed: a class with probability 0 in both passes
    contributes 0 (and a finite gradient); probability 0 in one pass only gives ``inf``.

    Args:
        logits1, logits2: floating arrays of one shape and dtype, of any registered framework
            (NumPy arrays and lists run on the default backend). float16 and bfloat16 are computed
            in float32 and give a float32 result; float32 and float64 keep their dtype.
        axis: the class axis.
        pad_mask: ``None`` or a boolean array of the logits' shape without ``axis`` where **True
            marks a padded position to ignore** (the convention of the official R-Drop code; the
            opposite of an attention mask). Ignored positions contribute exactly 0.
        reduction: ``"sum"`` (the default of the official code): the total over all positions;
            ``"mean"``: the total over the number of positions not padded (0 when all are padded);
            ``"batchmean"``: the total over the size of the first axis of the positions;
            ``"none"``: one value per position (the logits' shape without ``axis``), 0 where padded.

    Returns:
        An array of the logits' framework; 0-d unless ``reduction="none"``. Differentiable on the
        frameworks with autograd (NumPy computes the value only).

    Example:
        >>> import math, numpy as np
        >>> kl = xdrop.rdrop_kl(np.array([0.0, 0.0]), np.array([math.log(3), 0.0]))
        >>> print(f'{kl:.6f}')
        0.137327
    """
    xp = require(backend_for(logits1), LossBackend, "R-Dropout")
    logits1, logits2, logits, class_axis = _logit_pair(xp, logits1, logits2, axis)
    positions = rdrop.position_shape(logits.shape, class_axis)
    how = check_reduction(reduction, positions)
    pad = _pad_mask(xp, pad_mask, positions)
    return rdrop.kl_loss(xp, logits1, logits2, class_axis, pad, how)


@overload
def rdrop_loss(
    logits1: PythonValues,
    logits2: Any,
    labels: Any,
    *,
    reduction: Reduction = ...,
    **options: Unpack[_LossOptions],
) -> Any: ...
@overload
def rdrop_loss(
    logits1: np.ndarray[Any, Any],
    logits2: Any,
    labels: Any,
    *,
    reduction: Literal["sum", "mean", "batchmean"] = ...,
    **options: Unpack[_LossOptions],
) -> np.floating[Any]: ...
@overload
def rdrop_loss(
    logits1: np.ndarray[Any, Any],
    logits2: Any,
    labels: Any,
    *,
    reduction: Literal["none"],
    **options: Unpack[_LossOptions],
) -> npt.NDArray[np.floating[Any]]: ...
@overload
def rdrop_loss(
    logits1: ArrayT,
    logits2: ArrayT,
    labels: Any,
    *,
    reduction: Reduction = ...,
    **options: Unpack[_LossOptions],
) -> ArrayT: ...
@called_as_is
def rdrop_loss(
    logits1: Any,
    logits2: Any,
    labels: Any,
    *,
    alpha: float = 1.0,
    axis: int = -1,
    pad_mask: Any = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> Any:
    """The R-Dropout training loss of the paper (Liang et al. 2021, eq. 3), per position::

        L = CE(P1, y) + CE(P2, y) + alpha * (KL(P1 || P2) + KL(P2 || P1)) / 2

    the *sum* of the two cross entropies, then reduced over positions. The official code instead
    averages the two mean cross entropies and adds ``alpha`` times the *summed* KL::

        0.5 * (CE1.mean() + CE2.mean()) + alpha * KL_sym.sum()
        == 0.5 * rdrop_loss(l1, l2, y, alpha=0) + alpha * rdrop_kl(l1, l2)
        == 0.5 * rdrop_loss(l1, l2, y, alpha=2 * alpha * n)  # n: positions not ignored

    Args:
        logits1, logits2: the two passes' logits, as for :func:`rdrop_kl`.
        labels: integer class indices, of the logits' shape without ``axis``. Their values are
            checked (in ``[0, C)`` or ``ignore_index``) where they are at hand on the host (NumPy
            arrays, lists, eager arrays in CPU memory); an accelerator's array is not read back
            for it, which would cost a device sync per step, and neither is a traced one (nor
            one inside a ``torch.func`` transform): an out-of-range label there behaves as the
            framework's indexing does (PyTorch raises, as TensorFlow's graphs do on the CPU; under
            JAX the loss is NaN). An ``ignore_index`` that no label of the labels' dtype can equal
            ignores nothing.
        alpha: the weight of the KL term, ``>= 0`` and finite in the dtype the loss is computed
            in; 0 gives ``CE1 + CE2`` alone.
        axis: the class axis.
        pad_mask: as for :func:`rdrop_kl` (True = padded, ignored); labels there may be anything.
        ignore_index: positions whose label equals it are ignored in both cross entropies and in
            the KL, as ``pad_mask`` positions are.
        label_smoothing: in ``[0, 1]``, as in ``torch.nn.functional.cross_entropy``: the target is
            ``(1 - e) * onehot(y) + e / C``. With ``e > 0`` a ``-inf`` logit makes the loss infinite
            (the target gives that class mass), as in PyTorch.
        reduction: ``"mean"`` (default: over the positions neither padded nor ignored; 0 if none
            is left), ``"sum"``, ``"batchmean"`` (over the size of the first axis) or ``"none"``
            (one loss per position, 0 where ignored).

    Returns:
        As for :func:`rdrop_kl`.

    Example:
        >>> import numpy as np
        >>> logits1 = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
        >>> logits2 = np.array([[1.5, 1.0, -1.0], [0.5, 0.5, 0.0]])
        >>> loss = xdrop.rdrop_loss(logits1, logits2, np.array([0, 1]), alpha=0.5)
        >>> print(f'{loss:.4f}')
        1.1837
    """
    xp = require(backend_for(logits1), LossBackend, "R-Dropout")
    logits1, logits2, logits, class_axis = _logit_pair(xp, logits1, logits2, axis)
    positions = rdrop.position_shape(logits.shape, class_axis)
    how = check_reduction(reduction, positions)
    weight = check_alpha(alpha, rdrop.compute_dtype(logits.dtype))
    smoothing = check_label_smoothing(label_smoothing)
    ignored = check_ignore_index(ignore_index)
    pad = _pad_mask(xp, pad_mask, positions)
    indices = _position_array(xp, "labels", labels, positions, "an integer array", is_integer_dtype)
    classes = logits.shape[class_axis]
    assert classes is not None  # checked by _logit_pair

    # where the backend's eager pick on the host checks its indices, the labels are read only to
    # explain its error
    checked_by_the_pick = xp.take_raises_out_of_range and _eager_on_host(xp, indices)
    if not checked_by_the_pick:
        _check_labels_at_hand(xp, labels, pad_mask, classes, ignored)
    ignored_in_dtype = None if ignored is None else _representable(ignored, xp.dtype_name(indices))
    try:
        return rdrop.rdrop_loss(
            xp,
            logits1,
            logits2,
            indices,
            alpha=weight,
            axis=class_axis,
            pad_mask=pad,
            ignore_index=ignored_in_dtype,
            label_smoothing=smoothing,
            reduction=how,
        )
    except Exception:
        if checked_by_the_pick:  # said in terms of labels
            _check_labels_at_hand(xp, labels, pad_mask, classes, ignored)
        raise


@overload
def rdrop_regression_loss(
    pred1: PythonValues,
    pred2: Any,
    targets: Any,
    *,
    reduction: Reduction = ...,
    **options: Unpack[_RegressionOptions],
) -> Any: ...
@overload
def rdrop_regression_loss(
    pred1: np.ndarray[Any, Any],
    pred2: Any,
    targets: Any,
    *,
    reduction: Literal["sum", "mean", "batchmean"] = ...,
    **options: Unpack[_RegressionOptions],
) -> np.floating[Any]: ...
@overload
def rdrop_regression_loss(
    pred1: np.ndarray[Any, Any],
    pred2: Any,
    targets: Any,
    *,
    reduction: Literal["none"],
    **options: Unpack[_RegressionOptions],
) -> npt.NDArray[np.floating[Any]]: ...
@overload
def rdrop_regression_loss(
    pred1: ArrayT,
    pred2: ArrayT,
    targets: Any,
    *,
    reduction: Reduction = ...,
    **options: Unpack[_RegressionOptions],
) -> ArrayT: ...
@called_as_is
def rdrop_regression_loss(
    pred1: Any,
    pred2: Any,
    targets: Any,
    *,
    alpha: float = 1.0,
    pad_mask: Any = None,
    reduction: Reduction = "mean",
) -> Any:
    """R-Dropout for a regression head: per predicted value ::

        L = (p1 - y)**2 + (p2 - y)**2 + alpha * (p1 - p2)**2

    both passes' squared errors plus ``alpha`` times the squared difference of the two passes,
    which stands in for the symmetric KL of :func:`rdrop_loss` where the output is a number
    rather than a distribution. With the default ``reduction="mean"`` this is::

        MSE(p1, y) + MSE(p2, y) + alpha * MSE(p1, p2)

    the loss of the R-Drop authors' BERT code for a regression task (STS-B, where the weight of
    the last term is 1). Their fairseq RoBERTa code sums over the batch and trains the first
    pass alone on the targets, ``SSE(p1, y) + alpha * SSE(p1, p2)``; here both passes are, as
    both cross entropies are in :func:`rdrop_loss`.

    Args:
        pred1, pred2: the two passes' predictions, floating arrays of one shape and dtype, of any
            registered framework (NumPy arrays and lists run on the default backend). Every
            element is one predicted value: ``[B]`` or ``[B, 1]`` for one number per sample,
            ``[B, T]`` for one per token. float16 and bfloat16 are computed in float32 and give
            a float32 result; float32 and float64 keep their dtype.
        targets: the true values, a floating or integer array of the predictions' shape (no
            broadcasting: a ``[B]`` target against ``[B, 1]`` predictions is refused rather than
            silently compared all against all).
        alpha: the weight of the consistency term, ``>= 0`` and finite in the dtype the loss is
            computed in; 0 gives the two squared errors alone.
        pad_mask: ``None`` or a boolean array where **True marks a padded value to ignore**, of
            the predictions' shape or of its leading axes (a ``[B, T]`` mask of tokens over
            ``[B, T, D]`` predictions covers each token's ``D`` values). Padded values contribute
            exactly 0, whatever their predictions and targets hold (NaN included), and no gradient.
        reduction: ``"mean"`` (default: over the values not padded; 0 if none is left),
            ``"sum"``, ``"batchmean"`` (over the size of the first axis) or ``"none"`` (one loss
            per value, 0 where padded).

    Returns:
        An array of the predictions' framework; 0-d unless ``reduction="none"``. Differentiable
        on the frameworks with autograd (NumPy computes the value only).

    Example:
        >>> import numpy as np
        >>> pred1, pred2 = np.array([1.0, 2.0]), np.array([1.5, 2.0])
        >>> loss = xdrop.rdrop_regression_loss(pred1, pred2, np.array([1.0, 3.0]))
        >>> print(f'{loss:.4f}')  # ((0 + .25 + .25) + (1 + 1 + 0)) / 2
        1.2500
    """
    xp = require(backend_for(pred1), LossBackend, "R-Dropout")
    pred1, pred2, first = _float_pair(xp, ("pred1", pred1), ("pred2", pred2))
    how = check_reduction(reduction, first.shape)
    weight = check_alpha(alpha, rdrop.compute_dtype(first.dtype))
    targets = _as_array(xp, "targets", targets, "pred1")
    given = _describe(xp, targets)
    allowed = f"a floating or integer array of pred1's shape {first.shape}"
    if not (given.dtype in FLOAT_DTYPES or is_integer_dtype(given.dtype)):
        raise bad_array_type("targets", given, allowed)
    if not shapes_agree(given.shape, first.shape):
        raise bad_array("targets", given, allowed)
    pad = None
    if pad_mask is not None:
        pad = _as_array(xp, "pad_mask", pad_mask, "pred1")
        mask = _describe(xp, pad)
        allowed = (
            f"None or a boolean array (True = padded) of pred1's shape {first.shape} "
            "or of its leading axes"
        )
        if mask.dtype != "bool":
            raise bad_array_type("pad_mask", mask, allowed)
        if not shapes_agree(mask.shape, first.shape[: len(mask.shape)]):
            raise bad_array("pad_mask", mask, allowed)
    return rdrop.regression_loss(
        xp, pred1, pred2, targets, alpha=weight, pad_mask=pad, reduction=how
    )


@called_as_is
def rdrop_forward(
    model_fn: Callable[[ArrayT], OutputT], x: ArrayT, *, axis: int = 0
) -> tuple[OutputT, OutputT]:
    """Run ``model_fn`` once on ``concat([x, x], axis)`` and split its output back in two.

    Every sample goes through the model twice in one batched call, as the R-Drop tutorial's
    ``torch.cat([x, x], 0)`` does: dropout inside ``model_fn`` draws one mask for the doubled
    batch, so the two copies of a sample get independent masks. Nothing here is specific to a
    framework: ``x`` and the output may be arrays of any registered backend.

    Args:
        model_fn: a callable taking the doubled batch and returning one array whose ``axis`` is
            the doubled batch axis (twice the size of ``x``'s).
        x: the batch, an array of any registered framework.
        axis: the batch axis, of ``x`` and of the output alike.

    Returns:
        ``(out1, out2)``: the outputs of the first and second copy, each of ``x``'s batch size.

    Example:
        >>> import numpy as np
        >>> def model(x):
        ...     return xdrop.dropout(x, 0.5, seed=3)
        >>> out1, out2 = xdrop.rdrop_forward(model, np.ones((2, 4), np.float32))
        >>> out1
        array([[2., 0., 0., 0.],
               [2., 0., 2., 2.]], dtype=float32)
        >>> out2
        array([[2., 2., 0., 2.],
               [2., 2., 0., 2.]], dtype=float32)
    """
    if not callable(model_fn):
        raise bad_type("model_fn", model_fn, "a callable taking and returning an array")
    xp = backend_for(x)
    given, x = x, as_input_array(xp, x)
    shape = xp.shape(x)
    if not shape:
        shown = Shown("<0-d array>") if xp.is_array(given) else given
        raise bad_value("x", shown, "an array with a batch axis")
    batch_axis = check_axis(axis, len(shape))
    y = model_fn(rdrop.doubled(xp, x, batch_axis))
    yp = require(backend_for(y), LossBackend, "R-Dropout")
    batch = shape[batch_axis]
    doubled = None if batch is None else 2 * batch
    count = "twice x's number of" if doubled is None else str(doubled)
    expected = f"an array with {count} entries along axis {axis} (twice x's)"
    if not yp.is_array(y):
        raise bad_type("the output of model_fn", y, expected)
    output_shape = yp.shape(y)
    if not -len(output_shape) <= axis < len(output_shape):
        raise bad_array("the output of model_fn", _describe(yp, y), expected)
    output_axis = axis % len(output_shape)
    if not shapes_agree((output_shape[output_axis],), (doubled,)):
        raise bad_array("the output of model_fn", _describe(yp, y), expected)
    return rdrop.halves(yp, y, output_axis)


# -- argument handling -----------------------------------------------------------------------------
def _check_labels_at_hand(
    xp: Backend, labels: Any, pad_mask: Any, classes: int, ignore_index: int | None
) -> None:
    """Each label not padded is in ``[0, classes)`` or ``ignore_index``, where the labels (and
    the mask) are on the host already: reading a device array back would stall every training
    step on a sync with the accelerator."""
    values = _host_values(xp, labels)
    padded = None if pad_mask is None else _host_values(xp, pad_mask)
    if values is not None and (pad_mask is None or padded is not None):
        check_labels_in_range(values, classes, ignore_index, padded)


def _host_values(xp: Backend, value: Any) -> np.ndarray | None:
    """``value``'s entries where they are at hand on the host: NumPy arrays and Python values as
    they are, eager arrays in host memory read back (no wait for an accelerator); else None."""
    if not xp.is_array(value):
        return np.asarray(value)  # converted by xp already: a rectangular array of numbers
    if xp.framework == "numpy" or _eager_on_host(xp, value):
        return xp.to_numpy(value)
    return None


def _eager_on_host(xp: Backend, a: Array) -> bool:
    """``a`` holds values now (not traced), in host memory: reading them costs no device sync."""
    return not xp.is_tracing(a) and xp.in_host_memory(a)


def _representable(ignore_index: int, dtype: str) -> int | None:
    """``ignore_index`` where a label of ``dtype`` can equal it, else None. Frameworks compare
    labels with the number cast to their dtype: -100 as uint8 is 156, a label to be checked."""
    limits = np.iinfo(dtype)
    return ignore_index if limits.min <= ignore_index <= limits.max else None


def _describe(xp: Backend, a: Array) -> ArrayDescription:
    return ArrayDescription(xp.dtype_name(a), xp.shape(a))


def _as_array(xp: Backend, argument: str, value: Any, first: str | None) -> Array:
    """``value`` as an array of ``xp``, the framework of the argument ``first`` (None: ``value``
    is that argument): NumPy arrays and Python values are converted."""
    if xp.is_array(value):
        return as_input_array(xp, value, argument)
    if isinstance(value, (np.ndarray, np.generic, list, tuple, numbers.Number)):
        return as_input_array(xp, value, argument)
    framework = "" if first is None else f" of {first}'s framework ({xp.name})"
    allowed = f"an array{framework}, or numbers in (nested) lists"
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:  # another framework's: its repr may be huge
        value = Shown(f"<{dtype} array of shape {tuple(shape)}>", type(value).__name__)
    raise bad_type(argument, value, allowed)


def _float_pair(
    xp: Backend, named_first: tuple[str, Any], named_second: tuple[str, Any]
) -> tuple[Array, Array, ArrayDescription]:
    """Both ``(argument, value)`` as arrays of ``xp`` of one floating dtype and one shape, and
    that dtype and shape."""
    (first_name, first), (second_name, second) = named_first, named_second
    first = _as_array(xp, first_name, first, None)
    second = _as_array(xp, second_name, second, first_name)
    described, other = _describe(xp, first), _describe(xp, second)
    dtype = check_float_dtype(xp, first, first_name)
    if other.dtype != dtype:
        allowed = f"an array of {first_name}'s dtype ({dtype})"
        raise bad_array_type(second_name, other, allowed)
    if not shapes_agree(other.shape, described.shape):
        raise bad_array(second_name, other, f"an array of {first_name}'s shape {described.shape}")
    return first, second, described


def _logit_pair(
    xp: Backend, logits1: Any, logits2: Any, axis: object
) -> tuple[Array, Array, ArrayDescription, int]:
    """Both logits as arrays of ``xp``, of one floating dtype and one shape; that dtype and
    shape; and the class axis."""
    logits1, logits2, first = _float_pair(xp, ("logits1", logits1), ("logits2", logits2))
    if not first.shape:
        raise bad_array("logits1", first, "an array with a class axis (at least 1-d)")
    class_axis = check_axis(axis, len(first.shape))
    if first.shape[class_axis] is None:
        allowed = f"an array whose number of classes (axis {axis}) is {SIZES_KNOWN}"
        raise bad_array("logits1", first, allowed)
    if first.shape[class_axis] == 0:
        raise bad_array("logits1", first, f"an array with at least one class along axis {axis}")
    return logits1, logits2, first, class_axis


def _pad_mask(xp: Backend, pad_mask: Any, positions: tuple[int, ...]) -> Array | None:
    if pad_mask is None:
        return None
    allowed = "None or a boolean array (True = padded)"
    return _position_array(xp, "pad_mask", pad_mask, positions, allowed, "bool".__eq__)


def _position_array(
    xp: Backend,
    argument: str,
    value: Any,
    positions: tuple[int, ...],
    kind: str,
    dtype_ok: Callable[[str], bool],
) -> Array:
    """``value`` as an array of ``xp`` with one entry per position, of a dtype ``dtype_ok``."""
    array = _as_array(xp, argument, value, "logits1")
    described = _describe(xp, array)
    check_position_array(argument, described, positions, kind, dtype_ok=dtype_ok(described.dtype))
    return array
