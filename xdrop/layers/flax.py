"""Flax NNX layers: ``Dropout``, with ``broadcast_dims`` for its spatial (channel) form, and the
family ``AlphaDropout``, ``GaussianDropout``, ``DropPath``, ``DropBlock2D``; :func:`convert`, which
makes the dropout of an NNX model written with Flax's own modules portable, and :func:`dropout`,
the functional form for code that draws its masks itself."""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.nnx import graphlib

import xdrop
from xdrop import sharding
from xdrop.errors import (
    ArgumentValueError,
    Shown,
    UnconvertedDropoutError,
    UnconvertedDropoutWarning,
    bad_type,
    bad_value,
)
from xdrop.layers import common
from xdrop.validation import (
    as_real,
    check_flag,
    check_mode,
    check_natural,
    is_integer,
    seed_value,
)

Rngs = nnx.Rngs | nnx.RngStream
"""What Flax's layers take as ``rngs``: a collection of streams, or one stream."""
Axes = Sequence[int] | np.ndarray | jax.Array
"""What they take as ``broadcast_dims``: integer axes, in a sequence or a 1-d array."""

__all__ = [
    "AlphaDropout",
    "DropBlock2D",
    "DropPath",
    "Dropout",
    "DropoutState",
    "GaussianDropout",
    "SiteStream",
    "convert",
    "dropout",
    "set_mc_sampling",
]


class DropoutState(nnx.Variable):  # type: ignore[type-arg]
    """The stream state of :class:`Dropout`: its seed and its step, each a uint32[2] ``(hi,
    lo)`` (one per layer, shape ``(*layers, 2)``, in a stack of layers :func:`convert` made from
    one built with ``nnx.vmap``: ``nnx.scan`` / ``nnx.vmap`` give each layer its own). Not a
    parameter: optimizers with ``wrt=nnx.Param`` leave it alone, and
    ``nnx.state(model)`` / ``nnx.split(model)`` carry it. A module whose state was restored
    (``nnx.update``) with another dtype or shape refuses to be called: a narrower integer would
    draw from another seed silently."""


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
        data_parallel: how processes draw on process-local arrays, read at each call from
            ``jax.process_index()`` (``r``) and ``jax.process_count()`` (``R``). With
            ``R > 1``, ``"per_rank"`` draws with ``xdrop.fold_in(k, r)`` for the key ``k``
            the call would use (``xdrop.fold_in(seed, t)``, or the ``rngs``' key);
            ``"global_batch"`` places process ``r``'s ``B`` rows at rows ``[r * B, (r + 1) *
            B)`` of a global batch of ``R * B`` (an :class:`xdrop.Block`; every process must
            hold ``B`` rows, which a process cannot check under ``jit``), so the processes
            draw together what one process draws over the global batch; None (default) is
            ``"per_rank"``. With one process, and for global ``jax.Array`` inputs (under
            ``jit`` too: their sharding spans the processes), every mode draws as one process
            does. The stored seed and step are the same in every process.
            :class:`DropBlock2D` does not take ``"global_batch"``.

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
        broadcast_dims: Axes = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
        seed: int | xdrop.Generator | None = None,
        mode: str = "inverted",
        data_parallel: str | None = None,
    ) -> None:
        self.rate = self._check_rate("rate", rate)
        self.data_parallel = self._check_data_parallel(data_parallel)
        self.broadcast_dims = _axes(broadcast_dims)
        self.deterministic = _check_deterministic(deterministic, None)
        self.mode = check_mode(mode)
        if not isinstance(rng_collection, str):
            raise bad_type("rng_collection", rng_collection, "the name of a stream of nnx.Rngs")
        self.rng_collection = rng_collection
        if rngs is None:
            if _inside_linen():
                raise ArgumentValueError(LINEN)
            self._seed_drawn_for_a_stack = not is_integer(seed) and _inside_vmap()
            words = common.seed_words(common.initial_seed(seed))
            # tagged as Flax's stream of that name is: a filter by the name finds both
            tag = rng_collection
            self.seed = DropoutState(jnp.asarray(np.array(words, np.uint32)), tag=tag)
            self.step = DropoutState(jnp.zeros((2,), jnp.uint32), tag=tag)
            self.rngs = nnx.data(None)
        elif seed is not None:
            raise ArgumentValueError(
                f"seed and rngs are two sources of masks: give one, got seed={seed!r} and rngs"
            )
        else:
            self.rngs = _stream(rngs, rng_collection, allowed=ALLOWED_RNGS).fork()

    mc_sampling = False
    """Sample when deterministic too (Monte Carlo dropout); :func:`set_mc_sampling` sets it."""

    # the seed was drawn (seed=None, an xdrop.Generator) where nnx.vmap built the layer once
    # for a whole stack: every stacked layer holds it, so drawing from it is refused
    _seed_drawn_for_a_stack = False

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
        if self.rngs is None:  # checked in evaluation too: a bad restore shows at the first call
            own_seed, own_step = self._checked_state()
        self._check_input_shape("inputs", inputs.shape)
        self._check_floating("inputs", inputs)
        common.check_shared_axes("broadcast_dims", self.broadcast_dims, inputs.ndim)
        if deterministic and not self.mc_sampling:
            return self._evaluate(inputs, self.rate)  # type: ignore[no-any-return]
        inputs = jnp.asarray(inputs)  # a NumPy batch gives a jax.Array, as nnx.Dropout's
        noise_shape = common.spatial_noise_shape(inputs.ndim, self.broadcast_dims)
        if self.data_parallel is not None and sharding.manual_axes():
            raise _mapped_over_devices(self.data_parallel)
        if rngs is None and self.rngs is None:
            if self._seed_drawn_for_a_stack:
                raise ArgumentValueError(VMAPPED_SEED)
            seed, next_step = _step_and_next(own_seed, own_step)
            self.step.set_value(next_step)  # a new value: a NumPy one is not written into
        elif _draws_nothing(self.rate):
            seed = 0  # unused: as nnx.Dropout, take no key, so later layers get Flax's keys
        else:
            seed = _key(rngs if rngs is not None else self.rngs, self.rng_collection)
        seed, offset = common.process_ranks(inputs).place(
            self.data_parallel,
            seed,
            *common.placed_mask(inputs.shape, noise_shape),
        )
        return self._draw(inputs, self.rate, seed, noise_shape, offset)  # type: ignore[no-any-return]

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
        return self._checked_state()

    def _checked_state(self) -> tuple[jax.Array, jax.Array]:
        """The seed and the step, refused unless each is the uint32[2] the module made: a restore
        (``nnx.update``, which xdrop does not see) can put any array there. Dtype and shape are
        static under ``nnx.jit``: the check runs once, while tracing, and costs nothing after."""
        return _state_words(self, "seed"), _state_words(self, "step")

    @property
    def seed_value(self) -> int:
        """The seed ``s`` of the stream as an integer (a module drawing from ``rngs`` has none)."""
        high, low = (int(word) for word in np.asarray(self._own_stream("seed_value")[0]))
        return (high << 32) | low


