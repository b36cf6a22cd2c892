"""What is timed on each framework: xdrop (portable and ``rng="native"``), the framework's own
dropout and a plain ``x * 2`` copy, in each execution mode, forward and forward+backward.

Each suite imports its framework only when it is used. A contender is a function of no arguments
that runs one call to completion; seeds change from call to call (the framework's own dropout
draws from its global generator or from a fresh key), so no framework can cache a mask.
"""

from __future__ import annotations

import abc
import gc
import importlib
import itertools
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

import xdrop
from xdrop.benchmarks.timing import Call

FORWARD = "forward"
BACKWARD = "forward+backward"

XDROP = "xdrop"
NATIVE = "native"
FRAMEWORK = "framework"
COPY = "copy"
FRAMEWORK_EAGER = "framework-eager"
FRAMEWORK_GRAPH = "framework-graph"
SEED_COUNT = 64  # seeds (or keys) made ahead of time and cycled through


@dataclass(frozen=True)
class Case:
    """One measurement: a backend's execution path at one size, rate and direction."""

    backend: str
    path: str
    size: int
    p: float
    direction: str = FORWARD


class Suite(abc.ABC):
    """The contenders of one backend."""

    backend: ClassVar[str]
    framework: ClassVar[str]
    """The framework's module name (``"torch"``), imported into ``self.module`` when the suite is
    made and not before: ``import xdrop.benchmarks`` imports no framework."""
    paths: ClassVar[tuple[str, ...]]
    """Execution modes, eager first (e.g. ``("torch eager", "torch.compile")``)."""
    compiled_paths: ClassVar[tuple[str, ...]] = ()
    """The paths that run inside the framework's compiler."""
    differentiates: ClassVar[bool] = True
    """Whether forward+backward is measured."""
    framework_dropout: ClassVar[str]
    """What the ``framework`` contender runs, in words."""

    def __init__(self) -> None:
        self.module: Any = importlib.import_module(self.framework)

    @classmethod
    def directions(cls) -> tuple[str, ...]:
        """Forward, and forward+backward where the framework differentiates (a class method: the
        runner plans each path's cases without importing its framework)."""
        return (FORWARD, BACKWARD) if cls.differentiates else (FORWARD,)

    @abc.abstractmethod
    def contenders(self, case: Case) -> dict[str, Call]:
        """The calls to time for ``case``, by contender name."""

    def memory(self, case: Case) -> dict[str, float]:
        """Bytes per element that each contender needs beyond its input (see each suite)."""
        return {}


# -- NumPy ------------------------------------------------------------------------------------------
class NumpySuite(Suite):
    backend = framework = "numpy"
    paths = ("numpy",)
    differentiates = False
    framework_dropout = "where(Generator.random(shape) < q, x * s, 0)"

    def contenders(self, case: Case) -> dict[str, Call]:
        x = np.random.default_rng(0).standard_normal(case.size, dtype=np.float32)
        p, q = case.p, 1.0 - case.p
        scale = np.float32(1) / np.float32(q)
        generator = np.random.default_rng(0)
        seeds = itertools.count()
        return {
            XDROP: lambda: xdrop.dropout(x, p, seed=next(seeds)),
            NATIVE: lambda: xdrop.dropout(x, p, seed=next(seeds), rng="native"),
            FRAMEWORK: lambda: np.where(generator.random(x.shape) < q, x * scale, np.float32(0)),
            COPY: lambda: x * np.float32(2),
        }

    def memory(self, case: Case) -> dict[str, float]:
        """The peak of the memory allocated during one call (``tracemalloc``), output included."""
        calls = self.contenders(case)
        x = np.ones(case.size, np.float32)
        calls[XDROP + " return_mask"] = lambda: xdrop.dropout(x, case.p, seed=0, return_mask=True)
        return {name: peak_bytes(call) / case.size for name, call in calls.items()}


def peak_bytes(call: Call) -> int:
    """The most memory ``call`` held at once beyond what existed before it, its result included
    (NumPy reports its buffers to ``tracemalloc``)."""
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        result = call()
        _, peak = tracemalloc.get_traced_memory()
        del result
    finally:
        tracemalloc.stop()
    return peak - before


