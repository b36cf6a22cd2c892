"""Flax NNX layers: ``Dropout``, with ``broadcast_dims`` for its spatial (channel) form, and the
family ``AlphaDropout``, ``GaussianDropout``, ``DropPath``, ``DropBlock2D``."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import xdrop
from xdrop.errors import bad_type
from xdrop.layers import common
from xdrop.validation import check_flag, check_mode, is_integer

__all__ = [
    "AlphaDropout",
    "DropBlock2D",
    "DropPath",
    "Dropout",
    "DropoutState",
    "GaussianDropout",
    "set_mc_sampling",
]


class DropoutState(nnx.Variable):  # type: ignore[type-arg]
    """The stream state of :class:`Dropout`: its seed (uint32[2] ``(hi, lo)``) and its step
    (uint32). Not a parameter: optimizers with ``wrt=nnx.Param`` leave it alone, and
    ``nnx.state(model)`` / ``nnx.split(model)`` carry it."""


class Dropout(common.DropoutDraws, nnx.Module):
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
            ``(N, H, W, C)``: whole channels are dropped), each in ``[-ndim, ndim)`` of the
            inputs (checked at each call, deterministic or not).
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
        self.rate = self._check_rate("rate", rate)
        if not isinstance(broadcast_dims, Sequence) or not all(map(is_integer, broadcast_dims)):
            raise bad_type("broadcast_dims", broadcast_dims, "a sequence of integer axes")
        self.broadcast_dims = tuple(int(axis) for axis in broadcast_dims)
        self.deterministic = check_flag("deterministic", deterministic)
        self.mode = check_mode(mode)
        words = common.seed_words(common.initial_seed(seed))
        self.seed = DropoutState(jnp.asarray(np.array(words, np.uint32)))
        self.step = DropoutState(jnp.zeros((), jnp.uint32))

    mc_sampling = False
    """Sample when deterministic too (Monte Carlo dropout); :func:`set_mc_sampling` sets it."""

    def __call__(self, inputs: jax.Array, *, deterministic: bool | None = None) -> jax.Array:
        deterministic = _check_deterministic(deterministic, self.deterministic)
        self._check_input_shape("inputs", inputs.shape)
        common.check_shared_axes("broadcast_dims", self.broadcast_dims, inputs.ndim)
        if deterministic and not self.mc_sampling:
            return self._evaluate(inputs, self.rate)  # type: ignore[no-any-return]
        step = self.step[...]
        seed = xdrop.fold_in(self.seed[...], step)
        noise_shape = common.spatial_noise_shape(inputs.ndim, self.broadcast_dims)
        y = self._draw(inputs, self.rate, seed, noise_shape)
        self.step[...] = step + jnp.uint32(1)
        return y  # type: ignore[no-any-return]

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view(model, deterministic=...)``."""
        self.deterministic = _check_deterministic(deterministic, self.deterministic)

    @property
    def seed_value(self) -> int:
        """The seed ``s`` of the stream as an integer."""
        high, low = (int(word) for word in np.asarray(self.seed[...]))
        return (high << 32) | low


class AlphaDropout(common.AlphaDropoutDraws, Dropout):
    """:func:`xdrop.alpha_dropout` as a module: on its ``t``-th call that is not deterministic
    ``xdrop.alpha_dropout(x, rate, seed=xdrop.fold_in(seed, t), noise_shape=n)`` (``n`` from
    ``broadcast_dims``, as for :class:`Dropout`); the inputs otherwise.

    Example:
        >>> y = AlphaDropout(0.2, seed=0)(jnp.ones((2, 4)))
    """

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool = False,
        seed: int | xdrop.Generator | None = None,
    ) -> None:
        super().__init__(
            rate, broadcast_dims=broadcast_dims, deterministic=deterministic, seed=seed
        )


class GaussianDropout(common.GaussianDropoutDraws, AlphaDropout):
    """:func:`xdrop.gaussian_dropout` as a module (``x * (1 + sqrt(rate / (1 - rate)) * z)``), with
    the contract of :class:`AlphaDropout`. ``rate`` in ``[0, 1)``.

    Example:
        >>> y = GaussianDropout(0.2, seed=0)(jnp.ones((2, 4)))
    """


class DropPath(common.DropPathDraws, Dropout):
    """:func:`xdrop.drop_path` (stochastic depth) as a module: on its ``t``-th call that is not
    deterministic ``xdrop.drop_path(x, rate, seed=xdrop.fold_in(seed, t), mode=mode,
    scale_by_keep=scale_by_keep)``; the inputs otherwise.

    Example:
        >>> y = DropPath(0.1, seed=0)(jnp.ones((4, 3)))
    """

    def __init__(
        self,
        rate: float,
        *,
        mode: str = "row",
        scale_by_keep: bool = True,
        deterministic: bool = False,
        seed: int | xdrop.Generator | None = None,
    ) -> None:
        super().__init__(rate, deterministic=deterministic, seed=seed)
        self.path_mode, self.scale_by_keep = common.check_drop_path_options(mode, scale_by_keep)


class DropBlock2D(common.DropBlock2DDraws, Dropout):
    """:func:`xdrop.drop_block` as a module for ``(N, H, W, C)`` inputs (Flax's layout; or
    ``data_format="channels_first"``), with the contract of :class:`DropPath`.

    Example:
        >>> y = DropBlock2D(0.1, 3, seed=0)(jnp.ones((2, 8, 8, 4)))
    """

    def __init__(
        self,
        rate: float,
        block_size: int = 7,
        *,
        data_format: str = "channels_last",
        deterministic: bool = False,
        seed: int | xdrop.Generator | None = None,
    ) -> None:
        super().__init__(rate, deterministic=deterministic, seed=seed)
        self.block_size = common.check_block_size(block_size)
        self.data_format = common.check_data_format(data_format)


def _check_deterministic(value: object, default: bool) -> bool:
    """A call's or a view's ``deterministic``: True, False, or None for ``default``. Anything
    else is refused rather than read for its truth (``"no"`` would mean evaluation)."""
    if value is None:
        return default
    if not isinstance(value, (bool, np.bool_)):
        raise bad_type("deterministic", value, "True or False (or None: the module's own)")
    return bool(value)


def set_mc_sampling(model: nnx.Module, enabled: bool = True) -> int:
    """Make every xdrop module in ``model`` sample when deterministic too (Monte Carlo dropout), or
    stop. Only xdrop's modules change: ``model.eval()`` keeps BatchNorm on its running averages,
    which ``nnx.view(model, deterministic=False)`` alone would not guarantee for every module.
    Returns the number of modules switched.

    Example:
        >>> linear = nnx.Linear(4, 4, rngs=nnx.Rngs(0))
        >>> model = nnx.Sequential(linear, Dropout(0.5, seed=0))
        >>> set_mc_sampling(model)
        1
    """
    flag = check_flag("enabled", enabled)
    switched = 0
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Dropout):
            module.mc_sampling = flag
            switched += 1
    return switched