def _state_words(module: Dropout, name: str) -> jax.Array:
    """The ``(hi, lo)`` words of the :class:`DropoutState` ``name`` of ``module``, refused unless
    a uint32[2] array: a narrower integer would be read as another seed or step silently (a seed
    of ``2**40 + 7`` restored as uint8 would draw from seed 7), and any other dtype or shape
    would fail inside the draw with an error that does not say which state is wrong."""
    argument = f"the DropoutState {name!r} of {type(module).__name__}"
    allowed = f"a uint32[2] array (the {name}'s words hi, lo)"
    try:
        value = getattr(module, name)[...]
    except (TypeError, IndexError, KeyError):  # an int, a list... which [...] does not index
        value = None
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if dtype is None or shape is None:
        raise bad_type(argument, Shown("<a value that is not an array>"), allowed)
    shown = Shown(f"<array of {dtype} shape {tuple(shape)}>")
    if dtype != np.dtype(np.uint32):
        raise bad_type(argument, shown, allowed)
    if tuple(shape) != (2,):
        error = bad_value(argument, shown, allowed)
        if len(shape) > 1 and shape[-1] == 2:  # convert's stream per layer of an nnx.vmap stack
            error = ArgumentValueError(
                f"{error}: a stack of streams, one per layer, as convert makes for an "
                "nnx.Dropout built inside nnx.vmap; call the module inside nnx.scan or nnx.vmap "
                "over its layers, splitting its DropoutState along them (an nnx.StateAxes that "
                "splits nnx.RngState must name xdrop.layers.flax.DropoutState too)"
            )
        raise error
    return value  # type: ignore[no-any-return]


