"""A small transformer written with plain Flax NNX, as its users write one: ``nnx.Embed``,
``nnx.MultiHeadAttention(dropout_rate=...)`` (its attention dropout is drawn inside Flax's
``dot_product_attention``), ``nnx.Dropout`` after the embedding, the attention and in the MLP,
two blocks in an ``nnx.List``, hidden size 32. ``mlp_first`` builds each block's MLP before its
attention: the same paths, built in another order."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

VOCAB, HIDDEN, HEADS, CLASSES = 50, 32, 4, 3
RATE = 0.1


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.up = nnx.Linear(HIDDEN, 2 * HIDDEN, rngs=rngs)
        self.dropout = nnx.Dropout(RATE, rngs=rngs)
        self.down = nnx.Linear(2 * HIDDEN, HIDDEN, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(self.dropout(nnx.gelu(self.up(x))))


class Block(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, mlp_first: bool = False) -> None:
        if mlp_first:
            self.mlp = MLP(rngs)
        self.norm1 = nnx.LayerNorm(HIDDEN, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            HEADS, HIDDEN, dropout_rate=RATE, deterministic=False, decode=False, rngs=rngs
        )
        self.dropout = nnx.Dropout(RATE, rngs=rngs)
        self.norm2 = nnx.LayerNorm(HIDDEN, rngs=rngs)
        if not mlp_first:
            self.mlp = MLP(rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.dropout(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class Transformer(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, mlp_first: bool = False) -> None:
        self.embed = nnx.Embed(VOCAB, HIDDEN, rngs=rngs)
        self.dropout = nnx.Dropout(RATE, rngs=rngs)
        self.blocks = nnx.List([Block(rngs, mlp_first) for _ in range(2)])
        self.head = nnx.Linear(HIDDEN, CLASSES, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = self.dropout(self.embed(tokens))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=1))


def batch() -> tuple[jax.Array, jax.Array]:
    tokens = jax.random.randint(jax.random.key(0), (8, 12), 0, VOCAB)
    return tokens, tokens[:, 0] % CLASSES


def loss_fn(model: Transformer, tokens: jax.Array, labels: jax.Array) -> jax.Array:
    logits = model(tokens)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@nnx.jit
def train_step(
    model: Transformer, optimizer: nnx.Optimizer, tokens: jax.Array, labels: jax.Array
) -> jax.Array:
    loss, grads = nnx.value_and_grad(loss_fn)(model, tokens, labels)
    optimizer.update(model, grads)
    return loss


def optimizer_for(model: Transformer) -> nnx.Optimizer:
    return nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)


def save(path: str, model: Transformer, optimizer: nnx.Optimizer) -> None:
    """The state of ``model`` and ``optimizer`` in a NumPy ``.npz`` file (keys as their data)."""
    flat = nnx.to_flat_state(nnx.state((model, optimizer)))
    arrays = {"/".join(map(str, key)): _as_numpy(v.get_value()) for key, v in flat}
    np.savez(path, **arrays)


def load(path: str, model: Transformer, optimizer: nnx.Optimizer) -> None:
    saved = np.load(path)
    flat = nnx.to_flat_state(nnx.state((model, optimizer)))
    for key, variable in flat:
        like = variable.get_value()
        variable.set_value(_as_jax(like, saved["/".join(map(str, key))]))
    nnx.update((model, optimizer), nnx.from_flat_state(flat))


def _is_key(a: jax.Array) -> bool:
    return bool(jnp.issubdtype(a.dtype, jax.dtypes.prng_key))


def _as_numpy(a: jax.Array) -> np.ndarray:
    return np.asarray(jax.random.key_data(a) if _is_key(a) else a)


def _as_jax(like: jax.Array, a: np.ndarray) -> jax.Array:
    return jax.random.wrap_key_data(a) if _is_key(like) else jnp.asarray(a, like.dtype)
