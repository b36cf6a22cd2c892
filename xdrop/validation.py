"""Argument checks shared by every backend: one path, one message shape."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Union

import numpy as np

from xdrop.errors import ArgumentTypeError, ArgumentValueError, bad_type, bad_value, describe
from xdrop.protocol import Array, Backend
from xdrop.rdrop import REDUCTIONS
from xdrop.spec import FLOAT_DTYPES, MODES, SEED_COUNT, WORD_COUNT, inverted_scale

Rate = Union[float, Array]  # noqa: UP007 (Array is Any: "float | Any" fails on Python 3.10)
"""A checked rate: a Python float in [0, 1], or a 0-d float array being traced."""
RATE_ALLOWED = "a real number in [0, 1] or a 0-d float array of x's framework"


def as_integer(value: object) -> int | None:
    """``value`` as a Python int if it is a Python or NumPy integer (not a bool), else None.

    A Python int is returned as it is, never through ``int()``: under ``torch.compile`` it may
    stand for a graph input, which ``int()`` would pin to one value (a recompile per value)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return None
    return value if isinstance(value, int) else int(value)


def is_integer(value: object) -> bool:
    return as_integer(value) is not None


def check_rate(p: object, xp: Backend | None = None) -> Rate:
    """``p`` as a float in ``[0, 1]``; a 0-d float array is read as its value, unless it is being
    traced (then it is returned as it is, and the spec computes with it in the graph)."""
    if isinstance(p, (bool, np.bool_)):
        raise bad_type("p", p, RATE_ALLOWED)
    if isinstance(p, numbers.Real):
        value = float(p)
    elif isinstance(p, np.ndarray) or (xp is not None and xp.is_array(p)):
        owner = xp if xp is not None and xp.is_array(p) else None
        dtype = str(p.dtype) if owner is None else owner.dtype_name(p)
        shape = tuple(p.shape) if owner is None else owner.shape(p)
        if dtype not in FLOAT_DTYPES or shape != ():
            raise bad_type("p", f"<array of {dtype}, shape {shape}>", RATE_ALLOWED)
        if owner is not None and owner.is_tracing(p):
            return p
        value = float(p if owner is None else owner.to_numpy(p))
    else:
        raise bad_type("p", p, RATE_ALLOWED)
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise bad_value("p", p, "a real number in [0, 1]")
    return value


def check_mode(mode: object) -> str:
    if mode not in MODES:
        raise bad_value("mode", mode, 'one of "inverted", "classic"')
    return str(mode)


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise bad_type(name, value, "True or False")
    return bool(value)


def check_offset(offset: object) -> int:
    value = as_integer(offset)
    if value is None:
        raise bad_type("offset", offset, "an integer in [0, 2**64)")
    if not 0 <= value < SEED_COUNT:
        raise bad_value("offset", offset, "an integer in [0, 2**64)")
    return value


def check_counter_range(offset: int, shape: tuple[int | None, ...]) -> None:
    """Element counters are 64-bit: the last one, ``offset + count - 1``, must fit. Unchecked for a
    count known only at run time."""
    if None in shape:
        return
    count = math.prod(shape)  # type: ignore[arg-type]
    if offset + count > SEED_COUNT:
        raise bad_value(
            "offset", offset, f"at most 2**64 - {count} so that all {count} counters fit in 64 bits"
        )


def check_seed(seed: object) -> int:
    """A host integer seed in ``[0, 2**64)``."""
    value = as_integer(seed)
    if value is None:
        raise bad_type("seed", seed, "an integer in [0, 2**64), an xdrop.Generator or None")
    if not 0 <= value < SEED_COUNT:
        raise bad_value("seed", seed, "an integer in [0, 2**64)")
    return value


def check_fold_data(data: object) -> int:
    value = as_integer(data)
    if value is None:
        raise bad_type("data", data, "an integer in [0, 2**32)")
    if not 0 <= value < WORD_COUNT:
        raise bad_value("data", data, "an integer in [0, 2**32)")
    return value


