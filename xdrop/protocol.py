"""The backend protocol: the few operations the spec needs from an array framework.

A backend owns one framework's arrays. It supplies array plumbing (conversion, dtype and shape
queries, ``select``, ``multiply``) and 32-bit unsigned word arithmetic (``add``, ``xor``,
``rotate_left``, ``less_than``, ``iota``). It holds no dropout logic: the algorithm lives once in
:mod:`xdrop.spec`. ``docs/backends.md`` states each method's contract.

Words are opaque to the spec: a backend may carry them in any integer dtype as long as the
operations behave as arithmetic modulo 2**32 (PyTorch, for one, has no eager uint32 arithmetic).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

Array = Any  # a framework's array; the protocol cannot name it without importing the framework
Words = Any  # a framework's array of 32-bit words, in whatever dtype the backend carries them
Key = tuple[Any, Any]  # the words (k0, k1) = (seed >> 32, seed & 0xFFFFFFFF)


class WordOps(abc.ABC):
    """Arithmetic on 32-bit unsigned words (modulo 2**32), elementwise and broadcasting."""

    @abc.abstractmethod
    def word(self, value: int, like: Array | None = None) -> Words:
        """A 0-d word holding ``value`` (``0 <= value < 2**32``), on ``like``'s device."""

    @abc.abstractmethod
    def add(self, a: Words, b: Words) -> Words:
        """``(a + b) mod 2**32``."""

    @abc.abstractmethod
    def xor(self, a: Words, b: Words) -> Words:
        """``a ^ b``."""

    @abc.abstractmethod
    def rotate_left(self, a: Words, bits: int) -> Words:
        """``a`` rotated left by ``bits`` (``0 < bits < 32``)."""


class Backend(WordOps):
    """One array framework, seen through the operations the spec needs."""

    name: ClassVar[str]
    """The name it is registered under and selected by (``XDROP_BACKEND``)."""
    framework: ClassVar[str]
    """The top-level module of the framework; its arrays are recognised only once it is imported."""
    compiles_slowly: ClassVar[bool] = False
    """Whether one compilation takes seconds (torch inductor): the conformance suite then compiles
    a sample of cases one at a time instead of all cases in one function, unless asked for all."""
    chunk_size: ClassVar[int | None] = 1 << 16
    """Elements per generated chunk in eager execution (bounds temporaries); ``None``: no chunks."""

    array_types: tuple[type, ...]
    """The types of the arrays this backend owns (set when the backend is created); dispatch
    checks ``issubclass(type(x), array_types)``."""

    # -- arrays of the framework ------------------------------------------------------------------
    def is_array(self, x: object) -> bool:
        """Whether ``x`` is an array this backend owns."""
        return isinstance(x, self.array_types)

    @abc.abstractmethod
    def asarray(self, x: object, dtype: str | None = None) -> Array:
        """``x`` (a NumPy array, Python scalar or nested list) as this framework's array."""

    @abc.abstractmethod
    def to_numpy(self, x: Array) -> np.ndarray:
        """A NumPy copy of ``x`` (bfloat16 may come back as float32, which holds it exactly)."""

    @abc.abstractmethod
    def dtype_name(self, x: Array) -> str:
        """The dtype's canonical name: ``"float32"``, ``"bfloat16"``, ``"int64"``, ``"bool"``..."""

    @abc.abstractmethod
    def shape(self, x: Array) -> tuple[int, ...]:
        """The static shape of ``x``."""

    @abc.abstractmethod
    def multiply(self, x: Array, factor: float) -> Array:
        """``x * factor`` in ``x``'s dtype; ``factor`` is exactly representable in that dtype."""

    @abc.abstractmethod
    def select(self, keep: Array, x: Array) -> Array:
        """``where(keep, x, +0.0)``, broadcasting ``keep`` against ``x``; differentiable in ``x``."""

    @abc.abstractmethod
    def broadcast_to(self, a: Array, shape: tuple[int, ...]) -> Array:
        """``a`` broadcast to ``shape``; a view where the framework has them."""

    @abc.abstractmethod
    def full_mask(self, shape: tuple[int, ...], value: bool, like: Array | None = None) -> Array:
        """A boolean array of ``shape`` filled with ``value``."""

    @abc.abstractmethod
    def reshape(self, a: Array, shape: tuple[int, ...]) -> Array:
        """``a`` with the same elements in row-major order and a new ``shape``."""

    @abc.abstractmethod
    def concat(self, arrays: list[Array]) -> Array:
        """The 1-d arrays joined end to end."""

    # -- words ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def iota(self, n: int, like: Array | None = None) -> Words:
        """The 1-d words ``0, 1, ..., n - 1`` (``n <= 2**32``)."""

    @abc.abstractmethod
    def less_than(self, a: Words, threshold: int) -> Array:
        """Boolean ``a < threshold``, unsigned, for ``0 < threshold < 2**32``."""

    # -- execution --------------------------------------------------------------------------------
    def is_tracing(self, x: Array | None) -> bool:
        """Whether ``x`` (or the current context) is being staged into a compiled graph."""
        return False

    def compile(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` compiled by the framework's compiler (``jax.jit``, ``tf.function`` with
        XLA, ``torch.compile``); identity where there is none. The conformance suite uses it."""
        return function

    # -- seeds held in arrays (optional: lets seeds be traced values) -------------------------------
    def seed_words(self, seed: Array) -> Key:
        """The key words of a seed array: a 0-d integer (a negative value read as its unsigned
        two's complement of the dtype's width), a uint32[2] ``(hi, lo)``, or a framework key."""
        raise NotImplementedError(f"the {self.name} backend does not take seeds held in arrays")

    def seed_array(self, key: Key) -> Array:
        """The seed with key words ``key`` as an array that :meth:`seed_words` reads back: a 0-d
        int64 where the framework has 64-bit integers, else a uint32[2] ``(hi, lo)``."""
        raise NotImplementedError(f"the {self.name} backend does not make seeds held in arrays")

    # -- the framework's own generator (optional: rng="native") -----------------------------------
    has_global_rng: ClassVar[bool] = False
    """Whether ``seed=None`` in native mode uses the framework's global generator."""

    def native_keep_mask(
        self, shape: tuple[int, ...], keep_probability: float, seed: int | Key | None, like: Array
    ) -> Array:
        """A boolean mask, each element True with probability ``keep_probability``, from the
        framework's own generator. ``seed`` is a host integer, key words (a traced seed), or None
        for the global generator (only where ``has_global_rng``)."""
        raise NotImplementedError(f"the {self.name} backend has no native generator")

    def __repr__(self) -> str:
        return f"<xdrop backend {self.name!r}>"
