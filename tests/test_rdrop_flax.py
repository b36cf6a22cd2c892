"""R-Dropout in a Flax NNX / optax training step under ``nnx.jit``: the step of
docs/rdrop.md ("Flax NNX and optax") on a token tagger written with Flax's own modules
(``nnx.Embed``, ``nnx.MultiHeadAttention`` with attention dropout, ``nnx.Dropout``), converted
by ``xdrop.layers.flax.convert``. The loss the jitted step returns, and the gradients it
applies, equal ``xdrop.rdrop_loss`` of the same two passes recomputed eagerly from the model's
state before the step (the converted streams give the same masks)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
pytest.importorskip("flax")
optax = pytest.importorskip("optax")
pytestmark = pytest.mark.backend_independent

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import xdrop  # noqa: E402
from xdrop.layers.flax import convert  # noqa: E402

VOCAB, WIDTH, TAGS, ALPHA = 40, 32, 5, 0.7


class Tagger(nnx.Module):
    """Token ids ``(B, T)`` to tag logits ``(B, T, TAGS)``, with Flax's own dropout."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(VOCAB, WIDTH, rngs=rngs)
        self.attention = nnx.MultiHeadAttention(
            2, WIDTH, dropout_rate=0.1, deterministic=False, decode=False, rngs=rngs
        )
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.head = nnx.Linear(WIDTH, TAGS, rngs=rngs)

    def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
        x = self.embed(ids)
        attend = nnx.make_attention_mask(mask, mask)
        x = x + self.dropout(self.attention(x, mask=attend))
        return self.head(x)


def rdrop_loss(model: Tagger, ids: jax.Array, mask: jax.Array, tags: jax.Array) -> Any:
    """The loss of one step: the batch doubled through the model, split in two passes."""
    doubled = jnp.concatenate([mask, mask])
    logits1, logits2 = xdrop.rdrop_forward(lambda x: model(x, doubled), ids)
    loss = xdrop.rdrop_loss(
        logits1, logits2, tags, alpha=ALPHA, ignore_index=-100, pad_mask=mask == 0
    )
    return loss, (logits1, logits2)


@nnx.jit
def train_step(
    model: Tagger, optimizer: nnx.Optimizer, ids: jax.Array, mask: jax.Array, tags: jax.Array
) -> tuple[Any, Any, Any]:
    grad_fn = nnx.value_and_grad(rdrop_loss, has_aux=True)
    (loss, passes), grads = grad_fn(model, ids, mask, tags)
    optimizer.update(model, grads)
    return loss, passes, grads


def batch(step: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Token ids, a mask (the second sequence padded after 6 tokens), tags with -100 at token 0
    and class tags at padded tokens (the pad mask alone keeps them out)."""
    data = np.random.default_rng(step)
    ids = data.integers(1, VOCAB, (4, 10))
    mask = np.ones((4, 10), np.int32)
    mask[1, 6:] = 0
    tags = data.integers(0, TAGS, (4, 10))
    tags[:, 0] = -100
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(tags)


def test_the_jitted_nnx_step_trains_on_rdrop_loss_of_the_same_two_passes() -> None:
    model = convert(Tagger(nnx.Rngs(0)), seed=11)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    losses = []
    for step in range(3):
        ids, mask, tags = batch(step)
        graphdef, state = nnx.split(model)
        before = jax.tree.map(jnp.copy, state)  # the split shares the model's arrays
        loss, (logits1, logits2), grads = train_step(model, optimizer, ids, mask, tags)
        assert model.dropout.step_value == step + 1  # one forward per step
        # the same two passes, eagerly, from the state before the step
        # a forward advances the streams of the model merged: each replay merges a copy
        replay = nnx.merge(graphdef, jax.tree.map(jnp.copy, before))
        expected, (eager1, eager2) = rdrop_loss(replay, ids, mask, tags)
        np.testing.assert_allclose(logits1, eager1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(logits2, eager2, rtol=1e-5, atol=1e-6)
        assert not np.allclose(logits1, logits2), "dropout drew two masks"
        np.testing.assert_allclose(loss, expected, rtol=1e-6)
        if step == 0:  # the gradients applied are that loss's
            replay = nnx.merge(graphdef, jax.tree.map(jnp.copy, before))
            eager_grads, _ = nnx.grad(rdrop_loss, has_aux=True)(replay, ids, mask, tags)
            jax.tree.map(
                lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6),
                nnx.state(grads),
                nnx.state(eager_grads),
            )
        # and that loss is the paper's formula over the tokens neither padded nor -100
        counted = (tags != -100) & (mask == 1)
        p1, p2 = jax.nn.log_softmax(eager1), jax.nn.log_softmax(eager2)
        picked = jnp.where(counted, tags, 0)[..., None]
        nll = -(jnp.take_along_axis(p1, picked, -1) + jnp.take_along_axis(p2, picked, -1))
        kl = 0.5 * ((jnp.exp(p1) - jnp.exp(p2)) * (p1 - p2)).sum(-1)
        formula = ((nll[..., 0] + ALPHA * kl) * counted).sum() / counted.sum()
        np.testing.assert_allclose(loss, formula, rtol=1e-5)
        losses.append(float(loss))
    assert len(set(losses)) == 3


def test_evaluation_after_the_step_is_one_deterministic_forward() -> None:
    model = convert(Tagger(nnx.Rngs(0)), seed=11)
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    ids, mask, tags = batch(0)
    train_step(model, optimizer, ids, mask, tags)
    model.eval()
    step = model.dropout.step_value
    first, second = model(ids, mask), model(ids, mask)
    np.testing.assert_array_equal(first, second)
    assert model.dropout.step_value == step
