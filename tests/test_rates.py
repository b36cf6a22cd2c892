"""A rate held in a tensor: the same bits as the float it holds, eagerly and compiled, with no
recompilation for a new value; out of range while traced, the output is NaN."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import xdrop
from xdrop import spec

pytestmark = pytest.mark.backend_independent  # each test names its framework

# float32 rates where float32's 1 - p is exactly halfway between two float16 (bfloat16) values
# and 1 - p itself is not: rounding twice through float32 goes the wrong way on these
HALFWAY_FLOAT16 = 0.4992676079273224
HALFWAY_BFLOAT16 = 0.4941406548023224
RATES = (0.0, 1e-9, 0.1, 0.5, HALFWAY_FLOAT16, HALFWAY_BFLOAT16, 0.9, 0.999, 1.0)
DTYPES = ("float16", "bfloat16", "float32")
MODES = ("inverted", "classic")


def test_the_halfway_rates_are_the_hard_cases():
    """float32 arithmetic alone rounds them wrongly: the spec must not take that shortcut."""
    import ml_dtypes

    for p, dtype in ((HALFWAY_FLOAT16, np.float16), (HALFWAY_BFLOAT16, ml_dtypes.bfloat16)):
        naive = float(dtype(np.float32(1) - np.float32(p)))
        assert naive != spec.rounded(1.0 - p, np.dtype(dtype).name)


def expected(x: np.ndarray, p: float, **kwargs: Any) -> np.ndarray:
    """xdrop.dropout on NumPy with the float p holds (as float32 holds it)."""
    with xdrop.use_backend("numpy"):  # whatever XDROP_BACKEND says
        return np.asarray(xdrop.dropout(x, float(np.float32(p)), seed=11, **kwargs), np.float64)


def host_input(dtype: str) -> np.ndarray:
    import ml_dtypes

    values = np.linspace(-3.0, 3.0, 48).reshape(6, 8)
    return values.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)


class Framework:
    """How a test makes a tensor, compiles a function and counts its traces on one framework."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.module = pytest.importorskip({"tensorflow": "tensorflow"}.get(name, name))

    def tensor(self, values: np.ndarray | float, dtype: str) -> Any:
        if self.name == "torch":
            import torch

            return torch.tensor(np.asarray(values, np.float64), dtype=getattr(torch, dtype))
        if self.name == "jax":
            return self.module.numpy.asarray(np.asarray(values, np.float64), dtype=dtype)
        tf = self.module
        return tf.cast(tf.constant(np.asarray(values, np.float64)), dtype)

    def compiled(self, function: Callable[..., Any]) -> tuple[Callable[..., Any], list[int]]:
        traces: list[int] = []

        def counted(*arguments: Any) -> Any:
            traces.append(1)
            return function(*arguments)

        if self.name == "torch":  # dynamo would guard on the list's length: count graphs
            import torch
            from torch._dynamo.backends.registry import lookup_backend

            def counting_backend(graph: Any, inputs: Any) -> Any:
                traces.append(1)
                return lookup_backend("aot_eager")(graph, inputs)

            return torch.compile(function, fullgraph=True, backend=counting_backend), traces
        if self.name == "jax":
            return self.module.jit(counted), traces
        return self.module.function(counted, jit_compile=True, autograph=False), traces

    def host(self, y: Any) -> np.ndarray:
        from xdrop import registry

        return np.asarray(registry.load(self.name).to_numpy(y), np.float64)


