"""The public functions: validate once, pick the backend, run the spec."""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypedDict, overload

import numpy as np
import numpy.typing as npt

from xdrop import defaults, kernel, mc, seeds, sharding, spec
from xdrop.errors import XdropError, bad_value
from xdrop.fused import FusedCall
from xdrop.protocol import Array, Backend, Dim, Key, NativeBackend, Words, require
from xdrop.registry import backend_for
from xdrop.tracing import cached_host_constant, called_as_is
from xdrop.typing import ArrayT, DTypeT, Mode, PythonValues, Rng, ShapeT
from xdrop.validation import (
    Rate,
    as_input_array,
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

STAGED_CACHE_SIZE = 64
"""Staged steps kept per process: each holds a compiled program (XLA's take megabytes)."""
COMPILE_AFTER = 2
"""Calls with one program after which a backend that can stage any shape compiles it alone."""


@dataclasses.dataclass(frozen=True)
class DropoutPlan:
    """What a portable training call computes, apart from its arrays and numbers: the program.

    It keys the staged steps, so that a new seed, offset or rate never compiles anything."""

    shape: tuple[int | None, ...]
    """``x``'s shape as known now (None: a size known only at run time)."""
    dtype: str
    noise: tuple[int | None, ...]
    """The mask's shape: entries 1 are shared, None take ``x``'s run-time size."""
    mode: str
    return_mask: bool

    def noise_dims(self, xp: Backend, x: Array) -> tuple[Dim, ...]:
        """The mask's shape as dims: ``x``'s run-time size where the noise shape says None."""
        if None not in self.noise:
            return self.noise
        sizes = xp.runtime_shape(x)
        return tuple(
            size if entry is None else entry for entry, size in zip(self.noise, sizes, strict=True)
        )

    def any_shape(self) -> DropoutPlan:
        """The plan for every shape of this rank: sizes known at run time, shared axes kept."""
        noise = tuple(1 if entry == 1 else None for entry in self.noise)
        return dataclasses.replace(self, shape=(None,) * len(self.shape), noise=noise)

    @property
    def is_elementwise(self) -> bool:
        """Whether the mask has ``x``'s own static shape, so it can be applied chunk by chunk."""
        return self.noise == self.shape and None not in self.shape


if TYPE_CHECKING:
    from typing_extensions import Unpack

    class _DropoutOptions(TypedDict, total=False):
        """The keywords of :func:`dropout` that leave its return type as it is."""

        training: bool
        seed: seeds.SeedLike
        mode: Mode
        noise_shape: Sequence[int | None] | None
        offset: int | sharding.Block
        rng: Rng | None

    class _MaskOptions(TypedDict, total=False):
        """The keywords of :func:`dropout_mask` but ``like``."""

        seed: seeds.SeedLike
        offset: int | sharding.Block
        rng: Rng | None


# the result's type follows x's type and return_mask; Python values give Any
@overload
def dropout(
    x: PythonValues,
    p: float | Any = ...,
    *,
    return_mask: bool = ...,
    **options: Unpack[_DropoutOptions],
) -> Any: ...
@overload
def dropout(
    x: ArrayT,
    p: float | Any = ...,
    *,
    return_mask: Literal[False] = ...,
    **options: Unpack[_DropoutOptions],
) -> ArrayT: ...
@overload
def dropout(
    x: np.ndarray[ShapeT, DTypeT],
    p: float | Any = ...,
    *,
    return_mask: Literal[True],
    **options: Unpack[_DropoutOptions],
) -> tuple[np.ndarray[ShapeT, DTypeT], np.ndarray[ShapeT, np.dtype[np.bool_]]]: ...
@overload
def dropout(
    x: ArrayT,
    p: float | Any = ...,
    *,
    return_mask: Literal[True],
    **options: Unpack[_DropoutOptions],
) -> tuple[ArrayT, ArrayT]: ...
@overload
def dropout(
    x: ArrayT, p: float | Any = ..., *, return_mask: bool, **options: Unpack[_DropoutOptions]
) -> ArrayT | tuple[ArrayT, Any]: ...
@called_as_is
def dropout(
    x: Any,
    p: float | Any = 0.5,
    *,
    training: bool = True,
    seed: seeds.SeedLike = None,
    mode: Mode = "inverted",
    noise_shape: Sequence[int | None] | None = None,
    offset: int | sharding.Block = 0,
    return_mask: bool = False,
    rng: Rng | None = None,
) -> Any:
    """Zero each element of ``x`` with probability ``p``, from a seeded, portable mask.

    With ``q = 1 - p`` and ``keep`` the mask of mask stream v1 (``docs/spec.md``)::

        mode="inverted" (default, as every framework does):
            training: where(keep, x * s, 0) with s = dtype(1) / dtype(q)
            eval:     x
        mode="classic" (Srivastava et al. 2014, scaling at test time):
            training: where(keep, x, 0)
            eval:     x * dtype(q)

    The same ``(seed, p, shape, noise_shape, offset)`` gives the same mask on every backend.

    Args:
        x: a dense floating array (float16, bfloat16, float32, float64; not a sparse or nested
            torch tensor) of any registered framework; the result is of the same framework,
            dtype, shape and device. NumPy arrays and Python values run on the default backend
            (``XDROP_BACKEND``, ``xdrop.use_backend``). Sizes known only at run time (``None``
            in ``tf.function``, symbolic under ``jax.export``, dynamic under ``torch.compile``)
            are fine.
        p: the probability of dropping an element, in ``[0, 1]``: a Python float, or a 0-d float
            array of ``x``'s framework, which may be traced (a rate schedule, a Keras variable)
            and never recompiles. ``p == 0`` returns ``x``; ``p == 1`` returns zeros (with zero
            gradient, never NaN). A traced ``p`` cannot raise: outside ``[0, 1]`` the output is
            NaN.
        training: apply dropout (True) or the evaluation form (False).
        seed: an integer in ``[0, 2**64)``, an :class:`xdrop.Generator`, ``None`` for the next
            seed of the global generator (``xdrop.manual_seed``), or a seed array of ``x``'s
            framework — a 0-d integer, a uint32[2] ``(hi, lo)`` or a JAX key — which may be a
            traced value under ``jax.jit``, ``tf.function`` or ``torch.compile``, and whose value
            can be read where ``x``'s can (not on torch's meta device beside a real ``x``).
            Seeds are drawn only in training; ``None`` and generators are refused inside a
            trace; every argument is checked alike in training and evaluation.
        mode: ``"inverted"`` or ``"classic"``.
        noise_shape: the shape the mask is drawn at, broadcast to ``x`` (TensorFlow/Keras rules):
            aligned to the right, missing leading entries and entries of 1 share one decision,
            ``None`` takes ``x``'s size. ``(batch, 1, 1, channels)`` is spatial dropout.
        offset: added to every element's counter, so a shard can draw its slice of a larger mask;
            or an :class:`xdrop.Block` (``x`` is a block of a larger tensor, contiguous or not:
            each element draws its counter there; ``docs/distributed.md``). With a noise shape,
            a Block places the mask instead, its ``global_shape`` 1 on the axes the noise shape
            shares: ``Block((n, 1), (start, 0))`` draws one decision per row at its global row.
            A PyTorch DTensor draws its global counters on each rank (its ``noise_shape`` is
            given against its global shape), and comes back with the same placements; so does
            the plain local output of a tensor-parallel plan (``ColwiseParallel()``), recognised
            by its autograd record, or refused with :class:`xdrop.TensorParallelError` where
            other operations stand between (``docs/distributed.md``).
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
    shard = sharding.local_shard_of(x, offset)
    if shard is not None:  # x is to_local() of a sharded DTensor: drawn as that DTensor
        result = dropout(
            shard,
            p,
            training=training,
            seed=seed,
            mode=mode,
            noise_shape=sharding.global_noise_shape(noise_shape, x, shard),
            offset=offset,
            return_mask=return_mask,
            rng=rng,
        )
        return tuple(part.to_local() for part in result) if return_mask else result.to_local()
    if (  # the common call: a Python float p and int seed, every other argument left as it is
        type(p) is float
        and type(seed) is int
        and training is True
        and noise_shape is None
        and type(offset) is int
        and offset == 0
        and (return_mask is False or return_mask is True)
        and type(mode) is str
        and mode == "inverted"
        and (rng is None or (type(rng) is str and rng == "portable"))
    ):
        fused = _fused_common_call(x, p, seed, return_mask, rng is None)
        if fused is not None:
            return fused if return_mask else fused[0]
    if sharding.is_dtensor(x):  # each rank: its local tensor, drawing the counters it has in x
        block, local_noise = sharding.dtensor_mask_block(x, check_offset(offset), noise_shape)
        local = dropout(
            x.to_local(),
            p,
            training=training,
            seed=seed,
            mode=mode,
            noise_shape=local_noise,
            offset=block,
            return_mask=return_mask,
            rng=rng,
        )
        return sharding.dtensor_result(x, local)
    xp = backend_for(x)
    x = as_input_array(xp, x)
    dtype = check_float_dtype(xp, x)
    rate = check_rate(p, xp, like=x)
    is_training = check_flag("training", training)
    mode = check_mode(mode)
    generator = seeds.rng_kind(rng)
    shape = xp.shape(x)
    noise = check_noise_shape(noise_shape, shape)
    start = check_offset_argument(xp, offset, noise, generator, shape, x)
    plan = DropoutPlan(shape, dtype, noise, mode, check_flag("return_mask", return_mask))
    if is_training:
        mc.check_drawn_per_sample(noise, shape)
        y, keep = _training(xp, x, seed, rate, start, generator, plan)
    else:
        seeds.validate_seed(seed, xp, x)
        y, keep = _evaluation(xp, x, rate, plan), None
    if not return_mask:
        return y
    if keep is None:
        return y, xp.full_mask(xp.runtime_shape(x), True, like=x)
    return y, keep if plan.is_elementwise else xp.broadcast_to(keep, xp.runtime_shape(x))


def _fused_common_call(
    x: object, p: float, seed: int, return_mask: bool, default_rng: bool
) -> tuple[Array, Array | None] | None:
    """:func:`dropout`'s training call in inverted mode at offset 0, with every argument valid,
    as one pass of the backend's fused kernel where it has one (NumPy arrays, CPU torch and
    TensorFlow tensors, eagerly): ``(y, keep or None)``, the same values as the general path, which the call takes
    instead where this returns None. Arguments the general path would refuse are left to it,
    so that its errors, in its order, are the only ones."""
    if not 0.0 < p < 1.0 or seed >= spec.SEED_COUNT or seed < 0:
        return None
    xp = backend_for(x)
    if type(xp).fused_dropout is Backend.fused_dropout or xp.is_tracing(x):
        return None
    if default_rng and defaults.RNG.get() not in (None, "portable"):
        return None  # the native generator, or an XDROP_RNG that the general path refuses
    try:
        x = as_input_array(xp, x)
    except XdropError:
        return None
    dtype = xp.dtype_name(x)
    if dtype not in spec.FLOAT_DTYPES:
        return None
    factor = spec.inverted_scale(p, dtype)
    if math.isinf(factor):  # the general path says why
        return None
    threshold = spec.keep_count(p) << (32 - spec.UNIFORM_BITS)
    words = divmod(seed, spec.WORD_COUNT)
    return xp.fused_dropout(x, FusedCall(words, 0, threshold, factor, return_mask))


def _evaluation(xp: Backend, x: Array, rate: Rate, plan: DropoutPlan) -> Array:
    """``x`` (inverted), or ``x * dtype(1 - p)`` (classic)."""
    if plan.mode == "inverted":
        return x
    if isinstance(rate, float):
        return x if rate == 0 else xp.scale(x, spec.rounded(1.0 - rate, plan.dtype))
    _, factor = spec.rate_constants(xp, rate, plan.dtype, plan.mode, training=False)
    return xp.scale(x, factor)


def _training(
    xp: Backend,
    x: Array,
    seed: object,
    rate: Rate,
    start: int | sharding.Block,
    generator: str,
    plan: DropoutPlan,
) -> tuple[Array, Array | None]:
    """Training dropout: the seed is resolved now (a training call draws one, whatever p); then
    a portable call runs as a staged step where the backend stages (JAX and TensorFlow outside
    their compilers), op by op elsewhere."""
    if isinstance(rate, float):  # checked before a generator gives up a seed to the call
        check_scale_fits(rate, plan.dtype, plan.mode)
    resolved = resolve_seed(xp, seed, generator, x)
    if isinstance(rate, float):
        if rate == 0:
            return x, None  # x itself, never a copy
        kept_count: Words | int = spec.keep_count(rate)
        factor: float | Array | None = spec.training_factor(rate, plan.dtype, plan.mode)
    else:
        kept_count, factor = spec.rate_constants(xp, rate, plan.dtype, plan.mode, training=True)
    if generator == "native":
        native = native_backend(xp)
        probability = spec.keep_probability(xp, rate)
        if plan.is_elementwise and not plan.return_mask and not xp.is_tracing(x):
            host_factor = factor if factor is None or isinstance(factor, float) else None
            if isinstance(probability, float) and host_factor is factor:
                y = native.native_dropout(x, probability, resolved, host_factor)
                if y is not None:
                    return y, None
        noise = plan.noise_dims(xp, x)
        draw_keep = functools.partial(native.native_keep_mask, noise, probability, resolved, x)
        return spec.dropout(xp, x, draw_keep, factor)
    assert resolved is not None  # portable seeds are host integers or key words
    if _fuses_eagerly(xp, x, plan, start, kept_count):  # eager: C and the factor are host values
        assert isinstance(start, int) and isinstance(kept_count, int) and not _is_array(factor)
        fused = kernel.dropout(xp, x, resolved, start, kept_count, factor, plan.return_mask)
        if fused is not None:  # one compiled pass where the backend has one (xdrop/kernel.py)
            return fused
    staged = None if isinstance(start, sharding.Block) else _staged_step(xp, x, plan)
    if staged is None:
        return _portable(xp, plan, x, resolved, start, kept_count, factor)
    assert isinstance(start, int)  # blocks are not staged
    if factor is None and plan.mode == "inverted":  # p == 1: nothing kept, so 0 is as good
        factor = 0.0
    arguments = (
        spec.key_words(xp, start, x),
        kept_count if not isinstance(kept_count, int) else xp.word(kept_count, x),
        factor if not isinstance(factor, float) else _factor_array(xp, factor, plan.dtype, x),
    )
    y, keep = staged(x, seeds.key_of(resolved, xp, x), *arguments)
    return y, keep if plan.return_mask else None


def _portable(
    xp: Backend,
    plan: DropoutPlan,
    x: Array,
    seed: int | Key,
    start: Key | int | sharding.Block,
    kept_count: Words | int,
    factor: float | Array | None,
) -> tuple[Array, Array | None]:
    """Portable dropout. A mask of ``x``'s own shape, known in full, is applied chunk by chunk as
    it is generated (eagerly); other masks are drawn whole, at the noise shape, and broadcast."""
    key = seeds.key_of(seed, xp, x)
    if _fuses_eagerly(xp, x, plan, start, kept_count):  # as the kernel would, chunk by chunk
        assert isinstance(start, int)
        count = xp.size(plan.noise)
        chunks = functools.partial(spec.keep_chunks, xp, key, count, kept_count, start, like=x)
        return spec.dropout(xp, x, chunks, factor, chunked=True, return_mask=plan.return_mask)
    noise = plan.noise_dims(xp, x)
    if isinstance(start, sharding.Block):  # x is a block of a larger tensor
        draw_keep = functools.partial(
            sharding.block_keep_mask, xp, key, start, noise, kept_count, x
        )
    else:
        draw_keep = functools.partial(spec.keep_mask, xp, key, noise, kept_count, start, like=x)
    y, keep = spec.dropout(xp, x, draw_keep, factor)
    return y, keep if plan.return_mask else None


def _fuses_eagerly(
    xp: Backend, x: Array, plan: DropoutPlan, start: object, kept_count: object
) -> bool:
    """Whether the mask is ``x``'s own shape, known in full, at an integer offset, eagerly, with
    the rate on the host: then it can be applied as it is generated, by the fused kernel or chunk
    by chunk. A rate still an array here is traced (an eager one has been read), even where ``x``
    is not: a concrete ``x`` closed over by a function of ``p`` that JAX transforms."""
    return (
        plan.is_elementwise
        and isinstance(start, int)
        and isinstance(kept_count, int)
        and not xp.is_tracing(x)
    )


def _staged_step(xp: Backend, x: Array, plan: DropoutPlan) -> Callable[..., Any] | None:
    """The backend's staged step for ``plan``, or None where it does not stage: inside a compiler
    that fuses anyway, or for shapes known only at run time (the graph runs as it is).

    Eagerly, a backend that can stage any shape of a rank runs a program seen fewer than
    ``COMPILE_AFTER`` times there, so that many one-off shapes cost no compilation each. Inside
    a trace (a ``tf.function`` without XLA) the step is embedded once and runs at every call of
    the graph: it is always the fused one, whatever ran before in the process."""
    if not _stages(type(xp)) or xp.is_compiling(x):
        return None
    return_mask = plan.return_mask or xp.staged_step_returns_mask(x)
    if None in plan.shape:  # a mask of x's own shape is x's flat counters: pad, then stage
        elementwise = plan.noise == plan.shape
        return _staged_padded(xp, plan.dtype, plan.mode, return_mask) if elementwise else None
    if not xp.is_tracing(x) and _calls.count(plan) < COMPILE_AFTER:
        general = _staged(xp, plan.any_shape(), return_mask, any_shape=True)
        if general is not None:
            return general
    return _staged(xp, plan, return_mask, any_shape=False)


@cached_host_constant  # torch.compile would warn about, and trace through, functools.cache
def _stages(backend: type[Backend]) -> bool:
    """Whether a backend stages eager calls at all (most run them as they are)."""
    return backend.stage is not Backend.stage


@functools.lru_cache(maxsize=STAGED_CACHE_SIZE)
def _staged(
    xp: Backend, plan: DropoutPlan, return_mask: bool, any_shape: bool
) -> Callable[..., Any] | None:
    """One staged step per plan, returning the mask if ``return_mask``: seed, offset, keep count
    and factor are its arguments."""
    plan = dataclasses.replace(plan, return_mask=return_mask)

    def step(
        x: Array, key: Key, start: Key, kept_count: Words, factor: Array | None
    ) -> tuple[Array, Array | None]:
        return _portable(xp, plan, x, key, start, kept_count, factor)

    return xp.stage_any_shape(step) if any_shape else xp.stage(step, return_mask)


@functools.lru_cache(maxsize=STAGED_CACHE_SIZE)
def _staged_padded(
    xp: Backend, dtype: str, mode: str, return_mask: bool
) -> Callable[..., Any] | None:
    """One staged step per dtype, mode and ``return_mask`` for arrays of sizes known only at run
    time, with a mask of their own shape: a flat ``x`` of ``n`` elements draws counters
    ``offset + i``, ``i < n``, the same on any longer flat array, so the backend may pad ``x``
    to one of a few sizes, run one compiled step per size and keep the first ``n`` results."""
    plan = DropoutPlan((None,), dtype, (None,), mode, return_mask)

    def step(
        x: Array, key: Key, start: Key, kept_count: Words, factor: Array | None
    ) -> tuple[Array, Array | None]:
        return _portable(xp, plan, x, key, start, kept_count, factor)

    return xp.stage_padded(step, return_mask)


class _CallCounts:
    """How often each recent program was called (the most recent ``size`` programs)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.counts: collections.OrderedDict[DropoutPlan, int] = collections.OrderedDict()

    def count(self, plan: DropoutPlan) -> int:
        """How many calls with ``plan`` came before this one (which is counted now)."""
        seen = self.counts.pop(plan, 0)
        self.counts[plan] = seen + 1
        if len(self.counts) > self.size:
            self.counts.popitem(last=False)
        return seen


