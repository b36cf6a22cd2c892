"""Dropout layers for PyTorch, Keras 3 and Flax NNX, each a thin module over :func:`xdrop.dropout`.

    from xdrop.layers.torch import Dropout      # torch.nn.Module
    from xdrop.layers.keras import Dropout      # keras.layers.Layer (JAX, TensorFlow, torch)
    from xdrop.layers.flax import Dropout       # flax.nnx.Module

One contract for all: a layer built with ``seed=s`` computes, on its ``t``-th training call
(``t = 0, 1, ...``, counted by the layer), exactly
``xdrop.dropout(x, p, seed=xdrop.fold_in(s, t), mode=mode, noise_shape=noise_shape)``.
Evaluation calls draw nothing and leave ``t`` alone. ``s`` and ``t`` are state of the layer in
its framework's own state (buffers, variables), so checkpoints carry them and a restored model
continues the stream. ``seed=None`` draws ``s`` once, at construction, from xdrop's global
generator (``xdrop.manual_seed``). See ``docs/layers.md``.

Importing this package imports no framework; each submodule imports only its own.
"""