@jax.jit
def _step_and_next(seed: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The seed of step ``t`` (:func:`xdrop.layers.common.step_seed`) and ``t + 1`` in two words
    (the low word carries into the high one). One compiled call: eagerly, the fold-in's hundred
    word operations would each be dispatched on their own (2 ms against ``nnx.Dropout``'s
    0.4 ms); inside ``nnx.jit`` it is inlined."""
    low = step[1] + jnp.uint32(1)
    return common.step_seed(seed, step), jnp.stack([step[0] + (low == 0).astype(jnp.uint32), low])


def _is_linen(module: object) -> bool:
    linen = sys.modules.get("flax.linen")
    return linen is not None and isinstance(module, linen.Module)


def _inside_linen() -> bool:
    """Whether a Flax Linen module is being set up or applied (its ``compact`` code runs).
    Linen keeps the modules running in ``_context.module_stack``; without it, nothing is
    refused, as before."""
    linen = sys.modules.get("flax.linen.module")
    stack: list[Any] = getattr(getattr(linen, "_context", None), "module_stack", None) or [None]
    return stack[-1] is not None


def _inside_vmap() -> bool:
    """Whether ``jax.vmap`` (``nnx.vmap``) traces the running code, also below a ``jax.jit``
    inside it. Read from JAX's trace context; where JAX no longer keeps it there, False."""
    core = sys.modules.get("jax._src.core")
    batching = sys.modules.get("jax._src.interpreters.batching")
    trace = getattr(getattr(core, "trace_ctx", None), "trace", None)
    batch_trace = getattr(batching, "BatchTrace", None)
    while trace is not None and batch_trace is not None:
        if isinstance(trace, batch_trace):
            return True
        trace = getattr(trace, "parent_trace", None)
    return False


VMAPPED_SEED = (
    "this layer was built inside nnx.vmap (Flax's stacks of layers, ensembles) with seed=None "
    "or an xdrop.Generator: Python built it once for the whole stack, so the one seed drawn "
    "there is every stacked layer's, and they would all drop the same units. Pass rngs=... "
    "split across the stack (nnx.split_rngs) to the constructor or the call, as Flax's "
    "Dropout takes them, or build the layers outside vmap"
)

LINEN = (
    "xdrop's Flax layers are NNX modules: one built inside a Linen module keeps its seed and "
    "step outside Linen's variables, so under jax.jit every step would draw the first step's "
    "mask. In Linen, wrap the class with nnx.bridge.to_linen(Dropout, rate) (it draws with "
    "Linen's 'dropout' keys), or call xdrop.dropout(x, rate, seed=xdrop.fold_in(seed, step)) "
    "with a step the Linen model keeps"
)

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


def _key(rngs: object, collection: str, allowed: str = ALLOWED_CALL_RNGS) -> jax.Array:
    """The key a call's ``rngs`` gives: the stream's next key, or a key passed as it is."""
    if isinstance(rngs, jax.Array):
        return rngs
    return _stream(rngs, collection, allowed=allowed)()


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
        broadcast_dims: Axes = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: Rngs | None = None,
        seed: int | xdrop.Generator | None = None,
        data_parallel: str | None = None,
    ) -> None:
        super().__init__(
            rate,
            broadcast_dims=broadcast_dims,
            deterministic=deterministic,
            rng_collection=rng_collection,
            rngs=rngs,
            seed=seed,
            data_parallel=data_parallel,
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
        data_parallel: str | None = None,
    ) -> None:
        super().__init__(
            rate,
            deterministic=deterministic,
            rng_collection=rng_collection,
            rngs=rngs,
            seed=seed,
            data_parallel=data_parallel,
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
        data_parallel: str | None = None,
    ) -> None:
        super().__init__(
            rate,
            deterministic=deterministic,
            rng_collection=rng_collection,
            rngs=rngs,
            seed=seed,
            data_parallel=data_parallel,
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
    if not isinstance(model, (nnx.Module, list, tuple, dict)):
        raise bad_type("model", model, "an nnx.Module (or a list, tuple or dict of them)")
    flag = check_flag("enabled", enabled)
    switched = 0
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Dropout):
            module.mc_sampling = flag
            switched += 1
    return switched