@pytest.fixture(params=["torch", "tensorflow", "jax"])
def framework(request: pytest.FixtureRequest) -> Framework:
    return Framework(request.param)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_rate_tensor_gives_the_bits_of_its_float_eagerly(framework, dtype, mode):
    x = host_input(dtype)
    for p in RATES:
        y = xdrop.dropout(
            framework.tensor(x, dtype), framework.tensor(p, "float32"), seed=11, mode=mode
        )
        np.testing.assert_array_equal(framework.host(y), expected(x, p, mode=mode), err_msg=f"{p}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_traced_rate_gives_the_bits_of_its_float_and_never_recompiles(framework, dtype, mode):
    x = host_input(dtype)
    step, traces = framework.compiled(lambda t, p: xdrop.dropout(t, p, seed=11, mode=mode))
    for p in RATES:
        y = step(framework.tensor(x, dtype), framework.tensor(p, "float32"))
        np.testing.assert_array_equal(framework.host(y), expected(x, p, mode=mode), err_msg=f"{p}")
    assert len(traces) == 1


def test_classic_evaluation_with_a_traced_rate(framework):
    x = host_input("float16")
    step, _ = framework.compiled(lambda t, p: xdrop.dropout(t, p, training=False, mode="classic"))
    for p in (0.0, HALFWAY_FLOAT16, 0.3):
        y = step(framework.tensor(x, "float16"), framework.tensor(p, "float32"))
        want = np.asarray(xdrop.dropout(x, float(np.float32(p)), training=False, mode="classic"))
        np.testing.assert_array_equal(framework.host(y), want.astype(np.float64))


def test_a_float64_rate_tensor_is_the_float_it_holds(framework):
    if framework.name == "jax":
        pytest.skip("JAX makes float64 arrays only with jax_enable_x64")
    x = host_input("float32")
    p = 0.1  # float32(0.1) != 0.1: a float64 tensor must not go through float32
    step, _ = framework.compiled(lambda t, rate: xdrop.dropout(t, rate, seed=11))
    y = step(framework.tensor(x, "float32"), framework.tensor(p, "float64"))
    np.testing.assert_array_equal(framework.host(y), xdrop.dropout(x, p, seed=11))


def test_a_traced_rate_out_of_range_makes_the_output_nan(framework):
    x = host_input("float32")
    step, _ = framework.compiled(lambda t, p: xdrop.dropout(t, p, seed=11))
    for p in (-0.5, 1.5, math.nan):
        y = framework.host(step(framework.tensor(x, "float32"), framework.tensor(p, "float32")))
        assert np.isnan(y).all(), p
    # float16 cannot hold the scale 1/(1 - p) of this rate: refused eagerly, NaN when traced
    y = step(framework.tensor(x, "float16"), framework.tensor(1 - 2**-20, "float32"))
    assert np.isnan(framework.host(y)).all()


def test_p_one_held_in_a_tensor_has_zero_gradients(framework):
    if framework.name == "tensorflow":
        import tensorflow as tf

        x = tf.Variable(tf.ones((3, 4)))
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(xdrop.dropout(x, tf.constant(1.0), seed=1))
        gradient = tape.gradient(total, x).numpy()
    elif framework.name == "jax":
        import jax

        gradient = jax.grad(lambda v, p: xdrop.dropout(v, p, seed=1).sum())(
            jax.numpy.ones((3, 4)), jax.numpy.float32(1.0)
        )
    else:
        import torch

        x = torch.ones(3, 4, requires_grad=True)
        step = torch.compile(lambda v, p: xdrop.dropout(v, p, seed=1), backend="aot_eager")
        step(x, torch.tensor(1.0)).sum().backward()
        gradient = x.grad
    assert (np.asarray(gradient) == 0).all()


def test_a_concrete_rate_tensor_is_checked_like_a_float(framework):
    x = framework.tensor(host_input("float32"), "float32")
    for p in (-0.1, 1.5, math.nan):
        with pytest.raises(xdrop.ArgumentValueError, match="p must be"):
            xdrop.dropout(x, framework.tensor(p, "float32"), seed=1)
    with pytest.raises(xdrop.ArgumentTypeError, match="0-d float array"):
        xdrop.dropout(x, framework.tensor(np.array([0.5, 0.5]), "float32"), seed=1)


def test_rates_held_in_numpy_are_floats():
    x = host_input("float32")
    y = xdrop.dropout(x, np.float32(0.3), seed=11)
    np.testing.assert_array_equal(xdrop.dropout(x, np.array(0.3, np.float32), seed=11), y)
    with pytest.raises(xdrop.ArgumentTypeError, match="p must be"):
        xdrop.dropout(x, np.array(1, np.int64), seed=11)


def test_dropout_mask_takes_a_traced_rate(framework):
    like = framework.tensor(np.zeros(5), "float32")
    step, _ = framework.compiled(lambda t, p: xdrop.dropout_mask((3, 5), p, seed=2, like=t))
    for p in (0.2, 0.7):
        mask = framework.host(step(like, framework.tensor(p, "float32")))
        want = xdrop.dropout_mask((3, 5), float(np.float32(p)), seed=2)
        np.testing.assert_array_equal(mask, want)
