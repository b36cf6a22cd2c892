"""Flax NNX layers: ``Dropout``, with ``broadcast_dims`` for its spatial (channel) form, and the
family ``AlphaDropout``, ``GaussianDropout``, ``DropPath``, ``DropBlock2D``."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import xdrop
from xdrop.errors import ArgumentValueError, bad_type
from xdrop.layers import common
from xdrop.validation import check_flag, check_mode, is_integer

Rngs = nnx.Rngs | nnx.RngStream
"""What Flax's layers take as ``rngs``: a collection of streams, or one stream."""

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

    Given ``rngs``, as Flax code passes them to ``nnx.Dropout``, the module draws from Flax's
    stream instead: each call that is not deterministic takes the stream's next key ``k`` (the
    stream's count, an ``nnx.RngCount`` in the module's state, advances) and returns
    ``xdrop.dropout(x, rate, seed=k, mode=mode, noise_shape=n)``: the key's two words are the
    seed. The masks are then as portable and resumable as the key is (a checkpoint holds the
    stream's key and count). ``rngs`` given to the call take precedence over the module's, as
    in Flax, and leave the module's own stream (either kind) alone.

    Args:
        rate: the probability of zeroing an element, in ``[0, 1]``.
        broadcast_dims: axes along which one decision is shared (e.g. ``(1, 2)`` for images
            ``(N, H, W, C)``: whole channels are dropped), each in ``[-ndim, ndim)`` of the
            inputs (checked at each call, deterministic or not).
        deterministic: the default of the call's ``deterministic``; ``model.train()`` /
            ``model.eval()`` and ``nnx.view`` set it. ``None``: each call must say.
        rng_collection: the stream of an ``nnx.Rngs`` to draw from (``"dropout"``; an
            ``nnx.Rngs`` without it gives its default stream, as Flax does).
        rngs: an ``nnx.Rngs`` or ``nnx.RngStream``, forked at construction; or None (default)
            for xdrop's own stream from ``seed``.
        seed: an integer in ``[0, 2**64)``; ``None`` (default) draws one now from xdrop's global
            generator (reproducible after ``xdrop.manual_seed``). Not with ``rngs``.
        mode: ``"inverted"`` (scale kept elements by ``1 / (1 - rate)`` in training) or
            ``"classic"`` (scale by ``1 - rate`` in evaluation).

    Example:
        >>> import jax.numpy as jnp, xdrop
        >>> from xdrop.layers.flax import Dropout
        >>> layer = Dropout(0.5, seed=0)
        >>> y = layer(jnp.ones(8))
        >>> bool((y == xdrop.dropout(jnp.ones(8), 0.5, seed=xdrop.fold_in(0, 0))).all())
        True
        >>> layer.step_value
        1
        >>> flax_style = Dropout(0.5, rngs=nnx.Rngs(dropout=0))
        >>> key = nnx.Rngs(dropout=0).fork().dropout()
        >>> x = jnp.ones(8)
        >>> bool((flax_style(x) == xdrop.dropout(x, 0.5, seed=key)).all())
        True
    """

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
        seed: int | xdrop.Generator | None = None,
        mode: str = "inverted",
    ) -> None:
        self.rate = self._check_rate("rate", rate)
        if not isinstance(broadcast_dims, Sequence) or not all(map(is_integer, broadcast_dims)):
            raise bad_type("broadcast_dims", broadcast_dims, "a sequence of integer axes")
        self.broadcast_dims = tuple(int(axis) for axis in broadcast_dims)
        self.deterministic = _check_deterministic(deterministic, None)
        self.mode = check_mode(mode)
        if not isinstance(rng_collection, str):
            raise bad_type("rng_collection", rng_collection, "the name of a stream of nnx.Rngs")
        self.rng_collection = rng_collection
        if rngs is None:
            words = common.seed_words(common.initial_seed(seed))
            self.seed = DropoutState(jnp.asarray(np.array(words, np.uint32)))
            self.step = DropoutState(jnp.zeros((2,), jnp.uint32))
            self.rngs = nnx.data(None)
        elif seed is not None:
            raise ArgumentValueError(
                f"seed and rngs are two sources of masks: give one, got seed={seed!r} and rngs"
            )
        else:
            self.rngs = _stream(rngs, rng_collection, allowed=ALLOWED_RNGS).fork()

    mc_sampling = False
    """Sample when deterministic too (Monte Carlo dropout); :func:`set_mc_sampling` sets it."""

    def __call__(
        self,
        inputs: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: Rngs | jax.Array | None = None,
    ) -> jax.Array:
        deterministic = _check_deterministic(deterministic, self.deterministic)
        if deterministic is None:
            raise ArgumentValueError(NO_DETERMINISTIC)
        self._check_input_shape("inputs", inputs.shape)
        common.check_shared_axes("broadcast_dims", self.broadcast_dims, inputs.ndim)
        if deterministic and not self.mc_sampling:
            return self._evaluate(inputs, self.rate)  # type: ignore[no-any-return]
        noise_shape = common.spatial_noise_shape(inputs.ndim, self.broadcast_dims)
        if rngs is not None:
            return self._draw(inputs, self.rate, _key(rngs, self.rng_collection), noise_shape)  # type: ignore[no-any-return]
        if self.rngs is not None:
            return self._draw(inputs, self.rate, self.rngs(), noise_shape)  # type: ignore[no-any-return]
        step = self.step[...]
        y = self._draw(inputs, self.rate, common.step_seed(self.seed[...], step), noise_shape)
        self.step[...] = _next_step(step)
        return y  # type: ignore[no-any-return]

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view(model, deterministic=...)``.

        Args:
          deterministic: if True, the module returns its inputs (evaluation); if False, it
            draws masks; None leaves it as it is.
        """
        self.deterministic = _check_deterministic(deterministic, self.deterministic)

    @property
    def step_value(self) -> int:
        """The step ``t``: how many training calls drew from the module's own stream."""
        high, low = (int(word) for word in np.asarray(self._own_stream("step_value")[1]))
        return (high << 32) | low

    def _own_stream(self, attribute: str) -> tuple[jax.Array, jax.Array]:
        if self.rngs is not None:
            raise ArgumentValueError(f"{attribute}: this module draws its keys from its rngs")
        return self.seed[...], self.step[...]

    @property
    def seed_value(self) -> int:
        """The seed ``s`` of the stream as an integer (a module drawing from ``rngs`` has none)."""
        high, low = (int(word) for word in np.asarray(self._own_stream("seed_value")[0]))
        return (high << 32) | low


def _next_step(step: jax.Array) -> jax.Array:
    """``t + 1`` in two words: the low word carries into the high one."""
    low = step[1] + jnp.uint32(1)
    return jnp.stack([step[0] + (low == 0).astype(jnp.uint32), low])


ALLOWED_RNGS = "an nnx.Rngs, an nnx.RngStream or None"
ALLOWED_CALL_RNGS = "an nnx.Rngs, an nnx.RngStream, a JAX key or None"
NO_DETERMINISTIC = (
    "deterministic must be True or False, got None both in the call and in the module: pass "
    "it to the call (layer(x, deterministic=...)) or the constructor, or set it with "
    "nnx.view(model, deterministic=...) or model.train() / model.eval()"
)


def _stream(rngs: object, collection: str, allowed: str) -> nnx.RngStream:
    """The stream ``rngs`` stands for: its ``collection`` stream of an ``nnx.Rngs`` (its default
    stream where it has none), or ``rngs`` itself."""
    if isinstance(rngs, nnx.Rngs):
        stream: nnx.RngStream = rngs[collection]
        return stream
    if isinstance(rngs, nnx.RngStream):
        return rngs
    raise bad_type("rngs", rngs, allowed)


def _key(rngs: object, collection: str) -> jax.Array:
    """The key a call's ``rngs`` gives: the stream's next key, or a key passed as it is."""
    if isinstance(rngs, jax.Array):
        return rngs
    return _stream(rngs, collection, allowed=ALLOWED_CALL_RNGS)()


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
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
        seed: int | xdrop.Generator | None = None,
    ) -> None:
        super().__init__(
            rate,
            broadcast_dims=broadcast_dims,
            deterministic=deterministic,
            rng_collection=rng_collection,
            rngs=rngs,
            seed=seed,
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
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
        seed: int | xdrop.Generator | None = None,
    ) -> None:
        super().__init__(
            rate,
            deterministic=deterministic,
            rng_collection=rng_collection,
            rngs=rngs,
            seed=seed,
        )
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
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
        seed: int | xdrop.Generator | None = None,
    ) -> None:
        super().__init__(
            rate,
            deterministic=deterministic,
            rng_collection=rng_collection,
            rngs=rngs,
            seed=seed,
        )
        self.block_size = common.check_block_size(block_size)
        self.data_format = common.check_data_format(data_format)


def _check_deterministic(value: object, default: bool | None) -> bool | None:
    """A constructor's, a call's or a view's ``deterministic``: True, False, or None for
    ``default``. Anything else is refused rather than read for its truth (``"no"`` would mean
    evaluation)."""
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
