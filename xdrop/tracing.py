"""Helpers for code that runs while a framework traces a function into a graph."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Generic, TypeVar, cast

Function = TypeVar("Function", bound=Callable[..., object])
Value = TypeVar("Value")
CACHE_SIZE = 1024


def host_constant(function: Function) -> Function:
    """Mark a pure function of Python values (a threshold, a scale, a dispatch lookup) so that
    ``torch.compile`` calls it at trace time and bakes in its result, instead of tracing the
    NumPy or importlib calls inside it. This is what ``torch.compiler.assume_constant_result``
    does; xdrop sets the same marker itself because it must not import torch to call it.
    JAX and TensorFlow run such functions as plain Python while tracing and need nothing."""
    function._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return function


def cached_host_constant(function: Function) -> Function:
    """:func:`host_constant`, remembering up to ``CACHE_SIZE`` results by arguments (a rate, a
    dtype name), so that eager calls do not redo the host arithmetic. The cache is a plain dict
    inside the marked function, which ``torch.compile`` calls as it is (it would warn about, and
    look through, ``functools.lru_cache``)."""
    results: dict[tuple[object, ...], object] = {}

    @functools.wraps(function)
    def cached(*arguments: object) -> object:
        try:
            return results[arguments]
        except KeyError:
            if len(results) >= CACHE_SIZE:  # a rate changed on every step: start over
                results.clear()
            result = results[arguments] = function(*arguments)
            return result

    return host_constant(cast(Function, cached))


def read_on_the_host(value: float) -> float:
    """``value`` itself, as a value ``torch.compile`` holds. Dynamo traces a Python float
    argument that changed between calls as a symbol, which the host constants of a rate cannot
    take; its hex form is a string only the value gives, so Dynamo reads the value and guards on
    it. The graph then holds the rate as a constant, and a new rate compiles anew, as a changed
    ``nn.Dropout.p`` does (a rate that changes every step goes in as a 0-d tensor, which the
    graph reads). Elsewhere a round trip that costs a few hundred nanoseconds."""
    return float.fromhex(value.hex())


def called_as_is(function: Function) -> Function:
    """Mark a public function so that TensorFlow's autograph calls it unconverted inside
    ``tf.function`` (the marker autograph's own artifacts carry). xdrop has no control flow that
    depends on tensor values, and converting it would walk into importlib and warn."""
    function.autograph_info__ = {}  # type: ignore[attr-defined]
    return function


class PerThread(threading.local, Generic[Value]):
    """``value``: an object of its own on each thread, ``make()``, made on the thread's first
    use (where ``threading.local`` calls ``__init__`` with the same arguments). ``value`` is
    never reassigned, since ``torch.compile`` does not follow a change of a thread-local's
    attribute; it follows (and guards on) the changes of the plain object it holds."""

    def __init__(self, make: Callable[[], Value]) -> None:
        self.value: Value = make()