def dropout(
    x: jax.Array,
    rate: float,
    rngs: Rngs | jax.Array,
    *,
    rng_collection: str = "dropout",
    broadcast_dims: Axes = (),
    deterministic: bool = False,
    mode: str = "inverted",
) -> jax.Array:
    """Dropout for code that draws its own masks: the functional form of :class:`Dropout` with
    ``rngs``. Where code writes ``keep = jax.random.bernoulli(key, 1 - rate, shape)``, this
    returns::

        xdrop.dropout(x, rate, seed=k, mode=mode, noise_shape=n)

    with ``k`` the next key of ``rngs`` (its ``rng_collection`` stream of an ``nnx.Rngs``, the
    stream itself, or a JAX key as it is) and ``n`` 1 on ``broadcast_dims``, None elsewhere.
    xdrop's mask for a key is ``jax.random.bernoulli(k, 1 - rate, n)``'s, so the units dropped
    are those the hand-written code dropped for the same key, now drawn by the portable stream
    every xdrop backend draws for that key. ``deterministic=True`` draws nothing and returns
    ``xdrop.dropout(x, rate, training=False, mode=mode)``.

    Args:
        x: the inputs.
        rate: the probability of zeroing an element, in ``[0, 1]``.
        rngs: an ``nnx.Rngs``, an ``nnx.RngStream`` (its next key is taken: its count advances)
            or a JAX key (a Threefry key, typed or uint32[2]).
        rng_collection: the stream of an ``nnx.Rngs`` to draw from.
        broadcast_dims: axes along which one decision is shared, as :class:`Dropout`'s.
        deterministic: True for evaluation.
        mode: ``"inverted"`` or ``"classic"``, as :func:`xdrop.dropout`'s.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from flax import nnx
        >>> key = jax.random.key(0)
        >>> w = jnp.ones((2, 4, 4))
        >>> y = dropout(w, 0.25, key)
        >>> keep = jax.random.bernoulli(key, 0.75, w.shape)
        >>> bool(((y != 0) == keep).all())
        True
        >>> y = dropout(w, 0.25, nnx.Rngs(dropout=1), broadcast_dims=(0,))
    """
    deterministic = check_flag("deterministic", deterministic)
    axes = _axes(broadcast_dims)
    if not isinstance(rng_collection, str):
        raise bad_type("rng_collection", rng_collection, "the name of a stream of nnx.Rngs")
    checked_mode = check_mode(mode)
    if deterministic:
        return xdrop.dropout(x, rate, training=False, mode=checked_mode)
    x = jnp.asarray(x)  # a NumPy batch gives a jax.Array, as nnx.Dropout's
    common.check_shared_axes("broadcast_dims", axes, x.ndim)
    noise_shape = common.spatial_noise_shape(x.ndim, axes)
    key = (
        0  # unused: as nnx.Dropout, take no key where nothing is drawn
        if _draws_nothing(rate)
        else _key(rngs, rng_collection, allowed="an nnx.Rngs, an nnx.RngStream or a JAX key")
    )
    return xdrop.dropout(x, rate, seed=key, mode=checked_mode, noise_shape=noise_shape)


def _axes(broadcast_dims: object) -> tuple[int, ...]:
    """``broadcast_dims`` as axes: a sequence of integers, or a 1-d integer array (NumPy's or a
    concrete ``jax.Array``, read on the host), which ``nnx.Dropout`` takes too; an empty array
    of any dtype (``np.array([])`` is float64) is no axis, as Flax reads it."""
    if isinstance(broadcast_dims, np.ndarray | jax.Array) and not isinstance(
        broadcast_dims, jax.core.Tracer
    ):
        if broadcast_dims.ndim == 1 and (
            broadcast_dims.size == 0 or np.issubdtype(broadcast_dims.dtype, np.integer)
        ):
            return tuple(int(axis) for axis in np.asarray(broadcast_dims))
    elif (
        isinstance(broadcast_dims, Sequence)
        and not isinstance(broadcast_dims, str | bytes)
        and all(map(is_integer, broadcast_dims))
    ):
        return tuple(int(axis) for axis in broadcast_dims)
    allowed = "a sequence of integer axes or a 1-d integer array"
    raise bad_type("broadcast_dims", broadcast_dims, allowed)


def _mapped_over_devices(mode: str) -> ArgumentValueError:
    """The error for ``data_parallel`` inside ``shard_map`` or ``pmap``."""
    shown = Shown(f"{mode!r} inside shard_map or pmap")
    allowed = (
        "None there: data_parallel places the arrays of JAX processes, while inside shard_map "
        "or pmap every device holds a shard of one process's batch and would draw the same "
        "mask. Run the model under jax.jit (nnx.jit) with the batch sharded over the devices "
        "(a NamedSharding), which draws the global batch's masks, or call xdrop.dropout with "
        "offset=xdrop.shard_map_block(...) inside shard_map"
    )
    return bad_value("data_parallel", shown, allowed)


def _draws_nothing(rate: object) -> bool:
    """Whether ``rate`` is 0 or 1, where no mask is drawn: ``nnx.Dropout`` takes no key from
    its stream there, and neither does xdrop from a Flax stream, so that the layers after it
    draw with the keys they draw with in Flax."""
    return as_real(rate) in (0.0, 1.0)