def check_float_dtype(dtype: str, argument: str = "x") -> str:
    if dtype not in FLOAT_DTYPES:
        raise bad_type(
            argument, f"<array of {dtype}>", "an array of float16, bfloat16, float32 or float64"
        )
    return dtype


def check_shape(
    shape: object, like_shape: tuple[int | None, ...] | None = None
) -> tuple[int | None, ...]:
    """A shape: a sequence of non-negative integers (a bare integer means a 1-d shape).

    With ``like_shape`` (the shape of ``like``), an entry may also be ``None``, or a size that
    the framework knows only at run time (``like.shape``'s own entries while tracing): the size
    of ``like`` on that axis. Such entries stay ``None``."""
    allowed = "a sequence of non-negative integers"
    if is_integer(shape):
        shape = (shape,)
    if not isinstance(shape, Sequence) or isinstance(shape, (str, bytes)):
        if like_shape is None or not hasattr(shape, "__len__"):  # e.g. tf.TensorShape
            raise bad_type("shape", shape, allowed)
        shape = list(shape)  # type: ignore[call-overload]
    assert isinstance(shape, Sequence)
    if like_shape is not None and len(shape) == len(like_shape):
        allowed += " or None (like's size on that axis)"
        shape = [
            None if not is_integer(size) and (size is None or known is None) else size
            for size, known in zip(shape, like_shape, strict=True)
        ]
    if not all(size is None or is_integer(size) for size in shape):
        raise bad_type("shape", shape, allowed)
    if any(size is not None and int(size) < 0 for size in shape):
        raise bad_value("shape", shape, allowed)
    return tuple(None if size is None else int(size) for size in shape)


def check_noise_shape(
    noise_shape: object, shape: tuple[int | None, ...]
) -> tuple[int | None, ...]:
    """Complete ``noise_shape`` against the input's ``shape`` (TensorFlow/Keras rules).

    Entries align to the right; missing leading entries act as 1 (shared) and ``None`` takes the
    input's size. Every entry must be 1 or the input's size; where that size is known only at
    run time (None in ``shape``), an integer entry is taken as it is and must match then."""
    if noise_shape is None:
        return shape
    allowed = (
        f"a sequence of at most {len(shape)} entries, each 1, None or the size of x there {shape}"
    )
    if not isinstance(noise_shape, Sequence) or isinstance(noise_shape, (str, bytes)):
        raise bad_type("noise_shape", noise_shape, allowed)
    if not all(entry is None or is_integer(entry) for entry in noise_shape):
        raise bad_type("noise_shape", noise_shape, allowed)
    if len(noise_shape) > len(shape):
        raise bad_value("noise_shape", noise_shape, allowed)
    padded = (1,) * (len(shape) - len(noise_shape)) + tuple(noise_shape)
    completed = tuple(
        size if entry is None else int(entry) for size, entry in zip(shape, padded, strict=True)
    )
    if any(
        entry is not None and entry not in (1, size) and (size is not None or entry < 0)
        for entry, size in zip(completed, shape, strict=True)
    ):
        raise bad_value("noise_shape", noise_shape, allowed)
    return completed


def check_scale_fits(p: float, dtype: str, mode: str) -> None:
    """The inverted scale ``1 / (1 - p)`` must be finite in ``x``'s dtype (float16 tops out at 65504)."""
    if mode == "inverted" and 0 < p < 1 and math.isinf(inverted_scale(p, dtype)):
        raise bad_value(
            "p",
            p,
            f"small enough that the inverted scale 1/(1-p) is finite in {dtype} "
            '(use a wider dtype or mode="classic")',
        )


# -- R-Dropout -------------------------------------------------------------------------------------
class ArrayDescription:
    """An array as error messages show it: ``<int64 array of shape (2, 3)>``."""

    def __init__(self, dtype: str, shape: tuple[int, ...]) -> None:
        self.dtype = dtype
        self.shape = shape

    def __repr__(self) -> str:
        return f"<{self.dtype} array of shape {self.shape}>"


