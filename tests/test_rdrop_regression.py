"""``rdrop_regression_loss``: R-Dropout for a regression head, on NumPy, PyTorch, TensorFlow and JAX.

Every value is checked against the formula written out in NumPy float64 here,
``(p1 - y)**2 + (p2 - y)**2 + alpha * (p1 - p2)**2`` per value, and against the R-Drop authors'
BERT recipe for STS-B written with PyTorch's ``MSELoss``; the gradients against their closed form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import xdrop
from xdrop import registry

pytestmark = pytest.mark.backend_independent

FRAMEWORKS = ["numpy", "torch", "tensorflow", "jax"]


def backend(name: str) -> Any:
    """xdrop's backend ``name``, or a skip when it or its framework is missing here."""
    if name != "numpy":
        pytest.importorskip(name)
    if not xdrop.available_backends().get(name):
        pytest.skip(f"xdrop has no {name} backend installed here")
    return registry.load(name)


@pytest.fixture(params=FRAMEWORKS)
def xp(request: pytest.FixtureRequest) -> Iterator[Any]:
    # NumPy arrays go to the default backend: held to NumPy's here, whatever XDROP_BACKEND says
    with xdrop.use_backend(backend(request.param).name) as loaded:
        yield loaded


@pytest.fixture
def array(xp: Any) -> Callable[..., Any]:
    """NumPy values as an array of the framework under test."""

    def make(values: Any, dtype: str = "float32") -> Any:
        return xp.asarray(np.asarray(values), dtype=dtype)

    return make


def host(xp: Any, y: Any) -> np.ndarray:
    return np.asarray(xp.to_numpy(y), np.float64)


