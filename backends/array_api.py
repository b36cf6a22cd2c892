"""Any array whose namespace follows the Python Array API standard (``x.__array_namespace__()``):
CuPy, Dask, ``array-api-strict``, and NumPy or JAX through their namespaces.

It uses only the standard's functions, which shows that the spec needs nothing else; every array
it creates is made on the device of the array it goes with (``device=``). Arrays of a framework
with a dedicated backend still go to that backend: this one is generic and is asked last.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from xdrop.errors import RoleNotImplementedError
from xdrop.protocol import Backend, FamilyOps, Key, OperatorArithmetic, RateOps, SeedArrays

_DTYPE_NAMES = (
    "float16", "bfloat16", "float32", "float64", "bool",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "complex64", "complex128",
)  # fmt: skip


class ArrayApiBackend(Backend, OperatorArithmetic, RateOps, FamilyOps, SeedArrays):
    name = "array_api"
    framework = None
    array_types = ()
    namespace: ClassVar[Any] = np
    """The namespace that Python values and NumPy arrays are converted into."""

    def owns_type(self, kind: type) -> bool:
        return _names_a_namespace(kind)

    def is_array(self, x: object) -> bool:
        return _names_a_namespace(type(x))

    def _namespace(self, x: Any) -> Any:
        return x.__array_namespace__() if self.is_array(x) else self.namespace

    def asarray(self, x: object, dtype: str | None = None) -> Any:
        xp = self.namespace
        if dtype is not None and not hasattr(xp, dtype):
            raise TypeError(f"{xp.__name__} has no {dtype} dtype")
        values = x if dtype is None else np.asarray(x, np.float64)
        return xp.asarray(values, dtype=None if dtype is None else getattr(xp, dtype))

    def in_host_memory(self, x: Any) -> bool:
        # DLPack names each array's device type: 1 is the host's (kDLCPU)
        dlpack_device = getattr(x, "__dlpack_device__", None)
        return dlpack_device is not None and dlpack_device()[0] == 1

    def to_numpy(self, x: Any) -> np.ndarray:
        if self.dtype_name(x) == "bfloat16":
            x = self._namespace(x).astype(x, self._namespace(x).float32)
        return np.array(np.from_dlpack(x) if not hasattr(x, "__array__") else np.asarray(x))

    def dtype_name(self, x: Any) -> str:
        xp = self._namespace(x)
        for name in _DTYPE_NAMES:
            if hasattr(xp, name) and x.dtype == getattr(xp, name):
                return name
        return str(x.dtype)

    def shape(self, x: Any) -> tuple[int | None, ...]:
        return tuple(x.shape)

    def scale(self, x: Any, factor: Any) -> Any:
        return x * factor  # a Python scalar takes the array's dtype in the standard

    def select(self, keep: Any, x: Any) -> Any:
        xp = self._namespace(x)
        return xp.where(keep, x, xp.zeros((), dtype=x.dtype, device=_device(x)))

    def broadcast_to(self, a: Any, shape: tuple[int, ...]) -> Any:
        return self._namespace(a).broadcast_to(a, shape)

    def full_mask(self, shape: tuple[int, ...], value: bool, like: Any = None) -> Any:
        xp = self._namespace(like)
        return xp.full(shape, value, dtype=xp.bool, device=_device(like))

    def reshape(self, a: Any, shape: tuple[int, ...]) -> Any:
        return self._namespace(a).reshape(a, shape)

    def concat(self, arrays: list[Any], axis: int = 0) -> Any:
        return self._namespace(arrays[0]).concat(arrays, axis=axis)

    def word(self, value: int, like: Any = None) -> Any:
        xp = self._namespace(like)
        return xp.asarray(value, dtype=xp.uint32, device=_device(like))

    def iota(self, n: int, like: Any = None) -> Any:
        xp = self._namespace(like)
        return xp.arange(n, dtype=xp.uint32, device=_device(like))

    def word_add(self, a: Any, b: Any) -> Any:
        return self._namespace(a).add(a, b)

    def word_xor(self, a: Any, b: Any) -> Any:
        return self._namespace(a).bitwise_xor(a, b)

    def word_rotate_left(self, a: Any, bits: int) -> Any:
        xp = self._namespace(a)
        left = xp.bitwise_left_shift(a, self.word(bits, a))
        right = xp.bitwise_right_shift(a, self.word(32 - bits, a))
        return xp.bitwise_or(left, right)

    def word_shift_right(self, a: Any, bits: int) -> Any:
        return self._namespace(a).bitwise_right_shift(a, self.word(bits, a))

    def word_less_than(self, a: Any, b: Any) -> Any:
        return self._namespace(a).less(a, self.word(b, a) if isinstance(b, int) else b)

    def word_from_bool(self, mask: Any) -> Any:
        xp = self._namespace(mask)
        return xp.astype(mask, xp.uint32)

    def seed_words(self, seed: Any) -> Key:
        xp = self._namespace(seed)
        if seed.shape == (2,):  # uint32[2]: (hi, lo)
            return seed[0], seed[1]
        width = int(np.dtype(self.dtype_name(seed)).itemsize) * 8
        unsigned = xp.astype(seed, getattr(xp, f"uint{width}"))  # wraps: the unsigned reading
        low = xp.astype(unsigned, xp.uint32)
        if width < 64:
            return xp.zeros((), dtype=xp.uint32, device=_device(seed)), low
        high = xp.bitwise_right_shift(
            unsigned, xp.asarray(32, dtype=xp.uint64, device=_device(seed))
        )
        return xp.astype(high, xp.uint32), low

    def seed_array(self, key: Key) -> Any:
        return self._namespace(key[0]).stack(list(key))

    # -- losses: the standard has every operation R-Dropout needs ------------------------------------
    def astype(self, x: Any, dtype: str) -> Any:
        xp = self._namespace(x)
        return xp.astype(x, getattr(xp, dtype))

    def exp(self, x: Any) -> Any:
        return self._namespace(x).exp(x)

    def log_softmax(self, x: Any, axis: int) -> Any:
        xp = self._namespace(x)
        peak = xp.max(x, axis=axis, keepdims=True)
        # a row of -inf (or holding +inf or NaN) has no distribution: NaN, as elsewhere
        shifted = x - xp.where(xp.isfinite(peak), peak, xp.zeros_like(peak))
        return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))

    def sum(self, x: Any, axis: int | None = None) -> Any:
        return self._namespace(x).sum(x, axis=axis)

    def logical_or(self, a: Any, b: Any) -> Any:
        return self._namespace(a).logical_or(a, b)

    def where(self, condition: Any, a: Any, b: Any) -> Any:
        xp = self._namespace(condition)
        if isinstance(a, (int, float)):  # a Python number takes the other operand's dtype
            a = xp.asarray(a, dtype=b.dtype, device=_device(b))
        elif isinstance(b, (int, float)):
            b = xp.asarray(b, dtype=a.dtype, device=_device(a))
        return xp.where(condition, a, b)

    def take_along_axis(self, x: Any, indices: Any, axis: int) -> Any:
        xp = self._namespace(x)
        if not hasattr(xp, "take_along_axis"):  # the standard has it since 2024.12
            raise RoleNotImplementedError(
                f"{xp.__name__} lacks take_along_axis (Array API 2024.12), which R-Dropout needs"
            )
        return xp.take_along_axis(x, xp.astype(indices, xp.int64), axis=axis)

    # -- rates held in arrays -----------------------------------------------------------------------
    def ceil(self, x: Any) -> Any:
        return self._namespace(x).ceil(x)

    def logical_and(self, a: Any, b: Any) -> Any:
        return self._namespace(a).logical_and(a, b)

    def word_from_float(self, x: Any) -> Any:
        xp = self._namespace(x)
        return xp.astype(x, xp.uint32)

    def split(self, x: Any, sections: int, axis: int) -> list[Any]:
        size = x.shape[axis] // sections
        before = (slice(None),) * axis
        return [x[(*before, slice(i * size, (i + 1) * size), ...)] for i in range(sections)]

    # -- the dropout family -------------------------------------------------------------------------
    def log(self, x: Any) -> Any:
        return self._namespace(x).log(x)

    def sqrt(self, x: Any) -> Any:
        return self._namespace(x).sqrt(x)

    def cos(self, x: Any) -> Any:
        return self._namespace(x).cos(x)

    def max_pool_2d(self, x: Any, window: int, channels_last: bool) -> Any:
        xp = self._namespace(x)
        for axis in (1, 2) if channels_last else (2, 3):  # separable: rows, then columns
            edge = list(x.shape)
            edge[axis] = window - 1
            zeros = xp.zeros(tuple(edge), dtype=x.dtype, device=_device(x))
            padded = xp.concat([zeros, x, zeros], axis=axis)
            size = x.shape[axis] + window - 1
            before = (slice(None),) * axis
            x = padded[(*before, slice(0, size), ...)]
            for shift in range(1, window):
                x = xp.maximum(x, padded[(*before, slice(shift, shift + size), ...)])
        return x


def _names_a_namespace(kind: type) -> bool:
    """Whether arrays of ``kind`` name their Array API namespace. JAX's key arrays declare
    ``__array_namespace__`` as an abstract method that raises: they are no arrays of numbers."""
    method = getattr(kind, "__array_namespace__", None)
    return method is not None and not getattr(method, "__isabstractmethod__", False)


def _device(like: Any) -> Any:
    """The device of ``like`` (None: the namespace's default), for ``device=`` of a new array."""
    return getattr(like, "device", None)
