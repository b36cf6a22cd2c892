"""What is timed on each framework: xdrop (portable and ``rng="native"``), the framework's own
dropout and a plain ``x * 2`` copy, in each execution mode, forward and forward+backward, in
float32 and bfloat16, on one shape or on shapes that change from call to call.

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

FLOAT32 = "float32"
BFLOAT16 = "bfloat16"
DTYPES = (FLOAT32, BFLOAT16)
FIXED = "fixed"
CHANGING = "changing"
SHAPES = (FIXED, CHANGING)
SHAPE_POOL = 8
"""Distinct shapes a "changing" case cycles through, each call a different one from the last:
as the batches of dynamic padding, whose sequence lengths recur from epoch to epoch."""


@dataclass(frozen=True)
class Case:
    """One measurement: a backend's execution path at one size, rate, direction, dtype and shape
    mode (``"fixed"``: one 1-D shape of ``size`` elements; ``"changing"``: :func:`shapes`)."""

    backend: str
    path: str
    size: int
    p: float
    direction: str = FORWARD
    dtype: str = FLOAT32
    shapes: str = FIXED


def shapes(case: Case) -> list[tuple[int, ...]]:
    """The shapes of ``case``'s inputs: ``(size,)``, or, changing, :data:`SHAPE_POOL` shapes
    ``(rows, width)`` of ``size`` elements within about 6%, rows differing (a batch's tokens by
    the hidden width, the sequence length changing).

    >>> shapes(Case("numpy", "numpy", 10**6, 0.5, shapes="changing"))[:3]
    [(916, 1024), (931, 1024), (946, 1024)]
    """
    if case.shapes == FIXED:
        return [(case.size,)]
    width = max(1, min(1024, case.size // 64))
    rows = max(1, case.size // width)
    step = max(1, rows // 64)
    return [(max(1, rows + (i - SHAPE_POOL // 2) * step), width) for i in range(SHAPE_POOL)]


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
def numpy_dtype(name: str) -> np.dtype[Any]:
    """NumPy's dtype of ``name``; bfloat16 is ml_dtypes' (NumPy has none of its own: ml_dtypes
    is how JAX's and TensorFlow's bfloat16 arrays reach NumPy, and xdrop's kernel reads it)."""
    if name != BFLOAT16:
        return np.dtype(name)
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError("bfloat16 on NumPy needs ml_dtypes (pip install ml_dtypes)") from None
    bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return bfloat16


class NumpySuite(Suite):
    backend = framework = "numpy"
    paths = ("numpy",)
    differentiates = False
    framework_dropout = "where(Generator.random(shape) < q, x * s, 0)"

    def _inputs(self, case: Case) -> list[Any]:
        generator = np.random.default_rng(0)
        dtype = numpy_dtype(case.dtype)
        return [
            generator.standard_normal(shape, dtype=np.float32).astype(dtype)
            for shape in shapes(case)
        ]

    def contenders(self, case: Case) -> dict[str, Call]:
        inputs = self._inputs(case)
        dtype = inputs[0].dtype
        p, q = case.p, 1.0 - case.p
        # scalars of x's dtype: a float32 scalar would promote a bfloat16 array to float32
        scale, zero, two = dtype.type(1.0 / q), dtype.type(0), dtype.type(2)
        generator = np.random.default_rng(0)
        functions: dict[str, Callable[[Any, Any], Any]] = {
            XDROP: lambda x, seed: xdrop.dropout(x, p, seed=seed),
            NATIVE: lambda x, seed: xdrop.dropout(x, p, seed=seed, rng="native"),
            FRAMEWORK: lambda x, seed: np.where(generator.random(x.shape) < q, x * scale, zero),
            COPY: lambda x, seed: x * two,
        }
        return {
            name: _bind(function, inputs, itertools.count()) for name, function in functions.items()
        }

    def memory(self, case: Case) -> dict[str, float]:
        """The peak of the memory allocated during one call (``tracemalloc``), output included."""
        calls = self.contenders(case)
        (x, *_) = self._inputs(case)
        calls[XDROP + " return_mask"] = lambda: xdrop.dropout(x, case.p, seed=0, return_mask=True)
        return {name: peak_bytes(call) / x.size for name, call in calls.items()}


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

    def _inputs(self, case: Case) -> list[tuple[Any, Any]]:
        """``(x, the gradient flowing back)`` of each shape of the case."""
        torch = self.module
        dtype = getattr(torch, case.dtype)
        generator = torch.Generator().manual_seed(0)
        inputs = []
        for shape in shapes(case):
            x = torch.randn(shape, generator=generator).to(dtype)
            x.requires_grad_(case.direction == BACKWARD)
            inputs.append((x, torch.ones(shape, dtype=dtype)))
        return inputs

    def contenders(self, case: Case) -> dict[str, Call]:
        torch = self.module
        inputs = self._inputs(case)
        functions = self._functions(case)
        if case.path == "torch.compile":
            torch._dynamo.reset()  # a fresh cache per case: no recompilation limit is reached
            eager_dropout = functions[FRAMEWORK]
            # shapes that change compile as users leave it: a second compilation with dynamic
            # sizes at the first change (``dynamic=None``)
            dynamic = None if case.shapes == CHANGING else False
            functions = {
                name: torch.compile(function, fullgraph=True, dynamic=dynamic)
                for name, function in functions.items()
            }
            functions[FRAMEWORK_EAGER] = eager_dropout
            seeds: Iterator[Any] = itertools.cycle([torch.tensor(s) for s in range(SEED_COUNT)])
        else:
            seeds = itertools.count()

        def call(function: Callable[[Any, Any], Any]) -> Call:
            if case.direction == FORWARD:
                return _bind(function, [x for x, _ in inputs], seeds)
            pairs = itertools.cycle(inputs)

            def forward_backward() -> Any:
                x, gradient = next(pairs)
                return torch.autograd.grad(function(x, next(seeds)), x, gradient)

            return forward_backward

        return {name: call(function) for name, function in functions.items()}

    def memory(self, case: Case) -> dict[str, float]:
        """Bytes saved for the backward pass, per element (distinct storages; ``x`` excluded)."""
        if case.direction != BACKWARD or case.path != "torch eager":
            return {}
        ((x, _), *_) = self._inputs(case)
        return {
            name: self._saved_bytes(function, x) / x.numel()
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
"""``tf.function`` traced from an ``input_signature`` whose first dimension is ``None``."""


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
        dtype = getattr(tf, case.dtype)
        pool = shapes(case)
        inputs = [
            tf.cast(tf.random.stateless_normal(shape, seed=(0, i)), dtype)
            for i, shape in enumerate(pool)
        ]
        functions: dict[str, Callable[[Any, Any], Any]] = {
            XDROP: lambda x, seed: xdrop.dropout(x, p, seed=seed),
            NATIVE: lambda x, seed: xdrop.dropout(x, p, seed=seed, rng="native"),
            FRAMEWORK: lambda x, seed: tf.nn.dropout(x, rate=p),
            COPY: lambda x, seed: x * 2.0,
        }
        if case.direction == BACKWARD:
            functions = {name: _taped(tf, f) for name, f in functions.items()}
            inputs = [(x, tf.ones_like(x)) for x in inputs]
        if case.path == "tf eager":
            seeds: Iterator[Any] = itertools.count()
        else:
            jit_compile = case.path == "tf.function(jit_compile)"
            # Keras and tf.saved_model trace with the batch dimension unknown: sizes in the graph
            # are known only at run time
            spec = tf.TensorSpec([None, *pool[0][1:]], dtype)
            signature = (
                ((spec, spec) if case.direction == BACKWARD else spec, tf.TensorSpec([], tf.int64))
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
        return {name: _bind(function, inputs, seeds) for name, function in functions.items()}


def _taped(tf: Any, function: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``function`` forward and backward: its argument is ``(x, the gradient flowing back)``."""

    def forward_backward(x_and_gradient: Any, seed: Any) -> Any:
        x, gradient = x_and_gradient
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = function(x, seed)
        return y, tape.gradient(y, x, output_gradients=gradient)

    return forward_backward


def _bind(function: Callable[[Any, Any], Any], inputs: list[Any], seeds: Iterator[Any]) -> Call:
    """One call of ``function`` on the next of ``inputs`` (each call a new one where there are
    several) with the next seed."""
    if len(inputs) == 1:
        (x,) = inputs
        return lambda: function(x, next(seeds))
    cycle = itertools.cycle(inputs)
    return lambda: function(next(cycle), next(seeds))


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
        dtype = getattr(jnp, case.dtype)
        inputs: list[Any] = [
            jax.random.normal(jax.random.key(i), shape).astype(dtype)
            for i, shape in enumerate(shapes(case))
        ]
        if case.direction == BACKWARD:
            functions = {name: _pulled_back(jax, f) for name, f in functions.items()}
            inputs = [(x, jnp.ones_like(x)) for x in inputs]
        keys = [jax.random.key(seed) for seed in range(SEED_COUNT)]
        if case.path == "jax.jit":
            functions = {name: jax.jit(function) for name, function in functions.items()}
            seeds = {name: itertools.cycle(keys) for name in functions}
        else:  # eagerly, xdrop takes the integers users write; Flax-style code holds keys
            seeds = {name: itertools.cycle(range(SEED_COUNT)) for name in functions}
            seeds[FRAMEWORK] = itertools.cycle(keys)
        return {
            name: _blocking(jax, function, inputs, seeds[name])
            for name, function in functions.items()
        }


def _pulled_back(jax: Any, function: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``function`` forward and backward: its argument is ``(x, the gradient flowing back)``."""

    def forward_backward(x_and_gradient: Any, seed: Any) -> Any:
        x, gradient = x_and_gradient
        y, pullback = jax.vjp(lambda v: function(v, seed), x)
        return y, pullback(gradient)[0]

    return forward_backward


def _blocking(
    jax: Any, function: Callable[[Any, Any], Any], inputs: list[Any], seeds: Iterator[Any]
) -> Call:
    call = _bind(function, inputs, seeds)
    return lambda: jax.block_until_ready(call())


SUITES: dict[str, type[Suite]] = {
    "numpy": NumpySuite,
    "torch": TorchSuite,
    "tensorflow": TensorflowSuite,
    "jax": JaxSuite,
}