_calls = _CallCounts(1024)


def _is_array(value: object) -> bool:
    return value is not None and not isinstance(value, float)


def _factor_array(xp: Backend, factor: float, dtype: str, like: Array) -> Array:
    """A host factor as a 0-d array of ``dtype`` (exact: it is representable there); eager ones
    are kept, a graph's belong to that graph."""
    if xp.is_tracing(like):
        return xp.asarray(np.float64(factor), dtype)
    return _eager_factor_array(xp, factor, dtype)


@functools.lru_cache(maxsize=1024)
def _eager_factor_array(xp: Backend, factor: float, dtype: str) -> Array:
    return xp.asarray(np.float64(factor), dtype)


def resolve_seed(
    xp: Backend, seed: object, generator: str, like: Any, name: str = "x"
) -> int | Key | None:
    """The seed a call uses: a host integer or key words; for the framework's generator also None
    for its global generator. Generators advance here, once. ``like`` is the call's array,
    called ``name`` in messages."""
    if generator == "portable":
        return seeds.resolve(seed, xp, like, name)
    return seeds.native_seed(seed, native_backend(xp), like, name)


def native_backend(xp: Backend) -> NativeBackend:
    """``xp`` as a backend with its framework's own generator, or the error that says to use the
    portable one."""
    return require(xp, NativeBackend, 'rng="native"', 'use rng="portable"')


