"""NumPy: words are ``uint32`` arrays; bfloat16 comes from ``ml_dtypes`` when it is installed."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import numpy as np

from xdrop import kernel
from xdrop.fused import FusedCall
from xdrop.protocol import Backend, Key, NamespaceFunctions, NativeGenerator, SeedArrays
from xdrop.validation import seed_value


class NumpyBackend(Backend, NamespaceFunctions, SeedArrays, NativeGenerator):
    # NamespaceFunctions is LossOps, RateOps and FamilyOps in NumPy's spelling
    name = "numpy"
    namespace = np
    framework = "numpy"

    array_types = (np.ndarray, np.generic)

    def asarray(self, x: object, dtype: str | None = None) -> np.ndarray:
        return np.asarray(x, dtype=None if dtype is None else _dtype(dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        array = np.asarray(x)
        return array.astype(np.float32) if array.dtype.name == "bfloat16" else array.copy()

    def dtype_name(self, x: Any) -> str:
        return _name(x.dtype)

    def shape(self, x: Any) -> tuple[int, ...]:
        return tuple(x.shape)

    # x * s may overflow to infinity, the product the spec asks for: no warning, as the kernel
    def scale(self, x: Any, factor: Any) -> np.ndarray:
        with np.errstate(over="ignore"):
            return np.multiply(x, x.dtype.type(factor))

    # select by multiplying the bits by 0 or 1: +0.0 where dropped, x's exact bits where kept,
    # without np.where's branches on a random mask
    def select(self, keep: Any, x: Any) -> np.ndarray:
        bits = _bits_dtype(x.dtype)
        return np.multiply(x.view(bits), keep, dtype=bits).view(x.dtype)

    def select_chunks(
        self, keep_chunks: Iterable[Any], x: Any, factor: float | None, return_mask: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        # each chunk's part of the output is written as the chunk arrives
        y = np.empty(x.shape, x.dtype)
        keep = np.empty(x.shape, np.bool_) if return_mask else None
        bits = _bits_dtype(x.dtype)
        flat_x, flat_y = np.ravel(x).view(bits), y.reshape(-1).view(bits)
        scale = None if factor is None else x.dtype.type(factor)
        start = 0
        for chunk in keep_chunks:
            stop = start + chunk.size
            kept, out = flat_x[start:stop], flat_y[start:stop]
            if scale is not None:
                with np.errstate(over="ignore"):
                    product = np.multiply(kept.view(x.dtype), scale, out=out.view(x.dtype))
                kept = product.view(bits)
            np.multiply(kept, chunk, out=out)
            if keep is not None:
                keep.reshape(-1)[start:stop] = chunk
            start = stop
        return y, keep

    def fused_dropout(self, x: Any, call: FusedCall) -> tuple[np.ndarray, np.ndarray | None] | None:
        return kernel.numpy_dropout(x, call)

    def broadcast_to(self, a: Any, shape: tuple[int, ...]) -> np.ndarray:
        return np.broadcast_to(a, shape)

    def full_mask(self, shape: tuple[int, ...], value: bool, like: Any = None) -> np.ndarray:
        return np.full(shape, value)

    def reshape(self, a: Any, shape: tuple[int, ...]) -> np.ndarray:
        return np.reshape(a, shape)

    def concat(self, arrays: list[Any], axis: int = 0) -> np.ndarray:
        return np.concatenate(arrays, axis=axis)

    def word(self, value: int, like: Any = None) -> np.ndarray:
        return np.array(value, np.uint32)

    def iota(self, n: int, like: Any = None) -> np.ndarray:
        return np.arange(n, dtype=np.uint32)

    # ufuncs rather than operators: scalar operators warn on the wraparound the spec relies on
    def word_add(self, a: Any, b: Any) -> np.ndarray:
        return np.add(a, b, dtype=np.uint32)

    def word_xor(self, a: Any, b: Any) -> np.ndarray:
        return np.bitwise_xor(a, b, dtype=np.uint32)

    def word_rotate_left(self, a: Any, bits: int) -> np.ndarray:
        return np.bitwise_or(np.left_shift(a, _SHIFTS[bits]), np.right_shift(a, _SHIFTS[32 - bits]))

    # in place where a can hold the result (a 0-d a is a scalar or cannot grow)
    def word_iadd(self, a: Any, b: Any) -> np.ndarray:
        return np.add(a, b, out=a) if a.ndim else self.word_add(a, b)

    def word_ixor(self, a: Any, b: Any) -> np.ndarray:
        return np.bitwise_xor(a, b, out=a) if a.ndim else self.word_xor(a, b)

    def word_irotate_left(self, a: Any, bits: int) -> np.ndarray:
        if not a.ndim:
            return self.word_rotate_left(a, bits)
        high = np.right_shift(a, _SHIFTS[32 - bits])
        return np.bitwise_or(np.left_shift(a, _SHIFTS[bits], out=a), high, out=a)

    def word_shift_right(self, a: Any, bits: int) -> np.ndarray:
        return np.right_shift(a, _SHIFTS[bits])

    def word_less_than(self, a: Any, b: Any) -> np.ndarray:
        return np.less(a, np.uint32(b) if isinstance(b, int) else b)

    def word_from_bool(self, mask: Any) -> np.ndarray:
        return np.asarray(mask).astype(np.uint32)

    def seed_words(self, seed: Any) -> Key:
        value = seed_value(np.asarray(seed))
        return self.word(value >> 32), self.word(value & 0xFFFF_FFFF)

    def seed_array(self, key: Key) -> np.ndarray:
        value = int(key[0]) << 32 | int(key[1])  # 0-d int64 holding the seed's two's complement
        return np.array(value - (1 << 64) if value >> 63 else value, np.int64)

    def native_keep_mask(
        self, shape: tuple[int, ...], keep_probability: float, seed: Any, like: Any
    ) -> np.ndarray:
        return np.random.default_rng(seed).random(shape) < keep_probability

    def native_normals(self, shape: tuple[int, ...], seed: Any, like: Any) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)

    # -- losses: values only, NumPy has no autograd ------------------------------------------------
    def astype(self, x: Any, dtype: str) -> Any:
        with np.errstate(over="ignore"):  # to infinity, silently, as the other frameworks round
            return np.asarray(x).astype(_dtype(dtype))

    def log_softmax(self, x: Any, axis: int) -> Any:
        # a row of -inf (or one holding +inf or NaN) has no distribution: NaN, without a warning
        with np.errstate(divide="ignore", invalid="ignore"):
            peak = np.max(x, axis=axis, keepdims=True)
            shifted = x - np.where(np.isfinite(peak), peak, 0)
            return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))

    def subtract(self, a: Any, b: Any) -> Any:
        # inf - inf is NaN (R-Drop's log-ratio of a class impossible in both passes, replaced
        # right after): IEEE semantics, without a warning
        with np.errstate(invalid="ignore"):
            return np.subtract(a, b)

    # -- rates held in arrays -----------------------------------------------------------------------
    def word_from_float(self, x: Any) -> Any:
        return np.asarray(x).astype(np.uint32)

    # -- the dropout family -------------------------------------------------------------------------
    def log(self, x: Any) -> Any:
        with np.errstate(divide="ignore"):  # log(0) == -inf, as asked
            return np.log(x)

    def max_pool_2d(self, x: Any, window: int, channels_last: bool) -> Any:
        axes = (1, 2) if channels_last else (2, 3)
        pad = [(window - 1, window - 1) if axis in axes else (0, 0) for axis in range(4)]
        padded = np.pad(x, pad)
        for axis in axes:  # separable: the maximum over rows, then over columns
            view = np.lib.stride_tricks.sliding_window_view(padded, window, axis=axis)
            padded = view.max(axis=-1)
        return padded


_SHIFTS = {bits: np.uint32(bits) for bits in range(32)}


@functools.lru_cache
def _name(dtype: np.dtype) -> str:
    return str(dtype.name)  # computed in Python by NumPy: slow enough to matter at 1e3 elements


def _bits_dtype(dtype: np.dtype) -> np.dtype:
    """The unsigned integer type of ``dtype``'s width, to view its values as bits."""
    return np.dtype(f"u{dtype.itemsize}")


def _dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes  # ships with JAX and TensorFlow; NumPy itself has no bfloat16

        return ml_dtypes.bfloat16
    return np.dtype(name)