# -- PyTorch ----------------------------------------------------------------------------------------
class TorchSuite(Suite):
    backend = framework = "torch"
    paths = ("torch eager", "torch.compile")
    compiled_paths = ("torch.compile",)
    framework_dropout = "torch.nn.functional.dropout"

    def _functions(self, case: Case) -> dict[str, Callable[[Any, Any], Any]]:
        functional = self.module.nn.functional
        p = case.p
        return {
            XDROP: lambda x, seed: xdrop.dropout(x, p, seed=seed),
            NATIVE: lambda x, seed: xdrop.dropout(x, p, rng="native"),  # the global generator
            FRAMEWORK: lambda x, seed: functional.dropout(x, p, training=True),
            COPY: lambda x, seed: x * 2,
        }

    def _inputs(self, case: Case) -> tuple[Any, Any]:
        torch = self.module
        x = torch.randn(case.size, generator=torch.Generator().manual_seed(0))
        x.requires_grad_(case.direction == BACKWARD)
        return x, torch.ones(case.size)

    def contenders(self, case: Case) -> dict[str, Call]:
        torch = self.module
        x, gradient = self._inputs(case)
        functions = self._functions(case)
        if case.path == "torch.compile":
            torch._dynamo.reset()  # a fresh cache per case: no recompilation limit is reached
            eager_dropout = functions[FRAMEWORK]
            functions = {
                name: torch.compile(function, fullgraph=True, dynamic=False)
                for name, function in functions.items()
            }
            functions[FRAMEWORK_EAGER] = eager_dropout
            seeds: Iterator[Any] = itertools.cycle([torch.tensor(s) for s in range(SEED_COUNT)])
        else:
            seeds = itertools.count()

        def call(function: Callable[[Any, Any], Any]) -> Call:
            if case.direction == FORWARD:
                return lambda: function(x, next(seeds))

            def forward_backward() -> Any:
                return torch.autograd.grad(function(x, next(seeds)), x, gradient)

            return forward_backward

        return {name: call(function) for name, function in functions.items()}

    def memory(self, case: Case) -> dict[str, float]:
        """Bytes saved for the backward pass, per element (distinct storages; ``x`` excluded)."""
        if case.direction != BACKWARD or case.path != "torch eager":
            return {}
        x, _ = self._inputs(case)
        return {
            name: self._saved_bytes(function, x) / case.size
            for name, function in self._functions(case).items()
        }

    def _saved_bytes(self, function: Callable[[Any, Any], Any], x: Any) -> int:
        storages: dict[int, int] = {}

        def pack(tensor: Any) -> Any:
            storage = tensor.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        with self.module.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            function(x, 0)
        storages.pop(x.untyped_storage().data_ptr(), None)
        return sum(storages.values())


# -- TensorFlow -------------------------------------------------------------------------------------
SIGNATURE_PATH = "tf.function(input_signature)"
"""``tf.function`` traced from an ``input_signature`` whose dimension is ``None``."""


class TensorflowSuite(Suite):
    backend = framework = "tensorflow"
    paths = ("tf eager", "tf.function", SIGNATURE_PATH, "tf.function(jit_compile)")
    compiled_paths = ("tf.function", SIGNATURE_PATH, "tf.function(jit_compile)")
    framework_dropout = "tf.nn.dropout"

    def __init__(self) -> None:
        super().__init__()
        # each case makes new functions: retracing is meant, and not worth a warning
        self.module.get_logger().setLevel("ERROR")

    def contenders(self, case: Case) -> dict[str, Call]:
        tf = self.module
        p = case.p
        x = tf.random.stateless_normal((case.size,), seed=(0, 0))
        gradient = tf.ones((case.size,))
        functions: dict[str, Callable[[Any, Any], Any]] = {
            XDROP: lambda x, seed: xdrop.dropout(x, p, seed=seed),
            NATIVE: lambda x, seed: xdrop.dropout(x, p, seed=seed, rng="native"),
            FRAMEWORK: lambda x, seed: tf.nn.dropout(x, rate=p),
            COPY: lambda x, seed: x * 2.0,
        }
        if case.direction == BACKWARD:
            functions = {name: _taped(tf, f, gradient) for name, f in functions.items()}
        if case.path == "tf eager":
            seeds: Iterator[Any] = itertools.count()
        else:
            jit_compile = case.path == "tf.function(jit_compile)"
            # Keras and tf.saved_model trace with the batch dimension unknown: sizes in the graph
            # are known only at run time
            signature = (
                (tf.TensorSpec([None], tf.float32), tf.TensorSpec([], tf.int64))
                if case.path == SIGNATURE_PATH
                else None
            )
            graph_dropout = tf.function(functions[FRAMEWORK], autograph=False)
            functions = {  # autograph off: these functions have no Python control flow
                name: tf.function(
                    function, jit_compile=jit_compile, input_signature=signature, autograph=False
                )
                for name, function in functions.items()
            }
            if jit_compile:
                functions[FRAMEWORK_GRAPH] = graph_dropout
            seeds = itertools.cycle(
                [tf.constant(seed, tf.int64) for seed in range(SEED_COUNT)]
            )  # tensors: a Python seed would retrace on every new value
        return {name: _bind(function, x, seeds) for name, function in functions.items()}


