"""xdrop.layers.flax: the step contract, nnx.jit, train/eval/view, split/merge, state round trips."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

import xdrop
from xdrop import reference

pytest.importorskip("flax")
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from layers.shared import assert_refused, check_seed_none_draws_once, digits

from xdrop.layers.flax import AlphaDropout, DropBlock2D, Dropout, DropoutState, DropPath
from xdrop.layers.flax import dropout as flax_dropout

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
    assert layer.step_value == 4
    assert layer.seed_value == seed


def test_deterministic_calls_draw_nothing_and_do_not_advance_the_step():
    layer, x = Dropout(0.5, seed=1), jnp.ones(8)
    layer(x)
    assert layer(x, deterministic=True) is x
    layer.eval()
    assert layer.deterministic and layer(x) is x
    assert nnx.view(layer, deterministic=False)(x) is not x  # a view draws step 1 ...
    assert layer.step_value == 2  # ... in the state it shares with the layer
    layer.train()
    np.testing.assert_array_equal(layer(x), contract(x, 0.5, 1, 2))
    classic = Dropout(0.25, seed=1, mode="classic", deterministic=True)
    np.testing.assert_array_equal(classic(x), np.full(8, 0.75, np.float32))


@pytest.mark.parametrize(
    "draw",
    [lambda x: Dropout(0.3, seed=1)(x), lambda x: Dropout(0.3, rngs=nnx.Rngs(1))(x),
     lambda x: AlphaDropout(0.3, seed=1)(x), lambda x: DropPath(0.3, seed=1)(x),
     lambda x: flax_dropout(x, 0.3, jax.random.key(1))],
    ids=["seed", "rngs", "alpha", "drop path", "function"],
)  # fmt: skip
def test_a_numpy_batch_in_training_gives_what_its_jax_array_gives(draw):
    """As nnx.Dropout: a batch from a NumPy loader is taken, a jax.Array comes back."""
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    y = draw(x)
    assert isinstance(y, jax.Array)
    np.testing.assert_array_equal(y, draw(jnp.asarray(x)))


def test_seed_none_draws_once_from_the_global_generator():
    check_seed_none_draws_once(lambda: Dropout(0.5), lambda layer: layer.seed_value)


class Stacked(nnx.Module):
    """A layer of Flax's scan over layers, built for the whole stack inside ``nnx.vmap``."""

    def __init__(self, rngs: nnx.Rngs | None) -> None:
        self.drop = Dropout(0.5) if rngs is None else Dropout(0.5, rngs=rngs)


def _stack(with_rngs: bool) -> Stacked:
    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def stack(rngs: nnx.Rngs) -> Stacked:
        return Stacked(rngs if with_rngs else None)

    return stack(nnx.Rngs(0))


def _masks(stack: Stacked, call_rngs: nnx.Rngs | None = None) -> set[bytes]:
    """The masks the stacked layers draw, run one after the other by nnx.scan, as distinct
    byte strings."""

    @nnx.split_rngs(splits=3, only="dropout")
    @nnx.scan(in_axes=(nnx.Carry, 0, 0 if call_rngs else None), out_axes=(nnx.Carry, 0))
    def each(x: jax.Array, layer: Stacked, rngs: nnx.Rngs | None) -> tuple[jax.Array, jax.Array]:
        return x, layer.drop(x, rngs=rngs)

    _, masks = each(jnp.ones(64), stack, call_rngs)
    return {np.asarray(mask).tobytes() for mask in masks}


def test_inside_nnx_vmap_a_seed_drawn_for_the_whole_stack_is_refused_where_it_would_draw():
    """Python builds the layer once for every stacked layer: a seed drawn there would give
    them all one mask, so drawing from it is refused; rngs split across the stack, given to
    the constructor or to the call, give each layer its own, and evaluation draws nothing."""
    with pytest.raises(xdrop.ArgumentValueError, match=r"built inside nnx\.vmap"):
        _masks(_stack(with_rngs=False))
    assert len(_masks(_stack(with_rngs=True))) == 3
    assert len(_masks(_stack(with_rngs=False), call_rngs=nnx.Rngs(dropout=1))) == 3
    evaluated = _stack(with_rngs=False)
    evaluated.eval()
    assert _masks(evaluated) == {np.ones(64, np.float32).tobytes()}


