"""xdrop.layers.flax.convert: a transformer written with plain Flax NNX made portable, seeded by
site, trained under nnx.jit and resumed bit for bit from a checkpoint in a fresh process; what is
converted and what is reported; the functional form for code that draws its own masks."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import xdrop

pytest.importorskip("flax")
pytest.importorskip("optax")
import jax
import jax.numpy as jnp
from flax import nnx
from layers import flax_transformer as tiny
from layers.shared import assert_refused

from xdrop import UnconvertedDropoutError, UnconvertedDropoutWarning
from xdrop.errors import ArgumentTypeError, ArgumentValueError
from xdrop.layers.common import site_seed
from xdrop.layers.flax import Dropout, DropoutState, SiteStream, convert, dropout

pytestmark = pytest.mark.backend_independent  # Flax's own modules and arrays

SEED = 1234


def dotted(path) -> str:
    return ".".join(map(str, path))


def sites(model) -> dict[str, object]:
    """Every dropout site of a model by its dotted path: xdrop's layers, Flax's own
    ``nnx.Dropout`` and the attention modules' streams."""
    found = {}
    for path, node in nnx.iter_graph(model):
        if isinstance(node, (Dropout, nnx.Dropout)):
            found[dotted(path)] = node
        elif isinstance(node, nnx.MultiHeadAttention):
            found[dotted(path)] = node.rngs
    return found


def drawn(site) -> int:
    """How many training calls a site has drawn: its step, or its stream's count."""
    return int(site.count[...]) if isinstance(site, SiteStream) else site.step_value


def stream_seed(stream: nnx.RngStream) -> int:
    high, low = (int(word) for word in np.asarray(jax.random.key_data(stream.key[...])))
    return (high << 32) | low


def test_every_flax_dropout_becomes_xdrops_with_its_arguments_and_the_seed_of_its_path():
    model = tiny.Transformer(nnx.Rngs(0))
    assert convert(model, seed=SEED) is model
    converted = sites(model)
    layers = {name: site for name, site in converted.items() if not name.endswith("attn")}
    assert sorted(layers) == [
        "blocks.0.dropout",
        "blocks.0.mlp.dropout",
        "blocks.1.dropout",
        "blocks.1.mlp.dropout",
        "dropout",
    ]
    for name, layer in layers.items():
        assert type(layer) is Dropout
        assert (layer.rate, layer.broadcast_dims, layer.deterministic) == (tiny.RATE, (), False)
        assert layer.rng_collection == "dropout" and layer.rngs is None
        assert layer.seed_value == site_seed(SEED, name) and layer.step_value == 0
    for name in ("blocks.0.attn", "blocks.1.attn"):
        assert type(converted[name]) is SiteStream
        assert stream_seed(converted[name]) == site_seed(SEED, name)
        assert int(converted[name].count[...]) == 0


def test_flax_dropout_keeps_broadcast_dims_deterministic_and_rng_collection():
    class Net(nnx.Module):
        def __init__(self) -> None:
            self.spatial = nnx.Dropout(0.3, broadcast_dims=(1, 2), deterministic=True)
            self.other = nnx.Dropout(0.2, rng_collection="noise", rngs=nnx.Rngs(noise=0))

    net = convert(Net(), seed=0)
    assert (net.spatial.rate, net.spatial.broadcast_dims, net.spatial.deterministic) == (
        0.3,
        (1, 2),
        True,
    )
    assert net.other.rng_collection == "noise" and net.other.seed_value == site_seed(0, "other")
    x = jnp.ones((2, 4, 4, 3))
    assert net.spatial(x) is x
    seed = xdrop.fold_in(site_seed(0, "spatial"), 0)
    expected = xdrop.dropout(x, 0.3, seed=seed, noise_shape=(None, 1, 1, None))
    np.testing.assert_array_equal(net.spatial(x, deterministic=False), expected)


