"""One small MLP, ``x -> relu(x W1 + b1) -> Dropout(0.5) -> W2 + b2``, in each framework.

    python tests/layers/mlp.py FRAMEWORK ACTION DIR

FRAMEWORK is ``torch``, ``keras`` (on ``KERAS_BACKEND``) or ``flax``. Each action runs twice, with
xdrop's layer (seed 7) into ``DIR/xdrop`` and with the framework's own dropout layer (seeded as
its users seed it) into ``DIR/own``. ACTION ``first`` writes ``forward.npy``, the logits of five training-mode forward passes
of the model without updates (weights, inputs and biases are multiples of 1/8 small enough that
every sum is exact in float32, so only the masks can make frameworks differ), and
``train.npy``, the training-mode logits of five SGD steps, with a checkpoint in DIR after the
third. ACTION ``resume`` loads that checkpoint (a fresh process) and writes ``resume.npy``, the
logits of steps four and five.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

SEED, RATE, STEPS, SAVED_AFTER, LEARNING_RATE = 7, 0.5, 5, 3, 0.125


def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "w1": (rng.integers(-4, 5, (16, 32)) / 8).astype(np.float32),
        "b1": (rng.integers(-4, 5, 32) / 8).astype(np.float32),
        "w2": (rng.integers(-4, 5, (32, 10)) / 8).astype(np.float32),
        "b2": (rng.integers(-4, 5, 10) / 8).astype(np.float32),
        "x": rng.integers(0, 4, (8, 16)).astype(np.float32),
        "y": rng.integers(0, 10, 8).astype(np.int64),
    }


# -- PyTorch ------------------------------------------------------------------------------------------
def torch_model(layer: str):  # type: ignore[no-untyped-def]
    import torch

    from xdrop.layers.torch import Dropout

    d = data()
    torch.manual_seed(SEED)  # the own layer's stream: torch's global generator
    drop = Dropout(RATE, seed=SEED) if layer == "xdrop" else torch.nn.Dropout(RATE)
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.ReLU(), drop, torch.nn.Linear(32, 10)
    )
    with torch.no_grad():
        for linear, w, b in ((model[0], "w1", "b1"), (model[3], "w2", "b2")):
            linear.weight.copy_(torch.from_numpy(d[w].T.copy()))
            linear.bias.copy_(torch.from_numpy(d[b]))
    return model


def torch_run(layer: str, action: str, directory: Path) -> None:
    import torch

    d = data()
    x, y = torch.from_numpy(d["x"]), torch.from_numpy(d["y"])
    model = torch_model(layer)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    if action == "first":
        with torch.no_grad():
            fresh = torch_model(layer)
            forward = [fresh(x).numpy() for _ in range(STEPS)]
        np.save(directory / "forward.npy", np.stack(forward))
    else:
        checkpoint = torch.load(directory / "checkpoint.pt")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
    logits = []
    for step in range(SAVED_AFTER if action == "resume" else 0, STEPS):
        if action == "first" and step == SAVED_AFTER:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
            torch.save(state, directory / "checkpoint.pt")
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logits.append(out.detach().numpy())
    np.save(directory / ("train.npy" if action == "first" else "resume.npy"), np.stack(logits))


# -- Keras ----------------------------------------------------------------------------------------------
def keras_model(layer: str):  # type: ignore[no-untyped-def]
    import keras

    from xdrop.layers.keras import Dropout

    d = data()
    drop = Dropout(RATE, seed=SEED) if layer == "xdrop" else keras.layers.Dropout(RATE, seed=SEED)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(32, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(drop(hidden)))
    model.layers[1].set_weights([d["w1"], d["b1"]])
    model.layers[3].set_weights([d["w2"], d["b2"]])
    model.compile(
        keras.optimizers.SGD(LEARNING_RATE),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def keras_run(layer: str, action: str, directory: Path) -> None:
    import keras

    d = data()
    if action == "first":
        fresh = keras_model(layer)
        forward = [keras.ops.convert_to_numpy(fresh(d["x"], training=True)) for _ in range(STEPS)]
        np.save(directory / "forward.npy", np.stack(forward))
        model = keras_model(layer)
    else:
        import xdrop.layers.keras  # noqa: F401  (registers xdrop's layers with Keras' loader)

        model = keras.models.load_model(directory / "checkpoint.keras")
    logits = []
    for step in range(SAVED_AFTER if action == "resume" else 0, STEPS):
        if action == "first" and step == SAVED_AFTER:
            model.save(directory / "checkpoint.keras")
        # a step: one training-mode pass whose logits are recorded, then one train_on_batch
        logits.append(keras.ops.convert_to_numpy(model(d["x"], training=True)))
        model.train_on_batch(d["x"], d["y"])
    np.save(directory / ("train.npy" if action == "first" else "resume.npy"), np.stack(logits))


# -- Flax NNX --------------------------------------------------------------------------------------------
def flax_model(layer: str):  # type: ignore[no-untyped-def]
    import jax.numpy as jnp
    from flax import nnx

    from xdrop.layers.flax import Dropout

    d = data()

    class MLP(nnx.Module):
        def __init__(self) -> None:
            rngs = nnx.Rngs(params=0, dropout=SEED)
            self.hidden = nnx.Linear(16, 32, rngs=rngs)
            self.out = nnx.Linear(32, 10, rngs=rngs)
            self.hidden.kernel[...] = jnp.asarray(d["w1"])
            self.hidden.bias[...] = jnp.asarray(d["b1"])
            self.out.kernel[...] = jnp.asarray(d["w2"])
            self.out.bias[...] = jnp.asarray(d["b2"])
            own = nnx.Dropout(RATE, rngs=rngs)
            self.drop = Dropout(RATE, seed=SEED) if layer == "xdrop" else own

        def __call__(self, x):  # type: ignore[no-untyped-def]
            return self.out(self.drop(nnx.relu(self.hidden(x))))

    return MLP()


def to_host(leaf):  # type: ignore[no-untyped-def]
    """A state leaf as NumPy (the own layer's state holds typed JAX keys: their key data)."""
    import jax

    if jax.numpy.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(leaf))
    return np.asarray(leaf)