def test_broadcast_dims_share_one_decision():
    x = jnp.ones((2, 4, 4, 3))
    y = Dropout(0.5, broadcast_dims=(1, 2), seed=9)(x)
    np.testing.assert_array_equal(y, contract(x, 0.5, 9, 0, noise_shape=(2, 1, 1, 3)))
    y = Dropout(0.5, broadcast_dims=(-1,), seed=9)(x)
    np.testing.assert_array_equal(y, contract(x, 0.5, 9, 0, noise_shape=(2, 4, 4, 1)))


@pytest.mark.parametrize("dims", [[1, 2], np.array([1, 2]), jnp.array([1, 2], jnp.int32)])
def test_broadcast_dims_may_be_a_list_or_a_1d_integer_array_as_nnx_dropout_takes(dims):
    x = jnp.ones((2, 4, 4, 3))
    expected = contract(x, 0.5, 9, 0, noise_shape=(2, 1, 1, 3))
    layer = Dropout(0.5, broadcast_dims=dims, seed=9)
    assert layer.broadcast_dims == (1, 2)
    np.testing.assert_array_equal(layer(x), expected)
    key = jax.random.key(9)
    np.testing.assert_array_equal(
        flax_dropout(x, 0.5, key, broadcast_dims=dims),
        flax_dropout(x, 0.5, key, broadcast_dims=(1, 2)),
    )
    shared = nnx.Dropout(0.5, broadcast_dims=dims, rngs=nnx.Rngs(0))(x)  # Flax's own takes them
    np.testing.assert_array_equal(shared, jnp.broadcast_to(shared[:, :1, :1], x.shape))


def test_an_empty_broadcast_dims_array_is_no_axis_whatever_its_dtype():
    x = jnp.ones((2, 3))
    for dims in (np.array([]), jnp.array([])):  # float arrays, as np.array([]) makes them
        np.testing.assert_array_equal(
            Dropout(0.5, broadcast_dims=dims, seed=9)(x), Dropout(0.5, seed=9)(x)
        )


@pytest.mark.parametrize(
    ("dims", "shown"),
    [(1, "1"), (np.array(1), "array(1)"), (np.array([[1]]), "array([[1]])"),
     (np.array([1.0]), "array([1.])"), ((1.5,), "(1.5,)"), ("", "''"), (b"\x01", "b'\\x01'")],
)  # fmt: skip
def test_broadcast_dims_of_another_kind_are_refused(dims, shown):
    message = (
        f"broadcast_dims must be a sequence of integer axes or a 1-d integer array, got {shown}"
    )
    assert_refused(
        lambda: Dropout(0.5, broadcast_dims=dims, seed=9), xdrop.ArgumentTypeError, message
    )
    assert_refused(
        lambda: flax_dropout(jnp.ones(2), 0.5, jax.random.key(9), broadcast_dims=dims),
        xdrop.ArgumentTypeError,
        message,
    )


@pytest.mark.parametrize("dims", [(5,), (-3,), (2,), (0, 2)])
def test_broadcast_dims_outside_the_input_are_refused(dims):
    # before: an axis outside the input wrapped around ((5,) and (-3,) shared along axis 1)
    layer = Dropout(0.5, broadcast_dims=dims, seed=9)
    assert_refused(
        lambda: layer(jnp.ones((2, 4))),
        xdrop.ArgumentValueError,
        f"broadcast_dims must be axes in [-2, 2) of the 2-d inputs, got {dims!r}",
    )
    assert layer.step_value == 0  # a refused call draws nothing
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
    assert layer.step_value == 0


