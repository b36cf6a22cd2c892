"""The backend protocol: the operations the spec needs from an array framework, in named roles.

A backend owns one framework's arrays. What it must implement is :class:`Backend`, three roles:

- :class:`WordArithmetic`: 32-bit unsigned words modulo 2**32 (``word_add``, ``word_xor``,
  ``word_rotate_left``...), the arithmetic of the counter-based generator;
- :class:`ArrayOps`: array plumbing (conversion, dtype and shape queries, ``scale``, ``select``);
- :class:`Staging`: how the framework traces and compiles; the defaults describe an eager-only
  framework.

The other roles are optional; a backend class lists those it implements among its bases, and a
call that needs a missing one fails with :class:`~xdrop.errors.RoleNotImplementedError`:

- :class:`LossOps`: floating-point operations with the Array API standard's names (``add``,
  ``subtract``, ``multiply``, ``divide``...), for the R-Dropout losses;
- :class:`RateOps` (extends LossOps): a rate ``p`` held in an array, inside a compiled graph;
- :class:`FamilyOps` (extends LossOps): the dropout family and Monte Carlo dropout;
- :class:`SeedArrays`: seeds held in arrays, so that seeds can be traced values;
- :class:`NativeGenerator`: ``rng="native"``, the framework's own generator.

Two helper base classes implement roles the way a family of frameworks spells them:
:class:`OperatorArithmetic` (Python's operators) and :class:`NamespaceFunctions` (a NumPy-like
module's functions).

No role holds dropout or R-Drop logic: the algorithms live once in :mod:`xdrop.spec`,
:mod:`xdrop.rdrop` and :mod:`xdrop.family`. ``docs/backends.md`` states each method's contract.

Words are opaque to the spec: a backend may carry them in any integer dtype as long as the
operations behave as arithmetic modulo 2**32 (PyTorch, for one, has no eager uint32 arithmetic).

Sizes may be known only at run time (a ``None`` batch dimension in ``tf.function``, a symbolic
dimension under ``jax.export``, a dynamic dimension under ``torch.compile``). :meth:`ArrayOps.shape`
says what is known while tracing; a *dim* is a Python int or whatever the framework uses for a
run-time size (a scalar tensor, a symbolic dimension), which ``iota``, ``reshape``,
``broadcast_to`` and ``full_mask`` accept.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, TypeVar, cast

import numpy as np

from xdrop.errors import RoleNotImplementedError
from xdrop.fused import FusedCall
from xdrop.tracing import cached_host_constant

Array = Any  # a framework's array; the protocol cannot name it without importing the framework
Words = Any  # a framework's array of 32-bit words, in whatever dtype the backend carries them
Key = tuple[Any, Any]  # the words (k0, k1) = (seed >> 32, seed & 0xFFFFFFFF)
Dim = Any  # a size: a Python int, or the framework's run-time size (tensor, symbolic dimension)


class WordArithmetic(abc.ABC):
    """Arithmetic on 32-bit unsigned words (modulo 2**32), elementwise and broadcasting."""

    @abc.abstractmethod
    def word(self, value: int, like: Array | None = None) -> Words:
        """A 0-d word holding ``value`` (``0 <= value < 2**32``), on ``like``'s device."""

    @abc.abstractmethod
    def word_add(self, a: Words, b: Words) -> Words:
        """``(a + b) mod 2**32``."""

    @abc.abstractmethod
    def word_xor(self, a: Words, b: Words) -> Words:
        """``a ^ b``."""

    @abc.abstractmethod
    def word_rotate_left(self, a: Words, bits: int) -> Words:
        """``a`` rotated left by ``bits`` (``0 < bits < 32``)."""

    @abc.abstractmethod
    def word_shift_right(self, a: Words, bits: int) -> Words:
        """``a >> bits``, logical (zeros shifted in), for ``0 < bits < 32``."""

    @abc.abstractmethod
    def word_less_than(self, a: Words, b: Words | int) -> Array:
        """Boolean ``a < b``, unsigned, broadcasting; ``b`` is words or a Python int in
        ``[0, 2**32)``."""

    @abc.abstractmethod
    def word_from_bool(self, mask: Array) -> Words:
        """The words 1 where ``mask`` is True, 0 elsewhere."""

    # In-place forms, as ``operator.iadd``: ``a = ops.word_iadd(a, b)`` may compute the result in
    # ``a``'s storage and return ``a``. The spec passes as ``a`` only words it made itself and
    # never reads again, of the result's shape or 0-d (a 0-d ``a`` cannot hold a larger result).
    # The defaults are the plain operations; backends with mutable arrays save the allocations.
    def word_iadd(self, a: Words, b: Words) -> Words:
        """``(a + b) mod 2**32``, possibly in ``a``'s storage."""
        return self.word_add(a, b)

    def word_ixor(self, a: Words, b: Words) -> Words:
        """``a ^ b``, possibly in ``a``'s storage."""
        return self.word_xor(a, b)

    def word_irotate_left(self, a: Words, bits: int) -> Words:
        """``a`` rotated left by ``bits``, possibly in ``a``'s storage."""
        return self.word_rotate_left(a, bits)