def passes(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two passes' predictions, near each other as two dropout passes are, and targets."""
    generator = np.random.default_rng(seed)
    pred1 = generator.normal(0, 1, shape)
    pred2 = pred1 + generator.normal(0, 0.3, shape)
    return pred1, pred2, generator.normal(0, 1, shape)


def per_value(p1: np.ndarray, p2: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """The loss of each value, in float64."""
    return (p1 - y) ** 2 + (p2 - y) ** 2 + alpha * (p1 - p2) ** 2


# -- the value -------------------------------------------------------------------------------------
def test_each_value_is_both_squared_errors_plus_alpha_times_the_squared_difference(xp, array):
    p1, p2, y = passes((4, 3))
    got = xdrop.rdrop_regression_loss(array(p1), array(p2), array(y), alpha=0.7, reduction="none")
    assert xp.dtype_name(got) == "float32"
    expected = per_value(*(a.astype(np.float32) for a in (p1, p2, y)), alpha=0.7)
    np.testing.assert_allclose(host(xp, got), expected, rtol=1e-5, atol=1e-6)


def test_default_is_the_mean_over_values_and_alpha_one(xp, array):
    p1, p2, y = passes((6,))
    got = xdrop.rdrop_regression_loss(array(p1), array(p2), array(y))
    expected = per_value(p1, p2, y, 1.0).mean()
    np.testing.assert_allclose(host(xp, got), expected, rtol=1e-5)


@pytest.mark.parametrize(
    ("reduction", "reduce"),
    [("sum", np.sum), ("batchmean", lambda v: v.sum() / v.shape[0]), ("mean", np.mean)],
)
def test_reductions(xp, array, reduction, reduce):
    p1, p2, y = passes((5, 2, 3), seed=1)
    got = xdrop.rdrop_regression_loss(
        array(p1), array(p2), array(y), alpha=2.0, reduction=reduction
    )
    np.testing.assert_allclose(host(xp, got), reduce(per_value(p1, p2, y, 2.0)), rtol=1e-5)


def test_alpha_zero_leaves_the_two_squared_errors(xp, array):
    p1, p2, y = passes((7,), seed=2)
    got = xdrop.rdrop_regression_loss(array(p1), array(p2), array(y), alpha=0.0)
    expected = ((p1 - y) ** 2).mean() + ((p2 - y) ** 2).mean()
    np.testing.assert_allclose(host(xp, got), expected, rtol=1e-5)


def test_identical_passes_on_their_targets_give_exactly_zero(xp, array):
    p1, _, _ = passes((3, 4), seed=3)
    got = xdrop.rdrop_regression_loss(array(p1), array(p1), array(p1), reduction="none")
    assert host(xp, got).tolist() == np.zeros((3, 4)).tolist()


def test_integer_targets_are_compared_as_numbers(xp, array):
    p1, p2, _ = passes((5,), seed=4)
    y = np.array([0, 1, 2, 3, 4])
    got = xdrop.rdrop_regression_loss(array(p1), array(p2), array(y, "int32"))
    np.testing.assert_allclose(host(xp, got), per_value(p1, p2, y, 1.0).mean(), rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_predictions_are_computed_and_returned_in_float32(xp, array, dtype):
    if xp.name == "numpy" and dtype == "bfloat16":
        pytest.skip("NumPy has no bfloat16")
    p1, p2, y = (np.round(a, 2) for a in passes((4,), seed=5))
    got = xdrop.rdrop_regression_loss(array(p1, dtype), array(p2, dtype), array(y, dtype))
    assert xp.dtype_name(got) == "float32"
    half = [host(xp, array(a, dtype)) for a in (p1, p2, y)]
    np.testing.assert_allclose(host(xp, got), per_value(*half, 1.0).mean(), rtol=1e-6)


def test_mean_is_the_authors_bert_recipe_for_sts_b(array, xp):
    torch = pytest.importorskip("torch")
    p1, p2, y = passes((8,), seed=6)
    mse = torch.nn.MSELoss()
    t1, t2, ty = (torch.tensor(a) for a in (p1, p2, y))
    recipe = mse(t1, ty) + mse(t2, ty) + 1.0 * mse(t1, t2)  # their weight of the last term
    got = xdrop.rdrop_regression_loss(array(p1), array(p2), array(y))
    np.testing.assert_allclose(host(xp, got), recipe.item(), rtol=1e-5)


# -- padding ---------------------------------------------------------------------------------------
def padded_tokens() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """[B, T] token values, padded positions holding NaN and inf garbage."""
    p1, p2, y = passes((3, 4), seed=7)
    pad = np.array([[0, 0, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]], bool)
    p1[0, 2], p2[0, 3], y[1, 3] = np.nan, np.inf, np.nan
    return p1, p2, y, pad


def test_padded_values_contribute_exactly_zero_whatever_they_hold(xp, array):
    p1, p2, y, pad = padded_tokens()
    none = xdrop.rdrop_regression_loss(
        array(p1), array(p2), array(y), pad_mask=array(pad, "bool"), reduction="none"
    )
    expected = np.where(pad, 0.0, per_value(*(np.where(pad, 0, a) for a in (p1, p2, y)), 1.0))
    np.testing.assert_allclose(host(xp, none), expected, rtol=1e-5, atol=1e-6)
    assert (host(xp, none)[pad] == 0).all()


def test_mean_divides_by_the_number_of_values_not_padded(xp, array):
    p1, p2, y, pad = padded_tokens()
    got = xdrop.rdrop_regression_loss(array(p1), array(p2), array(y), pad_mask=pad)
    expected = per_value(p1, p2, y, 1.0)[~pad].mean()
    np.testing.assert_allclose(host(xp, got), expected, rtol=1e-5)


def test_a_mask_of_positions_covers_each_positions_values(xp, array):
    p1, p2, y = passes((2, 3, 4), seed=8)
    pad = np.array([[0, 1, 1], [0, 0, 1]], bool)
    got = xdrop.rdrop_regression_loss(
        array(p1), array(p2), array(y), alpha=0.5, pad_mask=array(pad, "bool")
    )
    expected = per_value(p1, p2, y, 0.5)[~pad].mean()  # over 3 tokens x 4 values
    np.testing.assert_allclose(host(xp, got), expected, rtol=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "batchmean"])
def test_all_values_padded_gives_zero_not_nan(xp, array, reduction):
    p1, p2, y = passes((2, 3), seed=9)
    got = xdrop.rdrop_regression_loss(
        array(p1), array(p2), array(y), pad_mask=np.ones((2,), bool), reduction=reduction
    )
    assert host(xp, got) == 0.0


# -- gradients -------------------------------------------------------------------------------------
def expected_gradients(alpha: float) -> tuple[float, np.ndarray, np.ndarray]:
    """The mean loss of :func:`padded_tokens` and its gradients, in closed form: per real value
    ``dL/dp1 = (2 (p1 - y) + 2 alpha (p1 - p2)) / n``, 0 where padded."""
    p1, p2, y, pad = padded_tokens()
    keep, n = ~pad, (~pad).sum()
    p1, p2, y = (np.where(keep, a, 0.0) for a in (p1, p2, y))
    loss = per_value(p1, p2, y, alpha)[keep].mean()
    grad1 = np.where(keep, 2 * (p1 - y) + 2 * alpha * (p1 - p2), 0.0) / n
    grad2 = np.where(keep, 2 * (p2 - y) + 2 * alpha * (p2 - p1), 0.0) / n
    return loss, grad1, grad2


def test_torch_gradients_are_finite_and_right():
    backend("torch")
    import torch

    p1, p2, y, pad = padded_tokens()
    t1 = torch.tensor(p1, dtype=torch.float32, requires_grad=True)
    t2 = torch.tensor(p2, dtype=torch.float32, requires_grad=True)
    target = torch.tensor(y, dtype=torch.float32)
    loss = xdrop.rdrop_regression_loss(t1, t2, target, alpha=3.0, pad_mask=torch.tensor(pad))
    loss.backward()
    value, grad1, grad2 = expected_gradients(3.0)
    assert loss.item() == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(t1.grad.numpy(), grad1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t2.grad.numpy(), grad2, rtol=1e-5, atol=1e-6)


def test_jax_gradients_under_jit_are_finite_and_right():
    backend("jax")
    import jax
    import jax.numpy as jnp

    p1, p2, y, pad = padded_tokens()

    def loss_of(a: Any, b: Any, target: Any, mask: Any) -> Any:
        return xdrop.rdrop_regression_loss(a, b, target, alpha=3.0, pad_mask=mask)

    step = jax.jit(jax.value_and_grad(loss_of, argnums=(0, 1)))
    loss, (grad1, grad2) = step(
        *(jnp.asarray(a, jnp.float32) for a in (p1, p2, y)), jnp.asarray(pad)
    )
    value, expected1, expected2 = expected_gradients(3.0)
    assert float(loss) == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad1), expected1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad2), expected2, rtol=1e-5, atol=1e-6)