@overload
def dropout_mask(
    shape: int | Sequence[int | None], p: float | Any, **options: Unpack[_MaskOptions]
) -> Any: ...
@overload
def dropout_mask(
    shape: int | Sequence[int | None],
    p: float | Any,
    *,
    like: np.ndarray[Any, Any],
    **options: Unpack[_MaskOptions],
) -> npt.NDArray[np.bool_]: ...
@overload
def dropout_mask(
    shape: int | Sequence[int | None],
    p: float | Any,
    *,
    like: ArrayT,
    **options: Unpack[_MaskOptions],
) -> ArrayT: ...
@called_as_is
def dropout_mask(
    shape: int | Sequence[int | None],
    p: float | Any,
    *,
    seed: seeds.SeedLike = None,
    offset: int | sharding.Block = 0,
    like: Any = None,
    rng: Rng | None = None,
) -> Array:
    """The boolean keep mask (True = kept) that ``dropout`` draws for an input of ``shape``.

    Element ``i`` (row-major) is kept when ``bits(seed, offset + i) >> 9 < C`` with
    ``C = ceil(float32(1 - p) * 2**23)`` (``docs/spec.md``).

    Args:
        shape: the mask's shape (an integer for 1-d). With ``like``, an entry may be ``None``
            (or the framework's run-time size): ``like``'s size on that axis.
        p: the drop probability, in ``[0, 1]``: a Python float or a 0-d float array of ``like``'s
            framework (traceable).
        seed: as for :func:`dropout`; a generator or the global one is advanced once.
        offset: added to every element's counter, or an :class:`xdrop.Block` (the mask of a
            block of a larger tensor).
        like: an array whose framework (and device) the mask is made on; if None, the seed
            array's framework, else the default backend.
        rng: ``"portable"`` or ``"native"``, as for :func:`dropout`.

    Example:
        >>> import xdrop
        >>> xdrop.dropout_mask((2, 3), 0.5, seed=0)
        array([[False, False,  True],
               [ True, False,  True]])
    """
    return keep_mask(shape, p, seed=seed, offset=offset, like=like, rng=rng, name="like")