class SiteStream(nnx.RngStream):
    """The dropout stream :func:`convert` gives an ``nnx.MultiHeadAttention``: an
    ``nnx.RngStream`` whose key is the site's seed ``s`` (its two words ``(hi, lo)``), so that
    its ``t``-th key is ``xdrop.fold_in(s, t)``. Its key and count are the module's state, as any
    ``nnx.RngStream``'s; its class marks the site as converted.

    Example:
        >>> stream = SiteStream(7)
        >>> key = jax.random.key_data(stream())
        >>> tuple(int(w) for w in key) == common.seed_words(xdrop.fold_in(7, 0))
        True
    """

    def __init__(self, seed: int, *, tag: str = "dropout") -> None:
        words = np.array(common.seed_words(check_natural("seed", seed, 64)), np.uint32)
        super().__init__(_threefry_keys(words), tag=tag)

    def __call__(self) -> jax.Array:
        """The next key, ``xdrop.fold_in(s, t)``; the count ``t`` advances. Refused where
        ``jax.random.bernoulli`` draws other masks than xdrop's for the same key
        (:func:`_bernoulli_differs`)."""
        differs = _bernoulli_differs()
        if differs is not None:
            raise UnconvertedDropoutError(
                f"{differs}, and jax.random.bernoulli then draws other masks than xdrop's for "
                "the same key: a converted nnx.MultiHeadAttention's dropout would not be "
                "portable. Use JAX's defaults (jax_threefry_partitionable on, jax_enable_x64 "
                "off), or dropout_rate=0 and drop the attention weights with xdrop's layers"
            )
        key: jax.Array = super().__call__()
        return key


def _bernoulli_differs() -> str | None:
    """Why ``jax.random.bernoulli(key, 1 - rate)``, as Flax's attention calls it, draws other
    masks than xdrop's for a key, or None where it draws xdrop's (mask stream v1): with JAX's
    defaults. With ``jax_threefry_partitionable`` off JAX's bits for a key are others; with
    ``jax_enable_x64`` on, a Python float rate is compared with float64 uniforms."""
    if not getattr(jax.config, "jax_threefry_partitionable", True):
        return "jax_threefry_partitionable is off"
    if getattr(jax.config, "jax_enable_x64", False):
        return "jax_enable_x64 is on"
    return None


_DROPOUT_LIKE = re.compile(r"drop(out|path|block|connect)|stochastic_?depth", re.IGNORECASE)
"""Class names of modules that probably drop units, but are not Flax's ``nnx.Dropout``: xdrop
cannot know what they draw, so :func:`convert` reports them."""

Path = tuple[Any, ...]


