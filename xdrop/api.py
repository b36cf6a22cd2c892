"""The public functions: validate once, pick the backend, run the spec."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

from xdrop import kernel, seeds, spec
from xdrop.errors import bad_value
from xdrop.protocol import Array, Backend, Key
from xdrop.registry import backend_for
from xdrop.tracing import called_as_is
from xdrop.validation import (
    check_counter_range,
    check_flag,
    check_float_dtype,
    check_mode,
    check_noise_shape,
    check_offset,
    check_rate,
    check_scale_fits,
    check_shape,
)


@called_as_is
def dropout(
    x: Any,
    p: float = 0.5,
    *,
    training: bool = True,
    seed: seeds.SeedLike = None,
    mode: str = "inverted",
    noise_shape: Sequence[int | None] | None = None,
    offset: int = 0,
    return_mask: bool = False,
    rng: str | None = None,
) -> Any:
    """Zero each element of ``x`` with probability ``p``, from a seeded, portable mask.

    With ``q = 1 - p`` and ``keep`` the mask of mask stream v1 (``docs/spec.md``)::

        mode="inverted" (default, as every framework does):
            training: where(keep, x * s, 0) with s = dtype(1) / dtype(q)     eval: x
        mode="classic" (Srivastava et al. 2014, scaling at test time):
            training: where(keep, x, 0)                                      eval: x * dtype(q)

    The same ``(seed, p, shape, noise_shape, offset)`` gives the same mask on every backend.

    Args:
        x: a floating array (float16, bfloat16, float32, float64) of any registered framework;
            the result is of the same framework, dtype, shape and device. NumPy arrays and Python
            values run on the default backend (``XDROP_BACKEND``, ``xdrop.use_backend``).
        p: the probability of dropping an element, in ``[0, 1]``. ``p == 0`` returns ``x``;
            ``p == 1`` returns zeros (with zero gradient, never NaN).
        training: apply dropout (True) or the evaluation form (False).
        seed: an integer in ``[0, 2**64)``, an :class:`xdrop.Generator`, ``None`` for the next
            seed of the global generator (``xdrop.manual_seed``), or a seed array of ``x``'s
            framework — a 0-d integer, a uint32[2] ``(hi, lo)`` or a JAX key — which may be a
            traced value under ``jax.jit``, ``tf.function`` or ``torch.compile``. Seeds are drawn
            only in training; ``None`` and generators are refused inside a trace.
        mode: ``"inverted"`` or ``"classic"``.
        noise_shape: the shape the mask is drawn at, broadcast to ``x`` (TensorFlow/Keras rules):
            aligned to the right, missing leading entries and entries of 1 share one decision,
            ``None`` takes ``x``'s size. ``(batch, 1, 1, channels)`` is spatial dropout.
        offset: added to every element's counter, so a shard can draw its slice of a larger mask.
        return_mask: also return the boolean keep mask (True = kept), broadcast to ``x``'s shape.
        rng: ``"portable"`` (mask stream v1) or ``"native"`` (the framework's own generator:
            same API and edge cases, no cross-backend equality; ``offset`` must be 0). Default:
            ``xdrop.set_rng`` / ``XDROP_RNG``, else portable.

    Returns:
        ``y``, or ``(y, keep)`` with ``return_mask=True``. Dropped elements are exactly ``+0.0``
        whatever ``x`` holds there; ``x`` itself is never modified.

    Example:
        >>> import numpy as np, xdrop
        >>> xdrop.dropout(np.ones(6, np.float32), p=0.5, seed=0)
        array([0., 0., 2., 2., 0., 2.], dtype=float32)
        >>> xdrop.dropout(np.ones(3), p=0.5, training=False, mode="classic")
        array([0.5, 0.5, 0.5])
    """
    xp = backend_for(x)
    if not xp.is_array(x):
        x = xp.asarray(x)
    dtype = check_float_dtype(xp.dtype_name(x))
    rate = check_rate(p)
    is_training = check_flag("training", training)
    mode = check_mode(mode)
    generator = seeds.rng_kind(rng)
    shape = xp.shape(x)
    noise = check_noise_shape(noise_shape, shape)
    start = _check_offset(offset, noise, generator)
    check_flag("return_mask", return_mask)
    if is_training:
        check_scale_fits(rate, dtype, mode)
        y, keep = _training(xp, x, seed, rate, noise, start, generator, mode, return_mask)
    else:
        seeds.validate_seed(seed)
        y, keep = spec.dropout(xp, x, rate, _nothing_to_draw, mode=mode, training=False)
    if not return_mask:
        return y
    if keep is None:
        return y, xp.full_mask(shape, True, like=x)
    return y, xp.broadcast_to(keep, shape)


def _resolve_seed(xp: Backend, seed: object, generator: str, like: Any) -> int | Key | None:
    """The seed a call uses: key words for the portable stream; for the framework's generator an
    integer, key words, or None for its global generator. Generators advance here, once."""
    if generator == "portable":
        return seeds.seed_key(seed, xp, like)
    return seeds.native_seed(seed, xp, like)


def _training(
    xp: Backend,
    x: Array,
    seed: object,
    p: float,
    noise: tuple[int, ...],
    offset: int,
    generator: str,
    mode: str,
    return_mask: bool,
) -> tuple[Array, Array | None]:
    """Training dropout: the seed is resolved now (a training call draws one, whatever p), then
    a portable call is staged into one compiled step where the backend stages (JAX and
    TensorFlow outside their compilers); everything else runs op by op."""
    resolved = _resolve_seed(xp, seed, generator, x)
    # p == 0 returns x itself, never a copy. Only mask stream v1 is staged: a framework's own
    # generator may draw other bits once compiled (TensorFlow's Philox does under XLA), and
    # dropout_mask(rng="native") must give the mask that dropout draws
    if p > 0 and generator == "portable" and not xp.is_compiling(x):
        signature = (xp.shape(x), xp.dtype_name(x))  # one trace per staged step
        staged = _staged(xp, signature, p, noise, offset, mode, return_mask)
        if staged is not None:
            assert isinstance(resolved, tuple)  # portable seeds are key words
            y, keep = staged(x, resolved)  # the key words are traced: a new seed never recompiles
            return y, keep
    return _dropout(xp, x, resolved, p, noise, offset, generator, mode, return_mask)


def _dropout(
    xp: Backend,
    x: Array,
    seed: int | Key | None,
    p: float,
    noise: tuple[int, ...],
    offset: int,
    generator: str,
    mode: str,
    return_mask: bool,
) -> tuple[Array, Array | None]:
    """Portable masks of ``x``'s own shape are applied chunk by chunk as they are generated
    (eagerly); other masks are drawn whole, at the noise shape, and broadcast."""
    if generator == "native":
        draw_keep = functools.partial(xp.native_keep_mask, noise, 1.0 - p, seed, x)
        y, keep = spec.dropout(xp, x, p, draw_keep, mode=mode, training=True)
        return y, keep if return_mask else None
    assert isinstance(seed, tuple)  # portable seeds are key words
    if noise == xp.shape(x) and not xp.is_tracing(x):
        fused = kernel.dropout(xp, x, seed, p, offset, mode, return_mask)
        if fused is not None:  # one compiled pass where the backend has one (xdrop/kernel.py)
            return fused
        count = math.prod(noise)
        chunks = functools.partial(spec.keep_chunks, xp, seed, count, p, offset, like=x)
        return spec.dropout(
            xp, x, p, chunks, mode=mode, training=True, chunked=True, return_mask=return_mask
        )
    draw_keep = functools.partial(spec.keep_mask, xp, seed, noise, p, offset, like=x)
    y, keep = spec.dropout(xp, x, p, draw_keep, mode=mode, training=True)
    return y, keep if return_mask else None


@functools.lru_cache(maxsize=256)
def _staged(
    xp: Backend,
    signature: tuple[tuple[int, ...], str],
    p: float,
    noise: tuple[int, ...],
    offset: int,
    mode: str,
    return_mask: bool,
) -> Callable[[Array, Key], tuple[Array, Array | None]] | None:
    """The backend's staged step of portable dropout for inputs of this shape and dtype and these
    Python arguments, or None where the backend does not stage."""

    def step(x: Array, key: Key) -> tuple[Array, Array | None]:
        return _dropout(xp, x, key, p, noise, offset, "portable", mode, return_mask)

    return xp.stage(step)


def _nothing_to_draw() -> Array:
    raise AssertionError("evaluation draws no mask")


@called_as_is
def dropout_mask(
    shape: int | Sequence[int],
    p: float,
    *,
    seed: seeds.SeedLike = None,
    offset: int = 0,
    like: Any = None,
    rng: str | None = None,
) -> Array:
    """The boolean keep mask (True = kept) that ``dropout`` draws for an input of ``shape``.

    Element ``i`` (row-major) is kept when ``bits(seed, offset + i) < T`` with
    ``T = ceil(float32(1 - p) * 2**23) << 9`` (``docs/spec.md``).

    Args:
        shape: the mask's shape (an integer for 1-d).
        p: the drop probability, in ``[0, 1]``.
        seed: as for :func:`dropout`; a generator or the global one is advanced once.
        offset: added to every element's counter.
        like: an array whose framework (and device) the mask is made on; if None, the seed
            array's framework, else the default backend.
        rng: ``"portable"`` or ``"native"``, as for :func:`dropout`.

    Example:
        >>> import xdrop
        >>> xdrop.dropout_mask((2, 3), 0.5, seed=0)
        array([[False, False,  True],
               [ True, False,  True]])
    """
    size = check_shape(shape)
    rate = check_rate(p)
    generator = seeds.rng_kind(rng)
    start = _check_offset(offset, size, generator)
    xp = backend_for(seed if like is None else like)
    resolved = _resolve_seed(xp, seed, generator, like)
    if generator == "native":
        return xp.native_keep_mask(size, 1.0 - rate, resolved, like)
    assert isinstance(resolved, tuple)  # portable seeds are key words
    return spec.keep_mask(xp, resolved, size, rate, start, like=like)


def _check_offset(offset: object, noise_shape: tuple[int, ...], generator: str) -> int:
    start = check_offset(offset)
    check_counter_range(start, math.prod(noise_shape))
    if generator == "native" and start:
        raise bad_value("offset", offset, '0 with rng="native" (offsets index the portable stream)')
    return start
