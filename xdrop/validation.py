"""Argument checks shared by every backend: one path, one message shape."""

from __future__ import annotations

import math
import numbers
import operator
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, Union, cast

import numpy as np

from xdrop.errors import (
    ArgumentTypeError,
    ArgumentValueError,
    Shown,
    bad_type,
    bad_value,
    describe,
)
from xdrop.protocol import Array, Backend
from xdrop.rdrop import REDUCTIONS
from xdrop.registry import is_keras_variable
from xdrop.spec import FLOAT_DTYPES, MODES, SEED_COUNT, inverted_scale
from xdrop.tracing import read_on_the_host
from xdrop.typing import Mode

Rate = Union[float, Array]  # noqa: UP007 (Array is Any: "float | Any" fails on Python 3.10)
"""A checked rate: a Python float in [0, 1], or a 0-d float array being traced."""


def as_integer(value: object) -> int | None:
    """``value`` as a Python int if it is a Python or NumPy integer (not a bool), else None.

    A Python int is returned as it is, never through ``int()``: under ``torch.compile`` it may
    stand for a graph input, which ``int()`` would pin to one value (a recompile per value)."""
    if isinstance(value, int) and not isinstance(value, bool):  # the common case, at once
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def as_real(value: object) -> float | None:
    """``value`` as a float if it is a Python or NumPy real number (not a bool), else None; read
    as a value that ``torch.compile`` holds as a constant (see ``read_on_the_host``)."""
    if isinstance(value, float):  # the common case (NumPy's float64 too), at once
        return read_on_the_host(float(value))
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    return read_on_the_host(float(value))


def is_integer(value: object) -> bool:
    return as_integer(value) is not None


SIZES_KNOWN = (
    "known while tracing (give them in tf.function's input_signature or jax.export's shapes; "
    "torch.jit.trace knows no size, torch.compile and torch.export do)"
)
"""How a function that needs sizes while tracing says where they come from."""


def check_rate(
    p: object,
    xp: Backend | None = None,
    like: object = None,
    name: str = "x",
    interval: str = "[0, 1]",
) -> Rate:
    """``p`` as a float in ``[0, 1]``; a 0-d float array is read as its value, unless it is being
    traced (then it is returned as it is, and the spec computes with it in the graph). ``like``
    is the array ``p`` goes with, if any (called ``name`` in messages): an Array API array's
    rate must share its namespace. A Keras variable is its value, as Keras' own ops read it.
    ``interval`` is what messages say is allowed (``[0, 1)`` where the caller refuses 1)."""
    if isinstance(p, numbers.Real) and not isinstance(p, (bool, np.bool_)):
        try:  # the common case first: no message unless needed
            value = read_on_the_host(float(p))
        except OverflowError:  # an int beyond any float, outside [0, 1] whatever it is
            value = math.inf
    elif is_keras_variable(p):
        return check_rate(p.value, xp, like, name, interval)  # type: ignore[attr-defined]
    elif isinstance(p, (bool, np.bool_)):
        raise bad_type("p", p, _rate_allowed(name))
    elif isinstance(p, np.ndarray) or (xp is not None and xp.is_array(p)):
        array: Array = p
        owner = xp if xp is not None and xp.is_array(array) else None
        dtype = str(array.dtype) if owner is None else owner.dtype_name(array)
        shape = tuple(array.shape) if owner is None else owner.shape(array)
        if dtype not in FLOAT_DTYPES or shape != ():
            shown = Shown(f"<{dtype} array of shape {shape}>", type(array).__name__)
            raise bad_type("p", shown, _rate_allowed(name))
        # the generic backend claims every namespace: a JAX rate beside a strict array would be
        # read eagerly but cannot be computed with once traced (NumPy rates are read, always)
        foreign = like is not None and _namespace(p) != _namespace(like)
        if owner is not None and foreign and not isinstance(p, np.ndarray):
            raise bad_type("p", p, _rate_allowed(name))
        if owner is not None and owner.is_tracing(array):
            if not owner.holds_values(array):  # what reading it eagerly would refuse
                shown = Shown("<0-d array that holds no value>")
                raise bad_value("p", shown, _rate_readable(name))
            return array
        value = _read_rate(
            lambda: float(array if owner is None else owner.to_numpy(array)), _rate_readable(name)
        )
    else:
        raise bad_type("p", p, _rate_allowed(name))
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise bad_value("p", p, f"a real number in {interval}")
    return value