@pytest.mark.parametrize("deterministic", [False, True])
def test_an_integer_input_is_refused_in_training_and_evaluation_alike(deterministic):
    # nnx.Dropout passes any input through when deterministic: a model feeding integers to a
    # dropout would evaluate, then fail at its first training step
    layer = Dropout(0.5, seed=0)
    assert_refused(
        lambda: layer(jnp.arange(4, dtype=jnp.int32), deterministic=deterministic),
        xdrop.ArgumentTypeError,
        "inputs must be an array of float16, bfloat16, float32 or float64 (cast integers to one), "
        "got <int32 array of shape (4,)>",
    )
    assert layer.step_value == 0


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
    assert model.drop.step_value == eager.drop.step_value == 40
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
    assert model.drop.step_value == independent.drop.step_value == 2


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


def test_a_state_restored_as_numpy_arrays_draws_and_leaves_them_alone():
    """flax.serialization.msgpack_restore gives read-only NumPy arrays: the stream reads them
    and steps to new arrays, neither failing on nor writing into the restored ones."""
    model = MLP(seed=7)
    x = jnp.ones((2, 8))
    model(x)
    saved = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model)))
    for array in jax.tree.leaves(saved):
        array.setflags(write=False)
    restored = MLP(seed=None)
    state = nnx.state(restored)
    nnx.replace_by_pure_dict(state, saved)
    nnx.update(restored, state)
    np.testing.assert_array_equal(restored(x), model(x))
    np.testing.assert_array_equal(restored(x), model(x))
    assert restored.drop.step_value == 3
    np.testing.assert_array_equal(saved["drop"]["step"], [0, 1])


def restored_with(name, cast):
    """A layer of seed ``2**40 + 7`` whose DropoutState ``name`` was restored through
    ``nnx.update`` as ``cast`` makes it, as a checkpoint written with another dtype restores it."""
    layer = Dropout(0.5, seed=2**40 + 7)
    state = nnx.state(layer)
    state[name] = state[name].replace(cast(state[name][...]))
    nnx.update(layer, state)
    return layer


BAD_STATES = [
    pytest.param(lambda words: words.astype(jnp.uint8), xdrop.ArgumentTypeError,
                 "array of uint8 shape (2,)", id="uint8"),  # a seed of 2**40 + 7 would read as 7
    pytest.param(lambda words: words.astype(jnp.int32), xdrop.ArgumentTypeError,
                 "array of int32 shape (2,)", id="int32"),
    pytest.param(lambda words: words.astype(jnp.float32), xdrop.ArgumentTypeError,
                 "array of float32 shape (2,)", id="float32"),
    pytest.param(lambda words: jnp.zeros(3, jnp.uint32), xdrop.ArgumentValueError,
                 "array of uint32 shape (3,)", id="uint32[3]"),
    pytest.param(lambda words: words[1], xdrop.ArgumentValueError, "array of uint32 shape ()",
                 id="0-d"),
    pytest.param(lambda words: 7, xdrop.ArgumentTypeError, "a value that is not an array",
                 id="int"),
]  # fmt: skip