def test_a_dropout_sites_training_output_is_the_documented_formula():
    model = convert(tiny.Transformer(nnx.Rngs(0)), seed=SEED)
    mlp = model.blocks[0].mlp
    h = jax.random.normal(jax.random.key(3), (8, 12, tiny.HIDDEN))
    seed = site_seed(SEED, "blocks.0.mlp.dropout")
    for t in range(2):
        inner = nnx.gelu(mlp.up(h))
        by_hand = mlp.down(xdrop.dropout(inner, tiny.RATE, seed=xdrop.fold_in(seed, t)))
        np.testing.assert_array_equal(mlp(h), by_hand)
    # the site's draw of step 1 is NumPy's for the same seed: portable, not JAX's alone
    on_numpy = xdrop.dropout(np.asarray(inner), tiny.RATE, seed=xdrop.fold_in(seed, 1))
    on_jax = xdrop.dropout(inner, tiny.RATE, seed=xdrop.fold_in(seed, 1))
    np.testing.assert_array_equal(np.asarray(on_jax), on_numpy)


def test_attention_dropout_is_xdrops_mask_for_the_sites_stream_shared_over_batch_and_heads():
    model = convert(tiny.Transformer(nnx.Rngs(0)), seed=SEED)
    attn = model.blocks[1].attn
    x = jax.random.normal(jax.random.key(4), (8, 12, tiny.HIDDEN))
    seed = site_seed(SEED, "blocks.1.attn")
    for t in range(2):
        q, k, v = attn.query(x), attn.key(x), attn.value(x)
        depth = q.shape[-1]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q / jnp.sqrt(depth), k)
        with xdrop.use_backend("jax"):  # a mask of a shape alone: the default backend's array
            mask = xdrop.dropout_mask((1, 1, 12, 12), tiny.RATE, seed=xdrop.fold_in(seed, t))
        weights = jax.nn.softmax(logits) * mask / (1 - tiny.RATE)
        by_hand = attn.out(jnp.einsum("bhqk,bkhd->bqhd", weights, v))
        np.testing.assert_allclose(attn(x, deterministic=False), by_hand, rtol=1e-5, atol=1e-6)
    assert 0 < int((~np.asarray(mask)).sum()) < mask.size  # some weights were dropped


def test_a_converted_model_trains_under_nnx_jit_and_advances_every_stream():
    model = convert(tiny.Transformer(nnx.Rngs(0)), seed=SEED)
    optimizer = tiny.optimizer_for(model)
    tokens, labels = tiny.batch()
    losses = [float(tiny.train_step(model, optimizer, tokens, labels)) for _ in range(6)]
    assert losses[-1] < losses[0]
    assert {name: drawn(site) for name, site in sites(model).items()} == dict.fromkeys(
        sites(model), 6
    )


def test_train_eval_and_view_switch_every_site():
    model = convert(tiny.Transformer(nnx.Rngs(0)), seed=SEED)
    tokens, _ = tiny.batch()
    model.eval()
    first = model(tokens)
    np.testing.assert_array_equal(model(tokens), first)
    assert all(drawn(site) == 0 for site in sites(model).values())
    training = nnx.view(model, deterministic=False)
    assert not np.array_equal(training(tokens), first)
    model.train()
    assert not np.array_equal(model(tokens), model(tokens))
    assert model.blocks[0].mlp.dropout.step_value == 3


def test_split_and_merge_carry_the_streams():
    model = convert(tiny.Transformer(nnx.Rngs(0)), seed=SEED)
    tokens, _ = tiny.batch()
    model(tokens)
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, jax.tree.map(jnp.copy, state))  # a copy at step 1
    assert type(copy.blocks[0].attn.rngs) is SiteStream
    np.testing.assert_array_equal(copy(tokens), model(tokens))  # both draw step 1