def test_tensorflow_gradients_under_tf_function_with_unknown_sizes():
    backend("tensorflow")
    import tensorflow as tf

    p1, p2, y, pad = padded_tokens()
    spec = tf.TensorSpec([None, None], tf.float32)

    @tf.function(input_signature=[spec, spec, spec, tf.TensorSpec([None, None], tf.bool)])
    def step(a: Any, b: Any, target: Any, mask: Any) -> Any:
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            loss = xdrop.rdrop_regression_loss(a, b, target, alpha=3.0, pad_mask=mask)
        return loss, tape.gradient(loss, [a, b])

    loss, (grad1, grad2) = step(*(tf.constant(a, tf.float32) for a in (p1, p2, y)), pad)
    value, expected1, expected2 = expected_gradients(3.0)
    assert float(loss) == pytest.approx(value, rel=1e-5)
    np.testing.assert_allclose(grad1.numpy(), expected1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad2.numpy(), expected2, rtol=1e-5, atol=1e-6)


def test_a_mask_of_positions_with_sizes_known_only_at_run_time():
    backend("tensorflow")
    import tensorflow as tf

    p1, p2, y = passes((2, 3, 4), seed=10)
    pad = np.array([[0, 0, 1], [1, 1, 1]], bool)
    spec = tf.TensorSpec([None, None, None], tf.float32)

    @tf.function(input_signature=[spec, spec, spec, tf.TensorSpec([None, None], tf.bool)])
    def loss_of(a: Any, b: Any, target: Any, mask: Any) -> Any:
        return xdrop.rdrop_regression_loss(a, b, target, pad_mask=mask)

    got = loss_of(*(tf.constant(a, tf.float32) for a in (p1, p2, y)), pad)
    np.testing.assert_allclose(got.numpy(), per_value(p1, p2, y, 1.0)[~pad].mean(), rtol=1e-5)