@pytest.mark.parametrize("name", ["seed", "step"])
@pytest.mark.parametrize(("cast", "error", "shown"), BAD_STATES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_a_state_restored_with_another_dtype_or_shape_is_refused_at_the_first_call(
    name, cast, error, shown, deterministic
):
    # before: a uint8 seed drew from seed 7 silently; a float32 failed in xor, other shapes in
    # unpacking or broadcasting, without saying which state was wrong
    layer = restored_with(name, cast)
    message = (
        f"the DropoutState {name!r} of Dropout must be a uint32[2] array "
        f"(the {name}'s words hi, lo), got <{shown}>"
    )
    assert_refused(lambda: layer(jnp.ones(8), deterministic=deterministic), error, message)
    assert_refused(lambda: layer.seed_value, error, message)
    assert_refused(lambda: layer.step_value, error, message)


@pytest.mark.parametrize("name", ["seed", "step"])
@pytest.mark.parametrize(("cast", "error", "shown"), BAD_STATES)
def test_under_nnx_jit_the_state_is_checked_while_tracing(name, cast, error, shown):
    layer = restored_with(name, cast)
    message = f"the DropoutState {name!r} of Dropout must be a uint32[2] array"
    assert_refused(lambda: nnx.jit(lambda module, x: module(x))(layer, jnp.ones(8)), error, message)
    # the check reads the dtype and shape only, static under jit: a good state is traced once
    # and its compiled step draws the stream's masks
    good = Dropout(0.5, seed=2**40 + 7)
    calls = []

    @nnx.jit
    def step(module, x):
        calls.append(None)
        return module(x)

    x = jnp.ones(8)
    for t in range(3):
        np.testing.assert_array_equal(step(good, x), contract(x, 0.5, 2**40 + 7, t))
    assert len(calls) == 1


def test_set_mc_sampling_refuses_what_is_not_a_module():
    # before: set_mc_sampling(5) found no module in it and returned 0, as for a model without
    # dropout
    from xdrop.layers.flax import set_mc_sampling

    for value, shown in [(5, "5 of type int"), (None, "None of type NoneType"),
                         ("model", "'model' of type str")]:  # fmt: skip
        assert_refused(
            lambda value=value: set_mc_sampling(value),
            xdrop.ArgumentTypeError,
            f"model must be an nnx.Module (or a list, tuple or dict of them), got {shown}",
        )
    layers = [Dropout(0.5, seed=0), Dropout(0.5, seed=1)]
    assert set_mc_sampling(layers) == 2 and all(layer.mc_sampling for layer in layers)
    assert set_mc_sampling({"first": layers[0]}, False) == 1 and not layers[0].mc_sampling


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [({"rate": 1.5}, xdrop.ArgumentValueError, "rate must be a real number in [0, 1], got 1.5"),
     ({"rate": 0.5, "seed": -1}, xdrop.ArgumentValueError, "seed must be an integer in [0, 2**64)"),
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
    assert layer.step_value == 0 and layer.deterministic is False


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


# -- Flax code that passes rngs ---------------------------------------------------------------------
def test_given_rngs_each_training_call_draws_with_the_streams_next_key():
    layer, x = Dropout(0.5, rngs=nnx.Rngs(dropout=3)), jnp.ones((4, 9))
    keys = nnx.Rngs(dropout=3).fork()  # the layer forks the stream it is given, as Flax's does
    for _ in range(3):
        np.testing.assert_array_equal(layer(x), xdrop.dropout(x, 0.5, seed=keys.dropout()))
    assert int(layer.rngs.count[...]) == 3
    assert layer(x, deterministic=True) is x
    assert int(layer.rngs.count[...]) == 3  # evaluation draws no key


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_at_rates_0_and_1_no_key_is_taken_from_a_flax_stream_as_in_flax(rate):
    """nnx.Dropout returns before taking a key there: a layer after it then draws with the key
    it draws with in Flax (xdrop's own stream still counts every call: its step is the call's)."""
    x = jnp.ones((4, 8))

    def two_layers(make, rngs):
        first, second = make(rate), make(0.5)
        return second(first(x, rngs=rngs), rngs=rngs)

    flax_rngs, xdrop_rngs = nnx.Rngs(dropout=0), nnx.Rngs(dropout=0)
    expected = two_layers(nnx.Dropout, flax_rngs)
    np.testing.assert_array_equal(two_layers(Dropout, xdrop_rngs), expected)
    assert int(xdrop_rngs.dropout.count[...]) == int(flax_rngs.dropout.count[...]) == 1
    own_stream = Dropout(rate, rngs=nnx.Rngs(dropout=0))
    own_stream(x)
    assert int(own_stream.rngs.count[...]) == 0
    functional_rngs = nnx.Rngs(dropout=0)
    flax_dropout(x, rate, functional_rngs)
    assert int(functional_rngs.dropout.count[...]) == 0
    own_seed = Dropout(rate, seed=1)
    own_seed(x)
    assert own_seed.step_value == 1


def test_in_linen_a_layer_is_refused_unless_the_nnx_bridge_gives_it_linens_keys():
    """Built in a Linen module's compact code, a layer's own seed and step are no Linen
    variables: under jit each step would draw the first step's mask."""
    linen = pytest.importorskip("flax.linen")
    from xdrop.layers.flax import convert

    class Plain(linen.Module):
        @linen.compact
        def __call__(self, x):
            return Dropout(0.5, seed=0)(x)

    x = jnp.ones((4, 8))
    with pytest.raises(xdrop.ArgumentValueError, match=r"nnx.bridge.to_linen\(Dropout, rate\)"):
        Plain().init(jax.random.key(0), x)
    bridged = nnx.bridge.to_linen(Dropout, 0.5)
    variables = bridged.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
    y = bridged.apply(variables, x, rngs={"dropout": jax.random.key(2)})
    expected = nnx.bridge.to_linen(nnx.Dropout, 0.5).apply(
        variables, x, rngs={"dropout": jax.random.key(2)}
    )
    np.testing.assert_array_equal(y, expected)  # Flax's masks for Linen's keys
    with pytest.raises(xdrop.ArgumentTypeError, match="a Linen model has no state"):
        convert(Plain(), seed=0)


def test_a_split_by_the_streams_name_takes_the_layers_own_stream_as_flaxs():
    # flax's rngs_test.py::test_lifting_rng_state splits exhaustively: Param, RngCount, the
    # stream's name, 'params'; the layer's seed and step carry the name as Flax's key does
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.rngs = rngs
            self.dropout = Dropout(0.5, deterministic=False)
            self.linear = nnx.Linear(2, 3, rngs=rngs)

        def __call__(self, x):
            return self.dropout(self.linear(x), rngs=self.rngs)

    model = Model(nnx.Rngs(params=0, dropout=1))
    graph, params, counts, dropout_state, rest = nnx.split(
        model, nnx.Param, nnx.RngCount, "dropout", "params"
    )
    kinds = {type(variable).__name__ for _, variable in nnx.to_flat_state(dropout_state)}
    assert kinds == {"DropoutState", "RngKey"}
    y = nnx.merge(graph, params, counts, dropout_state, rest)(jnp.ones((1, 2)))
    assert y.shape == (1, 3)


def test_rngs_of_the_call_take_precedence_and_leave_the_modules_stream_alone():
    x = jnp.ones((2, 8))
    flax_style, own = Dropout(0.5, rngs=nnx.Rngs(dropout=0)), Dropout(0.5, seed=5)
    key = jax.random.key(11)
    for layer in (flax_style, own):
        np.testing.assert_array_equal(layer(x, rngs=key), xdrop.dropout(x, 0.5, seed=key))
        stream = nnx.Rngs(dropout=4)
        expected = xdrop.dropout(x, 0.5, seed=nnx.Rngs(dropout=4).dropout())
        np.testing.assert_array_equal(layer(x, rngs=stream), expected)
        assert int(stream.dropout.count[...]) == 1
    assert int(flax_style.rngs.count[...]) == 0 and own.step_value == 0


def test_an_rngs_without_the_collection_gives_its_default_stream_as_in_flax():
    layer, x = Dropout(0.5, rngs=nnx.Rngs(7)), jnp.ones(16)
    np.testing.assert_array_equal(layer(x), xdrop.dropout(x, 0.5, seed=nnx.Rngs(7).fork()()))
    other = Dropout(0.5, rng_collection="noise", rngs=nnx.Rngs(noise=2, dropout=1))
    np.testing.assert_array_equal(
        other(x), xdrop.dropout(x, 0.5, seed=nnx.Rngs(noise=2).fork().noise())
    )


@pytest.mark.parametrize(
    "make", [AlphaDropout, DropPath, lambda rate, **kw: DropBlock2D(rate, 3, **kw)]
)
def test_the_family_takes_rngs_too(make):
    layer, x = make(0.3, rngs=nnx.Rngs(dropout=1)), jnp.ones((2, 6, 6, 3))
    same = make(0.3, seed=0)
    np.testing.assert_array_equal(layer(x), same(x, rngs=nnx.Rngs(dropout=1).fork()))


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [({"seed": 1, "rngs": nnx.Rngs(0)}, xdrop.ArgumentValueError,
      "seed and rngs are two sources of masks: give one, got seed=1 and rngs"),
     ({"rngs": 0}, xdrop.ArgumentTypeError,
      "rngs must be an nnx.Rngs, an nnx.RngStream or None, got 0 of type int"),
     ({"rng_collection": 1}, xdrop.ArgumentTypeError,
      "rng_collection must be the name of a stream of nnx.Rngs, got 1")],
)  # fmt: skip
def test_bad_rngs_are_refused_as_flax_refuses_them(arguments, error, message):
    assert_refused(lambda: Dropout(0.5, **arguments), error, message)
    layer = Dropout(0.5, seed=0)
    assert_refused(
        lambda: layer(jnp.ones(3), rngs="key"),
        xdrop.ArgumentTypeError,
        "rngs must be an nnx.Rngs, an nnx.RngStream, a JAX key or None, got 'key'",
    )


def test_deterministic_none_must_be_given_at_the_call_as_in_flax():
    layer, x = Dropout(0.5, deterministic=None, seed=0), jnp.ones(4)
    with pytest.raises(ValueError, match="deterministic must be True or False, got None both"):
        layer(x)
    assert layer(x, deterministic=True) is x
    np.testing.assert_array_equal(layer(x, deterministic=False), contract(x, 0.5, 0, 0))


def test_view_info_describes_the_deterministic_view():
    model = nnx.Sequential(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), Dropout(0.5, seed=0))
    info = nnx.view_info(model)
    assert "Dropout:\n  deterministic: bool | None = None\n    if True, the module returns" in info
    assert nnx.view(model, deterministic=True).layers[1].deterministic is True