def test_streams_do_not_depend_on_the_order_the_model_built_its_modules():
    tokens, _ = tiny.batch()

    def outputs(convert_first: bool) -> tuple[np.ndarray, np.ndarray]:
        built = tiny.Transformer(nnx.Rngs(0)), tiny.Transformer(nnx.Rngs(0), mlp_first=True)
        params = nnx.state(built[0], nnx.Param)
        for model in built:
            nnx.update(model, params)  # the same weights: only the streams may differ
            if convert_first:
                convert(model, seed=SEED)
        return tuple(np.asarray(model(tokens)) for model in built)

    flax_order, flax_other_order = outputs(convert_first=False)
    assert not np.array_equal(flax_order, flax_other_order)  # Flax forks its keys in order
    ours, ours_other_order = outputs(convert_first=True)
    np.testing.assert_array_equal(ours, ours_other_order)


RESUME = """
import sys
from flax import nnx
sys.path.insert(0, sys.argv[2])
from layers import flax_transformer as tiny
from xdrop.layers.flax import convert

# built and converted with other seeds than the saved model: the checkpoint brings its own
model = convert(tiny.Transformer(nnx.Rngs(99)), seed=5)
optimizer = tiny.optimizer_for(model)
tiny.load(sys.argv[1], model, optimizer)
tokens, labels = tiny.batch()
print([float(tiny.train_step(model, optimizer, tokens, labels)).hex() for _ in range(3)])
"""


