"""NumPy: words are ``uint32`` arrays; bfloat16 comes from ``ml_dtypes`` when it is installed."""

from __future__ import annotations

from typing import Any

import numpy as np

from xdrop.protocol import Backend, Key


class NumpyBackend(Backend):
    name = "numpy"
    framework = "numpy"

    array_types = (np.ndarray, np.generic)

    def asarray(self, x: object, dtype: str | None = None) -> np.ndarray:
        return np.asarray(x, dtype=None if dtype is None else _dtype(dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        array = np.asarray(x)
        return array.astype(np.float32) if array.dtype.name == "bfloat16" else array.copy()

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype.name)

    def shape(self, x: Any) -> tuple[int, ...]:
        return tuple(x.shape)

    def multiply(self, x: Any, factor: float) -> np.ndarray:
        return np.multiply(x, x.dtype.type(factor))

    def select(self, keep: Any, x: Any) -> np.ndarray:
        return np.where(keep, x, np.zeros((), x.dtype))

    def broadcast_to(self, a: Any, shape: tuple[int, ...]) -> np.ndarray:
        return np.broadcast_to(a, shape)

    def full_mask(self, shape: tuple[int, ...], value: bool, like: Any = None) -> np.ndarray:
        return np.full(shape, value)

    def reshape(self, a: Any, shape: tuple[int, ...]) -> np.ndarray:
        return np.reshape(a, shape)

    def concat(self, arrays: list[Any]) -> np.ndarray:
        return np.concatenate(arrays)

    def word(self, value: int, like: Any = None) -> np.ndarray:
        return np.array(value, np.uint32)

    def iota(self, n: int, like: Any = None) -> np.ndarray:
        return np.arange(n, dtype=np.uint32)

    # ufuncs rather than operators: scalar operators warn on the wraparound the spec relies on
    def add(self, a: Any, b: Any) -> np.ndarray:
        return np.add(a, b, dtype=np.uint32)

    def xor(self, a: Any, b: Any) -> np.ndarray:
        return np.bitwise_xor(a, b, dtype=np.uint32)

    def rotate_left(self, a: Any, bits: int) -> np.ndarray:
        return np.bitwise_or(
            np.left_shift(a, np.uint32(bits)), np.right_shift(a, np.uint32(32 - bits))
        )

    def less_than(self, a: Any, threshold: int) -> np.ndarray:
        return np.less(a, np.uint32(threshold))

    def seed_words(self, seed: Any) -> Key:
        value = int(seed[0]) << 32 | int(seed[1]) if seed.shape == (2,) else int(seed)
        value %= 1 << (8 * int(seed.dtype.itemsize) if seed.shape == () else 64)
        return self.word(value >> 32), self.word(value & 0xFFFF_FFFF)

    def seed_array(self, key: Key) -> np.ndarray:
        return np.array([int(word) for word in key], np.uint32)

    def native_keep_mask(
        self, shape: tuple[int, ...], keep_probability: float, seed: Any, like: Any
    ) -> np.ndarray:
        return np.random.default_rng(seed).random(shape) < keep_probability


def _dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes  # ships with JAX and TensorFlow; NumPy itself has no bfloat16

        return ml_dtypes.bfloat16
    return np.dtype(name)