RESUME = """
import sys, jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from xdrop.layers.flax import Dropout

class Net(nnx.Module):  # written as Flax code is: rngs everywhere
    def __init__(self, rngs):
        self.hidden = nnx.Linear(8, 32, rngs=rngs)
        self.drop = Dropout(0.3, rngs=rngs)
        self.out = nnx.Linear(32, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.hidden(x))))

@nnx.jit
def step(model, optimizer, x, y):
    loss, grads = nnx.value_and_grad(lambda m: ((m(x) - y) ** 2).mean())(model)
    optimizer.update(model, grads)
    return loss

def as_numpy(a):
    is_key = jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
    return np.asarray(jax.random.key_data(a) if is_key else a)

def as_jax(like, a):
    is_key = jnp.issubdtype(like.dtype, jax.dtypes.prng_key)
    return jax.random.wrap_key_data(a) if is_key else jnp.asarray(a)

path, phase = sys.argv[1], sys.argv[2]
x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32)
y = x[:, :2]
model = Net(nnx.Rngs(params=0, dropout=1))
optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
if phase == "resume":
    saved = dict(np.load(path + ".npz"))
    state = nnx.state((model, optimizer))
    flat = nnx.to_flat_state(state)
    for key, variable in flat:
        variable.set_value(as_jax(variable.get_value(), saved["/".join(map(str, key))]))
    nnx.update((model, optimizer), nnx.from_flat_state(flat))
else:
    for _ in range(3):
        step(model, optimizer, x, y)
    flat = nnx.to_flat_state(nnx.state((model, optimizer)))
    np.savez(path, **{"/".join(map(str, k)): as_numpy(v.get_value()) for k, v in flat})
losses = [float(step(model, optimizer, x, y)) for _ in range(4)]
print(repr(losses))
"""


