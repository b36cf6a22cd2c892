"""The dropout family on mask stream v1: alpha dropout, Gaussian dropout, DropPath, DropBlock.

Each function validates like :func:`xdrop.dropout`, takes the same seeds (traced ones included),
works on every backend and keeps the framework's autograd. Masks come from the stream of
``docs/spec.md``: alpha dropout and DropPath draw exactly :func:`xdrop.dropout`'s mask, DropBlock
draws its block corners as the units that dropout at rate ``gamma`` drops, and Gaussian dropout
turns the stream's two words per counter into a normal value (``spec.normals``). ``docs/family.md``
states each formula and how it compares with the frameworks' own versions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from xdrop import api, mc, seeds, sharding, spec
from xdrop.errors import Shown, bad_type, bad_value
from xdrop.protocol import Array, Backend, Dim, FamilyBackend, Key, Words, require
from xdrop.registry import backend_for
from xdrop.tracing import called_as_is, read_on_the_host
from xdrop.typing import Rng
from xdrop.validation import (
    SIZES_KNOWN,
    Rate,
    as_input_array,
    as_real,
    check_choice,
    check_counter_range,
    check_flag,
    check_float_dtype,
    check_noise_shape,
    check_offset,
    check_rate,
    is_integer,
)

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
ALPHA_PRIME = -SELU_SCALE * SELU_ALPHA
"""``alpha' = -lambda * alpha = -1.7580993408473766``: the value SELU tends to for large negative
inputs, which alpha dropout sets dropped units to."""
DROP_PATH_MODES = ("row", "batch")
DATA_FORMATS = ("channels_first", "channels_last")


# -- alpha dropout ---------------------------------------------------------------------------------
@called_as_is
def alpha_dropout(
    x: Any,
    p: float | Any = 0.5,
    *,
    training: bool = True,
    seed: seeds.SeedLike = None,
    noise_shape: Sequence[int | None] | None = None,
    offset: int | sharding.Block = 0,
    rng: Rng | None = None,
) -> Any:
    """Alpha dropout (Klambauer et al., NeurIPS 2017): dropout that keeps SELU activations at zero
    mean and unit variance.

    With ``keep`` exactly :func:`xdrop.dropout`'s mask for the same arguments, ``q = 1 - p`` and
    ``alpha' = -1.7580993408473766``::

        a = (q + alpha'**2 * q * p) ** -0.5        b = -a * alpha' * p
        training: a * where(keep, x, alpha') + b              evaluation: x

    ``a``, ``b`` and ``alpha'`` are rounded once to ``x``'s dtype; the select, the product and the
    sum are IEEE operations, so every backend gives the same bits (a compiler that fuses the
    product and the sum into one FMA may differ by an ulp). ``p == 0`` returns ``x``, ``p == 1``
    zeros (as ``torch.nn.AlphaDropout`` does), with zero gradients.

    Args:
        x: a floating array of any registered framework (as for :func:`xdrop.dropout`).
        p: the drop probability in ``[0, 1]``: a Python float or a 0-d float array (traceable).
        training: apply alpha dropout (True) or return ``x`` (False).
        seed, noise_shape, offset, rng: as for :func:`xdrop.dropout`; ``noise_shape=(batch, 1,
            features)`` shares one mask over time.

    Example:
        >>> import numpy as np
        >>> y = xdrop.alpha_dropout(np.zeros(4, np.float32), 0.5, seed=0)
        >>> y                               # dropped: a * alpha' + b; kept: b
        array([-0.7791938 , -0.7791938 ,  0.77919394,  0.77919394], dtype=float32)
        >>> xdrop.dropout_mask(4, 0.5, seed=0)
        array([False, False,  True,  True])
    """
    options = {"training": training, "seed": seed, "rng": rng}
    sharded = _on_sharded(alpha_dropout, x, p, offset, noise_shape, options)
    if sharded is not None:
        return sharded
    xp, x, dtype, rate = _common(x, p)
    if isinstance(rate, float) and 0 < rate < 1:
        constants = _host_alpha_constants(rate, dtype)
        if not all(map(math.isfinite, constants)):
            allowed = (
                f"small enough that a and b = {constants} are finite in {dtype} (use a wider dtype)"
            )
            raise bad_value("p", p, allowed)
    generator = seeds.rng_kind(rng)
    noise = check_noise_shape(noise_shape, xp.shape(x))
    start = _check_offset(xp, x, offset, noise, generator)
    if not check_flag("training", training):
        seeds.validate_seed(seed, xp, x)
        return x
    family = require(xp, FamilyBackend, "alpha_dropout in training")
    mc.check_drawn_per_sample(noise, xp.shape(x))
    keep = api.keep_mask(noise, rate, seed=seed, offset=start, like=x, rng=rng, name="x")
    if isinstance(rate, float):
        if rate == 0:
            return x
        if rate == 1:
            return family.select(keep, x)  # nothing kept: +0.0 everywhere, zero gradient
        scale, shift = constants
    else:
        scale, shift = _alpha_constants(family, rate, dtype)
    dropped = family.where(keep, x, spec.rounded(_alpha_prime(), dtype))
    return family.add(family.multiply(dropped, scale), shift)


def _host_alpha_constants(p: float, dtype: str) -> tuple[float, float]:
    """``(a, b)`` of a host rate in ``(0, 1)``, rounded to ``x``'s dtype (infinite where they
    overflow it: float16 near ``p = 1``)."""
    q, prime = 1.0 - p, _alpha_prime()
    a = (q + prime**2 * q * p) ** -0.5
    return spec.rounded(a, dtype), spec.rounded(-a * prime * p, dtype)


def _alpha_prime() -> float:
    # torch.compile(dynamic=True) traces a module's floats as symbols, whose host arithmetic
    # it cannot always do (a power of a negative one): read as a value, it is a constant
    return read_on_the_host(ALPHA_PRIME)


def _alpha_constants(xp: FamilyBackend, p: Array, dtype: str) -> tuple[Array, Array]:
    """``(a, b)`` of a rate held in a 0-d array (traced), in ``x``'s dtype; 0 for ``p == 1``,
    NaN for a rate outside ``[0, 1]``."""
    compute = "float64" if xp.has_float64() else "float32"
    rate = xp.astype(p, compute)
    q = xp.subtract(1.0, rate)
    prime = _alpha_prime()
    variance = xp.multiply(q, xp.add(xp.multiply(rate, prime**2), 1.0))
    nothing_kept = xp.equal(q, 0.0)
    a = xp.where(nothing_kept, 0.0, xp.divide(1.0, xp.sqrt(xp.where(nothing_kept, 1.0, variance))))
    a = xp.multiply(a, _one_or_nan(xp, rate))
    b = xp.multiply(xp.multiply(a, rate), -prime)
    return xp.astype(a, dtype), xp.astype(b, dtype)


# -- Gaussian dropout ------------------------------------------------------------------------------
@called_as_is
def gaussian_dropout(
    x: Any,
    p: float | Any = 0.5,
    *,
    training: bool = True,
    seed: seeds.SeedLike = None,
    noise_shape: Sequence[int | None] | None = None,
    offset: int | sharding.Block = 0,
    rng: Rng | None = None,
) -> Any:
    """Gaussian dropout (Srivastava et al. 2014, section 10): multiplicative noise of mean 1 and
    the variance ``p / (1 - p)`` of inverted dropout's factor::

        training:   x * dtype(1 + sigma * z),  sigma = float32(sqrt(p / (1 - p)))
        evaluation: x

    ``z`` is the standard normal of ``docs/spec.md`` ("Normals"): Box-Muller on the two Threefry
    words of each counter, in float32, drawn at the noise shape and broadcast. The words are the
    same on every backend; ``z`` may differ by the ulps of the framework's ``log`` and ``cos``
    (at most ``2**-20 * max(1, |z|)``, tested). ``1 + sigma * z`` is formed in float32 and rounded
    once to ``x``'s dtype. ``p == 0`` returns ``x``.

    Args:
        x: a floating array of any registered framework.
        p: in ``[0, 1)`` (``p == 1`` has infinite variance): a Python float or a 0-d float array
            (traceable; a traced ``p >= 1`` gives a non-finite output).
        training: apply the noise (True) or return ``x`` (False).
        seed, noise_shape, offset: as for :func:`xdrop.dropout` (the counters are the same; the
            values are normals instead of a mask, and a :class:`xdrop.Block` gives each element
            the normal it has in the whole tensor). Keras' ``GaussianDropout`` is this without
            a noise shape.
        rng: as for :func:`xdrop.dropout`: ``"native"`` draws ``z`` from the framework's own
            generator (``torch.randn``, ``tf.random.stateless_normal``, ``jax.random.normal``,
            NumPy's ``standard_normal``), seeded as dropout's native masks are.

    Example:
        >>> import numpy as np
        >>> xdrop.gaussian_dropout(np.ones(3, np.float32), 0.5, seed=0)
        array([-0.06545269,  1.5836947 ,  0.82184637], dtype=float32)
    """
    options = {"training": training, "seed": seed, "rng": rng}
    sharded = _on_sharded(gaussian_dropout, x, p, offset, noise_shape, options)
    if sharded is not None:
        return sharded
    xp, x, dtype, rate = _common(x, p, "[0, 1)")
    if isinstance(rate, float) and rate == 1:
        raise bad_value("p", p, "a real number in [0, 1) (p == 1 has infinite variance)")
    if isinstance(rate, float) and math.isinf(_largest_gaussian_factor(rate, dtype)):
        allowed = (
            f"small enough that the noise 1 + sigma * z is finite in {dtype} (use a wider dtype)"
        )
        raise bad_value("p", p, allowed)
    generator = seeds.rng_kind(rng)
    noise = check_noise_shape(noise_shape, xp.shape(x))
    start = _check_offset(xp, x, offset, noise, generator)
    if not check_flag("training", training):
        seeds.validate_seed(seed, xp, x)
        return x
    family = require(xp, FamilyBackend, "gaussian_dropout in training")
    mc.check_drawn_per_sample(noise, xp.shape(x))
    resolved = api.resolve_seed(family, seed, generator, x)  # drawn in training, whatever p
    if isinstance(rate, float) and rate == 0:
        return x
    dims = _noise_dims(family, x, noise)
    if generator == "native":
        z = api.native_backend(family).native_normals(dims, resolved, x)
    else:
        assert resolved is not None  # portable seeds are host integers or key words
        key = seeds.key_of(resolved, family, x)
        if isinstance(start, sharding.Block):
            z = sharding.block_normals(family, key, start, dims, x)
        else:
            z = spec.normals(family, key, dims, start, like=x)
    if isinstance(rate, float):
        sigma: float | Array = spec.rounded(math.sqrt(rate / (1.0 - rate)), "float32")
    else:
        compute = "float64" if family.has_float64() else "float32"
        held = family.astype(rate, compute)
        sigma = family.astype(
            family.sqrt(family.divide(held, family.subtract(1.0, held))), "float32"
        )
    factor = family.add(family.multiply(z, sigma), 1.0)
    return family.multiply(x, factor if dtype == "float32" else family.astype(factor, dtype))


def _largest_gaussian_factor(p: float, dtype: str) -> float:
    """The largest ``|1 + sigma * z|`` Gaussian dropout can form in ``dtype``: ``|z|`` is at
    most ``sqrt(-2 log(2**-24))`` (the smallest ``u1`` of ``spec.normals``), about 5.77."""
    sigma = math.sqrt(p / (1.0 - p))
    largest_normal = math.sqrt(-2 * math.log(2.0**-spec.NORMAL_BITS))
    return spec.rounded(1 + sigma * largest_normal, dtype)


# -- DropPath (stochastic depth) -------------------------------------------------------------------
@called_as_is
def drop_path(
    x: Any,
    p: float | Any = 0.5,
    *,
    mode: str = "row",
    scale_by_keep: bool = True,
    training: bool = True,
    seed: seeds.SeedLike = None,
    offset: int | sharding.Block = 0,
    rng: Rng | None = None,
) -> Any:
    """DropPath, or stochastic depth (Huang et al., ECCV 2016), as timm's ``drop_path`` and
    torchvision's ``stochastic_depth``: drop a residual branch for whole samples::

        mode="row":   xdrop.dropout(x, p, noise_shape=(batch, 1, ..., 1))  # per sample
        mode="batch": xdrop.dropout(x, p, noise_shape=(1, ..., 1))         # for all

    in inverted mode (kept samples scaled by ``1 / (1 - p)``), or unscaled with
    ``scale_by_keep=False``. Evaluation returns ``x`` either way. Sample ``n`` of a batch is kept
    when counter ``offset + n`` keeps (``"row"``), so a row's fate does not depend on the batch
    size.

    Args:
        x: a floating array whose first axis is the batch (at least 1-d for ``"row"``).
        p: the probability of dropping a sample, as for :func:`xdrop.dropout`.
        mode: ``"row"`` or ``"batch"`` (not dropout's ``mode``: DropPath is always inverted
            unless ``scale_by_keep=False``).
        scale_by_keep: scale kept samples by ``1 / (1 - p)`` (True, timm's default).
        training, seed, offset, rng: as for :func:`xdrop.dropout`.

    Example:
        >>> import numpy as np
        >>> xdrop.drop_path(np.ones((4, 2), np.float32), 0.5, seed=0)
        array([[0., 0.],
               [0., 0.],
               [2., 2.],
               [2., 2.]], dtype=float32)
    """
    check_choice("mode", mode, DROP_PATH_MODES)
    xp, x, _, rate = _common(x, p)  # checked here too: evaluation may return before dropout
    ndim = len(xp.shape(x))
    if mode == "row" and ndim == 0:
        raise bad_value("x", Shown("<0-d array>"), 'an array with a batch axis for mode="row"')
    scaled = check_flag("scale_by_keep", scale_by_keep)
    noise = (None,) + (1,) * (ndim - 1) if mode == "row" else (1,) * ndim
    # an integer offset must leave room for the decisions drawn (one per sample, or one), a
    # Block must hold x
    shape = xp.shape(x)
    counted = shape if isinstance(offset, sharding.Block) else check_noise_shape(noise, shape)
    start = _check_offset(xp, x, offset, counted, seeds.rng_kind(rng))
    if not scaled and not check_flag("training", training):
        # classic evaluation would scale by 1 - p: DropPath returns x
        seeds.validate_seed(seed, xp, x)
        return x
    return api.dropout(
        x,
        rate,
        training=training,
        seed=seed,
        mode="inverted" if scaled else "classic",
        noise_shape=noise,
        offset=start if isinstance(start, int) else _decisions_block(start, mode),
        rng=rng,
    )


def _decisions_block(block: sharding.Block, mode: str) -> sharding.Block:
    """The Block of DropPath's decisions for ``x`` at ``block``: one per sample at its global
    index (``"row"``: logical shape ``(batch, 1, ..., 1)``), or the one of the whole batch."""
    rank = len(block.global_shape)
    if mode == "batch":
        return sharding.Block((1,) * rank, None, block.offset)
    rest = (1,) * (rank - 1)
    return sharding.Block(
        block.global_shape[:1] + rest, block.start[:1] + (0,) * (rank - 1), block.offset
    )


# -- DropBlock -------------------------------------------------------------------------------------
@called_as_is
def drop_block(
    x: Any,
    p: float | Any = 0.1,
    block_size: int = 7,
    *,
    data_format: str = "channels_first",
    couple_channels: bool = False,
    scale_by_keep: bool = True,
    with_noise: bool = False,
    gamma_scale: float = 1.0,
    eps: float = 0.0,
    training: bool = True,
    seed: seeds.SeedLike = None,
    offset: int | sharding.Block = 0,
    rng: Rng | None = None,
) -> Any:
    """DropBlock (Ghiasi et al., NeurIPS 2018) for 2-d or 3-d feature maps: drop square (cubic)
    blocks of each channel, so that neighbouring units, which carry the same information, go
    together.

    For ``k`` spatial axes of sizes ``S_1 .. S_k`` and ``b = min(block_size, S_1, .., S_k)`` (a
    block never exceeds the map)::

        gamma  = min(1, gamma_scale * p * prod(S_i) / (b**k * prod(S_i - b + 1)))
                 (1 for p == 1)
        corner = the units that xdrop.dropout(., gamma) drops, drawn at the shape
                 (N, C, S_1 - b + 1, ..)    ((N, 1, ..) with couple_channels)
        drop   = a unit lies in the b x .. x b block of a drawn top-left corner
        y      = where(drop, 0, x * dtype(count / (kept + eps)))
                 (0 where nothing is kept)

    with ``count`` the number of units of the mask and ``kept`` those not dropped (over the whole
    batch, as timm and torchvision normalise); ``eps == 0`` divides exactly. Every block lies
    wholly inside the map, for any sizes and odd or even ``b``, and the output has ``x``'s shape.
    ``p`` is the paper's drop rate ``1 - keep_prob``, not a probability per unit: the expected
    fraction of dropped units is about ``p`` for small ``p``, and lower for large ``p`` as blocks
    overlap (at ``p = 0.99`` and ``b = 7`` on a 16 x 16 map, about 55%), except that ``p == 1``
    drops every unit, as it does in :func:`xdrop.dropout`. ``docs/family.md`` compares this with
    torchvision and timm.

    Args:
        x: a 4-d floating array ``(N, C, H, W)`` or a 5-d one ``(N, C, D, H, W)`` (or channels
            last); the spatial sizes must be known while tracing (``gamma`` and ``b`` depend on
            them), ``N`` and ``C`` may be known only at run time.
        p: the paper's drop rate ``1 - keep_prob``, in ``[0, 1]``: a Python float or a 0-d
            float array of ``x``'s framework (traceable). ``p == 0`` returns ``x``; ``p == 1``
            returns zeros.
        block_size: the side of a block, a positive integer.
        data_format: ``"channels_first"`` (PyTorch's layout) or ``"channels_last"``.
        couple_channels: one mask shared by every channel of a sample (timm's default), or one
            per channel (False: torchvision's).
        scale_by_keep: scale the kept units by ``count / (kept + eps)`` (True) or leave them.
        with_noise: put a standard normal (the stream's normals, :func:`xdrop.gaussian_dropout`'s)
            in the dropped units instead of 0 and leave the kept ones unscaled, as timm's
            ``with_noise``. The normals use the counters after the corners' (``offset + corners
            + i``), so they are independent of the mask; it needs the portable stream, and
            ``N`` and ``C`` known unless ``offset`` is a Block (then each unit's normal is the
            one it has in the whole tensor, after the whole tensor's corners).
        gamma_scale: a positive factor of ``gamma`` (timm's ``gamma_scale``).
        eps: a non-negative number added to ``kept`` (torchvision's ``eps``).
        training: apply DropBlock (True) or return ``x`` (False).
        seed, rng: as for :func:`xdrop.dropout`.
        offset: added to the counter of every corner (as for :func:`xdrop.dropout`), or an
            :class:`xdrop.Block` of ``x`` that splits only its batch and channel axes (a
            DTensor ``x`` places itself, sharded on those axes only): each
            corner is drawn where it lies in the whole tensor, and ``count`` and ``kept`` are
            the whole tensor's, so the shards put together are the whole tensor's DropBlock
            exactly. To know ``kept``, each shard draws the corners of the whole tensor: work and
            memory in proportion to the whole. A Block that splits a spatial axis is refused (a
            block would straddle the split).

    Example:
        >>> import numpy as np
        >>> y = xdrop.drop_block(np.ones((1, 1, 5, 6), np.float32), 0.2, 2, seed=3)
        >>> (y == 0).astype(int)[0, 0]
        array([[0, 1, 1, 1, 1, 0],
               [0, 1, 1, 1, 1, 0],
               [0, 0, 0, 0, 1, 1],
               [0, 0, 0, 0, 1, 1],
               [0, 0, 0, 0, 0, 0]])
    """
    if sharding.is_dtensor(x):
        block = sharding.dtensor_block(x, check_offset(offset))
        _check_dtensor_maps_whole(x, block, data_format)
        if check_flag("with_noise", with_noise):
            _check_not_partial(
                x, training, p, "drop_block with_noise=True puts normals in dropped units"
            )
        local = drop_block(
            x.to_local(),
            p,
            block_size,
            data_format=data_format,
            couple_channels=couple_channels,
            scale_by_keep=scale_by_keep,
            with_noise=with_noise,
            gamma_scale=gamma_scale,
            eps=eps,
            training=training,
            seed=seed,
            offset=block,
            rng=rng,
        )
        return sharding.dtensor_result(x, local)
    xp, x, dtype, rate = _common(x, p)
    if not is_integer(block_size):
        raise bad_type("block_size", block_size, "a positive integer")
    if int(block_size) < 1:
        raise bad_value("block_size", block_size, "a positive integer")
    check_choice("data_format", data_format, DATA_FORMATS)
    coupled = check_flag("couple_channels", couple_channels)
    scaled = check_flag("scale_by_keep", scale_by_keep)
    noisy = check_flag("with_noise", with_noise)
    scale_of_gamma = _check_positive_real("gamma_scale", gamma_scale, allow_zero=False)
    epsilon = _check_positive_real("eps", eps, allow_zero=True)
    shape = xp.shape(x)
    channels_last = data_format == "channels_last"
    if len(shape) not in (4, 5):
        allowed = (
            "a 4-d array (N, H, W, C) or a 5-d array (N, D, H, W, C)"
            if channels_last
            else "a 4-d array (N, C, H, W) or a 5-d array (N, C, D, H, W)"
        )
        raise bad_value("x", Shown(f"<array of shape {shape}>"), allowed)
    spatial = tuple(range(1, len(shape) - 1)) if channels_last else tuple(range(2, len(shape)))
    channel_axis = len(shape) - 1 if channels_last else 1
    sizes = tuple(shape[axis] for axis in spatial)
    if any(size is None for size in sizes):
        allowed = f"an array whose spatial sizes (gamma needs them) are {SIZES_KNOWN}"
        raise bad_value("x", Shown(f"<array of shape {shape}>"), allowed)
    maps = tuple(int(size) for size in sizes if size is not None)
    generator = seeds.rng_kind(rng)
    # the counters an integer offset must leave room for are known below (the corners, and the
    # normals after them with with_noise); a Block must hold x
    counted = shape if isinstance(offset, sharding.Block) else (1,) * len(shape)
    start = _check_offset(xp, x, offset, counted, generator)
    if isinstance(start, sharding.Block):
        _check_maps_whole(start, shape, spatial)
    if noisy and generator != "portable":
        allowed = 'False with rng="native" (the normals are the portable stream)'
        raise bad_value("with_noise", with_noise, allowed)
    if not check_flag("training", training):
        seeds.validate_seed(seed, xp, x)
        return x
    family = require(xp, FamilyBackend, "drop_block in training")
    if (isinstance(rate, float) and rate == 0) or 0 in shape:  # no units: nothing to pool
        api.resolve_seed(family, seed, generator, x)  # a training call draws its seed, whatever p
        return x
    size = min(int(block_size), *maps)
    corner_sizes = tuple(length - size + 1 for length in maps)
    ratio = scale_of_gamma * math.prod(maps) / (size ** len(maps) * math.prod(corner_sizes))
    gamma: Rate
    # the paper's gamma is below 1 at p == 1 whenever a block is smaller than the map, so p == 1
    # is its own case: every corner is drawn and every unit dropped, as dropout drops them all
    if isinstance(rate, float):
        gamma = 1.0 if rate == 1 else min(1.0, rate * ratio)
    else:
        compute = "float64" if family.has_float64() else "float32"
        held = family.astype(rate, compute)
        scaled_rate = family.multiply(held, ratio)
        capped = family.where(family.less_equal(scaled_rate, 1.0), scaled_rate, 1.0)
        # outside [0, 1] gamma is NaN, so every unit is kept, and x NaN
        one_or_nan = _one_or_nan(family, held)
        gamma = family.multiply(family.where(family.equal(rate, 1.0), 1.0, capped), one_or_nan)
        x = family.scale(x, family.astype(one_or_nan, dtype))

    def corners_of(full: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            corner_sizes[spatial.index(axis)]
            if axis in spatial
            else (1 if coupled and axis == channel_axis else length)
            for axis, length in enumerate(full)
        )

    corners_shape = corners_of((None,) * len(shape))
    compute = "float64" if family.has_float64() else "float32"
    if isinstance(start, sharding.Block):  # x is a shard of a larger tensor, whole maps
        whole = corners_of(start.global_shape)
        first = tuple(
            0 if coupled and axis == channel_axis else at for axis, at in enumerate(start.start)
        )
        key = seeds.key_of(_portable_seed(family, seed, x), family, x)
        threshold = _threshold(family, gamma)
        corners = sharding.Block(whole, first, start.offset)
        dims = _noise_dims(family, x, corners_shape)
        keep = sharding.block_keep_mask(family, key, corners, dims, threshold, x)
        kept = _kept_units(family, keep, size, channels_last)
        if noisy:  # each unit's normal at its counter in the whole, after the whole's corners
            normals_at = sharding.Block(
                start.global_shape, start.start, start.offset + math.prod(whole)
            )
            shape_of_x = family.runtime_shape(kept)
            z = sharding.block_normals(family, key, normals_at, shape_of_x, x)
            return family.where(kept, x, family.astype(z, dtype))
        # count and kept are the whole tensor's: every shard counts the same units
        all_kept = _kept_units(
            family,
            spec.keep_mask(family, key, whole, threshold, start.offset, like=x),
            size,
            channels_last,
        )
        kept_count = family.sum(family.astype(all_kept, compute))
        units = math.prod(
            1 if coupled and axis == channel_axis else length
            for axis, length in enumerate(start.global_shape)
        )
        count = _count_array(family, x, units, compute)
    elif noisy:  # the normals need the key: the seed is resolved once, here
        dims = _noise_dims(family, x, corners_shape)
        if not all(isinstance(dim, int) for dim in dims):
            allowed = f"an array whose N and C (with_noise needs them) are {SIZES_KNOWN}"
            raise bad_value("x", Shown(f"<array of shape {shape}>"), allowed)
        assert isinstance(start, int)  # a Block took the branch above
        units = math.prod(size for size in shape if size is not None)  # known: N, C and maps
        check_counter_range(start, (math.prod(dims) + units,))  # the corners, then the normals
        key = seeds.key_of(_portable_seed(family, seed, x), family, x)  # a refused call draws none
        keep = spec.keep_mask(family, key, dims, _threshold(family, gamma), start, like=x)
        kept = _kept_units(family, keep, size, channels_last)
        # the normals take the counters after the corners': independent of the mask
        after = start + math.prod(dims)
        z = spec.normals(family, key, family.runtime_shape(kept), after, like=x)
        return family.where(kept, x, family.astype(z, dtype))
    else:
        if isinstance(start, int):  # the corners' counters: sizes known only at run time aside
            dims = _noise_dims(family, x, corners_shape)
            check_counter_range(start, tuple(d if isinstance(d, int) else None for d in dims))
        keep = api.keep_mask(
            corners_shape, gamma, seed=seed, offset=start, like=x, rng=rng, name="x"
        )
        kept = _kept_units(family, keep, size, channels_last)
        kept_count = family.sum(family.astype(kept, compute))
        count = _element_count(family, kept, compute)
    if not scaled:
        return family.select(kept, x)
    if epsilon:
        factor = family.divide(count, family.add(kept_count, epsilon))
    else:
        none_kept = family.equal(kept_count, 0.0)
        factor = family.where(
            none_kept, 0.0, family.divide(count, family.where(none_kept, 1.0, kept_count))
        )
    return family.select(kept, family.scale(x, family.astype(factor, dtype)))


# -- shared ----------------------------------------------------------------------------------------
def _common(x: Any, p: object, interval: str = "[0, 1]") -> tuple[Backend, Array, str, Rate]:
    """The backend, ``x`` as its array, ``x``'s dtype and the checked rate."""
    xp = backend_for(x)
    x = as_input_array(xp, x)
    dtype = check_float_dtype(xp, x)
    return xp, x, dtype, check_rate(p, xp, like=x, interval=interval)


def _kept_units(xp: FamilyBackend, keep: Array, size: int, channels_last: bool) -> Array:
    """The units no block covers: the blocks of ``size`` grown from the corners ``keep`` drops,
    for 2-d or 3-d maps. A 3-d block is a 2-d one over ``(H, W)`` of each depth slice, then grown
    along ``D`` with the same 2-d pooling over ``D`` and an axis of size 1 (the pooling is
    separable), so every backend needs only ``max_pool_2d``."""
    corners = xp.subtract(1.0, xp.astype(keep, "float32"))  # 1 where keep is False
    if len(xp.shape(keep)) == 4:
        return xp.equal(xp.max_pool_2d(corners, size, channels_last), 0.0)
    dims = xp.runtime_shape(corners)
    grow = size - 1
    if channels_last:  # (N, D', H', W', C)
        n, depth, height, width, channels = dims
        planes = xp.reshape(corners, (n * depth, height, width, channels))
        grown = xp.max_pool_2d(planes, size, True)  # (N * D', H, W, C)
        rows = (n, depth, 1, (height + grow) * (width + grow) * channels)
    else:  # (N, C, D', H', W')
        n, channels, depth, height, width = dims
        planes = xp.reshape(corners, (n * channels, depth, height, width))
        grown = xp.max_pool_2d(planes, size, False)  # (N * C, D', H, W)
        rows = (n * channels, depth, 1, (height + grow) * (width + grow))
    deep = xp.max_pool_2d(xp.reshape(grown, rows), size, True)  # (., D, size, .): equal columns
    column = xp.split(deep, size, 2)[0]
    full = (
        (n, depth + grow, height + grow, width + grow, channels)
        if channels_last
        else (n, channels, depth + grow, height + grow, width + grow)
    )
    return xp.equal(xp.reshape(column, full), 0.0)


def _portable_seed(xp: FamilyBackend, seed: object, x: Array) -> int | Key:
    """The call's portable seed, resolved once (a generator advances here)."""
    resolved = api.resolve_seed(xp, seed, "portable", x)
    assert resolved is not None  # portable seeds are host integers or key words
    return resolved


def _one_or_nan(xp: FamilyBackend, rate: Array) -> Array:
    """1 for a rate held in an array in ``[0, 1]``, NaN outside it (or for NaN): a graph cannot
    raise, so a factor of it makes the output NaN rather than quietly wrong, as dropout's is."""
    one = xp.add(xp.subtract(rate, rate), 1.0)
    return xp.where(spec.in_unit_interval(xp, rate), one, math.nan)


def _threshold(xp: FamilyBackend, gamma: Rate) -> Words | int:
    """The keep threshold of the corners' rate ``gamma`` (a host float or a traced one)."""
    if isinstance(gamma, float):
        return spec.keep_count(gamma)
    threshold, _ = spec.rate_constants(xp, gamma, "float32", "inverted", training=True)
    return threshold


def _check_positive_real(argument: str, value: object, allow_zero: bool) -> float:
    """A finite real number above 0 (or at least 0 with ``allow_zero``) as a float."""
    number = as_real(value)
    allowed = "a finite real number " + ("at least 0" if allow_zero else "above 0")
    if number is None:
        raise bad_type(argument, value, allowed)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise bad_value(argument, value, allowed)
    return number


def _on_dtensor(
    function: Any,
    x: Any,
    p: object,
    offset: object,
    noise_shape: Sequence[int | None] | None,
    options: dict[str, Any],
) -> Any:
    """``function`` of the DTensor ``x`` as a DTensor of its mesh and placements: each rank runs
    it on its local tensor, each element (or mask entry, with a noise shape given against the
    global shape) at its counter in the whole, so the result is the whole tensor's."""
    if function is alpha_dropout:
        _check_not_partial(
            x,
            options["training"],
            p,
            "alpha_dropout sets dropped units to a constant and shifts them",
        )
    block, local_noise = sharding.dtensor_mask_block(x, check_offset(offset), noise_shape)
    local = function(x.to_local(), p, noise_shape=local_noise, offset=block, **options)
    return sharding.dtensor_result(x, local)


def _on_sharded(
    function: Any,
    x: Any,
    p: object,
    offset: object,
    noise_shape: Sequence[int | None] | None,
    options: dict[str, Any],
) -> Any | None:
    """``function`` of a DTensor ``x`` (:func:`_on_dtensor`), or of the plain local tensor a
    tensor-parallel plan made of one (``to_local()`` of a sharded DTensor), drawn as that
    DTensor and returned as its local part; None for any other ``x``."""
    if sharding.is_dtensor(x):
        return _on_dtensor(function, x, p, offset, noise_shape, options)
    shard = sharding.local_shard_of(x, offset)
    if shard is None:
        return None
    whole = sharding.global_noise_shape(noise_shape, x, shard)
    return _on_dtensor(function, shard, p, offset, whole, options).to_local()


def _check_not_partial(x: Any, training: object, p: object, because: str) -> None:
    """Refuse, in training, a ``Partial()`` DTensor of a sum for a function that adds
    constants or noise to ``x``: each rank would add them to its summand, so the sum would hold
    them once per rank. (A partial ``max`` or ``avg`` commutes with them and is allowed, and so
    does a rate of number 0, which leaves ``x`` as it is; a tensor rate's value is not read.)"""
    summed = any(
        placement.is_partial() and getattr(placement, "reduce_op", "sum") == "sum"
        for placement in x.placements
    )
    if not check_flag("training", training) or not summed or as_real(p) == 0:
        return
    shown = Shown(f"<DTensor placed {tuple(x.placements)}>")
    allowed = (
        f"a DTensor of Shard or Replicate placements ({because}, which every summand of a "
        "Partial() would add to the sum): redistribute it to Replicate() or a Shard first"
    )
    raise bad_value("x", shown, allowed)


def _check_dtensor_maps_whole(x: Any, block: sharding.Block, data_format: object) -> None:
    """DropBlock of a DTensor needs whole feature maps on each rank: a ``Shard`` of a spatial
    axis would cut blocks of units in two (checked here, where the message can name it)."""
    rank = len(block.global_shape)
    if rank not in (4, 5) or data_format not in DATA_FORMATS:
        return  # the local call says what is wrong with x or data_format
    spatial = range(1, rank - 1) if data_format == "channels_last" else range(2, rank)
    local = tuple(x.to_local().shape)
    if all(block.start[axis] == 0 and local[axis] == block.global_shape[axis] for axis in spatial):
        return
    shown = Shown(f"<DTensor of shape {tuple(block.global_shape)}, placements {x.placements}>")
    allowed = (
        f"a DTensor split only on its batch and channel axes for drop_block ({data_format}): a "
        "block of units would straddle a split of the maps (redistribute it to Shard(0), "
        "Shard of the channel axis or Replicate() first)"
    )
    raise bad_value("x", shown, allowed)


def _check_maps_whole(
    block: sharding.Block, shape: tuple[int | None, ...], spatial: tuple[int, ...]
) -> None:
    """DropBlock takes a Block that splits only the batch and channel axes: a block of units
    straddling a split of a spatial axis would need its neighbour shard's corners."""
    for axis in spatial:
        first = block.start[axis]  # a traced start cannot be known to be 0
        if not isinstance(first, int) or first != 0 or block.global_shape[axis] != shape[axis]:
            raise bad_value(
                "offset",
                block,
                "a Block that splits only the batch and channel axes of x for drop_block (whole "
                "maps: a block of units would straddle a split of the maps)",
            )


def _element_count(xp: FamilyBackend, x: Array, dtype: str) -> Array:
    """The number of elements of ``x`` as a 0-d array of ``dtype``, on ``x``'s device."""
    count = xp.size(xp.runtime_shape(x))
    if not isinstance(count, int):
        return xp.dim_array(count, dtype)
    return _count_array(xp, x, count, dtype)


def _count_array(xp: FamilyBackend, x: Array, count: int, dtype: str) -> Array:
    """``count`` as a 0-d array of ``dtype`` in ``x``'s namespace and on its device, made from a
    one like ``x``: the generic backend's ``dim_array`` knows no array, so it would make a NumPy
    array, which another namespace cannot compute with."""
    one = xp.astype(xp.full_mask((), True, like=x), dtype)
    return xp.multiply(one, float(count))  # exact: a count below 2**53 (rounded as dim_array would)


def _noise_dims(xp: Backend, x: Array, noise: tuple[int | None, ...]) -> tuple[Dim, ...]:
    """The completed noise shape as dims: ``x``'s run-time size where an entry is None."""
    if None not in noise:
        return noise
    sizes = xp.runtime_shape(x)
    return tuple(size if entry is None else entry for entry, size in zip(noise, sizes, strict=True))


def _check_offset(
    xp: Backend, x: Array, offset: object, noise: tuple[int | None, ...], generator: str
) -> int | sharding.Block:
    """``offset`` checked as :func:`xdrop.dropout` checks it, for a mask of ``noise``."""
    return api.check_offset_argument(xp, offset, noise, generator, xp.shape(x), x)
