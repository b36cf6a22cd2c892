"""xdrop.layers.flax: the step contract, nnx.jit, train/eval/view, split/merge, state round trips."""

from __future__ import annotations

import numpy as np
import pytest

import xdrop

pytest.importorskip("flax")
import jax
import jax.numpy as jnp
from flax import nnx
from layers.shared import assert_refused, check_seed_none_draws_once, digits

from xdrop.layers.flax import AlphaDropout, DropBlock2D, Dropout, DropoutState, DropPath

pytestmark = pytest.mark.backend_independent  # each framework's own arrays


def contract(x, rate, seed, step, **options):
    return np.asarray(xdrop.dropout(x, rate, seed=xdrop.fold_in(seed, step), **options))


class MLP(nnx.Module):
    def __init__(self, rate: float = 0.5, seed: int | None = 3) -> None:
        rngs = nnx.Rngs(0)
        self.hidden = nnx.Linear(8, 16, rngs=rngs)
        self.drop = Dropout(rate, seed=seed)
        self.out = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(self.drop(nnx.relu(self.hidden(x))))


@pytest.mark.parametrize("seed", [0, 2**63, 2**64 - 1])
def test_the_t_th_call_draws_fold_in_seed_t(seed):
    layer = Dropout(0.3, seed=seed)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 33)), jnp.float32)
    for step in range(4):
        np.testing.assert_array_equal(layer(x), contract(x, 0.3, seed, step))
    assert int(layer.step[...]) == 4
    assert layer.seed_value == seed


def test_deterministic_calls_draw_nothing_and_do_not_advance_the_step():
    layer, x = Dropout(0.5, seed=1), jnp.ones(8)
    layer(x)
    assert layer(x, deterministic=True) is x
    layer.eval()
    assert layer.deterministic and layer(x) is x
    assert nnx.view(layer, deterministic=False)(x) is not x  # a view draws step 1 ...
    assert int(layer.step[...]) == 2  # ... in the state it shares with the layer
    layer.train()
    np.testing.assert_array_equal(layer(x), contract(x, 0.5, 1, 2))
    classic = Dropout(0.25, seed=1, mode="classic", deterministic=True)
    np.testing.assert_array_equal(classic(x), np.full(8, 0.75, np.float32))


def test_seed_none_draws_once_from_the_global_generator():
    check_seed_none_draws_once(lambda: Dropout(0.5), lambda layer: layer.seed_value)


def test_broadcast_dims_share_one_decision():
    x = jnp.ones((2, 4, 4, 3))
    y = Dropout(0.5, broadcast_dims=(1, 2), seed=9)(x)
    np.testing.assert_array_equal(y, contract(x, 0.5, 9, 0, noise_shape=(2, 1, 1, 3)))
    y = Dropout(0.5, broadcast_dims=(-1,), seed=9)(x)
    np.testing.assert_array_equal(y, contract(x, 0.5, 9, 0, noise_shape=(2, 4, 4, 1)))


@pytest.mark.parametrize("dims", [(5,), (-3,), (2,), (0, 2)])
def test_broadcast_dims_outside_the_input_are_refused(dims):
    # before: an axis outside the input wrapped around ((5,) and (-3,) shared along axis 1)
    layer = Dropout(0.5, broadcast_dims=dims, seed=9)
    assert_refused(
        lambda: layer(jnp.ones((2, 4))),
        xdrop.ArgumentValueError,
        f"broadcast_dims must be axes in [-2, 2) of the 2-d inputs, got {dims!r}",
    )
    assert int(layer.step[...]) == 0  # a refused call draws nothing
    np.testing.assert_array_equal(
        Dropout(0.5, broadcast_dims=(1, -2), seed=9)(jnp.ones((2, 4))),
        contract(jnp.ones((2, 4)), 0.5, 9, 0, noise_shape=(1, 1)),
    )


@pytest.mark.parametrize(
    ("make", "shape", "message"),
    [(lambda: Dropout(0.5, broadcast_dims=(2,), seed=0), (2, 4),
      "broadcast_dims must be axes in [-2, 2) of the 2-d inputs, got (2,)"),
     (lambda: AlphaDropout(0.5, broadcast_dims=(-3,), seed=0), (2, 4),
      "broadcast_dims must be axes in [-2, 2) of the 2-d inputs, got (-3,)"),
     (lambda: DropBlock2D(0.1, 3, seed=0), (2, 3, 4),
      "inputs must be a 4-d tensor (N, H, W, C), got <tensor of shape (2, 3, 4)>"),
     (lambda: DropBlock2D(0.1, 3, data_format="channels_first", seed=0), (2, 3, 4),
      "inputs must be a 4-d tensor (N, C, H, W), got <tensor of shape (2, 3, 4)>"),
     (lambda: DropPath(0.1, seed=0), (),
      'inputs must be a tensor with a batch axis for mode="row", got <tensor of shape ()>')],
)  # fmt: skip
@pytest.mark.parametrize("deterministic", [False, True])
def test_a_wrong_rank_is_refused_in_training_and_evaluation_alike(
    make, shape, message, deterministic
):
    # before: a deterministic call returned the input, so the wrong rank surfaced only in training
    layer = make()
    call = lambda: layer(jnp.ones(shape), deterministic=deterministic)  # noqa: E731
    assert_refused(call, xdrop.ArgumentValueError, message)
    assert int(layer.step[...]) == 0


