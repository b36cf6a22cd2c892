"""TensorFlow: words are ``uint32`` tensors (``tf.range`` has none: iota is cast from int64)."""

from __future__ import annotations

import ctypes
import math
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from xdrop import kernel
from xdrop.errors import TracingError
from xdrop.fused import FusedCall
from xdrop.protocol import Backend, FamilyOps, Key, NativeGenerator, RateOps, SeedArrays


class TensorflowBackend(Backend, RateOps, FamilyOps, SeedArrays, NativeGenerator):
    name = "tensorflow"
    framework = "tensorflow"

    def __init__(self) -> None:
        import tensorflow as tf
        from tensorflow.python.ops import (
            control_flow_util,  # where Keras asks the same
            gradients_util,  # where tf.function asks the same
        )

        self.tf = tf
        self.array_types = (tf.Tensor, tf.Variable)
        from tensorflow.python.eager import record  # what tf.custom_gradient itself asks

        self.in_xla_context = control_flow_util.GraphOrParentsInXlaContext
        self.could_record = record.could_possibly_record  # a gradient tape is active
        self.tape_gradients = gradients_util.PossibleTapeGradientTypes
        self.eager_tensor = type(tf.constant(0))

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
        return self._where(keep, x, self.tf.constant(0, x.dtype))  # no Fill kernel eagerly

    def fused_dropout(self, x: Any, call: FusedCall) -> tuple[Any, Any] | None:
        # the compiled kernel on an eager CPU tensor's buffer: one pass, where the XLA step would
        # hand a small one to other threads. Where a tape or an accumulator watches x, the
        # gradient is the same pass on dy (dropout is linear in x), as on torch: no mask is
        # kept for the backward pass, and no XLA step returns one (XLA computes the words twice
        # for a mask returned beside y)
        if (
            type(x) is not self.eager_tensor
            or not self.tf.executing_eagerly()
            or not self.in_host_memory(x)
            or not kernel.usable()
        ):
            return None
        if self.tape_gradients([x]):
            return self._recorded_pass(x, call)
        return self._host_pass(x, call)

    def _host_pass(self, x: Any, call: FusedCall) -> tuple[Any, Any]:
        try:
            source = np.asarray(x)  # a view of x's buffer (row-major, native order): no copy
        except ValueError:  # a 0-d bfloat16 tensor reads as a scalar, which NumPy refuses
            source = np.asarray(x.numpy())
        if source.nbytes < POOLED_FROM_BYTES:
            y = _aligned_empty(source.shape, source.dtype)
            keep = _aligned_empty(source.shape, np.dtype(np.bool_)) if call.return_mask else None
            kernel.host_dropout(source, y, keep, self.dtype_name(x), call)
            return self._from_host(y), None if keep is None else self._from_host(keep)
        # large outputs from TensorFlow's allocator, which keeps the memory it frees
        tf = self.tf
        y = tf.raw_ops.Empty(shape=source.shape, dtype=x.dtype, init=False)
        keep = (
            tf.raw_ops.Empty(shape=source.shape, dtype=tf.bool, init=False)
            if call.return_mask
            else None
        )
        kernel.host_dropout(
            source,
            _writable_view(y),
            None if keep is None else _writable_view(keep),
            self.dtype_name(x),
            call,
        )
        return y, keep

    def _recorded_pass(self, x: Any, call: FusedCall) -> tuple[Any, Any]:
        """The kernel's pass on ``x`` as one recorded operation whose gradient is the same pass
        on ``dy``, itself recorded where a tape watches ``dy`` (higher derivatives, and the
        forward mode, which TensorFlow derives from the gradient's gradient)."""
        tf = self.tf
        backward = call.without_mask()

        @tf.custom_gradient  # type: ignore[untyped-decorator]
        def dropout(x: Any) -> tuple[Any, Callable[..., Any]]:
            y, keep = self._host_pass(x, call)

            def gradient(dy: Any, *_: Any) -> Any:
                passed = self.fused_dropout(dy, backward)
                if passed is not None:
                    return passed[0]
                # dy in a graph or on a device: the mask is drawn again, eagerly, from x
                with tf.init_scope():
                    _, keep = self._host_pass(x, call._replace(return_mask=True))
                factor = None if call.factor is None else tf.constant(call.factor, dy.dtype)
                return self._apply_mask(dy, keep, factor)

            return (y if keep is None else [y, keep]), gradient

        outputs = dropout(x)
        return (outputs[0], outputs[1]) if call.return_mask else (outputs, None)

    def _from_host(self, array: np.ndarray) -> Any:
        """A new, aligned NumPy array as a tensor: its buffer handed over (DLPack), where NumPy
        can."""
        from_dlpack = self.tf.experimental.dlpack.from_dlpack
        if array.dtype.name == "bfloat16":  # no DLPack type code in NumPy: its 16-bit words
            return self.tf.bitcast(
                from_dlpack(array.view(np.uint16).__dlpack__()), self.tf.bfloat16
            )
        return from_dlpack(array.__dlpack__())

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

    def staged_step_returns_mask(self, x: Any) -> bool:
        # a gradient may be taken: it is the mask times the scale. Not otherwise: a step that
        # returns its mask runs as two (stage)
        return bool(self.could_record())

    def stage(self, function: Callable[..., Any], returns_mask: bool = False) -> Callable[..., Any]:
        # eagerly and in graphs without XLA, one fused step; its gradient one XLA pass too (two
        # operations otherwise), compiled for the step's shape and dropped with the step
        select = _EagerlyFlat(self.tf, _quiet(self.compile(self._apply_mask)))
        if not returns_mask:
            return self._mask_gradient(
                _EagerlyFlat(self.tf, _quiet(self.compile(function))), select
            )
        # XLA generates the words anew for each output that reads them: a step returning y and
        # keep would generate them twice. So the mask alone (XLA drops y), then y by the select
        # the gradient runs too: the words once, and a pass over x as cheap as one over dy
        mask = _EagerlyFlat(self.tf, _quiet(self.compile(_mask_of(function))))

        def step(x: Any, *arguments: Any) -> tuple[Any, Any]:
            keep = mask(x, *arguments)
            return select(x, keep, arguments[-1]), keep

        return self._mask_gradient(step, select)

    def stage_any_shape(self, function: Callable[..., Any]) -> Callable[..., Any]:
        # a graph (no XLA) whose sizes relax to None after the first retrace: a new shape costs
        # about a millisecond, against a hundred for an XLA compilation
        tf = self.tf
        staged = _quiet(tf.function(function, reduce_retracing=True, autograph=False))

        def step(x: Any, *arguments: Any) -> tuple[Any, Any]:
            # a tf.Variable is passed as its value (a read the tape records): TensorFlow calls
            # the relaxed trace with a variable of a third shape as one of the second shape
            return staged(tf.convert_to_tensor(x), *arguments)

        return self._mask_gradient(step, self._apply_mask)

    def stage_padded(
        self, function: Callable[..., Any], returns_mask: bool = False
    ) -> Callable[..., Any]:
        tf = self.tf
        # XLA compiles once per concrete shape it is called with (the step is traced once, with
        # its size None): padded to one of PADDED_PER_DOUBLING sizes per doubling, x costs a
        # compilation per size class rather than one per size. A mask is drawn alone, then
        # applied to the padded x, as in stage
        step = _quiet(self.compile(_mask_of(function) if returns_mask else function))
        select = _quiet(self.compile(self._apply_mask))

        def padded(x: Any, *arguments: Any) -> tuple[Any, Any]:
            flat = tf.reshape(x, [-1])
            size = tf.size(flat, out_type=tf.int64)
            flat = tf.pad(flat, [[0, padded_size(tf, size) - size]])
            outputs = step(flat, *arguments)
            shape = tf.shape(x)  # leading slices share the step's buffers: no copy
            if not returns_mask:
                return tf.reshape(outputs[0][:size], shape), None
            y = select(flat, outputs, arguments[-1])
            return tf.reshape(y[:size], shape), tf.reshape(outputs[:size], shape)

        # the gradient by the graph's operations: XLA would compile it for every unpadded size
        return self._mask_gradient(padded, self._apply_mask)

    def _apply_mask(self, v: Any, keep: Any, factor: Any) -> Any:
        """``where(keep, v * factor, +0.0)`` (``v`` for factor None): dropout's output for
        ``v = x``, its gradient for ``v = dy``."""
        kept = v if factor is None else v * factor
        return self._where(keep, kept, self.tf.constant(0, v.dtype))

    def _mask_gradient(
        self, step: Callable[..., Any], backward: Callable[..., Any]
    ) -> Callable[..., Any]:
        """``step``, ``(x, key, start, kept_count, factor) -> (y, keep)``, with the gradient
        ``backward(dy, keep, factor)``: ``where(keep, dy * factor, 0)`` (``dy`` for factor
        None), what ``tf.nn.dropout``'s backward pass computes too. TensorFlow's own
        differentiation of the step would also keep ``x`` and reduce ``dy * x`` for the scale's
        gradient on every backward pass; ``p`` gets no gradient through the scale, as on the
        other backends."""
        tf = self.tf

        def call(x: Any, *arguments: Any) -> tuple[Any, Any]:
            if not self.could_record():  # no tape: nothing to differentiate (nor a mask)
                result: tuple[Any, Any] = step(x, *arguments)
                return result
            factor = arguments[-1]

            @tf.custom_gradient  # type: ignore[untyped-decorator]
            def dropout(x: Any) -> tuple[list[Any], Callable[..., Any]]:
                y, keep = step(x, *arguments)

                def gradient(dy: Any, *_: Any) -> Any:
                    return backward(dy, keep, factor)

                return [y, keep], gradient

            y, keep = dropout(x)
            return y, keep

        return call

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
        if seed.dtype.size == 8 and sys.byteorder == "little":  # two operations, not five
            low, high = tf.unstack(tf.bitcast(seed, tf.uint32))  # the words in memory order
            return high, low
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
        tf = self.tf
        pair = self._pair(seed)
        if tf.executing_eagerly():  # the raw kernels skip the wrapper's (1 - 0) * u + 0
            key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=pair)
            uniform = tf.raw_ops.StatelessRandomUniformV2(
                shape=shape, key=key, counter=counter, alg=AUTO_SELECT
            )
        else:
            uniform = tf.random.stateless_uniform(shape, seed=pair, alg=self._philox())
        return uniform < keep_probability

    def native_normals(self, shape: tuple[int, ...], seed: int | Key | None, like: Any) -> Any:
        return self.tf.random.stateless_normal(shape, seed=self._pair(seed), alg=self._philox())

    def _philox(self) -> str:
        """Philox, by the name that costs least. On CPU and GPU ``auto_select`` is Philox with the
        key ``"philox"`` gives, scrambled from the seed by one kernel rather than some thirty
        Python-level operations (eagerly, 1 ms of a 1.4 ms call at 1e3 elements); under XLA it
        would pick a far slower generator, so Philox is named there."""
        graph = self.tf.compat.v1.get_default_graph()
        return "philox" if self.in_xla_context(graph) else "auto_select"

    def _pair(self, seed: int | Key | None) -> Any:
        """The int64[2] seed of TensorFlow's stateless generators for a host or traced seed."""
        tf = self.tf
        if isinstance(seed, int):
            return tf.constant([seed >> 32, seed & 0xFFFF_FFFF], tf.int64)
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
        return self._where(condition, *self._tensors(a, b))

    def take_along_axis(self, x: Any, indices: Any, axis: int) -> Any:
        tf = self.tf
        if axis == (x.shape.rank or 0) - 1:
            # the class axis of losses: one gather_nd at each position's coordinates and its index,
            # whose gradient is one scatter_nd into a dense array (tf.numpy's take_along_axis runs
            # ~40 ops, a gather with batch_dims ~20 more for its gradient, a flat gather's sparse
            # gradient a dozen more to make it dense); an index out of range is gather_nd's error
            if indices.dtype != tf.int64:  # the coordinates' dtype
                indices = tf.cast(indices, tf.int64)
            positions = indices.shape[:-1]
            if positions.is_fully_defined():
                grid = np.indices(positions.as_list(), dtype=np.int64)
                coordinates = tf.constant(np.moveaxis(grid, 0, -1))
            else:  # every position of a tensor of ones, in row-major order
                sizes = tf.shape(indices, out_type=tf.int64)[:-1]
                everywhere = tf.where(tf.ones(sizes, tf.bool))
                coordinates = tf.reshape(everywhere, tf.concat([sizes, [len(positions)]], 0))
            # each index given the size-1 class axis the result keeps: [..., 1, rank] picks [..., 1]
            picks = tf.expand_dims(tf.concat([coordinates, indices], -1), -2)
            return tf.gather_nd(x, picks)
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

    def _where(self, condition: Any, a: Any, b: Any) -> Any:
        """``tf.where`` for any rank: its kernel (SelectV2) takes at most 8 dimensions, so
        operands of more (or of a rank known only at run time) are broadcast to one shape and
        selected flat."""
        tf = self.tf
        ranks = [operand.shape.rank for operand in (condition, a, b)]
        if all(rank is not None and rank <= SELECT_RANK for rank in ranks):
            return tf.where(condition, a, b)
        shape = tf.broadcast_dynamic_shape(
            tf.shape(condition), tf.broadcast_dynamic_shape(tf.shape(a), tf.shape(b))
        )
        flat = [tf.reshape(tf.broadcast_to(operand, shape), [-1]) for operand in (condition, a, b)]
        return tf.reshape(tf.where(*flat), shape)

    def _tensors(self, a: Any, b: Any) -> tuple[Any, Any]:
        """``a`` and ``b`` with a Python number converted to the other operand's dtype."""
        if isinstance(a, (int, float)):
            a = self.tf.constant(a, b.dtype)
        elif isinstance(b, (int, float)):
            b = self.tf.constant(b, a.dtype)
        return a, b