def _taped(
    tf: Any, function: Callable[[Any, Any], Any], gradient: Any
) -> Callable[[Any, Any], Any]:
    def forward_backward(x: Any, seed: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = function(x, seed)
        return y, tape.gradient(y, x, output_gradients=gradient)

    return forward_backward


def _bind(function: Callable[[Any, Any], Any], x: Any, seeds: Iterator[Any]) -> Call:
    return lambda: function(x, next(seeds))


# -- JAX --------------------------------------------------------------------------------------------
class JaxSuite(Suite):
    backend = framework = "jax"
    paths = ("jax eager", "jax.jit")
    compiled_paths = ("jax.jit",)
    framework_dropout = "Flax-style: lax.select(jax.random.bernoulli(key, q, shape), x / q, 0)"

    def contenders(self, case: Case) -> dict[str, Call]:
        jax = self.module
        jnp = jax.numpy
        p, q = case.p, 1.0 - case.p

        def flax_style(x: Any, key: Any) -> Any:
            keep = jax.random.bernoulli(key, q, x.shape)
            return jax.lax.select(keep, x / q, jnp.zeros_like(x))

        functions: dict[str, Callable[[Any, Any], Any]] = {
            XDROP: lambda x, seed: xdrop.dropout(x, p, seed=seed),
            NATIVE: lambda x, seed: xdrop.dropout(x, p, seed=seed, rng="native"),
            FRAMEWORK: flax_style,
            COPY: lambda x, seed: x * 2,
        }
        x = jax.random.normal(jax.random.key(0), (case.size,))
        gradient = jnp.ones((case.size,))
        if case.direction == BACKWARD:
            functions = {name: _pulled_back(jax, f, gradient) for name, f in functions.items()}
        keys = [jax.random.key(seed) for seed in range(SEED_COUNT)]
        if case.path == "jax.jit":
            functions = {name: jax.jit(function) for name, function in functions.items()}
            seeds = {name: itertools.cycle(keys) for name in functions}
        else:  # eagerly, xdrop takes the integers users write; Flax-style code holds keys
            seeds = {name: itertools.cycle(range(SEED_COUNT)) for name in functions}
            seeds[FRAMEWORK] = itertools.cycle(keys)
        return {
            name: _blocking(jax, function, x, seeds[name]) for name, function in functions.items()
        }


def _pulled_back(
    jax: Any, function: Callable[[Any, Any], Any], gradient: Any
) -> Callable[[Any, Any], Any]:
    def forward_backward(x: Any, seed: Any) -> Any:
        y, pullback = jax.vjp(lambda v: function(v, seed), x)
        return y, pullback(gradient)[0]

    return forward_backward


def _blocking(jax: Any, function: Callable[[Any, Any], Any], x: Any, seeds: Iterator[Any]) -> Call:
    return lambda: jax.block_until_ready(function(x, next(seeds)))


SUITES: dict[str, type[Suite]] = {
    "numpy": NumpySuite,
    "torch": TorchSuite,
    "tensorflow": TensorflowSuite,
    "jax": JaxSuite,
}