def test_a_checkpoint_resumes_every_stream_bit_for_bit_in_a_fresh_process(tmp_path):
    model = convert(tiny.Transformer(nnx.Rngs(0)), seed=SEED)
    optimizer = tiny.optimizer_for(model)
    tokens, labels = tiny.batch()
    for _ in range(3):
        tiny.train_step(model, optimizer, tokens, labels)
    checkpoint = str(tmp_path / "checkpoint.npz")
    tiny.save(checkpoint, model, optimizer)
    trained = [float(tiny.train_step(model, optimizer, tokens, labels)).hex() for _ in range(3)]

    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    command = [sys.executable, str(script), checkpoint, str(Path(__file__).parent)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == repr(trained)
    assert len(set(trained)) == 3  # the masks and the weights moved on each step


class Holders(nnx.Module):
    """Dropout in every kind of place a module graph holds modules, and one shared."""

    def __init__(self) -> None:
        self.shared = nnx.Dropout(0.1)
        self.again = self.shared
        self.listed = nnx.List([nnx.Linear(2, 2, rngs=nnx.Rngs(0)), nnx.Dropout(0.2)])
        self.table = nnx.Dict(a=nnx.Dropout(0.3))
        self.plain = nnx.data([{"deep": nnx.Dropout(0.4)}])
        self.pair = nnx.data((nnx.Dropout(0.5), 7))


def test_dropout_in_lists_dicts_tuples_and_nested_containers_is_converted():
    model = convert(Holders(), seed=3)
    expected = {"listed.1": 0.2, "table.a": 0.3, "plain.0.deep": 0.4, "pair.0": 0.5}
    for name, rate in expected.items():
        layer = sites(model)[name]
        assert type(layer) is Dropout and layer.rate == rate
        assert layer.seed_value == site_seed(3, name)
    assert type(model.pair) is tuple and model.pair[1] == 7
    assert not any(type(site) is nnx.Dropout for site in sites(model).values())


def test_a_shared_dropout_stays_shared_as_one_site_named_after_its_first_path():
    model = convert(Holders(), seed=3)
    assert model.shared is model.again and type(model.shared) is Dropout
    assert model.shared.seed_value == site_seed(3, "again")  # "again" sorts before "shared"
    x = jnp.ones(16)
    first = model.shared(x)
    assert model.again.step_value == 1  # one stream, advanced through either path
    assert not np.array_equal(model.again(x), first)


def test_converting_twice_changes_nothing_and_another_seed_is_refused():
    model = convert(tiny.Transformer(nnx.Rngs(0)), seed=SEED)
    tokens, _ = tiny.batch()
    model(tokens)
    before = sites(model)
    state = jax.tree.map(np.asarray, nnx.state(model, nnx.Not(nnx.RngKey)))
    assert convert(model, seed=SEED) is model
    # another seed would be ignored (every stream is kept): refused, as torch's convert does
    with pytest.raises(xdrop.ArgumentValueError, match=f"seed must be {SEED}, the seed this "):
        convert(model, seed=SEED + 1)
    after = sites(model)
    assert all(after[name] is site for name, site in before.items())
    again = jax.tree.map(np.asarray, nnx.state(model, nnx.Not(nnx.RngKey)))
    jax.tree.map(np.testing.assert_array_equal, again, state)


def test_rename_names_each_site_and_two_sites_of_one_name_are_refused():
    model = convert(tiny.Transformer(nnx.Rngs(0)), seed=SEED, rename=lambda n: "bert." + n)
    assert model.dropout.seed_value == site_seed(SEED, "bert.dropout")
    stream = model.blocks[0].attn.rngs
    assert stream_seed(stream) == site_seed(SEED, "bert.blocks.0.attn")
    assert_refused(
        lambda: convert(tiny.Transformer(nnx.Rngs(0)), seed=0, rename=lambda n: "same"),
        ArgumentValueError,
        "rename gives the name 'same' to two dropout sites",
    )
    assert_refused(
        lambda: convert(tiny.Transformer(nnx.Rngs(0)), seed=0, rename=lambda n: 3),
        ArgumentTypeError,
        "rename('blocks.0.attn') must be a str: the name of the site, got 3 of type int",
    )


class Unknown(nnx.Module):
    """Dropout convert cannot see into: a module of its own named so, a subclass of Flax's
    layer, attention drawing from the call's rngs or with its own attention function; and a
    module named so that only wraps Flax's layer (converted through it)."""

    class StochasticDepth(nnx.Module):
        def __call__(self, x: jax.Array) -> jax.Array:
            return x

    class MyDropout(nnx.Dropout):
        pass

    class DropoutWrapper(nnx.Module):
        def __init__(self) -> None:
            self.inner = nnx.Dropout(0.1)

    def __init__(self) -> None:
        rngs = nnx.Rngs(0)
        self.depth = Unknown.StochasticDepth()
        self.subclass = Unknown.MyDropout(0.1)
        self.wrapper = Unknown.DropoutWrapper()
        self.call_rngs = nnx.MultiHeadAttention(
            2, 4, dropout_rate=0.1, keep_rngs=False, decode=False, rngs=rngs
        )
        self.own_fn = nnx.MultiHeadAttention(
            2, 4, dropout_rate=0.1, attention_fn=lambda *a, **k: a[0], decode=False, rngs=rngs
        )
        self.no_dropout = nnx.MultiHeadAttention(2, 4, decode=False, rngs=rngs)


UNKNOWN = [
    "call_rngs (nnx.MultiHeadAttention drawing from the rngs passed to each call",
    "depth (StochasticDepth: a module convert does not know)",
    "own_fn (nnx.MultiHeadAttention with dropout_rate > 0 and its own attention_fn)",
    "subclass (MyDropout: a module convert does not know)",
]


def test_unknown_dropout_is_left_alone_with_one_warning_naming_each():
    model = Unknown()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert(model, seed=0)
    assert len(caught) == 1 and caught[0].category is UnconvertedDropoutWarning
    message = str(caught[0].message)
    assert message.startswith("convert found 4 dropout module(s) it cannot make portable")
    assert all(entry in message for entry in UNKNOWN)
    assert "wrapper" not in message and type(model.wrapper.inner) is Dropout
    assert type(model.subclass) is Unknown.MyDropout


def test_strict_refuses_unknown_dropout_before_changing_anything():
    model = Unknown()
    with pytest.raises(UnconvertedDropoutError) as raised:
        convert(model, seed=0, strict=True)
    assert all(entry in str(raised.value) for entry in UNKNOWN)
    assert isinstance(raised.value, xdrop.XdropError)
    assert type(model.wrapper.inner) is nnx.Dropout  # nothing converted
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert(tiny.Transformer(nnx.Rngs(0)), seed=0, strict=True)  # all known: no warning


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m: convert([m], seed=0), ArgumentTypeError, "module must be an nnx.Module"),
        (lambda m: convert(nnx.Dropout(0.1), seed=0), ArgumentValueError, "module is an nnx"),
        (lambda m: convert(m, seed=-1), ArgumentValueError, "seed must be"),
        (lambda m: convert(m, seed=2**64), ArgumentValueError, "seed must be"),
        (lambda m: convert(m, seed="1"), ArgumentTypeError, "seed must be"),
        (lambda m: convert(m, seed=None), ArgumentTypeError, "seed must be"),
        (lambda m: convert(m, seed=0, strict="yes"), ArgumentTypeError, "strict must be"),
        (lambda m: convert(m, seed=0, rename="x"), ArgumentTypeError, "rename must be"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(call, error, message):
    model = Holders()
    assert_refused(lambda: call(model), error, message)
    assert type(model.shared) is nnx.Dropout


def test_a_numpy_integer_seed_is_read_as_its_value():
    model = convert(Holders(), seed=np.uint64(2**64 - 1))
    assert model.shared.seed_value == site_seed(2**64 - 1, "again")


def test_functional_dropout_drops_the_units_jax_random_bernoulli_drops_for_the_key():
    key, x = jax.random.key(5), jnp.ones((2, 3, 6, 6))
    keep = jax.random.bernoulli(key, 0.8, x.shape)
    y = dropout(x, 0.2, key)
    np.testing.assert_array_equal(y != 0, keep)
    np.testing.assert_array_equal(y, xdrop.dropout(x, 0.2, seed=key))
    assert dropout(x, 0.2, key, deterministic=True) is x
    shared = dropout(x, 0.5, key, broadcast_dims=(0, 1))
    assert (shared == shared[:1, :1]).all()


def test_linen_dropout_inside_a_to_nnx_bridge_is_invisible_and_draws_linens_keys():
    # documented: the Linen module's code is not a graph of NNX modules convert can walk
    from flax import linen

    class Block(linen.Module):
        @linen.compact
        def __call__(self, x):
            return linen.Dropout(0.5, deterministic=False)(linen.Dense(8)(x))

    def bridged():
        model = nnx.bridge.ToNNX(Block(), rngs=nnx.Rngs(params=0, dropout=1))
        nnx.bridge.lazy_init(model, jnp.ones((4, 3)))
        return model

    x = jnp.ones((4, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnconvertedDropoutWarning)
        converted = convert(bridged(), seed=SEED)
    assert sites(converted) == {}
    y = converted(x)
    assert (y == 0).any()  # Linen's dropout drew, with the mask its own stream gives
    np.testing.assert_array_equal(y, bridged()(x))


def test_functional_dropout_takes_the_next_key_of_an_rngs_stream():
    rngs = nnx.Rngs(dropout=1, noise=2)
    x = jnp.ones(64)
    first = dropout(x, 0.5, rngs)
    second = dropout(x, 0.5, rngs)
    expected = nnx.Rngs(dropout=1)
    np.testing.assert_array_equal(first, xdrop.dropout(x, 0.5, seed=expected.dropout()))
    np.testing.assert_array_equal(second, xdrop.dropout(x, 0.5, seed=expected.dropout()))
    noise = dropout(x, 0.5, rngs, rng_collection="noise")
    np.testing.assert_array_equal(noise, xdrop.dropout(x, 0.5, seed=nnx.Rngs(noise=2).noise()))
    assert_refused(lambda: dropout(x, 0.5, 3), ArgumentTypeError, "rngs must be")
    with pytest.raises(ArgumentTypeError) as refused:  # a key is needed: None is not allowed
        dropout(x, 0.5, None)
    assert "or a JAX key, got None" in str(refused.value)
    assert_refused(lambda: dropout(x, 0.5, rngs, deterministic=1), ArgumentTypeError, "determ")
    assert_refused(
        lambda: dropout(x, 0.5, rngs, broadcast_dims=(1,)),
        ArgumentValueError,
        "broadcast_dims must be axes in [-1, 1)",
    )


def hand_written_attention(q, k, v, rate, key):
    """Attention as it is often written by hand: Flax's bernoulli dropout on the weights."""
    weights = jax.nn.softmax(jnp.einsum("qd,kd->qk", q, k))
    keep = jax.random.bernoulli(key, 1 - rate, weights.shape)
    weights = jnp.where(keep, weights / (1 - rate), 0)
    return weights @ v


def portable_attention(q, k, v, rate, rngs):
    """The same, with its one dropout line replaced by xdrop's."""
    weights = jax.nn.softmax(jnp.einsum("qd,kd->qk", q, k))
    weights = dropout(weights, rate, rngs)
    return weights @ v


def test_replacing_a_hand_written_bernoulli_dropout_keeps_the_masks_and_makes_them_portable():
    q, k, v = (jax.random.normal(jax.random.key(i), (6, 8)) for i in range(3))
    key = jax.random.key(11)
    np.testing.assert_allclose(
        portable_attention(q, k, v, 0.3, key),
        hand_written_attention(q, k, v, 0.3, key),
        rtol=1e-6,
    )
    weights = jax.nn.softmax(jnp.einsum("qd,kd->qk", q, k))
    words = np.asarray(jax.random.key_data(key))  # uint32[2]: a seed on any backend
    numpy_mask = xdrop.dropout_mask((6, 6), 0.3, seed=words)
    np.testing.assert_array_equal(np.asarray(dropout(weights, 0.3, key)) != 0, numpy_mask)


@pytest.mark.parametrize(
    ("flag", "value"), [("jax_threefry_partitionable", False), ("jax_enable_x64", True)]
)
def test_attention_is_not_converted_while_jax_draws_bernoulli_masks_another_way(flag, value):
    """Partitionable Threefry off gives other bits for a key; x64 on compares float64 uniforms
    with Flax's Python float rate."""
    model = tiny.Transformer(nnx.Rngs(0))
    converted = convert(tiny.Transformer(nnx.Rngs(0)), seed=0)
    x = jnp.ones((1, 3, tiny.HIDDEN))
    before = getattr(jax.config, flag)
    jax.config.update(flag, value)
    try:
        with pytest.warns(
            UnconvertedDropoutWarning, match=f"blocks.0.attn .nnx.MultiHeadAtt.*{flag}"
        ):
            convert(model, seed=0)
        assert not isinstance(model.blocks[0].attn.rngs, SiteStream)
        attn = converted.blocks[0].attn
        assert_refused(lambda: attn(x), UnconvertedDropoutError, flag)
    finally:
        jax.config.update(flag, before)
    assert attn(x).shape == x.shape


def test_a_dropout_built_with_an_array_rate_is_converted_with_its_value():
    """nnx.Dropout takes a 0-d array as its rate (a config value read with jnp): so does convert."""

    class Model(nnx.Module):
        def __init__(self) -> None:
            self.dropout = nnx.Dropout(jnp.float32(0.25), rngs=nnx.Rngs(0))

    model = convert(Model(), seed=0)
    assert isinstance(model.dropout, Dropout) and model.dropout.rate == float(jnp.float32(0.25))
    for not_a_rate in (jnp.asarray([0.25]), np.str_("0.25"), np.array(True)):
        with pytest.raises(xdrop.ArgumentTypeError, match="0-d array holding one"):
            Dropout(not_a_rate, seed=0)


def test_a_subclass_of_nnx_dropout_is_reported_whatever_its_name():
    class ScaledNoise(nnx.Dropout):
        pass

    class Model(nnx.Module):
        def __init__(self) -> None:
            self.noise = ScaledNoise(0.5, rngs=nnx.Rngs(0))

    with pytest.warns(UnconvertedDropoutWarning, match="noise .ScaledNoise"):
        model = convert(Model(), seed=0)
    assert type(model.noise) is ScaledNoise
    with pytest.raises(UnconvertedDropoutError, match="ScaledNoise"):
        convert(Model(), seed=0, strict=True)


def test_convert_gives_every_new_dropout_its_data_parallel_mode():
    class Block(nnx.Module):
        def __init__(self) -> None:
            self.first = nnx.Dropout(0.5, rngs=nnx.Rngs(0))
            self.second = nnx.Dropout(0.2, rngs=nnx.Rngs(1))

    model = convert(Block(), seed=0, data_parallel="global_batch")
    assert [model.first.data_parallel, model.second.data_parallel] == ["global_batch"] * 2
    with pytest.raises(xdrop.ArgumentValueError, match="data_parallel"):
        convert(Block(), seed=0, data_parallel="everywhere")


class Scanned(nnx.Module):
    """Flax's scan over layers: ``layers`` blocks of the small transformer built at once by
    ``nnx.vmap`` (each parameter, and the key and count of each of Flax's dropout streams,
    stacked along a leading axis), run one after the other by ``nnx.scan``."""

    def __init__(self, layers: int) -> None:
        @nnx.split_rngs(splits=layers)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def stack(rngs: nnx.Rngs) -> tiny.Block:
            return tiny.Block(rngs)

        self.blocks = stack(nnx.Rngs(0))

    def __call__(self, x: jax.Array) -> jax.Array:
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def through(x: jax.Array, block: tiny.Block) -> jax.Array:
            return block(x)

        return through(x, self.blocks)


class ScannedByType(Scanned):
    """The scan splitting the layers' state by its type, naming the converted streams'
    ``DropoutState`` beside ``nnx.RngState``, which Flax's own dropout keys are."""

    def __call__(self, x: jax.Array) -> jax.Array:
        axes = nnx.StateAxes({(nnx.Param, nnx.RngState, DropoutState): 0, ...: None})

        @nnx.scan(in_axes=(nnx.Carry, axes), out_axes=nnx.Carry)
        def through(x: jax.Array, block: tiny.Block) -> jax.Array:
            return block(x)

        return through(x, self.blocks)


class Listed(nnx.Module):
    """The layers of a :class:`Scanned` one by one in an ``nnx.List``, with its weights."""

    def __init__(self, scanned: Scanned, layers: int) -> None:
        self.blocks = nnx.List([tiny.Block(nnx.Rngs(i)) for i in range(layers)])
        params = nnx.state(scanned.blocks, nnx.Param)
        for i, block in enumerate(self.blocks):
            nnx.update(block, jax.tree.map(lambda stacked, i=i: stacked[i], params))

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        return x


@nnx.jit
def run(model: nnx.Module, x: jax.Array) -> jax.Array:
    return model(x)


def layer(stacked: nnx.Module, i: int) -> nnx.Module:
    """Layer ``i`` of a module stacked along one leading axis, as a module of its own."""
    graphdef, state = nnx.split(stacked)
    return nnx.merge(graphdef, jax.tree.map(lambda value: value[i], state))


STACKED = ["blocks.attn", "blocks.dropout", "blocks.mlp.dropout"]


@pytest.mark.parametrize("layers", [2, 3])
def test_dropout_of_layers_stacked_by_nnx_vmap_gets_a_stream_per_layer_named_by_its_index(layers):
    model = Scanned(layers)
    x = jax.random.normal(jax.random.key(1), (2, 5, tiny.HIDDEN))
    run(model, x)  # the model runs before it is converted, and after
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every stacked site is converted: nothing to report
        convert(model, seed=SEED, strict=True)
    assert sorted(sites(model)) == STACKED
    for i in range(layers):
        dropout_i = layer(model.blocks.dropout, i)
        assert type(dropout_i) is Dropout and dropout_i.step_value == 0
        name = f"blocks.dropout.{i}"
        assert dropout_i.seed_value == site_seed(SEED, name)
        h = jax.random.normal(jax.random.key(2), (4, tiny.HIDDEN))
        expected = xdrop.dropout(h, tiny.RATE, seed=xdrop.fold_in(site_seed(SEED, name), 0))
        np.testing.assert_array_equal(dropout_i(h), expected)
        attn_i = layer(model.blocks.attn.rngs, i)
        assert type(attn_i) is SiteStream and int(attn_i.count[...]) == 0
        assert stream_seed(attn_i) == site_seed(SEED, f"blocks.attn.{i}")
    for t in range(1, 3):
        run(model, x)
        for site in (model.blocks.dropout, model.blocks.mlp.dropout):
            np.testing.assert_array_equal(site.step[...], [[0, t]] * layers)
        np.testing.assert_array_equal(model.blocks.attn.rngs.count[...], [t] * layers)
    assert_refused(  # the stack itself is no layer: nnx.scan or nnx.vmap give each its own
        lambda: model.blocks.dropout(x), ArgumentValueError, "a stack of streams, one per layer"
    )
    state = jax.tree.map(np.asarray, nnx.state(model, nnx.Not(nnx.RngKey)))
    convert(model, seed=SEED)  # twice: nothing changes
    with pytest.raises(xdrop.ArgumentValueError, match=r"blocks\.dropout, "):
        convert(model, seed=SEED + 1)  # the stacks' streams are known too
    again = jax.tree.map(np.asarray, nnx.state(model, nnx.Not(nnx.RngKey)))
    jax.tree.map(np.testing.assert_array_equal, again, state)


@pytest.mark.parametrize("layers", [2, 3])
def test_a_scanned_stack_draws_what_the_same_layers_in_a_list_draw_once_renamed(layers):
    """Layer ``i`` of the stacked site ``blocks.dropout`` is named ``blocks.dropout.i``:
    ``rename`` gives it the name the same layer has in a list, ``blocks.i.dropout``."""
    scanned = Scanned(layers)
    listed = Listed(scanned, layers)

    def as_listed(name: str) -> str:
        head, *inner, index = name.split(".")
        return ".".join((head, index, *inner))

    convert(scanned, seed=SEED, rename=as_listed)
    convert(listed, seed=SEED)
    x = jax.random.normal(jax.random.key(1), (2, 5, tiny.HIDDEN))
    first = run(scanned, x)
    np.testing.assert_allclose(first, run(listed, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run(scanned, x), run(listed, x), rtol=1e-5, atol=1e-5)  # step 1
    assert not np.allclose(run(scanned, x), first)  # the masks moved on


def test_a_scan_splitting_the_state_by_type_gives_each_layer_its_converted_stream():
    by_type, by_position = ScannedByType(3), Scanned(3)  # one set of weights
    x = jax.random.normal(jax.random.key(1), (2, 5, tiny.HIDDEN))
    by_type(x)  # runs before convert too
    for model in (by_type, by_position):
        convert(model, seed=11)
    assert jnp.array_equal(by_type(x), by_position(x))
    assert by_type.blocks.dropout.step[...].tolist() == [[0, 1]] * 3


def test_dropout_stacked_along_two_axes_names_each_layer_by_both_indices():
    class Cell(nnx.Module):
        def __init__(self, rngs: nnx.Rngs) -> None:
            self.dropout = nnx.Dropout(0.5, rngs=rngs)

    @nnx.split_rngs(splits=2)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def rows(rngs: nnx.Rngs) -> Cell:
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def cells(rngs: nnx.Rngs) -> Cell:
            return Cell(rngs)

        return cells(rngs)

    class Grid(nnx.Module):
        def __init__(self) -> None:
            self.grid = rows(nnx.Rngs(0))

        def __call__(self, x: jax.Array) -> jax.Array:
            each = nnx.vmap(lambda cell, x: cell.dropout(x), in_axes=(0, None), out_axes=0)
            return nnx.vmap(each, in_axes=(0, None), out_axes=0)(self.grid, x)

    model = convert(Grid(), seed=3)
    x = jnp.ones(64)
    y = model(x)
    assert y.shape == (2, 3, 64)
    for i in range(2):
        for j in range(3):
            seed = xdrop.fold_in(site_seed(3, f"grid.dropout.{i}.{j}"), 0)
            np.testing.assert_array_equal(y[i, j], xdrop.dropout(x, 0.5, seed=seed))