def from_host(template, leaf):  # type: ignore[no-untyped-def]
    import jax

    if jax.numpy.issubdtype(template.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jax.numpy.asarray(leaf), impl=jax.random.key_impl(template))
    return jax.numpy.asarray(leaf)


def flax_run(layer: str, action: str, directory: Path) -> None:
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx, serialization

    d = data()
    x, y = jnp.asarray(d["x"]), jnp.asarray(d["y"].astype(np.int32))
    model = flax_model(layer)
    optimizer = nnx.Optimizer(model, optax.sgd(LEARNING_RATE), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer):  # type: ignore[no-untyped-def]
        def loss_fn(model):  # type: ignore[no-untyped-def]
            out = model(x)
            return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), out

        (_, out), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        return out

    checkpoint = directory / "checkpoint.msgpack"
    if action == "first":
        fresh = flax_model(layer)
        forward = [np.asarray(fresh(x)) for _ in range(STEPS)]
        np.save(directory / "forward.npy", np.stack(forward))
    else:  # an Orbax-free round trip: nnx.state as a pure dict of arrays, in msgpack
        state = nnx.state((model, optimizer))
        restored = serialization.msgpack_restore(checkpoint.read_bytes())
        template = nnx.to_pure_dict(state)
        nnx.replace_by_pure_dict(state, jax.tree.map(from_host, template, restored))
        nnx.update((model, optimizer), state)
    logits = []
    for step in range(SAVED_AFTER if action == "resume" else 0, STEPS):
        if action == "first" and step == SAVED_AFTER:
            pure = nnx.to_pure_dict(nnx.state((model, optimizer)))
            checkpoint.write_bytes(serialization.msgpack_serialize(jax.tree.map(to_host, pure)))
        logits.append(np.asarray(train_step(model, optimizer)))
    np.save(directory / ("train.npy" if action == "first" else "resume.npy"), np.stack(logits))


def main() -> None:
    framework, action, directory = sys.argv[1:]
    assert action in ("first", "resume"), sys.argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    runs = {"torch": torch_run, "keras": keras_run, "flax": flax_run}
    for layer in ("xdrop", "own"):
        (Path(directory) / layer).mkdir(parents=True, exist_ok=True)
        runs[framework](layer, action, Path(directory) / layer)


if __name__ == "__main__":
    main()