def _rate_allowed(name: str) -> str:
    return f"a real number in [0, 1] or a 0-d float array of {name}'s framework"


def _rate_readable(name: str) -> str:
    return f"a Python float or a 0-d float array whose value can be read (on {name}'s device)"


def _namespace(x: object) -> object:
    """``x``'s Array API namespace, or None (no array, or one that names none)."""
    method = getattr(x, "__array_namespace__", None)
    return None if method is None else method()


def _read_rate(read: Callable[[], float], readable: str) -> float:
    """A concrete rate's value, ``read()``, or an error that says to pass one whose value can be
    read (``readable``): a torch tensor on the meta device holds none."""
    try:
        return read()
    except Exception as error:  # the framework's own error, whatever it is: ours names p
        raise bad_value(
            "p",
            Shown(f"<0-d array that cannot be read: {error}>"),
            readable,
        ) from error


def check_choice(
    argument: str, value: object, choices: Sequence[str], allowed: str | None = None
) -> str:
    """``value`` if it is one of the strings ``choices``, else an error naming ``argument``: a
    type error unless it is a ``str`` (an array of strings would make ``in`` compare element by
    element and fail with NumPy's own error), a value error otherwise. ``allowed`` is what the
    message says is allowed, where the caller accepts more before it asks (default: the
    choices)."""
    if isinstance(value, str) and value in choices:
        return value
    if allowed is None:
        allowed = "one of " + ", ".join(f'"{choice}"' for choice in choices)
    if not isinstance(value, str):
        raise bad_type(argument, value, allowed)
    raise bad_value(argument, value, allowed)


def check_mode(mode: object) -> Mode:
    return cast(Mode, check_choice("mode", mode, MODES))


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise bad_type(name, value, "True or False")
    return bool(value)


def check_natural(
    name: str, value: object, bits: int, also_allowed: str = "", read: int | None = None
) -> int:
    """``value`` as an int in ``[0, 2**bits)``, or an error naming ``name``: a type error unless it
    is an integer (``also_allowed`` lists other accepted kinds), a value error outside the range.
    ``read`` is the integer it has been read as, where that is not ``int(value)``."""
    allowed = f"an integer in [0, 2**{bits})"
    integer = as_integer(value) if read is None else read
    if integer is None:
        raise bad_type(name, value, allowed + also_allowed)
    if not 0 <= integer < 1 << bits:
        raise bad_value(name, value, allowed)
    return integer


def check_offset(offset: object) -> int:
    return check_natural("offset", offset, 64)


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


def seed_value(seed: np.ndarray | np.generic) -> int:
    """The seed a NumPy seed holds: a uint32[2] ``(hi, lo)`` is ``hi << 32 | lo``; an integer is
    read as the unsigned two's complement of its width, so ``np.int64(-1)`` is ``2**64 - 1``
    (backends that read seeds inside a graph zero-extend the bits, which is the same)."""
    if seed.shape == (2,):
        return (int(seed[0]) << 32) | int(seed[1])
    return int(seed) % (1 << (8 * seed.dtype.itemsize))


def check_seed(seed: object, name: str = "seed") -> int:
    """A host integer seed in ``[0, 2**64)``, called ``name`` in messages; a NumPy integer as
    :func:`seed_value` reads it."""
    read = seed_value(seed) if isinstance(seed, np.integer) else None
    return check_natural(name, seed, 64, read=read)


def check_fold_data(data: object) -> int:
    return check_natural("data", data, 32)


def check_float_dtype(xp: Backend, x: Array, argument: str = "x") -> str:
    """The dtype of ``x``, an array of ``xp``, which must be floating; an error shows the array
    and its type (a NumPy array made from a list shows as one)."""
    dtype = xp.dtype_name(x)
    if dtype not in FLOAT_DTYPES:
        allowed = "an array of float16, bfloat16, float32 or float64 (cast integers to one)"
        shown = Shown(repr(ArrayDescription(dtype, xp.shape(x))), type(x).__name__)
        raise bad_type(argument, shown, allowed)
    return dtype


