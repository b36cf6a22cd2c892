"""TensorFlow: words are ``uint32`` tensors (``tf.range`` has none: iota is cast from int64)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from xdrop.errors import TracingError
from xdrop.protocol import Backend, FamilyOps, Key, NativeGenerator, RateOps, SeedArrays


class TensorflowBackend(Backend, RateOps, FamilyOps, SeedArrays, NativeGenerator):
    name = "tensorflow"
    framework = "tensorflow"

    def __init__(self) -> None:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util  # where Keras asks the same

        self.tf = tf
        self.array_types = (tf.Tensor, tf.Variable)
        self.in_xla_context = control_flow_util.GraphOrParentsInXlaContext

    def asarray(self, x: object, dtype: str | None = None) -> Any:
        tensor = self.tf.convert_to_tensor(x)
        return tensor if dtype is None else self.tf.cast(tensor, dtype)

    def in_host_memory(self, x: Any) -> bool:
        return "CPU" in x.device.rsplit("/", 1)[-1]

    def to_numpy(self, x: Any) -> np.ndarray:
        if x.dtype == self.tf.bfloat16:
            x = self.tf.cast(x, self.tf.float32)
        return np.array(x.numpy())

    def dtype_name(self, x: Any) -> str:
        return str(x.dtype.name)

    def shape(self, x: Any) -> tuple[int | None, ...]:
        if x.shape.rank is None:
            raise TracingError(
                "xdrop needs tensors (x, p, seeds) of known rank, got one of unknown rank while "
                "tracing: give the tf.function an input_signature with each rank "
                "(tf.TensorSpec([None, None]) for any 2-d tensor), or call "
                "x = tf.ensure_shape(x, [None, None]) first"
            )
        return tuple(x.shape.as_list())

    def runtime_shape(self, x: Any) -> tuple[Any, ...]:
        static = self.shape(x)
        if None not in static:
            return static
        dynamic = self.tf.shape(x)  # int32 scalars beside Python ints: what tf.reshape takes
        return tuple(dynamic[axis] if size is None else size for axis, size in enumerate(static))

    def size(self, shape: tuple[Any, ...]) -> Any:
        if all(isinstance(size, int) for size in shape):
            return math.prod(shape)
        return self.tf.reduce_prod(
            self.tf.stack([self.tf.cast(size, self.tf.int32) for size in shape])
        )

    def dim_array(self, dim: Any, dtype: str) -> Any:
        return self.tf.cast(dim, dtype)

    def scale(self, x: Any, factor: Any) -> Any:
        return x * (
            factor if isinstance(factor, self.tf.Tensor) else self.tf.constant(factor, x.dtype)
        )

    def select(self, keep: Any, x: Any) -> Any:
        return self.tf.where(keep, x, self.tf.zeros((), x.dtype))

    def broadcast_to(self, a: Any, shape: tuple[int, ...]) -> Any:
        return self.tf.broadcast_to(a, shape)

    def full_mask(self, shape: tuple[int, ...], value: bool, like: Any = None) -> Any:
        return self.tf.fill(shape, value)

    def reshape(self, a: Any, shape: tuple[int, ...]) -> Any:
        return self.tf.reshape(a, shape)

    def concat(self, arrays: list[Any], axis: int = 0) -> Any:
        return self.tf.concat(arrays, axis)

    def word(self, value: int, like: Any = None) -> Any:
        return self.tf.constant(value, self.tf.uint32)

    def iota(self, n: Any, like: Any = None) -> Any:
        tf = self.tf
        return tf.cast(tf.range(tf.cast(n, tf.int64), dtype=tf.int64), tf.uint32)

    def word_add(self, a: Any, b: Any) -> Any:
        return self.tf.math.add(a, b)

    def word_xor(self, a: Any, b: Any) -> Any:
        return self.tf.bitwise.bitwise_xor(a, b)

    def word_rotate_left(self, a: Any, bits: int) -> Any:
        bitwise = self.tf.bitwise  # shift amounts must have the shifted dtype
        left = bitwise.left_shift(a, self.word(bits))
        return bitwise.bitwise_or(left, bitwise.right_shift(a, self.word(32 - bits)))

    def word_shift_right(self, a: Any, bits: int) -> Any:
        return self.tf.bitwise.right_shift(a, self.word(bits))  # logical on unsigned words

    def word_less_than(self, a: Any, b: Any) -> Any:
        return self.tf.math.less(a, self.word(b) if isinstance(b, int) else b)

    def word_from_bool(self, mask: Any) -> Any:
        return self.tf.cast(mask, self.tf.uint32)

    def compile(self, function: Callable[..., Any]) -> Callable[..., Any]:
        return self.tf.function(function, jit_compile=True, autograph=False)

    def compile_runtime_sizes(self, function: Callable[..., Any]) -> Callable[..., Any]:
        tf = self.tf

        def call(items: list[Any], fixed: list[Any]) -> Any:  # the signature of the first call
            def relaxed(a: Any) -> Any:
                shape = a.shape.as_list()
                batch = [None] if len(shape) >= 2 and shape[0] >= 2 else shape[:1]
                return tf.TensorSpec([*batch, *shape[1:]], a.dtype)

            signature = [
                tf.nest.map_structure(relaxed, items),
                tf.nest.map_structure(lambda a: tf.TensorSpec(a.shape, a.dtype), fixed),
            ]
            compiled = tf.function(function, input_signature=signature, autograph=False)
            return compiled(items, fixed)

        return call

    def stage(self, function: Callable[..., Any]) -> Callable[..., Any]:
        return _quiet(self.compile(function))  # eagerly and in graphs without XLA, one fused step

    def stage_any_shape(self, function: Callable[..., Any]) -> Callable[..., Any]:
        # a graph (no XLA) whose sizes relax to None after the first retrace: a new shape costs
        # about a millisecond, against a hundred for an XLA compilation
        return _quiet(self.tf.function(function, reduce_retracing=True, autograph=False))

    def is_tracing(self, x: Any) -> bool:
        return not self.tf.executing_eagerly()

    def in_trace(self) -> bool:
        return not self.tf.executing_eagerly()

    def is_compiling(self, x: Any) -> bool:  # inside tf.function(jit_compile=True)
        return self.is_tracing(x) and self.in_xla_context(self.tf.compat.v1.get_default_graph())

    def seed_words(self, seed: Any) -> Key:
        tf = self.tf
        seed = tf.convert_to_tensor(seed)
        if seed.shape.rank == 1:  # uint32[2]: (hi, lo)
            return seed[0], seed[1]
        unsigned = {8: tf.uint8, 16: tf.uint16, 32: tf.uint32, 64: tf.uint64}[seed.dtype.size * 8]
        value = tf.cast(tf.bitcast(seed, unsigned), tf.uint64)  # unsigned reading of the width
        low = tf.cast(tf.bitwise.bitwise_and(value, tf.constant(0xFFFF_FFFF, tf.uint64)), tf.uint32)
        high = tf.cast(tf.bitwise.right_shift(value, tf.constant(32, tf.uint64)), tf.uint32)
        return high, low

    def seed_array(self, key: Key) -> Any:
        tf = self.tf
        high, low = (tf.cast(word, tf.uint64) for word in key)
        combined = tf.bitwise.bitwise_or(
            tf.bitwise.left_shift(high, tf.constant(32, tf.uint64)), low
        )
        return tf.bitcast(combined, tf.int64)

    def native_keep_mask(
        self, shape: tuple[int, ...], keep_probability: float, seed: int | Key | None, like: Any
    ) -> Any:
        # Philox named, not left to auto_select: XLA on CPU would pick a far slower generator
        uniform = self.tf.random.stateless_uniform(shape, seed=self._pair(seed), alg="philox")
        return uniform < keep_probability

    def native_normals(self, shape: tuple[int, ...], seed: int | Key | None, like: Any) -> Any:
        return self.tf.random.stateless_normal(shape, seed=self._pair(seed), alg="philox")

    def _pair(self, seed: int | Key | None) -> Any:
        """The int64[2] seed of TensorFlow's stateless generators for a host or traced seed."""
        tf = self.tf
        if isinstance(seed, int):
            seed = (self.word(seed >> 32), self.word(seed & 0xFFFF_FFFF))
        assert seed is not None  # no global generator: seed=None was resolved to an integer
        return tf.stack([tf.cast(word, tf.int64) for word in seed])

    # -- losses: a Python number becomes a tensor of the other operand's dtype first -------------
    def astype(self, x: Any, dtype: str) -> Any:
        return self.tf.cast(x, dtype)

    def exp(self, x: Any) -> Any:
        return self.tf.exp(x)

    def log_softmax(self, x: Any, axis: int) -> Any:
        return self.tf.nn.log_softmax(x, axis=axis)

    def sum(self, x: Any, axis: int | None = None) -> Any:
        return self.tf.reduce_sum(x, axis)

    def add(self, a: Any, b: Any) -> Any:
        return self.tf.math.add(*self._tensors(a, b))

    def subtract(self, a: Any, b: Any) -> Any:
        return self.tf.math.subtract(*self._tensors(a, b))

    def multiply(self, a: Any, b: Any) -> Any:
        return self.tf.math.multiply(*self._tensors(a, b))

    def divide(self, a: Any, b: Any) -> Any:
        return self.tf.math.truediv(*self._tensors(a, b))

    def equal(self, a: Any, b: Any) -> Any:
        return self.tf.math.equal(*self._tensors(a, b))

    def logical_or(self, a: Any, b: Any) -> Any:
        return self.tf.math.logical_or(a, b)

    def where(self, condition: Any, a: Any, b: Any) -> Any:
        return self.tf.where(condition, *self._tensors(a, b))

    def take_along_axis(self, x: Any, indices: Any, axis: int) -> Any:
        tf = self.tf
        return tf.experimental.numpy.take_along_axis(x, tf.cast(indices, tf.int64), axis)

    def split(self, x: Any, sections: int, axis: int) -> list[Any]:
        return list(self.tf.split(x, sections, axis))

    # -- rates held in arrays -----------------------------------------------------------------------
    def ceil(self, x: Any) -> Any:
        return self.tf.math.ceil(x)

    def less_equal(self, a: Any, b: Any) -> Any:
        return self.tf.math.less_equal(*self._tensors(a, b))

    def logical_and(self, a: Any, b: Any) -> Any:
        return self.tf.math.logical_and(a, b)

    def word_from_float(self, x: Any) -> Any:
        return self.tf.cast(self.tf.cast(x, self.tf.int64), self.tf.uint32)

    # -- the dropout family -------------------------------------------------------------------------
    def log(self, x: Any) -> Any:
        return self.tf.math.log(x)

    def sqrt(self, x: Any) -> Any:
        return self.tf.math.sqrt(x)

    def cos(self, x: Any) -> Any:
        return self.tf.math.cos(x)

    def max_pool_2d(self, x: Any, window: int, channels_last: bool) -> Any:
        tf = self.tf  # max_pool2d on CPU takes NHWC only
        nhwc = x if channels_last else tf.transpose(x, (0, 2, 3, 1))
        padded = tf.pad(nhwc, [(0, 0), (window - 1, window - 1), (window - 1, window - 1), (0, 0)])
        pooled = tf.nn.max_pool2d(padded, window, strides=1, padding="VALID")
        return pooled if channels_last else tf.transpose(pooled, (0, 3, 1, 2))

    def _tensors(self, a: Any, b: Any) -> tuple[Any, Any]:
        """``a`` and ``b`` with a Python number converted to the other operand's dtype."""
        if isinstance(a, (int, float)):
            a = self.tf.constant(a, b.dtype)
        elif isinstance(b, (int, float)):
            b = self.tf.constant(b, a.dtype)
        return a, b


def _quiet(function: Any) -> Any:
    """``function``, a ``tf.function`` that xdrop stages, without TensorFlow's warning that it
    retraces often: xdrop's steps trace once per program by design (each new shape or dtype), and
    the warning's advice is for a user's own functions. The switch is the one TensorFlow sets on
    the functions it restores from a SavedModel; a version without it just warns."""
    function._omit_frequent_tracing_warning = True
    return function