def bad_array(argument: str, array: ArrayDescription, allowed: str) -> ArgumentValueError:
    """An array argument of the wrong shape."""
    error: ArgumentValueError = ArgumentValueError(describe(argument, array, allowed))
    return error


def bad_array_type(argument: str, array: ArrayDescription, allowed: str) -> ArgumentTypeError:
    """An array argument of the wrong dtype."""
    error: ArgumentTypeError = ArgumentTypeError(describe(argument, array, allowed))
    return error


def is_integer_dtype(dtype: str) -> bool:
    return dtype.startswith(("int", "uint"))


def check_axis(axis: object, ndim: int, argument: str = "axis") -> int:
    """``axis`` of an array of ``ndim`` dimensions, made non-negative."""
    allowed = f"an integer in [{-ndim}, {ndim}) for an array of {ndim} dimensions"
    if not is_integer(axis):
        raise bad_type(argument, axis, allowed)
    assert isinstance(axis, numbers.Integral)
    value = int(axis)
    if not -ndim <= value < ndim:
        raise bad_value(argument, axis, allowed)
    return value % ndim


def check_reduction(reduction: object, positions: tuple[int, ...]) -> str:
    """One of :data:`xdrop.rdrop.REDUCTIONS`; ``"batchmean"`` needs a first (batch) axis."""
    if reduction not in REDUCTIONS:
        raise bad_value("reduction", reduction, 'one of "sum", "mean", "batchmean", "none"')
    if reduction == "batchmean" and not positions:
        raise bad_value(
            "reduction",
            reduction,
            '"sum", "mean" or "none" for logits without a batch axis (a single distribution)',
        )
    return str(reduction)


def check_alpha(alpha: object) -> float:
    """The weight of the KL term: a finite real number >= 0."""
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real):
        raise bad_type("alpha", alpha, "a finite real number >= 0")
    value = float(alpha)
    if not math.isfinite(value) or value < 0:
        raise bad_value("alpha", alpha, "a finite real number >= 0")
    return value


def check_label_smoothing(smoothing: object) -> float:
    if isinstance(smoothing, (bool, np.bool_)) or not isinstance(smoothing, numbers.Real):
        raise bad_type("label_smoothing", smoothing, "a real number in [0, 1]")
    value = float(smoothing)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise bad_value("label_smoothing", smoothing, "a real number in [0, 1]")
    return value


def check_ignore_index(ignore_index: object) -> int | None:
    if ignore_index is None:
        return None
    if not is_integer(ignore_index):
        raise bad_type("ignore_index", ignore_index, "an integer or None")
    assert isinstance(ignore_index, numbers.Integral)
    return int(ignore_index)


def check_position_array(
    argument: str,
    array: ArrayDescription,
    positions: tuple[int, ...],
    kind: str,
    *,
    dtype_ok: bool,
) -> None:
    """``pad_mask`` and ``labels``: one entry per position (logits' shape less the class axis)."""
    allowed = f"{kind} of shape {positions} (the shape of the logits without the class axis)"
    if not dtype_ok:
        raise bad_array_type(argument, array, allowed)
    if array.shape != positions:
        raise bad_array(argument, array, allowed)


def check_labels_in_range(
    labels: np.ndarray, classes: int, ignore_index: int | None, padded: np.ndarray | None
) -> None:
    """Each label of a position neither padded nor ``ignore_index`` must be in ``[0, classes)``."""
    checked = np.ones(labels.shape, bool)
    if ignore_index is not None:
        checked &= labels != ignore_index
    if padded is not None:
        checked &= ~padded
    wrong = checked & ((labels < 0) | (labels >= classes))
    if wrong.any():
        position = tuple(int(i) for i in np.argwhere(wrong)[0])
        allowed = f"class indices in [0, {classes})"
        if ignore_index is not None:
            allowed += f" or ignore_index ({ignore_index})"
        message = describe("labels", int(labels[position]), allowed)
        error: ArgumentValueError = ArgumentValueError(f"{message} at position {position}")
        raise error
