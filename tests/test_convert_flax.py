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

from xdrop.layers.common import seed_words, site_seed
from xdrop.layers.flax import (
    Dropout,
    SiteStream,
    UnconvertedDropoutError,
    UnconvertedDropoutWarning,
    convert,
    dropout,
)

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


def test_attention_dropout_is_xdrops_mask_for_the_sites_stream_shared_over_batch_and_heads():
    model = convert(tiny.Transformer(nnx.Rngs(0)), seed=SEED)
    attn = model.blocks[1].attn
    x = jax.random.normal(jax.random.key(4), (8, 12, tiny.HIDDEN))
    seed = site_seed(SEED, "blocks.1.attn")
    for t in range(2):
        q, k, v = attn.query(x), attn.key(x), attn.value(x)
        depth = q.shape[-1]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q / jnp.sqrt(depth), k)
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
    for name, site in sites(model).items():
        count = site.count[...] if isinstance(site, SiteStream) else site.step_value
        assert int(count) == 6, name


def test_train_eval_and_view_switch_every_site():
    model = convert(tiny.Transformer(nnx.Rngs(0)), seed=SEED)
    tokens, _ = tiny.batch()
    model.eval()
    first = model(tokens)
    np.testing.assert_array_equal(model(tokens), first)
    assert all(
        int(getattr(s, "count", [0])[...] if isinstance(s, SiteStream) else s.step_value) == 0
        for s in sites(model).values()
    )
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