def keep_mask(
    shape: int | Sequence[int | None],
    p: float | Any,
    *,
    seed: seeds.SeedLike,
    offset: int | sharding.Block,
    like: Any,
    rng: Rng | None,
    name: str,
) -> Array:
    """:func:`dropout_mask`, whose messages call ``like`` ``name``: the dropout family draws the
    mask of its ``x`` with it."""
    xp = backend_for(seed if like is None else like)
    seeds.check_like(like, xp)
    size = check_shape(shape, xp.shape(like) if xp.is_array(like) else None)
    rate = check_rate(p, xp, like=like, name=name)
    generator = seeds.rng_kind(rng)
    start = check_offset_argument(xp, offset, size, generator, size, like, name)
    dims = DropoutPlan(size, "float32", size, "inverted", False).noise_dims(xp, like)
    resolved = resolve_seed(xp, seed, generator, like, name)
    if isinstance(rate, float):
        kept_count: Words | int = spec.keep_count(rate)
    else:
        kept_count, _ = spec.rate_constants(xp, rate, "float32", "inverted", training=True)
    if generator == "native":
        native = native_backend(xp)
        return native.native_keep_mask(dims, spec.keep_probability(xp, rate), resolved, like)
    assert resolved is not None  # portable seeds are host integers or key words
    key = seeds.key_of(resolved, xp, like)
    if isinstance(start, sharding.Block):
        return sharding.block_keep_mask(xp, key, start, dims, kept_count, like)
    return spec.keep_mask(xp, key, dims, kept_count, start, like=like)