def convert(
    module: nnx.Module,
    *,
    seed: int,
    strict: bool = False,
    rename: Callable[[str], str] | None = None,
    data_parallel: str | None = None,
) -> nnx.Module:
    """Make every dropout of an NNX model written with Flax's modules portable, seeded and
    resumable, in place; returns ``module``.

    Each ``flax.nnx.Dropout`` anywhere in the module graph (attributes, ``nnx.List``,
    ``nnx.Dict``, lists, dicts and tuples held with ``nnx.data``, nested modules) is replaced by
    :class:`Dropout` with the same ``rate``, ``broadcast_dims``, ``deterministic`` and
    ``rng_collection`` and its own stream from ``seed=site_seed(seed, name)``
    (:func:`xdrop.layers.common.site_seed`): its ``t``-th training call returns::

        s = site_seed(seed, name)
        xdrop.dropout(x, rate, seed=xdrop.fold_in(s, t), noise_shape=n)

    where ``name`` is the module's path in the graph joined with dots (``blocks.0.dropout``),
    or ``rename(path)``. A site's stream depends on its name only, never on the order in which
    the model built its modules; the same name gives the same seed in PyTorch and Keras.

    An ``nnx.MultiHeadAttention`` with ``dropout_rate > 0`` that holds its stream (the default
    ``keep_rngs=True``) and Flax's ``dot_product_attention`` gets a :class:`SiteStream` for its
    stream instead: its ``t``-th training call drops the attention weights with the mask
    ``xdrop.dropout_mask`` gives for ``seed=xdrop.fold_in(site_seed(seed, name), t)`` (shared
    across batch and heads where ``broadcast_dropout``), as Flax's ``jax.random.bernoulli``
    draws it from that key (with JAX's defaults: ``jax_threefry_partitionable`` on and
    ``jax_enable_x64`` off; otherwise the module is reported, and a converted one refuses to
    draw). The module's other arguments are kept.

    A module reached by several paths (a shared reference) is one site, named after the first
    path in the graph's (sorted) order; every reference is replaced by the same new module, so
    it stays shared. xdrop's own layers are left as they are, so ``convert`` twice changes
    nothing: the streams keep their seeds and steps (another seed, which they would ignore, is
    refused where this process converted them). The seeds and steps are ``nnx.Variable``s:
    ``nnx.state`` / ``nnx.split`` / checkpoints carry them, and ``nnx.jit`` advances them.

    Layers stacked with ``nnx.vmap`` (Flax's scan over layers: the layers built at once inside
    ``nnx.vmap``, run by ``nnx.scan``) hold one key per layer in each ``nnx.Dropout`` and
    attention, along leading axes: such a module is one site per layer, layer ``(i, j, ...)``
    named ``name.i.j...`` (``blocks.dropout.0``, ``blocks.dropout.1``; ``rename`` is given each
    name), and its replacement holds the seeds and steps (a :class:`SiteStream` its keys and
    counts) stacked along the same axes, so that ``nnx.scan`` or ``nnx.vmap`` over the layers
    give each layer its own stream: layer ``i`` draws as above with ``name.i``. An
    ``nnx.Dropout`` built there without ``rngs`` holds no key that shows the stack: it would get
    one stream, which ``nnx.scan`` cannot split among the layers; build it with ``rngs``.

    Other modules whose class name says they drop units (``Dropout``, ``DropPath``,
    ``DropBlock``, ``StochasticDepth``: subclasses of ``nnx.Dropout`` included) and that hold no
    dropout ``convert`` replaces, an ``nnx.MultiHeadAttention`` that draws from ``rngs`` passed
    to each call (``keep_rngs=False``) or calls its own ``attention_fn``, are left as they are,
    with one :class:`UnconvertedDropoutWarning` naming each; ``strict=True`` raises
    :class:`UnconvertedDropoutError` instead, before anything is changed. Dropout that a
    module's code draws itself (``jax.random.bernoulli``) is invisible to ``convert``: see
    :func:`dropout`. ``rngs`` passed to a call take precedence over a converted module's stream,
    as in Flax.

    Args:
        module: an ``nnx.Module``, changed in place.
        seed: the model's seed, an integer in ``[0, 2**64)``.
        strict: raise rather than warn when some dropout cannot be converted.
        rename: maps each site's dotted path to the name its seed is derived from (e.g. to the
            name the same site has in a PyTorch model); each site's name must be unique.
        data_parallel: how the new :class:`Dropout` modules draw among processes (their
            ``data_parallel``): ``"per_rank"``, ``"global_batch"`` or None. A converted
            ``nnx.MultiHeadAttention`` draws from its :class:`SiteStream` in every process.

    Returns:
        ``module``.

    Example:
        >>> class Block(nnx.Module):
        ...     def __init__(self, rngs: nnx.Rngs) -> None:
        ...         self.linear = nnx.Linear(4, 4, rngs=rngs)
        ...         self.dropout = nnx.Dropout(0.5, rngs=rngs)
        ...     def __call__(self, x: jax.Array) -> jax.Array:
        ...         return self.dropout(self.linear(x))
        >>> model = convert(Block(nnx.Rngs(0)), seed=7)
        >>> type(model.dropout).__name__, model.dropout.rate
        ('Dropout', 0.5)
        >>> s = common.site_seed(7, "dropout")
        >>> model.dropout.seed_value == s
        True
    """
    if not isinstance(module, nnx.Module):
        allowed = "an nnx.Module (a Flax NNX model)"
        if _is_linen(module):
            allowed += (
                "; a Linen model has no state convert could give streams: use "
                "nnx.bridge.to_linen(xdrop.layers.flax.Dropout, rate) in place of nn.Dropout"
            )
        raise bad_type("module", module, allowed)
    if type(module) is nnx.Dropout:
        raise ArgumentValueError(
            "module is an nnx.Dropout, which convert cannot replace in place: convert the model "
            "that holds it, or build xdrop.layers.flax.Dropout(rate, seed=...) instead"
        )
    read = seed_value(seed) if isinstance(seed, np.integer) else None
    seed = check_natural("seed", seed, 64, read=read)
    strict = check_flag("strict", strict)
    data_parallel = common.check_data_parallel(data_parallel)
    if rename is not None and not callable(rename):
        raise bad_type("rename", rename, "None or a function from a site's path to its name")
    found = _Found()
    found.walk(module, ())
    unconverted = found.unconverted()
    if unconverted and strict:
        raise UnconvertedDropoutError(_unconverted_message(unconverted, strict=True))
    common.check_convert_seed([(_dotted(path), held) for path, held in found.portable], seed)
    layers = [_layers(site) for _, site in found.sites]
    paths = [_dotted(path) for path, _ in found.sites]
    names = _site_names(
        [_layer_names(path, shape) for path, shape in zip(paths, layers, strict=True)], rename
    )
    replacements: dict[int, tuple[object, object]] = {}
    streams: list[tuple[nnx.MultiHeadAttention, SiteStream]] = []
    for (_, site), shape, site_names in zip(found.sites, layers, names, strict=True):
        # the words of each layer's seed, shape (*layers, 2): (2,) for a site of one layer
        words = np.array(
            [common.seed_words(common.site_seed(seed, name)) for name in site_names], np.uint32
        ).reshape(*shape, 2)
        if isinstance(site, nnx.MultiHeadAttention):
            tag = str(getattr(site.rngs, "tag", "dropout"))
            streams.append((site, _site_stream(words, tag)))
            continue
        new = Dropout(
            site.rate,
            broadcast_dims=site.broadcast_dims,
            deterministic=site.deterministic,
            rng_collection=site.rng_collection,
            seed=0,  # the seeds are set below, one per layer
            data_parallel=data_parallel,
        )
        new.seed.set_value(jnp.asarray(words))
        new.step.set_value(jnp.zeros(words.shape, jnp.uint32))
        replacements[id(site)] = (site, new)
    made = [new for _, new in replacements.values()] + [stream for _, stream in streams]
    # every check is done and every new module built: only now is the model changed
    _replace(module, replacements, set())  # which adds the tuples it rebuilds
    for attention, stream in streams:
        attention.rngs = stream
    for new_stream in made:
        common.CONVERT_SEEDS[new_stream] = seed
    if unconverted:
        warnings.warn(
            _unconverted_message(unconverted, strict=False), UnconvertedDropoutWarning, stacklevel=2
        )
    return module


