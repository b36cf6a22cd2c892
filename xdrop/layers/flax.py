"""Flax NNX layer: ``Dropout``, with ``broadcast_dims`` for its spatial (channel) form."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import xdrop
from xdrop.errors import bad_type
from xdrop.layers.common import check_layer_rate, initial_seed, seed_words, spatial_noise_shape
from xdrop.validation import check_flag, check_mode, is_integer

__all__ = ["Dropout", "DropoutState"]


class DropoutState(nnx.Variable):  # type: ignore[type-arg]
    """The stream state of :class:`Dropout`: its seed (uint32[2] ``(hi, lo)``) and its step
    (uint32). Not a parameter: optimizers with ``wrt=nnx.Param`` leave it alone, and
    ``nnx.state(model)`` / ``nnx.split(model)`` carry it."""


class Dropout(nnx.Module):
    """``flax.nnx.Dropout`` with a seeded, portable mask stream kept in the module's state.

    On its ``t``-th call that is not deterministic (``t = 0, 1, ...``) the module returns exactly::

        xdrop.dropout(x, rate, seed=xdrop.fold_in(seed, t), mode=mode, noise_shape=n)

    with ``n`` 1 on ``broadcast_dims`` and None elsewhere, and then advances ``t``; deterministic
    calls return ``xdrop.dropout(x, rate, training=False, mode=mode)`` (``x`` itself for
    ``mode="inverted"``) and leave ``t`` alone. The seed and ``t`` are :class:`DropoutState`
    variables, updated in place, so ``nnx.jit`` steps advance ``t`` and ``nnx.state`` /
    ``nnx.split`` / ``nnx.merge`` and checkpoints carry the stream. No ``rngs`` are needed.

    Args:
        rate: the probability of zeroing an element, in ``[0, 1]``.
        broadcast_dims: axes along which one decision is shared (e.g. ``(1, 2)`` for images
            ``(N, H, W, C)``: whole channels are dropped).
        deterministic: the default of the call's ``deterministic``; ``model.train()`` /
            ``model.eval()`` and ``nnx.view`` set it.
        seed: an integer in ``[0, 2**64)``; ``None`` (default) draws one now from xdrop's global
            generator (reproducible after ``xdrop.manual_seed``).
        mode: ``"inverted"`` (scale kept elements by ``1 / (1 - rate)`` in training) or
            ``"classic"`` (scale by ``1 - rate`` in evaluation).

    Example:
        >>> import jax.numpy as jnp, xdrop
        >>> from xdrop.layers.flax import Dropout
        >>> layer = Dropout(0.5, seed=0)
        >>> y = layer(jnp.ones(8))
        >>> bool((y == xdrop.dropout(jnp.ones(8), 0.5, seed=xdrop.fold_in(0, 0))).all())
        True
        >>> int(layer.step[...])
        1
    """

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool = False,
        seed: int | xdrop.Generator | None = None,
        mode: str = "inverted",
    ) -> None:
        self.rate = check_layer_rate("rate", rate)
        if not isinstance(broadcast_dims, Sequence) or not all(map(is_integer, broadcast_dims)):
            raise bad_type("broadcast_dims", broadcast_dims, "a sequence of integer axes")
        self.broadcast_dims = tuple(int(axis) for axis in broadcast_dims)
        self.deterministic = check_flag("deterministic", deterministic)
        self.mode = check_mode(mode)
        self.seed = DropoutState(jnp.asarray(np.array(seed_words(initial_seed(seed)), np.uint32)))
        self.step = DropoutState(jnp.zeros((), jnp.uint32))

    def __call__(self, inputs: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        if self.deterministic if deterministic is None else deterministic:
            return xdrop.dropout(inputs, self.rate, training=False, mode=self.mode)
        step = self.step[...]
        noise_shape = spatial_noise_shape(inputs.ndim, self.broadcast_dims)
        y = xdrop.dropout(
            inputs,
            self.rate,
            seed=xdrop.fold_in(self.seed[...], step),
            mode=self.mode,
            noise_shape=noise_shape,
        )
        self.step[...] = step + jnp.uint32(1)
        return y

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view(model, deterministic=...)``."""
        if deterministic is not None:
            self.deterministic = deterministic

    @property
    def seed_value(self) -> int:
        """The seed ``s`` of the stream as an integer."""
        high, low = (int(word) for word in np.asarray(self.seed[...]))
        return (high << 32) | low