def test_an_nnx_jit_training_step_advances_the_stream_and_trains():
    optax = pytest.importorskip("optax")
    model = MLP(rate=0.2)
    eager = MLP(rate=0.2)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 8)), jnp.float32)
    y = x[:, :2] - x[:, 2:4]

    @nnx.jit
    def step(model, optimizer, x):
        def loss_fn(model):
            out = model(x)
            return ((out - y) ** 2).mean(), out

        (loss, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return loss, out

    losses = []
    for _ in range(40):
        before = nnx.state(model, nnx.Param)
        nnx.update(eager, before)
        loss, out = step(model, optimizer, x)
        np.testing.assert_allclose(out, eager(x), rtol=1e-5, atol=1e-6)  # the same mask
        losses.append(float(loss))
    assert int(model.drop.step[...]) == int(eager.drop.step[...]) == 40
    assert losses[-1] < losses[0] / 2


def test_the_state_is_not_a_parameter_and_round_trips_through_split_and_merge():
    model = MLP(seed=2**64 - 1)
    x = jnp.ones((2, 8))
    model(x)
    assert set(nnx.to_pure_dict(nnx.state(model, DropoutState))["drop"]) == {"seed", "step"}
    assert "drop" not in nnx.state(model, nnx.Param)
    independent = nnx.clone(model)
    graph, state = nnx.split(model)
    merged = nnx.merge(graph, state)
    np.testing.assert_array_equal(merged(x), independent(x))
    assert int(model.drop.step[...]) == int(independent.drop.step[...]) == 2


def test_a_pure_dict_of_the_state_restores_the_stream():
    model = MLP(seed=7)
    x = jnp.ones((2, 8))
    for _ in range(3):
        model(x)
    saved = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))  # e.g. written to disk
    restored = MLP(seed=None)
    state = nnx.state(restored)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, saved))
    nnx.update(restored, state)
    assert restored.drop.seed_value == 7
    np.testing.assert_array_equal(restored(x), model(x))


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [({"rate": 1.5}, xdrop.ArgumentValueError, "rate must be a real number in [0, 1], got 1.5"),
     ({"rate": 0.5, "seed": -1}, xdrop.ArgumentValueError, "seed must be an integer in [0, 2**64)"),
     ({"rate": 0.5, "broadcast_dims": 1}, xdrop.ArgumentTypeError,
      "broadcast_dims must be a sequence of integer axes, got 1"),
     ({"rate": 0.5, "deterministic": "yes"}, xdrop.ArgumentTypeError, "deterministic must be True or False"),
     ({"rate": 0.5, "mode": "x"}, xdrop.ArgumentValueError, 'mode must be one of "inverted", "classic"')],
)  # fmt: skip
def test_bad_arguments_name_the_argument_the_value_and_what_is_allowed(arguments, error, message):
    assert_refused(lambda: Dropout(**arguments), error, message)


@pytest.mark.parametrize("value", ["no", 0, "jnp.ones(2)"])
def test_a_bad_deterministic_at_call_time_or_in_a_view_is_refused(value):
    value = jnp.ones(2) if value == "jnp.ones(2)" else value  # an array is not a flag either
    layer = Dropout(0.5, seed=0)
    message = "deterministic must be True or False (or None: the module's own)"
    assert_refused(
        lambda: layer(jnp.ones(4), deterministic=value), xdrop.ArgumentTypeError, message
    )
    assert_refused(lambda: nnx.view(layer, deterministic=value), xdrop.ArgumentTypeError, message)
    assert int(layer.step[...]) == 0 and layer.deterministic is False


def test_a_model_trains_on_digits_as_well_as_with_nnx_dropout():
    pixels, labels = digits()
    optax = pytest.importorskip("optax")
    x, y = jnp.asarray(pixels), jnp.asarray(labels)

    class Net(nnx.Module):
        def __init__(self, own: bool) -> None:
            rngs = nnx.Rngs(params=0, dropout=0)
            self.hidden = nnx.Linear(64, 128, rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs) if own else Dropout(0.5, seed=0)
            self.out = nnx.Linear(128, 10, rngs=rngs)

        def __call__(self, x: jax.Array) -> jax.Array:
            return self.out(self.drop(nnx.relu(self.hidden(x))))

    @nnx.jit
    def step(model, optimizer, xb, yb):
        def loss_fn(model):
            logits = model(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        optimizer.update(model, nnx.grad(loss_fn)(model))

    accuracies = []
    for own in (True, False):
        model = Net(own)
        optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
        batches = np.random.default_rng(0)
        for _ in range(120):
            index = batches.integers(0, 1200, 64)
            step(model, optimizer, x[index], y[index])
        model.eval()
        accuracies.append(float((model(x[1200:]).argmax(-1) == y[1200:]).mean()))
    own_accuracy, ours = accuracies
    assert ours > 0.9
    assert abs(ours - own_accuracy) < 0.03, accuracies