def _dotted(path: Path) -> str:
    return ".".join(str(key) for key in path)


def _layers(site: Any) -> tuple[int, ...]:
    """The leading axes along which a site holds one stream per layer: those of its stream's key
    and count. A module built inside ``nnx.vmap`` (Flax's scan over layers) holds a key per
    layer, and ``nnx.scan`` / ``nnx.vmap`` over the layers give each layer its own; ``()`` for
    a module of one stream, or of none."""
    stream = getattr(site, "rngs", None)
    if not isinstance(stream, nnx.RngStream):
        return ()
    shapes = (getattr(variable[...], "shape", ()) for variable in (stream.key, stream.count))
    return tuple(np.broadcast_shapes(*shapes))


def _layer_names(dotted: str, shape: tuple[int, ...]) -> list[str]:
    """The name of each layer of a site held along the leading axes ``shape``, in row-major
    order: the site's path for one layer (``shape`` ``()``), else the path followed by the
    layer's index, one dotted number per axis (``blocks.dropout.0``, ...)."""
    return [".".join((dotted, *map(str, index))) for index in np.ndindex(*shape)]


def _site_stream(words: np.ndarray, tag: str) -> SiteStream:
    """A :class:`SiteStream` whose key holds the seed words ``words``, shape ``(*layers, 2)``:
    one key, and one count, per stacked layer."""
    stream = SiteStream(0, tag=tag)
    stream.key.set_value(_threefry_keys(words))
    stream.count.set_value(jnp.zeros(words.shape[:-1], jnp.uint32))
    return stream


def _threefry_keys(words: np.ndarray) -> jax.Array:
    """Threefry keys of the key words ``words``, shape ``(..., 2)``: JAX's default keys, whose
    ``bernoulli`` draws xdrop's masks."""
    keys: jax.Array = jax.random.wrap_key_data(jnp.asarray(words), impl="threefry2x32")
    return keys