def test_a_flax_model_passing_rngs_checkpoints_and_resumes_bit_for_bit(tmp_path):
    pytest.importorskip("optax")
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    path = str(tmp_path / "checkpoint")

    def run(phase: str) -> str:
        command = [sys.executable, str(script), path, phase]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    trained, resumed = run("train"), run("resume")  # the resume runs in a new process
    assert trained == resumed
    assert len(set(eval(trained))) == 4  # the losses move: the masks and the weights changed


def test_the_step_carries_past_2_to_the_32_instead_of_repeating_the_stream():
    layer, x = Dropout(0.5, seed=6), jnp.ones(64)
    layer.step[...] = jnp.asarray([0, 2**32 - 1], jnp.uint32)
    np.testing.assert_array_equal(layer(x), contract(x, 0.5, 6, 2**32 - 1))
    assert layer.step_value == 2**32
    # Threefry of the seed's key at counter (1, 0): the high word carries into the counter
    high, low = reference.threefry2x32(reference.seed_key(6), (1, 0))
    carried = (high << 32) | low
    np.testing.assert_array_equal(layer(x), xdrop.dropout(x, 0.5, seed=carried))
    assert layer.step_value == 2**32 + 1
    assert not np.array_equal(layer(x), contract(x, 0.5, 6, 1))  # not step 1's mask again