class ArrayOps(abc.ABC):
    """The framework's arrays: conversion, queries, and the few operations dropout applies."""

    array_types: tuple[type, ...]
    """The types of the arrays this backend owns (set when the backend is created); dispatch
    checks ``issubclass(type(x), array_types)``."""

    def has_float64(self) -> bool:
        """Whether float64 arrays can be computed with here (JAX needs ``jax_enable_x64``)."""
        return True

    def owns_type(self, kind: type) -> bool:
        """Whether arrays of type ``kind`` belong to this backend (dispatch asks once per type)."""
        return issubclass(kind, self.array_types)

    def is_array(self, x: object) -> bool:
        """Whether ``x`` is an array this backend owns."""
        return isinstance(x, self.array_types)

    @abc.abstractmethod
    def asarray(self, x: object, dtype: str | None = None) -> Array:
        """``x`` (a NumPy array, Python scalar or nested list) as this framework's array."""

    def in_host_memory(self, x: Array) -> bool:
        """Whether ``x`` lives in the host's memory (a CPU device), so that reading it back waits
        for no accelerator. Default: False."""
        return False

    def holds_values(self, x: Array) -> bool:
        """Whether ``x`` holds values that a computation can use, False for a placeholder of
        shape and dtype alone (a torch tensor on the meta device). A traced rate is checked with
        it, since it cannot be read. Default: True."""
        return True

    @abc.abstractmethod
    def to_numpy(self, x: Array) -> np.ndarray:
        """A NumPy copy of ``x`` (bfloat16 may come back as float32, which holds it exactly)."""

    @abc.abstractmethod
    def dtype_name(self, x: Array) -> str:
        """The dtype's canonical name: ``"float32"``, ``"bfloat16"``, ``"int64"``, ``"bool"``..."""

    @abc.abstractmethod
    def shape(self, x: Array) -> tuple[int | None, ...]:
        """The shape of ``x`` as known now: ``None`` for a size known only at run time."""

    def runtime_shape(self, x: Array) -> tuple[Dim, ...]:
        """The shape of ``x`` as dims: ints where known, run-time sizes elsewhere. The default
        suits backends whose shapes are always known."""
        return self.shape(x)

    def size(self, shape: tuple[Dim, ...]) -> Dim:
        """The number of elements of an array of ``shape`` (a dim)."""
        return math.prod(shape)

    def dim_array(self, dim: Dim, dtype: str) -> Array:
        """A dim as a 0-d array of ``dtype`` (the count a loss divides by)."""
        return self.asarray(np.asarray(dim, np.float64), dtype)

    @abc.abstractmethod
    def scale(self, x: Array, factor: float | Array) -> Array:
        """``x * factor`` in ``x``'s dtype; ``factor`` is a Python float exactly representable in
        that dtype, or a 0-d array of that dtype."""

    @abc.abstractmethod
    def select(self, keep: Array, x: Array) -> Array:
        """``where(keep, x, +0.0)``, broadcasting ``keep`` against ``x``; differentiable in ``x``."""

    @abc.abstractmethod
    def broadcast_to(self, a: Array, shape: tuple[Dim, ...]) -> Array:
        """``a`` broadcast to ``shape``; a view where the framework has them."""

    @abc.abstractmethod
    def full_mask(self, shape: tuple[Dim, ...], value: bool, like: Array | None = None) -> Array:
        """A boolean array of ``shape`` filled with ``value``."""

    @abc.abstractmethod
    def reshape(self, a: Array, shape: tuple[Dim, ...]) -> Array:
        """``a`` with the same elements in row-major order and a new ``shape``."""

    @abc.abstractmethod
    def concat(self, arrays: list[Array], axis: int = 0) -> Array:
        """The arrays joined end to end along ``axis`` (1-d arrays: along their only axis)."""

    @abc.abstractmethod
    def iota(self, n: Dim, like: Array | None = None) -> Words:
        """The 1-d words ``0, 1, ..., n - 1`` (``n <= 2**32``, a dim)."""

    def select_chunks(
        self, keep_chunks: Iterable[Array], x: Array, factor: float | None, return_mask: bool
    ) -> tuple[Array, Array | None]:
        """``where(keep, x * factor, +0.0)`` (``where(keep, x, +0.0)`` for ``factor=None``), and
        ``keep`` itself with ``return_mask`` (else None), where ``keep`` has ``x``'s shape and
        arrives as consecutive 1-d chunks of its row-major elements, generated one at a time.

        The default joins the chunks and selects once. A backend with mutable arrays may write
        each chunk's part of the output as the chunk arrives, so that nothing but the output
        (and the mask, when asked for) grows with ``x``; it must give the same bits."""
        chunks = list(keep_chunks)
        keep = self.reshape(chunks[0] if len(chunks) == 1 else self.concat(chunks), self.shape(x))
        kept_values = x if factor is None else self.scale(x, factor)
        return self.select(keep, kept_values), keep if return_mask else None

    def fused_dropout(self, x: Array, call: FusedCall) -> tuple[Array, Array | None] | None:
        """Training dropout of ``x`` in one fused pass (:mod:`xdrop.kernel`), or None (the
        default) where the backend has no fused kernel for ``x``: then the spec's operations run.

        ``call`` (:class:`~xdrop.fused.FusedCall`, Python numbers) describes the pass: element
        ``i`` (row-major) is kept when ``bits(call.key, call.offset + i) < call.threshold``; the
        result is ``(where(keep, x * call.factor, +0.0), keep if call.return_mask else None)``
        (``x`` unscaled for ``factor=None``), with exactly the bits of :meth:`select_chunks` on
        the spec's mask. Called only eagerly, for ``p > 0``."""
        return None