class _Found:
    """What a walk of a module graph finds: the sites :func:`convert` converts (``nnx.Dropout``
    and ``nnx.MultiHeadAttention``, each once, at its first path), the paths of dropout that is
    already portable, and the modules it cannot convert, with why."""

    def __init__(self) -> None:
        self.sites: list[tuple[Path, Any]] = []
        self.portable: list[tuple[Path, Any]] = []  # with their stream: a Dropout, a SiteStream
        self.suspects: list[tuple[Path, str]] = []
        self.visited: set[int] = set()

    def walk(self, node: object, path: Path) -> None:
        if id(node) in self.visited:
            return
        self.visited.add(id(node))
        impl = graphlib.get_node_impl(node)
        if impl is None:
            return
        for key, child in impl.node_dict(node).items():
            if isinstance(child, nnx.Variable) or id(child) in self.visited:
                continue
            child_path = (*path, key)
            if type(child) is nnx.Dropout:
                self.visited.add(id(child))
                if _settable(node, impl):
                    self.sites.append((child_path, child))
                else:
                    held = f"held in a {type(node).__name__}, which cannot be changed in place"
                    self.suspects.append((child_path, f"nnx.Dropout {held}"))
                continue
            if isinstance(child, Dropout):
                self.visited.add(id(child))
                self.portable.append((child_path, child))
                continue
            if isinstance(child, nnx.MultiHeadAttention) and child.dropout_rate > 0:
                self._attention(child_path, child)
            elif isinstance(child, nnx.Dropout) or (
                isinstance(child, nnx.Module) and _DROPOUT_LIKE.search(type(child).__name__)
            ):
                reason = f"{type(child).__name__}: a module convert does not know"
                self.suspects.append((child_path, reason))
            self.walk(child, child_path)

    def _attention(self, path: Path, attention: nnx.MultiHeadAttention) -> None:
        if isinstance(attention.rngs, SiteStream):
            self.portable.append((path, attention.rngs))
        elif attention.attention_fn is not nnx.dot_product_attention:
            reason = "nnx.MultiHeadAttention with dropout_rate > 0 and its own attention_fn"
            self.suspects.append((path, reason))
        elif (differs := _bernoulli_differs()) is not None:
            self.suspects.append(
                (path, f"nnx.MultiHeadAttention: {differs}, so its masks are not xdrop's")
            )
        elif not isinstance(attention.rngs, nnx.RngStream):
            reason = "nnx.MultiHeadAttention drawing from the rngs passed to each call"
            self.suspects.append((path, f"{reason} (keep_rngs=False)"))
        else:
            self.sites.append((path, attention))

    def unconverted(self) -> list[tuple[Path, str]]:
        """The suspects that hold no dropout that is converted or portable: a module named like
        dropout that wraps an ``nnx.Dropout`` is made portable through it."""
        inside = [path for path, _ in self.sites + self.portable]
        return [
            (path, reason)
            for path, reason in self.suspects
            if not any(site[: len(path)] == path and site != path for site in inside)
        ]


def _settable(node: object, impl: Any) -> bool:
    """Whether a child of ``node`` can be replaced: a module's attribute, an item of a list, a
    dict, an ``nnx.List`` or ``nnx.Dict``, or of a tuple (rebuilt)."""
    return isinstance(node, (list, dict, tuple)) or getattr(impl, "set_key", None) is not None


def _site_names(sites: list[list[str]], rename: Callable[[str], str] | None) -> list[list[str]]:
    """The names of each site's layers (:func:`_layer_names`), or what ``rename`` makes of them;
    distinct names only, as two sites with one name would drop the same units."""
    names: list[list[str]] = []
    owners: dict[str, str] = {}
    for layers in sites:
        names.append([])
        for dotted in layers:
            name = dotted if rename is None else rename(dotted)
            if not isinstance(name, str):
                raise bad_type(f"rename({dotted!r})", name, "a str: the name of the site")
            if name in owners:
                raise ArgumentValueError(
                    f"rename gives the name {name!r} to two dropout sites, {owners[name]!r} and "
                    f"{dotted!r}: they would drop the same units; give each site its own name"
                )
            owners[name] = dotted
            names[-1].append(name)
    return names


def _unconverted_message(unconverted: list[tuple[Path, str]], strict: bool) -> str:
    listed = "; ".join(f"{_dotted(path) or '<root>'} ({reason})" for path, reason in unconverted)
    outcome = (
        "(strict=True); convert refuses the model"
        if strict
        else "left as they are, drawing masks xdrop does not control"
    )
    return (
        f"convert found {len(unconverted)} dropout module(s) it cannot make portable, "
        f"{outcome}: {listed}. Replace them with xdrop.layers.flax layers, or draw their "
        "masks with xdrop.layers.flax.dropout (see the page Convert a Flax model)"
    )


def _replace(
    node: object, replacements: dict[int, tuple[object, object]], visited: set[int]
) -> object:
    """``node`` with every child in ``replacements`` (by id: ``(old, new)``) replaced, at any
    depth, in place; a tuple that holds one is rebuilt, and the new tuple returned."""
    if id(node) in replacements:
        return replacements[id(node)][1]
    if id(node) in visited:
        return node
    visited.add(id(node))
    impl: Any = graphlib.get_node_impl(node)
    if impl is None:
        return node
    children = impl.node_dict(node)
    changed = {}
    for key, child in children.items():
        if isinstance(child, nnx.Variable):
            continue
        new = _replace(child, replacements, visited)
        if new is not child:
            changed[key] = new
    if not changed:
        return node
    if isinstance(node, tuple):
        values = [changed.get(key, child) for key, child in children.items()]
        rebuilt = type(node)._make(values) if hasattr(node, "_make") else type(node)(values)
        replacements[id(node)] = (node, rebuilt)
        return rebuilt
    for key, new in changed.items():
        if isinstance(node, (list, dict)):
            node[key] = new
        else:
            impl.set_key(node, key, new)
    return node
