"""A tiny array library of its own (``Boxed`` wraps a NumPy array) and its xdrop backend."""

from __future__ import annotations

from typing import Any

import numpy as np

from xdrop.protocol import Backend, Key, SeedArrays
from xdrop.validation import seed_value


class Boxed:
    """An array type that xdrop knows nothing about until the plugin registers it."""

    def __init__(self, values: Any) -> None:
        self.values = np.asarray(values)

    def __repr__(self) -> str:
        return f"Boxed({self.values!r})"


def _unbox(a: Any) -> Any:
    return a.values if isinstance(a, Boxed) else a


class BoxedBackend(Backend, SeedArrays):
    name = "boxed"
    framework = "xdrop_testplugin"
    array_types = (Boxed,)

    def asarray(self, x: object, dtype: str | None = None) -> Boxed:
        return Boxed(np.asarray(_unbox(x), dtype=dtype))

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(_unbox(x))

    def dtype_name(self, x: Any) -> str:
        return str(_unbox(x).dtype.name)

    def shape(self, x: Any) -> tuple[int, ...]:
        return tuple(_unbox(x).shape)

    def scale(self, x: Any, factor: float) -> Boxed:
        values = _unbox(x)
        return Boxed(values * values.dtype.type(factor))

    def select(self, keep: Any, x: Any) -> Boxed:
        values = _unbox(x)
        return Boxed(np.where(_unbox(keep), values, np.zeros((), values.dtype)))

    def broadcast_to(self, a: Any, shape: tuple[int, ...]) -> Boxed:
        return Boxed(np.broadcast_to(_unbox(a), shape))

    def full_mask(self, shape: tuple[int, ...], value: bool, like: Any = None) -> Boxed:
        return Boxed(np.full(shape, value))

    def reshape(self, a: Any, shape: tuple[int, ...]) -> Boxed:
        return Boxed(np.reshape(_unbox(a), shape))

    def concat(self, arrays: list[Any], axis: int = 0) -> Boxed:
        return Boxed(np.concatenate([_unbox(a) for a in arrays], axis=axis))

    def word(self, value: int, like: Any = None) -> Boxed:
        return Boxed(np.array(value, np.uint32))

    def iota(self, n: int, like: Any = None) -> Boxed:
        return Boxed(np.arange(n, dtype=np.uint32))

    def word_add(self, a: Any, b: Any) -> Boxed:
        return Boxed(np.add(_unbox(a), _unbox(b), dtype=np.uint32))

    def word_xor(self, a: Any, b: Any) -> Boxed:
        return Boxed(np.bitwise_xor(_unbox(a), _unbox(b), dtype=np.uint32))

    def word_rotate_left(self, a: Any, bits: int) -> Boxed:
        words = _unbox(a)
        shifted = np.left_shift(words, np.uint32(bits)), np.right_shift(words, np.uint32(32 - bits))
        return Boxed(np.bitwise_or(*shifted))

    def word_shift_right(self, a: Any, bits: int) -> Boxed:
        return Boxed(np.right_shift(_unbox(a), np.uint32(bits)))

    def word_less_than(self, a: Any, b: Any) -> Boxed:
        return Boxed(np.less(_unbox(a), np.uint32(b) if isinstance(b, int) else _unbox(b)))

    def word_from_bool(self, mask: Any) -> Boxed:
        return Boxed(_unbox(mask).astype(np.uint32))

    def seed_words(self, seed: Any) -> Key:
        value = seed_value(_unbox(seed))
        return self.word(value >> 32), self.word(value & 0xFFFF_FFFF)

    def seed_array(self, key: Key) -> Boxed:
        return Boxed(np.array(int(_unbox(key[0])) << 32 | int(_unbox(key[1])), np.uint64))