def check_offset_argument(
    xp: Backend,
    offset: object,
    noise_shape: tuple[int | None, ...],
    generator: str,
    shape: tuple[int | None, ...],
    like: Array | None,
    name: str = "x",
) -> int | sharding.Block:
    """``offset`` checked for a call on an array of ``shape`` with a mask of ``noise_shape``: an
    integer whose counters fit, or a :class:`~xdrop.Block` that holds the array (resolved for
    ``xp``). With a noise shape, the Block may instead place the mask itself: its logical shape
    is then 1 on every axis the noise shape shares. Both are portable: ``rng="native"`` takes
    only 0. ``like`` is the call's array, called ``name`` in messages (None: none): a Block of
    :func:`~xdrop.shard_map_block` must be of its own partition.

    Every function that takes a Block checks it here, so that none can skip a check."""
    if isinstance(offset, sharding.Block):
        offset = offset.resolve(xp, like, name)
        sharding.check_shard_map_axes(offset, like, name)
        shared = [
            axis
            for axis, (entry, size) in enumerate(zip(noise_shape, shape, strict=True))
            if entry != size
        ]
        whole = offset.global_shape
        if shared and len(whole) == len(shape) and all(whole[axis] == 1 for axis in shared):
            offset.check_fits(noise_shape, "the noise shape")
        else:
            offset.check_fits(shape, name)
            if shared:
                raise bad_value(
                    "noise_shape",
                    noise_shape,
                    f"{name}'s shape (or None) with a Block offset, or 1 only on axes where the "
                    "Block's global_shape is 1",
                )
        if generator == "native":
            raise bad_value("offset", offset, 'an integer with rng="native" (a Block is portable)')
        return offset
    start = check_offset(offset)
    check_counter_range(start, noise_shape)
    if generator == "native" and start:
        raise bad_value("offset", offset, '0 with rng="native" (offsets index the portable stream)')
    return start