def as_input_array(xp: Backend, x: object, argument: str = "x") -> Array:
    """``x`` as a dense array of ``xp``: its own arrays pass through, NumPy arrays and (nested)
    lists of numbers are converted; what cannot be converted, or a sparse tensor, is an error."""
    if is_keras_variable(x):
        x = x.value  # type: ignore[attr-defined]
    if isinstance(x, np.ndarray) and type(x) not in (np.ndarray, np.memmap):
        # the output is a fresh ndarray: what the subclass adds would be dropped silently
        remedy = (
            "its mask would be lost: give np.ma.getdata(x) or x.filled(value)"
            if isinstance(x, np.ma.MaskedArray)
            else "what the subclass adds would be lost: give np.asarray(x)"
        )
        shown = Shown(f"<{type(x).__module__}.{type(x).__name__}>")
        raise ArgumentTypeError(describe(argument, shown, f"a plain NumPy array ({remedy})"))
    if xp.is_array(x):
        layout = str(getattr(x, "layout", ""))
        if getattr(x, "is_sparse", False) or layout.startswith("torch.sparse"):
            allowed = "a dense array (xdrop draws a mask for every element, stored or not)"
            raise ArgumentTypeError(describe(argument, Shown(f"<{layout} tensor>"), allowed))
        if getattr(x, "is_nested", False):  # its components have shapes of their own
            allowed = "a dense array (pad a nested tensor first: torch.nested.to_padded_tensor)"
            shown = Shown(f"<nested tensor of layout {layout}>")
            raise ArgumentTypeError(describe(argument, shown, allowed))
        return x
    kind = type(x).__name__
    if kind in _NOT_DENSE:  # NumPy would take it for an object, and say so
        allowed = f"a dense array (xdrop draws a mask for every element: {_NOT_DENSE[kind]} first)"
        raise ArgumentTypeError(describe(argument, Shown(f"<{kind}>"), allowed))
    try:
        return xp.asarray(x)
    # ragged lists, strings, objects (torch says RuntimeError where it infers no dtype)
    except (ValueError, TypeError, OverflowError, RuntimeError) as error:
        shown = Shown(shorten(repr(x)))
        allowed = f"an array, or a rectangular nested list of numbers ({error})"
        raise ArgumentTypeError(
            describe(argument, shown, allowed) + f" of type {type(x).__name__}"
        ) from error


_NOT_DENSE = {
    "RaggedTensor": "x.to_tensor()",
    "SparseTensor": "tf.sparse.to_dense(x)",
    "IndexedSlices": "tf.convert_to_tensor(x)",
}
"""TensorFlow's composite tensors, by type name, and how to make each dense."""


def holds_values_here(xp: Backend, value: Array, like: object) -> bool:
    """Whether an eager array argument (a seed, a Block's start) can be used beside ``like``:
    it holds values, or ``like`` is an array that holds none either (both are placeholders of
    shape and dtype alone, such as torch tensors on the meta device, which compute alike)."""
    if xp.holds_values(value):
        return True
    return like is not None and xp.is_array(like) and not xp.holds_values(like)