@pytest.mark.parametrize("data_parallel", [None, "per_rank", "global_batch"])
def test_one_process_draws_the_same_masks_in_every_data_parallel_mode(data_parallel):
    layer = Dropout(0.5, seed=3, data_parallel=data_parallel)
    step = nnx.jit(lambda module, v: module(v))
    x = jnp.ones((4, 6))
    for t in range(2):
        expected = xdrop.dropout(np.ones((4, 6)), 0.5, seed=xdrop.fold_in(3, t))
        np.testing.assert_array_equal(np.asarray(step(layer, x)), expected)


def mapped_over_devices(layer: Dropout) -> dict[str, Callable[[], jax.Array]]:
    """The layer called on a batch of one device's shard, under shard_map and under pmap."""
    mesh = jax.make_mesh((1,), ("data",))
    graphdef, state = nnx.split(layer)

    def step(layer_state, v):
        return nnx.merge(graphdef, layer_state)(v)

    batch = jax.device_put(jnp.ones((1, 4, 6)), NamedSharding(mesh, P("data")))
    shard_map = jax.shard_map(step, mesh=mesh, in_specs=(P(), P("data")), out_specs=P("data"))
    pmap = jax.pmap(step, axis_name="data", in_axes=(None, 0))
    return {"shard_map": lambda: shard_map(state, batch), "pmap": lambda: pmap(state, batch)}


@pytest.mark.parametrize("data_parallel", ["per_rank", "global_batch"])
def test_data_parallel_inside_shard_map_or_pmap_is_refused_pointing_at_jit(data_parallel):
    """There every device holds a shard of one process's batch: its masks would be every other
    device's, where data_parallel promises the ranks differ."""
    for run in mapped_over_devices(Dropout(0.5, seed=3, data_parallel=data_parallel)).values():
        with pytest.raises(xdrop.ArgumentValueError, match=r"jax\.jit .* NamedSharding"):
            run()
    # without a mode it draws as nnx.Dropout does there: the layer's one mask on every device
    for run in mapped_over_devices(Dropout(0.5, seed=3)).values():
        np.testing.assert_array_equal(
            np.asarray(run())[0], xdrop.dropout(np.ones((4, 6)), 0.5, seed=xdrop.fold_in(3, 0))
        )


def test_data_parallel_is_refused_unless_a_mode_and_global_batch_for_drop_block():
    with pytest.raises(xdrop.ArgumentValueError, match=r"data_parallel .*'rows'"):
        Dropout(0.5, data_parallel="rows")
    with pytest.raises(xdrop.ArgumentValueError, match="DropBlock2D"):
        DropBlock2D(0.1, 3, data_parallel="global_batch")
    assert DropPath(0.1, seed=0, data_parallel="global_batch").data_parallel == "global_batch"
    assert AlphaDropout(0.1, seed=0, data_parallel="per_rank").data_parallel == "per_rank"