# -- bad input -------------------------------------------------------------------------------------
def test_predictions_of_different_shapes(array):
    with pytest.raises(
        xdrop.ArgumentValueError, match=r"pred2 must be an array of pred1's shape \(2, 1\)"
    ):
        xdrop.rdrop_regression_loss(array(np.zeros((2, 1))), array(np.zeros(2)), np.zeros(2))


def test_predictions_of_different_dtypes(array):
    with pytest.raises(
        xdrop.ArgumentTypeError, match=r"pred2 must be an array of pred1's dtype \(float32\)"
    ):
        xdrop.rdrop_regression_loss(array([1.0]), array([1.0], "float16"), [1.0])


def test_integer_predictions(array):
    ints = array([1, 2], "int32")
    with pytest.raises(
        xdrop.ArgumentTypeError, match="pred1 must be an array of float16, bfloat16, float32"
    ):
        xdrop.rdrop_regression_loss(ints, ints, ints)


def test_targets_are_not_broadcast(array):
    pred = array(np.zeros((3, 1)))
    with pytest.raises(
        xdrop.ArgumentValueError,
        match=r"targets must be a floating or integer array of pred1's shape \(3, 1\), got",
    ):
        xdrop.rdrop_regression_loss(pred, pred, array(np.zeros(3)))


def test_boolean_targets(array):
    pred = array(np.zeros(2))
    with pytest.raises(xdrop.ArgumentTypeError, match="targets must be a floating or integer"):
        xdrop.rdrop_regression_loss(pred, pred, array([True, False], "bool"))


def test_pad_mask_that_is_not_boolean(array):
    pred = array(np.zeros(2))
    with pytest.raises(xdrop.ArgumentTypeError, match="pad_mask must be None or a boolean array"):
        xdrop.rdrop_regression_loss(pred, pred, pred, pad_mask=np.array([0, 1]))


@pytest.mark.parametrize("shape", [(3,), (2, 4), (2, 3, 4, 1)])
def test_pad_mask_that_is_not_the_shape_or_its_leading_axes(array, shape):
    pred = array(np.zeros((2, 3, 4)))
    with pytest.raises(
        xdrop.ArgumentValueError,
        match=r"pad_mask must be None or a boolean array .* of pred1's shape \(2, 3, 4\) or of "
        "its leading axes",
    ):
        xdrop.rdrop_regression_loss(pred, pred, pred, pad_mask=np.zeros(shape, bool))


@pytest.mark.parametrize("alpha", [-1.0, float("nan"), float("inf"), 1e39])
def test_alpha_must_be_finite_and_non_negative(array, alpha):
    pred = array(np.zeros(2))
    with pytest.raises(xdrop.ArgumentValueError, match="alpha must be a real number >= 0"):
        xdrop.rdrop_regression_loss(pred, pred, pred, alpha=alpha)


def test_unknown_reduction(array):
    pred = array(np.zeros(2))
    with pytest.raises(xdrop.ArgumentValueError, match='reduction must be one of "sum", "mean"'):
        xdrop.rdrop_regression_loss(pred, pred, pred, reduction="average")  # type: ignore[arg-type]


def test_batchmean_needs_a_batch_axis(xp, array):
    pred = array(1.0)
    with pytest.raises(xdrop.ArgumentValueError, match="without a batch axis"):
        xdrop.rdrop_regression_loss(pred, pred, pred, reduction="batchmean")
    single = xdrop.rdrop_regression_loss(pred, pred, array(3.0))  # one value, no batch
    assert host(xp, single) == 8.0