def shorten(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, for a value's repr in a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    sizes_of_like = like_shape if like_shape is not None and len(shape) == len(like_shape) else None
    if sizes_of_like is not None:
        allowed += " or None (like's size on that axis)"
        shape = [
            None if not is_integer(size) and (size is None or known is None) else size
            for size, known in zip(shape, sizes_of_like, strict=True)
        ]
    if not all(size is None or is_integer(size) for size in shape):
        raise bad_type("shape", shape, allowed)
    if sizes_of_like is None and None in shape:  # no array of this rank to take the size from
        raise bad_value("shape", shape, allowed + ", or None beside a like array of its rank")
    if any(size is not None and int(size) < 0 for size in shape):
        raise bad_value("shape", shape, allowed)
    sizes = tuple(None if size is None else int(size) for size in shape)
    if None not in sizes:
        check_mask_size(shape, math.prod(sizes))  # type: ignore[arg-type]
    return sizes


def check_mask_size(shape: object, count: int) -> None:
    """A mask of ``count`` elements must fit the counter space and this machine's memory, so that
    an impossible size fails at once rather than after growing a list of chunks without end."""
    if count > SEED_COUNT:
        raise bad_value(
            "shape", shape, "a shape of at most 2**64 elements (the counters of mask stream v1)"
        )
    limit = MEMORY_BYTES
    if count > limit:  # a boolean mask takes a byte per element
        raise bad_value(
            "shape",
            shape,
            f"a shape whose boolean mask fits this machine's memory: at most {limit} elements "
            f"(got {count})",
        )


def memory_bytes() -> int:
    """The most bytes one array can take here: the physical memory, and no more than the
    address space (``sys.maxsize``)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        physical = sys.maxsize
    return min(sys.maxsize, physical if physical > 0 else sys.maxsize)


MEMORY_BYTES = memory_bytes()  # read once: torch.compile cannot trace os.sysconf


def check_noise_shape(noise_shape: object, shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
    """Complete ``noise_shape`` against the input's ``shape`` (TensorFlow/Keras rules).

    Entries align to the right; missing leading entries act as 1 (shared) and ``None`` takes the
    input's size. Every entry must be 1 or the input's size; where that size is known only at
    run time (None in ``shape``), an entry other than 1 stands for it (it cannot be checked)."""
    if noise_shape is None:
        return shape
    allowed = (
        f"a sequence of at most {len(shape)} entries, each 1, None or the size of x there {shape}"
    )
    array_of_sizes = _is_array_of_sizes(noise_shape)
    if isinstance(noise_shape, (str, bytes)) or not (
        isinstance(noise_shape, Sequence) or array_of_sizes
    ):
        raise bad_type("noise_shape", noise_shape, allowed)
    if array_of_sizes:
        allowed += "; an array of sizes must hold integers that can be read now, not traced ones"
    read = [_readable_size(entry) for entry in _iterated(noise_shape)]
    if not all(
        entry is None or is_integer(entry) or (entry is _TRACED and not array_of_sizes)
        for entry in read
    ):
        raise bad_type("noise_shape", noise_shape, allowed)
    if len(read) > len(shape):
        raise bad_value("noise_shape", noise_shape, allowed)
    padded = (1,) * (len(shape) - len(read)) + tuple(read)
    if any(
        entry is _TRACED and size is not None for entry, size in zip(padded, shape, strict=True)
    ):
        known = (
            "; a traced or symbolic size (tf.shape(x)[i]) only where x's size is known only at "
            "run time, where it stands for it: elsewhere give the size or None"
        )
        raise bad_value("noise_shape", noise_shape, allowed + known)
    # a size read from x while tracing (Keras' ops.shape(x)[0]) stands for x's size there
    padded = tuple(None if entry is _TRACED else entry for entry in padded)
    completed = tuple(
        size if entry is None else int(entry) for size, entry in zip(shape, padded, strict=True)
    )
    if any(
        entry is not None and entry not in (1, size) and (size is not None or entry < 0)
        for entry, size in zip(completed, shape, strict=True)
    ):
        raise bad_value("noise_shape", noise_shape, allowed)
    completed = tuple(
        None if size is None and entry != 1 else entry
        for entry, size in zip(completed, shape, strict=True)
    )
    return completed


def _is_array_of_sizes(sizes: object) -> bool:
    """A ``tf.TensorShape``, or a 1-d integer array (which ``tf.nn.dropout`` takes too)."""
    if type(sizes).__name__ == "TensorShape":
        return True
    return getattr(sizes, "ndim", None) == 1 and _has_integer_dtype(sizes)


def _has_integer_dtype(array: object) -> bool:
    # every framework's dtype prints its name: int32, torch.int64, <dtype: 'uint8'>
    return "int" in str(getattr(array, "dtype", ""))


def _iterated(sizes: Any) -> list[Any]:
    try:
        return list(sizes)
    # a traced tensor, which no Python loop may iterate; a TensorShape of unknown rank
    except (TypeError, ValueError):
        return [sizes]


_TRACED = object()
"""A size held in a traced 0-d integer tensor, whose value is known only at run time."""


def _readable_size(entry: Any) -> Any:
    """A size held in a 0-d integer array as an int where it can be read, ``_TRACED`` where it
    cannot, as is a symbolic dimension of ``jax.export``; anything else as it is."""
    if entry is None or is_integer(entry):
        return entry
    jax_export = sys.modules.get("jax.export")  # imported wherever a symbolic dimension exists
    if jax_export is not None and jax_export.is_symbolic_dim(entry):
        return _TRACED
    if getattr(entry, "shape", None) != ():
        return entry
    if not _has_integer_dtype(entry):
        return entry
    try:
        return operator.index(entry)
    except (TypeError, RuntimeError):  # traced; a meta or vmapped torch tensor says Runtime
        return _TRACED


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

    def __init__(self, dtype: str, shape: tuple[int | None, ...]) -> None:
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
    value = as_integer(axis)
    if value is not None and -ndim <= value < ndim:
        return value % ndim
    allowed = f"an integer in [{-ndim}, {ndim}) for an array of {ndim} dimensions"
    if value is None:
        raise bad_type(argument, axis, allowed)
    raise bad_value(argument, axis, allowed)


def check_reduction(reduction: object, positions: tuple[int | None, ...]) -> str:
    """One of :data:`xdrop.rdrop.REDUCTIONS`; ``"batchmean"`` needs a first (batch) axis."""
    check_choice("reduction", reduction, REDUCTIONS)
    if reduction == "batchmean" and not positions:
        raise bad_value(
            "reduction",
            reduction,
            '"sum", "mean" or "none" for inputs without a batch axis (one distribution, or one value)',
        )
    return str(reduction)


def check_alpha(alpha: object, dtype: str = "float64") -> float:
    """The weight of the KL term: a real number >= 0, finite in ``dtype``, the dtype the loss is
    computed in (``alpha=1e39`` overflows float32 and would make every loss NaN)."""
    value = as_real(alpha)
    # comparisons only: under torch.compile(dynamic=True) a float may be a symbol, which they
    # guard on (NaN fails both)
    if value is None or not 0 <= value < OVERFLOWS_FROM[dtype]:
        complaint = bad_type if value is None else bad_value
        allowed = f"a real number >= 0 that is finite in {dtype}"
        raise complaint("alpha", alpha, f"{allowed} (the dtype the loss is computed in)")
    return value


OVERFLOWS_FROM = {"float32": 2.0**128 * (1 - 2.0**-25), "float64": math.inf}
"""The least magnitude that rounds to infinity in each dtype a loss is computed in."""


def check_label_smoothing(smoothing: object) -> float:
    value = as_real(smoothing)
    if value is None or not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        complaint = bad_type if value is None else bad_value
        raise complaint("label_smoothing", smoothing, "a real number in [0, 1]")
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
    positions: tuple[int | None, ...],
    kind: str,
    *,
    dtype_ok: bool,
) -> None:
    """``pad_mask`` and ``labels``: one entry per position (logits' shape less the class axis)."""
    if dtype_ok and shapes_agree(array.shape, positions):
        return
    allowed = f"{kind} of shape {positions} (the shape of the logits without the class axis)"
    if not dtype_ok:
        raise bad_array_type(argument, array, allowed)
    raise bad_array(argument, array, allowed)


def shapes_agree(first: tuple[int | None, ...], second: tuple[int | None, ...]) -> bool:
    """Whether two shapes can be one: the same rank, and equal sizes where both are known."""
    return first == second or (
        len(first) == len(second)
        and all(a is None or b is None or a == b for a, b in zip(first, second, strict=True))
    )


def check_labels_in_range(
    labels: np.ndarray, classes: int, ignore_index: int | None, padded: np.ndarray | None
) -> None:
    """Each label of a position neither padded nor ``ignore_index`` must be in ``[0, classes)``."""
    if labels.size and labels.min() >= 0 and labels.max() < classes:
        return  # every label in range (the common case): two reductions, no masks
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