class Staging:
    """How the framework traces and compiles. The defaults describe a framework that only runs
    eagerly (NumPy)."""

    compiles_slowly: ClassVar[bool] = False
    """Whether one compilation takes seconds (torch inductor): the conformance suite then compiles
    a sample of cases one at a time instead of all cases in one function, unless asked for all."""

    def is_tracing(self, x: Array | None) -> bool:
        """Whether ``x`` (or the current context) is being staged into a compiled graph."""
        return False

    def in_trace(self) -> bool:
        """Whether this framework is tracing now, whatever the arrays at hand (a seed drawn on the
        host would be baked into the graph). Default: :meth:`is_tracing` of no array."""
        return self.is_tracing(None)

    def is_compiling(self, x: Array | None) -> bool:
        """Whether ``x`` is being traced for a compiler that fuses operations (``jax.jit``, XLA,
        inductor), where :meth:`stage` would add nothing. Default: :meth:`is_tracing`."""
        return self.is_tracing(x)

    def compile(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` compiled by the framework's compiler (``jax.jit``, ``tf.function`` with
        XLA, ``torch.compile``); identity where there is none. The conformance suite uses it."""
        return function

    def compile_runtime_sizes(self, function: Callable[..., Any]) -> Callable[..., Any] | None:
        """``function`` compiled so that the first axis of each array argument with two or more
        axes (a batch; of size 2 or more) is a size known only at run time (a ``None``
        dimension, a symbolic one, a dynamic one), as in serving or a batch of changing size.
        The function takes two lists: the arrays of an item of the first that share a first size
        share the run-time size (an item: one case's arrays); the second (seeds, rates) keeps its
        shapes. None where the framework has no such compilation. The conformance suite's
        ``runtime`` mode uses it."""
        return None

    def stage(
        self, function: Callable[..., Any], returns_mask: bool = False
    ) -> Callable[..., Any] | None:
        """``function`` compiled into one step, for calls that would otherwise run op by op
        (eagerly, or in a graph without a compiler), or None (the default) to run it as it is.

        ``function`` takes arrays (and tuples of arrays) and returns them; its Python arguments
        are already bound. It is training dropout, ``(x, key, start, kept_count, factor) ->
        (y, keep or None)``: ``y = where(keep, x * factor, 0)`` (``x`` for factor None), so a
        backend may give it the gradient ``where(keep, dy * factor, 0)`` (see
        :meth:`staged_step_returns_mask`) rather than differentiate its operations, and may
        compute ``y`` from ``keep`` where ``returns_mask`` says ``keep`` is returned (not None).
        The caller caches the result per program (shape, dtype, noise shape, mode), so the
        compiler runs once per program: seeds, offsets and rates are arrays and never
        recompile. Worth it where a compilation takes milliseconds and each eager operation is a
        dispatch."""
        return None

    def staged_step_returns_mask(self, x: Array) -> bool:
        """Whether the step staged for a call on ``x`` (:meth:`stage`, :meth:`stage_any_shape`,
        :meth:`stage_padded`) must return the keep mask whatever ``return_mask`` says: the
        backend differentiates a step by its mask, and ``x`` may be differentiated now. The
        caller drops the mask where it was not asked for. Default: False."""
        return False

    def stage_padded(
        self, function: Callable[..., Any], returns_mask: bool = False
    ) -> Callable[..., Any] | None:
        """``function``, the training step of a 1-d ``x`` of any size, staged for ``x`` of any
        shape whose sizes are known only at run time (a ``None`` dimension in a graph), or None
        (the default) to run the step's operations as they are.

        ``function(x, *arguments)`` returns ``(y, keep or None)`` elementwise in ``x`` (as for
        :meth:`stage`, ``returns_mask`` too), so the
        result may flatten ``x``, pad it with anything to a size the compiler has seen, run the
        staged step and keep the first ``size(x)`` elements of each output, in ``x``'s shape:
        the number of compilations is then bounded by the sizes it pads to."""
        return None

    def stage_any_shape(self, function: Callable[..., Any]) -> Callable[..., Any] | None:
        """``function`` staged once for every shape of a rank (sizes as run-time dims), for
        shapes seen once, where compiling each would cost more than it saves; or None (the
        default) to compile for each shape with :meth:`stage`."""
        return None

    traces_python_ints: ClassVar[bool] = False
    """Whether the framework's compiler may turn Python ints into graph inputs (``torch.compile``
    does): host arithmetic on a seed would then be traced, element by element."""

    def seed_from_int(self, seed: int, like: Array | None) -> Array | None:
        """A Python int seed in ``[0, 2**64)`` as a seed array, where the framework traces Python
        ints (while tracing); None to use it on the host (the default)."""
        return None


class Backend(WordArithmetic, ArrayOps, Staging):
    """One array framework, seen through the roles every backend implements."""

    name: ClassVar[str]
    """The name it is registered under and selected by (``XDROP_BACKEND``)."""
    framework: ClassVar[str | None]
    """The top-level module of the framework; its arrays are recognised only once it is imported.
    ``None`` for a generic backend (such as ``array_api``), which is asked after all others."""
    chunk_size: ClassVar[int | None] = 1 << 16
    """Elements per generated chunk in eager execution (bounds temporaries); ``None``: no chunks."""

    def __repr__(self) -> str:
        return f"<xdrop backend {self.name!r}>"


class LossOps(abc.ABC):
    """Floating-point operations for the losses of :mod:`xdrop.rdrop`, named as in the Array API
    standard, differentiable where the framework differentiates. "Broadcasting" means NumPy rules.
    Where an operand may be a Python number, it takes the dtype of the array operand (as
    ``x * 0.5`` does for a float32 ``x``)."""

    @abc.abstractmethod
    def astype(self, x: Array, dtype: str) -> Array:
        """``x`` converted to the dtype named ``dtype`` (``"float32"``, ``"int64"``, ``"bool"``)."""

    @abc.abstractmethod
    def exp(self, x: Array) -> Array:
        """``e ** x`` elementwise (``exp(-inf) == 0``)."""

    @abc.abstractmethod
    def log_softmax(self, x: Array, axis: int) -> Array:
        """``x - logsumexp(x, axis)``, stable for finite ``x``; ``-inf`` entries stay ``-inf``."""

    @abc.abstractmethod
    def sum(self, x: Array, axis: int | None = None) -> Array:
        """The sum over ``axis`` (removed from the shape); over all elements (0-d) for ``None``."""

    @abc.abstractmethod
    def add(self, a: Array, b: Array | float) -> Array:
        """``a + b`` elementwise, broadcasting; ``b`` may be a Python number."""

    @abc.abstractmethod
    def subtract(self, a: Array | float, b: Array) -> Array:
        """``a - b`` elementwise, broadcasting; ``a`` may be a Python number."""

    @abc.abstractmethod
    def multiply(self, a: Array, b: Array | float) -> Array:
        """``a * b`` elementwise, broadcasting; ``b`` may be a Python number."""

    @abc.abstractmethod
    def divide(self, a: Array, b: Array | float) -> Array:
        """``a / b`` elementwise, broadcasting (IEEE: ``1 / 0 == inf``); ``b`` may be a Python
        number."""

    @abc.abstractmethod
    def equal(self, a: Array, b: Array | float) -> Array:
        """Boolean ``a == b`` elementwise, broadcasting; ``b`` may be a Python number."""

    @abc.abstractmethod
    def less_equal(self, a: Array | float, b: Array | float) -> Array:
        """Boolean ``a <= b`` of floats, broadcasting (False for NaN); one may be a Python number."""

    @abc.abstractmethod
    def logical_or(self, a: Array, b: Array) -> Array:
        """Boolean ``a | b`` of boolean arrays, broadcasting."""

    @abc.abstractmethod
    def where(self, condition: Array, a: Array | float, b: Array | float) -> Array:
        """``a`` where ``condition`` else ``b``, broadcasting; one of ``a``, ``b`` may be a Python
        number. Differentiable in ``a`` and ``b``: no gradient flows through the unselected one."""

    @abc.abstractmethod
    def take_along_axis(self, x: Array, indices: Array, axis: int) -> Array:
        """The entries of ``x`` that ``indices`` picks along ``axis`` (``numpy.take_along_axis``):
        ``indices`` is an integer array of ``x``'s shape but for a size of 1 at ``axis``."""

    take_raises_out_of_range: ClassVar[bool] = False
    """Whether :meth:`take_along_axis` raises for an index outside ``[0, size)``, negative ones
    included, on eager arrays in host memory (as ``torch.gather`` does). Where it does, R-Dropout
    reads such labels only to explain that error; it checks all others at hand on the host
    before the loss (NumPy wraps negative indices, JAX picks NaN, TensorFlow may run the pick on a
    GPU, which gives 0, and a compiled pick may abort the process)."""

    @abc.abstractmethod
    def split(self, x: Array, sections: int, axis: int) -> list[Array]:
        """``x`` cut along ``axis`` into ``sections`` equal consecutive parts (the size divides)."""


class OperatorArithmetic(LossOps):
    """Not a role but a helper base class: the elementwise loss operations as Python's operators,
    for arrays whose operators follow NumPy's broadcasting and keep the array operand's dtype for
    a Python number (PyTorch, the Array API standard)."""

    def add(self, a: Array, b: Array | float) -> Array:
        return a + b

    def subtract(self, a: Array | float, b: Array) -> Array:
        return a - b

    def multiply(self, a: Array, b: Array | float) -> Array:
        return a * b

    def divide(self, a: Array, b: Array | float) -> Array:
        return a / b

    def equal(self, a: Array, b: Array | float) -> Array:
        return a == b

    def less_equal(self, a: Array | float, b: Array | float) -> Array:
        return a <= b


class RateOps(LossOps):
    """With the loss operations, what the spec needs to compute a rate's threshold and scale
    inside a compiled graph, for a rate ``p`` held in an array."""

    @abc.abstractmethod
    def ceil(self, x: Array) -> Array:
        """The smallest integer >= ``x``, elementwise, in ``x``'s dtype."""

    @abc.abstractmethod
    def logical_and(self, a: Array, b: Array) -> Array:
        """Boolean ``a & b`` of boolean arrays, broadcasting."""

    @abc.abstractmethod
    def word_from_float(self, x: Array) -> Words:
        """A 0-d float holding an integer in ``[0, 2**32)`` as a word."""


class FamilyOps(LossOps):
    """With the loss operations, the floating-point operations of :mod:`xdrop.family` and
    :mod:`xdrop.mc`, elementwise and differentiable where the framework differentiates, in the
    dtype of their argument."""

    @abc.abstractmethod
    def log(self, x: Array) -> Array:
        """The natural logarithm elementwise (``log(0) == -inf``)."""

    @abc.abstractmethod
    def sqrt(self, x: Array) -> Array:
        """The square root elementwise (correctly rounded, as IEEE 754 requires)."""

    @abc.abstractmethod
    def cos(self, x: Array) -> Array:
        """The cosine elementwise, of an argument in radians."""

    @abc.abstractmethod
    def max_pool_2d(self, x: Array, window: int, channels_last: bool) -> Array:
        """The maximum over every ``window x window`` patch, stride 1, of a 4-d float array of
        non-negative values padded with ``window - 1`` zeros on each side of its spatial axes
        (``(2, 3)``, or ``(1, 2)`` with ``channels_last``): each spatial size grows by
        ``window - 1``. It grows DropBlock's block corners into blocks."""


class NamespaceFunctions(RateOps, FamilyOps):
    """Not a role but a helper base class: the elementwise and reducing operations of the loss,
    rate and family roles as the functions of the same name in a NumPy-like namespace
    (``numpy``, ``jax.numpy``, ``torch``), which a backend names in ``namespace``. What the
    namespaces spell differently (``astype``, ``log_softmax``, ``word_from_float``,
    ``max_pool_2d``; torch's ``split`` and ``take_along_axis``) is left to the backend."""

    namespace: Any
    """The module whose functions these are, e.g. ``numpy``."""

    def exp(self, x: Array) -> Array:
        return self.namespace.exp(x)

    def sum(self, x: Array, axis: int | None = None) -> Array:
        return self.namespace.sum(x, axis=axis)

    def add(self, a: Array, b: Array | float) -> Array:
        return self.namespace.add(a, b)

    def subtract(self, a: Array | float, b: Array) -> Array:
        return self.namespace.subtract(a, b)

    def multiply(self, a: Array, b: Array | float) -> Array:
        return self.namespace.multiply(a, b)

    def divide(self, a: Array, b: Array | float) -> Array:
        return self.namespace.divide(a, b)

    def equal(self, a: Array, b: Array | float) -> Array:
        return self.namespace.equal(a, b)

    def less_equal(self, a: Array | float, b: Array | float) -> Array:
        return self.namespace.less_equal(a, b)

    def logical_or(self, a: Array, b: Array) -> Array:
        return self.namespace.logical_or(a, b)

    def logical_and(self, a: Array, b: Array) -> Array:
        return self.namespace.logical_and(a, b)

    def where(self, condition: Array, a: Array | float, b: Array | float) -> Array:
        return self.namespace.where(condition, a, b)

    def take_along_axis(self, x: Array, indices: Array, axis: int) -> Array:
        return self.namespace.take_along_axis(x, indices, axis=axis)

    def split(self, x: Array, sections: int, axis: int) -> list[Array]:
        return list(self.namespace.split(x, sections, axis=axis))

    def ceil(self, x: Array) -> Array:
        return self.namespace.ceil(x)

    def log(self, x: Array) -> Array:
        return self.namespace.log(x)

    def sqrt(self, x: Array) -> Array:
        return self.namespace.sqrt(x)

    def cos(self, x: Array) -> Array:
        return self.namespace.cos(x)


class SeedArrays(abc.ABC):
    """Seeds held in the framework's arrays, which lets seeds be traced values."""

    @abc.abstractmethod
    def seed_words(self, seed: Array) -> Key:
        """The key words of a seed array: a 0-d integer (a negative value read as its unsigned
        two's complement of the dtype's width), a uint32[2] ``(hi, lo)``, or a framework key."""

    @abc.abstractmethod
    def seed_array(self, key: Key) -> Array:
        """The seed with key words ``key`` as an array that :meth:`seed_words` reads back: a 0-d
        int64 where the framework has 64-bit integers, else a uint32[2] ``(hi, lo)``."""


class NativeGenerator(abc.ABC):
    """The framework's own generator, for ``rng="native"``."""

    has_global_rng: ClassVar[bool] = False
    """Whether ``seed=None`` in native mode uses the framework's global generator."""

    @abc.abstractmethod
    def native_keep_mask(
        self, shape: tuple[int, ...], keep_probability: float, seed: int | Key | None, like: Array
    ) -> Array:
        """A boolean mask, each element True with probability ``keep_probability``, from the
        framework's own generator. ``seed`` is a host integer, key words (a traced seed), or None
        for the global generator (only where ``has_global_rng``)."""

    def native_dropout(
        self, x: Array, keep_probability: float, seed: int | Key | None, factor: float | None
    ) -> Array | None:
        """Training dropout of ``x`` with a mask of ``x``'s own shape, ``where(keep, x * factor,
        +0.0)`` (``x`` for factor None), whose ``keep`` is exactly :meth:`native_keep_mask` of
        ``x``'s shape (the same draws from the same generator state), in fewer passes; or None
        (the default) to select with that mask. Called eagerly, for host rates only."""
        return None

    def native_normals(self, shape: tuple[int, ...], seed: int | Key | None, like: Array) -> Array:
        """Standard normal float32 values of ``shape`` from the framework's own generator, on
        ``like``'s device; ``seed`` as for :meth:`native_keep_mask`. ``gaussian_dropout`` with
        ``rng="native"`` uses them. Not abstract, so that a backend written before it keeps
        working: the default raises :class:`~xdrop.errors.RoleNotImplementedError`."""
        name = getattr(self, "name", type(self).__name__)
        raise RoleNotImplementedError(
            f"the {name} backend does not implement xdrop.protocol.NativeGenerator.native_normals, "
            'which gaussian_dropout with rng="native" needs; use rng="portable"'
        )


class _BackendWith(Backend):
    """A backend together with optional roles: a type for the functions that need them, which
    :func:`require` returns. No backend derives from it; a backend is one when its class has the
    roles among its bases."""


class LossBackend(_BackendWith, LossOps):
    """A backend with the loss operations: what R-Dropout needs."""


class RateBackend(_BackendWith, RateOps):
    """A backend with the rate operations: what a rate held in an array needs while tracing."""


class FamilyBackend(_BackendWith, FamilyOps):
    """A backend with the family operations: what the dropout family and MC dropout need."""


class SeedBackend(_BackendWith, SeedArrays):
    """A backend that takes and makes seeds held in arrays."""


class NativeBackend(_BackendWith, NativeGenerator):
    """A backend with its framework's own generator."""


Role = TypeVar("Role")


OPTIONAL_ROLES = (LossOps, RateOps, FamilyOps, SeedArrays, NativeGenerator)
"""The roles a backend may leave out; :func:`require` checks them where a feature starts."""

EVERY_ROLE_ADVICE = (
    "xdrop's numpy, torch, tensorflow and jax backends implement every role, and "
    "docs/backends.md says how a backend adds one"
)


def require(
    backend: Backend, role: Callable[..., Role], needed_by: str, remedy: str = EVERY_ROLE_ADVICE
) -> Role:
    """``backend`` as a ``role`` (an optional role, or a backend with one such as
    :class:`LossBackend`), or a :class:`~xdrop.errors.RoleNotImplementedError` naming the roles
    that ``needed_by`` (e.g. "R-Dropout") needs and the backend lacks, and ``remedy``.

    >>> losses = require(xdrop.registry.load("numpy"), LossBackend, "R-Dropout")
    """
    needed = _optional_roles(cast(type, role))
    for part in needed:  # a loop, not all() over a generator: half the cost of this check
        if not isinstance(backend, part):
            break
    else:
        return cast(Role, backend)
    missing = [part.__name__ for part in needed if not isinstance(backend, part)]
    raise RoleNotImplementedError(
        f"the {backend.name} backend does not implement "
        + ", ".join(f"xdrop.protocol.{name}" for name in missing)
        + f", which {needed_by} needs; {remedy}"
    )


@cached_host_constant  # torch.compile traces require: it calls this as it is
def _optional_roles(role: type) -> tuple[type, ...]:
    """The optional roles that ``role`` stands for (asked on every call that needs one)."""
    return tuple(part for part in OPTIONAL_ROLES if issubclass(role, part))