SELECT_RANK = 8
"""The most dimensions TensorFlow's select kernel takes."""

PADDED_PER_DOUBLING = 4
"""Sizes a flattened ``x`` of run-time size is padded to per doubling (at most 25% more)."""
PADDED_AT_LEAST = 1024
"""The smallest padded size: smaller inputs share one compilation."""


def padded_size(tf: Any, size: Any) -> Any:
    """The size a flat ``x`` of ``size`` elements (int64, elementwise) is padded to: the next
    multiple of ``2**b / (2 * PADDED_PER_DOUBLING)``, where ``2**(b - 1) < size <= 2**b``, and at
    least ``PADDED_AT_LEAST``: ``5/8, 6/8, 7/8, 8/8`` of ``2**b``, exact integers throughout."""
    powers = tf.constant([1 << bit for bit in range(63)], tf.int64)
    below = tf.reshape(size - 1, [-1])  # b = bit_length(size - 1): the powers of two up to it
    bits = tf.searchsorted(powers, below, side="right", out_type=tf.int64)
    shift = tf.maximum(tf.reshape(bits, tf.shape(size)) - PADDED_PER_DOUBLING.bit_length(), 0)
    unit = tf.bitwise.left_shift(tf.ones_like(size), shift)
    return tf.maximum((size + unit - 1) // unit * unit, PADDED_AT_LEAST)


def _quiet(function: Any) -> Any:
    """``function``, a ``tf.function`` that xdrop stages, without TensorFlow's warning that it
    retraces often: xdrop's steps trace once per program by design (each new shape or dtype), and
    the warning's advice is for a user's own functions. The switch is the one TensorFlow sets on
    the functions it restores from a SavedModel; a version without it just warns."""
    function._omit_frequent_tracing_warning = True
    return function


ALIGNMENT = 64
"""The alignment TensorFlow's CPU kernels assume of a tensor's buffer (``EIGEN_MAX_ALIGN_BYTES``;
a tensor handed a less aligned one through DLPack fails a check that ends the process)."""


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """An uninitialised C-contiguous array whose buffer starts at a multiple of ``ALIGNMENT``."""
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def _mask_of(step: Callable[..., Any]) -> Callable[..., Any]:
    """The keep mask alone of a staged ``step`` that returns ``(y, keep)``: XLA drops ``y``."""
    return lambda *arguments: step(*arguments)[1]


AUTO_SELECT = 3
"""``tf.random.Algorithm.AUTO_SELECT``'s value, as the raw generator kernels take it."""

POOLED_FROM_BYTES = 1 << 20
"""Outputs of the kernel from this size up come from TensorFlow's allocator (:func:`_writable_view`),
which keeps the memory it frees. glibc's ``malloc`` hands the top of its heap back to the system
once more than twice its mmap threshold is free there, as it is after a training step frees its
output and its gradient of a few MiB each: the next step's NumPy buffers are new pages again,
whose faults cost more than the pass (1e6 float32 elements forward and backward: 6.0 ms against
2.6 ms; above 32 MiB every NumPy buffer is new pages: 16 ms against 6 ms at 1e7). Below 1 MiB a
NumPy buffer is cheaper than the allocator's call and view (about 80 µs)."""


def _writable_view(tensor: Any) -> np.ndarray:
    """A writable NumPy view of a new tensor's buffer, for the kernel to fill in. TensorFlow's own
    view is read-only because a tensor may be shared; one just made by ``Empty`` (unshared,
    uninitialised memory) is xdrop's alone until it is returned."""
    view = np.asarray(tensor)
    buffer = memoryview((ctypes.c_byte * view.nbytes).from_address(view.ctypes.data))
    return np.frombuffer(buffer, view.dtype).reshape(view.shape)


class _EagerlyFlat:
    """A staged ``tf.function`` of one signature, called eagerly through its concrete function.

    A ``tf.function`` call binds its arguments and works out their trace types before it runs
    the function it traced: for the few scalars of a staged step, five times what running it
    costs at a thousand elements. Eagerly, every call of a step has the signature of its first
    (one program: ``x``'s shape and dtype, scalar words, the factor in ``x``'s dtype), so the
    concrete function traced for it is run on the flat tensors directly; TensorFlow still
    records it on a gradient tape. A call of another signature, with other than eager tensors
    (a variable), inside a graph, or with ``tf.config.run_functions_eagerly(True)`` goes
    through the ``tf.function`` itself."""

    def __init__(self, tf: Any, function: Any) -> None:
        self.tf = tf
        self.function = function
        self.eager_tensor = type(tf.constant(0))
        self.concrete: dict[tuple[Any, ...], Any] = {}

    def __call__(self, *arguments: Any) -> Any:
        tf = self.tf
        if not tf.executing_eagerly() or tf.config.functions_run_eagerly():
            return self.function(*arguments)
        flat: list[Any] = []  # the step's arguments are tensors, pairs of tensors, or None
        for argument in arguments:
            if type(argument) is tuple:
                flat.extend(argument)
            elif argument is not None:
                flat.append(argument)
        if any(type(tensor) is not self.eager_tensor for tensor in flat):
            return self.function(*arguments)
        signature = (len(arguments), *(tensor.dtype for tensor in flat))
        concrete = self.concrete.get(signature)
        if concrete is None:
            concrete = self.concrete[signature] = self.function.get_concrete_function(*arguments)
        call_flat = getattr(concrete, "_call_flat", None)
        if call_flat is None:  # a TensorFlow without it: the concrete function's own call
            return concrete(*arguments)
        return call_flat(flat, concrete.captured_inputs)
